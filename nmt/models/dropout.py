"""Dropout, with one switch between torch's `nn.Dropout` (the reference) and a faster CPU mask.

`nn.Dropout` draws one Bernoulli sample per element (`bernoulli_`). `LaneDropout` slices each 64-bit random
integer into four 16-bit lanes, a quarter as many draws; BENCHMARKS.md records what it saves. torch's
int64 `random_()` leaves the sign bit 0, so every lane keeps its low 15 bits and the drop probability is
rounded to a multiple of 2^-15. On other devices it defers to `F.dropout`, whose kernels are already fused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LANE_DROPOUT_ON_CPU = True
"""The switch: False builds plain `nn.Dropout` everywhere (same distribution; tests/test_dropout.py)."""

LANE_LEVELS = 2**15
LOW_15_BITS_OF_EACH_LANE = 0x7FFF_7FFF_7FFF_7FFF


class LaneDropout(nn.Module):
    """Inverted dropout whose CPU masks come from 16-bit random lanes."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = min(round(p * LANE_LEVELS), LANE_LEVELS - 1)  # a lane below it drops its element
        self.scale = LANE_LEVELS / (LANE_LEVELS - self.threshold)  # 1 / keep probability

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_().bitwise_and_(LOW_15_BITS_OF_EACH_LANE)
        keep = words.view(torch.int16)[:n].view(x.shape) >= self.threshold
        return x * (keep.to(x.dtype) * self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def make_dropout(p: float) -> nn.Module:
    return LaneDropout(p) if LANE_DROPOUT_ON_CPU else nn.Dropout(p)
