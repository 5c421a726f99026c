"""Greedy and beam search over a step function; nothing here knows about text or about the model.

    step_fn(prev_ids (N,), state) -> (log_probs (N, V), new state, attention weights (N, S))

`state` is any object with `select(index)` that keeps / reorders its batch rows (DecoderState does).
Both searches are batched: greedy over sentences, beam over sentences x beams as one (B*K) batch, with
finished hypotheses tracked in tensors, no Python loop over sentences or beams.

Neither search ever emits the start symbol (BOS) or padding: their log-probabilities are set to -inf after
the step (not renormalized), as Marian's generation bans its pad/start id. Lengths count generated tokens
including the final EOS. `max_lengths` (B,) bounds each sentence: at its
limit a hypothesis ends even without EOS (and is returned without one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from nmt.config import MAX_SEED
from nmt.errors import ConfigError

StepFn = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any, torch.Tensor]]


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, without the final EOS
    score: float  # the ranking score: log p / length_penalty
    log_prob: float  # log p of tokens (and EOS when it ended with one)
    attention: torch.Tensor  # (steps, S): one row per generated position, EOS included


def length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT (Wu et al. 2016): ((5 + |Y|) / 6) ** alpha; alpha = 0 ranks by log-probability alone."""
    return ((5.0 + length.float()) / 6.0) ** alpha


def _hypothesis(tokens: torch.Tensor, attention: torch.Tensor, steps: int, eos: int, log_prob: float,
                score: float) -> Hypothesis:
    ids = tokens[:steps].tolist()
    if ids and ids[-1] == eos:
        ids = ids[:-1]
    return Hypothesis(ids, score, log_prob, attention[:steps].float().cpu())


