"""One writer per run directory. `nmt train` and `nmt import` hold an exclusive lock (fcntl.flock) on RUN/.lock
from before they write anything until they end; the operating system releases it when the holder dies, so a
killed trainer never blocks the resume that follows. The file names its holder, so a second writer is refused
in one line saying who holds the run. Under torchrun rank 0 holds it.

A writer refused before it wrote anything (a bad --init-from, alignment file, corpus or Marian folder) gives
the run up with `abandon`: a directory it created goes again unless something else appeared in it. It removes the
lock file while holding it (so does an import about to rename its run into place), so `lock_run` checks that
the file it locked is still the run's, and takes the new one otherwise."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from nmt.errors import RunBusyError
from nmt.runs.rundir import RunDir


class RunLock:
    def __init__(self, handle: IO[str], run: RunDir, created: bool):
        self.handle, self.run, self.created = handle, run, created

    def release(self) -> None:
        """Give the run up (closing the file releases the lock)."""
        self.handle.close()

    def unlink(self) -> None:
        """Remove RUN/.lock while still holding it (`nmt import` renames its new run onto RUN, and a rename only
        replaces an empty folder). A process that opened the file before and tries it after this one is
        released finds the file gone and locks the one at RUN/.lock instead (`lock_run`)."""
        if _still_there(self.handle, self.run.lock_path):
            self.run.lock_path.unlink()

    def abandon(self) -> None:
        """Give the run up after a refusal: a run directory this lock created loses its lock file, and goes if
        nothing else is in it (a run that existed before is never touched; what others put in stays)."""
        try:
            if self.created:
                self.unlink()
                self.run.path.rmdir()  # fails, and keeps it, if anything else is in it
        except OSError:
            pass
        finally:
            self.release()


def _still_there(handle: IO[str], path: Path) -> bool:
    """Whether `handle` is the file at `path` (its holder may have removed it while we waited)."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def lock_run(run: RunDir, command: str = "nmt train",
             advice: str = "wait for it to end (or stop it), then continue with --resume") -> RunLock:
    """Take the run directory for this process (`command` names it in the file), or raise RunBusyError naming
    the process that has it, followed by `advice`."""
    while True:
        created = not run.path.exists()
        run.path.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(run.lock_path, "a+", encoding="utf-8")
        except FileNotFoundError:  # the folder went as it was made (a refused writer removes the one it made)
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunBusyError(f"{run.path} is being written by {holder}: one writer at a time per run "
                               f"directory; {advice}") from None
        if _still_there(handle, run.lock_path):
            break
        handle.close()  # its holder removed it before releasing it: lock the file there now
    handle.seek(0)
    handle.truncate()
    handle.write(f"{command}, pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return RunLock(handle, run, created)
