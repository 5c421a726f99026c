"""The attention chapter's runs, shared by its notebooks.

A notebook asks for the runs it needs by name (`chapter.run("enja_bahdanau")`); a run is trained once, into
runs/notebooks/NAME, and every later notebook reuses it, so a model is never trained twice and the same
model is compared across notebooks. `python notebooks/chapter.py` (`make notebook-runs`) trains them all
ahead of time.

Budget: NMT_NOTEBOOK_MINUTES (default 2) minutes of training per model, half that for the four small
models of exercise 4.5, so that `make notebooks` runs in a few CPU minutes per notebook. Small budgets
give rough models; `NMT_NOTEBOOK_MINUTES=10 make notebook-runs` (after `rm -r runs/notebooks`) trains
sharper ones, which every notebook then uses.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Configs, the data cache and runs/ are relative to the repository root. The offline mirror of the corpora
# is used when it is there (NMT_DATA_MIRROR), as `make` does; without it the corpora are downloaded.
ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)
if (ROOT.parent / "shared" / "data").is_dir():
    os.environ.setdefault("NMT_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))
MINUTES = float(os.environ.get("NMT_NOTEBOOK_MINUTES", "2"))
RUNS_DIR = Path("runs/notebooks")

import nmt  # noqa: E402  (after the working directory and the mirror are set)
from nmt.errors import NmtError  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    """How one of the chapter's runs is trained: a shipped config, the overrides that make it small, and its
    share of the per-model budget."""

    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    share: float = 1.0


def _gru(attention: dict[str, Any]) -> Recipe:
    """The English->Japanese GRU encoder-decoders of 4.2-4.5, identical but for the attention. Short sentences,
    a small vocabulary and small states: more steps in the same minutes. The decoder state is as wide as the
    bidirectional encoder's outputs (2 x 128), which Luong's dot score needs."""
    return Recipe("configs/enja_bahdanau.yaml", {
        "data": {"clean": {"max_chars": 40}},
        "tokenizer": {"vocab_size": 2000},
        "model": {"embed_dim": 128, "encoder": {"hidden_size": 128}, "decoder": {"hidden_size": 256},
                  "attention": attention},
        "training": {"batch_tokens": 1500, "lr": 0.003, "validate_every": 200},
        "decoding": {"beam_size": 1, "length_penalty": 0.0},
    })


def _transformer(attention_dropout: float = 0.1, share: float = 1.0) -> Recipe:
    """The small German->English Multi30k Transformers of 4.6 and exercise 4.5: 2+2 layers, 4 heads."""
    return Recipe("configs/multi30k_deen_transformer.yaml", {
        "data": {"clean": {"max_chars": 60}},
        "tokenizer": {"vocab_size": 2000},
        "model": {"transformer": {"d_model": 64, "heads": 4, "ff_size": 128, "encoder_layers": 2,
                                  "decoder_layers": 2, "attention_dropout": attention_dropout}},
        "training": {"batch_tokens": 1500, "lr": 0.002, "validate_every": 200, "schedule": {"warmup_steps": 50}},
        "decoding": {"beam_size": 1, "max_ratio": 1.5, "max_extra": 5},  # English is about as long as German
    }, share)


RUNS: dict[str, Recipe] = {
    "enja_bahdanau": _gru({"type": "bahdanau"}),
    "enja_luong_dot": _gru({"type": "dot"}),
    "enja_luong_general": _gru({"type": "general"}),
    "enja_luong_concat": _gru({"type": "concat"}),
    "deen_transformer": _transformer(),
    **{f"deen_attention_dropout_{p}": _transformer(p, share=0.5) for p in (0.0, 0.1, 0.2, 0.3)},
}


def run(name: str) -> nmt.Run:
    """The chapter's run `name`: loaded when it has been trained, else trained now (the notebook shows a
    progress bar) and loaded. A run stopped before its first checkpoint (a kernel restarted mid-training)
    trains from the start again (`resume` starts afresh where no checkpoint is intact)."""
    run_dir = RUNS_DIR / name
    try:
        return nmt.load(run_dir)
    except NmtError:  # not trained yet, or stopped before its first checkpoint
        pass
    recipe = RUNS[name]
    overrides = {**recipe.overrides, "training": {**recipe.overrides["training"],
                                                  "max_minutes": MINUTES * recipe.share}}
    return nmt.train(recipe.config, resume=True, run_dir=str(run_dir), **overrides)


if __name__ == "__main__":
    for name in sys.argv[1:] or RUNS:
        print(run(name))
