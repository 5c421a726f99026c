"""Translate documents: items read from HTML, XML or text (nmt.documents.markup) in, the same document out
with each segment's text translated, its inline tags placed by word alignment (nmt.documents.placement) and
its protected spans restored (nmt.documents.spans).

Segments are translated in batches of units (sentences), so a document streams through in bounded memory and
its sentences still decode together. The word map that places tags is the one the run aligns by: its guided
head when it was trained with guided alignment, else the last layer's heads averaged (as `nmt align`), from
one teacher-forced pass over the units that need it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nmt.documents.markup import FORMATS, Item, Segment, escape_text, read_items
from nmt.documents.placement import diagonal_map, place, point_gap, word_spans, write
from nmt.documents.spans import Protector, copyable, stand_in_pattern, stand_ins
from nmt.documents.units import Splitter, StandIn, Unit
from nmt.errors import ArgumentError
from nmt.inference.ensemble import load_models
from nmt.inference.steer import Glossary, steer_lines
from nmt.inference.translate import Translation, Translator
from nmt.inspect.aligner import forced_cross_maps
from nmt.inspect.view import pick
from nmt.inspect.words import EOS, shape_view
from nmt.runs.loading import DecodingRun, LoadedRun

log = logging.getLogger(__name__)

UNITS_PER_BATCH = 256
"""Units decoded together: enough to fill decoding batches (64 made a document up to 1.6x slower than its plain
text, BENCHMARKS.md), few enough that a document of any size streams through in bounded memory."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ArgumentError("format", f"{fmt!r}: choose one of {', '.join(FORMATS)}")
    return fmt


def alignment_choice(loaded: DecodingRun, layer: int | None = None, head: int | None = None
                     ) -> tuple[int, int | None]:
    """(layer, head) of the map a run aligns words by: the one asked for (as `nmt align --layer --head`; `nmt
    align --choose-head-on` finds the best on gold links), else its guided head, else the last layer's heads
    averaged (head None)."""
    config = loaded.config
    layers, heads = config.model.attention_shape
    if layer is not None or head is not None:
        if not isinstance(loaded, LoadedRun):
            raise ArgumentError("align_layer", "an ensemble or an ONNX export aligns by the attention its search "
                                               "returns: leave out the layer and head")
        return pick(layers, layer, "layer") or layers, pick(heads, head, "head")
    if config.training.guided_alignment is not None:
        return config.guided_layer, config.training.guided_alignment.head
    return layers, None


@dataclass
class DocumentStats:
    """What a document's translation did, for the closing log line and the benchmark."""

    segments: int = 0
    units: int = 0
    tags: int = 0
    protected: int = 0
    restored_by_alignment: int = 0  # stand-ins the search could not fit (the length limit), put back by alignment
    duplicates_removed: int = 0  # stand-ins written more often than they stood: the copies after the first


