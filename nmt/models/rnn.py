"""The RNN encoder-decoder: an RNN encoder and an attentional RNN decoder (`build_model` builds it for
`model.type: rnn`).

Shapes: B batch, S source positions, T target positions, E embedding size, He encoder output size
(hidden x directions), Hd decoder hidden size, V target vocabulary, L decoder layers, heads the attention's
heads (1 unless multi-head).

Two decoder flows, chosen by the attention type:
- Bahdanau (2014): the query is the previous decoder state s_{t-1}; the context c_t is fed into the RNN
  together with the embedding of y_{t-1}.
- Luong (2015): the query is the current state s_t; the attentional state h~_t = tanh(W_c [c_t; s_t]) feeds
  the output layer and, with input feeding, the next step's RNN input.
Both feed h~_t to the output layer, which runs once over all steps after the loop (inside it only under
scheduled sampling, which needs each step's prediction). Without input feeding and with full teacher
forcing h~_t feeds nothing back, so W_c runs once over all steps too. One fast path:
when the RNN's input holds nothing attention computed (`rnn_input_is_attention_free`: Luong without input
feeding), the RNN runs as one fused call over the whole target and attention scores all steps at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.config import ModelConfig
from nmt.models.attention import Attention, build_attention
from nmt.models.dropout import Dropout
from nmt.models.flat import FlatLayout
from nmt.models.interface import ModelDescription
from nmt.models.multihead import MultiHeadAttention
from nmt.tokens import PAD_ID

RNN_TYPES = {"gru": nn.GRU, "lstm": nn.LSTM}
Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # GRU: (L, B, Hd); LSTM: (h, c)


@dataclass
class EncoderMemory:
    """What every decoder step reads: encoder outputs (values), the attention's projection of them (keys; for
    multi-head attention keys and values side by side) and the source mask."""

    values: torch.Tensor  # (B, S, He)
    projected: torch.Tensor  # (B, S, K)
    mask: torch.Tensor  # (B, S) True at real tokens
    beams: int = 1  # rows per sentence: B counts sentences x beams

    def repeat(self, times: int) -> EncoderMemory:
        """Each sentence `times` times in a row (for beams), keys reused rather than recomputed."""
        values, projected, mask = (t.repeat_interleave(times, dim=0) for t in (self.values, self.projected, self.mask))
        return EncoderMemory(values, projected, mask, self.beams * times)

    def select(self, index: torch.Tensor) -> EncoderMemory:
        """Keep these sentences, each with its beams (search drops finished sentences)."""
        rows = (index.unsqueeze(1) * self.beams + torch.arange(self.beams, device=index.device)).view(-1)
        values, projected, mask = (t.index_select(0, rows) for t in (self.values, self.projected, self.mask))
        return EncoderMemory(values, projected, mask, self.beams)

    def flatten(self) -> list[torch.Tensor]:
        return [self.values, self.projected, self.mask]


@dataclass
class DecoderState:
    hidden: Hidden  # (L, B, Hd), or a pair of them for an LSTM
    feed: torch.Tensor  # (B, Hd) previous attentional state h~_{t-1}, for Luong input feeding

    def select(self, index: torch.Tensor) -> DecoderState:
        """Keep / reorder batch rows (beam search)."""
        if isinstance(self.hidden, tuple):
            hidden: Hidden = tuple(h.index_select(1, index) for h in self.hidden)  # type: ignore[assignment]
        else:
            hidden = self.hidden.index_select(1, index)
        return DecoderState(hidden, self.feed.index_select(0, index))

    def flatten(self) -> list[torch.Tensor]:
        return [*(self.hidden if isinstance(self.hidden, tuple) else [self.hidden]), self.feed]


def _top_layer(hidden: Hidden) -> torch.Tensor:
    return (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        enc = cfg.encoder
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=PAD_ID)
        self.dropout = Dropout(enc.dropout)
        self.rnn = RNN_TYPES[enc.rnn](cfg.embed_dim, enc.hidden_size, enc.layers, batch_first=True,
                                      bidirectional=enc.bidirectional, dropout=enc.dropout if enc.layers > 1 else 0.0)
        self.directions = 2 if enc.bidirectional else 1

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) ids -> outputs (B, S, He), final state of the top layer, both directions concatenated (B, He)."""
        embedded = self.dropout(self.embed(src))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, final = self.rnn(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])
        h_n = final[0] if isinstance(final, tuple) else final  # (layers * directions, B, H)
        top = h_n[-self.directions:]  # the top layer's forward (and backward) final states
        return self.dropout(outputs), torch.cat(list(top), dim=-1)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        dec, memory_size = cfg.decoder, cfg.encoder.output_size
        self.queries_previous_state = cfg.attention.type == "bahdanau"
        self.input_feeding = cfg.input_feeding
        self.layers, self.hidden_size, self.is_lstm = dec.layers, dec.hidden_size, dec.rnn == "lstm"
        self.embed = nn.Embedding(vocab_size, cfg.embed_dim, padding_idx=PAD_ID)
        self.dropout = Dropout(dec.dropout)
        if self.queries_previous_state:
            rnn_input = cfg.embed_dim + memory_size
        else:
            rnn_input = cfg.embed_dim + (dec.hidden_size if self.input_feeding else 0)
        self.rnn = RNN_TYPES[dec.rnn](rnn_input, dec.hidden_size, dec.layers, batch_first=True,
                                      dropout=dec.dropout if dec.layers > 1 else 0.0)
        self.attention: Attention | MultiHeadAttention = build_attention(cfg.attention, dec.hidden_size,
                                                                         memory_size)
        self.combine = nn.Linear(memory_size + dec.hidden_size, dec.hidden_size, bias=False)  # W_c
        self.bridge = nn.Linear(memory_size, dec.layers * dec.hidden_size) if cfg.bridge else None
        self.output = nn.Linear(dec.hidden_size, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.embed.weight

    @property
    def rnn_input_is_attention_free(self) -> bool:
        """True when nothing attention computes flows into the RNN (Luong without input feeding): with
        teacher forcing the RNN then runs as one fused call over all steps, and attention scores them at once."""
        return not self.queries_previous_state and not self.input_feeding

    def init_state(self, encoder_final: torch.Tensor) -> DecoderState:
        """s_0 = tanh(W_b [h_fwd; h_bwd]) for every layer with a bridge, else zeros; an LSTM's cell starts at 0."""
        batch = encoder_final.shape[0]
        if self.bridge is not None:
            h0 = torch.tanh(self.bridge(encoder_final)).view(batch, self.layers, self.hidden_size)
            h0 = h0.transpose(0, 1).contiguous()
        else:
            h0 = encoder_final.new_zeros(self.layers, batch, self.hidden_size)
        hidden: Hidden = (h0, torch.zeros_like(h0)) if self.is_lstm else h0
        return DecoderState(hidden, encoder_final.new_zeros(batch, self.hidden_size))

    def attend(self, query: torch.Tensor, memory: EncoderMemory) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (B, Tq, Hm) and each head's weights over the source (B, heads, Tq, S)."""
        return self.attention.attend(query, memory)

    def recur(
        self, embedded: torch.Tensor, state: DecoderState, memory: EncoderMemory
    ) -> tuple[torch.Tensor, Hidden, torch.Tensor, torch.Tensor]:
        """The sequential part of a step, from the embedded previous token (B, E): the top layer's output
        s_t (B, 1, Hd), the new hidden state, the context c_t (B, 1, Hm) and the weights (B, heads, 1, S)."""
        if self.queries_previous_state:
            query = _top_layer(state.hidden).unsqueeze(1)  # s_{t-1}
            context, weights = self.attend(query, memory)
            output, hidden = self.rnn(torch.cat([embedded.unsqueeze(1), context], dim=-1), state.hidden)
        else:
            rnn_input = torch.cat([embedded, state.feed], dim=-1) if self.input_feeding else embedded
            output, hidden = self.rnn(rnn_input.unsqueeze(1), state.hidden)
            context, weights = self.attend(output, memory)  # query s_t
        return output, hidden, context, weights

    def attentional(self, context: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """h~ = tanh(W_c [c; s]), for one step or all steps at once."""
        return torch.tanh(self.combine(torch.cat([context, output], dim=-1)))

    def step(
        self, embedded: torch.Tensor, state: DecoderState, memory: EncoderMemory
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """One decoder step from the embedded previous token (B, E): h~_t (B, Hd), new state, and the weights
        averaged over heads (B, S), as search keeps them."""
        output, hidden, context, weights = self.recur(embedded, state, memory)
        attentional = self.attentional(context, output).squeeze(1)
        return attentional, DecoderState(hidden, attentional), weights.mean(dim=1).squeeze(1)

    def logits(self, attentional: torch.Tensor) -> torch.Tensor:
        return self.output(self.dropout(attentional))

    def forward(
        self, tgt_in: torch.Tensor, state: DecoderState, memory: EncoderMemory, teacher_forcing: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unroll over the target: logits (B, T, V) and each head's attention weights (B, heads, T, S).

        With teacher_forcing < 1, each step takes the model's own previous prediction instead of the
        reference with probability 1 - teacher_forcing, so logits are needed inside the loop. Otherwise
        h~_t is computed inside the loop only when input feeding needs it; W_c and the output layer run
        once over all steps after it."""
        embedded = self.dropout(self.embed(tgt_in))  # all steps' inputs in one call
        sampling = teacher_forcing < 1.0
        if not sampling and self.rnn_input_is_attention_free:
            output, _ = self.rnn(embedded, state.hidden)
            context, weights = self.attend(output, memory)
            return self.logits(self.attentional(context, output)), weights
        inputs = embedded.unbind(1)  # one backward stack, not a zero-filled (B, T, E) gradient per step
        feeds_back = self.input_feeding or sampling  # h~_t is needed inside the loop
        outputs, contexts, attentionals, all_weights, step_logits = [], [], [], [], []
        prev_embedded = inputs[0]
        for t in range(len(inputs)):
            output, hidden, context, weights = self.recur(prev_embedded, state, memory)
            feed = state.feed
            if feeds_back:
                feed = self.attentional(context, output).squeeze(1)
                attentionals.append(feed)
            else:
                outputs.append(output)
                contexts.append(context)
            state = DecoderState(hidden, feed)
            all_weights.append(weights)
            if sampling:
                step_logits.append(self.logits(feed))
            if t + 1 < len(inputs):
                prev_embedded = inputs[t + 1]
                if sampling:
                    use_own = torch.rand(tgt_in.shape[0], device=tgt_in.device) >= teacher_forcing
                    predicted = self.dropout(self.embed(step_logits[-1].argmax(-1)))
                    prev_embedded = torch.where(use_own.unsqueeze(1), predicted, prev_embedded)
        weights = torch.cat(all_weights, dim=2)
        if sampling:
            return torch.stack(step_logits, dim=1), weights
        if feeds_back:
            return self.logits(torch.stack(attentionals, dim=1)), weights
        return self.logits(self.attentional(torch.cat(contexts, dim=1), torch.cat(outputs, dim=1))), weights


class RNNEncoderDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.max_positions: int | None = None  # recurrence has no position table
        self.cache_floats_per_position = 0  # the recurrent state does not grow
        self.encoder = Encoder(cfg, src_vocab_size)
        self.decoder = Decoder(cfg, tgt_vocab_size)
        for embedding in (self.encoder.embed, self.decoder.embed):
            nn.init.normal_(embedding.weight, std=cfg.embed_dim ** -0.5)
            with torch.no_grad():
                embedding.weight[PAD_ID].zero_()

    def encode(self, src: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> tuple[EncoderMemory,
                                                                                             DecoderState]:
        outputs, final = self.encoder(src, lengths)
        memory = EncoderMemory(outputs, self.decoder.attention.project_memory(outputs), mask)
        return memory, self.decoder.init_state(final)

    def forward(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor,
                teacher_forcing: float = 1.0) -> torch.Tensor:
        """Teacher forced (scheduled sampling below 1): logits (B, T, V)."""
        memory, state = self.encode(src, lengths, src_mask)
        return self.decoder(tgt_in, state, memory, teacher_forcing)[0]

    def forward_with_attention(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor,
                               tgt_in: torch.Tensor, layer: int, teacher_forcing: float = 1.0
                               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and the one attention's weights, every head, (B, heads, T, S); `layer` is 0."""
        if layer != 0:
            raise ValueError(f"attention layer {layer}: an RNN decoder has one attention (layer 0)")
        memory, state = self.encode(src, lengths, src_mask)
        return self.decoder(tgt_in, state, memory, teacher_forcing)

    @torch.no_grad()
    def attention_maps(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor,
                       tgt_in: torch.Tensor) -> dict[str, torch.Tensor]:
        """The cross-attention, exact, in eval mode, teacher forced on `tgt_in`: {"cross": (1, B, heads, T, S)}."""
        was_training = self.training
        self.eval()
        try:
            return {"cross": self.forward_with_attention(src, lengths, src_mask, tgt_in, 0)[1][None]}
        finally:
            self.train(was_training)

    def describe(self) -> ModelDescription:
        return ModelDescription(self.cfg.summary, "rnn", self.cfg.attention.type, *self.cfg.attention_shape,
                                kinds={"cross": 1}, exports=("onnx",))

    def forward_flops(self, src_tokens: int, tgt_tokens: int, sentences: int) -> float:
        """Multiply-adds x 2 of one teacher-forced forward pass over a batch (element-wise work not counted;
        training is about 3x). S source and T target tokens, E embedding, H encoder hidden per direction, D
        directions, He = D*H, Hd decoder hidden, A attention size, V target vocabulary, I decoder RNN input:
        encoder S*D*2*G*(E*H + H*H) per layer (G gates: 3 GRU, 4 LSTM); keys S*2*He*A once per batch;
        decoder T*2*G*(I*Hd + Hd*Hd); attention T*(2*Hd*A + S*2*A + S*2*He) (dot: S*2*Hd); combine
        T*2*(He + Hd)*Hd; output T*2*Hd*V."""
        m = self.cfg
        enc, dec = m.encoder, m.decoder
        gates_enc, gates_dec = (3 if enc.rnn == "gru" else 4), (3 if dec.rnn == "gru" else 4)
        directions, he, hd, e = (2 if enc.bidirectional else 1), enc.output_size, dec.hidden_size, m.embed_dim
        a = m.attention.dim or hd
        additive = m.attention.type in ("bahdanau", "concat")
        rnn_in = e + he if m.attention.type == "bahdanau" else e + (hd if m.input_feeding else 0)
        mean_src = src_tokens / sentences
        encoder = src_tokens * directions * 2 * gates_enc * (e * enc.hidden_size + enc.hidden_size**2) * enc.layers
        keys = src_tokens * 2 * he * (a if additive else hd) if m.attention.type != "dot" else 0
        decoder = tgt_tokens * 2 * gates_dec * (rnn_in * hd + hd * hd) * dec.layers
        scores = mean_src * 2 * (a if additive else hd) + (2 * hd * a if additive else 0)
        attention = tgt_tokens * (scores + mean_src * 2 * he)
        combine = tgt_tokens * 2 * (he + hd) * hd
        return encoder + keys + decoder + attention + combine + tgt_tokens * 2 * hd * self.decoder.output.out_features

    def flat_layout(self) -> FlatLayout:
        hidden = ["hidden", "cell"] if self.decoder.is_lstm else ["hidden"]
        return FlatLayout(["values", "projected", "mask"], [*hidden, "feed"], [1] * len(hidden) + [0])

    def unflatten(self, memory: list[torch.Tensor], state: list[torch.Tensor]) -> tuple[EncoderMemory, DecoderState]:
        hidden: Hidden = (state[0], state[1]) if self.decoder.is_lstm else state[0]
        values, projected, mask = memory
        return EncoderMemory(values, projected, mask), DecoderState(hidden, state[-1])

    def step_log_probs(
        self, prev_ids: torch.Tensor, state: DecoderState, memory: EncoderMemory
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """Search's step function: previous ids (N,) -> log-probabilities (N, V), new state, weights (N, S)."""
        attentional, state, weights = self.decoder.step(self.decoder.embed(prev_ids), state, memory)
        return torch.log_softmax(self.decoder.logits(attentional).float(), dim=-1), state, weights
