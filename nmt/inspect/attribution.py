"""Gradient attribution beside attention: how much each source token's embedding moves the log-probability of
each target token of a translation (captum: input x gradient, or integrated gradients from an all-padding
source), and how well attention ranks the source tokens as the attribution does (Spearman, per row).

Attention says where a step looked; attribution what the output depended on. Per target token t and source
token s, relevance = |sum over the embedding dimensions of the attribution|, divided by the row's total so
that rows sum to 1 like attention's; the same word rule and EOS switch as attention then apply
(nmt.inspect.words). captum is imported when an attribution is computed (`attribute`): it loads matplotlib,
which serving never imports; the shaping and the comparison (`shape_attribution`) need no captum and no model,
so the server runs `attribute` in a child process (nmt.serve.attributor) and shapes its result itself.

An attribution's cost is bounded (`Cost`, config.MAX_ATTRIBUTION_COST): the API and `nmt attention` refuse
one above `max_cost` (`--max-cost`), the server one above its Limits.max_attribution_cost (413)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from nmt.config import MAX_ATTRIBUTION_COST, MAX_POSITIONS_SETTING
from nmt.data.tokenizer import Tokenizer
from nmt.errors import ArgumentError, ConfigError
from nmt.inference.attention_stats import AttentionStats, attention_stats
from nmt.inspect.view import AttentionView
from nmt.inspect.words import EOS, shape_view
from nmt.models import Model
from nmt.runs.loading import LoadedRun
from nmt.tokens import BOS_ID, EOS_ID, PAD_ID

Method = Literal["input_x_gradient", "integrated_gradients"]
METHODS: tuple[str, ...] = get_args(Method)
STEPS = 32
"""Integration steps of integrated gradients, unless told otherwise."""


@dataclass(frozen=True)
class Cost:
    """An attribution's cost in target tokens x source tokens x integration steps (one for input x gradient):
    it takes the gradients of one copy of the translation per target token, at each step."""

    method: str
    rows: int  # forced target tokens, EOS included when the translation ended with it
    cols: int  # source tokens, EOS included
    steps: int  # integration steps taken

    @classmethod
    def of(cls, method: str, rows: int, cols: int, steps: int) -> Cost:
        return cls(method, rows, cols, 1 if method == "input_x_gradient" else steps)

    @property
    def total(self) -> int:
        return self.rows * self.cols * self.steps

    def __str__(self) -> str:
        return (f"{self.method} costs {self.total} ({self.rows} target tokens x {self.cols} source tokens x "
                f"{self.steps} steps)")


def check_cost(cost: Cost, max_cost: int | None) -> None:
    """Refuse, before any gradient, an attribution above `max_cost` (None: no bound), naming the argument that
    lowers the cost (steps of integrated gradients) or else the bound."""
    if max_cost is None or cost.total <= max_cost:
        return
    if cost.steps > 1:
        raise ArgumentError("steps", f"{cost}, above the bound of {max_cost}: use fewer steps or input_x_gradient, "
                                     "or raise the bound (max cost)")
    raise ArgumentError("max_cost", f"{cost}, above the bound of {max_cost}: attribute a shorter sentence, or raise "
                                    "the bound")


def source_embedding(model: Model, src: torch.Tensor) -> nn.Embedding:
    """The embedding that reads the source ids: the one `encode` calls (found by watching, so that no model
    class is named outside nmt.models)."""
    called: list[nn.Embedding] = []
    hooks = [m.register_forward_pre_hook(lambda module, _args: called.append(module))
             for m in model.modules() if isinstance(m, nn.Embedding)]
    try:
        with torch.no_grad():
            model.encode(src, torch.tensor([src.shape[1]]), src != PAD_ID)
    finally:
        for hook in hooks:
            hook.remove()
    if len(set(map(id, called))) != 1:
        raise ConfigError(f"attribution needs one source embedding; encoding called {len(called)} embeddings")
    return called[0]


def attribute(loaded: LoadedRun, src_ids: Sequence[int], tgt_ids: Sequence[int], method: str = "input_x_gradient",
              steps: int = STEPS, ended: bool = True, max_cost: int | None = MAX_ATTRIBUTION_COST) -> torch.Tensor:
    """(T + 1, S) relevance of each source token (EOS included) for each forced target token and the final EOS,
    rows summing to 1 (module docstring); (T, S) for a translation that did not end with EOS (`ended` False: it
    stopped at its length limit), whose EOS is neither forced nor given a position the model may not have.
    `steps`: integration steps of integrated gradients; `max_cost`: `check_cost`.

    The hooks (captum's, `source_embedding`'s) go on a copy of the model, never on `loaded.model`, which may be
    translating in another thread at the same time (one `nmt.load` run shared): a hook there changes what its
    embedding returns. The copy costs a small fraction of the attribution itself, while a lock instead would
    hold every other use of the model for the attribution's seconds."""
    if method not in METHODS:
        raise ConfigError(f"--attribution {method}: choose one of {', '.join(METHODS)}")
    rows = len(tgt_ids) + int(ended)
    check_cost(Cost.of(method, rows, len(src_ids), steps), max_cost)
    limit = loaded.model.max_positions
    if limit is not None and rows > limit:
        raise ConfigError(f"a translation of {len(tgt_ids)} tokens{' and EOS' if ended else ''} is {rows} target "
                          f"positions; the model has {limit} ({MAX_POSITIONS_SETTING})")
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    model = copy.deepcopy(loaded.model).eval()
    src = torch.tensor([list(src_ids)]).repeat(rows, 1)  # one copy per target token: target t reads row t
    tgt_in, tgt_out = torch.tensor([[BOS_ID, *tgt_ids][:rows]]), torch.tensor([[*tgt_ids, EOS_ID][:rows]])
    length = torch.tensor([src.shape[1]])

    def forced_log_probs(ids: torch.Tensor) -> torch.Tensor:
        """(N, S) source ids -> (N, rows) log-probability of each forced target token."""
        count = ids.shape[0]
        logits = model(ids, length.repeat(count), ids != PAD_ID, tgt_in.expand(count, -1))
        return logits.float().log_softmax(-1).gather(-1, tgt_out.expand(count, -1).unsqueeze(-1)).squeeze(-1)

    embedding = source_embedding(model, src[:1])
    with torch.enable_grad():
        if method == "input_x_gradient":
            found = LayerGradientXActivation(forced_log_probs, embedding).attribute(src, target=list(range(rows)))
        else:
            found = LayerIntegratedGradients(forced_log_probs, embedding).attribute(
                src, baselines=torch.full_like(src, PAD_ID), target=list(range(rows)), n_steps=steps,
                internal_batch_size=rows)  # one step's copies at a time: memory does not grow with `steps`
    relevance = found.detach().float().sum(-1).abs()  # (rows, S)
    return relevance / relevance.sum(-1, keepdim=True).clamp_min(torch.finfo(relevance.dtype).tiny)


