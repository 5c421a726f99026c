"""When training stops (a budget spent, early stopping's patience run out, SIGINT / SIGTERM), and what a stopped
run reports. The data running out after max_epochs ends the loop by itself."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nmt.config import TrainingConfig
from nmt.runs.checkpoint import best_files, read_scores
from nmt.runs.rundir import RunDir
from nmt.training.distributed import World
from nmt.training.step import Progress

log = logging.getLogger(__name__)

SIGNALS = ("SIGINT", "SIGTERM")  # the stop reasons on which a run saves without validating


class StopSignal:
    """Turns SIGINT / SIGTERM into a flag the loop checks after each step, so it can save and exit cleanly."""

    def __init__(self) -> None:
        self.received: str | None = None

    @contextmanager
    def installed(self) -> Iterator[StopSignal]:
        def handler(signum, _frame):
            self.received = signal.Signals(signum).name

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def stop_reasons(cfg: TrainingConfig, progress: Progress, seconds: float | None, stop: StopSignal) -> set[str]:
    """Why the loop must stop before its next step, if it must. `seconds` is None on ranks other than 0, whose
    clock decides alone."""
    reasons = set()
    if cfg.max_steps is not None and progress.step >= cfg.max_steps:
        reasons.add("max_steps")
    if cfg.max_minutes is not None and seconds is not None and seconds >= cfg.max_minutes * 60:
        reasons.add("max_minutes")
    if cfg.patience is not None and progress.bad_validations >= cfg.patience:
        reasons.add("patience")
    if stop.received:
        reasons.add(stop.received)
    return reasons


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_bleu: float  # of the checkpoint `--checkpoint best` takes: the weights, or their moving average
    stop_reason: str
    rank: int = 0
    ranks: int = 1  # processes in the job: more than 1 under torchrun
    minutes: float = 0.0  # wall-clock training time over all sessions of the run
    tokens_per_s: float = 0.0  # target tokens per second inside optimizer steps, over all sessions
    moving_average: bool = False  # the best dev BLEU is the moving average's (training.ema)

    def summary(self) -> str:
        """One line that says what the run reached and how fast: what to compare across machines."""
        return (f"{self.run_dir}: {self.steps} steps ({self.stop_reason}) in {self.minutes:.1f} min, "
                f"{self.tokens_per_s:,.0f} target tokens/s, best dev BLEU {self.best_bleu:.2f}"
                f"{' (moving average)' if self.moving_average else ''}")


def stopped(reason: str, progress: Progress, run: RunDir, world: World) -> TrainResult:
    """Log why the run stopped (after a signal, with how to continue it) and return what it reached: the best dev
    BLEU of the trained weights, or of their moving average where rank 0's checkpoints show it higher."""
    if reason in SIGNALS:
        log.info("%s: saved %s; continue with: nmt train --config %s --resume", reason,
                 run.checkpoint(progress.step).folder, run.config_path)
    best = best_files(run) if world.is_main else None
    moving_average = best is not None and best.ema
    best_bleu = float(read_scores(best)["dev_bleu"]) if best is not None and best.ema else progress.best_bleu
    log.info("stopped (%s) after %d steps; best dev BLEU %.2f%s; skipped steps: %d non-finite, %d out of memory",
             reason, progress.step, best_bleu, " (moving average)" if moving_average else "",
             progress.skipped_nonfinite, progress.skipped_oom)
    return TrainResult(run.path, progress.step, best_bleu, reason, world.rank, world.size, progress.elapsed / 60,
                       progress.tokens / max(1e-9, progress.train_seconds), moving_average)
