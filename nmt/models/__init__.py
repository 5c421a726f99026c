"""The models, behind one `build_model`: the RNN encoder-decoder with Bahdanau, Luong or multi-head attention
(`rnn.py`) and the Transformer (`transformer.py`).

Every model is built as `Model(cfg, src_vocab_size, tgt_vocab_size)` and offers training the teacher-forced
`forward(src, lengths, src_mask, tgt_in)` -> (logits, weights) and `forward_flops`, search the decoding
interface of interface.py (`Decoder`: `encode`, `step_log_probs`, `memory.repeat` and `select`,
`state.select`), and export its flat form (`Exportable`). This package is the one place that branches on model.type.
"""

from __future__ import annotations

from torch import nn

from nmt.config import ModelConfig
from nmt.models.rnn import RNNEncoderDecoder
from nmt.models.transformer import Transformer

Model = RNNEncoderDecoder | Transformer
"""Any model `build_model` returns."""


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> Model:
    model_class = Transformer if cfg.type == "transformer" else RNNEncoderDecoder
    return model_class(cfg, src_vocab_size, tgt_vocab_size)


def with_heads(model: Model) -> Transformer | None:
    """The model if it has layers and heads of attention to inspect (a Transformer: cross-, encoder self- and
    decoder self-attention); None for an RNN, whose one cross-attention map comes with each search step."""
    return model if isinstance(model, Transformer) else None


VOCABULARY_ROWS = ("embed.weight", "output.weight", "final_logits_bias")
"""How the names of every model's tensors with one row per vocabulary entry end (embeddings, output layer,
logits bias): what fine-tuning with a grown vocabulary extends."""


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each tied matrix once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["VOCABULARY_ROWS", "Model", "RNNEncoderDecoder", "Transformer", "build_model", "count_parameters",
           "with_heads"]
