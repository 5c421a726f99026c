"""What a caller steers in a search, in token ids: a forced target prefix, phrases that must appear (lexical
constraints, nmt.inference.constraints), n-grams that may not repeat, a penalty on tokens already generated, and
a listener that receives the tokens of the best hypothesis as soon as they can no longer change (streaming).

`Rules` applies the per-step rules to a step's log-probabilities, in place, for every search and every model
(greedy and beam; a single model, an ensemble or ONNX Runtime): the search calls it between the step and the
choice of the next tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

TokenListener = Callable[[list[int]], None]
"""Called after every search step with the tokens of the best hypothesis that became final at it (none, or
several; never taken back; EOS never included). It may raise to stop the search (a streaming client that went
away)."""


@dataclass(frozen=True)
class Controls:
    """Per sentence of a search's batch: its forced prefix and its constraints (each a phrase's token ids); for
    the whole batch: the n-gram size that may not repeat (0: off), the repetition penalty (1.0: off) and the
    token listener (a batch of one sentence only)."""

    prefixes: Sequence[Sequence[int]] | None = None
    constraints: Sequence[Sequence[Sequence[int]]] | None = None
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    listener: TokenListener | None = field(default=None, compare=False)

    @property
    def constrained(self) -> bool:
        return self.constraints is not None and any(self.constraints)

    @property
    def needs_history(self) -> bool:
        """Whether the rules read the tokens each hypothesis has generated so far."""
        return self.no_repeat_ngram_size > 0 or self.repetition_penalty != 1.0 or self.listener is not None


NO_CONTROLS = Controls()


class Rules:
    """The per-step rules of `Controls` over one batch, as tensors: `apply` changes a step's (N, V)
    log-probabilities of rows that decode sentences `sentences` (N,) after `history` (N, t), the tokens each row
    has generated so far."""

    def __init__(self, controls: Controls, batch: int, device: torch.device):
        self.ngram, self.penalty = controls.no_repeat_ngram_size, controls.repetition_penalty
        self.prefixes: torch.Tensor | None = None  # (batch, longest prefix), -1 past a sentence's own prefix
        if controls.prefixes is not None and any(controls.prefixes):
            longest = max(len(p) for p in controls.prefixes)
            self.prefixes = torch.full((batch, longest), -1, dtype=torch.long, device=device)
            for i, prefix in enumerate(controls.prefixes):
                self.prefixes[i, :len(prefix)] = torch.tensor(list(prefix), dtype=torch.long)

    @property
    def active(self) -> bool:
        return self.prefixes is not None or self.ngram > 0 or self.penalty != 1.0

    def apply(self, log_probs: torch.Tensor, t: int, sentences: torch.Tensor, history: torch.Tensor | None) -> None:
        forced = None
        if self.prefixes is not None and t < self.prefixes.shape[1]:
            forced = self.prefixes[sentences, t]
            kept = log_probs.gather(1, forced.clamp(min=0).unsqueeze(1))  # the prefix's own log p, before any rule
        if history is not None and history.shape[1]:
            if self.penalty != 1.0:
                self._penalize_repeats(log_probs, history)
            if self.ngram and history.shape[1] >= self.ngram:
                self._ban_repeated_ngrams(log_probs, history)
        if forced is not None:
            rows = forced >= 0
            log_probs[rows] = float("-inf")
            log_probs[rows] = log_probs[rows].scatter(1, forced[rows].unsqueeze(1), kept[rows])

    def _penalize_repeats(self, log_probs: torch.Tensor, history: torch.Tensor) -> None:
        """CTRL's repetition penalty (Keskar et al. 2019) on log-probabilities: a token already generated has its
        log p multiplied by the penalty (> 1 lowers it; not renormalized, as the banned tokens are not)."""
        seen = torch.zeros_like(log_probs, dtype=torch.bool).scatter_(1, history, True)
        log_probs[seen] *= self.penalty

    def _ban_repeated_ngrams(self, log_probs: torch.Tensor, history: torch.Tensor) -> None:
        """A token that would complete an n-gram the row has already generated gets -inf: each earlier window
        whose first n - 1 tokens equal the row's last n - 1 bans the token that followed them."""
        n = self.ngram
        windows = history.unfold(1, n, 1)  # (N, W, n)
        matches = (windows[:, :, :n - 1] == history[:, history.shape[1] - n + 1:].unsqueeze(1)).all(-1)
        banned = torch.zeros_like(log_probs).scatter_add_(1, windows[:, :, n - 1], matches.to(log_probs.dtype))
        log_probs.masked_fill_(banned > 0, float("-inf"))
