"""SIGINT / SIGTERM during training stop it at the next step boundary, save a checkpoint and exit, saying how
to resume. Promptness is counted in steps after the signal, not in seconds (a slower CPU takes longer per step)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy import toy_config_dict, write_config

from nmt.runs.checkpoint import latest_intact
from nmt.runs.rundir import RunDir

NMT = str(Path(sys.executable).parent / "nmt")
STEPS_AFTER_SIGNAL = 10


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_and_exits(tmp_path, signum):
    raw = toy_config_dict(tmp_path, training={"max_steps": 100000, "validate_every": 100000, "log_every": 1})
    config = write_config(tmp_path, raw)
    process = subprocess.Popen([NMT, "train", "--config", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    run = RunDir(tmp_path / "run")
    metrics = run.metrics_path
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
        time.sleep(0.2)
    logged = max(r["step"] for r in run.metrics() if "loss" in r)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)  # a hang guard, not a speed claim
    assert process.returncode == 130
    assert f"nmt train --config {run.config_path} --resume" in stderr and "Traceback" not in stderr
    checkpoint = latest_intact(run)
    assert checkpoint is not None and logged <= checkpoint.step <= logged + STEPS_AFTER_SIGNAL, (logged, checkpoint)
    resumed = subprocess.run([NMT, "train", "--config", str(run.config_path), "--resume", "--set",
                              f"training.max_steps={checkpoint.step + 2}"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {checkpoint.path}" in resumed.stderr
