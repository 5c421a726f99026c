"""Data-parallel training across processes launched by torchrun: who this process is, and the few
collectives the training loop needs beyond DistributedDataParallel's own gradient all-reduce.

A plain `nmt train` has no torchrun variables in its environment and gets `World.single()`: every method
here is then a no-op, so the loop has one code path. Under torchrun the process group uses gloo on the CPU
and NCCL on CUDA, with a timeout: a rank that stops answering ends the job with an error once
`training.distributed_timeout_minutes` have passed, instead of hanging for ever.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from nmt.errors import ConfigError

log = logging.getLogger(__name__)

# The reasons any rank may have to stop, in order of precedence; agree_stop shares them in one collective.
STOP_REASONS = ("max_steps", "max_minutes", "patience", "SIGINT", "SIGTERM")


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """Each rank's own RNG seed (different dropout masks); rank 0 at step 0 seeds as a single process does."""
    return seed + 1_000_003 * rank + step


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launched: bool = False  # by torchrun: a process group is used even with one process (the NCCL/gloo path)

    @classmethod
    def single(cls) -> World:
        return cls()

    @classmethod
    def from_environment(cls) -> World:
        """The world torchrun describes in RANK / WORLD_SIZE / LOCAL_RANK, or a single process without them."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls.single()
        try:
            return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)),
                       launched=True)
        except ValueError:
            raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None

    @property
    def distributed(self) -> bool:
        """Whether this process is one rank of a process group (under torchrun, after `init`)."""
        return self.launched and dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # Set-up and tear-down --------------------------------------------------------------------------------

    def device(self, cuda: bool) -> torch.device:
        """One GPU per process, chosen by the local rank; the CPU otherwise."""
        if not cuda:
            return torch.device("cpu")
        if self.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {self.local_rank} has no GPU: this machine has {torch.cuda.device_count()}"
                              "; start at most that many processes per node")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def init(self, device: torch.device, timeout_minutes: float) -> None:
        """Join the process group torchrun set up (its rendezvous is in MASTER_ADDR / MASTER_PORT)."""
        if not self.launched or dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes),
                                device_id=device if device.type == "cuda" else None)
        log.info("rank %d of %d joined the %s process group", self.rank, self.size, backend)

    def close(self) -> None:
        """Leave the process group (after a barrier on the normal path: see recipe.train)."""
        if dist.is_available() and dist.is_initialized():
            gc.collect()  # objects that hold the group (DDP's reducer) are released first
            dist.destroy_process_group()

    # Collectives (each a no-op for a single process) --------------------------------------------------------

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sum of `values` over the ranks (float64, so token counts stay exact)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def agree_stop(self, reasons: set[str], device: torch.device) -> str | None:
        """The stop reason every rank adopts: the first of STOP_REASONS that any rank has. One all-reduce."""
        if not self.distributed:
            return next((r for r in STOP_REASONS if r in reasons), None)
        flags = torch.tensor([float(r in reasons) for r in STOP_REASONS], dtype=torch.float64, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return next((r for r, flag in zip(STOP_REASONS, flags.tolist(), strict=True) if flag), None)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object, e.g. dev scores) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any] | None:
        """Every rank's `value` as a list on rank 0 (None elsewhere); [value] for a single process."""
        if not self.distributed:
            return [value]
        gathered: list[Any] | None = [None] * self.size if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered
