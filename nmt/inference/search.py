"""Greedy and beam search over a step function; nothing here knows about text or about the model.

    step_fn(prev_ids (N,), state, memory) -> (log_probs (N, V), new state, attention weights (N, S))

as a model's `step_log_probs` is; the log-probabilities it returns are the search's to change in place.
`state` is any object with `select(index)` that keeps / reorders its
batch rows (DecoderState does), `memory` one with `select(index)` and `repeat(times)`. Both searches are
batched: greedy over sentences, beam over sentences x beams as one (B*K) batch, with finished hypotheses
tracked in tensors, no Python loop over sentences or beams; sentences that are done leave the batch.

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
from nmt.inference.constraints import ConstraintBanks, Progress
from nmt.inference.controls import NO_CONTROLS, Controls, Rules, TokenListener

StepFn = Callable[[torch.Tensor, Any, Any], tuple[torch.Tensor, Any, torch.Tensor]]

DROP_SHARE = 0.25
"""Finished rows leave the batch once they are this share of the rows decoded (BENCHMARKS.md measures it)."""


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, without the final EOS
    score: float  # the ranking score: log p / length_penalty
    log_prob: float  # log p of tokens (and EOS when it ended with one)
    attention: torch.Tensor  # (steps, S): one row per generated position, EOS included

    @property
    def ended(self) -> bool:
        """Whether it ended with EOS; False when it stopped at its length limit (then it has no EOS row)."""
        return self.attention.shape[0] > len(self.tokens)


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
    """Draw each token from the model's distribution instead of taking the best (for back-translation, and MBR's
    candidates): logits divided by `temperature`, then cut to the `top_k` most probable (0: all), to the smallest
    set whose probability reaches `top_p` (1.0: all) and to the tokens of probability at least `epsilon` (0.0:
    all; epsilon sampling, Hewitt et al. 2022: the unlikely tail that derails a sample is never drawn, the best
    token always can be). A `seed` makes the draws reproducible."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.temperature < math.inf:
            raise ConfigError(f"sampling temperature {self.temperature}: must be above 0 and finite")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"sampling seed {self.seed}: must be in 0..{MAX_SEED}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sampling top-p {self.top_p}: must be above 0 and at most 1")
        if self.top_k < 0:
            raise ConfigError(f"sampling top-k {self.top_k}: must be 0 (all tokens) or more")
        if not 0 <= self.epsilon < 1:
            raise ConfigError(f"sampling epsilon {self.epsilon}: must be at least 0 and below 1")

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
            if self.epsilon > 0.0:  # the best token (logit 0 after the shift) always stays
                logits = logits.masked_fill((logits.softmax(dim=-1) < self.epsilon) & (logits < 0), float("-inf"))
            return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)

        return pick


def _never_emitted(log_probs: torch.Tensor, bos: int, pad: int) -> torch.Tensor:
    """(N, V) log-probabilities with BOS and PAD set to -inf in place (the step's output is the search's own; an
    (N, V) copy a step is what beam search can least afford): no hypothesis continues with either."""
    return log_probs.index_fill_(-1, torch.tensor([bos, pad], device=log_probs.device), float("-inf"))


def _rows_to_keep(running: torch.Tensor, share: float) -> torch.Tensor | None:
    """The rows to go on decoding, once at least `share` of the rows decoded are done (None: not yet, or none
    done); dropping rows costs a copy of their memory and state, so it waits until enough can go."""
    done = int((~running).sum())
    if done == 0 or done < share * running.numel():
        return None
    return running.nonzero().squeeze(1)


