"""Decode a set of sentences and score the output: the one path behind validation during training,
`nmt evaluate`, `nmt tune`, `nmt average` and the benchmark scripts (`nmt analyze` scores by length bucket
instead, on the same `eval_set`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from nmt.config import EvaluationConfig
from nmt.data.splits import EvalSet
from nmt.inference.metrics import Score, bleu, chrf, ter
from nmt.inference.translate import Translation, Translator


@dataclass
class DecodedSet:
    name: str
    translations: list[Translation]
    bleu: Score
    chrf: Score
    seconds: float  # decoding only, scoring excluded

    @property
    def hypotheses(self) -> list[str]:
        return [t.text for t in self.translations]

    @property
    def sentences_per_s(self) -> float:
        return len(self.translations) / max(self.seconds, 1e-9)

    def scores(self, references: Sequence[str], evaluation: EvaluationConfig) -> list[Score]:
        """BLEU, chrF and TER (what `nmt evaluate` reports; validation needs only the first two, so TER is
        computed when asked for)."""
        return [self.bleu, self.chrf, ter(self.hypotheses, references, evaluation)]


def decode_and_score(translator: Translator, data: EvalSet, evaluation: EvaluationConfig,
                     beam_size: int | None = None, progress: bool = False) -> DecodedSet:
    """Translate `data.sources` (beam size default: the translator's decoding settings) and score them
    against `data.references` with BLEU and chrF, as the run's evaluation settings say."""
    started = time.perf_counter()
    translations = translator.translate(data.sources, beam_size, progress=progress)
    seconds = time.perf_counter() - started
    hypotheses = [t.text for t in translations]
    return DecodedSet(data.name, translations, bleu(hypotheses, data.references, evaluation),
                      chrf(hypotheses, data.references, evaluation), seconds)
