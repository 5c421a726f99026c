"""The data pipeline behind `nmt data`: read and clean every split, train SentencePiece on the training
split, encode, and cache the result under a key made of the config fields it depends on.

Every stage streams, so a corpus larger than memory prepares in bounded memory: cleaned pairs go straight
to the cache's text files, SentencePiece samples at most `tokenizer.max_sentences` of them, and encoding
appends chunk by chunk to flat token files that training memory-maps.

A second run with the same fields loads the cache (memory-mapped arrays); a changed field, or a changed
local input file, builds a new one. The cache folder is built aside and swapped into place whole
(fileio.staged_folder), with a MANIFEST.json written last that holds each file's size and sha256.

Reuse checks every size, then every sha256 (one read of the cache, small next to a training run that
reads it every epoch), so a truncated or overwritten file, or one a power loss cut short, is rebuilt with a
warning naming it instead of feeding training garbage. One process builds a key at a time, holding
`.<key>.lock` beside the cache (fcntl.flock, which the kernel releases when the holder dies); the others
wait, then reuse its result. staged_folder removes the staging folders that killed builds left."""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO

import numpy as np

from nmt.config import CleanConfig, Config, DataConfig, HfSource, Source, TextSource, TokenizerConfig, TsvSource, is_url
from nmt.data.batching import padding_fraction, token_batches
from nmt.data.corpus import stream_split
from nmt.data.tokenizer import Tokenizer, Vocabulary
from nmt.errors import DataError
from nmt.fileio import atomic_write_bytes, atomic_write_text, describe_files, sha256_of, staged_folder
from nmt.progress import progress_bar

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
CACHE_VERSION = 3
SRC_SPM, TGT_SPM = "src.spm", "tgt.spm"
STATS, MANIFEST, VOCAB = "stats.json", "MANIFEST.json", "vocab.json"
SIDES = ("src", "tgt")
ENCODE_CHUNK = 20_000  # sentences encoded at a time


@dataclass
class EncodedSplit:
    """A split's subword ids as flat arrays with offsets (memory-mapped from the cache), and its cleaned text
    (read from the cache only when asked for: training never holds the training text in memory)."""

    src_tokens: np.ndarray
    src_offsets: np.ndarray
    tgt_tokens: np.ndarray
    tgt_offsets: np.ndarray
    text_files: tuple[Path, Path]

    @cached_property
    def src_text(self) -> list[str]:
        return _read_lines(self.text_files[0])

    @cached_property
    def tgt_text(self) -> list[str]:
        return _read_lines(self.text_files[1])

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    @cached_property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @cached_property
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


TRAINING_ONLY = {"sampling", "dropout"}
"""Tokenizer settings that change how training segments each epoch (nmt.data.resegment), not the cache."""


