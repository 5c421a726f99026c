"""How nmt's processes use the CPU's threads when other work shares the machine.

torch's CPU wheels run their intra-op threads on OpenMP (libgomp), whose idle threads spin between parallel
regions before they sleep. On a shared machine (a second training, a notebook, `nmt serve` beside a training, CI)
the spinning takes cores from the others, and the others' work preempts the thread a barrier waits for: the
shipped Multi30k Transformer kept 0.51 of its fair share of 2 cores beside a second training by default, and 1.11
with a passive wait, which trained as fast alone (BENCHMARKS.md, "Training beside other work"). So nmt asks for a
passive wait unless the user chose a wait (OMP_WAIT_POLICY, GOMP_SPINCOUNT). libgomp reads that once, when torch
loads: `wait_passively` runs when nmt is imported, and says whether it came too late for this process.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


@dataclass(frozen=True)
class WaitPolicy:
    setting: str  # e.g. "OMP_WAIT_POLICY=PASSIVE"
    chosen_by: str  # "nmt" or "the environment"
    in_effect: bool  # False where torch was loaded before nmt set it (its OpenMP had read the environment)

    def describe(self) -> str:
        if not self.in_effect:
            return f"{self.setting} set too late for this process (torch was imported before nmt)"
        return f"{self.setting} ({'nmt default' if self.chosen_by == 'nmt' else 'from the environment'})"


def wait_passively() -> WaitPolicy:
    """Set OMP_WAIT_POLICY=PASSIVE for this process and its children unless the environment chose a wait."""
    chosen = [f"{name}={os.environ[name]}" for name in WAIT_VARIABLES if name in os.environ]
    if chosen:
        return WaitPolicy(", ".join(chosen), "the environment", True)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return WaitPolicy("OMP_WAIT_POLICY=PASSIVE", "nmt", "torch" not in sys.modules)


WAIT_POLICY = wait_passively()


def use_threads(threads: int | None) -> str:
    """Set the intra-op thread count (None: torch's default, one per core) and describe the CPU threading, for the
    log of a training or a server."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    chosen = "set" if threads else "one per core"
    return f"CPU threads: {torch.get_num_threads()} ({chosen}), {WAIT_POLICY.describe()}"
