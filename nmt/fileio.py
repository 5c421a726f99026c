"""File helpers: atomic writes (a temporary file in the same folder, fsync, then rename: a reader, or a
crash, sees either the old file or the new one, never half of one), folders staged and swapped in whole, and
content hashes."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # <fcntl.h>, <linux/fs.h>


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write `path` through, published atomically when the block ends without an error (a
    long output streamed in pieces); an error (a full disk, `path` an existing folder) names `path`, not the
    temporary file, and leaves nothing behind."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the mode open() would
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename in (None, tmp):  # a write or the rename: say what was written
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`atomic_writer`)."""
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_files(folder: Path) -> dict[str, dict[str, int | str]]:
    """The size and sha256 of every file of a flat folder, by name: what a manifest records."""
    return {p.name: {"size": p.stat().st_size, "sha256": sha256_of(p)} for p in sorted(folder.iterdir())
            if p.is_file()}


@contextmanager
def staged_folder(final: Path, siblings: bool = False, replace: bool = True) -> Iterator[Path]:
    """Write a folder whole or not at all. The caller fills a fresh folder beside `final` (`.NAME.<random>.tmp`);
    its files are fsynced, then it takes `final`'s place in one step (renameat2's RENAME_EXCHANGE; where the
    system lacks it, two renames), so a crash at any moment leaves the old folder or the new one, never a mix.
    An error removes the staging folder; an OSError that names no file (torch.onnx.export's ENOSPC) is made to
    name the file being written, under its final name. The writer holds an flock on its staging folder, so the
    next call removes the leftovers of killed writers but never a live writer's (`siblings`: those of every
    name in the parent, a folder that nmt owns). Without `replace`, `final` must be missing or an empty folder:
    the folder goes in with one rename, which the system refuses (OSError ENOTEMPTY or EEXIST) where anything
    has appeared in `final`, so nothing there is ever removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final, siblings)
    staging, lock = _new_staging(final)
    try:
        try:
            yield staging
            for path in staging.rglob("*"):
                if path.is_file():
                    with open(path, "rb") as handle:
                        os.fsync(handle.fileno())
            fsync_dir(staging)
            _publish(staging, final, replace)
        except BaseException as err:
            _name_the_file(err, staging, final)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a failed write; after an exchange, the old folder
        os.close(lock)


_STAGED = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.(?P<kind>tmp|old)")  # .NAME.<random>.tmp; .old: two renames


def _remove_leftovers(final: Path, siblings: bool) -> None:
    """Remove the staging folders that dead writers left beside `final` (with `siblings`, those of any name: in
    a folder nmt owns, such as the cache of a key never built again); a live writer holds its folder's lock.
    An old folder that a writer moved aside before it died, leaving no `final`, is put back instead."""
    for path in final.parent.iterdir():
        match = _STAGED.fullmatch(path.name)
        if match is None or (match["name"] != final.name and not siblings) or path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            original = path.parent / match["name"]
            if match["kind"] == "old" and not os.path.lexists(original):
                os.rename(path, original)
            else:
                shutil.rmtree(path, ignore_errors=True)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)


def _new_staging(final: Path) -> tuple[Path, int]:
    """A new staging folder and the descriptor that holds its lock. A cleaner may take the folder for a leftover
    between its creation and the lock: then the lock fails or the folder is gone, and another one is made."""
    while True:
        staging = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            staging.mkdir()
            lock = os.open(staging, os.O_RDONLY)
        except (FileExistsError, FileNotFoundError):
            continue
        except OSError as err:  # a full or read-only device: name the folder being written, not the staging one
            raise OSError(err.errno, err.strerror, str(final)) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(lock), os.stat(staging)):
                return staging, lock
        except (BlockingIOError, FileNotFoundError):
            pass
        os.close(lock)


def _name_the_file(err: BaseException, staging: Path, final: Path) -> None:
    """Point an OSError at the file being written (the newest in the staging folder, which is about to go),
    under its name in `final`."""
    if not isinstance(err, OSError):
        return
    if err.filename is None:
        files = [(p.stat().st_mtime_ns, p.stat().st_ino, p) for p in staging.rglob("*") if p.is_file()]
        named = max(files)[2] if files else staging
    else:
        named = Path(os.fsdecode(err.filename))
    if named.is_relative_to(staging):
        err.filename = str(final / named.relative_to(staging))


def _publish(staging: Path, final: Path, replace: bool) -> None:
    """Put `staging` at `final`; an earlier `final` ends up at `staging` (or is removed), or with `replace` false
    stays where it is and the OSError of the rename is raised."""
    try:
        os.rename(staging, final)  # no `final` yet, or an empty one
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not replace:
            raise
        if not _exchange(staging, final):
            old = staging.with_suffix(".old")
            os.rename(final, old)  # a crash before the next rename leaves `old`, which the next writer puts back
            try:
                os.rename(staging, final)
            except OSError:
                os.rename(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where the system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
