"""Inverted dropout whose CPU masks come from 16-bit random integers.

`nn.Dropout` draws one Bernoulli sample per element (`bernoulli_`), which cost 5% of a CPU training step of
the default model; slicing each 64-bit random integer into four 16-bit lanes makes a quarter as many draws
(forward and backward of a (90, 17, 512) tensor: 3.1 ms against 8.4 ms). torch's int64 `random_()` leaves
the sign bit 0, so every lane keeps its low 15 bits and the drop probability is rounded to a multiple of
2^-15. Other devices use `F.dropout`, whose kernels are already fused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LANE_LEVELS = 2**15
LOW_15_BITS_OF_EACH_LANE = 0x7FFF_7FFF_7FFF_7FFF


class Dropout(nn.Module):
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
