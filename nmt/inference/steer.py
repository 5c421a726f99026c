"""What a user asks of each line's translation besides translating it, as text: a prefix to continue, phrases
it must contain, and a glossary that turns the source terms a line contains into phrases its translation must
contain. The command line, the Python API and the server build `Steer`s here; the translator encodes them into
the search's controls (nmt.inference.controls, nmt.inference.constraints).

A glossary is a file of `source term<TAB>target term` lines. A sentence whose source contains a source term (as
a whole word or phrase, with the case the file gives) must contain its target term."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nmt.data.corpus import read_lines
from nmt.errors import DataError


@dataclass(frozen=True)
class Steer:
    """What one line's translation must do besides translate it: begin with `prefix` (continuing a translator's
    half-typed sentence) and contain each of `constraints` (terminology). Both are target text, cleaned and
    encoded as the source is."""

    prefix: str = ""
    constraints: tuple[str, ...] = ()


@dataclass(frozen=True)
class Term:
    source: str
    target: str
    line: int  # in the file, from 1


class Glossary:
    def __init__(self, terms: Iterable[Term], name: str = "glossary"):
        self.terms, self.name = list(terms), name
        # whole words: no word character just before or after (a term that starts or ends with one)
        self._patterns = [re.compile(rf"(?<!\w){re.escape(t.source)}(?!\w)") for t in self.terms]

    @classmethod
    def parse(cls, lines: Iterable[str], name: str) -> Glossary:
        """Lines `source<TAB>target`; blank lines and lines starting with `#` are skipped. Anything else (no tab,
        two tabs, an empty side) is an error naming `name` and the line."""
        terms = []
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                raise DataError(f"{name}, line {number}: expected `source term<TAB>target term`, got {line[:80]!r}")
            terms.append(Term(fields[0].strip(), fields[1].strip(), number))
        return cls(terms, name)

    @classmethod
    def read(cls, path: Path) -> Glossary:
        """A plain or gzipped UTF-8 file, read as corpora are (nmt.data.corpus.read_lines)."""
        return cls.parse(read_lines(path), str(path))

    def targets_for(self, source: str) -> list[str]:
        """The target terms `source` calls for, in the file's order, each once."""
        found: list[str] = []
        for term, pattern in zip(self.terms, self._patterns, strict=True):
            if term.target not in found and pattern.search(source):
                found.append(term.target)
        return found


def steer_lines(sources: Sequence[str], prefixes: Sequence[str] | None = None,
                constraints: Sequence[Sequence[str]] | None = None, glossary: Glossary | None = None
                ) -> list[Steer] | None:
    """Each source line's `Steer`: its prefix (`prefixes` line by line), its constraints (line by line) and the
    target terms of `glossary` its source calls for; None when nothing steers."""
    if prefixes is None and constraints is None and glossary is None:
        return None
    steers = []
    for i, source in enumerate(sources):
        phrases = list(constraints[i]) if constraints is not None else []
        if glossary is not None:
            phrases += [t for t in glossary.targets_for(source) if t not in phrases]
        steers.append(Steer(prefixes[i] if prefixes is not None else "", tuple(phrases)))
    return steers


def read_aligned(path: Path, count: int, what: str) -> list[str]:
    """A file with one line per source line (prefixes, constraints); another count is an error naming it."""
    lines = list(read_lines(path))
    if len(lines) != count:
        raise DataError(f"{path}: {len(lines)} lines of {what} for {count} source lines: they go line by line")
    return lines


def line_constraints(every: Sequence[str], path: Path | None, count: int) -> list[list[str]] | None:
    """Each of `count` lines' constraints: the phrases in `every`, then the line's own from `path` (a line of
    tab-separated phrases per source line); None when there are none."""
    if not every and path is None:
        return None
    own = read_aligned(path, count, "constraints") if path is not None else [""] * count
    return [[*every, *(phrase for phrase in line.split("\t") if phrase.strip())] for line in own]
