"""Pictures of attention and of scores: heatmaps (PNG and self-contained HTML), bucket plots, run comparisons.

Matplotlib draws with the first installed font that covers every character of the labels, so Japanese
or Chinese tokens render instead of showing boxes; without such a font the labels fall back with a
warning naming a package to install."""

from __future__ import annotations

import html
import io
import logging
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font

from nmt.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)


@cache
def _charmap(path: str) -> frozenset[int]:
    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError):
        return frozenset()


def font_for(labels: Sequence[str]) -> list[str]:
    """Font families that together have a glyph for every character in `labels`: DejaVu Sans (matplotlib's
    default, which has SentencePiece's '▁'), then, for what it lacks, the first installed font with all of
    it. Matplotlib falls back along the list glyph by glyph. Fonts of placeholder boxes are skipped."""
    needed = {ord(ch) for label in labels for ch in label if not ch.isspace()}
    default = font_manager.findfont("DejaVu Sans")
    missing = needed - _charmap(default)
    families = [font_manager.FontProperties(fname=default).get_name()]
    if not missing:
        return families
    for path in sorted({f.fname for f in font_manager.fontManager.ttflist} - {default}):
        name = font_manager.FontProperties(fname=path).get_name()
        if "last resort" not in name.lower() and missing <= _charmap(path):
            return [*families, name]
    log.warning("no installed font covers all characters of the labels (for Japanese or Chinese: "
                "apt-get install fonts-noto-cjk or fonts-ipafont-gothic); some may show as boxes")
    return families


def heatmap_figure(weights, src_labels: Sequence[str], tgt_labels: Sequence[str], title: str = "") -> Figure:
    """Target tokens (rows) x source tokens (columns), each cell annotated with its weight."""
    rows, cols = len(tgt_labels), len(src_labels)
    families = font_for(list(src_labels) + list(tgt_labels) + [title])
    fig = Figure(figsize=(max(4.0, 0.55 * cols + 2), max(3.0, 0.45 * rows + 1.5)))
    ax = fig.subplots()
    image = ax.imshow(weights, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    font = {"family": families}
    ax.set_xticks(range(cols), labels=list(src_labels), rotation=60, ha="right", fontdict=font)
    ax.set_yticks(range(rows), labels=list(tgt_labels), fontdict=font)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    if title:
        ax.set_title(title, fontdict=font, fontsize=10)
    size = 7 if max(rows, cols) < 25 else 5
    for i in range(rows):
        for j in range(cols):
            value = float(weights[i][j])
            ax.text(j, i, f"{value:.2f}"[1:] if value < 1 else "1", ha="center", va="center", fontsize=size,
                    color="white" if value > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    return fig


def heads_figure(panels: Sequence[tuple[str, object]], src_labels: Sequence[str], tgt_labels: Sequence[str],
                 title: str = "") -> Figure:
    """A grid of heatmaps sharing their labels, one per attention head (exercise 4.6: each head's pattern)."""
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    families = font_for(list(src_labels) + list(tgt_labels) + [title])
    width, height = max(3.0, 0.3 * len(src_labels) + 1.5), max(2.5, 0.3 * len(tgt_labels) + 1.2)
    fig = Figure(figsize=(width * columns, height * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    font = {"family": families, "fontsize": 7}
    for ax, (caption, weights) in zip(axes.flat, panels, strict=False):
        ax.imshow(weights, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(src_labels)), labels=list(src_labels), rotation=60, ha="right", fontdict=font)
        ax.set_yticks(range(len(tgt_labels)), labels=list(tgt_labels), fontdict=font)
        ax.set_title(caption, fontsize=9)
    for ax in list(axes.flat)[len(panels):]:  # the grid's unused cells: one axes per head
        fig.delaxes(ax)
    if title:
        fig.suptitle(title, fontproperties={"family": families}, fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Render to memory, then write atomically: a full disk leaves no empty or partial image."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=130, format="png")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def heatmap_png(weights, src_labels: Sequence[str], tgt_labels: Sequence[str], path: Path, title: str = "") -> Path:
    return save_figure(heatmap_figure(weights, src_labels, tgt_labels, title), path)


def heatmap_html(panels: Sequence[tuple[str, object]], src_labels: Sequence[str], tgt_labels: Sequence[str],
                 path: Path, title: str = "") -> Path:
    """The heatmaps (one per head, or one) as self-contained HTML tables (no scripts, no external files)."""
    head = "".join(f"<th class='src'>{html.escape(s)}</th>" for s in src_labels)
    tables = []
    for caption, weights in panels:
        body = []
        for i, label in enumerate(tgt_labels):
            cells = "".join(
                f"<td style='background:rgba(33,102,172,{float(w):.3f});color:{'#fff' if float(w) > 0.6 else '#000'}'"
                f" title='{html.escape(label)} / {html.escape(src_labels[j])}: {float(w):.4f}'>{float(w):.2f}</td>"
                for j, w in enumerate(weights[i]))  # type: ignore[index]
            body.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
        tables.append(f"<h4>{html.escape(caption)}</h4><table><tr><th></th>{head}</tr>{''.join(body)}</table>")
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>attention</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}td,th{padding:3px 6px;font-size:13px;"
        "text-align:center}th.src{writing-mode:vertical-rl;transform:rotate(180deg)}td{border:1px solid #eee}"
        f"</style></head><body><h3>{html.escape(title)}</h3>{''.join(tables)}"
        "<p>rows: query tokens; columns: attended tokens; cells: attention weights</p></body></html>\n"
    )
    atomic_write_text(path, page)
    return path


def bar_figure(labels: Sequence[str], series: dict[str, Sequence[float]], title: str,
               xlabel: str = "source length (words)") -> Figure:
    """One bar panel per series (e.g. BLEU, entropy) over the same labels (length buckets, runs)."""
    fig = Figure(figsize=(4.2 * len(series), 3.4))
    axes = fig.subplots(1, len(series), squeeze=False)
    for ax, (name, values) in zip(axes.flat, series.items(), strict=True):
        ax.bar(range(len(labels)), values, color="#4a7ab7")
        ax.set_xticks(range(len(labels)), labels=list(labels))
        ax.set_xlabel(xlabel)
        ax.set_title(name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def head_lines(buckets: Sequence[str], entropy, path: Path, title: str) -> Path:
    """One panel per layer, one line per head: entropy (buckets, layers, heads) over the length buckets."""
    layers, heads = entropy.shape[1], entropy.shape[2]
    fig = Figure(figsize=(3.6 * layers, 3.2))
    axes = fig.subplots(1, layers, squeeze=False, sharey=True)
    for layer, ax in enumerate(axes.flat):
        for head in range(heads):
            ax.plot(range(len(buckets)), entropy[:, layer, head], marker="o", label=f"head {head + 1}")
        ax.set_xticks(range(len(buckets)), labels=list(buckets))
        ax.set_xlabel("source length (words)")
        ax.set_title(f"layer {layer + 1}")
    axes.flat[0].set_ylabel("mean entropy (nats)")
    axes.flat[-1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
