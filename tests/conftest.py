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


TOY_TRANSFORMER = {"type": "transformer", "transformer": {
    "d_model": 32, "heads": 4, "ff_size": 64, "encoder_layers": 2, "decoder_layers": 2, "dropout": 0.0,
    "attention_dropout": 0.0, "tie": "all"}}


@pytest.fixture(scope="session")
def trained_transformer(tmp_path_factory) -> Path:
    """A small Transformer trained on the reversal corpus (shared, trained once)."""
    from nmt.train import train

    root = tmp_path_factory.mktemp("transformer")
    raw = toy_config_dict(root, model=TOY_TRANSFORMER, tokenizer={"joint": True, "vocab_size": 60},
                          training={"max_steps": 500, "validate_every": 250, "lr": 0.004, "label_smoothing": 0.0,
                                    "schedule": {"type": "warmup_inverse_sqrt", "warmup_steps": 50}})
    return train(load_config(write_config(root, raw))).run_dir


@pytest.fixture
def tmpfs(tmp_path):
    """A factory of real size-limited filesystems (tmpfs, as root), unmounted afterwards; skips without root."""
    import os
    import shutil
    import subprocess
    import uuid

    mounted: list[Path] = []

    def mount(size: str, *options: str) -> Path:
        point = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        done = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(point)],
            capture_output=True).returncode == 0
        if not done:
            pytest.skip("needs root and mount to create a size-limited tmpfs")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def rewrite_meta():
    """Edit a checkpoint's meta.json and re-hash it into the manifest, as a tool that knew the format would."""
    import json

    from nmt.fileio import sha256_of

    def rewrite(files, edit) -> None:
        files.meta.write_text(edit(files.meta.read_text()))
        manifest = json.loads(files.manifest.read_text())
        manifest[files.META] = sha256_of(files.meta)
        files.manifest.write_text(json.dumps(manifest))

    return rewrite
