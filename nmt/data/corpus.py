"""Read aligned sentence pairs from any declared source, normalize them and filter the training split.

Readers stream pairs one at a time, so a corpus larger than memory passes through. They are strict: a
misaligned pair of files, a line that is not UTF-8 or a TSV row with a field too many or too few is an
error naming the file and line, never a silently shifted corpus."""

from __future__ import annotations

import gzip
import io
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import BinaryIO

from nmt.config import CleanConfig, DataConfig, HfSource, Source, TextSource, TsvSource
from nmt.data.download import fetch
from nmt.errors import DataError

log = logging.getLogger(__name__)

CR_PROBE = 1 << 16  # bytes read to tell a file with CR line endings from one with LF (or CRLF)
Binary = gzip.GzipFile | io.BufferedReader  # what read_lines opens


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


def _cr_lines(handle: Binary, name: str) -> Iterator[bytes]:
    """The raw lines of a file with CR line endings. Latin-1 maps bytes one to one, so the text layer only
    finds the CRs; a LF met later is an error, since one file cannot be split both ways."""
    for number, line in enumerate(io.TextIOWrapper(handle, encoding="latin-1", newline="\r"), start=1):
        if "\n" in line:
            raise DataError(f"{name} line {number}: a LF in a file with CR line endings (its first "
                            f"{CR_PROBE // 1024} KiB have none): convert the file to one kind of line ending")
        yield line.encode("latin-1")


def _raw_lines(handle: Binary, name: str) -> Iterable[bytes]:
    """Split at LF (a CRLF's CR is removed later), or at CR in a file whose first 64 KiB hold a CR and no LF:
    classic Mac OS text, which would otherwise read as one line. A stray CR inside a LF line stays text."""
    head = handle.read(CR_PROBE)
    handle.seek(0)
    if b"\n" in head or b"\r" not in head:
        return handle
    log.warning("%s uses CR line endings (classic Mac OS): each CR is read as a line break", name)
    return _cr_lines(handle, name)


def read_lines(path: Path) -> Iterator[str]:
    """Yield the lines of a plain or gzipped UTF-8 file without line ends (LF, CRLF or CR) or a leading BOM."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            yield from _decode_lines(_raw_lines(handle, str(path)), str(path))
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({err})") from None


def read_stream(handle: BinaryIO, name: str) -> list[str]:
    """The lines of an open binary stream (standard input), decoded as strictly as files."""
    return list(_decode_lines(handle, name))


Pair = tuple[str, str]


def read_text_pairs(src_path: Path, tgt_path: Path) -> Iterator[Pair]:
    """The aligned lines of two files; when one ends first, an error with both line counts."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    for number, (s, t) in enumerate(zip_longest(src, tgt), start=1):
        if s is None or t is None:
            src_count = number - 1 if s is None else number + sum(1 for _ in src)
            tgt_count = number - 1 if t is None else number + sum(1 for _ in tgt)
            raise DataError(f"{src_path} has {src_count} lines but {tgt_path} has {tgt_count}: the sides must be "
                            "aligned line by line")
        yield s, t


def read_tsv(path: Path, src_column: int, tgt_column: int) -> Iterator[Pair]:
    """Two columns of a tab-separated file, fields taken verbatim.

    No quoting, as in the OPUS and Tatoeba exports, whose sentences hold literal quotes: the csv module's
    quoting would strip the quotes of `"Hi," she said` and read past an unbalanced one into the lines
    after it, joining sentences without a word. So a tab always separates fields, and a line with another
    number of fields than the first line (a tab inside a sentence, a missing column) is refused, naming
    the file and line, rather than read with its columns shifted."""
    needed = max(src_column, tgt_column) + 1
    width = 0
    for number, line in enumerate(read_lines(path), start=1):
        cells = line.split("\t")
        if not width:
            if len(cells) < needed:
                raise DataError(f"{path} line {number}: expected at least {needed} tab-separated columns, "
                                f"got {len(cells)}")
            width = len(cells)
        elif len(cells) != width:
            extra = ": a tab inside a field would shift the columns (fields are not quoted)" \
                if len(cells) > width else ""
            raise DataError(f"{path} line {number}: {len(cells)} tab-separated fields, but line 1 has {width}{extra}")
        yield cells[src_column], cells[tgt_column]


