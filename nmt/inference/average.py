"""Checkpoint averaging: the element-wise mean of a run's last (or best) K checkpoints, usually a little
better than any one of them. Written as `checkpoints/averaged`, which translate, evaluate and serve select
with `--checkpoint averaged`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.data.splits import eval_set
from nmt.errors import CheckpointError, ConfigError
from nmt.inference.scoring import decode_and_score
from nmt.inference.translate import Translator
from nmt.runs.checkpoint import Checkpoint, checkpoint_meta, surviving_pruning, verify, write_checkpoint
from nmt.runs.loading import load_model, load_run_config, read_weights
from nmt.runs.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class Averaged:
    path: Path
    steps: list[int]
    dev_bleu: float  # greedy, as in training's validation
    best_single: Checkpoint | None  # the checkpoint with the highest dev BLEU, for comparison


def choose(checkpoints: list[Checkpoint], last: int | None, best: int | None) -> list[Checkpoint]:
    """The newest `last` checkpoints, or the `best` ones by dev BLEU."""
    if (last is None) == (best is None):
        raise ConfigError("average: give either --last K or --best K")
    count = last or best or 0
    if count < 2:
        raise ConfigError("average: K must be at least 2")
    pool = checkpoints if last else [c for c in checkpoints if c.dev_bleu is not None]
    if len(pool) < count:
        raise CheckpointError(f"average: {count} checkpoints asked for, the run has {len(pool)} intact ones"
                              f"{'' if last else ' with a dev score'} (training.keep_last keeps the newest)")
    if last:
        return sorted(pool, key=lambda c: c.step)[-count:]
    return sorted(sorted(pool, key=lambda c: -(c.dev_bleu or 0.0))[:count], key=lambda c: c.step)


def mean_weights(checkpoints: list[Checkpoint]) -> dict[str, torch.Tensor]:
    """Element-wise mean in float64, stored in each tensor's own dtype; the checkpoints must hold the same
    tensors (they do within one run)."""
    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for checkpoint in checkpoints:
        tensors = read_weights(checkpoint)  # CheckpointError when pruned by a live trainer since it was verified
        if total and (tensors.keys() != total.keys()
                      or any(tensors[k].shape != total[k].shape for k in tensors)):
            raise CheckpointError(f"{checkpoint.path}: holds other tensors than {checkpoints[0].path}")
        for name, tensor in tensors.items():
            total[name] = total.get(name, 0) + tensor.double()
            dtypes[name] = tensor.dtype
    return {name: (value / len(checkpoints)).to(dtypes[name]) for name, value in total.items()}


def average(run_dir: Path, last: int | None = None, best: int | None = None) -> Averaged:
    run = RunDir(run_dir)
    config = load_run_config(run)

    def read() -> tuple[list[Checkpoint], list[Checkpoint], dict[str, torch.Tensor]]:
        intact = []
        for files in run.checkpoints():
            try:
                intact.append(verify(files))
            except CheckpointError as err:
                log.warning("skipping checkpoint: %s", err)
        chosen = choose(intact, last, best)
        return intact, chosen, mean_weights(chosen)

    intact, chosen, weights = surviving_pruning(run, read)  # the run may be training, and pruning, meanwhile
    loaded = load_model(run.path, "best")
    loaded.model.load_state_dict(weights)  # refuses names or shapes this config's model lacks
    score = decode_and_score(Translator.for_run(loaded), eval_set(config.data), config.evaluation, 1).bleu.score
    newest = chosen[-1]
    meta = {**checkpoint_meta(newest.step, int(newest.meta.get("epoch", 0)), loaded.model, config.model,
                              {"dev_bleu": score}), "averaged_steps": [c.step for c in chosen]}
    write_checkpoint(run, run.averaged_checkpoint(), loaded.model.state_dict(), {}, meta)
    scored = [c for c in intact if c.dev_bleu is not None]
    return Averaged(run.averaged_checkpoint().folder, [c.step for c in chosen], score,
                    max(scored, key=lambda c: c.dev_bleu or 0.0) if scored else None)
