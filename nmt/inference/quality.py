"""A quality score per translation: an estimate of its sentence chrF (0-100) against a reference nobody has,
so that a user can tell which translations to check.

The raw feature is the best hypothesis's mean log-probability per token (EOS included): a model unsure of what
it writes spreads its probability. Dev validation during training fits a straight line of sentence chrF on that
feature over the dev translations (`calibration_scores`), and each checkpoint keeps it in its metadata as
`quality_slope`, `quality_intercept` and `quality_spearman` (the rank correlation it had on dev); the estimate
is that line, clipped to 0-100. A checkpoint without them (trained before, or imported) gets 100 x the geometric
mean of its tokens' probabilities instead, reported once as uncalibrated. Under MBR with sampled candidates and the
chrF utility the score is the chosen translation's expected chrF against the other candidates: already on chrF's
scale (it tends to run above the chrF against a reference, as candidates agree with each other more than with a
person). Otherwise (a beam's n-best, whose members agree whatever the reference, or the BLEU or TER utility,
which the dev line was not fitted on) it is the calibrated log-probability estimate of the chosen translation."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nmt.config import EvaluationConfig
from nmt.inference.mbr import pair_utilities
from nmt.inference.search import Hypothesis

log = logging.getLogger(__name__)

PREFIX = "quality_"
"""The prefix of the calibration's keys in validation's scores, metrics.jsonl and a checkpoint's metadata."""


def mean_log_prob(hypothesis: Hypothesis) -> float:
    """The quality feature: log p per generated token, EOS included when the hypothesis ended with it."""
    return hypothesis.log_prob / max(1, len(hypothesis.tokens) + int(hypothesis.ended))


def sentence_chrf(hypotheses: Sequence[str], references: Sequence[str], evaluation: EvaluationConfig
                  ) -> np.ndarray:
    """Each hypothesis's sentence chrF against its reference (sacrebleu, the run's case setting)."""
    return pair_utilities(list(zip(hypotheses, references, strict=True)), "chrf", evaluation)


def spearman(first: Sequence[float] | np.ndarray, second: Sequence[float] | np.ndarray) -> float | None:
    """Spearman's rank correlation (scipy; ties given their mean rank); None where it is undefined (fewer than
    two values, or one side constant)."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import spearmanr  # loaded when a correlation is asked for, not with the API

    return float(spearmanr(a, b).statistic)


@dataclass(frozen=True)
class Calibration:
    """sentence chrF ~ slope x feature + intercept, fitted on dev; `spearman` is the feature's rank correlation
    with sentence chrF there."""

    slope: float
    intercept: float
    spearman: float | None = None

    def estimate(self, feature: float) -> float:
        return float(np.clip(self.slope * feature + self.intercept, 0.0, 100.0))

    def as_scores(self) -> dict[str, float]:
        """As validation's scores hold it (floats only: metrics.jsonl and the checkpoint's metadata)."""
        found = {f"{PREFIX}slope": self.slope, f"{PREFIX}intercept": self.intercept}
        if self.spearman is not None:
            found[f"{PREFIX}spearman"] = self.spearman
        return found

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Calibration | None:
        """The calibration a checkpoint's metadata holds; None where it holds none (or not as finite numbers)."""
        slope, intercept = meta.get(f"{PREFIX}slope"), meta.get(f"{PREFIX}intercept")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                   for v in (slope, intercept)):
            return None
        rank = meta.get(f"{PREFIX}spearman")
        return cls(float(slope), float(intercept),  # type: ignore[arg-type]
                   float(rank) if isinstance(rank, int | float) and math.isfinite(rank) else None)


def fit_calibration(features: Sequence[float] | np.ndarray, chrf: Sequence[float] | np.ndarray
                    ) -> Calibration | None:
    """The least-squares line of sentence chrF on the feature (numpy.polyfit); None where no line is defined
    (fewer than two sentences, or every feature equal)."""
    x, y = np.asarray(features, dtype=np.float64), np.asarray(chrf, dtype=np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return Calibration(float(slope), float(intercept), spearman(x, y))


def calibration_scores(hypotheses: Sequence[Hypothesis], texts: Sequence[str], references: Sequence[str],
                       evaluation: EvaluationConfig) -> dict[str, float]:
    """The calibration fitted on decoded dev sentences (their best hypotheses and texts) against their
    references, as validation's scores hold it; empty where none can be fitted."""
    fitted = fit_calibration([mean_log_prob(h) for h in hypotheses], sentence_chrf(texts, references, evaluation))
    return fitted.as_scores() if fitted is not None else {}


@dataclass
class QualityEstimator:
    """The quality of a run's translations: its checkpoint's calibration, else the uncalibrated geometric mean
    (said once, naming `checkpoint`)."""

    calibration: Calibration | None
    checkpoint: str
    _warned: bool = field(default=False, repr=False)

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def estimate(self, hypothesis: Hypothesis, utility: float | None = None, metric: str | None = None) -> float:
        """The estimated sentence chrF of `hypothesis`; `utility` and `metric` are MBR's expected utility of it and
        the metric it was measured with (chrF: the estimate itself)."""
        if utility is not None and metric == "chrf":
            return float(np.clip(utility, 0.0, 100.0))
        feature = mean_log_prob(hypothesis)
        if self.calibration is not None:
            return self.calibration.estimate(feature)
        if not self._warned:
            self._warned = True
            log.warning("%s holds no quality calibration (trained before it was fitted, or imported): quality is "
                        "100 x the geometric mean of the tokens' probabilities, uncalibrated", self.checkpoint)
        return 100.0 * math.exp(feature)
