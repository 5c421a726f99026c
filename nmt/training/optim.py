"""The optimizer and the learning-rate schedule.

A `Schedule` knows when it moves: a per-step schedule after every optimizer step, a plateau schedule after every
validation, on dev BLEU. The loop calls both hooks and never asks which kind it holds. Its state_dict is the torch
scheduler's own, so the `scheduler` entry of a checkpoint's train state keeps its format and older runs resume.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from nmt.config import TrainingConfig
from nmt.models import Model


def make_optimizer(model: Model, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """Adam(W) with its fused kernel, which updates all parameters in one pass (BENCHMARKS.md measures the gain
    on the CPU and on a GPU); it works with fp16's GradScaler too."""
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)


class Schedule(ABC):
    """A torch scheduler and the moments it is stepped at."""

    scheduler: LRScheduler

    @abstractmethod
    def after_step(self) -> None:
        """Called after every optimizer step that was taken (not after a skipped one)."""

    @abstractmethod
    def after_validation(self, bleu: float) -> None:
        """Called on every rank after every validation, with rank 0's dev BLEU."""

    @abstractmethod
    def apply_settings(self, cfg: TrainingConfig) -> None:
        """Make the config's learning rate win over a restored state (resuming with a changed lr trains with it)."""

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class StepSchedule(Schedule):
    """A factor of the lr per optimizer step: constant, warmup + inverse square root, or warmup + linear decay."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainingConfig):
        schedule = cfg.schedule
        warmup = max(1, schedule.warmup_steps)

        def factor(step: int) -> float:
            step += 1
            if schedule.type == "warmup_inverse_sqrt":
                return min(step / warmup, math.sqrt(warmup / step))
            if schedule.type == "warmup_linear":
                last = cfg.max_steps or step  # the config requires max_steps for this schedule
                return min(step / warmup, max(0.0, (last - step) / max(1, last - warmup)))
            return 1.0

        self.scheduler: LambdaLR = LambdaLR(optimizer, factor)

    def after_step(self) -> None:
        self.scheduler.step()

    def after_validation(self, bleu: float) -> None:
        pass  # dev BLEU does not move a per-step schedule

    def apply_settings(self, cfg: TrainingConfig) -> None:
        groups = self.scheduler.optimizer.param_groups
        self.scheduler.base_lrs = [cfg.lr] * len(groups)
        for group, factor in zip(groups, self.scheduler.lr_lambdas, strict=True):
            group["lr"] = cfg.lr * factor(self.scheduler.last_epoch)


class PlateauSchedule(Schedule):
    """The lr times `plateau_factor` when dev BLEU has not improved for `plateau_patience` validations."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainingConfig):
        schedule = cfg.schedule
        self.scheduler: ReduceLROnPlateau = ReduceLROnPlateau(
            optimizer, mode="max", factor=schedule.plateau_factor, patience=schedule.plateau_patience,
            min_lr=schedule.min_lr)

    def after_step(self) -> None:
        pass  # only dev BLEU moves it

    def after_validation(self, bleu: float) -> None:
        self.scheduler.step(bleu)

    def apply_settings(self, cfg: TrainingConfig) -> None:
        groups = self.scheduler.optimizer.param_groups
        self.scheduler.factor, self.scheduler.patience = cfg.schedule.plateau_factor, cfg.schedule.plateau_patience
        self.scheduler.min_lrs = [cfg.schedule.min_lr] * len(groups)
        for group in groups:
            group["lr"] = cfg.lr


def make_schedule(optimizer: torch.optim.Optimizer, cfg: TrainingConfig) -> Schedule:
    return PlateauSchedule(optimizer, cfg) if cfg.schedule.type == "plateau" else StepSchedule(optimizer, cfg)


def apply_optimizer_settings(optimizer: torch.optim.Optimizer, schedule: Schedule, cfg: TrainingConfig) -> None:
    """Make the config's learning rate, betas, weight decay and schedule settings win over a restored optimizer
    and schedule: a resumed run trains with what its config says now."""
    for group in optimizer.param_groups:
        group.update(initial_lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    schedule.apply_settings(cfg)
