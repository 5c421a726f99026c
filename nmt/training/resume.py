"""Resuming a run: what its config may change, and the state a checkpoint carries besides the weights.

Resuming restores weights, optimizer, schedule, scaler, RNG states and the position in the epoch's batch order,
so N steps + stop + resume + N steps equal 2N uninterrupted steps on CPU. The config may change how the run goes
on (budgets, learning rate, decoding), never what it trains: that would no longer continue the same model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import torch

from nmt.config import Config, config_diff, format_diff, parse_config, read_yaml
from nmt.errors import ConfigError
from nmt.runs.checkpoint import Checkpoint, latest_intact, load_train_state
from nmt.runs.rundir import RunDir
from nmt.training.distributed import World, rank_seed
from nmt.training.optim import Schedule
from nmt.training.step import Progress

log = logging.getLogger(__name__)

# What a resumed run may not change: it would no longer continue the same model on the same data.
FIXED_ON_RESUME = ("model.", "tokenizer.", "data.", "seed")
WHERE_DATA_LIVES = ("data.mirror", "data.mirror_subdir", "data.download_dir", "data.cache_dir")


def keep_tuned_decoding(saved: Config, config: Config) -> Config:
    """The decoding `nmt tune` chose for a run survives a resume from the config the run was started with;
    a config that changes the decoding itself wins."""
    tuned = saved.decoding.tuned
    if tuned is None or config.decoding.tuned is not None:
        return config
    as_before_tuning = (config.decoding.beam_size, config.decoding.length_penalty) == (
        tuned.before.get("beam_size"), tuned.before.get("length_penalty"))
    otherwise_same = config.decoding.model_copy(update={
        "beam_size": saved.decoding.beam_size, "length_penalty": saved.decoding.length_penalty,
        "n_best": saved.decoding.n_best, "tuned": tuned}) == saved.decoding
    return config.model_copy(update={"decoding": saved.decoding}) if as_before_tuning and otherwise_same else config


def resume_changes(run: RunDir, config: Config) -> tuple[Config, list[tuple[str, object, object]]]:
    """The config to resume with (a tuned decoding kept) and the settings it changes from the run's saved
    config; refuses changes to what was trained."""
    if not run.config_path.is_file():
        return config, []
    saved = parse_config(read_yaml(run.config_path), source=str(run.config_path))
    config = keep_tuned_decoding(saved, config)
    changes = config_diff(saved.model_dump(mode="json"), config.model_dump(mode="json"))
    refused = [c for c in changes if c[0].startswith(FIXED_ON_RESUME) and not c[0].startswith(WHERE_DATA_LIVES)]
    if refused:
        listed = format_diff(refused)
        raise ConfigError(f"--resume: the config differs from {run.config_path} in what was trained: {listed} "
                          f"(resume with: nmt train --config {run.config_path} --resume)")
    return config, changes


def resumable_checkpoint(run: RunDir, resume: bool) -> Checkpoint | None:
    """The run's latest intact checkpoint: one that exists is continued with --resume only."""
    existing = latest_intact(run) if run.path.exists() else None
    if existing is not None and not resume:
        raise ConfigError(f"run_dir {run.path} already holds checkpoints: add --resume to continue it, "
                          "or set another run_dir")
    return existing


def agree_on_checkpoint(world: World, checkpoint: Checkpoint | None, run: RunDir) -> None:
    """Every rank resumes the checkpoint rank 0 resumes (on several machines the run directory and the data
    cache must be on a filesystem they share)."""
    resumed = checkpoint.step if checkpoint is not None else None
    if (agreed := world.broadcast(resumed)) != resumed:
        raise ConfigError(f"rank {world.rank} finds {'no checkpoint' if resumed is None else f'step {resumed}'} in "
                          f"{run.path} but rank 0 resumes {'none' if agreed is None else f'step {agreed}'}: the "
                          "run directory and data.cache_dir must be on a filesystem every machine shares")


def resumed_precision(asked: str, saved: str, measured: str) -> str:
    """What a resumed run trains in: with precision auto, what it trained in before (a new measurement may
    choose otherwise); `saved` is empty in a checkpoint older than that choice."""
    if asked == "auto" and saved not in ("", measured):
        log.info("precision auto: the run trains in %s as before (measured %s now)", saved, measured)
        return saved
    return measured


def rng_state(device: torch.device) -> dict[str, torch.Tensor | None]:
    cuda = device.type == "cuda"
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if cuda else None}


def restore_rng(ranks: list[dict[str, Any]], world: World, device: torch.device, seed: int, step: int) -> None:
    """Every rank's own RNG state when the world size is the one saved (exact resume); otherwise rank 0
    takes the first rank's and the others a fresh seed (dropout then differs from an uninterrupted run)."""
    if len(ranks) == world.size or world.is_main:
        state = ranks[world.rank]
        torch.set_rng_state(state["cpu"])
        if device.type == "cuda" and state["cuda"] is not None:
            torch.cuda.set_rng_state(state["cuda"], device)
    else:
        torch.manual_seed(rank_seed(seed, world.rank, step))
    if len(ranks) != world.size and world.is_main:
        log.warning("resuming %d ranks from a checkpoint of %d: the data order continues exactly, the "
                    "dropout masks of ranks past the first do not", world.size, len(ranks))


def train_state(optimizer: torch.optim.Optimizer, schedule: Schedule, scaler: torch.amp.GradScaler,
                rng_ranks: list[dict[str, Any]], progress: Progress) -> dict[str, Any]:
    """A checkpoint's train state: every rank's RNG state (`rng_ranks`, gathered by rank 0) and the rest."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "scaler": scaler.state_dict(),
        "rng_ranks": rng_ranks,
        "progress": asdict(progress),
    }


def restore_train_state(checkpoint: Checkpoint, optimizer: torch.optim.Optimizer, schedule: Schedule,
                        scaler: torch.amp.GradScaler, world: World, device: torch.device, seed: int) -> Progress:
    """Load a checkpoint's train state (`train_state`) into the optimizer, schedule and scaler, and this rank's
    RNG state (`restore_rng`); return its progress."""
    saved = load_train_state(checkpoint)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    restore_rng(saved["rng_ranks"], world, device, seed, checkpoint.step)
    return Progress(**saved["progress"])
