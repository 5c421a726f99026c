"""The models, behind one `build_model`: the RNN encoder-decoder with Bahdanau, Luong or multi-head attention
(`rnn.py`) and the Transformer (`transformer.py`).

Every model is built as `Model(cfg, src_vocab_size, tgt_vocab_size)` and offers the interface of interface.py:
training's teacher-forced `forward` -> logits and `forward_with_attention`, `forward_flops`, search's
`Decoder` (`encode`, `step_log_probs`, `memory.repeat` and `select`, `state.select`), `attention_maps` and
`describe()` (what it is, which attention it has, what it exports to), and export's flat form (`Exportable`).
This package is the one place that branches on model.type.
"""

from __future__ import annotations

from torch import nn

from nmt.config import ModelConfig
from nmt.models.interface import Model, ModelDescription
from nmt.models.rnn import RNNEncoderDecoder
from nmt.models.transformer import Transformer


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> Model:
    model_class = Transformer if cfg.type == "transformer" else RNNEncoderDecoder
    return model_class(cfg, src_vocab_size, tgt_vocab_size)


VOCABULARY_ROWS = ("embed.weight", "output.weight", "final_logits_bias")
"""How the names of every model's tensors with one row per vocabulary entry end (embeddings, output layer,
logits bias): what fine-tuning with a grown vocabulary extends."""


def count_parameters(model: nn.Module | Model) -> int:
    """Trainable parameters, each tied matrix once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["VOCABULARY_ROWS", "Model", "ModelDescription", "build_model", "count_parameters"]