def spearman_rows(first: np.ndarray, second: np.ndarray) -> list[float]:
    """Spearman's rank correlation of each row of two (rows, cols) maps (scipy, ties given their mean rank);
    NaN where either row is constant (a single column, or all weights equal)."""
    from scipy.stats import spearmanr  # loaded when an attribution is compared, not with the API

    found = []
    for a, b in zip(first, second, strict=True):
        constant = len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0
        found.append(float("nan") if constant else float(spearmanr(a, b).statistic))
    return found


@dataclass
class AttributionView:
    """One translation's attribution over the source, shaped as its attention view is, and their agreement."""

    method: str
    row_labels: list[str]  # target tokens (or words)
    col_labels: list[str]  # source tokens (or words)
    relevance: np.ndarray  # (rows, cols), rows summing to 1
    attention: np.ndarray  # (rows, cols): the attention view's weights, compared with `relevance`
    spearman: list[float]  # per row; NaN where a row is constant
    stats: AttentionStats  # of `relevance`: entropy, largest share, positions above the threshold

    @property
    def mean_spearman(self) -> float:
        return mean_defined(self.spearman)


def mean_defined(correlations: Sequence[float]) -> float:
    """The mean over the rows that have a correlation (NaN if none has)."""
    defined = [r for r in correlations if not np.isnan(r)]
    return float(np.mean(defined)) if defined else float("nan")


def attribution_view(loaded: LoadedRun, view: AttentionView, method: str = "input_x_gradient",
                     steps: int = STEPS, max_cost: int | None = MAX_ATTRIBUTION_COST) -> AttributionView:
    """Attribution of the translation in a cross-attention `view`, at its level (words or subwords, EOS or
    not), beside its weights (one head, or the heads' average)."""
    if view.kind != "cross":
        raise ConfigError(f"--attribution is over the source tokens: it goes with --kind cross, not {view.kind}")
    if not view.tgt_ids and not view.ended:  # an empty text's placeholder translation: no token to attribute
        raise ArgumentError("text", "is empty or only whitespace: there is no translation to attribute")
    relevance = attribute(loaded, view.src_ids, view.tgt_ids, method, steps, view.ended, max_cost)
    return shape_attribution(view, loaded.tokenizer, relevance, method)


def shape_attribution(view: AttentionView, tokenizer: Tokenizer, relevance: torch.Tensor,
                      method: str) -> AttributionView:
    """`attribute`'s relevance of the translation in a cross-attention `view`, shaped as the view is (words or
    subwords, EOS or not) and compared with its weights."""
    rows = [*tokenizer.tgt_pieces(view.tgt_ids), EOS][:relevance.shape[0]]  # EOS when the translation ended
    shaped, row_labels, col_labels = shape_view(relevance, rows, tokenizer.src_pieces(view.src_ids), view.words,
                                                view.eos)
    relevance_np = shaped.numpy()
    return AttributionView(method, row_labels, col_labels, relevance_np, view.weights,
                           spearman_rows(view.weights, relevance_np),
                           attention_stats(shaped, view.stats.threshold))
