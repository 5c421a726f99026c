"""What a caller may ask of a trained run, checked in one place for the Python API, the command line and the
server: each argument's type and bounds, and texts given as one string or a sequence of strings. A mistake is an
`ArgumentError` naming the argument, so `run.translate(beam_size=0)` fails as `--beam-size 0` and a request with
`"beam_size": 0` do, instead of decoding greedily, iterating over characters or returning NaN scores."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nmt.config import MAX_BEAM, MAX_LENGTH_PENALTY, DecodingConfig, shown_value
from nmt.errors import ArgumentError


def integer(value: object, field: str, low: int, high: int | None = None) -> int:
    """An int in low..high (a NumPy integer counts; a bool or a float such as 2.0 does not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(field, f"{shown_value(value)} is not a whole number")
    found = int(value)
    if found < low or (high is not None and found > high):  # shown_value: a 5000-digit int is not printed whole
        raise ArgumentError(field, f"{shown_value(found)} is outside {low}..{'' if high is None else high}")
    return found


def number(value: object, field: str, low: float, high: float) -> float:
    """A finite real number in low..high (NaN and infinities are refused: they turn scores into NaN)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(field, f"{shown_value(value)} is not a number")
    try:
        found = float(value)
    except OverflowError:  # an int too large for a float
        raise ArgumentError(field, f"{shown_value(value)} is outside {low:g}..{high:g}") from None
    if not math.isfinite(found) or not low <= found <= high:
        raise ArgumentError(field, f"{found} is outside {low:g}..{high:g}")
    return found


def choice(value: object, field: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ArgumentError(field, f"{shown_value(value)} is not one of {', '.join(allowed)}")
    return value


def text(value: object, field: str) -> str:
    """One text: a str that is valid Unicode (a lone surrogate, which Python strings can hold, is not)."""
    if not isinstance(value, str):
        raise ArgumentError(field, f"{type(value).__name__} is not a text (str)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ArgumentError(field, f"character {err.start + 1} is a lone surrogate ({value[err.start]!r}), "
                                   "not Unicode text") from None
    return value


def texts(value: object, field: str) -> list[str]:
    """One text or several (a list, a tuple, a NumPy array, a generator...), as a list: a single str is one
    text, never its characters."""
    if isinstance(value, str):
        return [text(value, field)]
    if not isinstance(value, Iterable) or isinstance(value, bytes | bytearray | Mapping):
        raise ArgumentError(field, f"{type(value).__name__} is not a text or a sequence of texts")
    return [text(item, f"{field}[{i}]") for i, item in enumerate(value)]


def aligned_texts(first: object, second: object, fields: tuple[str, str]) -> tuple[list[str], list[str]]:
    """Two lists of texts that go pair by pair (sources and references or translations)."""
    found = texts(first, fields[0]), texts(second, fields[1])
    if len(found[0]) != len(found[1]):
        raise ArgumentError(fields[1], f"{len(found[1])} texts for {len(found[0])} {fields[0]}: they go in pairs")
    return found


@dataclass(frozen=True)
class SearchSettings:
    """How one call decodes: each setting the caller left out is the run's own."""

    beam_size: int
    n_best: int
    length_penalty: float


def search_settings(own: DecodingConfig, beam_size: object = None, n_best: object = None,
                    length_penalty: object = None) -> SearchSettings:
    """A call's decoding settings checked against the bounds and each other; n-best defaults to the run's,
    capped at the beam size (an explicit one above it is an error)."""
    beam = own.beam_size if beam_size is None else integer(beam_size, "beam_size", 1, MAX_BEAM)
    if n_best is None:
        best = min(own.n_best, beam)
    else:
        best = integer(n_best, "n_best", 1, MAX_BEAM)
        if best > beam:
            raise ArgumentError("n_best", f"{best} cannot exceed the beam size ({beam}): a beam keeps {beam} "
                                          "hypotheses")
    penalty = own.length_penalty if length_penalty is None else number(length_penalty, "length_penalty", 0.0,
                                                                          MAX_LENGTH_PENALTY)
    return SearchSettings(beam, best, penalty)
