"""How focused attention is: per target step, the entropy of the weights over the source, the largest
weight and how many source positions get more than a threshold; and their mean and standard deviation.

A uniform distribution over n positions has entropy log n (nats); a one-hot one has 0."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionStats:
    entropy: list[float]  # per target step, nats
    max_weight: list[float]
    above_threshold: list[int]
    threshold: float

    @staticmethod
    def _mean_std(values: list[float]) -> tuple[float, float]:
        if not values:
            return 0.0, 0.0
        tensor = torch.tensor(values, dtype=torch.float64)
        return float(tensor.mean()), float(tensor.std(unbiased=False))

    def summary(self) -> dict[str, tuple[float, float]]:
        """(mean, std) of each statistic over the target steps."""
        return {"entropy": self._mean_std(self.entropy), "max_weight": self._mean_std(self.max_weight),
                "above_threshold": self._mean_std([float(n) for n in self.above_threshold])}


def entropy(weights: torch.Tensor) -> torch.Tensor:
    """Row-wise entropy -sum p log p of (..., S) distributions, with 0 log 0 = 0."""
    weights = weights.double()
    return -(weights * torch.where(weights > 0, weights.log(), torch.zeros_like(weights))).sum(-1)


def attention_stats(weights: torch.Tensor, threshold: float = 0.1) -> AttentionStats:
    """Statistics of one sentence's attention matrix (T target steps, S source positions)."""
    if weights.numel() == 0:
        return AttentionStats([], [], [], threshold)
    return AttentionStats(entropy(weights).tolist(), weights.max(-1).values.double().tolist(),
                          (weights > threshold).sum(-1).tolist(), threshold)
