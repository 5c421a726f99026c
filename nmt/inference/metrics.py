"""Corpus-level BLEU, chrF and TER through sacrebleu, each with its signature, so scores are comparable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.config import EvaluationConfig
from nmt.errors import ConfigError


@dataclass
class Score:
    name: str
    score: float
    signature: str

    def __str__(self) -> str:
        return f"{self.name} = {self.score:.2f}  ({self.signature})"


def bleu(hypotheses: Sequence[str], references: Sequence[str], cfg: EvaluationConfig) -> Score:
    try:
        metric = BLEU(tokenize=cfg.tokenize, lowercase=cfg.lowercase)
    except Exception as err:  # sacrebleu raises for an optional tokenizer whose package is missing
        raise ConfigError(f"evaluation.tokenize {cfg.tokenize}: {err} (pip install 'sacrebleu[ja]' for ja-mecab)") \
            from None
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return Score("BLEU", result.score, str(metric.get_signature()))


def chrf(hypotheses: Sequence[str], references: Sequence[str], cfg: EvaluationConfig) -> Score:
    metric = CHRF(lowercase=cfg.lowercase)
    return Score("chrF", metric.corpus_score(list(hypotheses), [list(references)]).score, str(metric.get_signature()))


def ter(hypotheses: Sequence[str], references: Sequence[str], cfg: EvaluationConfig) -> Score:
    metric = TER(case_sensitive=not cfg.lowercase)
    return Score("TER", metric.corpus_score(list(hypotheses), [list(references)]).score, str(metric.get_signature()))


def scores_to_dict(scores: Sequence[Score]) -> dict:
    return {s.name: asdict(s) for s in scores}
