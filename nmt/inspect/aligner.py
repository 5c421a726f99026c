"""Word alignments from a trained run's cross-attention (`nmt align`): every layer's and head's map, teacher
forced on a given translation (forced decoding) or on the model's own, merged into words with EOS left out
(nmt.inspect.words), then links extracted from one head, a layer's heads averaged, or the head that aligns a
gold set best, and scored per layer and head (nmt.inspect.alignment).

With an attribution method, the gradient attribution of each target word over the source words
(nmt.inspect.attribution) is shaped the same way: its links are scored beside the heads', and each head's
rank correlation with it says how far that head's weights explain the output (attention as explanation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from nmt.config import MAX_POSITIONS_SETTING
from nmt.data.batching import collate
from nmt.data.corpus import has_content, normalize, read_lines
from nmt.data.links import GoldLinks, Link, check_links, read_links
from nmt.data.tokenizer import WORD_START
from nmt.errors import ConfigError, DataError
from nmt.inference.translate import Translator
from nmt.inspect.alignment import AlignmentScore, extract_links, score_links
from nmt.inspect.attribution import attribute, mean_defined, spearman_rows
from nmt.inspect.view import pick
from nmt.inspect.words import EOS, shape_view
from nmt.runs.loading import LoadedRun, load_model


@dataclass
class WordMaps:
    """One sentence pair's cross-attention between words, EOS left out, rows summing to 1."""

    source_words: list[str]
    target_words: list[str]
    maps: np.ndarray  # (layers, heads, target words, source words)
    attribution: np.ndarray | None = None  # (target words, source words), rows summing to 1, when asked for


def forced_cross_maps(loaded: LoadedRun, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
                      ended: Sequence[bool], batch_size: int = 32) -> list[torch.Tensor]:
    """Per pair (layers, heads, T + 1, S): cross-attention teacher forced on `tgt_ids` (without BOS or EOS; the
    last row is EOS's), over the source as encoded (EOS included); (layers, heads, T, S) for a translation that
    did not end with EOS (`ended` False: it stopped at its length limit): its EOS is not forced, so it needs no
    position past the model's max_positions."""
    # a translation that did not end: BOS and its first T - 1 tokens are the inputs of its T rows
    tgt_ids = [tgt if done else tgt[:-1] for tgt, done in zip(tgt_ids, ended, strict=True)]
    model = loaded.model
    found: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(src_ids), batch_size):
            chunk = slice(start, start + batch_size)
            batch = collate(src_ids[chunk], tgt_ids[chunk], np.arange(len(src_ids[chunk])))
            assert batch.tgt_in is not None
            maps = model.attention_maps(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in)["cross"]
            for row, (src, tgt) in enumerate(zip(src_ids[chunk], tgt_ids[chunk], strict=True)):
                found.append(maps[:, row, :, :len(tgt) + 1, :len(src)].float())
    return found


def _words(text: str, pieces: list[str], what: str, number: int) -> None:
    """The word map's words must be the text's whitespace-separated words, or gold indices would shift."""
    count = sum(1 for piece in pieces if piece.startswith(WORD_START))
    if count != len(text.split()):
        raise DataError(f"{what} line {number}: {len(text.split())} words but the tokenizer starts {count} "
                        "(write words separated by single spaces)")


