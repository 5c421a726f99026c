"""One sentence's attention as data, without drawing it: what `nmt attention` draws, the server sends to the
page and a notebook shows. Kept free of plotting so that serving never loads matplotlib."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from nmt.config import ATTENTION_KINDS
from nmt.data.tokenizer import Tokenizer
from nmt.errors import ArgumentError
from nmt.inference.arguments import choice, integer, number, text
from nmt.inference.attention_stats import AttentionStats, attention_stats
from nmt.inference.translate import Translator
from nmt.inspect.words import shape_view
from nmt.runs.loading import LoadedRun
from nmt.tokens import BOS_ID, PAD_ID


@dataclass
class HeadSummary:
    """One head's focus over a sentence: mean entropy and mean largest weight of its rows."""

    layer: int  # 1-based
    head: int  # 1-based
    entropy: float
    max_weight: float


@dataclass
class AttentionView:
    """One sentence's translation and attention, ready to draw (`nmt attention`) or to serve (`nmt serve`)."""

    source: str
    translation: str
    kind: str  # cross, encoder or decoder
    layer: int  # 1-based
    head: int | None  # 1-based; None: the heads averaged (a single-head attention's one map)
    col_labels: list[str]  # what is attended to (source tokens; target inputs for decoder self-attention)
    row_labels: list[str]  # who attends (target outputs; source tokens for encoder self-attention)
    panels: list[tuple[str, np.ndarray]]  # (caption, weights): every head of the layer, or the one drawn
    weights: np.ndarray  # (rows, cols): the chosen head, or the heads' average
    stats: AttentionStats  # of `weights`
    heads: list[HeadSummary]  # every layer and head of the chosen kind
    words: bool = False  # merged into words (nmt.inspect.words): panels, weights, stats and heads alike
    eos: bool = True  # False: the EOS row and column left out, rows renormalized
    src_ids: list[int] = field(default_factory=list)  # the source as encoded, EOS included
    tgt_ids: list[int] = field(default_factory=list)  # the translation's tokens, EOS not included
    ended: bool = True  # the translation ended with EOS (False: it stopped at its length limit, without one)

    def with_head(self, head: int) -> AttentionView:
        """The same layer's view of one head (from a view of all its heads), without translating again."""
        caption, weights = self.panels[head - 1]
        return dataclasses.replace(self, head=head, panels=[(caption, weights)], weights=weights,
                                   stats=attention_stats(torch.from_numpy(weights), self.stats.threshold))


def map_labels(tokenizer: Tokenizer, kind: str, src_ids: Sequence[int], tgt_ids: Sequence[int], rows: int
               ) -> tuple[list[str], list[str]]:
    """Who attends and what is attended to in a `kind` map of a translation: target outputs (its tokens, then
    EOS, `rows` of them: EOS only when it ended with one) or source pieces; target inputs start with <s>."""
    src_labels = tokenizer.src_pieces(src_ids)
    tgt_labels = tokenizer.tgt_pieces(tgt_ids)
    tgt_out = (tgt_labels + ["</s>"])[:rows]
    return {"cross": (tgt_out, src_labels), "encoder": (src_labels, src_labels),
            "decoder": (tgt_out, ["<s>", *tgt_labels][:rows])}[kind]


def pick_kind(kinds: Collection[str], kind: object) -> str:
    """An attention kind the model has (`describe().kinds`)."""
    if kind in ATTENTION_KINDS and kind not in kinds:
        raise ArgumentError("kind", f"{kind}: this model has {' and '.join(kinds)} attention only")
    return choice(kind, "kind", tuple(kinds))


def pick(count: int, chosen: object, what: str) -> int | None:
    """A 1-based layer or head checked against what the model has; None stays None."""
    if chosen is None:
        return None
    found = integer(chosen, what, 1)
    if found > count:
        plural = "s" if count > 1 else ""
        raise ArgumentError(what, f"{found} is outside 1..{count}: the model has {count} {what}{plural}")
    return found


def _summaries(maps: torch.Tensor) -> list[HeadSummary]:
    """maps (layers, heads, rows, cols) -> one summary per layer and head."""
    found = []
    for layer in range(maps.shape[0]):
        for head in range(maps.shape[1]):
            summary = attention_stats(maps[layer, head]).summary()
            found.append(HeadSummary(layer + 1, head + 1, summary["entropy"][0], summary["max_weight"][0]))
    return found


def layer_views(loaded: LoadedRun, sentence: str, *, threshold: float = 0.1, beam_size: int | None = None,
                kind: str = "cross", translator: Translator | None = None, words: bool = False, eos: bool = True
                ) -> list[AttentionView]:
    """Translate one sentence once (beam size default: the run's) and collect where each token looked, teacher
    forced on the translation: one view per layer of the `kind` of attention (cross-, encoder self- or decoder
    self-attention, as the model has them: `describe().kinds`), each with every head and their average as
    `weights`. With `words` the maps are merged into words, without `eos` EOS is left out (`shape_view`);
    statistics are of that view."""
    model = loaded.model
    kind = pick_kind(model.describe().kinds, kind)
    threshold = number(threshold, "threshold", 0.0, 1.0)
    translation = (translator or Translator.for_run(loaded)).translate([text(sentence, "text")], beam_size)[0]
    best = translation.hypotheses[0]
    rows = best.attention.shape[0]  # one per generated position, EOS included when it ended with one
    row_labels, col_labels = map_labels(loaded.tokenizer, kind, translation.src_ids, best.tokens, rows)
    src = torch.tensor([translation.src_ids])
    tgt_in = torch.tensor([[BOS_ID, *best.tokens][:max(rows, 1)]])  # BOS at least: an empty translation has 0 rows
    maps = model.attention_maps(src, torch.tensor([src.shape[1]]), src != PAD_ID, tgt_in)[kind]
    maps = maps[:, 0, :, :len(row_labels), :len(col_labels)].float()  # (layers, heads, rows, cols)
    chosen, row_labels, col_labels = shape_view(maps, row_labels, col_labels, words, eos)
    heads = _summaries(chosen)
    views = []
    for layer, in_layer in enumerate(chosen, start=1):
        weights = in_layer.mean(dim=0)
        panels = [(f"{kind} layer {layer} head {h + 1}", in_layer[h].numpy()) for h in range(in_layer.shape[0])]
        views.append(AttentionView(sentence, translation.text, kind, layer, None, col_labels, row_labels, panels,
                                   weights.numpy(), attention_stats(weights, threshold), heads, words, eos,
                                   list(translation.src_ids), list(best.tokens), best.ended))
    return views


def attention_view(loaded: LoadedRun, sentence: str, *, threshold: float = 0.1, beam_size: int | None = None,
                   kind: str = "cross", layer: int | None = None, head: int | None = None,
                   translator: Translator | None = None, words: bool = False, eos: bool = True) -> AttentionView:
    """`layer_views`' view of `layer` (default the last) and `head` (default: all heads of that layer, and their
    average as `weights`)."""
    views = layer_views(loaded, sentence, threshold=threshold, beam_size=beam_size, kind=kind, translator=translator,
                        words=words, eos=eos)
    view = views[(pick(len(views), layer, "layer") or len(views)) - 1]
    head = pick(len(view.panels), head, "head")
    return view if head is None else view.with_head(head)
