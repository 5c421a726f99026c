"""The data pipeline behind `nmt data`: read and clean every split, train SentencePiece on the training
split, encode, and cache the result under a key made of the config fields it depends on.

A second run with the same fields loads the cache (memory-mapped arrays); a changed field, or a changed
local input file, builds a new one. The cache folder is built aside and renamed into place when complete."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nmt.batching import padding_fraction, token_batches
from nmt.config import Config, DataConfig, HfSource, Source, TextSource, TokenizerConfig, TsvSource, is_url
from nmt.corpus import load_split
from nmt.fileio import atomic_write_bytes, atomic_write_text
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
CACHE_VERSION = 2
SRC_SPM, TGT_SPM = "src.spm", "tgt.spm"


@dataclass
class EncodedSplit:
    """A split's subword ids as flat arrays with offsets (memory-mapped from the cache), plus its text."""

    src_tokens: np.ndarray
    src_offsets: np.ndarray
    tgt_tokens: np.ndarray
    tgt_offsets: np.ndarray
    src_text: list[str]
    tgt_text: list[str]

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets)

    def src_ids(self, i: int) -> np.ndarray:
        return self.src_tokens[self.src_offsets[i]:self.src_offsets[i + 1]]

    def tgt_ids(self, i: int) -> np.ndarray:
        return self.tgt_tokens[self.tgt_offsets[i]:self.tgt_offsets[i + 1]]


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    splits: dict[str, EncodedSplit]
    stats: dict
    cache_dir: Path
    reused: bool


def _source_fingerprint(source: Source) -> dict:
    """What identifies a source's content: URLs by themselves (and checksum), local files by size and mtime."""

    def one(location: str) -> str:
        if is_url(location):
            return location
        stat = Path(location).stat()
        return f"{Path(location).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"

    if isinstance(source, TextSource):
        return {"src": one(source.src), "tgt": one(source.tgt)}
    if isinstance(source, TsvSource):
        return {"path": one(source.path)}
    assert isinstance(source, HfSource)
    return {"hf": source.name}


def cache_key(data: DataConfig, tokenizer: TokenizerConfig) -> str:
    payload = {
        "version": CACHE_VERSION,
        "data": data.model_dump(mode="json", exclude={"download_dir", "cache_dir", "mirror", "mirror_subdir"}),
        "tokenizer": tokenizer.model_dump(mode="json"),
        "files": {name: _source_fingerprint(s) for name in SPLITS if (s := getattr(data, name)) is not None},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _flatten(sequences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter((t for s in sequences for t in s), dtype=np.int32, count=int(offsets[-1]))
    return tokens, offsets


def _build(config: Config, folder: Path) -> None:
    data = config.data
    corpora = {name: load_split(data, name) for name in SPLITS if getattr(data, name) is not None}
    tokenizer = Tokenizer.train(corpora["train"].src, corpora["train"].tgt, config.tokenizer)
    atomic_write_bytes(folder / SRC_SPM, tokenizer.src_proto)
    atomic_write_bytes(folder / TGT_SPM, tokenizer.tgt_proto)
    stats: dict = {"splits": {}, "src_vocab_size": tokenizer.src_vocab_size,
                   "tgt_vocab_size": tokenizer.tgt_vocab_size}
    for name, corpus in corpora.items():
        src_tokens, src_offsets = _flatten(tokenizer.encode_src(corpus.src, progress=f"encode {name} source"))
        tgt_tokens, tgt_offsets = _flatten(tokenizer.encode_tgt(corpus.tgt, progress=f"encode {name} target"))
        for label, array in (("src_tokens", src_tokens), ("src_offsets", src_offsets),
                             ("tgt_tokens", tgt_tokens), ("tgt_offsets", tgt_offsets)):
            np.save(folder / f"{name}.{label}.npy", array)
        (folder / f"{name}.src.txt").write_text("".join(s + "\n" for s in corpus.src), encoding="utf-8")
        (folder / f"{name}.tgt.txt").write_text("".join(t + "\n" for t in corpus.tgt), encoding="utf-8")
        stats["splits"][name] = {"pairs": len(corpus), "src_tokens": int(len(src_tokens)),
                                 "tgt_tokens": int(len(tgt_tokens)), "dropped": dict(corpus.dropped)}
    atomic_write_text(folder / "stats.json", json.dumps(stats, indent=2) + "\n")


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def load_cache(folder: Path) -> PreparedData:
    stats = json.loads((folder / "stats.json").read_text())
    splits = {}
    for name in stats["splits"]:
        arrays = {label: np.load(folder / f"{name}.{label}.npy", mmap_mode="r")
                  for label in ("src_tokens", "src_offsets", "tgt_tokens", "tgt_offsets")}
        splits[name] = EncodedSplit(**arrays, src_text=_read_lines(folder / f"{name}.src.txt"),
                                    tgt_text=_read_lines(folder / f"{name}.tgt.txt"))
    tokenizer = Tokenizer((folder / SRC_SPM).read_bytes(), (folder / TGT_SPM).read_bytes())
    return PreparedData(tokenizer, splits, stats, folder, reused=True)


def prepare_data(config: Config) -> PreparedData:
    """Return the encoded corpus for `config`, from the cache when its key matches, else built now."""
    folder = Path(config.data.cache_dir) / cache_key(config.data, config.tokenizer)
    if (folder / "stats.json").is_file():
        log.info("reusing cached corpus %s", folder)
        return load_cache(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _build(config, staging)
        if folder.exists():  # an incomplete earlier build: no stats.json
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    prepared = load_cache(folder)
    prepared.reused = False
    return prepared


@dataclass
class SplitSummary:
    name: str
    pairs: int
    src_tokens: int
    tgt_tokens: int
    dropped: dict[str, int]  # training pairs dropped by cleaning, by reason


@dataclass
class DataSummary:
    """What `nmt data` reports: the cache, each split's size, the vocabularies, the training batches."""

    cache_dir: Path
    reused: bool
    splits: list[SplitSummary]
    src_vocab_size: int
    tgt_vocab_size: int
    train_batches: int
    padding: float  # share of padded positions in the training batches


def summarize_data(config: Config) -> DataSummary:
    """Prepare (or load) the corpus and describe it."""
    prepared = prepare_data(config)
    stats = prepared.stats
    splits = [SplitSummary(name, s["pairs"], s["src_tokens"], s["tgt_tokens"], dict(s["dropped"]))
              for name, s in stats["splits"].items()]
    train = prepared.splits["train"]
    batches = token_batches(train.src_lengths, train.tgt_lengths, config.training.batch_tokens,
                            config.training.max_batch_sentences, seed=config.seed)
    return DataSummary(prepared.cache_dir, prepared.reused, splits, stats["src_vocab_size"], stats["tgt_vocab_size"],
                       len(batches), padding_fraction(batches, train.src_lengths, train.tgt_lengths))