def word_maps(loaded: LoadedRun, sources: Sequence[str], targets: Sequence[str] | None = None,
              beam_size: int | None = None, attribution: str | None = None) -> list[WordMaps]:
    """Every pair's word-level cross-attention of every layer and head: teacher forced on `targets` when given
    (forced decoding), else on the model's own translations (beam size default: the run's); with an
    `attribution` method, the word-level attribution too."""
    tokenizer, clean = loaded.tokenizer, loaded.config.data.clean
    translator = Translator.for_run(loaded)
    cleaned = [normalize(line, clean) for line in sources]
    for number, line in enumerate(cleaned, start=1):
        if not has_content(line):
            raise DataError(f"--src line {number} is empty: every pair needs words to align")
    src_ids = translator.encode(cleaned)
    if targets is None:
        best = [t.hypotheses[0] for t in translator.translate(sources, beam_size)]
        tgt_ids, ended = [h.tokens for h in best], [h.ended for h in best]
    else:
        if len(targets) != len(sources):
            raise DataError(f"--src has {len(sources)} lines but --tgt {len(targets)}")
        tgt_text = [normalize(line, clean) for line in targets]
        tgt_ids = tokenizer.encode_tgt(tgt_text)
        limit = loaded.model.max_positions
        for number, (line, ids) in enumerate(zip(tgt_text, tgt_ids, strict=True), start=1):
            _words(line, tokenizer.tgt_pieces(ids), "--tgt", number)
            if limit is not None and len(ids) + 1 > limit:
                raise DataError(f"--tgt line {number} has {len(ids)} subword tokens; the model reads at most "
                                f"{limit - 1} ({MAX_POSITIONS_SETTING})")
        ended = [True] * len(tgt_ids)  # each forced with its EOS
    found = []
    maps_of = forced_cross_maps(loaded, src_ids, tgt_ids, ended)
    for number, (line, src, tgt, done, maps) in enumerate(zip(cleaned, src_ids, tgt_ids, ended, maps_of, strict=True),
                                                          start=1):
        src_pieces = tokenizer.src_pieces(src)
        _words(line, src_pieces, "--src", number)
        tgt_pieces = [*tokenizer.tgt_pieces(tgt), EOS][:maps.shape[-2]]  # EOS when the translation ended
        shaped, rows, cols = shape_view(maps, tgt_pieces, src_pieces, words=True, eos=False)
        relevance = None
        if attribution is not None:  # every line of a file, as asked: no bound per sentence
            forced = attribute(loaded, src, tgt, attribution, ended=done, max_cost=None)
            relevance = shape_view(forced, tgt_pieces, src_pieces, words=True, eos=False)[0].numpy()
        found.append(WordMaps(cols, rows, shaped.numpy(), relevance))
    return found


def select_map(pair: WordMaps, layer: int | None = None, head: int | None = None) -> np.ndarray:
    """(target words, source words): one head of a layer, or the layer's heads averaged (head None); the
    layer defaults to the last."""
    layers, heads = pair.maps.shape[:2]
    chosen = pick(layers, layer, "layer") or layers
    head = pick(heads, head, "head")
    in_layer = pair.maps[chosen - 1]
    return in_layer.mean(axis=0) if head is None else in_layer[head - 1]


def links_of(pairs: Sequence[WordMaps], layer: int | None = None, head: int | None = None,
             threshold: float | None = None) -> list[set[Link]]:
    """Every pair's links from the same map choice and extraction rule (`select_map`, `extract_links`)."""
    return [extract_links(select_map(pair, layer, head), threshold) for pair in pairs]


@dataclass
class HeadScore:
    layer: int
    head: int | None  # None: the layer's heads averaged
    score: AlignmentScore
    spearman: float | None = None  # with an attribution: the mean rank correlation of the map's rows with it


def check_gold(pairs: Sequence[WordMaps], gold: Sequence[GoldLinks], name: str) -> None:
    """One line of gold links per pair, each link inside its pair: a shifted or short file fails loudly."""
    if len(gold) != len(pairs):
        raise DataError(f"{name}: {len(gold)} lines of links for {len(pairs)} sentence pairs")
    for number, (pair, links) in enumerate(zip(pairs, gold, strict=True), start=1):
        check_links(links.possible, len(pair.source_words), len(pair.target_words), f"{name}:{number}")


def mean_spearman(pairs: Sequence[WordMaps], layer: int, head: int | None) -> float | None:
    """The mean over every pair's rows of the rank correlation between a map and the attribution (rows where
    either is constant left out); None without attributions."""
    rows: list[float] = []
    for pair in pairs:
        if pair.attribution is None:
            return None
        rows += spearman_rows(select_map(pair, layer, head), pair.attribution)
    return mean_defined(rows)


