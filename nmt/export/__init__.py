"""Writing a run for other engines: ONNX graphs and CTranslate2 models.

Both write through `export_folder`: an export is staged beside its folder and swapped in whole
(fileio.staged_folder), with a manifest of every file's size and sha256, so a kill or a full disk leaves the
previous export as it was, never one that mixes two checkpoints."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nmt.errors import ArgumentError, ConfigError, DiskFullError, NmtError
from nmt.fileio import staged_folder
from nmt.models import Model

MB = 1 << 20


def require_export(model: Model, format_: str) -> None:
    """Refuse in one line a model that cannot be written in `format_` (its `describe().exports`)."""
    described = model.describe()
    if format_ not in described.exports:
        formats = " or ".join(described.exports)
        raise ArgumentError("format", f"{format_}: a {described.summary} model cannot be exported to {format_}"
                                      + (f"; it can be exported to {formats}" if formats else ""))


@contextmanager
def export_folder(folder: Path, manifest: str) -> Iterator[Path]:
    """A staging folder that replaces `folder` when the block ends without error. `folder` must be new, empty,
    or an earlier export (it holds `manifest`): the whole folder is replaced, so nothing else may live there.
    A failed write is one line naming the file and the export folder, and nothing is left behind."""
    if folder.exists() and not (folder.is_dir() and ((folder / manifest).is_file() or not any(folder.iterdir()))):
        raise ConfigError(f"{folder}: exists and is not an nmt export (no {manifest}); export to a new folder, the "
                          "export replaces the whole folder")
    try:
        with staged_folder(folder) as staging:
            yield staging
    except OSError as err:
        where = err.filename or folder
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            device = next(p for p in (folder, *folder.parents) if p.exists())
            free = shutil.disk_usage(device).free / MB
            raise DiskFullError(f"cannot write {where}: no space left on the device ({free:,.1f} MB free); {folder} "
                                "is as it was before this export (free some space, then export again)") from None
        raise NmtError(f"cannot write {where}: {err.strerror or err}; {folder} is as it was before this export"
                       ) from None
