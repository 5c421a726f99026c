"""Word alignments as links in Pharaoh format: `i-j` joins source word i and target word j (0-based,
whitespace-separated words); gold files also mark possible links `i?j`. Read by training (guided alignment)
and by the alignment scorer (nmt.inspect.alignment)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nmt.errors import DataError

Link = tuple[int, int]  # (source word, target word), 0-based


@dataclass(frozen=True)
class GoldLinks:
    """One sentence pair's gold alignment: `possible` holds the sure links too."""

    sure: frozenset[Link]
    possible: frozenset[Link]


def parse_links(line: str, where: str) -> GoldLinks:
    """`0-0 1-2 2?2` -> sure {(0, 0), (1, 2)}, possible {(0, 0), (1, 2), (2, 2)}; `where` names the line in
    errors (file:line)."""
    sure, possible = set(), set()
    for token in line.split():
        mark = "-" if "-" in token else "?"
        source, sep, target = token.partition(mark)
        if not (sep and source.isdigit() and target.isdigit()):
            raise DataError(f"{where}: {token!r} is no link: write source-target (sure) or source?target (possible), "
                            "0-based word indices, e.g. 0-0 1?2")
        link = (int(source), int(target))
        possible.add(link)
        if mark == "-":
            sure.add(link)
    return GoldLinks(frozenset(sure), frozenset(possible))


def read_links(path: Path) -> list[GoldLinks]:
    """A Pharaoh file, one line per sentence pair (an empty line: no links)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the alignments ({err})") from None
    return [parse_links(line, f"{path}:{number}") for number, line in enumerate(lines, start=1)]


def check_links(gold: GoldLinks, source_words: int, target_words: int, where: str) -> None:
    """Refuse a gold link outside the sentence pair it belongs to (the files are likely misaligned)."""
    for i, j in sorted(gold.possible):
        if i >= source_words or j >= target_words:
            raise DataError(f"{where}: link {i}-{j} is outside the pair's {source_words} source and {target_words} "
                            "target words")


def format_links(links: Iterable[Link]) -> str:
    """Pharaoh format, sorted by source then target word: `0-0 1-2`."""
    return " ".join(f"{i}-{j}" for i, j in sorted(links))
