"""Word alignments as links in Pharaoh format: `i-j` joins source word i and target word j (0-based,
whitespace-separated words); gold files also mark possible links `i?j`. Read by training (guided alignment),
by the alignment scorer (nmt.inspect.alignment) and from eflomal's output, all through `read_links`.

Reading is strict and bounded, as these files come from other tools: a line ends at "\n" alone (a "\r" before
it is dropped; U+2028 or a form feed is no line break, so the line count is the one other tools see), links
are separated by spaces or tabs, indices are ASCII digits (`str.isdigit` accepts "²", which `int` refuses),
a line is at most MAX_LINE_BYTES, and with the number of pairs known the reading stops at the first line too
many (a 10^6-line file for 3 pairs used to take 928 MB before its count was checked)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import count
from pathlib import Path

from nmt.errors import DataError

Link = tuple[int, int]  # (source word, target word), 0-based
MAX_LINE_BYTES = 1 << 20  # about 100,000 links: far beyond any sentence pair's
_LINK = re.compile(r"([0-9]{1,9})([-?])([0-9]{1,9})")  # [0-9], not \d: \d matches every script's digits
_SPACES = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class GoldLinks:
    """One sentence pair's gold alignment: `possible` holds the sure links too."""

    sure: frozenset[Link]
    possible: frozenset[Link]


def parse_links(line: str, where: str) -> GoldLinks:
    """`0-0 1-2 2?2` -> sure {(0, 0), (1, 2)}, possible {(0, 0), (1, 2), (2, 2)}; `where` names the line in
    errors (file:line)."""
    sure, possible = set(), set()
    for token in _SPACES.split(line):
        if not token:
            continue
        found = _LINK.fullmatch(token)
        if found is None:
            raise DataError(f"{where}: {token[:40]!r} is no link: write source-target (sure) or source?target "
                            "(possible), 0-based word indices in ASCII digits separated by spaces, e.g. 0-0 1?2")
        link = (int(found[1]), int(found[3]))
        possible.add(link)
        if found[2] == "-":
            sure.add(link)
    return GoldLinks(frozenset(sure), frozenset(possible))


def read_links(path: Path, expected: int | None = None, pairs: str = "sentence pairs") -> list[GoldLinks]:
    """A Pharaoh file, one line per sentence pair (an empty line: no links), read line by line (module
    docstring); with `expected`, exactly that many lines, else an error naming the count and `pairs`."""
    found: list[GoldLinks] = []
    try:
        with open(path, "rb") as handle:
            for number in count(1):
                raw = handle.readline(MAX_LINE_BYTES + 1)
                if not raw:
                    break
                if expected is not None and number > expected:
                    raise DataError(f"{path}: more than {expected} lines of links for {expected} {pairs}")
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    raise DataError(f"{path}:{number}: a line over {MAX_LINE_BYTES >> 20} MiB is no line of links")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{path}:{number}: not UTF-8 text") from None
                line = line.removesuffix("\n").removesuffix("\r")
                found.append(parse_links(line.removeprefix("\ufeff") if number == 1 else line, f"{path}:{number}"))
    except OSError as err:
        raise DataError(f"{path}: cannot read the alignments ({err.strerror or err})") from None
    if expected is not None and len(found) != expected:
        raise DataError(f"{path}: {len(found)} lines of links for {expected} {pairs}")
    return found

def check_links(links: Iterable[Link], source_words: int, target_words: int, where: str) -> None:
    """Refuse a link outside the sentence pair it belongs to (the files are likely misaligned)."""
    for i, j in sorted(links):
        if i >= source_words or j >= target_words:
            raise DataError(f"{where}: link {i}-{j} is outside the pair's {source_words} source and {target_words} "
                            "target words")


def format_links(links: Iterable[Link]) -> str:
    """Pharaoh format, sorted by source then target word: `0-0 1-2`."""
    return " ".join(f"{i}-{j}" for i, j in sorted(links))
