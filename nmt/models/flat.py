"""A model's encoder memory and decoder state as flat lists of tensors, for graphs that take and return
tensors only (ONNX): each model names them in order (`flat_layout`), its memory and state objects
`flatten()` themselves, and the model rebuilds them (`unflatten`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FlatLayout:
    """Names of the flat memory and state tensors, and each state tensor's batch axis (for beam reordering)."""

    memory: list[str]
    state: list[str]
    state_batch_axes: list[int]
