"""A terminology glossary: a file of `source term<TAB>target term` lines. A sentence whose source contains a
source term (as a whole word or phrase, with the case the file gives) must contain its target term: the glossary
turns it into a lexical constraint for that sentence (nmt.inference.constraints)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nmt.data.corpus import read_lines
from nmt.errors import DataError


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
