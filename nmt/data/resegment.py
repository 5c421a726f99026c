"""Subword regularization: the training split segmented anew for each epoch, sampled from the SentencePiece
models (tokenizer.sampling: unigram sampling, Kudo 2018; tokenizer.dropout: BPE-dropout, Provilkov et al. 2020).

The cache keeps the training split's cleaned text beside its ids, so an epoch re-encodes that text chunk by chunk
into arrays in memory (4 bytes a piece) and batches by the lengths it drew: the token budget holds for the
pieces trained on. Each chunk's draw is seeded from (seed, epoch, chunk, side) alone, so a resumed run, and every
torchrun rank, segments an epoch exactly as before; dev, test and inference keep the most probable segmentation."""

from __future__ import annotations

import itertools
import logging

import numpy as np

from nmt.config import TokenizerConfig
from nmt.data.prepare import ENCODE_CHUNK, EncodedSplit, iter_lines
from nmt.data.tokenizer import Resampling, Tokenizer
from nmt.errors import DataError

log = logging.getLogger(__name__)


def _chunk_seed(seed: int, epoch: int, chunk: int, side: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, chunk, side]).generate_state(1)[0])


def resegmented(split: EncodedSplit, tokenizer: Tokenizer, cfg: TokenizerConfig, seed: int, epoch: int
                ) -> EncodedSplit:
    """`split` (its text) segmented with the config's sampling for `epoch` (zero-based); `split` itself when the
    config samples nothing."""
    if Resampling.of(cfg, seed) is None:
        return split
    encoders = (tokenizer.encode_src, tokenizer.encode_tgt)
    sides = []
    for side, (path, encode) in enumerate(zip(split.text_files, encoders, strict=True)):
        lines = iter_lines(path)
        pieces, lengths = [], []
        for chunk in itertools.count():
            if not (text := list(itertools.islice(lines, ENCODE_CHUNK))):
                break
            ids = encode(text, Resampling.of(cfg, _chunk_seed(seed, epoch, chunk, side)))
            lengths.append(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
            pieces.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32))
        counts = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
        if len(counts) != len(split):
            raise DataError(f"{path}: {len(counts)} lines where the cache encoded {len(split)} pairs (a damaged "
                            "cache: remove it to rebuild it)")
        offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts)])
        sides.append((np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32), offsets))
    (src_tokens, src_offsets), (tgt_tokens, tgt_offsets) = sides
    grown = (len(src_tokens) + len(tgt_tokens)) / max(1, len(split.src_tokens) + len(split.tgt_tokens))
    log.info("epoch %d: training split segmented anew (%.2fx the pieces of the most probable segmentation)",
             epoch + 1, grown)
    return EncodedSplit(src_tokens, src_offsets, tgt_tokens, tgt_offsets, split.text_files)
