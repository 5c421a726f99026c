"""Atomic writes: the new file appears whole, with the mode the user's umask gives any new file."""

import os

import pytest

from nmt.fileio import atomic_write_text


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.yaml", "name: x\n")
    finally:
        os.umask(old)
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == mode
    assert (tmp_path / "config.yaml").read_text() == "name: x\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left
