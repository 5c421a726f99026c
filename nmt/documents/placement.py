"""Inline tags put back into a translation by word alignment, as Bergamot does for HTML: each tag pair goes
around the target words aligned to the source words it enclosed, each point (a self-closing tag, a comment)
next to the target word aligned to the source word it touches (else the one before it).

The word map (target words x source words, rows summing to 1) links each target word to its most attended
source word. A pair's target span runs from the first to the last target word linked into its source words;
when none is, each of its source words brings the target word that attends to it most. The tree is then kept
as the source had it: a pair widens to cover its children, and siblings, taken in target order (a translation
may reorder them), each start where the one before ends. So the output's tags are balanced and nested as in
the source whatever the alignment says.

Positions in the target are gaps: gap g is before target word g (g = number of words: the end)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nmt.documents.markup import Mark

_WORD = re.compile(r"\S+")


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each whitespace-separated word."""
    return [match.span() for match in _WORD.finditer(text)]


def diagonal_map(targets: int, sources: int) -> np.ndarray:
    """Target word j linked to the source word at the same relative place: what a tag falls back on when the
    model's map cannot be had (word counts that do not match the pieces)."""
    weights = np.zeros((targets, max(sources, 1)))
    for j in range(targets):
        weights[j, round(j * (sources - 1) / max(targets - 1, 1)) if sources > 1 else 0] = 1.0
    return weights[:, :sources]


def _words_between(spans: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    return [i for i, (a, b) in enumerate(spans) if a < end and b > start]


def _best_target(weights: np.ndarray, source: int) -> int:
    """The target word that attends most to a source word."""
    return int(weights[:, source].argmax())


def target_span(weights: np.ndarray, sources: Sequence[int]) -> tuple[int, int]:
    """Gaps (lo, hi) around the target words linked to `sources` (module docstring)."""
    if weights.shape[0] == 0 or not sources:
        return 0, 0
    linked = np.flatnonzero(np.isin(weights.argmax(axis=1), sources) & (weights.sum(axis=1) > 0))
    if linked.size == 0:
        linked = np.array([_best_target(weights, i) for i in sources])
    return int(linked.min()), int(linked.max()) + 1


def point_gap(weights: np.ndarray, spans: Sequence[tuple[int, int]], at: int) -> tuple[int, bool]:
    """The gap for something at source offset `at`, and whether it goes with the word after the gap: before
    the target word aligned to the source word it touches on its right (`ab <x/>cd`), else after the one
    aligned to the word before it, else before the one aligned to the first word."""
    if weights.shape[0] == 0 or not spans:
        return 0, True
    before = [i for i, (_, b) in enumerate(spans) if b <= at]
    after = next((i for i, (a, _) in enumerate(spans) if a >= at), None)
    touches_after = after is not None and spans[after][0] == at
    touches_before = bool(before) and spans[before[-1]][1] == at
    if after is not None and (not before or (touches_after and not touches_before)):
        return _best_target(weights, after), True
    inside = [i for i, (a, b) in enumerate(spans) if a < at < b]
    return _best_target(weights, (inside or before)[-1]) + 1, False


@dataclass
class Placement:
    gaps: list[tuple[int, int]]  # per mark: (open, close); a point's are equal
    order: list[int]  # the marks' indices as written: parents before their children, siblings in target order
    leading: set[int]  # points that go with the word after their gap (written just before it)


def place(marks: Sequence[Mark], weights: np.ndarray, src_spans: Sequence[tuple[int, int]]) -> Placement:
    """Where each mark goes in the target (module docstring). `marks` are in document order, each after its
    parent."""
    targets = weights.shape[0]
    wanted: list[list[int]] = []
    leading = set()
    for index, mark in enumerate(marks):
        sources = _words_between(src_spans, mark.start, mark.end)
        if mark.point or not sources:
            gap, before_word = point_gap(weights, src_spans, mark.start)
            wanted.append([gap, gap])
            if before_word:
                leading.add(index)
        else:
            wanted.append(list(target_span(weights, sources)))
    for index in range(len(marks) - 1, -1, -1):  # children (later in document order) before their parents
        parent = marks[index].parent
        if parent >= 0:
            wanted[parent][0] = min(wanted[parent][0], wanted[index][0])
            wanted[parent][1] = max(wanted[parent][1], wanted[index][1])
    children: dict[int, list[int]] = {}
    for index, mark in enumerate(marks):
        children.setdefault(mark.parent, []).append(index)
    placed: list[tuple[int, int]] = [(0, 0)] * len(marks)

    def assign(container: int, low: int, high: int) -> list[int]:
        """Place a container's children inside [low, high], in target order, each after the one before."""
        ordered = sorted(children.get(container, []), key=lambda i: (wanted[i][0], i))
        for index in ordered:
            lo = min(max(wanted[index][0], low), high)
            hi = min(max(wanted[index][1], lo), high)
            placed[index] = (lo, hi)
            low = hi
        return ordered

    order: list[int] = []
    stack = [iter(assign(-1, 0, targets))]
    while stack:
        index = next(stack[-1], -1)
        if index < 0:
            stack.pop()
            continue
        order.append(index)
        stack.append(iter(assign(index, *placed[index])))
    return Placement(placed, order, leading)


_TRAILING = ".,;:!?)]}»\"'…"


def write(target: str, marks: Sequence[Mark], placement: Placement, replacements: Sequence[tuple[int, int, str]],
          escape: Callable[[str], str], source: str = "") -> str:
    """The translation `target` with the marks written where `placement` puts them and `replacements` (start,
    end, raw: stand-ins and what they stand for) in place; text escaped, markup as it is. A closing tag goes
    before the punctuation that ends its last word unless its `source` text ended with punctuation too."""
    gaps = placement.gaps
    spans = word_spans(target)
    count = len(spans)

    def opening(gap: int) -> int:  # before word `gap`
        return spans[gap][0] if gap < count else len(target)

    def closing(gap: int) -> int:  # after word `gap - 1`
        return spans[gap - 1][1] if gap > 0 else 0

    out: list[str] = []
    cursor = 0
    pending = sorted(replacements)

    def text_to(position: int) -> None:
        nonlocal cursor, pending
        position = max(position, cursor)
        while pending and pending[0][0] < position:
            start, end, raw = pending.pop(0)
            out.append(escape(target[cursor:start]))
            out.append(raw)
            cursor = end
        out.append(escape(target[cursor:max(position, cursor)]))
        cursor = max(position, cursor)

    def before_punctuation(gap: int, mark: Mark) -> int:
        end = closing(gap)
        if gap == 0 or source[mark.start:mark.end].rstrip()[-1:] in tuple(_TRAILING):
            return end
        word = target[spans[gap - 1][0]:end]
        kept = len(word.rstrip(_TRAILING))
        return end - len(word) + kept if kept else end

    def close(index: int) -> None:
        lo, hi = gaps[index]
        text_to(before_punctuation(hi, marks[index]) if hi > lo else opening(hi))
        out.append(marks[index].close)

    stack: list[int] = []
    for index in placement.order:
        mark, lo = marks[index], gaps[index][0]
        while stack and stack[-1] != mark.parent:
            close(stack.pop())
        if mark.point:
            text_to(opening(lo) if index in placement.leading and not mark.spaced else closing(lo))
            out.append(mark.open if not mark.spaced else f" {mark.open}" if lo > 0 else f"{mark.open} ")
        else:
            text_to(opening(lo))
            out.append(mark.open)
            stack.append(index)
    while stack:
        close(stack.pop())
    text_to(len(target))
    return "".join(out)
