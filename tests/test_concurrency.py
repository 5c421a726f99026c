"""One writer per run directory (runs/lock.py): a second `nmt train` on a run is refused in one line naming
the first, a killed holder never blocks the resume, and writers other than the trainer (nmt average) leave
the trainer's checkpoint being written alone."""

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy import toy_config_dict, write_config

from nmt.config import ModelConfig
from nmt.errors import RunBusyError
from nmt.models import build_model
from nmt.runs.checkpoint import checkpoint_meta, write_checkpoint
from nmt.runs.lock import lock_run
from nmt.runs.rundir import RunDir

NMT = str(Path(sys.executable).parent / "nmt")


def test_the_lock_admits_one_holder_at_a_time(tmp_path):
    run = RunDir(tmp_path / "run")
    held = lock_run(run)
    with pytest.raises(RunBusyError, match=rf"nmt train, pid {os.getpid()} on .*one writer at a time"):
        lock_run(run)  # another open file, as another process would have: refused
    held.release()
    lock_run(run).release()


def test_a_lock_file_removed_by_its_holder_is_not_what_the_next_writer_holds(tmp_path, monkeypatch):
    """`nmt import` removes RUN/.lock before it releases it (RunLock.unlink). A writer that opened the old file
    before that gets its flock once the import lets go: it must lock the file now at RUN/.lock instead, or a
    third writer would take the run beside it."""
    run = RunDir(tmp_path / "run")
    importer = lock_run(run, "nmt import")
    real_flock = fcntl.flock

    def flock_once_the_importer_is_done(handle, operation):  # the importer ends between our open and our flock
        if not importer.handle.closed:
            importer.unlink()
            importer.release()
        return real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", flock_once_the_importer_is_done)
    trainer = lock_run(run)
    monkeypatch.setattr(fcntl, "flock", real_flock)
    with pytest.raises(RunBusyError, match=rf"nmt train, pid {os.getpid()} "):
        lock_run(run)
    trainer.release()


def test_a_side_writer_leaves_a_live_writers_staging_alone_and_removes_a_dead_ones(tmp_path):
    """`nmt average` writes checkpoints/averaged while a trainer may be writing step 7: it must not remove that
    staging folder (it used to), only one whose writer died (no process holds its flock)."""
    run = RunDir(tmp_path / "run")
    live, dead = (run.checkpoints_dir / f".step-0000000{n}.0123456{n}.tmp" for n in (7, 6))
    for folder in (live, dead):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"being written")
    writer = os.open(live, os.O_RDONLY)
    fcntl.flock(writer, fcntl.LOCK_EX)  # what the trainer's staged_folder holds while it writes
    try:
        model = build_model(ModelConfig(embed_dim=8), 12, 12)
        write_checkpoint(run, run.averaged_checkpoint(), model.state_dict(), {},
                         checkpoint_meta(3, 0, model, ModelConfig(embed_dim=8), {"dev_bleu": 1.0}))
    finally:
        os.close(writer)
    assert run.averaged_checkpoint().folder.is_dir()
    assert (live / "model.safetensors").read_bytes() == b"being written" and not dead.exists()


@pytest.mark.slow
def test_a_second_trainer_is_refused_and_a_killed_one_never_blocks_the_resume(tmp_path):
    raw = toy_config_dict(tmp_path, training={"max_steps": 100000, "validate_every": 100000, "log_every": 1})
    config = str(write_config(tmp_path, raw))
    first = subprocess.Popen([NMT, "train", "--config", config], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    run = RunDir(tmp_path / "run")
    try:
        deadline = time.monotonic() + 120  # a hang guard
        while not (run.metrics_path.exists() and run.metrics_path.read_text().count("\n") >= 3):
            assert time.monotonic() < deadline and first.poll() is None, first.stderr.read() if first.stderr else ""
            time.sleep(0.2)
        second = subprocess.run([NMT, "train", "--config", config, "--resume"], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        assert second.stderr.count("\n") == 1 and f"pid {first.pid} on " in second.stderr, second.stderr
        assert first.poll() is None  # the first one trains on, undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    resumed = subprocess.run([NMT, "train", "--config", str(run.config_path), "--resume", "--set",
                              "training.max_steps=1"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr  # the kernel released the killed holder's lock
