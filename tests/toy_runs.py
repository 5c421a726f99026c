"""The two trained toy runs the suite shares (fixtures in conftest.py), written once so that
scripts/learning_spread.py trains exactly what the fixtures train when it measures their spread over seeds
and CPU kernels. The thresholds the fixtures assert are set from that measurement (README, "Tests")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toy import toy_config_dict, write_config

# Both recipes decay the learning rate linearly to zero, so training ends on a plateau rather than wherever a
# constant rate left it: the last validation is then far from the thresholds whatever the CPU's kernels.
RNN_RUN: dict[str, Any] = {
    "training": {"max_steps": 800, "validate_every": 400, "lr": 0.005,
                 "schedule": {"type": "warmup_linear", "warmup_steps": 20}},
    "model": {"attention": {"type": "general"}}}

TOY_TRANSFORMER = {"type": "transformer", "transformer": {
    "d_model": 32, "heads": 4, "ff_size": 64, "encoder_layers": 2, "decoder_layers": 2, "dropout": 0.0,
    "attention_dropout": 0.0, "tie": "all"}}

TRANSFORMER_RUN: dict[str, Any] = {
    "model": TOY_TRANSFORMER, "tokenizer": {"joint": True, "vocab_size": 60},
    "training": {"max_steps": 1000, "validate_every": 500, "lr": 0.004, "label_smoothing": 0.0,
                 "schedule": {"type": "warmup_linear", "warmup_steps": 50}}}

RECIPES = {"rnn": RNN_RUN, "transformer": TRANSFORMER_RUN}

# Sentences the tests translate and compare with the task's answer (toy.reverse_words).
PROBES = ["ab ca de", "fo gu hi jo", "ab ca de fo", "ab ca de fo gu", "le mi"]

# The least dev BLEU a fixture must reach: well below the worst of the measured spread (see the README).
MIN_DEV_BLEU = 80.0


def toy_run_config(root: Path, recipe: str, seed: int | None = None) -> Path:
    """Write the config of one recipe (optionally with another seed) under `root`; returns its path."""
    raw = toy_config_dict(root, **RECIPES[recipe])
    if seed is not None:
        raw["seed"] = seed
    return write_config(root, raw)
