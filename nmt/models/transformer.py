"""The Transformer encoder-decoder (Vaswani et al. 2017), behind the same interface as `RNNEncoderDecoder`
(nmt.models.interface.Model): `forward` (teacher forced), `forward_with_attention`, `encode` -> (memory, state),
`step_log_probs` for search, `attention_maps` and `describe`.

Shapes: B batch, S source positions, T target positions, D = d_model, F the feed-forward size, heads,
dh = D / heads, V target vocabulary, N decoding rows (sentences x beams).

Recipe (sec. 3 and 5.4 of the paper, with the pre-norm of Wang et al. 2019 as the default):
- embeddings scaled by sqrt(D) (`scale_embeddings`), plus sinusoidal (sec. 3.5; interleaved, or Marian's
  halves) or learned positions, then dropout;
- each sublayer (self-attention, cross-attention, feed-forward) is wrapped as
  pre-norm  x + Dropout(Sublayer(LayerNorm(x))), with a final LayerNorm on each stack, or
  post-norm LayerNorm(x + Dropout(Sublayer(x))), the paper's original;
- attention dropout on the weights (`attention_dropout`) and dropout after the feed-forward ReLU (or GELU,
  SiLU: `activation`) (`dropout`, as tensor2tensor's relu_dropout);
- tie="decoder" shares the target embedding with the output layer (sec. 3.4), tie="all" also the source
  embedding (one matrix over a joint vocabulary, Press & Wolf 2017);
- `final_logits_bias` adds a fixed bias to the logits, as Marian does (runs/marian.py imports one).

Incremental decoding keeps each decoder layer's self-attention keys and values of the positions decoded so
far in `TransformerState` (handed in and out, reordered by `select` for beams), and the cross-attention keys
and values, projected once per batch, in `TransformerMemory`. The fused attention path runs wherever weights
are not needed; the explicit one gives the last layer's cross-attention weights in eval mode and at each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from nmt.config import ModelConfig
from nmt.models.dropout import Dropout
from nmt.models.flat import FlatLayout
from nmt.models.interface import ModelDescription
from nmt.models.multihead import MultiHeadAttention
from nmt.tokens import PAD_ID


@dataclass
class TransformerMemory:
    """What every decoder step reads: the source mask and each decoder layer's cross-attention keys and values
    (the encoder output itself is read only through them).

    One row per sentence even in beam search: `beams` decoder rows in a row share it, and cross-attention reads
    each sentence's keys once for all its beams (MultiHeadAttention's grouped queries) instead of once per
    beam from K copies."""

    mask: torch.Tensor  # (B, S) True at real tokens
    cross_kv: tuple[torch.Tensor, ...]  # per decoder layer (B, S, 2D): W^K h and W^V h, projected once
    beams: int = 1  # decoder rows per sentence

    def repeat(self, times: int) -> TransformerMemory:
        """Each sentence for `times` decoder rows in a row (for beams); nothing copied."""
        return TransformerMemory(self.mask, self.cross_kv, self.beams * times)

    def select(self, index: torch.Tensor) -> TransformerMemory:
        """Keep these sentences (search drops finished ones)."""
        cross_kv = tuple(k.index_select(0, index) for k in self.cross_kv)
        return TransformerMemory(self.mask.index_select(0, index), cross_kv, self.beams)

    def flatten(self) -> list[torch.Tensor]:
        """One row per decoder row, as an exported graph takes them."""
        return [t.repeat_interleave(self.beams, dim=0) for t in (self.mask, *self.cross_kv)]


@dataclass
class TransformerState:
    """The decoder's self-attention cache: per layer, the keys and values (N, t, 2D) of the t positions so far.

    With `in_place`, each layer's tensor (N, room, 2D) has room beyond position t, so that a step writes its
    own position there instead of copying every earlier one (torch.cat's copies were a large share of greedy
    decoding's time: BENCHMARKS.md); the room doubles when it runs out. Successive states of one search share
    those tensors and `written`, how many positions they hold: a state stepped a second time (a branch) copies
    rather than overwrite its successor's position. Without `in_place` (graphs exported with flat tensors)
    every step concatenates, the plain reference."""

    cache: tuple[torch.Tensor, ...]
    position: int  # t: the index of the next position to decode (same for every row)
    in_place: bool = True
    written: list[int] = field(default_factory=lambda: [0])  # one shared counter, a list so states share it

    def keys(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s keys and values of the positions so far: (N, t, 2D)."""
        return self.cache[layer][:, : self.position]

    def select(self, index: torch.Tensor) -> TransformerState:
        """Keep / reorder batch rows (beam search): the positions written are copied into new tensors with room
        for one more, the next step's (beam search selects after every step; more room would be more memory to
        map, which cost more than the copy)."""
        if not self.in_place or torch.is_grad_enabled():
            return TransformerState(tuple(c.index_select(0, index) for c in self.cache), self.position, self.in_place,
                                    [self.position])
        selected: list[torch.Tensor] = []
        for c in self.cache:
            room = c.new_empty(index.shape[0], self.position + 1, c.shape[2])
            torch.index_select(self.keys(len(selected)), 0, index, out=room[:, : self.position])
            selected.append(room)
        return TransformerState(tuple(selected), self.position, True, [self.position])

    def flatten(self) -> list[torch.Tensor]:
        return [self.keys(layer) for layer in range(len(self.cache))]


class CacheAppender:
    """Appends one call's new positions to every layer's cache of a `TransformerState` and builds the next state:
    in the shared tensors' room where this state owns them, into new tensors with doubled room where not;
    concatenated (the plain path) where the state is not `in_place` or gradients are recorded."""

    MIN_ROOM = 16

    def __init__(self, state: TransformerState, new_positions: int):
        self.state, self.end = state, state.position + new_positions
        self.in_place = state.in_place and not torch.is_grad_enabled()  # autograd may hold the earlier positions
        owner = state.written[0] == state.position
        self.copy = not owner or any(c.shape[1] < self.end for c in state.cache)
        self.cache: list[torch.Tensor] = []

    def __call__(self, new: torch.Tensor) -> torch.Tensor:
        """This layer's new keys and values (N, T, 2D) -> all of them so far (N, t + T, 2D)."""
        layer, start = len(self.cache), self.state.position
        if not self.in_place:
            keys = torch.cat([self.state.keys(layer), new], dim=1)
            self.cache.append(keys)
            return keys
        buffer = self.state.cache[layer]
        if self.copy:  # one decoding step: room to grow into; several positions at once (teacher forcing): none
            room = max(2 * self.end, self.MIN_ROOM) if self.end - start == 1 else self.end
            buffer = torch.cat([buffer[:, :start], new.new_empty(new.shape[0], room - start, new.shape[2])], dim=1)
        buffer[:, start:self.end] = new
        self.cache.append(buffer)
        return buffer[:, : self.end]

    def next_state(self) -> TransformerState:
        if not self.in_place:
            return TransformerState(tuple(self.cache), self.end, self.state.in_place, [self.end])
        written = [self.end] if self.copy else self.state.written
        written[0] = self.end
        return TransformerState(tuple(self.cache), self.end, True, written)


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(...) (sec. 3.5): (length, D)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return table


def sinusoidal_halves(length: int, d_model: int) -> torch.Tensor:
    """Marian's layout of the same waves: sin(pos / 10000^(2i/D)) in the first ceil(D/2) columns, cos in the
    rest (length, D); computed in float64 and rounded once, as transformers' MarianMTModel does, so that the
    two tables agree to the last bit."""
    position = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    angle = position / torch.pow(10000.0, torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    return torch.cat([torch.sin(angle), torch.cos(angle)[:, : d_model // 2]], dim=1).float()


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


class FeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2 (eq. 2), or GELU / SiLU in place of max(0, .), with dropout after it."""

    def __init__(self, d_model: int, ff_size: int, dropout: float, activation: str):
        super().__init__()
        self.inner, self.outer = nn.Linear(d_model, ff_size), nn.Linear(ff_size, d_model)
        self.dropout, self.activation = Dropout(dropout), ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.dropout(self.activation(self.inner(x))))


class Sublayer(nn.Module):
    """A residual connection around one sublayer, with its LayerNorm before (pre) or after (post) it."""

    def __init__(self, d_model: int, dropout: float, norm: Literal["pre", "post"]):
        super().__init__()
        self.norm, self.pre, self.dropout = nn.LayerNorm(d_model), norm == "pre", Dropout(dropout)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the sublayer reads: LayerNorm(x) with pre-norm, x itself with post-norm."""
        return self.norm(x) if self.pre else x

    def residual(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(out)
        return x if self.pre else self.norm(x)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ff_size: int, dropout: float, attention_dropout: float,
                 norm: Literal["pre", "post"], activation: str):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, d_model, d_model, heads, attention_dropout)
        self.ff = FeedForward(d_model, ff_size, dropout, activation)
        self.attn_sub, self.ff_sub = Sublayer(d_model, dropout, norm), Sublayer(d_model, dropout, norm)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, S, D), mask (B, S) -> (B, S, D) and self-attention weights (B, heads, S, S) or None."""
        h = self.attn_sub.inputs(x)
        out, weights = self.self_attn(h, self.self_attn.project_memory(h), mask, need_weights)
        x = self.attn_sub.residual(x, out)
        return self.ff_sub.residual(x, self.ff(self.ff_sub.inputs(x))), weights


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, ff_size: int, dropout: float, attention_dropout: float,
                 norm: Literal["pre", "post"], activation: str):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, d_model, d_model, heads, attention_dropout)
        self.cross_attn = MultiHeadAttention(d_model, d_model, d_model, heads, attention_dropout)
        self.ff = FeedForward(d_model, ff_size, dropout, activation)
        self.self_sub, self.cross_sub, self.ff_sub = (Sublayer(d_model, dropout, norm) for _ in range(3))

    def forward(
        self, x: torch.Tensor, append: CacheAppender, self_mask: torch.Tensor | None, cross_kv: torch.Tensor,
        src_mask: torch.Tensor, need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """New positions x (B, T, D), appended by `append` after the t cached ones -> output (B, T, D),
        self-attention weights (B, heads, T, t + T) and cross-attention weights (B, heads, T, S), the weights
        None unless `need_weights`."""
        h = self.self_sub.inputs(x)
        keys = append(self.self_attn.project_memory(h))
        out, self_weights = self.self_attn(h, keys, self_mask, need_weights)
        x = self.self_sub.residual(x, out)
        out, cross_weights = self.cross_attn(self.cross_sub.inputs(x), cross_kv, src_mask, need_weights)
        x = self.cross_sub.residual(x, out)
        x = self.ff_sub.residual(x, self.ff(self.ff_sub.inputs(x)))
        return x, self_weights, cross_weights


class Transformer(nn.Module):
    in_place_cache = True
    """Decoding's switch: the self-attention cache written in place (TransformerState), or concatenated every
    step (False: the plain reference the tests compare with)."""

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        self.cfg = cfg
        t = cfg.transformer
        d_model, max_positions, positions, norm, tie = t.d_model, t.max_positions, t.positions, t.norm, t.tie
        if tie == "all" and src_vocab_size != tgt_vocab_size:
            raise ValueError(f"tie='all' shares one embedding matrix, which needs a joint vocabulary: source "
                             f"vocabulary {src_vocab_size} != target vocabulary {tgt_vocab_size}")
        self.d_model, self.max_positions, self.dropout = d_model, max_positions, Dropout(t.dropout)
        self.cache_floats_per_position = cfg.cache_floats_per_position
        self.src_embed = nn.Embedding(src_vocab_size, d_model, padding_idx=PAD_ID)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model, padding_idx=PAD_ID)
        learned = positions == "learned"
        self.learned_positions = nn.Embedding(max_positions, d_model) if learned else None
        self.sinusoids: torch.Tensor | None  # a fixed table, rebuilt rather than saved with the weights
        table = sinusoidal_halves if positions == "sinusoidal_halves" else sinusoidal_positions
        self.register_buffer("sinusoids", None if learned else table(max_positions, d_model), persistent=False)
        self.embed_scale = math.sqrt(d_model) if t.scale_embeddings else 1.0
        layer_args = (d_model, t.heads, t.ff_size, t.dropout, t.attention_dropout, norm, t.activation)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*layer_args) for _ in range(t.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*layer_args) for _ in range(t.decoder_layers))
        # pre-norm leaves each stack's output unnormalized: one LayerNorm closes it; post-norm already ends in one
        self.encoder_norm = nn.LayerNorm(d_model) if norm == "pre" else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d_model) if norm == "pre" else nn.Identity()
        self.output = nn.Linear(d_model, tgt_vocab_size, bias=False)
        self.final_logits_bias: torch.Tensor | None  # saved with the weights, never trained (as in Marian)
        self.register_buffer("final_logits_bias", torch.zeros(tgt_vocab_size) if t.final_logits_bias else None)
        self._init_weights()
        if tie in ("decoder", "all"):
            self.output.weight = self.tgt_embed.weight
        if tie == "all":
            self.src_embed.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        """Xavier-uniform matrices; embeddings N(0, 1/D), so that the sqrt(D)-scaled embedding has unit variance."""
        for name, parameter in self.named_parameters():
            if parameter.dim() > 1 and "embed" not in name and "positions" not in name:
                nn.init.xavier_uniform_(parameter)
        for embedding in (self.src_embed, self.tgt_embed):
            nn.init.normal_(embedding.weight, std=self.d_model ** -0.5)
            with torch.no_grad():
                embedding.weight[PAD_ID].zero_()
        if self.learned_positions is not None:
            nn.init.normal_(self.learned_positions.weight, std=self.d_model ** -0.5)

    def _positions(self, start: int, length: int) -> torch.Tensor:
        """Position encodings of positions start .. start + length - 1: (length, D)."""
        if start + length > self.max_positions:
            raise ValueError(f"sequence of {start + length} positions is longer than max_positions "
                             f"{self.max_positions}")
        if self.sinusoids is not None:
            return self.sinusoids[start:start + length]
        assert self.learned_positions is not None
        return self.learned_positions.weight[start:start + length]

    def _embed(self, embedding: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(B, L) ids -> Dropout(sqrt(D) E[ids] + PE) (B, L, D) (sec. 3.4, 3.5, 5.4)."""
        x = embedding(ids) * self.embed_scale + self._positions(start, ids.shape[1])
        return self.dropout(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output (..., D) -> logits (..., V), with the fixed bias where the config has one."""
        logits = self.output(x)
        return logits if self.final_logits_bias is None else logits + self.final_logits_bias.to(logits.dtype)

    def _encode(self, src: torch.Tensor, src_mask: torch.Tensor, need_weights: bool = False
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, S) ids -> encoder output (B, S, D) and, with `need_weights`, each layer's self-attention weights."""
        x, all_weights = self._embed(self.src_embed, src), []
        for layer in self.encoder_layers:
            x, weights = layer(x, src_mask, need_weights)
            if weights is not None:
                all_weights.append(weights)
        return self.encoder_norm(x), all_weights

    def _start(self, output: torch.Tensor, src_mask: torch.Tensor) -> tuple[TransformerMemory, TransformerState]:
        """Project every decoder layer's cross-attention keys and values once; caches start empty (B, 0, 2D)."""
        layers = cast("list[DecoderLayer]", list(self.decoder_layers))
        cross_kv = tuple(layer.cross_attn.project_memory(output) for layer in layers)
        empty = output.new_zeros(output.shape[0], 0, 2 * self.d_model)
        return TransformerMemory(src_mask, cross_kv), TransformerState((empty,) * len(cross_kv), 0,
                                                                        self.in_place_cache)

    def encode(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor
               ) -> tuple[TransformerMemory, TransformerState]:
        """Run the encoder once: memory for every decoder step, and the state at position 0. `lengths` is
        unused (the mask says it all) and kept for the shared interface."""
        return self._start(self._encode(src, src_mask)[0], src_mask)

    def _decode(
        self, x: torch.Tensor, state: TransformerState, memory: TransformerMemory, self_mask: torch.Tensor | None,
        explicit: Collection[int],
    ) -> tuple[torch.Tensor, TransformerState, list[torch.Tensor], list[torch.Tensor]]:
        """Embedded new positions (B, T, D) -> decoder output (B, T, D), the state with the grown caches, and
        the self- and cross-attention weights of the layers in `explicit` (0-based; the explicit path)."""
        append = CacheAppender(state, x.shape[1])
        self_weights: list[torch.Tensor] = []
        cross_weights: list[torch.Tensor] = []
        for i, (layer, keys) in enumerate(zip(self.decoder_layers, memory.cross_kv, strict=True)):
            x, sw, cw = layer(x, append, self_mask, keys, memory.mask, i in explicit)
            if sw is not None and cw is not None:
                self_weights.append(sw)
                cross_weights.append(cw)
        return self.decoder_norm(x), append.next_state(), self_weights, cross_weights

    @staticmethod
    def causal_mask(length: int, device: torch.device) -> torch.Tensor:
        """(1, T, T), True where position j <= i may be attended to from position i."""
        return torch.ones(length, length, dtype=torch.bool, device=device).tril().unsqueeze(0)

    def _teacher_forced(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor,
                        tgt_in: torch.Tensor, teacher_forcing: float, explicit: Collection[int]
                        ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, T, V) and the cross-attention weights (B, heads, T, S) of the layers in `explicit`."""
        if teacher_forcing < 1.0:
            raise ValueError("teacher_forcing < 1 (scheduled sampling) is for RNN decoders only: the Transformer "
                             "decodes all target positions in parallel from the reference")
        memory, state = self.encode(src, lengths, src_mask)
        x = self._embed(self.tgt_embed, tgt_in)
        x, _, _, cross = self._decode(x, state, memory, self.causal_mask(tgt_in.shape[1], tgt_in.device), explicit)
        return self._logits(x), cross

    def forward(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor,
                teacher_forcing: float = 1.0) -> torch.Tensor:
        """Teacher forced, on the fused attention path: logits (B, T, V)."""
        return self._teacher_forced(src, lengths, src_mask, tgt_in, teacher_forcing, ())[0]

    def forward_with_attention(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor,
                               tgt_in: torch.Tensor, layer: int, teacher_forcing: float = 1.0
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and decoder layer `layer`'s (0-based) cross-attention weights of every head
        (B, heads, T, S), in training too (guided alignment trains them)."""
        if not 0 <= layer < len(self.decoder_layers):
            raise ValueError(f"attention layer {layer}: the decoder has layers 0..{len(self.decoder_layers) - 1}")
        logits, cross = self._teacher_forced(src, lengths, src_mask, tgt_in, teacher_forcing, {layer})
        return logits, cross[0]

    def forward_flops(self, src_tokens: int, tgt_tokens: int, sentences: int) -> float:
        """Multiply-adds x 2 of one teacher-forced forward pass over a batch (element-wise work not counted;
        training is about 3x). D = d_model, F = ff_size, L layers, mean lengths S and T, V target vocabulary:
        encoder S*L*(8*D*D + 4*D*F + 4*S*D) (q, k, v, o projections; feed-forward; scores and context);
        decoder T*L*(12*D*D + 4*T*D + 4*S*D + 4*D*F), cross keys and values S*L*4*D*D; output T*2*D*V."""
        t = self.cfg.transformer
        d, f = t.d_model, t.ff_size
        mean_src, mean_tgt = src_tokens / sentences, tgt_tokens / sentences
        encoder = src_tokens * t.encoder_layers * (8 * d * d + 4 * d * f + 4 * mean_src * d)
        decoder = tgt_tokens * t.decoder_layers * (12 * d * d + 4 * mean_tgt * d + 4 * mean_src * d + 4 * d * f)
        cross_kv = src_tokens * t.decoder_layers * 4 * d * d
        return encoder + decoder + cross_kv + tgt_tokens * 2 * d * self.output.out_features

    def flat_layout(self) -> FlatLayout:
        layers = len(self.decoder_layers)
        return FlatLayout(["mask", *(f"cross_kv_{i}" for i in range(layers))], [f"cache_{i}" for i in range(layers)],
                          [0] * layers)

    def unflatten(self, memory: list[torch.Tensor], state: list[torch.Tensor]
                  ) -> tuple[TransformerMemory, TransformerState]:
        # The step does not read the position, which the cache's length gives: a dynamic dimension of an
        # exported graph.
        return (TransformerMemory(memory[0], tuple(memory[1:])),
                TransformerState(tuple(state), state[0].shape[1], in_place=False))

    def step_log_probs(
        self, prev_ids: torch.Tensor, state: TransformerState, memory: TransformerMemory
    ) -> tuple[torch.Tensor, TransformerState, torch.Tensor]:
        """Search's step function: previous ids (N,) -> log-probabilities (N, V) float32, the state with one
        more position in every cache, and the last layer's cross-attention weights averaged over heads (N, S)."""
        x = self._embed(self.tgt_embed, prev_ids.unsqueeze(1), start=state.position)
        last = {len(self.decoder_layers) - 1}
        x, state, _, cross = self._decode(x, state, memory, None, last)  # the new position sees all cached ones
        log_probs = torch.log_softmax(self._logits(x.squeeze(1)).float(), dim=-1)
        return log_probs, state, cross[-1].mean(dim=1).squeeze(1)

    @torch.no_grad()
    def attention_maps(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor,
                       tgt_in: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every layer's exact attention weights (explicit path, eval mode), teacher forced on `tgt_in`:
        "cross" (layers, B, heads, T, S), "encoder" self-attention (layers, B, heads, S, S) and "decoder"
        self-attention (layers, B, heads, T, T)."""
        was_training = self.training
        self.eval()
        try:
            output, encoder_self = self._encode(src, src_mask, need_weights=True)
            memory, state = self._start(output, src_mask)
            x = self._embed(self.tgt_embed, tgt_in)
            causal = self.causal_mask(tgt_in.shape[1], tgt_in.device)
            every = range(len(self.decoder_layers))
            _, _, decoder_self, cross = self._decode(x, state, memory, causal, every)
        finally:
            self.train(was_training)
        return {"cross": torch.stack(cross), "encoder": torch.stack(encoder_self),
                "decoder": torch.stack(decoder_self)}

    def describe(self) -> ModelDescription:
        t = self.cfg.transformer
        return ModelDescription(self.cfg.summary, "transformer", "multihead", *self.cfg.attention_shape,
                                kinds={"cross": t.decoder_layers, "encoder": t.encoder_layers,
                                       "decoder": t.decoder_layers}, exports=("onnx", "ctranslate2"))
