"""Attention as a notebook shows it: every map of one kind (all heads of every layer, or the one chosen), its
statistics as arrays, a matplotlib figure, and the explorer page inline (`_repr_html_`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch

from nmt.inference.attention_stats import attention_stats
from nmt.inspect.view import AttentionView as SentenceView

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plotting() -> ModuleType:
    """nmt.inspect.plots, which draws on figures of its own (no pyplot: no backend is chosen or changed, and a
    figure is shown once, as the cell's result). In IPython, figures are given an image display unless the
    user set one up (`%matplotlib inline`, or svg)."""
    import nmt.inspect.plots

    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is not None:
        from IPython.core.pylabtools import select_figure_formats
        from matplotlib.figure import Figure

        shown = [f for kind, f in shell.display_formatter.formatters.items() if kind.startswith("image/")]
        if not any(Figure in f.type_printers for f in shown):
            select_figure_formats(shell, {"png"})
    return nmt.inspect.plots


@dataclass
class AttentionMap:
    """One map: who attends (rows) to what (columns), with each row's entropy (nats), largest weight and the
    number of positions above the view's threshold."""

    layer: int  # 1-based
    head: int | None  # 1-based; None: the heads' average
    weights: np.ndarray  # (rows, cols)
    entropy: np.ndarray  # (rows,)
    max_weight: np.ndarray  # (rows,)
    above_threshold: np.ndarray  # (rows,)

    @property
    def caption(self) -> str:
        return f"layer {self.layer} " + (f"head {self.head}" if self.head else "heads averaged")

    @classmethod
    def of(cls, layer: int, head: int | None, weights: np.ndarray, threshold: float) -> AttentionMap:
        stats = attention_stats(torch.from_numpy(np.ascontiguousarray(weights)), threshold)
        return cls(layer, head, weights, np.array(stats.entropy), np.array(stats.max_weight),
                   np.array(stats.above_threshold, dtype=int))

    def summary(self) -> dict[str, tuple[float, float]]:
        """(mean, std) of each statistic over the rows, as `nmt attention` prints it."""
        return {name: (float(values.mean()), float(values.std())) if values.size else (0.0, 0.0)
                for name, values in (("entropy", self.entropy), ("max_weight", self.max_weight),
                                     ("above_threshold", self.above_threshold.astype(float)))}


@dataclass
class KindMaps:
    """Every map of one kind of attention for one translated sentence: per layer, the heads' average and each
    head (a single-head attention: its one map as both)."""

    kind: str
    translation: str
    row_tokens: list[str]
    col_tokens: list[str]
    averages: list[AttentionMap]  # one per layer
    heads: list[list[AttentionMap]]  # per layer, per head
    views: list[SentenceView] = field(repr=False)  # per layer, every head: what the inline page answers from

    @classmethod
    def of(cls, layers: list[SentenceView], threshold: float) -> KindMaps:
        """From `nmt.inspect.view.attention_view` of each layer (heads unchosen), first layer first."""
        averages, heads = [], []
        for view in layers:
            averages.append(AttentionMap.of(view.layer, None, view.weights, threshold))
            heads.append([AttentionMap.of(view.layer, h + 1, weights, threshold)
                          for h, (_, weights) in enumerate(view.panels)])
        first = layers[0]
        return cls(first.kind, first.translation, first.row_labels, first.col_labels, averages, heads, layers)


@dataclass
class AttentionView:
    """One sentence's translation and its attention of one kind. With neither `layer` nor `head` chosen, the
    view holds every head of every layer: `weights` is then (layers, heads, rows, cols) and `entropy`,
    `max_weight`, `above_threshold` are (layers, heads, rows); with a layer only, (1, heads, ...). A single
    map (a chosen head, or a model with one layer of one head) gives (rows, cols) and (rows,)."""

    source: str
    translation: str
    kind: str  # cross, encoder or decoder
    layer: int | None  # as asked (None: every layer)
    head: int | None  # as asked (None: every head)
    threshold: float
    beam_size: int
    row_tokens: list[str]  # who attends: target outputs (source tokens for encoder self-attention)
    col_tokens: list[str]  # what is attended to
    maps: list[AttentionMap]  # what the arrays below stack, layer by layer, head by head
    all_maps: KindMaps = field(repr=False)
    kinds: Callable[[str], KindMaps] = field(repr=False)  # the same sentence's other kinds, for the inline page
    page: Callable[[AttentionView], str] = field(repr=False)
    words: bool = False  # rows and columns are words (nmt.inspect.words), the statistics of that map
    eos: bool = True  # False: EOS left out, rows renormalized

    @property
    def single(self) -> bool:
        return len(self.maps) == 1

    def _stacked(self, name: str) -> np.ndarray:
        values = [getattr(m, name) for m in self.maps]
        if self.single:
            return values[0]
        layers = len({m.layer for m in self.maps})
        return np.stack(values).reshape(layers, len(self.maps) // layers, *values[0].shape)

    @property
    def weights(self) -> np.ndarray:
        return self._stacked("weights")

    @property
    def entropy(self) -> np.ndarray:
        return self._stacked("entropy")

    @property
    def max_weight(self) -> np.ndarray:
        return self._stacked("max_weight")

    @property
    def above_threshold(self) -> np.ndarray:
        return self._stacked("above_threshold")

    def plot(self) -> Figure:
        """A heatmap of the one map, or a grid with one axes per head (rows of heads, layer after layer)."""
        plots = plotting()
        title = f"{self.source} -> {self.translation}"
        if self.single:
            return plots.heatmap_figure(self.maps[0].weights, self.col_tokens, self.row_tokens, title)
        return plots.heads_figure([(f"{self.kind} {m.caption}", m.weights) for m in self.maps], self.col_tokens,
                                  self.row_tokens, title)

    def _repr_html_(self) -> str:
        return self.page(self)
