"""Word alignments as links, read and written in Pharaoh format, extracted from a word-level attention map and
scored against gold links with precision, recall and the alignment error rate of Och & Ney (2003).

A link `i-j` joins source word i and target word j (0-based, whitespace-separated words). Gold files mark sure
links `i-j` and possible links `i?j`; every sure link is also possible (S within P). For predicted links A:
precision = |A & P| / |A|, recall = |A & S| / |S|, AER = 1 - (|A & S| + |A & P|) / (|A| + |S|),
summed over the corpus before dividing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmt.errors import DataError

Link = tuple[int, int]  # (source word, target word), 0-based


@dataclass(frozen=True)
class GoldLinks:
    """One sentence pair's gold alignment: `possible` holds the sure links too."""

    sure: frozenset[Link]
    possible: frozenset[Link]


def parse_links(line: str, where: str) -> GoldLinks:
    """`0-0 1-2 2?2` -> sure {(0, 0), (1, 2)}, possible {(0, 0), (1, 2), (2, 2)}; `where` names the line in
    errors (file:line)."""
    sure, possible = set(), set()
    for token in line.split():
        mark = "-" if "-" in token else "?"
        source, sep, target = token.partition(mark)
        if not (sep and source.isdigit() and target.isdigit()):
            raise DataError(f"{where}: {token!r} is no link: write source-target (sure) or source?target (possible), "
                            "0-based word indices, e.g. 0-0 1?2")
        link = (int(source), int(target))
        possible.add(link)
        if mark == "-":
            sure.add(link)
    return GoldLinks(frozenset(sure), frozenset(possible))


def read_links(path: Path) -> list[GoldLinks]:
    """A Pharaoh file, one line per sentence pair (an empty line: no links)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the alignments ({err})") from None
    return [parse_links(line, f"{path}:{number}") for number, line in enumerate(lines, start=1)]


def check_links(gold: GoldLinks, source_words: int, target_words: int, where: str) -> None:
    """Refuse a gold link outside the sentence pair it belongs to (the files are likely misaligned)."""
    for i, j in sorted(gold.possible):
        if i >= source_words or j >= target_words:
            raise DataError(f"{where}: link {i}-{j} is outside the pair's {source_words} source and {target_words} "
                            "target words")


def format_links(links: Iterable[Link]) -> str:
    """Pharaoh format, sorted by source then target word: `0-0 1-2`."""
    return " ".join(f"{i}-{j}" for i, j in sorted(links))


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