def score_heads(pairs: Sequence[WordMaps], gold: Sequence[GoldLinks], threshold: float | None = None
                ) -> list[HeadScore]:
    """Precision, recall and AER of every layer's heads, each alone and averaged: which heads align; with
    attributions, how well each map ranks the source words as the attribution does."""
    layers, heads = pairs[0].maps.shape[:2]
    return [HeadScore(layer, head, score_links(links_of(pairs, layer, head, threshold), gold),
                      mean_spearman(pairs, layer, head))
            for layer in range(1, layers + 1) for head in [*range(1, heads + 1), None]]


def choose_head(table: Sequence[HeadScore]) -> HeadScore:
    """The single head (or, for a one-head model, the map) with the lowest AER; the first on ties."""
    singles = [row for row in table if row.head is not None] or list(table)
    return min(singles, key=lambda row: row.score.aer)


@dataclass
class Alignment:
    links: list[set[Link]]  # per pair, in input order
    layer: int
    head: int | None  # None: the layer's heads averaged
    chosen: HeadScore | None  # with --choose-head-on: the head picked and its score there
    table: list[HeadScore]  # with --gold: every layer and head
    score: AlignmentScore | None  # with --gold: the links written
    by_attribution: str | None = None  # the attribution method the links come from; None: attention


def align_files(run_dir: Path, src_file: Path, tgt_file: Path | None = None, *, layer: int | None = None,
                head: int | None = None, threshold: float | None = None, gold_file: Path | None = None,
                choose_on: Path | None = None, beam_size: int | None = None, checkpoint: str = "best",
                overrides: Sequence[str] = (), attribution: str | None = None) -> Alignment:
    """`nmt align`: word alignments of each line of `src_file` with the same line of `tgt_file` (forced
    decoding) or with the model's translation, from one head, a layer's heads averaged (no head), the head
    with the lowest AER against the links in `choose_on`, or the gradient attribution (an `attribution`
    method); with `gold_file`, scored overall and per head (and each head against the attribution)."""
    if (gold_file or choose_on) and tgt_file is None:
        raise ConfigError("--gold and --choose-head-on score links against given translations: add --tgt FILE")
    if choose_on and (layer is not None or head is not None):
        raise ConfigError("--choose-head-on picks the layer and head: leave out --layer and --head")
    if attribution is not None and (choose_on or layer is not None or head is not None):
        raise ConfigError("--attribution aligns by gradient attribution, not by a head: leave out --layer, --head "
                          "and --choose-head-on")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ConfigError(f"--threshold {threshold}: give a weight in (0, 1]")
    sources = list(read_lines(src_file))
    if not sources:
        raise DataError(f"--src {src_file}: no lines to align")
    gold = read_links(gold_file, len(sources)) if gold_file else None  # a line per pair, read no further
    choice = read_links(choose_on, len(sources)) if choose_on else None
    targets = list(read_lines(tgt_file)) if tgt_file else None
    pairs = word_maps(load_model(run_dir, checkpoint, overrides), sources, targets, beam_size, attribution)
    chosen = None
    if choice is not None and choose_on is not None:
        check_gold(pairs, choice, str(choose_on))
        chosen = choose_head(score_heads(pairs, choice, threshold))
        layer, head = chosen.layer, chosen.head
    if attribution is None:
        links = links_of(pairs, layer, head, threshold)
    else:
        links = [extract_links(cast(np.ndarray, pair.attribution), threshold) for pair in pairs]
    table: list[HeadScore] = []
    score = None
    if gold is not None and gold_file is not None:
        check_gold(pairs, gold, str(gold_file))
        table = score_heads(pairs, gold, threshold)
        score = score_links(links, gold)
    return Alignment(links, layer or pairs[0].maps.shape[0], head, chosen, table, score, attribution)
