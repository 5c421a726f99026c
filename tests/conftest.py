"""Shared fixtures: a toy config (the generated reversal corpus of toy) and two small trained runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from toy import reverse_words, toy_config_dict, write_config
from toy_runs import MIN_DEV_BLEU, PROBES, toy_run_config

from nmt.config import load_config


@pytest.fixture
def toy_config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path, toy_config_dict(tmp_path))


def train_and_check(root: Path, recipe: str) -> Path:
    """Train a toy recipe and check that it learned: dev BLEU at least MIN_DEV_BLEU and the probe sentences that
    tests compare with the task's answer translated right (greedy and beam). The recipes train to a plateau,
    far above these checks on every CPU measured (scripts/learning_spread.py, README "Tests")."""
    from nmt.inference.translate import translate_lines
    from nmt.training.recipe import train

    result = train(load_config(toy_run_config(root, recipe)), show_progress=False)
    assert result.best_bleu >= MIN_DEV_BLEU, f"the toy {recipe} did not learn the reversal task (dev BLEU " \
                                             f"{result.best_bleu:.1f})"
    for beam in (1, 3):
        found = [t.text for t in translate_lines(result.run_dir, PROBES, beam_size=beam).translations]
        wrong = [(s, t) for s, t in zip(PROBES, found, strict=True) if t != reverse_words(s)]
        assert not wrong, f"the toy {recipe} mistranslates probes (beam {beam}): {wrong}"
    return result.run_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """An RNN with Luong general attention that translates the reversal corpus (shared, trained once)."""
    return train_and_check(tmp_path_factory.mktemp("trained"), "rnn")


@pytest.fixture(scope="session")
def trained_transformer(tmp_path_factory) -> Path:
    """A small Transformer that translates the reversal corpus (shared, trained once)."""
    return train_and_check(tmp_path_factory.mktemp("transformer"), "transformer")


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
            pytest.skip("needs root and mount to create a size-limited tmpfs: run the tests as root")
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
