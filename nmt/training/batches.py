"""The training data as optimizer steps take it: batches of a token budget without the pairs the model cannot
encode, each epoch in its own order from (seed, epoch), and each rank's share of a step.

Under torchrun (nmt.training.distributed) every rank builds the same batch order and a step takes `accumulate`
batches per rank from it, so N ranks together take what one process with `accumulate: N` takes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from nmt.config import MAX_POSITIONS_SETTING, Config
from nmt.data.batching import Batch, collate, token_batches
from nmt.data.prepare import EncodedSplit
from nmt.data.resegment import resegmented
from nmt.data.tokenizer import Tokenizer
from nmt.errors import ConfigError
from nmt.training.distributed import World

if TYPE_CHECKING:
    from nmt.training.step import Progress

log = logging.getLogger(__name__)


def fits_the_model(split: EncodedSplit, config: Config) -> np.ndarray | None:
    """Which pairs a Transformer can encode (no side longer than model.transformer.max_positions; the decoder
    reads BOS + target); None: every pair (an RNN)."""
    limit = config.model.max_positions
    if limit is None:
        return None
    return (split.src_lengths <= limit) & (split.tgt_lengths + 1 <= limit)


def check_pairs_fit(splits: dict[str, EncodedSplit], config: Config) -> None:
    """Refuse a split none of whose pairs the model can encode; warn about those `split_batches` leaves out."""
    limit = config.model.max_positions
    for name in ("train", "dev"):
        fits = fits_the_model(splits[name], config)
        if fits is None or fits.all():
            continue
        if not fits.any():
            raise ConfigError(f"{MAX_POSITIONS_SETTING} {limit}: every {name} pair has a side longer "
                              "than that; raise it")
        use = "training" if name == "train" else "the dev loss (dev BLEU translates them truncated)"
        log.warning("data.%s: %d of %d pairs have a side longer than %s (%d): left out of %s", name,
                    int((~fits).sum()), len(fits), MAX_POSITIONS_SETTING, limit, use)


def split_batches(split: EncodedSplit, config: Config, seed: int | None) -> list[np.ndarray]:
    """The split's batches, without the pairs the model cannot encode (`fits_the_model`)."""
    cfg = config.training
    batches = token_batches(split.src_lengths, split.tgt_lengths, cfg.batch_tokens, cfg.max_batch_sentences, seed)
    fits = fits_the_model(split, config)
    return batches if fits is None else [kept for batch in batches if len(kept := batch[fits[batch]])]


def epoch_batches(split: EncodedSplit, config: Config, epoch: int) -> list[np.ndarray]:
    """The training batches of one (zero-based) epoch, in their order: each epoch its own, from (seed, epoch)."""
    return split_batches(split, config, seed=config.seed * 1_000_003 + epoch)


def make_batch(split: EncodedSplit, indices: np.ndarray) -> Batch:
    return collate([split.src_ids(i) for i in indices], [split.tgt_ids(i) for i in indices], indices)


@dataclass
class StepShare:
    """This rank's part of one optimizer step."""

    batches: list[Batch]  # its micro-batches, on the device
    tokens: int  # target tokens of the whole step, over every rank: the loss is divided by this
    weight: float = 1.0  # 0 for a rank whose share ran out at the end of the data: it runs a batch, adds nothing


class TrainBatches:
    """The training split's batches in the order every rank builds alike, and each rank's share of a step. With
    subword regularization each epoch trains on the split segmented anew (nmt.data.resegment)."""

    def __init__(self, split: EncodedSplit, tokenizer: Tokenizer, config: Config, world: World, device: torch.device):
        self.split, self.tokenizer, self.config, self.world, self.device = split, tokenizer, config, world, device

    def epoch_split(self, epoch: int) -> EncodedSplit:
        """The split as epoch `epoch` (zero-based) segments it."""
        return resegmented(self.split, self.tokenizer, self.config.tokenizer, self.config.seed, epoch)

    def order(self, progress: Progress) -> Iterator[tuple[EncodedSplit, np.ndarray]]:
        """Every batch from the saved position on, epoch after epoch, as its epoch's split and the sentence
        indices in it; taking one advances `progress`, so a checkpoint resumes exactly where the order stood."""
        max_epochs = self.config.training.max_epochs
        while max_epochs is None or progress.epoch < max_epochs:
            split = self.epoch_split(progress.epoch)
            order = epoch_batches(split, self.config, progress.epoch)
            while progress.position < len(order):
                indices = order[progress.position]
                progress.position += 1
                yield split, indices
            progress.epoch += 1
            progress.position = 0

    def next_share(self, order: Iterator[tuple[EncodedSplit, np.ndarray]]) -> StepShare | None:
        """Take one step's batches from `order` (`accumulate` per rank) and return this rank's share; None
        when the data has run out. A rank left without a batch at the very end repeats one with weight 0."""
        per_rank, rank = self.config.training.accumulate, self.world.rank
        step = list(itertools.islice(order, per_rank * self.world.size))
        if not step:
            return None
        tokens = int(sum(int(split.tgt_lengths[i].sum()) + len(i) for split, i in step))  # + EOS per sentence
        mine = step[rank * per_rank:(rank + 1) * per_rank]
        # DDP needs every rank's backward: a rank without a batch repeats one and adds it with weight 0. (With
        # fp16, an overflow in that copy makes the step's gradients NaN and the step is skipped, like any other.)
        weight = 1.0 if mine else 0.0
        batches = [make_batch(split, indices).to(self.device) for split, indices in mine or step[:1]]
        return StepShare(batches, tokens, weight)
