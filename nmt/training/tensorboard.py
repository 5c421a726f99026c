"""TensorBoard event files for a training run (`training.tensorboard: true`), in RUN/tensorboard.

Written beside metrics.jsonl, never instead of it (`nmt compare` reads that): the training loss, learning rate,
target tokens/s and gradient norm at each report; dev loss, perplexity, BLEU and chrF at each validation, with
the first dev sentence's cross-attention as an image. The image is the weight matrix itself, scaled to [0, 1]
and each cell enlarged to a block of pixels: training sits below the plotting of nmt.inspect and draws none.
A started or resumed run purges the events after the step it starts from, as it truncates metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nmt.errors import ConfigError

CELL_PIXELS = 8
"""Each (target step, source position) weight becomes a square of this many pixels a side."""


def attention_image(weights: torch.Tensor) -> torch.Tensor:
    """(T, S) attention weights -> (T * CELL_PIXELS, S * CELL_PIXELS) image in [0, 1], the largest weight white."""
    scaled = weights.detach().float().cpu()
    scaled = scaled / scaled.max().clamp(min=1e-12)
    return scaled.repeat_interleave(CELL_PIXELS, dim=0).repeat_interleave(CELL_PIXELS, dim=1)


class TensorBoardLog:
    """One run's event writer; events of `purge_step` and later steps are dropped (those are trained again)."""

    def __init__(self, folder: Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("training.tensorboard needs the tensorboard package: pip install 'nmt[tensorboard]'") \
                from None
        self.writer: Any = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def scalars(self, step: int, group: str, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{group}/{name}", value, step)

    def attention(self, step: int, weights: torch.Tensor) -> None:
        self.writer.add_image("dev/attention_first_sentence", attention_image(weights), step, dataformats="HW")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
