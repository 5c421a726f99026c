"""What a caller may ask of a trained run, checked in one place for the Python API, the command line and the
server: each argument's type and bounds, and texts given as one string or a sequence of strings. A mistake is an
`ArgumentError` naming the argument, so `run.translate(beam_size=0)` fails as `--beam-size 0` and a request with
`"beam_size": 0` do, instead of decoding greedily, iterating over characters or returning NaN scores."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

from nmt.config import shown_value
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
