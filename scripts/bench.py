"""Benchmark nmt on this machine: training throughput, achieved GFLOP/s against the measured matmul peak,
decoding speed (greedy and beam 5), peak memory of training and of decoding, and optionally dev BLEU after
a wall-clock training budget. Prints a table and writes JSON.

    python scripts/bench.py --config configs/enja_bahdanau.yaml [--model runs/enja_bahdanau] \
        [--budget-minutes 20] [--json bench.json]

Each measurement runs in its own process, so each peak resident memory (ru_maxrss) is its own.

FLOPs are the model's own count (`forward_flops` on each model class: multiply-adds x 2 of the forward
pass; training = 3x forward for the backward pass).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 3.0) -> float:
    """Achieved GFLOP/s of a large square matmul, the practical ceiling of this CPU for dense work."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def phase_train(args) -> dict:
    """Optimizer steps through the trainer's public step (`Trainer.train_step`), validation left out."""
    from nmt.config import load_config
    from nmt.training.trainer import peak_memory_mb, setup

    run_dir = Path(tempfile.mkdtemp(prefix="bench-train-"))
    config = load_config(args.config, [*args.set, f"run_dir={run_dir}"])
    trainer = setup(config)
    trainer.model.train()
    tokens = flops = 0.0
    start = 0.0
    order = trainer.batch_order()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start, tokens, flops = time.perf_counter(), 0.0, 0.0
        share = trainer.next_share(order)
        if share is None:
            raise SystemExit(f"the training data ran out after {step} steps: lower --steps or raise max_epochs")
        trainer.train_step(share)
        tokens += share.tokens
        flops += sum(3 * trainer.model.forward_flops(int(b.src_mask.sum()), b.n_tgt_tokens, b.size)
                     for b in share.batches)
    seconds = time.perf_counter() - start
    peaks = peak_memory_mb(trainer.device)
    return {"train_tokens_per_s": tokens / seconds, "train_gflops": flops / seconds / 1e9,
            **{f"train_{name}": value for name, value in peaks.items()}, "train_steps": args.steps,
            "batch_tokens": config.training.batch_tokens, "precision": trainer.precision,
            "fast_dropout": config.training.fast_dropout}


def phase_decode(args) -> dict:
    from nmt.config import load_config
    from nmt.data.prepare import prepare_data
    from nmt.inference.translate import Translator
    from nmt.runs.loading import load_model

    translator = Translator.for_run(load_model(Path(args.model)))
    split = prepare_data(load_config(args.config, args.set)).splits[args.split]
    src = [list(split.src_ids(i)) for i in range(len(split))]
    out = {}
    for beam in (1, 5):
        translator.search_ids(src[:32], beam_size=beam)  # warm-up
        start = time.perf_counter()
        translator.search_ids(src, beam_size=beam)
        out[f"decode_beam{beam}_sent_per_s"] = len(src) / (time.perf_counter() - start)
    out["decode_peak_rss_mb"] = peak_rss_mb()
    return out


def phase_peak(_args) -> dict:
    return {"matmul_fp32_gflops": matmul_peak(torch.float32), "matmul_bf16_gflops": matmul_peak(torch.bfloat16)}


def phase_budget(args) -> dict:
    """Train from scratch for a wall-clock budget (the full pipeline, validation included); best dev BLEU."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-run-"))
    overrides = [*args.set, f"run_dir={run_dir}", f"training.max_minutes={args.budget_minutes}"]
    command = [sys.executable, "-m", "nmt", "train", "--config", str(args.config)]
    for item in overrides:
        command += ["--set", item]
    subprocess.run(command, check=True, cwd=ROOT)
    from nmt.runs.checkpoint import find_checkpoint
    from nmt.runs.rundir import RunDir

    run = RunDir(run_dir)
    best = find_checkpoint(run, "best").meta
    last = [r for r in run.metrics() if "dev_bleu" in r][-1]
    return {"budget_minutes": args.budget_minutes, "budget_best_dev_bleu": best["dev_bleu"],
            "budget_steps": last["step"], "budget_run_dir": str(run_dir),
            "budget_train_tokens_per_s": last["train_tokens_per_s"], "budget_peak_rss_mb": last["peak_rss_mb"]}


PHASES = {"train": phase_train, "decode": phase_decode, "peak": phase_peak, "budget": phase_budget}


def run_phase(name: str, argv: list[str]) -> dict:
    """Run one phase in a fresh process and return its JSON (its own peak memory included)."""
    result = subprocess.run([sys.executable, __file__, "--phase", name, *argv], capture_output=True, text=True,
                            cwd=ROOT)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"phase {name} failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/enja_bahdanau.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override, as for nmt")
    parser.add_argument("--model", type=Path, help="trained run directory, for decoding speed")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--split", default="dev", help="the split decoded for decoding speed")
    parser.add_argument("--budget-minutes", type=float, help="also train for this long and report dev BLEU")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return
    argv = ["--config", str(args.config), "--warmup", str(args.warmup), "--steps", str(args.steps),
            "--split", args.split]
    for item in args.set:
        argv += ["--set", item]
    figures: dict = {"config": str(args.config), "overrides": args.set, "cpu_threads": torch.get_num_threads(),
                     "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    figures.update(run_phase("peak", argv))
    figures.update(run_phase("train", argv))
    figures["train_fraction_of_fp32_peak"] = figures["train_gflops"] / figures["matmul_fp32_gflops"]
    if args.model:
        figures.update(run_phase("decode", [*argv, "--model", str(args.model)]))
    if args.budget_minutes:
        figures.update(run_phase("budget", [*argv, "--budget-minutes", str(args.budget_minutes)]))
    width = max(map(len, figures))
    for key, value in figures.items():
        shown = f"{value:,.2f}" if isinstance(value, float) else value
        print(f"{key.ljust(width)}  {shown}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
