"""A generated toy task, the first proof that a model can learn: reverse a sequence of words (and
upper-case it). Solving it needs attention to find the mirrored source word. Used by the tests and the
fault-injection script, and handy for trying a config change in seconds."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

WORDS = "ab ca de fo gu hi jo ku le mi no pa".split()


def reverse_words(sentence: str) -> str:
    """The task's answer: the words in reverse order, upper-cased ("ab ca" -> "CA AB")."""
    return " ".join(word.upper() for word in reversed(sentence.split()))


def reversal_pairs(count: int, seed: int, min_len: int = 2, max_len: int = 6) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        source = " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_len, max_len)))
        pairs.append((source, reverse_words(source)))
    return pairs


def write_pairs(folder: Path, split: str, pairs: list[tuple[str, str]]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    src, tgt = folder / f"{split}.src", folder / f"{split}.tgt"
    src.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    tgt.write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return src, tgt


def toy_config_dict(root: Path, **sections) -> dict:
    """A complete config for the reversal task under `root` (corpus written there); `sections` update it."""
    corpus = root / "corpus"
    splits = {name: write_pairs(corpus, name, reversal_pairs(count, seed))
              for name, count, seed in (("train", 1500, 1), ("dev", 60, 2), ("test", 40, 3))}
    import torch

    raw: dict[str, Any] = {
        "name": "toy",
        "run_dir": str(root / "run"),
        "seed": 7,
        "data": {
            "src_lang": "xx", "tgt_lang": "yy",
            "cache_dir": str(root / "cache"), "download_dir": str(root / "downloads"),
            **{name: {"format": "text", "src": str(src), "tgt": str(tgt)} for name, (src, tgt) in splits.items()},
        },
        "tokenizer": {"vocab_size": 40, "model_type": "bpe"},
        "model": {"embed_dim": 48, "encoder": {"hidden_size": 48, "dropout": 0.0},
                  "decoder": {"hidden_size": 64, "dropout": 0.0}},
        # threads pinned: threads that followed the machine's load could change float sums between two trainings
        # that a test compares bit for bit
        "training": {"batch_tokens": 600, "lr": 0.005, "max_steps": 40, "validate_every": 20, "log_every": 10,
                     "label_smoothing": 0.0, "threads": torch.get_num_threads()},
        "decoding": {"beam_size": 3, "batch_sentences": 64},
        "evaluation": {"tokenize": "13a"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def write_config(root: Path, raw: dict) -> Path:
    import yaml

    path = root / "toy.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path