class DocumentTranslator:
    """One run's translator for documents of one format (FORMATS); see the module docstring."""

    def __init__(self, loaded: DecodingRun, fmt: str = "html", protect: bool = True, beam_size: int | None = None,
                 glossary: Glossary | None = None, no_repeat_ngram_size: int | None = None,
                 repetition_penalty: float | None = None, length_penalty: float | None = None,
                 align_layer: int | None = None, align_head: int | None = None):
        self.loaded, self.fmt = loaded, check_format(fmt)
        self.translator = Translator.for_run(loaded)
        protector = Protector(loaded.config.decoding.protect, builtin=protect)
        self.escape = escape_text if fmt != "text" else str
        pool = stand_ins(loaded.tokenizer) if protector.active else ()
        self.splitter = Splitter(loaded.config.data.src_lang, protector, pool, self.escape,
                                 lambda text: copyable(loaded.tokenizer, text) is not None, split=fmt != "text")
        self.beam_size, self.length_penalty = beam_size, length_penalty
        self.no_repeat_ngram_size, self.repetition_penalty = no_repeat_ngram_size, repetition_penalty
        self.glossary = glossary
        self.layer, self.head = alignment_choice(loaded, align_layer, align_head)
        self.stats = DocumentStats()

    def translate_items(self, items: Iterable[Item]) -> Iterator[str]:
        """The document's output, piece by piece, in order: copied items as they are, segments translated in
        batches of about UNITS_PER_BATCH units."""
        waiting: list[Item] = []
        units: list[list[Unit]] = []
        count = 0
        for item in items:
            if isinstance(item, Segment):
                cut = self.splitter.units(item)
                units.append(cut)
                count += len(cut)
            waiting.append(item)
            if count >= UNITS_PER_BATCH:
                yield from self._flush(waiting, units)
                waiting, units, count = [], [], 0
        yield from self._flush(waiting, units)

    def translate(self, document: str) -> str:
        """A whole document held in memory (the API and the server): its translation."""
        return "".join(self.translate_items(read_items([document], self.fmt)))

    def _flush(self, waiting: Sequence[Item], units: Sequence[list[Unit]]) -> Iterator[str]:
        written = iter(self._translate_segments(units)) if units else iter(())
        for item in waiting:
            yield next(written) if isinstance(item, Segment) else item

    def _translate_segments(self, segments: Sequence[list[Unit]]) -> list[str]:
        flat = [unit for units in segments for unit in units]
        found = self._translate_units(flat)
        needs = [i for i, (unit, t) in enumerate(zip(flat, found, strict=True)) if t.hypotheses[0].tokens and (
            unit.marks or _unwritten(unit, t.text))]
        maps = dict(zip(needs, self._word_maps([found[i] for i in needs]), strict=True))
        written = [self._write(unit, t, maps.get(i)) for i, (unit, t) in enumerate(zip(flat, found, strict=True))]
        self.stats.segments += len(segments)
        self.stats.units += len(flat)
        out, position = [], 0
        for units in segments:
            out.append("".join(written[position:position + len(units)]))
            position += len(units)
        return out

    def _translate_units(self, units: Sequence[Unit]) -> list[Translation]:
        """Each unit translated; those with stand-ins apart, constrained to write each at least once (a batch
        holding one constrained sentence would take the slower constrained search for all of them)."""
        found: list[Translation | None] = [None] * len(units)
        for constrained in (False, True):
            chosen = [i for i, unit in enumerate(units) if bool(unit.stand_ins) == constrained]
            if not chosen:
                continue
            sources = [units[i].source for i in chosen]
            phrases = [list(dict.fromkeys(s.text for s in units[i].stand_ins)) for i in chosen]
            steers = steer_lines(sources, constraints=phrases if constrained else None, glossary=self.glossary)
            done = self.translator.translate(sources, self.beam_size, 1, self.length_penalty, steers=steers,
                                             no_repeat_ngram_size=self.no_repeat_ngram_size,
                                             repetition_penalty=self.repetition_penalty)
            for i, translation in zip(chosen, done, strict=True):
                found[i] = translation
        return [t for t in found if t is not None]

    def _word_maps(self, found: Sequence[Translation]) -> list[np.ndarray | None]:
        """Per translation, its word map (target words x source words, EOS left out) from the map the run
        aligns by; None where the pieces' words are not the texts' whitespace words."""
        if not found:
            return []
        tokenizer = self.loaded.tokenizer
        if isinstance(self.loaded, LoadedRun):
            piece_maps = forced_cross_maps(self.loaded, [t.src_ids for t in found],
                                           [t.hypotheses[0].tokens for t in found],
                                           [t.hypotheses[0].ended for t in found])
            chosen = [m[self.layer - 1].mean(0) if self.head is None else m[self.layer - 1, self.head - 1]
                      for m in piece_maps]
        else:  # an ensemble or an ONNX export: the attention the search returned
            chosen = [t.hypotheses[0].attention.float() for t in found]
        maps: list[np.ndarray | None] = []
        for t, weights in zip(found, chosen, strict=True):
            tgt_pieces = [*tokenizer.tgt_pieces(t.hypotheses[0].tokens), EOS][:weights.shape[0]]
            shaped, rows, cols = shape_view(weights, tgt_pieces, tokenizer.src_pieces(t.src_ids), words=True,
                                            eos=False)
            fits = len(rows) == len(word_spans(t.text)) and len(cols) == len(t.source.split())
            maps.append(shaped.numpy() if fits else None)
        return maps

    def _write(self, unit: Unit, found: Translation, weights: np.ndarray | None) -> str:
        """A unit's output: its translation with stand-ins restored, its marks placed, surrounded by the unit's
        own whitespace."""
        src_spans = word_spans(unit.source)
        if weights is None:
            weights = diagonal_map(len(word_spans(found.text)), len(src_spans))
        target, weights, replacements = self._restore(unit, found.text, weights, src_spans)
        self.stats.protected += unit.protected
        self.stats.tags += len(unit.marks) - unit.protected + len(unit.stand_ins)
        return unit.lead + write(target, unit.marks, place(unit.marks, weights, src_spans), replacements,
                                 self.escape, unit.source) + unit.trail

    def _restore(self, unit: Unit, target: str, weights: np.ndarray, src_spans: Sequence[tuple[int, int]]
                 ) -> tuple[str, np.ndarray, list[tuple[int, int, str]]]:
        """The translation with every stand-in in it (one the search could not fit inserted by alignment, its
        row added to the word map) and the replacements that write each one's span in its place (and drop the
        extra copies of a stand-in the model wrote more often than it stood)."""
        for stand_in in _unwritten(unit, target):
            gap = point_gap(weights, src_spans, stand_in.at + 1)[0]
            target, weights = _insert(target, weights, stand_in.text, gap, src_spans, stand_in.at)
            self.stats.restored_by_alignment += 1
        replacements: list[tuple[int, int, str]] = []
        taken: dict[str, int] = {}
        for stand_in in unit.stand_ins:  # the k-th stand-in of a text takes the k-th place it is written
            matches = list(stand_in_pattern(stand_in.text).finditer(target))
            k = taken[stand_in.text] = taken.get(stand_in.text, -1) + 1
            if k < len(matches):
                replacements.append((*matches[k].span(), stand_in.raw))
        own = {stand_in.text for stand_in in unit.stand_ins if stand_in.own}
        for text, k in taken.items():
            if text not in own:  # a number standing for itself may also be the model's own: kept
                extra = list(stand_in_pattern(text).finditer(target))[k + 1:]
                replacements += [(m.start() - (m.start() > 0 and target[m.start() - 1] == " "), m.end(), "")
                                 for m in extra]  # with the space before it
                self.stats.duplicates_removed += len(extra)
        return target, weights, replacements