@torch.no_grad()
def greedy_search(step_fn: StepFn, memory: Any, state: Any, max_lengths: torch.Tensor, bos: int, eos: int,
                  pad: int, pick: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  drop_share: float = DROP_SHARE, controls: Controls = NO_CONTROLS) -> list[Hypothesis]:
    """Take the most probable token at every step (or the one `pick` draws from (N, V) log-probabilities, for
    sampling); each sentence stops at its own EOS or length limit. Scores are the model's log-probabilities of
    the tokens taken (after `controls`' rules: a forced prefix, banned n-grams, the repetition penalty).
    Finished sentences leave the batch (their memory and state rows dropped) once `drop_share` of the rows
    still decoded have finished; 1.0 keeps every row to the end (the plain reference). Constraints need the
    beam (beam_search, with a beam of one)."""
    batch = max_lengths.shape[0]
    device = max_lengths.device
    limit = int(max_lengths.max())
    rules = Rules(controls, batch, device)
    # per decoded row: its sentence, its previous token, whether it has ended
    rows = torch.arange(batch, device=device)
    prev = torch.full((batch,), bos, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    # per sentence: tokens generated, their log p, the tokens, and each step's attention row (batch, S)
    steps = torch.zeros(batch, dtype=torch.long, device=device)
    log_prob = torch.zeros(batch, device=device)
    tokens = torch.full((batch, limit), pad, dtype=torch.long, device=device)
    attention: list[torch.Tensor] = []
    for t in range(limit):
        log_probs, state, weights = step_fn(prev, state, memory)
        log_probs = _never_emitted(log_probs, bos, pad)
        if rules.active:
            rules.apply(log_probs, t, rows, tokens[rows, :t] if controls.needs_history else None)
        best = log_probs.argmax(dim=-1) if pick is None else pick(log_probs)
        best_lp = log_probs.gather(-1, best.unsqueeze(-1)).squeeze(-1)
        best = best.masked_fill(finished, pad)
        tokens[rows, t] = best
        log_prob[rows] += best_lp.masked_fill(finished, 0.0)
        steps[rows] += (~finished).long()
        step_attention = weights.new_zeros(batch, weights.shape[-1])
        step_attention[rows] = weights
        attention.append(step_attention)
        if controls.listener is not None:
            controls.listener([int(best[0])] if int(best[0]) != eos else [])
        finished |= (best == eos) | (t + 1 >= max_lengths[rows])
        if bool(finished.all()):
            break
        prev = best
        keep = _rows_to_keep(~finished, drop_share)
        if keep is not None:
            rows, prev, finished = rows[keep], prev[keep], finished[keep]
            memory, state = memory.select(keep), state.select(keep)
    all_attention = torch.stack(attention, dim=1)
    return [_hypothesis(tokens[i], all_attention[i], int(steps[i]), eos, float(log_prob[i]), float(log_prob[i]))
            for i in range(batch)]


@torch.no_grad()
def beam_search(step_fn: StepFn, memory: Any, state: Any, max_lengths: torch.Tensor, beam_size: int, bos: int,
                eos: int, pad: int, alpha: float = 0.0, n_best: int = 1,
                drop_share: float = DROP_SHARE, controls: Controls = NO_CONTROLS) -> list[list[Hypothesis]]:
    """Beam search over `memory` and `state` of one row per sentence (each repeated K times here).

    Each step scores every beam's extensions, keeps the 2K best, moves those among the first K that end
    (EOS, or the sentence's length limit) into a finished buffer of K per sentence, and continues with the
    K best that do not end. A sentence is done when its buffer is full; a finished hypothesis is never
    extended again, and is dropped only for K better finished ones. Done sentences leave the batch once
    `drop_share` of the sentences decoded are done (1.0: never, the plain reference).

    With constraints in `controls`, the 2K are taken in the order the constraint banks allocate the beam
    (nmt.inference.constraints), and a finished hypothesis that has met all of its phrases ranks before any that
    has not. The other controls' rules change each step's log-probabilities first (nmt.inference.controls).

    Histories are kept as back-pointers (each step's surviving tokens, the beam each extends, the step's
    attention rows), and only the returned hypotheses are traced back at the end: no step copies the
    histories of all beams (unless a rule reads them). Returns the `n_best` best per sentence."""
    batch, k = max_lengths.shape[0], beam_size
    device = max_lengths.device
    sentences = torch.arange(batch, device=device)  # the sentence of each one decoded
    memory, state = memory.repeat(k), state.select(sentences.repeat_interleave(k))
    alive_scores = torch.full((batch, k), float("-inf"), device=device)
    alive_scores[:, 0] = 0.0  # all beams start identical: only the first may expand at step 0
    limit = int(max_lengths.max())
    rules = Rules(controls, batch, device)
    banks = ConstraintBanks(controls.constraints or [], device) if controls.constrained else None
    progress = banks.start(k) if banks is not None else Progress.none()
    history = torch.zeros(batch, k, 0, dtype=torch.long, device=device) if controls.needs_history else None
    stream = _Stream(controls.listener, eos) if controls.listener is not None else None
    # The finished buffer, per sentence: score (normalized), log p, length, and its last step: the alive beam
    # it extended (an index into the alive beams of the step before) and its token; whether it met its phrases.
    fin_scores = torch.full((batch, k), float("-inf"), device=device)
    fin_log_probs = torch.zeros(batch, k, device=device)
    fin_lengths = torch.zeros(batch, k, dtype=torch.long, device=device)
    fin_beams = torch.zeros(batch, k, dtype=torch.long, device=device)
    fin_tokens = torch.full((batch, k), pad, dtype=torch.long, device=device)
    fin_complete = torch.zeros(batch, k, dtype=torch.bool, device=device)
    # Per step t: the alive beams' tokens and the beam of step t - 1 each extends (batch, K), and the attention
    # rows of the beams that were extended at t (batch, K, S).
    step_tokens: list[torch.Tensor] = []
    step_parents: list[torch.Tensor] = []
    step_weights: list[torch.Tensor] = []
    prev = torch.full((batch * k,), bos, dtype=torch.long, device=device)
    for t in range(limit):
        log_probs, state, weights = step_fn(prev, state, memory)
        log_probs = _never_emitted(log_probs, bos, pad)
        decoded, vocab, src_len = sentences.shape[0], log_probs.shape[-1], weights.shape[-1]
        if rules.active:
            rules.apply(log_probs, t, sentences.repeat_interleave(k),
                        history.view(decoded * k, -1) if history is not None else None)
        if banks is not None:
            banks.ban_early_end(log_probs, progress, eos)
        rows = torch.arange(decoded, device=device)
        all_weights = weights.new_zeros(batch, k, src_len)
        all_weights[sentences] = weights.view(decoded, k, src_len)
        step_weights.append(all_weights)
        candidates = log_probs.view(decoded, k, vocab).add_(alive_scores.unsqueeze(-1))
        if banks is None:  # (b, 2K), best first
            top_scores, top_index = candidates.view(decoded, k * vocab).topk(min(2 * k, k * vocab), dim=-1)
            beam, token = top_index // vocab, top_index % vocab
        else:  # (b, 2K), in the order the banks allocate them
            top_scores, beam, token, top_progress = banks.candidates(candidates, progress, sentences, 2 * k)
        ending = (token == eos) | (t + 1 >= max_lengths[sentences]).unsqueeze(1)
        rank = torch.arange(top_scores.shape[1], device=device)
        done = fin_scores[sentences, -1] > float("-inf")  # buffer already full: nothing more to add
        newly_finished = ending & (rank < k) & torch.isfinite(top_scores) & ~done.unsqueeze(1)

        # Finished buffer: keep the K best of (old finished, newly finished), by length-normalized score (those
        # that met their phrases first).
        normalized = top_scores / length_penalty(torch.tensor(t + 1, device=device), alpha)
        merged = torch.cat([fin_scores[sentences], normalized.masked_fill(~newly_finished, float("-inf"))], dim=1)
        if banks is None:
            keep = merged.topk(k, dim=1).indices
        else:
            complete = torch.cat([fin_complete[sentences], banks.complete(top_progress)], dim=1)
            keep = _best_finished(merged, complete, k)
            fin_complete[sentences] = complete.gather(1, keep)
        fin_scores[sentences] = merged.gather(1, keep)
        fin_log_probs[sentences] = torch.cat([fin_log_probs[sentences], top_scores], dim=1).gather(1, keep)
        lengths = torch.full_like(beam, t + 1)
        fin_lengths[sentences] = torch.cat([fin_lengths[sentences], lengths], dim=1).gather(1, keep)
        fin_beams[sentences] = torch.cat([fin_beams[sentences], beam], dim=1).gather(1, keep)
        fin_tokens[sentences] = torch.cat([fin_tokens[sentences], token], dim=1).gather(1, keep)
        if stream is not None and history is not None:
            stream.finish(history[0], beam[0], token[0], keep[0], fin_scores[sentences[0]])

        running = fin_scores[sentences, -1] == float("-inf")
        if not bool(running.any()):
            break
        # Alive: the first K candidates that do not end (the K best, without constraints).
        pick = rank.expand_as(ending).masked_fill(ending, top_scores.shape[1]).topk(k, dim=1, largest=False).indices
        alive_scores = top_scores.gather(1, pick).masked_fill(ending.gather(1, pick), float("-inf"))
        parents, alive_tokens = beam.gather(1, pick), token.gather(1, pick)
        if banks is not None:
            progress = top_progress.gather(pick)
        if history is not None:
            history = torch.cat([history.gather(1, parents.unsqueeze(-1).expand(-1, -1, t)),
                                 alive_tokens.unsqueeze(-1)], dim=2)
        if stream is not None and history is not None:
            stream.alive(history[0], alive_scores[0])
        step_tokens.append(torch.full((batch, k), pad, dtype=torch.long, device=device).index_copy(0, sentences,
                                                                                                  alive_tokens))
        step_parents.append(torch.zeros(batch, k, dtype=torch.long, device=device).index_copy(0, sentences, parents))
        source_rows = rows.unsqueeze(1) * k + parents  # (b, K): the decoded row each alive beam continues
        prev = alive_tokens.view(-1)
        going = _rows_to_keep(running, drop_share)
        if going is not None:
            memory = memory.select(going)
            sentences, alive_scores, source_rows, prev = (sentences[going], alive_scores[going], source_rows[going],
                                                          prev.view(decoded, k)[going].view(-1))
            progress = progress.select(going)
            if history is not None:
                history = history[going]
        state = state.select(source_rows.view(-1))

    # a slot never filled (fewer than K finite candidates ever ended) is an empty hypothesis, not a leftover
    fin_lengths = fin_lengths.masked_fill(fin_scores == float("-inf"), 0)
    tokens, attention = _trace_back(fin_lengths[:, :n_best], fin_beams[:, :n_best], fin_tokens[:, :n_best],
                                    step_tokens, step_parents, step_weights, pad)
    found = [
        [_hypothesis(tokens[i, j], attention[i, j], int(fin_lengths[i, j]), eos, float(fin_log_probs[i, j]),
                     float(fin_scores[i, j])) for j in range(n_best)]
        for i in range(batch)
    ]
    if stream is not None:
        stream.end(found[0][0].tokens)
    return found


def _best_finished(scores: torch.Tensor, complete: torch.Tensor, k: int) -> torch.Tensor:
    """(b, k) positions of the k best finished hypotheses: those that met their phrases before those that did
    not (only possible at the length limit), each group by score."""
    complete = complete & torch.isfinite(scores)  # an empty place comes last whatever it holds
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    by_group = (~complete.gather(1, by_score)).to(torch.uint8).argsort(dim=1, stable=True)
    return by_score.gather(1, by_group)[:, :k]


class _Stream:
    """Streaming the best hypothesis of a one-sentence beam search: a token is passed on once every alive beam
    and every finished hypothesis begins with it, so it is never taken back; the rest when the search ends."""

    def __init__(self, listener: TokenListener, eos: int):
        self.listener, self.eos = listener, eos
        self.finished: list[list[int]] = []  # the finished buffer's hypotheses, in its order
        self.sent = 0

    def finish(self, history: torch.Tensor, beams: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor,
               scores: torch.Tensor) -> None:
        """Follow the buffer's merge: its old entries, then the candidates (history of their beam, their token);
        a place with score -inf holds none."""
        candidates = [history[b].tolist() + [int(tok)] for b, tok in zip(beams.tolist(), tokens.tolist(),
                                                                          strict=True)]
        merged = self.finished + [[]] * (len(keep) - len(self.finished)) + candidates
        self.finished = [merged[i] if score > float("-inf") else [] for i, score in zip(keep.tolist(),
                                                                                          scores.tolist(), strict=True)]

    def alive(self, history: torch.Tensor, scores: torch.Tensor) -> None:
        live = [row for row, score in zip(history.tolist(), scores.tolist(), strict=True) if score > float("-inf")]
        shared = _common_prefix(live + [h for h in self.finished if h])
        shared = shared[:-1] if shared and shared[-1] == self.eos else shared
        self.listener(shared[self.sent:])  # every step, so that the listener can stop the search
        self.sent = max(self.sent, len(shared))

    def end(self, best: list[int]) -> None:
        if len(best) > self.sent:
            self.listener(best[self.sent:])


def _common_prefix(sequences: list[list[int]]) -> list[int]:
    if not sequences:
        return []
    shortest = min(sequences, key=len)
    for i, token in enumerate(shortest):
        if any(s[i] != token for s in sequences):
            return shortest[:i]
    return shortest


def _trace_back(lengths: torch.Tensor, beams: torch.Tensor, last_tokens: torch.Tensor, step_tokens: list[torch.Tensor],
                step_parents: list[torch.Tensor], step_weights: list[torch.Tensor], pad: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Finished hypotheses (B, n) of `lengths`, each ending in `last_tokens` after alive beam `beams` of the
    step before -> their tokens (B, n, L) and attention rows (B, n, L, S), followed back through the steps."""
    longest = int(lengths.max())
    batch, n = lengths.shape
    tokens = torch.full((batch, n, longest), pad, dtype=torch.long, device=lengths.device)
    attention = step_weights[0].new_zeros(batch, n, longest, step_weights[0].shape[-1])
    cursor = beams.clone()  # an alive beam of step s - 1 at the hypothesis's last step, of step s before it
    for s in range(longest - 1, -1, -1):
        last, inside = lengths == s + 1, lengths > s + 1
        if bool(inside.any()):
            tokens[:, :, s] = torch.where(inside, step_tokens[s].gather(1, cursor), pad)
            cursor = torch.where(inside, step_parents[s].gather(1, cursor), cursor)
        tokens[:, :, s] = torch.where(last, last_tokens, tokens[:, :, s])
        rows = step_weights[s].gather(1, cursor.unsqueeze(-1).expand(-1, -1, attention.shape[-1]))
        attention[:, :, s] = rows.masked_fill(~(last | inside).unsqueeze(-1), 0.0)
    return tokens, attention
