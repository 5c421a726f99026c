"""`nmt attention`: one sentence's attention drawn as a heatmap (one map, or a grid of a layer's heads) in PNG
and HTML, with gradient attribution beside it when asked for."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nmt.config import MAX_ATTRIBUTION_COST
from nmt.inspect.attribution import AttributionView, attribution_view
from nmt.inspect.plots import heads_figure, heatmap_html, heatmap_png, save_figure
from nmt.inspect.view import AttentionView, attention_view
from nmt.runs.loading import load_model


@dataclass
class SentenceAttention(AttentionView):
    png: Path = field(kw_only=True)
    html: Path = field(kw_only=True)
    attribution: AttributionView | None = None  # with --attribution: beside the attention in `attribution_png`
    attribution_png: Path | None = None


def file_stem(sentence: str) -> str:
    """A readable, unique file name for a sentence's heatmap: a slug of its start and a hash of all of it."""
    slug = re.sub(r"[^\w]+", "_", sentence.strip())[:40].strip("_") or "sentence"
    return f"{slug}-{hashlib.sha1(sentence.encode()).hexdigest()[:8]}"


def inspect_sentence(run_dir: Path, sentence: str, *, threshold: float = 0.1, beam_size: int | None = None,
                     checkpoint: str = "best", out_dir: Path | None = None, overrides: Sequence[str] = (),
                     kind: str = "cross", layer: int | None = None, head: int | None = None, words: bool = False,
                     eos: bool = True, attribution: str | None = None, steps: int = 32,
                     max_cost: int | None = MAX_ATTRIBUTION_COST) -> SentenceAttention:
    """`attention_view` of a trained run (merged into words, without EOS, as asked), drawn as a heatmap (one
    head, or a grid of all heads) in PNG and HTML under `out_dir` (default RUN_DIR/attention); with
    `attribution` (a method of nmt.inspect.attribution, refused above `max_cost`), the attribution beside the
    attention in one more PNG."""
    loaded = load_model(run_dir, checkpoint, overrides)
    view = attention_view(loaded, sentence, threshold=threshold, beam_size=beam_size, kind=kind, layer=layer,
                          head=head, words=words, eos=eos)
    explained = attribution_view(loaded, view, attribution, steps, max_cost) if attribution else None
    title = f"{sentence} -> {view.translation}"
    several = len(view.heads) > 1 or kind != "cross"  # a choice was made: the file says which map it holds
    suffix = f".{view.kind}-layer{view.layer}" + (f"-head{view.head}" if view.head else "") if several else ""
    suffix += (".words" if words else "") + ("" if eos else ".no-eos")
    stem = f"{(out_dir or loaded.run.attention_dir) / file_stem(sentence)}{suffix}"
    if len(view.panels) == 1:
        png = heatmap_png(view.panels[0][1], view.col_labels, view.row_labels, Path(f"{stem}.png"), title)
    else:
        png = save_figure(heads_figure(view.panels, view.col_labels, view.row_labels, title), Path(f"{stem}.png"))
    page = heatmap_html(view.panels, view.col_labels, view.row_labels, Path(f"{stem}.html"), title)
    beside = None
    if explained is not None:
        shown = "heads averaged" if len(view.panels) > 1 else "attention"
        beside = save_figure(heads_figure([(f"{kind} {shown}", view.weights),
                                           (f"attribution ({explained.method})", explained.relevance)],
                                          view.col_labels, view.row_labels, title),
                             Path(f"{stem}.{explained.method}.png"))
    return SentenceAttention(**vars(view), png=png, html=page, attribution=explained, attribution_png=beside)
