"""Token-budget batches with length bucketing, and the `Batch` that carries the teacher-forcing shift and
the padding masks, built once here so the model never rebuilds them.

Shapes: B sentences, S source positions, T target positions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from nmt.tokens import BOS_ID, EOS_ID, PAD_ID

Ids = Sequence[int] | np.ndarray  # one sentence's token ids: a list, or a slice of a memory-mapped array


@dataclass
class Batch:
    src: torch.Tensor  # (B, S) source ids, each ending in EOS, right-padded
    src_lengths: torch.Tensor  # (B,) on the CPU, as pack_padded_sequence wants
    src_mask: torch.Tensor  # (B, S) True at real tokens
    tgt_in: torch.Tensor | None  # (B, T) BOS y1 .. yn, padded
    tgt_out: torch.Tensor | None  # (B, T) y1 .. yn EOS, padded
    tgt_mask: torch.Tensor | None  # (B, T) True at real tokens
    indices: np.ndarray  # (B,) positions of these sentences in their split

    @property
    def size(self) -> int:
        return self.src.shape[0]

    @property
    def n_tgt_tokens(self) -> int:
        return int(self.tgt_mask.sum()) if self.tgt_mask is not None else 0

    def to(self, device: torch.device) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(self.src.to(device, non_blocking=True), self.src_lengths,
                     self.src_mask.to(device, non_blocking=True), move(self.tgt_in), move(self.tgt_out),
                     move(self.tgt_mask), self.indices)


def _pad(seqs: Sequence[Ids], prefix: int | None = None, suffix: int | None = None) -> torch.Tensor:
    extra = (prefix is not None) + (suffix is not None)
    width = max(len(s) for s in seqs) + extra
    out = np.full((len(seqs), width), PAD_ID, dtype=np.int64)
    for row, seq in enumerate(seqs):
        start = 0
        if prefix is not None:
            out[row, 0] = prefix
            start = 1
        out[row, start:start + len(seq)] = seq
        if suffix is not None:
            out[row, start + len(seq)] = suffix
    return torch.from_numpy(out)


def collate(src: Sequence[Ids], tgt: Sequence[Ids] | None, indices: np.ndarray) -> Batch:
    """Pad one batch. `src` already ends in EOS; `tgt` gets BOS in front (input) and EOS behind (output)."""
    src_tensor = _pad(src)
    src_lengths = torch.tensor([len(s) for s in src], dtype=torch.int64)
    if tgt is None:
        return Batch(src_tensor, src_lengths, src_tensor != PAD_ID, None, None, None, indices)
    tgt_in, tgt_out = _pad(tgt, prefix=BOS_ID), _pad(tgt, suffix=EOS_ID)
    return Batch(src_tensor, src_lengths, src_tensor != PAD_ID, tgt_in, tgt_out, tgt_out != PAD_ID, indices)


def token_batches(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray | None,
    batch_tokens: int,
    max_sentences: int,
    seed: int | None = None,
) -> list[np.ndarray]:
    """Group sentence indices into batches of similar length whose padded size stays within `batch_tokens`.

    The padded size of a batch is its sentence count times its longest side (source, or target + 1).
    With a `seed`, ties in length are broken at random and the batch order is shuffled, so every epoch
    differs yet is reproducible; without one (decoding) the order is by length. A sentence longer than the
    budget gets a batch of its own. Every index appears in exactly one batch."""
    longest = np.asarray(src_lengths, dtype=np.int64)
    if tgt_lengths is not None:
        longest = np.maximum(longest, np.asarray(tgt_lengths, dtype=np.int64) + 1)
    rng = np.random.default_rng(seed) if seed is not None else None
    tie_break = rng.random(len(longest)) if rng is not None else np.arange(len(longest))
    order = np.lexsort((tie_break, longest))
    batches: list[np.ndarray] = []
    start, width = 0, 0
    for position, index in enumerate(order):
        new_width = max(width, int(longest[index]))
        count = position - start + 1
        if count > 1 and (new_width * count > batch_tokens or count > max_sentences):
            batches.append(order[start:position])
            start, new_width = position, int(longest[index])
        width = new_width
    if start < len(order):
        batches.append(order[start:])
    if rng is not None:
        rng.shuffle(batches)
    return batches


def padding_fraction(batches: list[np.ndarray], src_lengths: np.ndarray, tgt_lengths: np.ndarray) -> float:
    """Share of padded positions (source and target together) in the given batches."""
    real = padded = 0
    for batch in batches:
        s, t = src_lengths[batch], tgt_lengths[batch] + 1
        real += int(s.sum() + t.sum())
        padded += len(batch) * int(s.max() + t.max())
    return 1.0 - real / padded if padded else 0.0
