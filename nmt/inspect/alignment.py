"""Word alignments extracted from a word-level attention map, and scored against gold links (nmt.data.links)
with precision, recall and the alignment error rate of Och & Ney (2003).

Gold links are sure (`i-j`) or possible (`i?j`); every sure link is also possible (S within P). For predicted
links A:
precision = |A & P| / |A|, recall = |A & S| / |S|, AER = 1 - (|A & S| + |A & P|) / (|A| + |S|),
summed over the corpus before dividing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nmt.data.links import GoldLinks, Link
from nmt.errors import DataError


def extract_links(weights: np.ndarray, threshold: float | None = None) -> set[Link]:
    """Links from a word map (target words x source words, rows summing to 1): each target word's most
    attended source word (argmax), or with `threshold` every source word that gets at least that weight. A row
    of zeros (a word that attended only to the EOS left out) links nothing."""
    if weights.size == 0:
        return set()
    if threshold is None:
        return {(int(i), j) for j, i in enumerate(weights.argmax(-1)) if weights[j].sum() > 0}
    return {(int(i), int(j)) for j, i in zip(*np.nonzero((weights >= threshold) & (weights > 0)), strict=True)}


@dataclass
class AlignmentScore:
    precision: float
    recall: float
    aer: float
    links: int  # |A|, predicted


def score_links(predicted: Sequence[set[Link]], gold: Sequence[GoldLinks]) -> AlignmentScore:
    """Precision, recall and AER of predicted links over a corpus (module docstring)."""
    if len(predicted) != len(gold):
        raise DataError(f"{len(predicted)} predicted alignments for {len(gold)} gold ones")
    found = sure = hit_sure = hit_possible = 0
    for links, truth in zip(predicted, gold, strict=True):
        found += len(links)
        sure += len(truth.sure)
        hit_sure += len(links & truth.sure)
        hit_possible += len(links & truth.possible)
    return AlignmentScore(hit_possible / found if found else 0.0, hit_sure / sure if sure else 0.0,
                          1.0 - (hit_sure + hit_possible) / (found + sure) if found + sure else 0.0, found)
