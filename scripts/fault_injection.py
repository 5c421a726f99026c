"""Kill training with SIGKILL at random moments and resume it, again and again; then check that the final
weights equal those of an uninterrupted run, and that no kill left an unusable run directory. Then fill a
real disk during training.

    python scripts/fault_injection.py --trials 12 --write-kills 4 --rename-kills 3 --seed 1

Training runs on the toy reversal task (toy) with a checkpoint every few steps. The first
--write-kills kills wait until a checkpoint's staging folder appears and strike then, mid-write; the next
--rename-kills strike as soon as a new checkpoint folder has been renamed into place (the moment an
earlier version lost its best-checkpoint marker); the others land at random moments. After each kill the
run directory must still hold an intact checkpoint (or none yet), the best checkpoint must be the one with
the highest dev BLEU validated so far (never pruned), and `nmt train --resume` must continue from it.
Last, as root, training runs onto a 3 MB tmpfs until it is full: one `error:` line naming the free space,
exit 1, no staging folder left, every checkpoint intact. Prints one row per kill and a summary, and exits
non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from nmt.errors import CheckpointError
from nmt.runs.checkpoint import best_files, find_checkpoint, latest_intact, verify
from nmt.runs.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(ROOT / "tests"))  # the toy task is a test fixture
from toy import toy_config_dict, write_config  # noqa: E402

TRAINING = {"max_steps": 1500, "validate_every": 4, "log_every": 1, "keep_last": 2}


def train_command(config: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "nmt", "train", "--config", str(config), *(["--resume"] if resume else [])]


def last_logged_step(run: RunDir) -> int:
    return max((int(r.get("step", 0)) for r in run.metrics()), default=0)


def published(run: RunDir) -> set[str]:
    return {files.folder.name for files in run.checkpoints()}


def final_weights(run: RunDir) -> dict[str, torch.Tensor]:
    return load_file(str(find_checkpoint(run, "last").files.weights))


def best_is_kept(run: RunDir) -> bool:
    """The best checkpoint on disk has the highest dev BLEU validated up to the newest intact checkpoint."""
    newest = latest_intact(run)
    if newest is None:
        return True
    validated = [r["dev_bleu"] for r in run.metrics() if "dev_bleu" in r and r["step"] <= newest.step]
    best = best_files(run)
    if best is None:
        return not validated
    try:
        return verify(best).dev_bleu == max(validated)
    except CheckpointError:
        return False


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.0005)


def kill_trials(args, root: Path, rng: random.Random) -> tuple[list[dict], list[str], bool]:
    reference = root / "reference"
    ref_config = write_config(reference, toy_config_dict(reference, training=TRAINING))
    subprocess.run(train_command(ref_config, False), check=True, capture_output=True, cwd=ROOT)

    faulty = root / "faulty"
    config = write_config(faulty, toy_config_dict(faulty, training=TRAINING))
    run = RunDir(faulty / "run")
    rows: list[dict] = []
    failures: list[str] = []
    finished = False
    while not finished:
        resume = run.path.exists() and latest_intact(run) is not None
        resumed_from = latest_intact(run).step if resume else 0  # type: ignore[union-attr]
        staging_before, published_before = set(run.stale_staging()), published(run)
        started = time.monotonic()
        process = subprocess.Popen(train_command(config, resume), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   cwd=ROOT)
        if len(rows) < args.trials:
            try:
                process.wait(timeout=rng.uniform(args.min_delay, args.max_delay))
            except subprocess.TimeoutExpired:
                moment = "random"
                if len(rows) < args.write_kills:  # mid-write: once a staging folder appears
                    moment = "mid-write"
                    wait_for(lambda known=staging_before: bool(set(run.stale_staging()) - known))
                elif len(rows) < args.write_kills + args.rename_kills:  # just after a checkpoint's rename
                    moment = "after-rename"
                    seen = published(run) | published_before
                    wait_for(lambda known=seen: bool(published(run) - known))
                reached = last_logged_step(run)
                process.send_signal(signal.SIGKILL)
                process.wait()
                intact = latest_intact(run) if run.path.exists() else None
                usable = intact is not None or not run.checkpoints()
                kept = best_is_kept(run)
                rows.append({"trial": len(rows) + 1, "moment": moment,
                             "killed_after_s": round(time.monotonic() - started, 2), "step_reached": reached,
                             "resumed_from": resumed_from, "intact_checkpoint": intact.step if intact else None,
                             "steps_lost": max(0, reached - (intact.step if intact else 0)), "usable": usable,
                             "best_kept": kept})
                if not usable:
                    failures.append(f"trial {len(rows)}: no intact checkpoint left in {run.path}")
                if not kept:
                    failures.append(f"trial {len(rows)}: the best checkpoint was lost in {run.path}")
                continue
        _, stderr = process.communicate()
        if process.returncode != 0:
            failures.append(f"training failed after resume: {stderr.decode()[-500:]}")
            break
        finished = True
    equal = False
    if finished:
        expected, got = final_weights(RunDir(reference / "run")), final_weights(run)
        equal = expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
        if not equal:
            failures.append("final weights differ from the uninterrupted run")
    return rows, failures, equal


def full_disk_trial(root: Path) -> dict:
    """Train onto a real 3 MB filesystem until it is full (needs root to mount a tmpfs)."""
    disk = root / "full"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(disk)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        return {"full_disk": "skipped (needs root to mount a tmpfs)"}
    try:
        config = write_config(root, toy_config_dict(root, run_dir=str(disk / "run"),
                                                    training={"validate_every": 3, "max_steps": 12, "keep_last": 5}))
        result = subprocess.run(train_command(config, False), capture_output=True, text=True, cwd=ROOT)
        run = RunDir(disk / "run")
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        intact = []
        for files in run.checkpoints():
            try:
                intact.append(verify(files).step)
            except CheckpointError:
                intact = []
                break
        return {"full_disk_exit": result.returncode, "full_disk_error": errors[0] if errors else None,
                "full_disk_traceback": "Traceback" in result.stderr, "full_disk_staging_left": len(run.stale_staging()),
                "full_disk_intact_checkpoints": intact,
                "full_disk_ok": result.returncode == 1 and len(errors) == 1 and "MB free" in errors[0]
                and "Traceback" not in result.stderr and not run.stale_staging() and bool(intact)}
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12, help="kills to inject (at least 10 for the report)")
    parser.add_argument("--write-kills", type=int, default=4,
                        help="of the kills, how many wait for a checkpoint write to begin")
    parser.add_argument("--rename-kills", type=int, default=3,
                        help="of the kills, how many strike right after a checkpoint is renamed into place")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-delay", type=float, default=3.0, help="shortest wait before a kill, seconds")
    parser.add_argument("--max-delay", type=float, default=8.0, help="longest wait before a kill, seconds")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nmt-faults-"))
    rows, failures, equal = kill_trials(args, root, random.Random(args.seed))
    disk = full_disk_trial(root)
    if disk.get("full_disk_ok") is False:
        failures.append(f"full disk: {disk}")
    header = ["trial", "moment", "killed_after_s", "step_reached", "resumed_from", "intact_checkpoint", "steps_lost",
              "usable", "best_kept"]
    widths = {h: max([len(h)] + [len(str(r[h])) for r in rows]) for h in header}
    print("  ".join(h.ljust(widths[h]) for h in header))
    for row in rows:
        print("  ".join(str(row[h]).ljust(widths[h]) for h in header))
    summary = {"kills": len(rows), **{m: sum(r["moment"] == m for r in rows) for m in ("mid-write", "after-rename")},
               "usable_after_kill": sum(r["usable"] for r in rows), "best_kept": sum(r["best_kept"] for r in rows),
               "max_steps_lost": max((r["steps_lost"] for r in rows), default=0),
               "checkpoint_every": TRAINING["validate_every"], "final_weights_equal_uninterrupted": equal, **disk,
               "failures": failures, "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(summary, indent=2))
    return 0 if not failures and len(rows) >= min(10, args.trials) else 1


if __name__ == "__main__":
    raise SystemExit(main())
