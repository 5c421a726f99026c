"""Subword maps as word maps, and EOS shown or left out: the one rule every word-level view follows (attention
in `nmt attention`, `nmt analyze`, the API and the page; attributions; alignments).

The rule, for a map whose rows (who attends) and columns (what is attended to) are subword pieces and whose
rows each sum to 1:
- a column word's weight is the SUM over its pieces: a row still spreads the same mass, now over words;
- a row word's weights are the MEAN over its pieces' rows: an average of distributions is a distribution.
So every row of the word map still sums to 1. A word is a piece that starts with SentencePiece's "▁" and the
pieces after it that do not; "<s>" and "</s>" are words of their own.

Without EOS, the "</s>" row and column are dropped and each remaining row is divided by what it keeps, so it
sums to 1 again (a row that looked only at EOS stays 0). Statistics are computed on the map as shown."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nmt.data.tokenizer import WORD_START

EOS, BOS = "</s>", "<s>"


def word_groups(pieces: Sequence[str]) -> list[list[int]]:
    """The piece indices of each word, in order: ["▁Zwei", "▁Hund", "e", "</s>"] -> [[0], [1, 2], [3]]."""
    groups: list[list[int]] = []
    for i, piece in enumerate(pieces):
        if not groups or piece.startswith(WORD_START) or piece in (EOS, BOS) or pieces[i - 1] in (EOS, BOS):
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def word_labels(pieces: Sequence[str], groups: Sequence[Sequence[int]]) -> list[str]:
    """Each word's pieces joined, without the word-start mark: ["▁Hund", "e"] -> "Hunde"."""
    return ["".join(pieces[i] for i in group).removeprefix(WORD_START) or WORD_START for group in groups]


def merge_words(weights: torch.Tensor, row_groups: Sequence[Sequence[int]],
                col_groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """(..., R, C) piece map -> (..., R', C') word map: sum over a column word's pieces, mean over a row
    word's pieces (module docstring)."""
    cols = torch.zeros(weights.shape[-1], len(col_groups), dtype=weights.dtype)
    for word, group in enumerate(col_groups):
        cols[list(group), word] = 1.0
    rows = torch.zeros(len(row_groups), weights.shape[-2], dtype=weights.dtype)
    for word, group in enumerate(row_groups):
        rows[word, list(group)] = 1.0 / len(group)
    return rows @ weights @ cols


def drop_eos(weights: torch.Tensor, row_labels: Sequence[str], col_labels: Sequence[str]
             ) -> tuple[torch.Tensor, list[str], list[str]]:
    """Leave out the EOS row and column, and renormalize each row over the columns it keeps."""
    rows = [i for i, label in enumerate(row_labels) if label != EOS]
    cols = [j for j, label in enumerate(col_labels) if label != EOS]
    kept = weights[..., rows, :][..., cols]
    total = kept.sum(-1, keepdim=True)
    kept = torch.where(total > 0, kept / total.clamp_min(torch.finfo(kept.dtype).tiny), kept)
    return kept, [row_labels[i] for i in rows], [col_labels[j] for j in cols]


def shape_view(weights: torch.Tensor, row_labels: Sequence[str], col_labels: Sequence[str], words: bool = False,
               eos: bool = True) -> tuple[torch.Tensor, list[str], list[str]]:
    """A (..., R, C) piece map as shown: merged into words with `words`, EOS left out without `eos`."""
    rows, cols = list(row_labels), list(col_labels)
    if words:
        row_groups, col_groups = word_groups(rows), word_groups(cols)
        weights = merge_words(weights, row_groups, col_groups)
        rows, cols = word_labels(rows, row_groups), word_labels(cols, col_groups)
    if not eos:
        weights, rows, cols = drop_eos(weights, rows, cols)
    return weights, rows, cols