@dataclass(frozen=True)
class Sampling:
    """Draw each token from the model's distribution instead of taking the best (for back-translation):
    logits divided by `temperature`, then cut to the `top_k` most probable (0: all) and to the smallest set
    whose probability reaches `top_p` (1.0: all). A `seed` makes the draws reproducible."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.temperature < math.inf:
            raise ConfigError(f"sampling temperature {self.temperature}: must be above 0 and finite")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"sampling seed {self.seed}: must be in 0..{MAX_SEED}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling top-p {self.top_p}: must be above 0 and at most 1")
        if self.top_k < 0:
            raise ConfigError(f"sampling top-k {self.top_k}: must be 0 (all tokens) or more")

    def picker(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        generator = torch.Generator(device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)

        def pick(log_probs: torch.Tensor) -> torch.Tensor:
            # shifted so the best token's logit is 0: a tiny temperature cannot overflow them all to -inf
            shifted = log_probs.float()
            logits = (shifted - shifted.max(dim=-1, keepdim=True).values) / self.temperature
            if self.top_k:
                kth = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if self.top_p < 1.0:
                ordered, order = logits.sort(dim=-1, descending=True)
                probs = ordered.softmax(dim=-1)
                outside = probs.cumsum(dim=-1) - probs >= self.top_p  # the most probable token always stays
                logits = logits.scatter(-1, order, ordered.masked_fill(outside, float("-inf")))
            return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)

        return pick


def _never_emitted(log_probs: torch.Tensor, bos: int, pad: int) -> torch.Tensor:
    """(N, V) log-probabilities with BOS and PAD at -inf: no hypothesis continues with either."""
    return log_probs.index_fill(-1, torch.tensor([bos, pad], device=log_probs.device), float("-inf"))


def _argmax(log_probs: torch.Tensor) -> torch.Tensor:
    return log_probs.argmax(dim=-1)


@torch.no_grad()
def greedy_search(step_fn: StepFn, state: Any, max_lengths: torch.Tensor, bos: int, eos: int,
                  pad: int, pick: Callable[[torch.Tensor], torch.Tensor] = _argmax) -> list[Hypothesis]:
    """Take the most probable token at every step (or the one `pick` draws, for sampling); each sentence
    stops at its own EOS or length limit. Scores are the model's log-probabilities of the tokens taken."""
    batch = max_lengths.shape[0]
    device = max_lengths.device
    prev = torch.full((batch,), bos, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    steps = torch.zeros(batch, dtype=torch.long, device=device)
    log_prob = torch.zeros(batch, device=device)
    tokens, attention = [], []
    for t in range(int(max_lengths.max())):
        log_probs, state, weights = step_fn(prev, state)
        log_probs = _never_emitted(log_probs, bos, pad)
        best = pick(log_probs)
        best_lp = log_probs.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        best = best.masked_fill(finished, pad)
        log_prob += best_lp.masked_fill(finished, 0.0)
        steps += (~finished).long()
        tokens.append(best)
        attention.append(weights)
        finished |= (best == eos) | (t + 1 >= max_lengths)
        if bool(finished.all()):
            break
        prev = best
    all_tokens, all_attention = torch.stack(tokens, dim=1), torch.stack(attention, dim=1)
    return [_hypothesis(all_tokens[i], all_attention[i], int(steps[i]), eos, float(log_prob[i]), float(log_prob[i]))
            for i in range(batch)]


@torch.no_grad()
def beam_search(step_fn: StepFn, state: Any, max_lengths: torch.Tensor, beam_size: int, bos: int, eos: int,
                pad: int, alpha: float = 0.0, n_best: int = 1) -> list[list[Hypothesis]]:
    """Beam search; `state` holds B*K rows (each sentence's rows repeated K times, consecutively).

    Each step scores every beam's extensions, keeps the 2K best, moves those among the first K that end
    (EOS, or the sentence's length limit) into a finished buffer of K per sentence, and continues with the
    K best that do not end. A sentence is done when its buffer is full; a finished hypothesis is never
    extended again, and is dropped only for K better finished ones. Returns the `n_best` best per sentence."""
    batch, k = max_lengths.shape[0], beam_size
    device = max_lengths.device
    rows = torch.arange(batch, device=device)
    alive_scores = torch.full((batch, k), float("-inf"), device=device)
    alive_scores[:, 0] = 0.0  # all beams start identical: only the first may expand at step 0
    alive_tokens = torch.zeros(batch, k, 0, dtype=torch.long, device=device)
    alive_attention = torch.zeros(0)  # (B, K, t, S) once the source length is known, at the first step
    limit = int(max_lengths.max())
    fin_scores = torch.full((batch, k), float("-inf"), device=device)
    fin_log_probs = torch.zeros(batch, k, device=device)
    fin_steps = torch.zeros(batch, k, dtype=torch.long, device=device)
    fin_tokens = torch.full((batch, k, limit), pad, dtype=torch.long, device=device)
    fin_attention = torch.zeros(0)  # (B, K, limit, S), allocated at the first step
    prev = torch.full((batch * k,), bos, dtype=torch.long, device=device)
    for t in range(limit):
        log_probs, state, weights = step_fn(prev, state)
        log_probs = _never_emitted(log_probs, bos, pad)
        vocab, src_len = log_probs.shape[-1], weights.shape[-1]
        if t == 0:
            fin_attention = weights.new_zeros(batch, k, limit, src_len)
            alive_attention = weights.new_zeros(batch, k, 0, src_len)
        candidates = (alive_scores.unsqueeze(-1) + log_probs.view(batch, k, vocab)).view(batch, k * vocab)
        top_scores, top_index = candidates.topk(min(2 * k, k * vocab), dim=-1)  # (B, 2K), sorted
        beam, token = top_index // vocab, top_index % vocab
        ending = (token == eos) | (t + 1 >= max_lengths).unsqueeze(1)
        rank = torch.arange(top_scores.shape[1], device=device)
        done = fin_scores[:, -1] > float("-inf")  # buffer already full: nothing more to add
        newly_finished = ending & (rank < k) & torch.isfinite(top_scores) & ~done.unsqueeze(1)

        # The hypotheses behind all 2K candidates: their history plus the new token and weights.
        history = alive_tokens.gather(1, beam.unsqueeze(-1).expand(-1, -1, t))
        cand_tokens = torch.cat([history, token.unsqueeze(-1)], dim=-1)  # (B, 2K, t+1)
        step_weights = weights.view(batch, k, src_len).gather(1, beam.unsqueeze(-1).expand(-1, -1, src_len))
        cand_attention = torch.cat(
            [alive_attention.gather(1, beam[..., None, None].expand(-1, -1, t, src_len)), step_weights.unsqueeze(2)],
            dim=2,
        )  # (B, 2K, t+1, S)

        # Finished buffer: keep the K best of (old finished, newly finished), by length-normalized score.
        normalized = top_scores / length_penalty(torch.tensor(t + 1, device=device), alpha)
        merged_scores = torch.cat([fin_scores, normalized.masked_fill(~newly_finished, float("-inf"))], dim=1)
        fin_scores, keep = merged_scores.topk(k, dim=1)
        padded_tokens = torch.nn.functional.pad(cand_tokens, (0, limit - t - 1), value=pad)
        padded_attention = torch.nn.functional.pad(cand_attention, (0, 0, 0, limit - t - 1))
        fin_tokens = torch.cat([fin_tokens, padded_tokens], dim=1)[rows[:, None], keep]
        fin_attention = torch.cat([fin_attention, padded_attention], dim=1)[rows[:, None], keep]
        fin_log_probs = torch.cat([fin_log_probs, top_scores], dim=1).gather(1, keep)
        fin_steps = torch.cat([fin_steps, torch.full_like(top_scores, t + 1, dtype=torch.long)], dim=1).gather(1, keep)

        if bool((fin_scores[:, -1] > float("-inf")).all()):
            break
        # Alive: the K best candidates that do not end.
        alive_scores, pick = top_scores.masked_fill(ending, float("-inf")).topk(k, dim=1)
        alive_tokens = cand_tokens[rows[:, None], pick]
        alive_attention = cand_attention[rows[:, None], pick]
        source_rows = (rows.unsqueeze(1) * k + beam.gather(1, pick)).view(-1)
        state = state.select(source_rows)
        prev = alive_tokens[:, :, -1].reshape(-1)

    return [
        [_hypothesis(fin_tokens[i, j], fin_attention[i, j], int(fin_steps[i, j]), eos, float(fin_log_probs[i, j]),
                     float(fin_scores[i, j])) for j in range(n_best)]
        for i in range(batch)
    ]
