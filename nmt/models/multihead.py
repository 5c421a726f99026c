"""Multi-head scaled dot-product attention (Vaswani et al. 2017, sec. 3.2), stateless like nmt.models.attention.

    keys_values = attention.project_memory(memory)           # once per batch: W^K h and W^V h, side by side
    context, weights = attention(query, keys_values, mask)  # any number of query steps at once

    Attention(Q, K, V) = softmax(Q K^T / sqrt(dh)) V, per head; the heads are concatenated and projected by W^O.

Shapes: B batch, T query steps, S key positions, Hq query size, Hm memory size, D = heads x dh the attention
size, O the output size (default Hm, so that the context can stand in for the RNN decoder's c_t).

`project_memory` returns one tensor (B, S, 2D) holding the key and the value projections, batch on dim 0, so
`EncoderMemory.repeat` and a decoder's key/value cache (concatenated along dim 1) handle it like any other
tensor. An RNN decoder calls `attend`, as it does with the attentions of nmt.models.attention.

Two paths compute the same context: the explicit softmax, the reference, which returns the weights
(B, heads, T, S) with masked positions exactly 0; and torch's fused `scaled_dot_product_attention`
(`need_weights=False`), faster and lighter in training, which returns no weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from nmt.models.dropout import Dropout

# Every backend but cuDNN's: it builds an execution plan per (B, T, S) shape, and token batches bring a new
# shape almost every step, and the planning cost dominated mixed-precision training on a GPU (BENCHMARKS.md);
# memory-efficient attention, which takes masks, runs instead.
FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


class MultiHeadAttention(nn.Module):
    def __init__(self, query_size: int, memory_size: int, dim: int, heads: int, dropout: float = 0.0,
                 out_size: int | None = None):
        super().__init__()
        if heads < 1 or dim % heads != 0:
            raise ValueError(f"multi-head attention: dim {dim} must be a positive multiple of heads {heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.dropout = dropout  # on the attention weights, training only: the fused kernel's dropout_p
        self.weights_dropout = Dropout(dropout)  # the same on the explicit path
        self.query_proj = nn.Linear(query_size, dim)  # W^Q, all heads at once
        self.memory_proj = nn.Linear(memory_size, 2 * dim)  # W^K and W^V stacked: one matmul for both
        self.out_proj = nn.Linear(dim, out_size or memory_size)  # W^O

    def project_memory(self, memory: torch.Tensor) -> torch.Tensor:
        """(B, S, Hm) -> keys and values (B, S, 2D); position-wise, so a cache may grow it along dim 1."""
        return self.memory_proj(memory)

    def attend(self, query: torch.Tensor, memory: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """An RNN decoder's step over its encoder memory (`projected` from `project_memory`, `mask`): context
        (B, Tq, Hm) and each head's weights (B, heads, Tq, S)."""
        context, weights = self(query, memory.projected, memory.mask)
        assert weights is not None  # the explicit path: weights asked for
        return context, weights

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, heads, L, dh)."""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    @staticmethod
    def _broadcast_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, S) padding mask -> (B, 1, 1, S); (B or 1, T, S) e.g. causal -> (B or 1, 1, T, S)."""
        if mask is None or mask.dim() == 4:
            return mask
        if mask.dim() == 2:
            return mask[:, None, None, :]
        if mask.dim() == 3:
            return mask[:, None]
        raise ValueError(f"attention mask must be (B, S) or (B, T, S), got shape {tuple(mask.shape)}")

    def forward(
        self, query: torch.Tensor, keys_values: torch.Tensor, mask: torch.Tensor | None, need_weights: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Query (B, T, Hq), keys and values from `project_memory` (B, S, 2D), mask True at positions to attend
        to ((B, S), (B, T, S) or broadcastable; None: all) -> context (B, T, O) and weights (B, heads, T, S), or
        None with `need_weights=False` (fused path).

        The query may have g times as many rows as the keys (g x B, T, Hq): g consecutive query rows (a
        sentence's beams) then attend to the same keys row, read once for all g; the mask is (B, S) or None."""
        # (an exported graph, traced, always has one query row per memory row)
        if not torch.jit.is_tracing() and query.shape[0] != keys_values.shape[0]:
            groups, rest = divmod(query.shape[0], keys_values.shape[0])
            if rest or groups == 0 or (mask is not None and mask.dim() != 2):
                raise ValueError(f"attention: {query.shape[0]} query rows for {keys_values.shape[0]} memory rows "
                                 f"(mask {None if mask is None else tuple(mask.shape)}): the query rows must be a "
                                 "multiple of the memory rows, with a (B, S) mask when they are more")
            rows, steps = query.shape[:2]
            context, grouped = self(query.reshape(keys_values.shape[0], groups * steps, -1), keys_values, mask,
                                    need_weights)
            if grouped is None:
                return context.reshape(rows, steps, -1), None
            # (B, heads, g x T, S) -> (g x B, heads, T, S)
            return context.reshape(rows, steps, -1), grouped.unflatten(2, (groups, steps)).transpose(1, 2).flatten(0, 1)
        q = self._split_heads(self.query_proj(query))  # (B, heads, T, dh)
        k, v = (self._split_heads(part) for part in keys_values.split(self.dim, dim=-1))  # (B, heads, S, dh)
        mask4 = self._broadcast_mask(mask)
        p = self.dropout if self.training else 0.0
        weights: torch.Tensor | None = None
        if need_weights:
            scores = torch.matmul(q, k.transpose(-2, -1)).float() / math.sqrt(self.head_dim)  # (B, heads, T, S)
            if mask4 is not None:
                scores = scores.masked_fill(~mask4, float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            heads_out = torch.matmul(self.weights_dropout(weights).to(v.dtype), v)
        else:
            with sdpa_kernel(FUSED_BACKENDS):
                heads_out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask4, dropout_p=p)
        context = heads_out.transpose(1, 2).flatten(2)  # (B, T, D): the heads concatenated
        return self.out_proj(context), weights