def cache_key(data: DataConfig, tokenizer: TokenizerConfig, given: Tokenizer | None = None) -> str:
    """What the cache depends on: the corpus, its cleaning, and the tokenizer's settings, or the `given`
    tokenizer itself (another run's, with `--init-from`)."""
    payload = {
        "version": CACHE_VERSION,
        "data": data.model_dump(mode="json", exclude={"download_dir", "cache_dir", "mirror", "mirror_subdir"}),
        "tokenizer": tokenizer.model_dump(mode="json", exclude=TRAINING_ONLY) if given is None
        else _tokenizer_digest(given),
        "files": {name: _source_fingerprint(s) for name in SPLITS if (s := getattr(data, name)) is not None},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _tokenizer_digest(tokenizer: Tokenizer) -> dict[str, str | None]:
    return {"src": hashlib.sha256(tokenizer.src_proto).hexdigest(),
            "tgt": hashlib.sha256(tokenizer.tgt_proto).hexdigest(),
            "vocabulary": tokenizer.vocabulary.digest() if tokenizer.vocabulary else None}


def _text_file(folder: Path, split: str, side: str) -> Path:
    return folder / f"{split}.{side}.txt"


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def iter_lines(path: Path) -> Iterator[str]:
    """One cleaned sentence per line (cleaning turned every line break inside a sentence into a space)."""
    with path.open(encoding="utf-8", newline="\n") as handle:
        for line in handle:
            yield line.removesuffix("\n")


def _write_pairs(data: DataConfig, split: str, folder: Path) -> tuple[int, Counter[str]]:
    """Stream a split's cleaned pairs into its two text files; its pair count and the pairs dropped."""
    dropped: Counter[str] = Counter()
    count = 0
    with _text_file(folder, split, "src").open("w", encoding="utf-8", newline="\n") as src, \
            _text_file(folder, split, "tgt").open("w", encoding="utf-8", newline="\n") as tgt, \
            progress_bar(desc=f"read {split}", unit="pair", leave=False) as bar:
        for s, t in stream_split(data, split, dropped):
            src.write(s + "\n")
            tgt.write(t + "\n")
            count += 1
            if count % 10_000 == 0:
                bar.update(10_000)
        bar.update(count % 10_000)
    return count, dropped


def _encode_file(lines: Path, encode: Callable[[list[str]], list[list[int]]], tokens_path: Path,
                 offsets_path: Path, count: int, desc: str) -> int:
    """Encode a text file chunk by chunk, appending int32 ids to `tokens_path`; writes the offsets, returns
    the number of tokens."""
    lengths = []
    source = iter_lines(lines)
    with tokens_path.open("wb") as out, progress_bar(total=count, desc=desc, unit="sent", leave=False) as bar:
        while chunk := list(itertools.islice(source, ENCODE_CHUNK)):
            ids = encode(chunk)
            lengths.append(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)))
            out.write(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32).tobytes())
            bar.update(len(chunk))
    offsets = np.zeros(count + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
    np.save(offsets_path, offsets)
    return int(offsets[-1])


def _tokens_file(folder: Path, split: str, side: str) -> Path:
    return folder / f"{split}.{side}_tokens.int32"


def _offsets_file(folder: Path, split: str, side: str) -> Path:
    return folder / f"{split}.{side}_offsets.npy"


def _nothing_left(split: str, purpose: str, dropped: Counter[str], clean: CleanConfig) -> DataError:
    """The error for a split with no pair left: what cleaning dropped, by reason and the setting behind it,
    or that the split was empty to begin with."""
    why = {"empty": "a side without text",
           "too_long": f"a side over data.clean.max_chars={clean.max_chars} characters",
           "length_ratio": f"lengths further apart than data.clean.max_length_ratio={clean.max_length_ratio:g}"}
    reasons = ", ".join(f"{count} {reason} ({why.get(reason, reason)})"
                        for reason, count in sorted(dropped.items()) if count)
    found = f"all {sum(dropped.values())} dropped by cleaning: {reasons}" if reasons else "empty"
    return DataError(f"data.{split}: no sentence pair to {purpose} ({found})")


def _build(config: Config, folder: Path, given: Tokenizer | None) -> None:
    data = config.data
    pairs, dropped = {}, {}
    purposes = {"train": "train on", "dev": "validate on"}  # refused here, not in SentencePiece or at validation
    for name in SPLITS:
        if getattr(data, name) is not None:
            pairs[name], dropped[name] = _write_pairs(data, name, folder)
            if not pairs[name] and name in purposes:
                raise _nothing_left(name, purposes[name], dropped[name], data.clean)
    tokenizer = given or Tokenizer.train(iter_lines(_text_file(folder, "train", "src")),
                                         iter_lines(_text_file(folder, "train", "tgt")), config.tokenizer)
    atomic_write_bytes(folder / SRC_SPM, tokenizer.src_proto)
    atomic_write_bytes(folder / TGT_SPM, tokenizer.tgt_proto)
    if tokenizer.vocabulary is not None:
        atomic_write_text(folder / VOCAB, tokenizer.vocabulary.to_text())
    stats: dict = {"splits": {}, "src_vocab_size": tokenizer.src_vocab_size,
                   "tgt_vocab_size": tokenizer.tgt_vocab_size}
    encoders = {"src": tokenizer.encode_src, "tgt": tokenizer.encode_tgt}
    for name, count in pairs.items():
        tokens = {side: _encode_file(_text_file(folder, name, side), encoders[side], _tokens_file(folder, name, side),
                                     _offsets_file(folder, name, side), count, f"encode {name} {side}")
                  for side in SIDES}
        stats["splits"][name] = {"pairs": count, "src_tokens": tokens["src"], "tgt_tokens": tokens["tgt"],
                                 "dropped": dict(dropped[name])}
    atomic_write_text(folder / STATS, json.dumps(stats, indent=2) + "\n")
    _write_manifest(folder)


def _write_manifest(folder: Path) -> None:
    """Record every file's size and sha256, last: a folder without a manifest is no complete cache."""
    atomic_write_text(folder / MANIFEST, json.dumps({"files": describe_files(folder)}, indent=2) + "\n")


def _needed_files(stats: dict) -> set[str]:
    """The files that loading the cache described by `stats` opens."""
    names = {STATS, SRC_SPM, TGT_SPM}
    for split in stats["splits"]:
        for side in SIDES:
            names |= {f(Path(), split, side).name for f in (_text_file, _tokens_file, _offsets_file)}
    return names


ABSENT = "absent"


def _damage(folder: Path) -> str | None:
    """What is wrong with a cache folder, naming the file (ABSENT when there is none), or None when every file
    matches MANIFEST.json. Sizes are compared first, so a truncated file is named without hashing anything."""
    if not os.path.lexists(folder):
        return ABSENT
    try:
        entries = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        recorded = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in entries.items()}
    except FileNotFoundError:
        return f"no {MANIFEST} (a build that never finished, or one by an older nmt)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{MANIFEST} is unreadable"
    if STATS not in recorded:
        return f"{STATS} is not in {MANIFEST}"
    try:
        present = set(os.listdir(folder))
        for name, (size, _) in recorded.items():
            if name not in present:
                return f"{name} is missing"
            if (actual := (folder / name).stat().st_size) != size:
                return f"{name} is {'truncated' if actual < size else 'longer'}: {actual} bytes, {MANIFEST} " \
                       f"records {size}"
        for name, (_, digest) in recorded.items():
            if sha256_of(folder / name) != digest:
                return f"{name} is corrupted (its sha256 does not match {MANIFEST})"
        needed = _needed_files(json.loads((folder / STATS).read_text(encoding="utf-8")))
    except OSError as err:
        return f"{Path(err.filename or '?').name} cannot be read ({err.strerror})"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{STATS} is unreadable"
    if missing := sorted(needed - recorded.keys()):
        return f"{missing[0]} is not in {MANIFEST}"
    return None


