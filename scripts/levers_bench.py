"""Quality levers at equal training time: train one config once per variant and seed, then score on a split each
run's best trained weights, its best moving average (training.ema), which of the two `--checkpoint best` takes
(the higher dev BLEU) and, with --mbr, the average decoded by MBR.

    python scripts/levers_bench.py --config configs/multi30k_deen_transformer.yaml --out runs/levers --tag avx512 \
        --variant base= --variant bpe-dropout=tokenizer.dropout=0.1 --seeds 42 43 44 --mbr

Every run keeps a moving average of its weights (training.ema.decay, 0.999 unless a variant sets it), which does
not change how the weights train, so one run gives a variant with and without EMA. The budget is the config's
(training.max_minutes: equal wall time) unless `--set` changes it; runs that already hold checkpoints are resumed
(an interrupted bench picks up where it stopped). Set ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 for the
AVX2 kernel path and name it with --tag. Prints a table (mean over seeds, and the spread: max - min) and writes
levers-TAG.json beside the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from nmt.inference.evaluate import evaluate
from nmt.runs.checkpoint import best_files
from nmt.runs.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent


def train(config: Path, run_dir: Path, seed: int, overrides: list[str], threads: int | None) -> None:
    command = [sys.executable, "-m", "nmt", "train", "--config", str(config), "--resume", "--set", f"run_dir={run_dir}",
               "--set", f"seed={seed}", "--set", "training.ema.decay=0.999"]
    for item in [*overrides, *([f"training.threads={threads}"] if threads else [])]:
        command += ["--set", item]
    print(f"== {run_dir}: {' '.join(command[3:])}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def training_figures(run_dir: Path) -> dict[str, float]:
    """Steps, minutes and training tokens/s of a finished run, from its last validation record."""
    last = [r for r in RunDir(run_dir).metrics() if "dev_bleu" in r][-1]
    return {"steps": last["step"], "minutes": last["elapsed"] / 60, "tokens_per_s": last["train_tokens_per_s"]}


def scores(run_dir: Path, split: str, checkpoint: str, mbr: bool) -> dict[str, float]:
    report = evaluate(run_dir, split=split, checkpoint=checkpoint, mbr=True if mbr else None)
    found = {s.name: s.score for s in report.scores}
    return {"bleu": found["BLEU"], "chrf": found["chrF"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the folder of the runs")
    parser.add_argument("--tag", required=True, help="the CPU and kernel path, e.g. avx512 or avx2")
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME=key=value,key=value (NAME= alone: the config as it is)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--set", action="append", default=[], help="an override for every run, as for nmt")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--mbr", action="store_true", help="also score the moving average decoded by MBR")
    args = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {}
    for variant in args.variant:
        name, _, settings = variant.partition("=")
        overrides = [*args.set, *(s for s in settings.split(",") if s)]
        for seed in args.seeds:
            run_dir = args.out / f"{args.tag}-{name}-s{seed}"
            train(args.config, run_dir, seed, overrides, args.threads)
            figures = training_figures(run_dir)
            trained = best_files(RunDir(run_dir), ema=False)
            assert trained is not None, f"{run_dir}: no validated checkpoint"
            kinds = [(name, trained.folder.name, False), (f"{name} + ema", "ema", False)]
            kinds += [(f"{name} + ema + mbr", "ema", True)] if args.mbr else []
            scored = {label: {"seed": seed, **figures, **scores(run_dir, args.split, checkpoint, mbr)}
                      for label, checkpoint, mbr in kinds}
            # what a user gets by default: the one of the two with the higher dev BLEU
            default = best_files(RunDir(run_dir))
            scored[f"{name}, --checkpoint best"] = scored[f"{name} + ema" if default and default.ema else name]
            for label, row in scored.items():
                rows.setdefault(label, []).append(row)
                print(json.dumps({"row": label, **row}), flush=True)
    print(f"\n| {args.tag}: {args.config.name} | {args.split} BLEU | chrF | steps | tokens/s | seeds | BLEU spread |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, found in rows.items():
        mean = {key: statistics.fmean(r[key] for r in found) for key in ("bleu", "chrf", "steps", "tokens_per_s")}
        spread = max(r["bleu"] for r in found) - min(r["bleu"] for r in found)
        print(f"| {label} | {mean['bleu']:.2f} | {mean['chrf']:.2f} | {mean['steps']:,.0f} | "
              f"{mean['tokens_per_s']:,.0f} | {len(found)} | {spread:.2f} |")
    (args.out / f"levers-{args.tag}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
