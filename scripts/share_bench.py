"""Training beside other work: a config's training tokens/s alone and with N other CPU-bound processes on the
machine (a second `nmt train` of the same config, or a plain `torch.matmul` loop with torch's defaults), under
each thread / OpenMP wait policy, against the fair share (alone / (N + 1)).

    python scripts/share_bench.py --config configs/multi30k_deen_transformer.yaml --steps 12 --warmup 8 \
        --policy default= --policy fixed=threads=2 --policy passive=threads=2,OMP_WAIT_POLICY=PASSIVE

`default=` is nmt as it ships (threads that follow the load, training/CoreShare); `threads=2` pins them as
before it (torch's default on 2 cores). Warm-up steps should cover CoreShare's first 10-second measurement.

A policy is NAME=VAR=value,VAR=value: environment variables set for the measured training and for a second
`nmt train` (both are ours), never for the matmul loop (a user's own code). `threads=K` in a policy sets
training.threads. The measured training is `scripts/bench.py --phase train` (the trainer's own step, warm-up
steps untimed), started once the others run. Prints one JSON line per measurement and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATMUL_LOOP = "import torch\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"
# --notebook: what a notebook kernel does beside the trainings, one sentence at a time through the Python API
NOTEBOOK = """
import json, sys, time
import nmt
run = nmt.load(sys.argv[1])
lines = [line.strip() for line in open(sys.argv[2], encoding="utf-8")][:int(sys.argv[3])]
run.translate(lines[:5])
start = time.perf_counter()
for line in lines:
    run.translate([line])
print(json.dumps({"rate": len(lines) / (time.perf_counter() - start), "cpu": "-"}))
"""


def parse_policy(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition("=")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, env


def start_others(kind: str, count: int, config: Path, env: dict[str, str], folder: Path) -> list[subprocess.Popen]:
    others = []
    for i in range(count):
        if kind == "matmul":
            command, extra = [sys.executable, "-c", MATMUL_LOOP], {}
        else:
            command = [sys.executable, "-m", "nmt", "train", "--config", str(config), "--set",
                       f"run_dir={folder / f'other-{i}'}", "--set", "training.max_minutes=120"]
            extra = policy_env(env)
            if "threads" in env:
                command += ["--set", f"training.threads={env['threads']}"]
        others.append(subprocess.Popen(command, cwd=ROOT, env={**os.environ, **extra}, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL))
    return others


def policy_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != "threads"}


def measure(args, env: dict[str, str]) -> dict:
    if args.notebook:  # a user's process: the policy is not its own
        command, env = [sys.executable, "-c", NOTEBOOK, str(args.notebook[0]), args.notebook[1], "200"], {}
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            sys.stderr.write(result.stderr)
            raise SystemExit("the notebook's translations failed")
        return json.loads(result.stdout.strip().splitlines()[-1])
    command = [sys.executable, str(ROOT / "scripts/bench.py"), "--phase", "train", "--config", str(args.config),
               "--warmup", str(args.warmup), "--steps", str(args.steps)]
    if "threads" in env:
        command += ["--set", f"training.threads={env['threads']}"]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, **policy_env(env)}, capture_output=True,
                            text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit("the measured training failed")
    found = json.loads(result.stdout.strip().splitlines()[-1])
    return {"rate": found["train_tokens_per_s"], "cpu": found["cpu"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/multi30k_deen_transformer.yaml")
    parser.add_argument("--policy", action="append", required=True, help="NAME=VAR=value,... (NAME= alone: as is)")
    parser.add_argument("--others", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--kinds", nargs="+", default=["train", "matmul"], choices=["train", "matmul"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--notebook", nargs=2, metavar=("RUN", "SOURCES"),
                        help="measure a notebook instead: RUN's translations of SOURCES' first 200 lines, one at a "
                             "time, beside the config's trainings")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="seconds the others run before the measurement starts (a second training prepares)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="share-") as folder:
        for text in args.policy:
            name, env = parse_policy(text)
            for count in args.others:
                for kind in args.kinds if count else ["-"]:
                    others = start_others(kind, count, args.config, env, Path(folder) / f"{name}-{kind}-{count}")
                    try:
                        time.sleep(args.settle if count else 0)
                        found = measure(args, env)
                    finally:
                        for other in others:
                            other.kill()
                            other.wait()
                    row = {"policy": name, "env": env, "others": count, "kind": kind,
                           "rate": found["rate"], "cpu": found["cpu"]}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    # the fair share of the best any policy did alone: a policy that slows training alone is not made fair by it
    alone = max((row["rate"] for row in rows if row["others"] == 0), default=None)
    unit = "sentences/s" if args.notebook else "tokens/s"
    print(f"\n| policy | others | kind | {unit} | of fair share |\n|---|---:|---|---:|---:|")
    for row in rows:
        share = f"{row['rate'] / (alone / (row['others'] + 1)):.2f}" if alone else "-"
        print(f"| {row['policy']} | {row['others']} | {row['kind']} | {row['rate']:,.0f} | {share} |")


if __name__ == "__main__":
    main()
