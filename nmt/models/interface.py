"""The one interface search decodes through. The PyTorch models (`RNNEncoderDecoder`, `Transformer`), an
ensemble of them and an exported model on ONNX Runtime all offer it, so search, translation and serving
never ask which one they hold.

`encode` runs the encoder once and returns the memory every step reads and the first decoder state;
`step_log_probs` takes one step for a batch of prefixes. Beam search repeats the memory per beam
(`Memory.repeat`) and reorders the states as beams survive (`State.select`); both searches drop finished
sentences (`Memory.select`, `State.select`). Each model reads only its own
memory and state objects, so the step's arguments are typed as the model defines them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import nn

from nmt.models.flat import FlatLayout


class Memory(Protocol):
    def repeat(self, times: int) -> Memory:
        """Each sentence `times` times in a row (beams), projections reused."""
        ...

    def select(self, index: torch.Tensor) -> Memory:
        """Keep these sentences, each with all its repeated rows (search drops finished sentences)."""
        ...


class State(Protocol):
    def select(self, index: torch.Tensor) -> State:
        """Keep / reorder batch rows (beams)."""
        ...


class Decoder(Protocol):
    training: bool

    @property
    def max_positions(self) -> int | None:
        """The longest source, and the longest output, the model can encode or decode; None: no bound (an
        RNN). The Translator truncates longer inputs and the server refuses them."""
        ...

    @property
    def cache_floats_per_position(self) -> int:
        """Floats a decoding row's state grows by per position decoded (the Translator bounds beam batches
        by it)."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def encode(self, src: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> tuple[Memory, State]:
        """src (B, S) ending in EOS, lengths (B,), mask (B, S) True at real tokens -> (memory, first state)."""
        ...

    def step_log_probs(self, prev_ids: torch.Tensor, state: Any, memory: Any
                       ) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Previous ids (N,) -> log-probabilities (N, V), the new state, attention weights (N, S)."""
        ...


class FlatMemory(Memory, Protocol):
    def flatten(self) -> list[torch.Tensor]: ...


class FlatState(State, Protocol):
    def flatten(self) -> list[torch.Tensor]: ...


class Exportable(Decoder, Protocol):
    """A model whose memory and decoder state also flatten to lists of tensors and back (`flatten()` on each,
    `unflatten` here), in the order `flat_layout` names them: what graphs that take tensors only need (ONNX)."""

    def encode(self, src: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor
               ) -> tuple[FlatMemory, FlatState]: ...

    def step_log_probs(self, prev_ids: torch.Tensor, state: Any, memory: Any
                       ) -> tuple[torch.Tensor, FlatState, torch.Tensor]: ...

    def flat_layout(self) -> FlatLayout: ...

    def unflatten(self, memory: list[torch.Tensor], state: list[torch.Tensor]) -> tuple[Any, Any]: ...
