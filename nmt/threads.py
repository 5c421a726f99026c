"""How a long CPU job uses its threads when other work shares the machine.

torch runs its intra-op work on OpenMP threads that meet at a barrier after each operation. When another process
takes one of the cores (a second training, a notebook, CI), the barrier waits for the thread that lost its core,
and every operation pays for it: the shipped Multi30k Transformer kept 0.50 of its fair share of 2 cores beside a
second training, the quickstart RNN 0.41. With as many threads as free cores both settle on a core each.
OpenMP's wait policy was measured too and is left as torch's runtime has it: a passive wait made the quickstart RNN
train a third slower alone (BENCHMARKS.md, "Training beside other work").
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def use_threads(threads: int | None, follows_load: bool = False) -> str:
    """Set the intra-op thread count (None: torch's default, one per core) and describe the CPU threading, for the
    log of a training or a server; `follows_load`: a CoreShare will lower the count while others use the cores."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    chosen = "set" if threads else "one per core, fewer while other processes use them" if follows_load \
        else "one per core"
    waits = ", ".join(f"{name}={os.environ[name]}" for name in WAIT_VARIABLES if name in os.environ)
    return f"CPU threads: {torch.get_num_threads()} ({chosen}){f', {waits}' if waits else ''}"


def machine_busy_seconds(stat: Path = Path("/proc/stat"), cpus: set[int] | None = None) -> tuple[float, int] | None:
    """CPU seconds the cores this process may run on (its affinity, or `cpus`) have spent busy since boot, and how
    many they are; None where the kernel does not say (not Linux)."""
    try:
        lines = stat.read_text().splitlines()
    except OSError:
        return None
    if cpus is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    busy, cores = 0, 0
    for line in lines:
        name, *values = line.split() or [""]
        if not (name.startswith("cpu") and name[3:].isdigit() and (cpus is None or int(name[3:]) in cpus)):
            continue
        fields = [int(v) for v in values]  # user nice system idle iowait irq softirq steal ...
        busy += sum(fields[:8]) - fields[3] - (fields[4] if len(fields) > 4 else 0)
        cores += 1
    return (busy / os.sysconf("SC_CLK_TCK"), cores) if cores else None


class CoreShare:
    """Keeps a long CPU job's intra-op threads at the cores that other processes leave free. Every `every_s`
    seconds it reads the machine's busy time less this process's own: what the others used. Beside a second
    training both settle on a core each, instead of stalling each other's barriers; alone it goes back to the
    ceiling (BENCHMARKS.md, "Training beside other work"). Changing the count can change float sums in the last
    bits: training.threads pins it for runs that must repeat bit for bit."""

    def __init__(self, ceiling: int, every_s: float = 10.0, clock=time.monotonic, machine=machine_busy_seconds,
                 own=time.process_time):
        self.ceiling, self.every_s = ceiling, every_s
        self.clock, self.machine, self.own = clock, machine, own
        self.threads = ceiling
        found = machine()
        self.cores = found[1] if found else 0
        self.last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        found = self.machine()
        return None if found is None else (self.clock(), found[0], self.own())

    def poll(self) -> None:
        """Call between steps; each `every_s` seconds, set the thread count that the last interval's load leaves."""
        if self.last is None or self.clock() - self.last[0] < self.every_s or (now := self._sample()) is None:
            return
        wall, busy, own = (b - a for a, b in zip(self.last, now, strict=True))
        self.last = now
        others = max(0.0, (busy - own) / wall)
        threads = max(1, min(self.ceiling, int(self.cores - others + 0.5)))
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            log.info("CPU threads: %d (other processes used %.1f of %d cores over the last %.0f s)", threads,
                     others, self.cores, wall)
            self.threads = threads

    def restore(self) -> None:
        """Back to the ceiling when the job ends (a notebook that trained keeps its own thread count)."""
        if self.threads != self.ceiling:
            import torch

            torch.set_num_threads(self.ceiling)
            self.threads = self.ceiling
