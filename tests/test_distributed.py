"""Data-parallel training under torchrun (gloo on 127.0.0.1, 2 processes): the same update as one process with
`accumulate: 2`, one shared decision to stop, exact resume after SIGKILL, uneven shards, rank 0 the only writer.

Every job is a real `torchrun` subprocess group, bounded in time and killed with its group if it overruns."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy import toy_config_dict, write_config

from nmt.config import load_config
from nmt.data.prepare import prepare_data
from nmt.runs.rundir import RunDir
from nmt.training.batches import split_batches
from nmt.training.recipe import train

JOB_SECONDS = 150


def torchrun(config: Path, *args: str, ranks: int = 2, wait: bool = True) -> subprocess.Popen:
    """`torchrun --standalone --nproc-per-node N -m nmt train --config CONFIG ARGS`, in its own process group."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "nmt", "train", "--config", str(config), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    if wait:
        finish(process)
    return process


def finish(process: subprocess.Popen, timeout: float = JOB_SECONDS) -> str:
    """Wait for the job; kill its whole group if it overruns (a hang fails the test, never the suite)."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_job(process)
        _, stderr = process.communicate()
        pytest.fail(f"the torchrun job did not finish in {timeout} s:\n{stderr[-3000:]}")
    process.stderr_text = stderr  # type: ignore[attr-defined]
    return stderr


def toy(root: Path, name: str, model: dict | None = None, **training) -> Path:
    raw = toy_config_dict(root, training={"max_steps": 8, "validate_every": 4, "log_every": 1, "threads": 1,
                                          **training}, **({"model": model} if model else {}))
    raw["run_dir"] = str(root / name)
    folder = root / "configs" / name
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(folder, raw)


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(RunDir(run_dir).checkpoint(step).weights)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


DEV_BLEU_TOLERANCE = 1.0

TRANSFORMER = {"type": "transformer", "transformer": {
    "d_model": 32, "heads": 4, "ff_size": 64, "encoder_layers": 2, "decoder_layers": 2, "dropout": 0.0,
    "attention_dropout": 0.0}}


@pytest.mark.slow
@pytest.mark.numerics
@pytest.mark.parametrize("model", [None, TRANSFORMER], ids=["rnn", "transformer"])
def test_two_ranks_train_as_one_process_accumulating_two(tmp_path, model):
    two = toy(tmp_path, "two", model)
    job = torchrun(two)
    assert job.returncode == 0, job.stderr_text[-3000:]
    one = train(load_config(toy(tmp_path, "one", model, accumulate=2)))
    plain = train(load_config(toy(tmp_path, "plain", model)))
    assert max_difference(weights(tmp_path / "two", 8), weights(one.run_dir, 8)) < 1e-5
    assert max_difference(weights(tmp_path / "two", 8), weights(plain.run_dir, 8)) > 1e-3  # the check can fail
    # Rank 0 alone writes: one record per logged step, one log, the same scores as the single process.
    run = RunDir(tmp_path / "two")
    steps = [r["step"] for r in run.metrics() if "loss" in r]
    assert steps == list(range(1, 9))
    assert run.log_path.read_text().count("stopped (max_steps)") == 1
    assert "2 ranks" in run.log_path.read_text()
    # Rank 0 validates at the same steps; its weights differ from the single process's in the last bits (other
    # processes sum in another order), so a near-tie in decoding may flip a token: scores within DEV_BLEU_TOLERANCE.
    dev = {r["step"]: r["dev_bleu"] for r in run.metrics() if "dev_bleu" in r}
    single = {r["step"]: r["dev_bleu"] for r in RunDir(one.run_dir).metrics() if "dev_bleu" in r}
    assert dev.keys() == single.keys() and dev
    assert all(abs(dev[step] - single[step]) <= DEV_BLEU_TOLERANCE for step in dev), (dev, single)
    assert sorted(p.name for p in run.path.iterdir()) == sorted(p.name for p in RunDir(one.run_dir).path.iterdir())


def rank_pids(job: subprocess.Popen) -> dict[int, int]:
    """The worker processes torchrun started, by their RANK."""
    found: dict[int, int] = {}
    pending = [job.pid]
    while pending:
        pid = pending.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"RANK=") and pid != job.pid:
                found[int(entry[5:])] = pid
        pending.extend(int(c) for c in children)
    return found


def kill_job(job: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (they run in sessions of their own, outside the job's group)."""
    workers = rank_pids(job).values()
    os.killpg(job.pid, signal.SIGKILL)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for(condition, job: subprocess.Popen, what: str, seconds: float = JOB_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if job.poll() is not None or time.monotonic() > deadline:
            kill_job(job)
            pytest.fail(f"never saw {what}: {job.communicate()[1][-3000:]}")
        time.sleep(0.02)


STEPS_AFTER_SIGNAL = 10  # a signal stops training at the next step boundary, whatever the CPU's speed


def last_logged_step(run: RunDir) -> int:
    return max(r["step"] for r in run.metrics() if "loss" in r)


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_both_and_saves_once(tmp_path):
    config = toy(tmp_path, "job", max_steps=100000, validate_every=100000)
    job = torchrun(config, wait=False)
    run = RunDir(tmp_path / "job")
    wait_for(lambda: run.metrics_path.exists() and run.metrics_path.read_text().count("\n") >= 3, job,
             "three logged steps")
    logged = last_logged_step(run)
    os.kill(rank_pids(job)[1], signal.SIGTERM)
    stderr = finish(job, timeout=60)  # a hang guard, not a speed claim
    assert "Traceback" not in stderr
    saved = run.checkpoints()
    assert len(saved) == 1, saved
    meta = json.loads(saved[0].meta.read_text())
    assert "dev_bleu" not in meta  # saved on the signal, not after a validation
    assert logged <= meta["step"] <= logged + STEPS_AFTER_SIGNAL, (logged, meta["step"])
    log = run.log_path.read_text()
    assert log.count("SIGTERM: saved") == 1 and "stopped (SIGTERM)" in log


@pytest.mark.slow
@pytest.mark.numerics
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    dropout = {"encoder": {"hidden_size": 48, "dropout": 0.3}, "decoder": {"hidden_size": 64, "dropout": 0.3}}
    whole = toy(tmp_path, "whole", dropout, max_steps=16)
    job = torchrun(whole)
    assert job.returncode == 0, job.stderr_text[-3000:]
    config = toy(tmp_path, "killed", dropout, max_steps=16)
    job = torchrun(config, wait=False)
    run = RunDir(tmp_path / "killed")
    wait_for(lambda: run.checkpoint(4).manifest.exists(), job, "the checkpoint of step 4")
    kill_job(job)
    job.communicate()
    assert not run.checkpoint(16).folder.exists(), "the job finished before it was killed"
    resumed = torchrun(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr_text[-3000:]
    assert "resumed from" in run.log_path.read_text()
    assert max_difference(weights(tmp_path / "whole", 16), weights(run.path, 16)) < 1e-6


@pytest.mark.slow
@pytest.mark.numerics
def test_resume_with_another_number_of_ranks_continues_the_same_data(tmp_path):
    """4 steps in one process accumulating 2, then 4 more on 2 ranks: the same as 8 steps in one process."""
    single = toy(tmp_path, "single", accumulate=2)
    train(load_config(single))
    switched = toy(tmp_path, "switched", accumulate=2, max_steps=4)
    train(load_config(switched))
    job = torchrun(switched, "--resume", "--set", "training.accumulate=1", "--set", "training.max_steps=8")
    assert job.returncode == 0, job.stderr_text[-3000:]
    assert max_difference(weights(tmp_path / "single", 8), weights(tmp_path / "switched", 8)) < 1e-5


@pytest.mark.slow
@pytest.mark.numerics
def test_uneven_shards_finish_the_epoch(tmp_path):
    """An odd number of batches: at the last step rank 1 has none and adds a zero-weight batch, not a hang."""
    config = load_config(toy(tmp_path, "uneven", max_steps=None, max_epochs=1, validate_every=1000))
    train_split = prepare_data(config).splits["train"]
    for budget in range(600, 700, 7):
        budgeted = config.training.model_copy(update={"batch_tokens": budget})
        batches = len(split_batches(train_split, config.model_copy(update={"training": budgeted}), 0))
        if batches % 2:
            break
    assert batches % 2
    two = toy(tmp_path, "uneven", max_steps=None, max_epochs=1, validate_every=1000, batch_tokens=budget)
    job = torchrun(two)
    assert job.returncode == 0, job.stderr_text[-3000:]
    steps = math.ceil(batches / 2)
    assert f"stopped (max_epochs) after {steps} steps" in RunDir(tmp_path / "uneven").log_path.read_text()
    one = train(load_config(toy(tmp_path, "one", max_steps=None, max_epochs=1, validate_every=1000,
                                batch_tokens=budget, accumulate=2)))
    assert one.steps == steps
    assert max_difference(weights(tmp_path / "uneven", steps), weights(one.run_dir, steps)) < 1e-5


def test_a_steps_token_count_is_its_batches_target_tokens(tmp_path):
    """The loss divisor each rank computes from the batch order alone equals the collated batches' count."""
    from nmt.training.recipe import Trainer

    trainer = Trainer(load_config(toy(tmp_path, "count", accumulate=3)))
    trainer.setup()
    order = trainer.batches.order(trainer.progress)
    for _ in range(5):
        share = trainer.batches.next_share(order)
        assert share is not None and len(share.batches) == 3
        assert share.tokens == sum(b.n_tgt_tokens for b in share.batches)
    trainer.cleanup()