def read_hf(source: HfSource) -> Iterator[Pair]:
    """Rows of a Hugging Face dataset, read one at a time from its memory-mapped Arrow files."""
    import datasets  # imported here: it is slow to import and only this reader needs it

    try:
        dataset = datasets.load_dataset(source.name, source.config, split=source.split, data_files=source.data_files)
    except Exception as err:  # datasets raises many unrelated types for a bad name, split or file
        raise DataError(f"Hugging Face dataset {source.name!r} (split {source.split!r}): {err}") from None
    columns = [source.field] if source.field else [source.src_field, source.tgt_field]
    for column in columns:
        if column not in dataset.column_names:
            raise DataError(f"Hugging Face dataset {source.name!r}: no field {column!r} (has {dataset.column_names})")
    for row in dataset:
        if not source.field:
            yield row[source.src_field], row[source.tgt_field]
            continue
        try:
            yield row[source.field][source.src_field], row[source.field][source.tgt_field]
        except (KeyError, TypeError):
            raise DataError(
                f"Hugging Face dataset {source.name!r}: {source.field!r} entries lack "
                f"{source.src_field!r} or {source.tgt_field!r}"
            ) from None


def read_pairs(source: Source, data: DataConfig) -> Iterator[Pair]:
    """One split's raw pairs, fetching URLs through the mirror and the download cache first."""

    def local(location: str, sha256: str | None) -> Path:
        return fetch(location, Path(data.download_dir), data.mirrors(), data.mirror_subdir, sha256)

    if isinstance(source, TextSource):
        return read_text_pairs(local(source.src, source.src_sha256), local(source.tgt, source.tgt_sha256))
    if isinstance(source, TsvSource):
        return read_tsv(local(source.path, source.sha256), source.src_column, source.tgt_column)
    return read_hf(source)


_SPACES = re.compile(r"\s+")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")  # exactly Unicode's category Cc


def normalize(text: str, clean: CleanConfig) -> str:
    """Unicode normalization, control characters (line breaks among them) to spaces, whitespace collapsed,
    optional lowercasing. The result is one line."""
    if clean.unicode_normalization != "none":
        text = unicodedata.normalize(clean.unicode_normalization, text)
    text = _CONTROLS.sub(" ", text)
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


def clean_pairs(pairs: Iterable[Pair], clean: CleanConfig, filter_pairs: bool, dropped: Counter[str]
                ) -> Iterator[Pair]:
    """Normalize every pair; with `filter_pairs` (the training split) drop empty, overlong and unbalanced ones,
    counting them in `dropped` by reason.

    Dev and test are never filtered: dropping hard sentences would flatter the scores."""
    for raw_src, raw_tgt in pairs:
        s, t = normalize(raw_src, clean), normalize(raw_tgt, clean)
        reason = drop_reason(s, t, clean) if filter_pairs else None
        if reason:
            dropped[reason] += 1
            continue
        yield s, t


def stream_split(data: DataConfig, split: str, dropped: Counter[str]) -> Iterator[Pair]:
    """A split's cleaned pairs, one at a time (what `nmt data` writes to its cache)."""
    return clean_pairs(read_pairs(data.split(split), data), data.clean, split == "train", dropped)


def load_split(data: DataConfig, split: str) -> Corpus:
    """A split's cleaned pairs in memory: for the dev and test sets that evaluation reads whole."""
    corpus = Corpus([], [])
    for s, t in stream_split(data, split, corpus.dropped):
        corpus.src.append(s)
        corpus.tgt.append(t)
    return corpus