def _unwritten(unit: Unit, target: str) -> list[StandIn]:
    """The stand-ins the translation lacks: the k-th of a text when it is written fewer than k times."""
    seen: dict[str, int] = {}
    missing = []
    for stand_in in unit.stand_ins:
        seen[stand_in.text] = seen.get(stand_in.text, 0) + 1
        if len(stand_in_pattern(stand_in.text).findall(target)) < seen[stand_in.text]:
            missing.append(stand_in)
    return missing


def _insert(target: str, weights: np.ndarray, stand_in: str, gap: int, src_spans: Sequence[tuple[int, int]],
            at: int) -> tuple[str, np.ndarray]:
    """The translation with a dropped stand-in written at `gap` as a word of its own, and the word map with a
    row for it, linked to the source word it stood for."""
    spans = word_spans(target)
    if gap < len(spans):
        cut = spans[gap][0]
        target = f"{target[:cut]}{stand_in} {target[cut:]}"
    else:
        target = f"{target} {stand_in}" if target else stand_in
    row = np.zeros((1, weights.shape[1]))
    source = next((i for i, (a, b) in enumerate(src_spans) if a <= at < b), None)
    if source is not None and weights.shape[1]:
        row[0, source] = 1.0
    return target, np.concatenate([weights[:gap], row, weights[gap:]])


def translate_document(loaded: DecodingRun, chunks: Iterable[str], fmt: str, name: str = "<input>",
                       **options: Any) -> tuple[Iterator[str], DocumentStats]:
    """A document's translation as an iterator of output pieces (written as they come), and the statistics
    it fills as it goes; `options` are DocumentTranslator's."""
    translator = DocumentTranslator(loaded, fmt, **options)
    return translator.translate_items(read_items(chunks, check_format(fmt), name)), translator.stats


def read_chunks(path: Path, fmt: str, size: int = 1 << 16) -> Iterator[str]:
    """A UTF-8 file (its BOM dropped) as `read_items` takes it: whole lines for text, else chunks of `size`
    characters: bounded memory for a document of any size."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        if fmt == "text":
            yield from handle
        else:
            while chunk := handle.read(size):
                yield chunk


def translate_documents(run_dirs: Path | Sequence[Path], chunks: Iterable[str], fmt: str,
                        write: Callable[[str], object], name: str = "<input>", *, checkpoint: str = "best",
                        overrides: Sequence[str] = (), quantize: str | None = None, runtime: str = "torch",
                        protect: bool | None = None, **options: Any) -> DocumentStats:
    """`nmt translate --format`: a document read from `chunks` translated with one run (or an ensemble) and
    passed to `write` piece by piece; `protect` defaults to on for html and xml, off for text. The statistics
    are returned and logged."""
    loaded = load_models(run_dirs, checkpoint, overrides, quantize=quantize, runtime=runtime)
    pieces, stats = translate_document(loaded, chunks, fmt, name, protect=fmt != "text" if protect is None
                                       else protect, **options)
    for piece in pieces:
        write(piece)
    if stats.restored_by_alignment:
        log.warning("%d of %d protected spans did not fit in their translation (the length limit): each was put "
                    "next to the word aligned to it", stats.restored_by_alignment, stats.protected)
    if stats.duplicates_removed:
        log.info("%d extra copies of stand-ins the model wrote were removed", stats.duplicates_removed)
    return stats
