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
from nmt.inference.quality import sentence_chrf, spearman
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

    def quality_spearman(self, references: Sequence[str], evaluation: EvaluationConfig) -> float | None:
        """Spearman's rank correlation of the translations' quality scores with their sentence chrF: how well the
        score tells the better translations from the worse, over the sentences that have one (None: undefined)."""
        scored = [(t.quality, t.text, ref) for t, ref in zip(self.translations, references, strict=True)
                  if t.quality is not None]
        return spearman([q for q, _, _ in scored], sentence_chrf([t for _, t, _ in scored],
                                                                  [r for _, _, r in scored], evaluation))

    def scores(self, references: Sequence[str], evaluation: EvaluationConfig) -> list[Score]:
        """BLEU, chrF and TER (what `nmt evaluate` reports; validation needs only the first two, so TER is
        computed when asked for)."""
        return [self.bleu, self.chrf, ter(self.hypotheses, references, evaluation)]


def decode_and_score(translator: Translator, data: EvalSet, evaluation: EvaluationConfig,
                     beam_size: int | None = None, progress: bool = False, mbr: object = None,
                     seed: int | None = None) -> DecodedSet:
    """Translate `data.sources` (beam size and MBR default: the translator's decoding settings; `mbr` and `seed`
    as `Translator.translate` takes them) and score them against `data.references` with BLEU and chrF, as the
    run's evaluation settings say."""
    started = time.perf_counter()
    translations = translator.translate(data.sources, beam_size, progress=progress, mbr=mbr, seed=seed)
    seconds = time.perf_counter() - started
    hypotheses = [t.text for t in translations]
    return DecodedSet(data.name, translations, bleu(hypotheses, data.references, evaluation),
                      chrf(hypotheses, data.references, evaluation), seconds)
