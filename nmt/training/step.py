"""One optimizer step over the batches nmt.training.batches gives it, and the progress the loop keeps.

A step forwards each micro-batch under autocast, scales, backward; then unscales, clips, steps, updates the
scaler and the schedule (the order GradScaler needs: clipping sees true gradients).

Under torchrun the loss is divided by the step's target tokens over all ranks (nmt.training.batches), so N ranks
together make the update one process with `accumulate: N` makes.
"""

from __future__ import annotations

import logging
import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nmt.config import TrainingConfig
from nmt.data.batching import Batch
from nmt.errors import TrainingError
from nmt.models import Model
from nmt.tokens import PAD_ID
from nmt.training.batches import StepShare
from nmt.training.distributed import World
from nmt.training.guided import AlignmentGuide
from nmt.training.optim import Schedule

log = logging.getLogger(__name__)


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Where the forward runs in `precision`: fp32 as it is, fp16 and bf16 under torch.autocast."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def token_loss(logits: torch.Tensor, tgt_out: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Summed cross-entropy over real target tokens (padding ignored); logits (B, T, V), tgt_out (B, T)."""
    return F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID,
                           label_smoothing=label_smoothing, reduction="sum")


@dataclass
class Progress:
    """Everything the loop advances, saved in each checkpoint and restored as one object on resume."""

    step: int = 0
    epoch: int = 0  # zero-based
    position: int = 0  # batches of this epoch's order already taken
    best_bleu: float = -1.0
    bad_validations: int = 0  # validations since the best dev BLEU
    elapsed: float = 0.0  # wall-clock seconds of training, over all sessions
    train_seconds: float = 0.0  # of which inside optimizer steps
    tokens: int = 0  # target tokens trained on
    skipped_nonfinite: int = 0
    skipped_oom: int = 0
    precision: str = ""  # what the run trains in (precision auto's choice is kept on resume)
    ema_updates: int = 0  # steps averaged into training.ema's weights (rank 0 keeps them)


@dataclass
class StepResult:
    loss: float  # mean per target token (the translation's; guided alignment's term apart)
    tokens: int
    grad_norm: float  # of the unscaled gradients, before clipping
    alignment_loss: float | None = None  # with guided alignment: its cross-entropy per target token, unweighted


class WithAttention(nn.Module):
    """The model's training forward that also returns the guided layer's cross-attention: a module of its own,
    so that DDP, which hooks `forward` only, wraps it as it wraps the plain model."""

    def __init__(self, model: Model, layer: int):
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, src: torch.Tensor, lengths: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor,
                teacher_forcing: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_attention(src, lengths, src_mask, tgt_in, self.layer, teacher_forcing)


@dataclass
class TrainingLoss:
    """What training minimizes for a batch: the label-smoothed token loss, plus guided alignment's weighted term."""

    cfg: TrainingConfig
    guide: AlignmentGuide | None

    def forward_of(self, model: Model) -> nn.Module:
        """What the training forward runs: the model's `forward` (logits), or with guided alignment its
        `forward_with_attention` of the guided layer (logits and that layer's weights)."""
        return cast(nn.Module, model) if self.guide is None else WithAttention(model, self.guide.layer)

    def batch_loss(self, module: nn.Module, batch: Batch, precision: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch's summed token loss through `module` (`forward_of` the model, or DDP around it), and guided
        alignment's cross-entropy (None without it)."""
        assert batch.tgt_in is not None and batch.tgt_out is not None  # training batches have targets
        with autocast(batch.src.device, precision):
            found = module(batch.src, batch.src_lengths, batch.src_mask, batch.tgt_in, self.cfg.teacher_forcing)
        if self.guide is None:
            return token_loss(found, batch.tgt_out, self.cfg.label_smoothing), None
        logits, attention = found
        return token_loss(logits, batch.tgt_out, self.cfg.label_smoothing), self.guide.loss(attention, batch)

    def objective(self, loss: torch.Tensor, alignment: torch.Tensor | None) -> torch.Tensor:
        return loss if alignment is None or self.guide is None else loss + self.guide.weight * alignment


@dataclass(eq=False)
class TrainStep:
    """One optimizer step over this rank's micro-batches, called with the progress it counts skipped steps in."""

    model: Model
    trained: nn.Module  # what the forward runs through: the model, or DDP around it
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    training_loss: TrainingLoss
    cfg: TrainingConfig
    world: World
    device: torch.device
    precision: str
    nonfinite_in_a_row: int = 0

    def __call__(self, share: StepShare, progress: Progress) -> StepResult | None:
        """The step's result; None when it was skipped (non-finite, or out of GPU memory in a single process;
        under DDP that is an error, as the other ranks cannot skip with it). Under DDP gradients are all-reduced
        (averaged) with the last micro-batch's backward only."""
        scale = share.weight * self.world.size / share.tokens  # DDP averages over ranks; this makes it a sum
        loss_sum = alignment_sum = 0.0
        try:
            for position, batch in enumerate(share.batches):
                with self._gradient_sync(last=position == len(share.batches) - 1):
                    loss, alignment = self.training_loss.batch_loss(self.trained, batch, self.precision)
                    self.scaler.scale(self.training_loss.objective(loss, alignment) * scale).backward()
                if alignment is not None:
                    alignment_sum += float(alignment.detach()) * share.weight
                loss_sum += float(loss.detach()) * share.weight
        except torch.cuda.OutOfMemoryError:
            if self.world.distributed:  # skipping here alone would leave the other ranks waiting in all-reduce
                raise TrainingError(f"rank {self.world.rank}: out of GPU memory on {len(share.batches)} batches; "
                                    "lower training.batch_tokens") from None
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            progress.skipped_oom += 1
            log.warning("step %d: out of GPU memory on %d sentences; batch skipped (lower training.batch_tokens)",
                        progress.step + 1, sum(b.size for b in share.batches))
            return None
        loss_sum, alignment_sum = self.world.sum([loss_sum, alignment_sum], self.device)
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or float("inf"))
        if not (math.isfinite(loss_sum + alignment_sum) and bool(torch.isfinite(norm))):
            self._skip_nonfinite(progress)
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.after_step()
        self.nonfinite_in_a_row = 0
        return StepResult(loss_sum / share.tokens, share.tokens, float(norm),
                          alignment_sum / share.tokens if self.training_loss.guide is not None else None)

    def _gradient_sync(self, last: bool) -> AbstractContextManager:
        """DDP all-reduces gradients on the step's last micro-batch only; `no_sync()` on the others."""
        if last or not isinstance(self.trained, DistributedDataParallel):
            return nullcontext()
        return self.trained.no_sync()

    def _skip_nonfinite(self, progress: Progress) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()  # with fp16, lowers the scale
        self.nonfinite_in_a_row += 1
        progress.skipped_nonfinite += 1
        log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", progress.step + 1,
                    self.nonfinite_in_a_row)
        if self.nonfinite_in_a_row >= self.cfg.max_nonfinite:
            raise TrainingError(f"{self.nonfinite_in_a_row} consecutive non-finite steps: lower training.lr, enable "
                                "clipping or use fp32; the last good checkpoint is kept")
