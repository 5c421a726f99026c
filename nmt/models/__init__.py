"""The models, behind one `build_model`: the RNN encoder-decoder with Bahdanau or Luong attention (`rnn.py`).

Every model offers the same interface to training and search: `forward(src, lengths, src_mask, tgt_in)`
-> (logits, weights), `encode(...)` -> (memory, decoder state) and `step_log_probs(prev_ids, state, memory)`.
"""

from __future__ import annotations

from torch import nn

from nmt.config import ModelConfig
from nmt.models.rnn import Seq2Seq

Model = Seq2Seq
"""Any model `build_model` returns."""


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> Model:
    return Seq2Seq(cfg, src_vocab_size, tgt_vocab_size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["Model", "Seq2Seq", "build_model", "count_parameters"]
