"""Minimum Bayes risk decoding (Kumar & Byrne 2004; Freitag et al. 2022): among a sentence's candidate
translations, choose the one that agrees most with the others, taken as pseudo-references: the highest expected
utility, its metric against the other candidates averaged as below. The utility is sacrebleu's own chrF, sentence BLEU
(effective order) or TER (negated: lower is better), so that MBR optimizes what the evaluation measures.

Sampled candidates: duplicates are compared once, and count as pseudo-references as often as they were drawn:
a translation the model samples often is a likely one (the sampling-based estimate of the expectation). A
candidate is never its own pseudo-reference, but its duplicates are.

A beam's n-best is not a sample: its tail holds improbable variants (on a two-word sentence, the same words
with one repeated) that would outvote the translation if each counted once. Each therefore counts by its
probability renormalized over the n-best, itself included, which is the expectation of Kumar & Byrne (2004)
over the n-best as the model's distribution."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

from nmt.config import EvaluationConfig, MbrConfig
from nmt.inference.search import Hypothesis

DEFAULT_EVALUATION = EvaluationConfig()
"""sacrebleu's own settings (13a tokens, case-sensitive), for utilities outside a run."""
MBR_SEED = 0
"""The seed of sampled candidates when the caller gives none: the same call chooses the same translation."""


def utility_metric(name: str, evaluation: EvaluationConfig) -> Metric:
    """The sacrebleu metric of a utility, with the run's evaluation settings (BLEU's tokenizer, case)."""
    if name == "chrf":
        return CHRF(lowercase=evaluation.lowercase)
    if name == "bleu":
        return BLEU(tokenize=evaluation.tokenize, lowercase=evaluation.lowercase, effective_order=True)
    if name == "ter":
        return TER(case_sensitive=not evaluation.lowercase)
    raise ValueError(f"unknown MBR metric {name!r}")


def pair_utilities(pairs: Sequence[tuple[str, str]], metric: str,
                   evaluation: EvaluationConfig = DEFAULT_EVALUATION) -> np.ndarray:
    """The sentence-level utility of each (hypothesis, reference) pair on the metric's 0-100 scale (TER negated),
    from one pass of sacrebleu over all of them: its segment statistics, then each pair's score, as its
    sentence_score computes them."""
    if not pairs:
        return np.zeros(0)
    scorer = utility_metric(metric, evaluation)
    stats = scorer._extract_corpus_statistics([h for h, _ in pairs], [[r for _, r in pairs]])
    scores = np.array([scorer._compute_score_from_stats(s).score for s in stats], dtype=np.float64)
    return -scores if metric == "ter" else scores


@dataclass(frozen=True)
class Ranked:
    """A sentence's distinct candidates, best first: `index` is each one's first position among the candidates,
    `utility` its expected utility against the others."""

    index: list[int]
    utility: list[float]


def rank_candidates(candidates: Sequence[str], metric: str, evaluation: EvaluationConfig = DEFAULT_EVALUATION,
                    log_probs: Sequence[float] | None = None) -> Ranked:
    """The distinct candidates ordered by expected utility (ties: the earlier candidate first, which for a beam's
    n-best is the more probable).

    Drawn candidates (no `log_probs`): a candidate's expected utility is the mean of its utility against the
    N - 1 other candidates, each distinct other one weighted by its count and its own duplicates by the utility
    of two identical texts; self-pairs of a text drawn once are never scored. A lone candidate has no other to
    agree with: its expected utility is 0.
    A beam's n-best (`log_probs`, each candidate's log p): the sum over the distinct candidates, itself included,
    of the utility against each, weighted by its probability renormalized over the n-best."""
    weighted = log_probs is not None
    counts = Counter(candidates)
    distinct = list(counts)
    pairs = [(i, j) for i in range(len(distinct)) for j in range(len(distinct))
             if i != j or weighted or counts[distinct[i]] > 1]
    utility = np.zeros((len(distinct), len(distinct)))
    if pairs:
        scores = pair_utilities([(distinct[i], distinct[j]) for i, j in pairs], metric, evaluation)
        utility[tuple(np.array(pairs).T)] = scores
    if log_probs is not None:
        posterior = np.exp(np.asarray(log_probs, dtype=np.float64) - max(log_probs))
        mass = dict.fromkeys(distinct, 0.0)
        for text, p in zip(candidates, posterior / posterior.sum(), strict=True):
            mass[text] += p
        expected = utility @ np.array([mass[text] for text in distinct])
    else:
        weights = np.array([counts[text] for text in distinct], dtype=np.float64)
        expected = (utility @ weights - np.diag(utility)) / max(1, len(candidates) - 1)
    order = sorted(range(len(distinct)), key=lambda i: -expected[i])  # stable: the first occurrence wins ties
    first: dict[str, int] = {}
    for position, text in enumerate(candidates):
        first.setdefault(text, position)
    return Ranked([first[distinct[i]] for i in order], [float(expected[i]) for i in order])


def choose(candidates: Sequence[Hypothesis], texts: Sequence[str], settings: MbrConfig, n_best: int,
           evaluation: EvaluationConfig = DEFAULT_EVALUATION) -> tuple[list[Hypothesis], list[str], list[float]]:
    """A sentence's `n_best` distinct candidates (hypotheses and their texts) by expected utility, best first,
    with it; a beam's unfilled places (score -inf) are not candidates, and its n-best count by probability."""
    kept = [i for i, h in enumerate(candidates) if h.score != float("-inf")] or [0]
    log_probs = [candidates[i].log_prob for i in kept] if settings.source == "beam" else None
    ranked = rank_candidates([texts[i] for i in kept], settings.metric, evaluation, log_probs)
    chosen = [kept[i] for i in ranked.index[:n_best]]
    return [candidates[i] for i in chosen], [texts[i] for i in chosen], ranked.utility[:n_best]
