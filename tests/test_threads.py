"""CPU threads on a shared machine: OpenMP waits passively unless the user chose, set before torch loads (so that
torch's own OpenMP runtime reads it), logged, and --threads honoured."""

import json
import os
import subprocess
import sys

import pytest

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

# With OMP_DISPLAY_ENV=VERBOSE (OpenMP 4.0) the runtime prints the settings it read when it loaded, on stderr
PROBE = """
import json, os
{first}
from nmt.threads import WAIT_POLICY
import torch
torch.ones(4) @ torch.ones(4)
print(json.dumps({{"env": os.environ.get("OMP_WAIT_POLICY"), "in_effect": WAIT_POLICY.in_effect,
                  "chosen_by": WAIT_POLICY.chosen_by, "describe": WAIT_POLICY.describe()}}))
"""


def probe(first: str = "import nmt", **env: str) -> tuple[dict, str]:
    clean = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    result = subprocess.run([sys.executable, "-c", PROBE.format(first=first)],
                            env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def spin_count(displayed: str) -> str | None:
    """How long torch's OpenMP threads spin before they sleep, as its runtime read it: libgomp shows it as
    GOMP_SPINCOUNT (0 when passive, 300000 by default); None where the runtime does not say."""
    for line in displayed.splitlines():
        if line.strip().startswith("GOMP_SPINCOUNT"):
            return line.split("=", 1)[1].strip().strip("'")
    return None


def test_importing_nmt_makes_torchs_openmp_wait_passively():
    found, displayed = probe()
    assert found["env"] == "PASSIVE" and found["in_effect"] and found["chosen_by"] == "nmt"
    assert found["describe"] == "OMP_WAIT_POLICY=PASSIVE (nmt default)"
    if spin_count(displayed) is None:
        pytest.skip("torch's OpenMP runtime here does not display its settings")
    assert spin_count(displayed) == "0"
    _, late = probe(first="import torch\nimport nmt")  # the runtime's own default, so the check above can fail
    assert spin_count(late) not in (None, "0")


@pytest.mark.parametrize("variable, value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "10000")])
def test_a_wait_the_user_chose_is_kept(variable, value):
    found, _ = probe(**{variable: value})
    assert found["chosen_by"] == "the environment" and found["in_effect"]
    assert found["env"] == (value if variable == "OMP_WAIT_POLICY" else None)
    assert found["describe"] == f"{variable}={value} (from the environment)"


def test_torch_imported_first_is_said():
    found, _ = probe(first="import torch\nimport nmt")
    assert not found["in_effect"] and "too late" in found["describe"]


def test_train_logs_its_threads_and_honours_the_option(tmp_path):
    from test_cli import run
    from toy import toy_config_dict, write_config

    raw = toy_config_dict(tmp_path, training={"max_steps": 2, "validate_every": 2})
    result = run("train", "--config", write_config(tmp_path, raw), "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "CPU threads: 1 (set), " in (tmp_path / "run" / "train.log").read_text()
    assert run("train", "--config", write_config(tmp_path, raw), "--threads", "0").returncode == 2


def test_use_threads_sets_and_describes():
    import torch

    from nmt.threads import use_threads

    before = torch.get_num_threads()
    try:
        assert use_threads(1).startswith("CPU threads: 1 (set), ")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert use_threads(None).startswith(f"CPU threads: {before} (one per core), ")


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
        assert torch.get_num_threads() == 1 and "CPU threads: 1 (set), " in caplog.text
    finally:
        torch.set_num_threads(before)
