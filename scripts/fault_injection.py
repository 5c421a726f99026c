"""Kill training with SIGKILL at random moments and resume it, again and again; then check that the final
weights equal those of an uninterrupted run, and that no kill left an unusable run directory.

    python scripts/fault_injection.py --trials 12 --seed 1

Training runs on the toy reversal task (nmt.toy) with a checkpoint every few steps. The first
--write-kills kills wait until a checkpoint's staging folder appears and strike then, mid-write; the
others land at random moments. After each kill the run directory must still hold an
intact checkpoint (or none yet), and `nmt train --resume` must continue from it. Prints one row per kill
(when, the step reached, the checkpoint resumed from, steps lost) and a summary, and exits non-zero if
any check fails.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nmt.checkpoint import find_checkpoint, latest_intact  # noqa: E402
from nmt.toy import toy_config_dict, write_config  # noqa: E402

TRAINING = {"max_steps": 1500, "validate_every": 4, "log_every": 1, "keep_last": 2}


def train_command(config: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "nmt", "train", "--config", str(config), *(["--resume"] if resume else [])]


def last_logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()]
    return max(steps, default=0)


def staging_dirs(run_dir: Path) -> list[str]:
    """Checkpoint folders still being written (a kill leaves them behind; the next save removes them)."""
    folder = run_dir / "checkpoints"
    return [p.name for p in folder.glob(".step-*.tmp")] if folder.exists() else []


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(find_checkpoint(run_dir, "last").path / "model.safetensors"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12, help="kills to inject (at least 10 for the report)")
    parser.add_argument("--write-kills", type=int, default=4,
                        help="of the kills, how many wait for a checkpoint write to begin")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-delay", type=float, default=3.0, help="shortest wait before a kill, seconds")
    parser.add_argument("--max-delay", type=float, default=8.0, help="longest wait before a kill, seconds")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="nmt-faults-"))

    reference = root / "reference"
    ref_config = write_config(reference, toy_config_dict(reference, training=TRAINING))
    subprocess.run(train_command(ref_config, False), check=True, capture_output=True, cwd=ROOT)

    faulty = root / "faulty"
    config = write_config(faulty, toy_config_dict(faulty, training=TRAINING))
    run_dir = faulty / "run"
    rows, failures = [], []
    finished = False
    while not finished:
        resume = run_dir.exists() and latest_intact(run_dir) is not None
        resumed_from = latest_intact(run_dir).step if resume else 0
        staging_before = set(staging_dirs(run_dir))
        started = time.monotonic()
        process = subprocess.Popen(train_command(config, resume), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   cwd=ROOT)
        if len(rows) < args.trials:
            delay = rng.uniform(args.min_delay, args.max_delay)
            try:
                process.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                if len(rows) < args.write_kills:  # aim at a checkpoint write: kill once a staging folder appears
                    deadline = time.monotonic() + 30
                    while not set(staging_dirs(run_dir)) - staging_before and time.monotonic() < deadline:
                        time.sleep(0.0005)
                reached = last_logged_step(run_dir)
                process.send_signal(signal.SIGKILL)
                process.wait()
                writing = bool(set(staging_dirs(run_dir)) - staging_before)
                delay = round(time.monotonic() - started, 2)
                intact = latest_intact(run_dir) if run_dir.exists() else None
                usable = intact is not None or not any((run_dir / "checkpoints").glob("step-*"))
                rows.append({"trial": len(rows) + 1, "killed_after_s": round(delay, 2), "step_reached": reached,
                             "resumed_from": resumed_from, "intact_checkpoint": intact.step if intact else None,
                             "during_checkpoint_write": writing,
                             "steps_lost": max(0, reached - (intact.step if intact else 0)), "usable": usable})
                if not usable:
                    failures.append(f"trial {len(rows)}: no intact checkpoint left in {run_dir}")
                continue
        _, stderr = process.communicate()
        if process.returncode != 0:
            failures.append(f"training failed after resume: {stderr.decode()[-500:]}")
            break
        finished = True

    equal = False
    if finished:
        expected, got = final_weights(reference / "run"), final_weights(run_dir)
        equal = expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
        if not equal:
            failures.append("final weights differ from the uninterrupted run")
    header = ["trial", "killed_after_s", "step_reached", "resumed_from", "intact_checkpoint",
              "during_checkpoint_write", "steps_lost", "usable"]
    print("  ".join(header))
    for row in rows:
        print("  ".join(str(row[h]).ljust(len(h)) for h in header))
    summary = {"kills": len(rows), "during_checkpoint_write": sum(r["during_checkpoint_write"] for r in rows),
               "usable_after_kill": sum(r["usable"] for r in rows), "max_steps_lost": max(
                   (r["steps_lost"] for r in rows), default=0), "checkpoint_every": TRAINING["validate_every"],
               "final_weights_equal_uninterrupted": equal, "failures": failures,
               "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(summary, indent=2))
    return 0 if not failures and len(rows) >= min(10, args.trials) else 1


if __name__ == "__main__":
    raise SystemExit(main())