def _map_tokens(path: Path) -> np.ndarray:
    """The int32 ids of a token file, memory-mapped (numpy cannot map an empty file)."""
    return np.memmap(path, dtype=np.int32, mode="r") if path.stat().st_size else np.zeros(0, dtype=np.int32)


def _load(folder: Path, reused: bool) -> PreparedData:
    """Map a cache that `_damage` found intact."""
    stats = json.loads((folder / STATS).read_text(encoding="utf-8"))
    splits = {}
    for name in stats["splits"]:
        splits[name] = EncodedSplit(
            _map_tokens(_tokens_file(folder, name, "src")), np.load(_offsets_file(folder, name, "src"), mmap_mode="r"),
            _map_tokens(_tokens_file(folder, name, "tgt")), np.load(_offsets_file(folder, name, "tgt"), mmap_mode="r"),
            (_text_file(folder, name, "src"), _text_file(folder, name, "tgt")))
    vocabulary = Vocabulary.from_text((folder / VOCAB).read_text(encoding="utf-8")) if (folder / VOCAB).is_file() \
        else None
    tokenizer = Tokenizer((folder / SRC_SPM).read_bytes(), (folder / TGT_SPM).read_bytes(), vocabulary)
    return PreparedData(tokenizer, splits, stats, folder, reused)


def _lock_file(cache_dir: Path, key: str) -> IO[str]:
    """`.<key>.lock`: whoever holds it builds that key and owns its staging folders. Never deleted, since a
    lock file removed while another process waits on it would let two builders in."""
    return open(cache_dir / f".{key}.lock", "a+", encoding="utf-8")


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _hold_build_lock(folder: Path) -> IO[str]:
    """Take the right to build `folder`, waiting for a live builder; the file names the holder."""
    handle = _lock_file(folder.parent, folder.name)
    try:
        if not _try_lock(handle):
            handle.seek(0)
            log.info("waiting for %s, which is building %s", handle.read().strip() or "another process", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"nmt, pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
    except BaseException:
        handle.close()  # releases the lock: a traceback kept alive (a notebook's) must not block other builders
        raise
    return handle


def cache_folder(config: Config, tokenizer: Tokenizer | None = None) -> Path:
    return Path(config.data.cache_dir) / cache_key(config.data, config.tokenizer, tokenizer)


def wait_for_cache(config: Config, tokenizer: Tokenizer | None = None, poll_seconds: float = 0.5) -> None:
    """Block until another process (torchrun's rank 0) has published the cache for `config`."""
    done = cache_folder(config, tokenizer) / MANIFEST
    while not done.is_file():
        time.sleep(poll_seconds)


def prepare_data(config: Config, tokenizer: Tokenizer | None = None) -> PreparedData:
    """Return the encoded corpus for `config`: the cache when its key matches and every file is intact, else
    built now. A damaged cache is rebuilt with a warning naming the file, or refused in one line when its
    folder cannot be written. A given `tokenizer` encodes the corpus instead of one trained on it."""
    folder = cache_folder(config, tokenizer)
    damage = _damage(folder)
    if damage is None:
        log.info("reusing cached corpus %s", folder)
        return _load(folder, reused=True)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        lock = _hold_build_lock(folder)
    except OSError as err:
        if damage == ABSENT:
            raise
        raise DataError(f"cache {folder} is damaged ({damage}) and cannot be rebuilt: {err.filename}: "
                        f"{err.strerror}") from None
    with lock:
        damage = _damage(folder)
        if damage is None:  # built by the process we waited for
            log.info("reusing cached corpus %s", folder)
            return _load(folder, reused=True)
        if damage != ABSENT:
            log.warning("cache %s: %s; rebuilding it", folder, damage)
        with staged_folder(folder, siblings=True) as staging:  # a damaged cache is swapped out whole, then removed
            _build(config, staging, tokenizer)
    return _load(folder, reused=False)


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
