"""Lexically constrained beam search: phrases that must appear in the output, by dynamic beam allocation (Post &
Vilar 2018), vectorized over sentences and beams (after Hu et al. 2019; fairseq's constrained search).

Each hypothesis carries its progress through its sentence's constraints: which phrases it has met, and the
phrase it is in the middle of (and how far). Each step the candidates are the usual best extensions, each beam's
own best token, and each beam's next constraint token (the next token of the phrase it is in, or the first token
of every phrase it has not met). A candidate's bank is the number of constraint tokens it has met; the beam is
filled round-robin over the banks, the highest bank first, each bank's candidates best first: the banks share
the beam equally, and a bank with too few candidates leaves its places to the others. A hypothesis may not end
with EOS before it has met every phrase. The hypothesis furthest on is always kept and can always take its next
constraint token, so every phrase appears when the length limit leaves room for them (one beam is enough) and
no rule of nmt.inference.controls bans its tokens (a repeated n-gram).

Nothing here knows about text: phrases are token ids, as search.py's are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Progress:
    """Per hypothesis (batch, K): the phrases met (batch, K, C), the phrase in progress (-1: none) and the
    tokens of it already generated."""

    met: torch.Tensor
    active: torch.Tensor
    position: torch.Tensor

    @classmethod
    def none(cls) -> Progress:
        """The progress of a search without constraints: nothing to follow."""
        empty = torch.zeros(0, dtype=torch.long)
        return cls(empty.bool(), empty, empty)

    def gather(self, index: torch.Tensor) -> Progress:
        """The progress of the hypotheses at `index` (b, M) of each sentence's K."""
        return Progress(self.met.gather(1, index.unsqueeze(-1).expand(-1, -1, self.met.shape[-1])),
                        self.active.gather(1, index), self.position.gather(1, index))

    def select(self, index: torch.Tensor) -> Progress:
        """The sentences at `index` (their rows in the decoded batch)."""
        if not self.met.numel():
            return self
        return Progress(self.met[index], self.active[index], self.position[index])


