"""How one call decodes: the one place where the search settings a caller gives (the command line, the Python
API, a server request, an attention view, an analysis) meet the run's own decoding settings, so that every entry
point decodes the same sentence the same way unless told otherwise."""

from __future__ import annotations

from dataclasses import dataclass

from nmt.config import MAX_BEAM, MAX_LENGTH_PENALTY, MAX_NGRAM, MAX_REPETITION_PENALTY, DecodingConfig
from nmt.errors import ArgumentError
from nmt.inference.arguments import integer, number


@dataclass(frozen=True)
class DecodingOptions:
    """A call's search settings; each one the caller left out is the run's own."""

    beam_size: int
    n_best: int
    length_penalty: float
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0

    @classmethod
    def resolve(cls, own: DecodingConfig, beam_size: object = None, n_best: object = None,
                length_penalty: object = None, no_repeat_ngram_size: object = None,
                repetition_penalty: object = None) -> DecodingOptions:
        """The caller's settings checked against the bounds and each other, the rest the run's (`own`); n-best
        defaults to the run's, capped at the beam size (an explicit one above it is an error). An n-gram size
        given is 1 to MAX_NGRAM (the run's may be 0, off: `--set decoding.no_repeat_ngram_size=0` turns it off)."""
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
        ngram = (own.no_repeat_ngram_size if no_repeat_ngram_size is None
                 else integer(no_repeat_ngram_size, "no_repeat_ngram_size", 1, MAX_NGRAM))
        repetition = (own.repetition_penalty if repetition_penalty is None
                      else number(repetition_penalty, "repetition_penalty", 1.0, MAX_REPETITION_PENALTY))
        return cls(beam, best, penalty, ngram, repetition)
