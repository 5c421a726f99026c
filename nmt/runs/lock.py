"""One writer per run directory. `nmt train` holds an exclusive lock (fcntl.flock) on RUN/.lock from before
it writes anything until it ends; the operating system releases it when the holder dies, so a killed trainer
never blocks the resume that follows. The file names its holder, so a second writer is refused in one line
saying who holds the run. Under torchrun rank 0 holds it.

A trainer refused before it wrote anything (a bad --init-from, alignment file or corpus) gives the run up with
`abandon`: a directory it created and left holding only the lock goes again. It removes the lock file while
holding it, so `lock_run` checks that the file it locked is still the run's, and takes the new one otherwise."""

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

    def abandon(self) -> None:
        """Give the run up after a refusal: the run directory goes if this lock created it and it holds nothing
        but the lock file (a run that existed before is never touched)."""
        try:
            if self.created and [entry.name for entry in self.run.path.iterdir()] == [self.run.lock_path.name]:
                self.run.lock_path.unlink()
                self.run.path.rmdir()  # fails, and keeps it, if another process has just written into it
        except OSError:
            pass
        finally:
            self.release()


def _still_there(handle: IO[str], path: Path) -> bool:
    """Whether `handle` is the file at `path` (a refused trainer may have removed it while we waited)."""
    try:
        found, held = os.stat(path), os.fstat(handle.fileno())
    except FileNotFoundError:
        return False
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def lock_run(run: RunDir) -> RunLock:
    """Take the run directory for this process, or raise RunBusyError naming the process that has it."""
    while True:
        created = not run.path.exists()
        run.path.mkdir(parents=True, exist_ok=True)
        handle = open(run.lock_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunBusyError(f"{run.path} is being written by {holder}: one nmt train at a time per run "
                               "directory; wait for it to end (or stop it), then continue with --resume") from None
        if _still_there(handle, run.lock_path):
            break
        handle.close()
    handle.seek(0)
    handle.truncate()
    handle.write(f"nmt train, pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return RunLock(handle, run, created)
