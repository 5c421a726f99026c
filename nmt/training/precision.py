"""`training.precision: auto`: bf16 autocast or fp32, chosen on a CPU by timing the model's own training step
in both, on this machine. A CPU's flags do not say which is faster: bf16 pays where the CPU multiplies bf16
natively and the step is bound by its matmuls, and loses where bf16 is emulated or the step is bound by
element-wise work and casts (issue 24 measured 1.13x on a Sapphire Rapids CPU where the flags promised more).

Where bf16 is emulated, one step would take minutes (with oneDNN held to AVX2, a 2048 bf16 matmul ran at
0.4 GFLOP/s, a 256 one 52x slower than fp32), so a small matmul in both precisions is timed first, and bf16
is left out when it runs more than EMULATED times slower. The two precisions then take turns on the
training split's largest batch. The choice is cached per CPU (its name and the kernels torch and oneDNN
dispatch to), torch version, thread count and step (the model's config and size, the batch budget, the
dropout kernel, guided alignment) in `precision.json` in data.cache_dir (replaced whole on every write; two
runs writing at once lose at most an entry, which is measured again), logged with what was measured, and
kept by a resumed run. A CUDA GPU takes bf16 where it supports it, without measuring."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.fileio import atomic_write_text

log = logging.getLogger(__name__)

CACHE_FILE = "precision.json"
TIMED_STEPS = 3  # after one untimed step per precision (allocations, kernel selection)
CANDIDATES = ("fp32", "bf16")
EMULATED = 4.0  # a bf16 matmul this many times slower than fp32 is emulated: its step is not worth timing


def cpu_name() -> str:
    """The CPU's model name and the kernels torch and oneDNN dispatch to on it (ATEN_CPU_CAPABILITY and
    ONEDNN_MAX_CPU_ISA emulate others): what a measurement holds for."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return f"{name} ({torch.backends.cpu.get_cpu_capability()}{f', oneDNN {onednn}' if onednn else ''})"


@dataclass
class PrecisionChoice:
    precision: str
    step_ms: dict[str, float]  # the median step of each precision measured
    bf16_matmul_slowdown: float  # a small bf16 matmul's time over fp32's
    cached: bool = False

    def describe(self) -> str:
        timings = ", ".join(f"{name} {ms:.0f} ms" for name, ms in self.step_ms.items())
        emulated = f"; bf16 matmul {self.bf16_matmul_slowdown:.0f}x slower: emulated" \
            if self.bf16_matmul_slowdown > EMULATED else ""
        source = "measured earlier on this CPU" if self.cached else "measured now"
        return f"precision auto -> {self.precision} ({timings} per step{emulated}; {source})"


def measurement_key(model_summary: str, step_settings: dict) -> str:
    """What a measurement holds for: the CPU, torch, threads, and the step (the model's config, vocabulary
    sizes and the training settings that change its work), hashed after a readable summary."""
    digest = hashlib.sha256(json.dumps(step_settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {model_summary} {digest}"


def _read(path: Path) -> dict:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def bf16_matmul_slowdown(size: int = 256, repeats: int = 3) -> float:
    """How many times slower a small bf16 matmul runs than an fp32 one here (fastest of `repeats` each)."""
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.full((size, size), 0.5, dtype=dtype)  # not random: the measurement draws nothing
        runs = []
        for _ in range(repeats + 1):  # the first: warm-up
            start = time.perf_counter()
            torch.mm(a, a)
            runs.append(time.perf_counter() - start)
        seconds[dtype] = min(runs[1:])
    return seconds[torch.bfloat16] / max(seconds[torch.float32], 1e-9)


def time_steps(step: Callable[[str], None], candidates: tuple[str, ...]) -> dict[str, float]:
    """Median milliseconds of `step(precision)` per candidate over TIMED_STEPS rounds, after one untimed; the
    candidates take turns, so that a change in the machine's load falls on both."""
    for name in candidates:
        step(name)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(TIMED_STEPS):
        for name in candidates:
            start = time.perf_counter()
            step(name)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: sorted(found)[len(found) // 2] for name, found in times.items()}


def choose_cpu_precision(step: Callable[[str], None], key: str, cache_dir: Path) -> PrecisionChoice:
    """The faster of fp32 and bf16 for `step(precision)` (one forward and backward of a real batch), from the
    cache when this key was measured before. Torch's random state is restored afterwards, so that a run that
    measured trains exactly as one that read the cache."""
    path = cache_dir / CACHE_FILE
    known = _read(path).get(key)
    if isinstance(known, dict) and known.get("precision") in CANDIDATES:
        return PrecisionChoice(known["precision"], dict(known.get("step_ms", {})),
                               float(known.get("bf16_matmul_slowdown", 0.0)), cached=True)
    slowdown = bf16_matmul_slowdown()
    candidates = CANDIDATES if slowdown <= EMULATED else ("fp32",)
    state = torch.get_rng_state()
    try:
        timings = time_steps(step, candidates)
    finally:
        torch.set_rng_state(state)
    choice = PrecisionChoice(min(timings, key=timings.__getitem__), {k: round(v, 1) for k, v in timings.items()},
                             round(slowdown, 2))
    entries = _read(path)
    entries[key] = {"precision": choice.precision, "step_ms": choice.step_ms,
                    "bf16_matmul_slowdown": choice.bf16_matmul_slowdown}
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(entries, indent=1, sort_keys=True) + "\n")
    except OSError as err:
        log.warning("precision auto: cannot cache the measurement in %s (%s)", path, err.strerror)
    return choice

