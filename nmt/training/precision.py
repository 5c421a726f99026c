"""`training.precision: auto`: bf16 autocast or fp32, chosen on a CPU by timing the model's own training step
in both, on this machine. A CPU's flags do not say which is faster: bf16 pays where the CPU multiplies bf16
natively and the step is bound by its matmuls, and loses where bf16 is emulated or the step is bound by
element-wise work and casts (BENCHMARKS.md, "Against this CPU's limits", has the measurements).

Where bf16 is emulated, one step could take minutes (an emulated bf16 matmul runs orders of magnitude slower
than fp32), so a small matmul in both precisions is timed first, on every run (cheap next to one step), and
bf16 is left out when it runs more than EMULATED times slower. The two precisions then take turns on the
training split's largest batch (`measure_training_precision`). The choice is cached per CPU (its name, its
bf16 instructions and the kernels torch and oneDNN dispatch to), whether the matmul found bf16 native or
emulated (so a choice made where it is native is never reused where it is emulated, whatever the names say),
torch version, thread count and step (the model's config and size, the batch budget, the dropout kernel,
guided alignment) in `precision.json` in data.cache_dir. The file is read once, at most MAX_CACHE_BYTES of it
(a bigger one is started anew, never loaded), each entry checked against PrecisionChoice (one of another
shape is measured again, with a warning naming the file and key), and written, atomically and under a lock
with the other entries read again, only when a measurement adds to it. The choice is logged with what was
measured and kept by a resumed run. A CUDA GPU takes bf16 where it supports it, without measuring."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from nmt.config import Config
from nmt.data.prepare import EncodedSplit
from nmt.fileio import atomic_write_text
from nmt.models import count_parameters
from nmt.training.batches import make_batch, split_batches
from nmt.training.distributed import World
from nmt.training.step import TrainingLoss

log = logging.getLogger(__name__)

CACHE_FILE = "precision.json"
MAX_CACHE_BYTES = 1 << 20  # a few hundred bytes an entry: a bigger file is not a cache nmt wrote, and is not loaded
TIMED_STEPS = 3  # after one untimed step per precision (allocations, kernel selection)
Precision = Literal["fp32", "bf16"]
CANDIDATES: tuple[Precision, ...] = ("fp32", "bf16")
EMULATED = 4.0  # a bf16 matmul this many times slower than fp32 is emulated: its step is not worth timing
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "avx_ne_convert")  # /proc/cpuinfo flags of native bf16 instructions

Milliseconds = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]


def cpu_name() -> str:
    """The CPU's model name, its native bf16 instructions and the kernels torch and oneDNN dispatch to on it
    (ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA emulate others): what a measurement holds for. Virtual machines
    often share one generic name ("Intel(R) Xeon(R) Processor") whatever the host, hence the flags."""
    found: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first processor's lines
            field, _, value = line.partition(":")
            found.setdefault(field.strip(), value.strip())
            if "model name" in found and "flags" in found:
                break
    except OSError:
        pass
    name = found.get("model name") or platform.processor() or platform.machine()
    flags = found.get("flags", "").split()
    bf16 = " ".join(flag for flag in BF16_FLAGS if flag in flags) or "none"
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return f"{name} ({torch.backends.cpu.get_cpu_capability()}{f', oneDNN {onednn}' if onednn else ''}; " \
        f"bf16 instructions: {bf16})"


class PrecisionChoice(BaseModel):
    """One measurement, as precision.json holds it (strictly checked when read back: an entry of another shape
    is measured again) and as the log describes it."""

    model_config = ConfigDict(strict=True, extra="forbid")

    precision: Precision
    step_ms: dict[Precision, Milliseconds]  # the median step of each precision measured
    bf16_matmul_slowdown: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]  # a small bf16 matmul's time / fp32's
    cached: bool = Field(default=False, exclude=True)

    @model_validator(mode="after")
    def _chosen_was_measured(self) -> PrecisionChoice:
        if self.precision not in self.step_ms:
            raise ValueError(f"no step time for the chosen {self.precision}")
        return self

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


def bf16_kind(slowdown: float) -> str:
    """What decides whether bf16 is timed at all, named in the cache key: a choice made where bf16 runs natively
    is never reused where it is emulated."""
    return "bf16 emulated" if slowdown > EMULATED else "bf16 native"


def _read(path: Path, warn: bool = True) -> dict[str, Any]:
    """The cache's entries by key, at most MAX_CACHE_BYTES read: a file that is bigger, or not a JSON object, is
    started again with a warning (the next write replaces it)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CACHE_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as err:
        problem = f"cannot be read ({err.strerror})"
    else:
        if len(data) > MAX_CACHE_BYTES:
            problem = f"is over {MAX_CACHE_BYTES >> 10} KiB, more than a cache of measurements holds: not read"
        else:
            try:
                found = json.loads(data)
            except ValueError:
                found = None
            if isinstance(found, dict):
                return found
            problem = "is not a JSON object of measurements"
    if warn:
        log.warning("precision auto: %s %s; measuring again and starting it anew", path, problem)
    return {}

