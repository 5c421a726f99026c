"""The interfaces the rest of nmt talks to, so that nothing outside nmt/models asks which model it holds.

`Decoder` is what search decodes through: the PyTorch models (`RNNEncoderDecoder`, `Transformer`), an ensemble
of them and an exported model on ONNX Runtime all offer it. `Model` is a trainable PyTorch model: a Decoder
that also trains (`forward`, `forward_with_attention`), shows its attention (`attention_maps`) and says what it
is and what it can do (`describe`).

`encode` runs the encoder once and returns the memory every step reads and the first decoder state;
`step_log_probs` takes one step for a batch of prefixes. Beam search repeats the memory per beam
(`Memory.repeat`) and reorders the states as beams survive (`State.select`); both searches drop finished
sentences (`Memory.select`, `State.select`). Each model reads only its own
memory and state objects, so the step's arguments are typed as the model defines them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ModelDescription:
    """What a model is and what it can show or be exported to: what the server's /models, the explorer page,
    the Python API, attention views and the exporters read instead of the config's model type."""

    summary: str  # the architecture in a few words, as the training log and `nmt compare` print it
    family: str  # "rnn", "transformer": a label for people, never a switch
    attention: str  # the cross-attention's kind: bahdanau, dot, general, concat, multihead
    layers: int  # decoder layers with a cross-attention map (an RNN: 1)
    heads: int  # heads of each attention layer (1: a single-head attention)
    kinds: dict[str, int]  # the attention kinds `attention_maps` returns, cross first, each with its layers
    exports: tuple[str, ...]  # the export formats the model can be written to (onnx, ctranslate2)


class Model(Decoder, Protocol):
    """A trainable PyTorch model (an `nn.Module`) as the rest of nmt uses it."""

    def __call__(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor,
                 teacher_forcing: float = 1.0) -> torch.Tensor:
        """Teacher forced: logits (B, T, V)."""
        ...

    def forward_with_attention(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor,
                               tgt_in: torch.Tensor, layer: int, teacher_forcing: float = 1.0
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and decoder layer `layer`'s (0-based) cross-attention, every head, (B, heads, T, S),
        with gradients: what guided alignment trains."""
        ...

    def attention_maps(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor,
                       tgt_in: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """Every attention map, exact, in eval mode, teacher forced on `tgt_in`: for each of `describe().kinds`
        (layers of that kind, B, heads, rows, cols); cross (rows T, cols S), encoder self (S, S), decoder self
        (T, T)."""
        ...

    def describe(self) -> ModelDescription: ...

    def forward_flops(self, src_tokens: int, tgt_tokens: int, sentences: int) -> float:
        """Multiply-adds x 2 of one teacher-forced forward pass over a batch (training is about 3x)."""
        ...

    # the nn.Module surface the rest of nmt uses
    def modules(self) -> Iterator[nn.Module]: ...

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
                         ) -> Iterator[tuple[str, nn.Parameter]]: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...
