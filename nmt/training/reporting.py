"""What a run reports while it trains: train.log gets every INFO record, and between validations the mean loss,
gradient norm (and guided alignment's loss) and target tokens/s since the last report go to metrics.jsonl,
TensorBoard, the progress bar and the log."""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from nmt.runs.rundir import RunDir
from nmt.training.distributed import World
from nmt.training.step import Progress, StepResult
from nmt.training.tensorboard import TensorBoardLog

log = logging.getLogger(__name__)


@contextmanager
def log_to(path: Path) -> Iterator[None]:
    """train.log gets every INFO record (the validations) whoever called: the CLI, or Python, where logging is
    often left at its WARNING default."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("nmt")
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


class ThroughputMeter:
    """The steps since the last report; every rank keeps one, rank 0 alone writes the report."""

    def __init__(self, run_dir: RunDir, board: TensorBoardLog | None, world: World) -> None:
        self.run_dir, self.board, self.world = run_dir, board, world
        self.reset()

    def reset(self) -> None:
        self.tokens, self.start = 0, time.monotonic()
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.alignment_losses: list[float] = []

    def restart_clock(self) -> None:
        """Leave time spent outside training (validation) out of the rate."""
        self.start = time.monotonic()

    def add(self, result: StepResult) -> None:
        self.tokens += result.tokens
        self.losses.append(result.loss)
        self.grad_norms.append(result.grad_norm)
        if result.alignment_loss is not None:
            self.alignment_losses.append(result.alignment_loss)

    def report(self, progress: Progress, lr: float, started: float, bar: tqdm) -> None:
        """Report the steps since the last report and start counting anew; `started`: when training started,
        on the monotonic clock (earlier sessions included)."""
        rate = self.tokens / max(1e-9, time.monotonic() - self.start)
        mean_loss = sum(self.losses) / max(1, len(self.losses))
        grad_norm = sum(self.grad_norms) / max(1, len(self.grad_norms))
        alignment = sum(self.alignment_losses) / len(self.alignment_losses) if self.alignment_losses else None
        guided = {} if alignment is None else {"alignment_loss": alignment}
        self.reset()
        if not self.world.is_main:
            return
        if self.board is not None:
            self.board.scalars(progress.step, "train", {"loss": mean_loss, "lr": lr, "tokens_per_s": rate,
                                                        "grad_norm": grad_norm, **guided})
        bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{rate:,.0f}", lr=f"{lr:.1e}")
        if bar.disable:
            log.info("step %d | epoch %d | loss %.3f%s | %s tok/s | lr %.2e", progress.step, progress.epoch + 1,
                     mean_loss, "" if alignment is None else f" | alignment {alignment:.3f}", f"{rate:,.0f}", lr)
        self.run_dir.append_metrics({"step": progress.step, "epoch": progress.epoch + 1, "loss": mean_loss, **guided,
                                     "tokens_per_s": rate, "lr": lr, "elapsed": time.monotonic() - started})


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process, and on a GPU the peak of tensors allocated there."""
    peaks = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peaks["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peaks
