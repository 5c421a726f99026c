"""Training throughput of one process against a torchrun job on the same cores, with the same update:

    NMT_DATA_MIRROR=../shared/data python scripts/ddp_bench.py --config configs/multi30k_deen.yaml --steps 40

Runs `nmt train` twice for `--steps` optimizer steps: one process with `--ranks` threads and
`accumulate: ranks`, then `torchrun --nproc-per-node ranks` with 1 thread per process and `accumulate: 1`
(the same batches per step). Prints one JSON line per run with the target tokens/s that training measured
(validation left out) and the peak resident memory of rank 0."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def train(config: str, run_dir: Path, steps: int, threads: int, accumulate: int, ranks: int | None,
          extra: list[str]) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] \
        if ranks else [sys.executable]
    command = [*launcher, "-m", "nmt", "train", "--config", config]
    for override in (f"run_dir={run_dir}", f"training.max_steps={steps}",
                     "training.validate_every=1000000", f"training.threads={threads}",
                     f"training.accumulate={accumulate}", *extra):
        command += ["--set", override]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    return {"processes": ranks or 1, "threads_each": threads, "accumulate": accumulate, "steps": last["step"],
            "train_tokens_per_s": round(last["train_tokens_per_s"]), "peak_rss_mb_rank0": round(last["peak_rss_mb"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], help="more config overrides for both runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as root:
        for name, threads, accumulate, ranks in (("single", args.ranks, args.ranks, None),
                                                 ("torchrun", 1, 1, args.ranks)):
            result = train(args.config, Path(root) / name, args.steps, threads, accumulate, ranks, args.set)
            print(json.dumps({"config": args.config, "run": name, **result}), flush=True)


if __name__ == "__main__":
    main()
