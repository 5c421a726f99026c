"""Read aligned sentence pairs from any declared source, normalize them and filter the training split.

Readers are strict: a misaligned pair of files, a line that is not UTF-8 or a short TSV row is an error
naming the file and line, never a silently shifted corpus."""

from __future__ import annotations

import gzip
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from nmt.config import CleanConfig, DataConfig, HfSource, Source, TextSource, TsvSource
from nmt.download import fetch
from nmt.errors import DataError


@dataclass
class Corpus:
    src: list[str]
    tgt: list[str]
    dropped: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.src)


def _decode_lines(handle: Iterable[bytes], name: str) -> Iterator[str]:
    for number, raw in enumerate(handle, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{name} line {number}: invalid UTF-8 (byte {err.start})") from None
        if number == 1:
            line = line.removeprefix("\ufeff")
        yield line.removesuffix("\n").removesuffix("\r")


def read_lines(path: Path) -> Iterator[str]:
    """Yield the lines of a plain or gzipped UTF-8 file without line ends (LF or CRLF) or a leading BOM."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            yield from _decode_lines(handle, str(path))
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None


def read_stream(handle: BinaryIO, name: str) -> list[str]:
    """The lines of an open binary stream (standard input), decoded as strictly as files."""
    return list(_decode_lines(handle, name))


def read_text_pair(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    src, tgt = list(read_lines(src_path)), list(read_lines(tgt_path))
    if len(src) != len(tgt):
        raise DataError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: the sides must be aligned line by line"
        )
    return src, tgt


def read_tsv(path: Path, src_column: int, tgt_column: int) -> tuple[list[str], list[str]]:
    src, tgt = [], []
    needed = max(src_column, tgt_column) + 1
    for number, line in enumerate(read_lines(path), start=1):
        cells = line.split("\t")
        if len(cells) < needed:
            raise DataError(f"{path} line {number}: expected at least {needed} tab-separated columns, got {len(cells)}")
        src.append(cells[src_column])
        tgt.append(cells[tgt_column])
    return src, tgt


def read_hf(source: HfSource) -> tuple[list[str], list[str]]:
    import datasets  # imported here: it is slow to import and only this reader needs it

    try:
        dataset = datasets.load_dataset(source.name, source.config, split=source.split, data_files=source.data_files)
    except Exception as err:  # datasets raises many unrelated types for a bad name, split or file
        raise DataError(f"Hugging Face dataset {source.name!r} (split {source.split!r}): {err}") from None
    columns = [source.field] if source.field else [source.src_field, source.tgt_field]
    for column in columns:
        if column not in dataset.column_names:
            raise DataError(f"Hugging Face dataset {source.name!r}: no field {column!r} (has {dataset.column_names})")
    if source.field:
        rows = dataset[source.field]
        try:
            return [row[source.src_field] for row in rows], [row[source.tgt_field] for row in rows]
        except (KeyError, TypeError):
            raise DataError(
                f"Hugging Face dataset {source.name!r}: {source.field!r} entries lack "
                f"{source.src_field!r} or {source.tgt_field!r}"
            ) from None
    return list(dataset[source.src_field]), list(dataset[source.tgt_field])


def read_source(source: Source, data: DataConfig) -> tuple[list[str], list[str]]:
    """Read one split's raw pairs, fetching URLs through the mirror and the download cache."""

    def local(location: str, sha256: str | None) -> Path:
        return fetch(location, Path(data.download_dir), data.mirrors(), data.mirror_subdir, sha256)

    if isinstance(source, TextSource):
        return read_text_pair(local(source.src, source.src_sha256), local(source.tgt, source.tgt_sha256))
    if isinstance(source, TsvSource):
        return read_tsv(local(source.path, source.sha256), source.src_column, source.tgt_column)
    return read_hf(source)


_SPACES = re.compile(r"\s+")


def normalize(text: str, clean: CleanConfig) -> str:
    """Unicode normalization, control characters to spaces, whitespace collapsed, optional lowercasing."""
    if clean.unicode_normalization != "none":
        text = unicodedata.normalize(clean.unicode_normalization, text)
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)
    if clean.collapse_whitespace:
        text = _SPACES.sub(" ", text).strip()
    if clean.lowercase:
        text = text.lower()
    return text


def has_content(text: str) -> bool:
    """Whether any character is more than a space, a control or an invisible format character (NUL, ZWSP)."""
    return any(unicodedata.category(ch)[0] not in "CZ" for ch in text)


def drop_reason(src: str, tgt: str, clean: CleanConfig) -> str | None:
    if not has_content(src) or not has_content(tgt):
        return "empty"
    longer, shorter = max(len(src), len(tgt)), min(len(src), len(tgt))
    if longer > clean.max_chars:
        return "too_long"
    if longer > clean.max_length_ratio * shorter:
        return "length_ratio"
    return None


def clean_corpus(src: list[str], tgt: list[str], clean: CleanConfig, filter_pairs: bool) -> Corpus:
    """Normalize every pair; with `filter_pairs` (the training split) drop empty, overlong and unbalanced ones.

    Dev and test are never filtered: dropping hard sentences would flatter the scores."""
    corpus = Corpus([], [])
    for raw_src, raw_tgt in zip(src, tgt, strict=True):
        s, t = normalize(raw_src, clean), normalize(raw_tgt, clean)
        reason = drop_reason(s, t, clean) if filter_pairs else None
        if reason:
            corpus.dropped[reason] += 1
            continue
        corpus.src.append(s)
        corpus.tgt.append(t)
    return corpus


def load_split(data: DataConfig, split: str) -> Corpus:
    src, tgt = read_source(data.split(split), data)
    return clean_corpus(src, tgt, data.clean, filter_pairs=(split == "train"))
