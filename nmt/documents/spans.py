"""Text that must come through translation unchanged: URLs, e-mail addresses, numbers and placeholders
(`{name}`, `%s`, `%(name)s`), and whatever the patterns of `decoding.protect` match.

Each span is replaced by a stand-in before translation: a number the vocabularies hold (a number stands for
itself), which the search is constrained to write (nmt.inference.constraints), so it lands where the model
finds it fits. After translation each stand-in is replaced by its span again; one the search could not fit
(the length limit) is put back by the word alignment (nmt.documents.placement)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nmt.data.tokenizer import Tokenizer
from nmt.tokens import UNK_ID

BUILTIN_PATTERNS = {
    "url": r"\b(?:https?://|ftp://|www\.)[^\s<>\"']*[^\s<>\"'.,;:!?)\]]",
    "email": r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b",
    "placeholder": r"\{[^{}\s]*\}|%\(\w+\)[sdifrx]|%[sdifrx]|\$\{\w+\}",
    "number": r"(?<![\w.,])[+-]?\d+(?:[.,:]\d+)*(?![\w])",
}
"""Earlier kinds win where matches overlap (a number inside a URL is the URL's)."""


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str  # a BUILTIN_PATTERNS key, or "protect" for the config's patterns


class Protector:
    """Finds protected spans and picks stand-ins a model copies (module docstring)."""

    def __init__(self, patterns: Sequence[str] = (), builtin: bool = True):
        kinds = list(BUILTIN_PATTERNS.items()) if builtin else []
        self.patterns = [(kind, re.compile(p)) for kind, p in kinds[:3]]
        self.patterns += [("protect", re.compile(p)) for p in patterns]
        self.patterns += [(kind, re.compile(p)) for kind, p in kinds[3:]]

    @property
    def active(self) -> bool:
        return bool(self.patterns)

    def find(self, text: str) -> list[Span]:
        """Non-overlapping spans in text order; where matches overlap, the earlier pattern's (URLs, e-mail
        addresses, placeholders, the config's, numbers), then the one that starts first."""
        taken: list[Span] = []
        for kind, pattern in self.patterns:
            for match in pattern.finditer(text):
                if match.end() > match.start() and not any(
                        match.start() < s.end and s.start < match.end() for s in taken):
                    taken.append(Span(match.start(), match.end(), kind))
        return sorted(taken, key=lambda s: s.start)


_CANDIDATES = [str(n) for n in range(10, 1000)]


def copyable(tokenizer: Tokenizer, text: str) -> int | None:
    """How many target pieces `text` takes, when both vocabularies hold every piece of it (the model can read
    it and write it); None when one lacks a piece."""
    src, tgt = tokenizer.encode_src([text])[0], tokenizer.encode_tgt([text])[0]
    return len(tgt) if UNK_ID not in src and UNK_ID not in tgt and tgt else None


@functools.lru_cache(maxsize=16)
def stand_ins(tokenizer: Tokenizer, count: int = 64) -> tuple[str, ...]:
    """`count` numbers both vocabularies hold, the fewest target pieces first: what stands in for a span.
    Empty when a vocabulary lacks digits; spans are then placed by alignment alone. Kept per tokenizer (a
    served model's): encoding the candidates takes about 0.1 s, once rather than per request."""
    sized = [(size, number) for number in _CANDIDATES if (size := copyable(tokenizer, number)) is not None]
    return tuple(number for _, number in sorted(sized, key=lambda pair: pair[0]))[:count]


def stand_in_pattern(stand_in: str) -> re.Pattern[str]:
    """The stand-in as a number of its own in a translation, with any digits the model wrote after it (the
    search must write the stand-in's pieces but may go on with more: `238` then `8`): those are taken with it."""
    return re.compile(rf"(?<![\w.,]){re.escape(stand_in)}\d*")
