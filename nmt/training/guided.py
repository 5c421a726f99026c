"""Guided alignment (training.guided_alignment; Garg et al. 2019, Marian's --guided-alignment): one head of one
decoder layer's cross-attention is trained towards given word alignments, so that it becomes a word aligner.

The word links of a pair become a subword target: at the decoder position that predicts a piece of target
word j, one unit of weight spreads evenly over the pieces of the source words linked to j. A word is a piece
starting with "▁" and the pieces after it (nmt.inspect.words' rule); positions of unaligned words, EOS and
padding get no target. The alignment loss is the cross-entropy -sum(target x log attention) over those
positions; training adds `weight` x it to the summed token loss before dividing by the step's target tokens,
so it is a per-token term like the translation loss, and accumulation and torchrun treat it the same way."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from nmt.config import Config
from nmt.data.batching import Batch
from nmt.data.links import Link, check_links
from nmt.data.prepare import EncodedSplit
from nmt.data.tokenizer import Tokenizer
from nmt.data.word_aligner import piece_words, read_training_links, word_starts
from nmt.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class AlignmentGuide:
    """The guided layer and head, the training pairs' word links, and the loss term of a batch."""

    def __init__(self, config: Config, split: EncodedSplit, tokenizer: Tokenizer):
        guided = config.training.guided_alignment
        assert guided is not None
        self.layer, self.head, self.weight = config.guided_layer - 1, guided.head - 1, guided.weight
        self.split = split
        self.src_starts = word_starts(tokenizer.src_pieces(range(tokenizer.src_vocab_size)))
        self.tgt_starts = word_starts(tokenizer.tgt_pieces(range(tokenizer.tgt_vocab_size)))
        self.links = read_training_links(Path(guided.path), len(split))
        for index, links in enumerate(self.links):
            if links:
                try:
                    check_links(links, *self._words(index), f"{guided.path}:{index + 1}")
                except DataError as err:
                    raise ConfigError(f"training.guided_alignment.path {err} (made for other data? write it again "
                                      "with: nmt align --prepare --config CONFIG)") from None
        log.info("guided alignment: decoder layer %d, head %d, weight %g, %d of %d pairs aligned", self.layer + 1,
                 self.head + 1, self.weight, sum(1 for links in self.links if links), len(split))

    def _words(self, index: int) -> tuple[int, int]:
        """The source and target words of training pair `index`: the pieces that start one."""
        return (int((self.src_starts[self.split.src_ids(index)] == 1).sum()),
                int((self.tgt_starts[self.split.tgt_ids(index)] == 1).sum()))

    def targets(self, batch: Batch) -> torch.Tensor:
        """(B, T, S) on the CPU: each guided position's target distribution over the source pieces, 0 rows
        where there is none (module docstring)."""
        assert batch.tgt_out is not None and batch.tgt_mask is not None
        target = np.zeros((batch.size, batch.tgt_out.shape[1], batch.src.shape[1]), dtype=np.float32)
        # the batch's own pieces: under subword regularization an epoch segments a pair its own way (the words,
        # and so the links, stay the same)
        src, tgt = batch.src.cpu().numpy(), batch.tgt_out.cpu().numpy()
        tgt_lengths = batch.tgt_mask.sum(dim=1).cpu().numpy() - 1  # without EOS
        for row, index in enumerate(batch.indices):
            links: frozenset[Link] = self.links[index]
            if not links:
                continue
            src_words = piece_words(src[row, :int(batch.src_lengths[row])], self.src_starts)
            tgt_words = piece_words(tgt[row, :tgt_lengths[row]], self.tgt_starts)
            linked = np.zeros((tgt_words.max() + 2, src_words.max() + 2), dtype=np.float32)  # last: specials
            sources, targets = zip(*links, strict=True)
            linked[list(targets), list(sources)] = 1.0
            pieces = linked[tgt_words][:, src_words]  # index -1 reads the specials' empty row and column
            totals = pieces.sum(axis=1, keepdims=True)
            target[row, :len(tgt_words), :len(src_words)] = np.divide(pieces, totals, out=pieces, where=totals > 0)
        return torch.from_numpy(target)

    def loss(self, attention: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Summed cross-entropy between the guided head of `attention` (B, heads, T, S, the guided layer's
        weights) and the batch's targets."""
        target = self.targets(batch).to(attention.device)
        weights = attention[:, self.head].float()
        return -(target * weights.clamp_min(torch.finfo(weights.dtype).tiny).log()).sum()
