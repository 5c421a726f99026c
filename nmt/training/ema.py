"""An exponential moving average of the weights during training (training.ema), through torch's AveragedModel.

After each optimizer step: ema = d x ema + (1 - d) x weights, with d = min(decay, (1 + n) / (10 + n)) after n
updates (TensorFlow's ExponentialMovingAverage with num_updates), so that the first steps' weights do not linger
in a short run. Validation scores the average beside the weights; each checkpoint saves it beside them
(runs.checkpoint: `--checkpoint ema` loads it), and its update count, for an exact resume."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from nmt.config import EmaConfig
from nmt.models import Model


class WeightAverage:
    """The averaged copy of a model's parameters (its buffers follow the model's)."""

    def __init__(self, model: Model, cfg: EmaConfig):
        self.decay = cfg.decay
        self.averaged = AveragedModel(cast(nn.Module, model), multi_avg_fn=self._move_towards, use_buffers=False)

    @torch.no_grad()
    def _move_towards(self, averaged: list[torch.Tensor] | tuple[torch.Tensor, ...],
                      current: list[torch.Tensor] | tuple[torch.Tensor, ...], updates: torch.Tensor | int) -> None:
        n = float(updates)
        torch._foreach_lerp_(averaged, current, 1.0 - min(self.decay, (1.0 + n) / (10.0 + n)))

    def update(self, model: Model) -> None:
        self.averaged.update_parameters(cast(nn.Module, model))

    @property
    def updates(self) -> int:
        return int(self.averaged.n_averaged)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights under the model's own names (what a checkpoint's ema.safetensors holds)."""
        return self.averaged.module.state_dict()

    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        """Resume: the saved average and its update count."""
        self.averaged.module.load_state_dict(tensors)
        self.averaged.n_averaged.fill_(updates)

    @contextmanager
    def swapped_in(self, model: Model) -> Iterator[None]:
        """`model` holds the averaged weights inside the block, its own again after it."""
        own = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            for param, average in zip(model.parameters(), self.averaged.module.parameters(), strict=True):
                param.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, saved in zip(model.parameters(), own, strict=True):
                    param.copy_(saved)
