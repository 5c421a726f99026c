"""One dropout module for every model, with torch's kernel or a faster CPU mask (`training.fast_dropout`).

torch's dropout draws one Bernoulli sample per element (`bernoulli_`). With `lanes` on, `Dropout` slices each
64-bit random integer into four 16-bit lanes instead, a quarter as many draws; BENCHMARKS.md records what it
saves. torch's int64 `random_()` leaves the sign bit 0, so every lane keeps its low 15 bits and the drop
probability is rounded to a multiple of 2^-15. On other devices it always takes `F.dropout`, whose kernels
are already fused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nmt.models.interface import Model

LANE_LEVELS = 2**15
LOW_15_BITS_OF_EACH_LANE = 0x7FFF_7FFF_7FFF_7FFF


class Dropout(nn.Module):
    """Inverted dropout: elements dropped with probability p, survivors scaled by 1 / (1 - p)."""

    def __init__(self, p: float, lanes: bool = True):
        super().__init__()
        self.p, self.lanes = p, lanes
        self.threshold = min(round(p * LANE_LEVELS), LANE_LEVELS - 1)  # a lane below it drops its element
        self.scale = LANE_LEVELS / (LANE_LEVELS - self.threshold)  # 1 / keep probability

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if not self.lanes or x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_().bitwise_and_(LOW_15_BITS_OF_EACH_LANE)
        keep = words.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return x * (keep.to(x.dtype) * self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}, lanes={self.lanes}"


def use_fast_dropout(model: nn.Module | Model, on: bool) -> None:
    """Set every dropout of `model` to the 16-bit-lane CPU masks (on) or torch's kernel (off)."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.lanes = on
