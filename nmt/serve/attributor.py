"""Gradient attribution for the server, computed in a child process per served checkpoint. captum, which
computes it (nmt.inspect.attribution.attribute), imports matplotlib when it is imported, and the serving process
never loads plotting (the import contract in pyproject.toml): the child does, the server only shapes what the
child returns (nmt.inspect.attribution.shape_attribution).

A child attributes with exactly the checkpoint its model is served with (`ServedCheckpoint`: the folder the
server loaded and the sha256 of its weights), never with what `best` names when the child starts: training
may have written a better checkpoint since. It loads that folder and refuses if it is gone or holds other
weights. A served model whose checkpoint changes gets a fresh child.

Each child is spawned, not forked (a fork would copy the server's threads and locks), on the first attribution
request for its checkpoint, and loads it once, unquantized whatever the server decodes with: gradients need
float weights. One child per model works on one request at a time; the others wait in its queue."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.errors import CheckpointError
from nmt.inspect.attribution import attribute
from nmt.runs.loading import LoadedRun, load_model
from nmt.runs.rundir import CheckpointFiles


@dataclass(frozen=True)
class ServedCheckpoint:
    """The checkpoint a model is served with: its run, its folder and its weights' sha256 as the manifest the
    server verified listed it (a folder's name alone does not say which weights: `averaged` is rewritten by
    `nmt average`, a step folder lost to a crash is written again on resume)."""

    run_dir: Path
    files: CheckpointFiles  # its folder, and which of its weights (the trained ones, or their moving average)
    weights_sha256: str | None

    @classmethod
    def of(cls, loaded: LoadedRun) -> ServedCheckpoint:
        return cls(loaded.run.path, loaded.checkpoint.files, loaded.checkpoint.weights_sha256)

    def load(self) -> LoadedRun:
        """This checkpoint in float weights, or a CheckpointError saying why the served one cannot be had."""
        restart = "restart the server to serve (and attribute with) a checkpoint that is there"
        try:
            loaded = load_model(self.run_dir, self.files)
        except CheckpointError as err:
            raise CheckpointError(f"attribution needs the checkpoint the server serves and cannot load it ({err}; "
                                  f"training may have pruned it since): {restart}") from None
        if loaded.checkpoint.weights_sha256 != self.weights_sha256:
            raise CheckpointError(f"{self.files.folder} holds other weights than the server loaded (sha256 "
                                  f"{loaded.checkpoint.weights_sha256} in its manifest, {self.weights_sha256} "
                                  f"served): it was written again since; {restart}")
        return loaded


_served: ServedCheckpoint | None = None  # in a child: the checkpoint it attributes with
_loaded: LoadedRun | None = None  # ... once loaded


def _start(served: ServedCheckpoint) -> None:
    """A child's initializer: one thread. The server decodes on the same cores at the same time, and
    oversubscribed intra-op threads cost far more than they give (RELIABILITY.md measures it)."""
    global _served
    torch.set_num_threads(1)
    _served = served


def _relevance(src_ids: list[int], tgt_ids: list[int], ended: bool, method: str, steps: int) -> np.ndarray:
    """In a child: `attribute`'s relevance, as numpy (what crosses the process boundary). The checkpoint is
    loaded by the first request, not by the initializer, so that a refusal reaches the server as this
    request's error (an initializer's error only breaks the pool, its message lost)."""
    global _loaded
    assert _served is not None, "the child's initializer names its checkpoint"
    if _loaded is None:
        _loaded = _served.load()
    return attribute(_loaded, src_ids, tgt_ids, method, steps, ended, max_cost=None).numpy()  # bounded by the server


class Attributor:
    """The served models' attribution children, one per model and served checkpoint, started when first needed
    and shut down with `close`."""

    def __init__(self) -> None:
        self.pools: dict[str, tuple[ServedCheckpoint, ProcessPoolExecutor]] = {}

    def _pool(self, model: str, served: ServedCheckpoint) -> ProcessPoolExecutor:
        """`model`'s child for `served`; one for an earlier checkpoint of the model is ended (what it runs
        finishes first)."""
        if model in self.pools:
            had, pool = self.pools[model]
            if had == served:
                return pool
            del self.pools[model]
            pool.shutdown(wait=False, cancel_futures=True)
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start, initargs=(served,))
        self.pools[model] = (served, pool)
        return pool

    async def relevance(self, model: str, served: ServedCheckpoint, src_ids: Sequence[int], tgt_ids: Sequence[int],
                        ended: bool, method: str, steps: int) -> torch.Tensor:
        """The relevance (`attribute`) of `model`'s translation `tgt_ids` of `src_ids` by the checkpoint it is
        `served` with, awaited without blocking the event loop. A child that died (killed for memory) is
        replaced on the next request."""
        pool = self._pool(model, served)
        try:
            found = await asyncio.wrap_future(pool.submit(_relevance, list(src_ids), list(tgt_ids), ended, method,
                                                          steps))
        except BrokenProcessPool:
            if self.pools.get(model, (None, None))[1] is pool:
                del self.pools[model]
            pool.shutdown(wait=False)
            raise
        return torch.from_numpy(found)

    def close(self) -> None:
        """Cancel what waits, wait for what runs, and end the children."""
        for _served, pool in self.pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self.pools.clear()
