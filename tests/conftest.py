"""Shared fixtures: a toy config (the generated reversal corpus of nmt.toy) and one small trained run."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmt.config import load_config
from nmt.toy import toy_config_dict, write_config


@pytest.fixture
def toy_config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path, toy_config_dict(tmp_path))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A Luong-general model trained on the reversal corpus until it translates it (shared, trained once)."""
    from nmt.train import train

    root = tmp_path_factory.mktemp("trained")
    raw = toy_config_dict(root, training={"max_steps": 400, "validate_every": 200, "lr": 0.01},
                          model={"attention": {"type": "general"}})
    result = train(load_config(write_config(root, raw)))
    assert result.best_bleu > 80, f"the toy model did not learn the reversal task (dev BLEU {result.best_bleu})"
    return result.run_dir
