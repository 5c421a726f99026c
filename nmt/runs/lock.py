"""One writer per run directory. `nmt train` holds an exclusive lock (fcntl.flock) on RUN/.lock from before
it writes anything until it ends; the operating system releases it when the holder dies, so a killed trainer
never blocks the resume that follows. The file names its holder, so a second writer is refused in one line
saying who holds the run. Under torchrun rank 0 holds it."""

from __future__ import annotations

import fcntl
import os
import socket
from typing import IO

from nmt.errors import RunBusyError
from nmt.runs.rundir import RunDir


class RunLock:
    def __init__(self, handle: IO[str]):
        self.handle = handle

    def release(self) -> None:
        """Give the run up (closing the file releases the lock)."""
        self.handle.close()


def lock_run(run: RunDir) -> RunLock:
    """Take the run directory for this process, or raise RunBusyError naming the process that has it."""
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
    handle.seek(0)
    handle.truncate()
    handle.write(f"nmt train, pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return RunLock(handle)