class ConstraintBanks:
    """The constraints of one batch, as tensors indexed by the batch's sentence numbers."""

    def __init__(self, constraints: Sequence[Sequence[Sequence[int]]], device: torch.device):
        batch, most = len(constraints), max(1, max(len(c) for c in constraints))
        longest = max((len(p) for c in constraints for p in c), default=1)
        self.tokens = torch.full((batch, most, longest), -1, dtype=torch.long, device=device)
        self.lengths = torch.zeros(batch, most, dtype=torch.long, device=device)  # 0: no phrase (already met)
        for i, phrases in enumerate(constraints):
            for j, phrase in enumerate(phrases):
                self.tokens[i, j, :len(phrase)] = torch.tensor(list(phrase), dtype=torch.long)
                self.lengths[i, j] = len(phrase)
        self.banks = int(self.lengths.sum(1).max()) + 1  # banks 0..the most constraint tokens of a sentence

    def start(self, beam: int) -> Progress:
        batch, most = self.lengths.shape
        device = self.lengths.device
        met = (self.lengths == 0).unsqueeze(1).expand(batch, beam, most).clone()
        return Progress(met, torch.full((batch, beam), -1, dtype=torch.long, device=device),
                        torch.zeros(batch, beam, dtype=torch.long, device=device))

    def ban_early_end(self, log_probs: torch.Tensor, progress: Progress, eos: int) -> None:
        """(b*K, V) log-probabilities: EOS is -inf for every hypothesis that has not met all of its phrases."""
        unfinished = ~progress.met.all(-1).view(-1)
        log_probs[unfinished, eos] = float("-inf")

    def complete(self, progress: Progress) -> torch.Tensor:
        """(b, K): whether each hypothesis has met all of its phrases."""
        return progress.met.all(-1)

    def advance(self, progress: Progress, tokens: torch.Tensor, sentences: torch.Tensor) -> Progress:
        """The progress after each hypothesis (b, M) generates `tokens` (b, M). Continuing the phrase in progress
        moves on in it; any other token leaves it (its tokens no longer count) and may start a phrase not met."""
        met, active, position = progress.met, progress.active, progress.position
        phrases, lengths = self.tokens[sentences], self.lengths[sentences]  # (b, C, L), (b, C)
        in_phrase = active >= 0
        slot = active.clamp(min=0)
        expected = phrases.gather(1, slot.unsqueeze(-1).expand(-1, -1, phrases.shape[-1]))  # (b, M, L)
        expected = expected.gather(2, position.clamp(max=phrases.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
        continues = in_phrase & (tokens == expected)
        position = torch.where(continues, position + 1, 0)
        finishes = continues & (position == lengths.gather(1, slot))
        starts = (tokens.unsqueeze(-1) == phrases[:, None, :, 0]) & ~met & ~continues.unsqueeze(-1)  # (b, M, C)
        starting = starts.any(-1)
        first = starts.to(torch.uint8).argmax(-1)  # the first phrase not met that this token begins
        one_token = starting & (lengths.gather(1, first) == 1)
        met = met.clone()
        met[finishes] |= torch.nn.functional.one_hot(slot[finishes], met.shape[-1]).bool()
        met[one_token] |= torch.nn.functional.one_hot(first[one_token], met.shape[-1]).bool()
        active = torch.where(continues & ~finishes, active, torch.where(starting & ~one_token, first, -1))
        position = torch.where(active < 0, 0, torch.where(continues, position, 1))
        return Progress(met, active, position)

    def bank_of(self, progress: Progress, sentences: torch.Tensor) -> torch.Tensor:
        """(b, M): constraint tokens met, those of the phrase in progress included."""
        lengths = self.lengths[sentences].unsqueeze(1)
        return (progress.met * lengths).sum(-1) + progress.position

    def candidates(self, scores: torch.Tensor, progress: Progress, sentences: torch.Tensor, count: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Progress]:
        """From `scores` (b, K, V) (each beam's score plus the step's log-probabilities): `count` candidates per
        sentence in the order the banks allocate them -> their scores, beams, tokens and progress (b, count).
        A place no candidate fills has score -inf."""
        b, k, vocab = scores.shape
        flat = scores.view(b, k * vocab)
        top_index = flat.topk(min(count, k * vocab), dim=1).indices
        own_best = scores.argmax(-1) + torch.arange(k, device=scores.device) * vocab  # (b, K)
        index = torch.cat([top_index, own_best, self._constraint_candidates(progress, sentences, vocab)], dim=1)
        beam, token = index.div(vocab, rounding_mode="floor"), index % vocab
        cand_scores = flat.gather(1, index.clamp(min=0)).masked_fill(index < 0, float("-inf"))
        cand_scores = cand_scores.masked_fill(_repeats(index), float("-inf"))
        advanced = self.advance(progress.gather(beam.clamp(min=0)), token, sentences)
        bank = self.bank_of(advanced, sentences)
        order = _allocation_order(cand_scores, bank, self.banks)[:, :count]
        chosen = Progress(advanced.met.gather(1, order.unsqueeze(-1).expand(-1, -1, advanced.met.shape[-1])),
                          advanced.active.gather(1, order), advanced.position.gather(1, order))
        return cand_scores.gather(1, order), beam.gather(1, order).clamp(min=0), token.gather(1, order), chosen

    def _constraint_candidates(self, progress: Progress, sentences: torch.Tensor, vocab: int) -> torch.Tensor:
        """(b, K * C) flat indices beam * V + token of each beam's next constraint tokens, -1 where none."""
        phrases = self.tokens[sentences]  # (b, C, L)
        b, k, c = progress.met.shape
        firsts = phrases[:, None, :, 0].expand(b, k, c).masked_fill(progress.met, -1)
        slot = progress.active.clamp(min=0)
        following = phrases.gather(1, slot.unsqueeze(-1).expand(-1, -1, phrases.shape[-1]))
        following = following.gather(2, progress.position.unsqueeze(-1).clamp(max=phrases.shape[-1] - 1))
        in_phrase = (progress.active >= 0).unsqueeze(-1)
        tokens = torch.where(in_phrase, torch.cat([following, torch.full_like(firsts[..., 1:], -1)], dim=-1), firsts)
        beams = torch.arange(k, device=phrases.device).view(1, k, 1) * vocab
        return torch.where(tokens >= 0, beams + tokens, -1).view(b, k * c)


def _repeats(index: torch.Tensor) -> torch.Tensor:
    """(b, M): whether each entry equals an earlier one in its row (the same beam and token found twice)."""
    ordered, order = index.sort(dim=1, stable=True)
    again = torch.cat([torch.zeros_like(ordered[:, :1], dtype=torch.bool), ordered[:, 1:] == ordered[:, :-1]], 1)
    return torch.zeros_like(again).scatter(1, order, again)


def _allocation_order(scores: torch.Tensor, bank: torch.Tensor, banks: int) -> torch.Tensor:
    """(b, M) candidate positions, in the order the beam takes them: round-robin over the banks, the highest
    first, best first within a bank; candidates with score -inf last."""
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    sorted_bank = bank.gather(1, by_score)
    in_bank = torch.nn.functional.one_hot(sorted_bank, banks).cumsum(1).gather(2, sorted_bank.unsqueeze(-1))
    key = (in_bank.squeeze(-1) - 1) * banks + (banks - 1 - sorted_bank)
    key = key.masked_fill(~torch.isfinite(scores.gather(1, by_score)), torch.iinfo(torch.long).max)
    return by_score.gather(1, key.argsort(dim=1, stable=True))
