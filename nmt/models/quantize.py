"""int8 dynamic quantization for CPU decoding."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from nmt.models import Model


def quantize_int8(model: Model) -> Model:
    """Dynamic int8 quantization for CPU decoding: the weights of every linear and RNN layer stored as int8,
    activations quantized on the fly (torch.ao's engine; embeddings stay float). For inference only."""
    with warnings.catch_warnings():  # torch announces a move of these kernels to torchao, whose int8 path has
        # no dynamic RNN layers yet; they work as they are in the pinned torch
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear, nn.GRU, nn.LSTM}, dtype=torch.qint8)
