"""`nmt compare`: what finished (or stopped) training runs achieved, side by side, from their run directories
alone: no model is built."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from nmt.errors import CheckpointError, ConfigError
from nmt.inspect.plots import bar_figure, save_figure
from nmt.runs.checkpoint import best_files, read_scores
from nmt.runs.loading import load_run_config
from nmt.runs.rundir import RunDir


@dataclass
class RunSummary:
    run: str
    model: str  # architecture and attention, e.g. "rnn, bahdanau" or "transformer 3+3x256, 4 heads"
    parameters: int | None  # None for runs trained before checkpoints recorded it
    minutes: float
    tokens_per_s: float
    peak_rss_mb: float
    dev_bleu: float
    dev_chrf: float
    test_bleu: float | None
    entropy: float


def summarize_run(run_dir: Path) -> RunSummary:
    """What a finished (or stopped) training run achieved, from the files in its directory; builds no model."""
    run = RunDir(run_dir)
    config = load_run_config(run)
    validations = [r for r in run.metrics() if "dev_bleu" in r]
    best = best_files(run)
    if not validations or best is None:
        raise ConfigError(f"{run_dir}: no validation recorded yet (train it first)")
    try:
        meta = read_scores(best)
    except CheckpointError as err:
        raise ConfigError(str(err)) from None
    last = validations[-1]
    tests = run.eval_reports("test")
    test_bleu = json.loads(tests[0].read_text())["scores"]["BLEU"]["score"] if tests else None
    return RunSummary(run_dir.name, config.model.summary, meta.get("parameters"), last["elapsed"] / 60,
                      last["train_tokens_per_s"], last["peak_rss_mb"], meta["dev_bleu"], meta.get("dev_chrf", 0.0),
                      test_bleu, meta.get("dev_attention_entropy", 0.0))


def compare_figure(summaries: Sequence[RunSummary]) -> Figure:
    """Best dev BLEU, attention entropy and training speed per run."""
    return bar_figure([s.run for s in summaries], {"best dev BLEU": [s.dev_bleu for s in summaries],
                                                   "dev attention entropy (nats)": [s.entropy for s in summaries],
                                                   "training tokens/s": [s.tokens_per_s for s in summaries]},
                      "runs side by side", xlabel="run")


def compare_plot(summaries: Sequence[RunSummary], path: Path) -> Path:
    return save_figure(compare_figure(summaries), path)
