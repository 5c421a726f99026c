"""Train one config several times, changing one setting, then put the runs side by side with `nmt compare`.

    python scripts/sweep.py --config configs/multi30k_deen_transformer.yaml \
        --key model.transformer.attention_dropout --values 0 0.1 0.2 0.3 [--set training.max_minutes=20]

Each value trains its own run directory, RUN_DIR-<key's last part>-<value>; runs that already hold
checkpoints are resumed (so an interrupted sweep picks up where it stopped). Extra `--set` overrides apply
to every run. Prints the `nmt compare` table and writes compare.png into the first run's parent folder.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from nmt.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--key", required=True, help="the dotted config key to vary, e.g. training.lr")
    parser.add_argument("--values", nargs="+", required=True, help="its values, each parsed as YAML")
    parser.add_argument("--set", action="append", default=[], help="an override for every run, as for nmt")
    args = parser.parse_args()
    base = load_config(args.config, args.set).run_path
    runs = []
    for value in args.values:
        run_dir = base.with_name(f"{base.name}-{args.key.rsplit('.', 1)[-1]}-{value}")
        overrides = [*args.set, f"{args.key}={value}", f"run_dir={run_dir}"]
        command = [sys.executable, "-m", "nmt", "train", "--config", str(args.config), "--resume"]
        for item in overrides:
            command += ["--set", item]
        print(f"== {args.key}={value}: {run_dir}", flush=True)
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            return 1
        runs.append(str(run_dir))
    plot = str(base.parent / f"compare-{args.key.rsplit('.', 1)[-1]}.png")
    return subprocess.run([sys.executable, "-m", "nmt", "compare", *runs, "--output", plot], cwd=ROOT).returncode


if __name__ == "__main__":
    raise SystemExit(main())
