"""CPU threads on a shared machine: a training's threads follow what other processes use (CoreShare), the count
is logged, and --threads pins it."""

import json
import os


def test_train_logs_its_threads_and_honours_the_option(tmp_path):
    from test_cli import run
    from toy import toy_config_dict, write_config

    raw = toy_config_dict(tmp_path / "a", training={"max_steps": 2, "validate_every": 2, "threads": None})
    assert run("train", "--config", write_config(tmp_path / "a", raw)).returncode == 0
    assert "CPU threads: " in (log := (tmp_path / "a" / "run" / "train.log").read_text())
    assert "(one per core, fewer while other processes use them)" in log
    raw = toy_config_dict(tmp_path / "b", training={"max_steps": 2, "validate_every": 2, "threads": None})
    result = run("train", "--config", write_config(tmp_path / "b", raw), "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "CPU threads: 1 (set)" in (tmp_path / "b" / "run" / "train.log").read_text()
    assert run("train", "--config", write_config(tmp_path, raw), "--threads", "0").returncode == 2


def test_use_threads_sets_and_describes():
    import torch

    from nmt.threads import use_threads

    before = torch.get_num_threads()
    try:
        assert use_threads(1).startswith("CPU threads: 1 (set)")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert use_threads(None) == f"CPU threads: {before} (one per core)" or "OMP_" in use_threads(None)


def test_each_server_process_takes_the_threads_serve_gave_it(trained_run, monkeypatch, caplog):
    import logging

    import torch

    from nmt.serve.server import SETTINGS_VARIABLE, Limits, app_from_environment

    settings = {"runs": [["toy", str(trained_run)]], "checkpoint": "best", "quantize": None,
                "limits": Limits().model_dump(), "threads": 1}
    monkeypatch.setenv(SETTINGS_VARIABLE, json.dumps(settings))
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="nmt.serve.server"):
            app_from_environment()
        assert torch.get_num_threads() == 1 and "CPU threads: 1 (set)" in caplog.text
    finally:
        torch.set_num_threads(before)


class FakeMachine:
    """A 2-core machine whose clock, busy seconds and this process's CPU seconds the test advances."""

    def __init__(self):
        self.now = self.busy = self.own = 0.0

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds


def test_core_share_follows_what_other_processes_use():
    import torch

    from nmt.threads import CoreShare

    machine = FakeMachine()
    before = torch.get_num_threads()
    try:
        share = CoreShare(2, every_s=10, clock=lambda: machine.now, machine=lambda: (machine.busy, 2),
                          own=lambda: machine.own)
        machine.run(5, own_cores=2, other_cores=1)
        share.poll()
        assert share.threads == 2  # not yet: one measurement per 10 s
        machine.run(5, own_cores=1, other_cores=1)
        share.poll()
        assert share.threads == 1 and torch.get_num_threads() == 1  # a second training: a core each
        machine.run(10, own_cores=1, other_cores=0.6)
        share.poll()
        assert share.threads == 1  # 1.4 cores free: rounds to 1
        machine.run(10, own_cores=1, other_cores=0.4)
        share.poll()
        assert share.threads == 2 and torch.get_num_threads() == 2  # a light neighbour leaves both
        machine.run(10, own_cores=2, other_cores=0)
        share.poll()
        assert share.threads == 2
        machine.run(10, own_cores=1, other_cores=1)
        share.poll()
        assert share.threads == 1
        share.restore()  # the training ended: the process gets its count back
        assert share.threads == 2 and torch.get_num_threads() == 2
        ceiling = CoreShare(1, clock=lambda: machine.now, machine=lambda: (machine.busy, 2), own=lambda: machine.own)
        machine.run(10, own_cores=1, other_cores=0)
        ceiling.poll()
        assert ceiling.threads == 1  # never above the ceiling
    finally:
        torch.set_num_threads(before)


def test_core_share_without_a_kernel_that_says_changes_nothing():
    from nmt.threads import CoreShare

    share = CoreShare(2, every_s=0, machine=lambda: None)
    share.poll()
    assert share.threads == 2


def test_machine_busy_seconds_reads_the_cores_this_process_may_use(tmp_path):
    from nmt.threads import machine_busy_seconds

    stat = tmp_path / "stat"
    ticks = os.sysconf("SC_CLK_TCK")
    stat.write_text(f"cpu  {9 * ticks} 0 0 {90 * ticks} 0 0 0 0 0 0\n"
                    f"cpu0 {3 * ticks} 0 {ticks} {30 * ticks} {2 * ticks} 0 0 0 0 0\n"
                    f"cpu1 {ticks} 0 0 {30 * ticks} 0 0 0 0 0 0\n"
                    f"cpu2 {4 * ticks} 0 0 {30 * ticks} 0 0 0 0 0 0\n\nintr 5\n")
    assert machine_busy_seconds(stat, cpus={0, 1}) == (5.0, 2)  # iowait is idle; cpu2 is not this process's
    assert machine_busy_seconds(stat, cpus={2}) == (4.0, 1)
    assert machine_busy_seconds(stat, cpus={7}) is None
    assert machine_busy_seconds(tmp_path / "missing") is None
    if (found := machine_busy_seconds()) is not None:  # this machine's, where it is Linux
        assert found[1] == len(os.sched_getaffinity(0))
