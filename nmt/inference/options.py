"""How one call decodes: the one place where the search settings a caller gives (the command line, the Python
API, a server request, an attention view, an analysis) meet the run's own decoding settings, so that every entry
point decodes the same sentence the same way unless told otherwise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from nmt.config import (
    MAX_BEAM,
    MAX_LENGTH_PENALTY,
    MAX_MBR_CANDIDATES,
    MAX_NGRAM,
    MAX_REPETITION_PENALTY,
    DecodingConfig,
    MbrConfig,
    shown_value,
)
from nmt.errors import ArgumentError
from nmt.inference.arguments import integer, number


@dataclass(frozen=True)
class DecodingOptions:
    """A call's search settings; each one the caller left out is the run's own. With `mbr`, the translation is
    chosen among candidates by minimum Bayes risk (nmt.inference.mbr); `beam_size` is then the beam they come
    from (1 for sampled ones)."""

    beam_size: int
    n_best: int
    length_penalty: float
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    mbr: MbrConfig | None = None

    @property
    def rows(self) -> int:
        """Search rows per sentence, what decoding costs grow with: the beam, or MBR's candidates."""
        return self.mbr.candidates if self.mbr is not None else self.beam_size

    @classmethod
    def resolve(cls, own: DecodingConfig, beam_size: object = None, n_best: object = None,
                length_penalty: object = None, no_repeat_ngram_size: object = None,
                repetition_penalty: object = None, *, mbr: object = None, exclusive: str | None = None,
                constrained: bool = False) -> DecodingOptions:
        """The caller's settings checked against the bounds and each other, the rest the run's (`own`); n-best
        defaults to the run's, capped at the beam size or MBR's candidates (an explicit one above it is an
        error). An n-gram size given is 1 to MAX_NGRAM (the run's may be 0, off: `--set
        decoding.no_repeat_ngram_size=0` turns it off). `mbr`, `exclusive` (what the call asks for instead of a
        search: sampling, streaming, alternatives) and `constrained` (phrases required) decide MBR
        (`resolve_mbr`)."""
        chosen = resolve_mbr(own, mbr, beam_size, exclusive, constrained)
        if chosen is not None:
            beam = chosen.candidates if chosen.source == "beam" else 1
            most, what = chosen.candidates, f"MBR's candidates ({chosen.candidates})"
        else:
            beam = own.beam_size if beam_size is None else integer(beam_size, "beam_size", 1, MAX_BEAM)
            most, what = beam, f"the beam size ({beam}): a beam keeps {beam} hypotheses"
        if n_best is None:
            best = min(own.n_best, most)
        else:
            best = integer(n_best, "n_best", 1, MAX_BEAM)
            if best > most:
                raise ArgumentError("n_best", f"{best} cannot exceed {what}")
        penalty = own.length_penalty if length_penalty is None else number(length_penalty, "length_penalty", 0.0,
                                                                              MAX_LENGTH_PENALTY)
        ngram = (own.no_repeat_ngram_size if no_repeat_ngram_size is None
                 else integer(no_repeat_ngram_size, "no_repeat_ngram_size", 1, MAX_NGRAM))
        repetition = (own.repetition_penalty if repetition_penalty is None
                      else number(repetition_penalty, "repetition_penalty", 1.0, MAX_REPETITION_PENALTY))
        return cls(beam, best, penalty, ngram, repetition, chosen)


def resolve_mbr(own: DecodingConfig, mbr: object, beam_size: object, exclusive: str | None, constrained: bool
                ) -> MbrConfig | None:
    """MBR's settings for a call, or None (off). Left out (None), it is the run's `decoding.mbr`, unless the call
    asks for what MBR does not do (a beam size, `exclusive`, or constraints with sampled candidates): the
    caller's request wins over the run's default. Asked for (`mbr_settings`), those are refused."""
    if mbr is None:
        found = own.mbr
        if found is None or beam_size is not None or exclusive or (constrained and found.source == "sample"):
            return None
        return found
    chosen = mbr_settings(own.mbr, mbr)
    if chosen is None:
        return None
    if exclusive:
        raise ArgumentError("mbr", f"chooses among candidates it decodes itself: it does not go with {exclusive}")
    if beam_size is not None:
        raise ArgumentError("beam_size", "goes with the search, not with MBR: MBR's candidates set its beam (with "
                                         "source beam)")
    if constrained and chosen.source == "sample":
        raise ArgumentError("constraint", "goes with the search, not with MBR's sampled candidates: a draw cannot "
                                          "be steered towards a phrase (MBR with source beam takes constraints)")
    return chosen


def mbr_settings(own: MbrConfig | None, given: object) -> MbrConfig | None:
    """`mbr=` as a caller gives it: True (the run's decoding.mbr, else the defaults), False (off), an MbrConfig,
    or a mapping of some of candidates, source, epsilon and metric over the run's settings (else the defaults).
    A mistake names its key (`mbr.candidates`)."""
    if given is False:
        return None
    base = own or MbrConfig()
    if given is True:
        return base
    if isinstance(given, MbrConfig):
        return given
    if not isinstance(given, Mapping):
        raise ArgumentError("mbr", f"{shown_value(given)} is not true, false, an MbrConfig or a mapping of "
                                   "candidates, source, epsilon and metric")
    values = dict(given)
    if "candidates" in values:
        count = integer(values["candidates"], "mbr.candidates", 2)
        if count > MAX_MBR_CANDIDATES:
            raise ArgumentError("mbr.candidates", f"{count}: MBR compares at most {MAX_MBR_CANDIDATES} candidates "
                                                  "(its time grows with their square)")
        values["candidates"] = count
    try:
        return MbrConfig.model_validate({**base.model_dump(), **values}, strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        got = "" if first["type"] == "extra_forbidden" else f" (got {shown_value(first.get('input'))})"
        raise ArgumentError(".".join(["mbr", *map(str, first["loc"])]), f"{first['msg']}{got}") from None
