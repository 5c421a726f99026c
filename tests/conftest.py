"""Shared fixtures: a generated reversal corpus on disk, a config writer, and one small trained run."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from nmt.config import load_config

WORDS = "ab ca de fo gu hi jo ku le mi no pa".split()


def reversal_pairs(count: int, seed: int, min_len: int = 2, max_len: int = 6) -> list[tuple[str, str]]:
    """Source: random words; target: the same words reversed and upper-cased (a task attention must learn)."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_len, max_len))]
        pairs.append((" ".join(words), " ".join(w.upper() for w in reversed(words))))
    return pairs


def write_pairs(folder: Path, split: str, pairs: list[tuple[str, str]]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    src, tgt = folder / f"{split}.src", folder / f"{split}.tgt"
    src.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    tgt.write_text("".join(t + "\n" for _, t in pairs), encoding="utf-8")
    return src, tgt


def toy_config_dict(root: Path, **sections) -> dict:
    corpus = root / "corpus"
    train_src, train_tgt = write_pairs(corpus, "train", reversal_pairs(1500, seed=1))
    dev_src, dev_tgt = write_pairs(corpus, "dev", reversal_pairs(60, seed=2))
    test_src, test_tgt = write_pairs(corpus, "test", reversal_pairs(40, seed=3))
    raw = {
        "name": "toy",
        "run_dir": str(root / "run"),
        "seed": 7,
        "data": {
            "src_lang": "xx", "tgt_lang": "yy",
            "cache_dir": str(root / "cache"), "download_dir": str(root / "downloads"),
            "train": {"format": "text", "src": str(train_src), "tgt": str(train_tgt)},
            "dev": {"format": "text", "src": str(dev_src), "tgt": str(dev_tgt)},
            "test": {"format": "text", "src": str(test_src), "tgt": str(test_tgt)},
        },
        "tokenizer": {"vocab_size": 40, "model_type": "bpe"},
        "model": {"embed_dim": 48, "encoder": {"hidden_size": 48, "dropout": 0.0},
                  "decoder": {"hidden_size": 64, "dropout": 0.0}},
        "training": {"batch_tokens": 600, "lr": 0.005, "max_steps": 40, "validate_every": 20, "log_every": 10,
                     "label_smoothing": 0.0},
        "decoding": {"beam_size": 3, "batch_sentences": 64},
        "evaluation": {"tokenize": "13a"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def write_config(root: Path, raw: dict) -> Path:
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def toy_config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path, toy_config_dict(tmp_path))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A Luong-general model trained on the reversal corpus until it translates it (shared, trained once)."""
    from nmt.train import train

    root = tmp_path_factory.mktemp("trained")
    raw = toy_config_dict(root, training={"max_steps": 400, "validate_every": 200, "lr": 0.01},
                          model={"attention": {"type": "general"}})
    result = train(load_config(write_config(root, raw)), progress=False)
    assert result.best_bleu > 80, f"the toy model did not learn the reversal task (dev BLEU {result.best_bleu})"
    return result.run_dir
