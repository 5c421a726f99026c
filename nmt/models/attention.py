"""Bahdanau (additive) and Luong (dot, general, concat) attention under one stateless interface; multi-head
attention (nmt.models.multihead) offers the RNN decoder the same `project_memory` and `attend`.

    keys = attention.project_memory(memory)                  # once per batch: depends only on the encoder
    context, weights = attention(query, keys, values, mask)  # any number of query steps at once

Shapes: B batch, Tq query steps (1 inside the step loop, T when all steps are scored at once), S source
positions, Hq query size, Hm encoder output size (memory = values), A additive hidden size.
Padding positions get weight exactly 0: their scores are set to -inf before the softmax.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nmt.config import AttentionConfig
from nmt.models.dropout import Dropout
from nmt.models.multihead import MultiHeadAttention


class Attention(nn.Module):
    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dropout = Dropout(dropout)

    def project_memory(self, memory: torch.Tensor) -> torch.Tensor:
        """(B, S, Hm) -> keys (B, S, K): the encoder-side part of the score."""
        raise NotImplementedError

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, Tq, Hq), (B, S, K) -> alignment scores e (B, Tq, S)."""
        raise NotImplementedError

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the context vectors c = sum_i a_i h_i (B, Tq, Hm) and the weights a = softmax(e) (B, Tq, S)."""
        scores = self.score(query, keys).float()
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(self.dropout(weights).to(values.dtype), values)
        return context, weights

    def attend(self, query: torch.Tensor, memory: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """An RNN decoder's step over its encoder memory (keys `projected`, encoder outputs as `values`):
        context (B, Tq, Hm) and the weights as one head's, (B, 1, Tq, S), the shape multi-head attention gives."""
        context, weights = self(query, memory.projected, memory.values, memory.mask)
        return context, weights.unsqueeze(1)


class AdditiveAttention(Attention):
    """e_i = v_a^T tanh(W_a q + U_a h_i).

    Bahdanau et al. (2014), eq. 6, with the previous decoder state as query; with the current state as
    query it is Luong et al. (2015)'s `concat` score v_a^T tanh(W_a [s_t; h_i]), W_a split into two blocks."""

    def __init__(self, query_size: int, memory_size: int, hidden_size: int, dropout: float = 0.0):
        super().__init__(dropout)
        self.query_proj = nn.Linear(query_size, hidden_size, bias=False)  # W_a
        self.key_proj = nn.Linear(memory_size, hidden_size, bias=False)  # U_a
        self.v = nn.Parameter(torch.empty(hidden_size).uniform_(-hidden_size ** -0.5, hidden_size ** -0.5))  # v_a

    def project_memory(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.query_proj(query).unsqueeze(2) + keys.unsqueeze(1))  # (B, Tq, S, A)
        return torch.matmul(hidden, self.v)  # v_a^T tanh(...) as a matrix-vector product


class DotAttention(Attention):
    """Luong dot: e_i = s_t^T h_i (needs Hq == Hm), times `scale` (1, or 1/sqrt(Hq) with attention.scale)."""

    def __init__(self, dropout: float = 0.0, scale: float = 1.0):
        super().__init__(dropout)
        self.scale = scale

    def project_memory(self, memory: torch.Tensor) -> torch.Tensor:
        return memory

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(query, keys.transpose(1, 2))
        return scores if self.scale == 1.0 else scores * self.scale


class GeneralAttention(DotAttention):
    """Luong general: e_i = s_t^T W_a h_i, with W_a h_i computed once per batch as the keys."""

    def __init__(self, query_size: int, memory_size: int, dropout: float = 0.0, scale: float = 1.0):
        super().__init__(dropout, scale)
        self.key_proj = nn.Linear(memory_size, query_size, bias=False)  # W_a

    def project_memory(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)


def build_attention(cfg: AttentionConfig, query_size: int, memory_size: int) -> Attention | MultiHeadAttention:
    if cfg.type == "multihead":  # the context stands in for c_t, so it keeps the memory size
        return MultiHeadAttention(query_size, memory_size, cfg.dim or query_size, cfg.heads, cfg.dropout, memory_size)
    if cfg.type in ("bahdanau", "concat"):
        return AdditiveAttention(query_size, memory_size, cfg.dim or query_size, cfg.dropout)
    scale = query_size ** -0.5 if cfg.scale else 1.0
    if cfg.type == "general":
        return GeneralAttention(query_size, memory_size, cfg.dropout, scale)
    return DotAttention(cfg.dropout, scale)
