"""A segment cut into what the model translates at once (`Unit`): its sentences, by a sentence splitter for
the source language (sentencex), joined where an inline tag or a protected span would cross the cut, so that
each tag stays inside one translation. Protected spans and kept markup become stand-ins in the unit's text."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sentencex import segment as split_sentences

from nmt.documents.markup import Mark, Segment
from nmt.documents.spans import Protector, stand_in_pattern


@dataclass(frozen=True)
class StandIn:
    text: str  # the number the model reads in place of the span
    at: int  # its offset in the unit's source
    raw: str  # what is written in its place: the span's text escaped, or kept markup
    own: bool = False  # a number standing for itself (the model may also write it on its own)


@dataclass
class Unit:
    source: str  # what the model reads
    lead: str  # whitespace before it in the segment, copied
    trail: str  # and after it
    marks: list[Mark] = field(default_factory=list)  # offsets in `source`; parents indexed in this list
    stand_ins: list[StandIn] = field(default_factory=list)
    protected: int = 0  # protected spans and kept markup in it (with a stand-in or, past the stand-ins, a point)


@dataclass(frozen=True)
class _Keep:
    start: int
    end: int  # == start for kept markup, which takes no text
    raw: str
    own: bool = False  # a number the model can write: it stands for itself


def sentence_ends(text: str, lang: str) -> list[int]:
    """Offsets where the splitter's sentences end (the last is len(text))."""
    ends, position = [], 0
    for sentence in split_sentences(lang, text):
        found = text.find(sentence, position)
        if found < 0:  # the splitter changed the text: keep what was found
            break
        position = found + len(sentence)
        ends.append(position)
    if not ends or ends[-1] != len(text):
        ends.append(len(text))
    return ends


def _crossed(cut: int, marks: Sequence[Mark], keeps: Sequence[_Keep]) -> bool:
    return (any(not m.point and m.start < cut < m.end for m in marks)
            or any(k.start < cut < k.end for k in keeps))


class Splitter:
    """Cuts segments into units for one source language (sentences: `split` True; a text line is one unit)."""

    def __init__(self, lang: str, protector: Protector, pool: Sequence[str], escape: Callable[[str], str],
                 writable: Callable[[str], bool], split: bool = True):
        self.lang, self.protector, self.pool, self.escape = lang, protector, list(pool), escape
        self.writable, self.split = writable, split

    def units(self, segment: Segment) -> list[Unit]:
        text = segment.text
        spans = self.protector.find(text)
        keeps = sorted([_Keep(s.start, s.end, self.escape(text[s.start:s.end]),
                              s.kind == "number" and self.writable(text[s.start:s.end])) for s in spans]
                       + [_Keep(k.at, k.at, k.raw) for k in segment.kept], key=lambda k: (k.start, k.end))
        ends = sentence_ends(text, self.lang) if self.split else [len(text)]
        cuts = [0] + [end for end in ends[:-1] if not _crossed(end, segment.marks, keeps)] + [len(text)]
        units = []
        for start, end in zip(cuts, cuts[1:], strict=False):
            last = end == len(text)
            units.append(self._unit(text, start, end, last, segment.marks, keeps))
        return units

    def _unit(self, text: str, start: int, end: int, last: bool, marks: Sequence[Mark], keeps: Sequence[_Keep]
              ) -> Unit:
        piece = text[start:end]
        mine = [k for k in keeps if start <= k.start and k.end <= end and (k.start < end or last)]
        # the text without the whitespace around it, but with any kept markup that stands in that whitespace
        core_start = min([start + len(piece) - len(piece.lstrip()), *(k.start for k in mine)])
        core_end = max([core_start, start + len(piece.rstrip()), *(k.end for k in mine)])
        free = [n for n in self.pool if not stand_in_pattern(n).search(text[core_start:core_end])]
        source, offsets, shifted = [], [core_start], [0]  # breakpoints: text offsets and their source offsets
        stand_ins, points = [], []
        position = core_start
        for keep in mine:
            source.append(text[position:keep.start])
            if keep.own:
                stand_ins.append(StandIn(text[keep.start:keep.end], sum(map(len, source)), keep.raw, own=True))
                source.append(text[keep.start:keep.end])
            elif free:
                before = "" if not source[-1] or source[-1][-1].isspace() else " "
                after_text = text[keep.end:core_end]
                after = "" if not after_text or after_text[0].isspace() else " "
                number = free.pop(0)
                at = sum(map(len, source)) + len(before)
                source.append(f"{before}{number}{after}")
                stand_ins.append(StandIn(number, at, keep.raw))
            else:  # no stand-in left: the span is written by alignment, as a tag is
                points.append((sum(map(len, source)), keep.raw))
            offsets.append(keep.end)
            shifted.append(sum(map(len, source)))
            position = keep.end
        source.append(text[position:core_end])
        joined = "".join(source)

        def to_source(offset: int) -> int:
            """A text offset in the unit's source; offsets inside a replaced span fall on its stand-in."""
            offset = min(max(offset, core_start), core_end)
            k = bisect.bisect_right(offsets, offset) - 1
            if k < len(mine) and offset > mine[k].start:
                offset = mine[k].start
            return min(shifted[k] + offset - offsets[k], len(joined))

        inside = [i for i, m in enumerate(marks) if start <= m.start < end or (last and m.start == end)]
        index = {old: new for new, old in enumerate(inside)}
        unit_marks = [Mark(m.open, m.close, to_source(m.start), to_source(m.end), index.get(m.parent, -1), m.point)
                      for m in (marks[i] for i in inside)]
        for at, raw in points:
            _insert_point(unit_marks, at, raw)
        return Unit(joined, text[start:core_start], text[core_end:end], unit_marks, stand_ins, len(mine))


def _insert_point(marks: list[Mark], at: int, raw: str) -> None:
    """A point at source offset `at`, in document order, inside the innermost pair around it."""
    place = next((i for i, m in enumerate(marks) if m.start > at), len(marks))
    parent = max((i for i, m in enumerate(marks[:place]) if not m.point and m.start <= at < m.end), default=-1)
    for m in marks[place:]:
        if m.parent >= place:
            m.parent += 1
    marks.insert(place, Mark(raw, "", at, at, parent, True, spaced=True))
