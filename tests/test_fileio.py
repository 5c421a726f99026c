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


def test_a_failed_atomic_write_names_the_target_and_leaves_nothing(tmp_path):
    """`-o` an existing folder: the error used to name the temporary file."""
    (tmp_path / "plot.png").mkdir()
    with pytest.raises(OSError) as caught:
        atomic_write_text(tmp_path / "plot.png", "x")
    assert caught.value.filename == str(tmp_path / "plot.png")
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


@pytest.mark.slow
def test_heatmaps_onto_a_full_disk_are_one_line_naming_the_image_and_leave_no_empty_file(trained_run, tmp_path,
                                                                                         tmpfs):
    """`nmt attention` and `nmt compare` on a real full filesystem used to leave 0-byte PNGs and name no path."""
    from test_checkpoint import _fill
    from test_cli import run

    disk = tmpfs("256K")
    _fill(disk, 0)
    for args, image in ((["attention", "--model", trained_run, "ab ca", "-o", disk], f"{disk}/ab_ca-"),
                        (["compare", trained_run, "-o", disk / "compare.png"], f"{disk}/compare.png")):
        result = run(*args)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 1 and f"error: {image}" in errors[0] and "No space left" in errors[0], result.stderr
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no empty or partial image


def test_a_folder_moved_aside_by_a_writer_that_died_is_put_back(tmp_path):
    """Without RENAME_EXCHANGE a writer moves the old folder aside, then renames its own in: killed between the
    two, it leaves no folder but `.NAME.<random>.old`, which the next writer restores instead of removing."""
    from nmt.fileio import staged_folder

    aside = tmp_path / ".export.0123abcd.old"
    aside.mkdir()
    (aside / "model").write_text("v1")
    foreign = tmp_path / ".notes.89abcdef.tmp"  # not ours to clean beside a user's folder
    foreign.mkdir()
    with pytest.raises(RuntimeError), staged_folder(tmp_path / "export") as staging:
        (staging / "model").write_text("v2")
        raise RuntimeError("the new export fails")
    assert (tmp_path / "export" / "model").read_text() == "v1" and not aside.exists() and foreign.is_dir()


def test_a_staged_folder_that_must_not_replace_leaves_what_appeared_at_its_place(tmp_path):
    """`replace=False` (nmt import): a file written into the empty destination while the folder is staged makes
    the rename fail; the file stays, the staged folder goes."""
    import errno

    from nmt.fileio import staged_folder

    final = tmp_path / "run"
    final.mkdir()
    with pytest.raises(OSError) as refused, staged_folder(final, replace=False) as staging:
        (staging / "config.yaml").write_text("imported")
        (final / "checkpoint").write_text("trained")
    assert refused.value.errno in (errno.ENOTEMPTY, errno.EEXIST)
    assert [p.name for p in final.iterdir()] == ["checkpoint"] and [p.name for p in tmp_path.iterdir()] == ["run"]
    with staged_folder(tmp_path / "new", replace=False) as staging:
        (staging / "config.yaml").write_text("imported")
    assert (tmp_path / "new" / "config.yaml").read_text() == "imported"