def _entry(entries: dict[str, Any], key: str, path: Path) -> PrecisionChoice | None:
    """The measurement cached under `key`; one of another shape (a string for a number, null) is dropped with a
    warning naming the file, the key and the first field wrong."""
    if key not in entries:
        return None
    try:
        return PrecisionChoice.model_validate(entries[key]).model_copy(update={"cached": True})
    except ValidationError as err:
        problem = err.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "the entry"
        log.warning("precision auto: %s: the entry %r is not a measurement (%s: %s); measuring again", path, key,
                    field, problem["msg"])
        return None


def _valid(entry: Any) -> bool:
    """Whether `entry` is a measurement (entries of another shape are dropped at the next write)."""
    try:
        PrecisionChoice.model_validate(entry)
    except ValidationError:
        return False
    return True


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """One writer of precision.json at a time (two trainings sharing data.cache_dir measure at once): each
    re-reads the file under the lock, so neither loses the other's entry. The lock file is kept, as the data
    cache's are."""
    with open(cache_dir / f".{CACHE_FILE}.lock", "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # held for a read and a write of a small file: released on close
        yield


def _store(path: Path, key: str, choice: PrecisionChoice) -> None:
    """Add `choice` under `key`, keeping the other entries that are measurements, in one atomic write made only
    when the file changes."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.parent):
            found = _read(path, warn=False)  # again, under the lock: another process may have added to it
            entries = {k: v for k, v in found.items() if _valid(v)} | {key: choice.model_dump(mode="json")}
            if entries == found:
                return
            text = json.dumps(entries, indent=1, sort_keys=True) + "\n"  # ASCII: characters are bytes
            if len(text) > MAX_CACHE_BYTES:  # thousands of measurements: start again from this one
                text = json.dumps({key: entries[key]}, indent=1) + "\n"
            atomic_write_text(path, text)
    except OSError as err:
        log.warning("precision auto: cannot cache the measurement in %s (%s)", path, err.strerror)


def bf16_matmul_slowdown(size: int = 256, repeats: int = 3) -> float:
    """How many times slower a small bf16 matmul runs than an fp32 one here (fastest of `repeats` each), on one
    thread: with several threads on a loaded machine the fp32 matmul waits at its thread barrier, and that wait
    can hide most of an emulated bf16 matmul's slowness."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = {}
        for dtype in (torch.float32, torch.bfloat16):
            a = torch.full((size, size), 0.5, dtype=dtype)  # not random: the measurement draws nothing
            runs = []
            for _ in range(repeats + 1):  # the first: warm-up
                start = time.perf_counter()
                torch.mm(a, a)
                runs.append(time.perf_counter() - start)
            seconds[dtype] = min(runs[1:])
    finally:
        torch.set_num_threads(threads)
    return seconds[torch.bfloat16] / max(seconds[torch.float32], 1e-9)


def time_steps(step: Callable[[str], None], candidates: tuple[Precision, ...]) -> dict[Precision, float]:
    """Median milliseconds of `step(precision)` per candidate over TIMED_STEPS rounds, after one untimed; the
    candidates take turns, so that a change in the machine's load falls on both."""
    for name in candidates:
        step(name)
    times: dict[Precision, list[float]] = {name: [] for name in candidates}
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
    slowdown = bf16_matmul_slowdown()
    key = f"{key} | {bf16_kind(slowdown)}"
    path = cache_dir / CACHE_FILE
    known = _entry(_read(path), key, path)
    if known is not None:
        return known
    candidates: tuple[Precision, ...] = CANDIDATES if slowdown <= EMULATED else ("fp32",)
    state = torch.get_rng_state()
    try:
        timings = time_steps(step, candidates)
    finally:
        torch.set_rng_state(state)
    choice = PrecisionChoice(precision=min(timings, key=timings.__getitem__),
                             step_ms={k: round(v, 1) for k, v in timings.items()},
                             bf16_matmul_slowdown=round(slowdown, 2))
    _store(path, key, choice)
    return choice


def measure_training_precision(model: nn.Module, training_loss: TrainingLoss, split: EncodedSplit,
                               config: Config) -> Precision:
    """fp32 or bf16 for training `model` on this CPU: its forward and backward on the training split's largest
    batch (a full step's work, not a small leftover), through `choose_cpu_precision`; the choice is logged."""
    largest = max(split_batches(split, config, config.seed),
                  key=lambda indices: int(split.src_lengths[indices].sum() + split.tgt_lengths[indices].sum()))
    probe = make_batch(split, largest)

    def step(precision: str) -> None:
        training_loss.objective(*training_loss.batch_loss(model, probe, precision)).backward()
        model.zero_grad(set_to_none=True)

    cfg = config.training
    key = measurement_key(config.model.summary, {
        "model": config.model.model_dump(mode="json"), "batch_tokens": cfg.batch_tokens,
        "parameters": count_parameters(model), "fast_dropout": cfg.fast_dropout,
        "guided_layer": training_loss.guide.layer if training_loss.guide else None})
    found = choose_cpu_precision(step, key, Path(config.data.cache_dir))
    log.info(found.describe())
    return found.precision


def training_precision(asked: str, device: torch.device, world: World, measure: Callable[[], str]) -> str:
    """The config's precision; for `auto`, bf16 on a GPU that supports it, and on a CPU what rank 0 `measure`s
    (`measure_training_precision`), for every rank."""
    if asked != "auto":
        return asked
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return world.broadcast(measure() if world.is_main else None)
