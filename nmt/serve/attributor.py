"""Gradient attribution for the server, computed in a child process per served model. captum, which computes
it (nmt.inspect.attribution.attribute), imports matplotlib when it is imported, and the serving process never
loads plotting (the import contract in pyproject.toml): the child does, the server only shapes what the child
returns (nmt.inspect.attribution.shape_attribution).

Each child is spawned, not forked (a fork would copy the server's threads and locks), on the first attribution
request for its model, and loads the run once, unquantized whatever the server decodes with: gradients need
float weights. One child per model works on one request at a time; the others wait in its queue."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import torch

from nmt.inspect.attribution import attribute
from nmt.runs.loading import LoadedRun, load_model

_loaded: LoadedRun | None = None  # in a child: the run it attributes with


def _load(run_dir: Path, checkpoint: str) -> None:
    """A child's initializer: the run in float weights, on one thread. The server decodes on the same cores at
    the same time, and oversubscribed intra-op threads cost far more than they give (integrated gradients on
    the shipped Transformer: about 3 s on one thread, 8 to 22 s on two beside a busy server)."""
    global _loaded
    torch.set_num_threads(1)
    _loaded = load_model(run_dir, checkpoint)


def _relevance(src_ids: list[int], tgt_ids: list[int], method: str, steps: int) -> np.ndarray:
    """In a child: `attribute`'s (T + 1, S) relevance, as numpy (what crosses the process boundary)."""
    assert _loaded is not None, "the child's initializer loads the run"
    return attribute(_loaded, src_ids, tgt_ids, method, steps).numpy()


class Attributor:
    """The served runs' attribution children, started when first needed and shut down with `close`."""

    def __init__(self, runs: Mapping[str, Path], checkpoint: str):
        self.runs, self.checkpoint = runs, checkpoint
        self.pools: dict[str, ProcessPoolExecutor] = {}

    def _pool(self, model: str) -> ProcessPoolExecutor:
        if model not in self.pools:
            self.pools[model] = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_load,
                initargs=(self.runs[model], self.checkpoint))
        return self.pools[model]

    async def relevance(self, model: str, src_ids: Sequence[int], tgt_ids: Sequence[int], method: str,
                        steps: int) -> torch.Tensor:
        """The (T + 1, S) relevance of `model`'s translation `tgt_ids` of `src_ids`, awaited without blocking
        the event loop. A child that died (killed for memory) is replaced on the next request."""
        pool = self._pool(model)
        try:
            found = await asyncio.wrap_future(pool.submit(_relevance, list(src_ids), list(tgt_ids), method, steps))
        except BrokenProcessPool:
            if self.pools.get(model) is pool:
                del self.pools[model]
            pool.shutdown(wait=False)
            raise
        return torch.from_numpy(found)

    def close(self) -> None:
        """Cancel what waits, wait for what runs, and end the children."""
        for pool in self.pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self.pools.clear()
