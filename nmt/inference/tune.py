"""Choose a run's beam size and length penalty, or minimum Bayes risk decoding, on held-out data, as a user should
before shipping it.

Decodes the dev set (or another split) once per grid point, scores each with BLEU, and, unless told not to,
writes the best choice into the run's config.yaml under `decoding`, with a `decoding.tuned` record of
what it was chosen on. The run's current setting is always part of the grid, so the choice is never worse
on that split; ties go to the current setting, then to the search (MBR is slower), then to the smaller (faster)
beam. With `mbr`, MBR with the run's decoding.mbr settings (else the defaults) is one more point: written as
decoding.mbr when it wins, removed when a search beats the run's MBR."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nmt.config import (
    MAX_BEAM,
    MAX_LENGTH_PENALTY,
    TUNE_BEAMS,
    TUNE_LENGTH_PENALTIES,
    MbrConfig,
    TunedDecoding,
    config_to_yaml,
)
from nmt.data.splits import eval_set
from nmt.errors import ConfigError
from nmt.inference.scoring import decode_and_score
from nmt.inference.translate import Translator
from nmt.runs.loading import load_model


@dataclass
class GridPoint:
    beam_size: int
    length_penalty: float
    bleu: float
    chrf: float
    sentences_per_s: float
    current: bool  # the run's setting before tuning
    mbr: MbrConfig | None = None  # chosen by MBR with these settings (beam and length penalty: the run's)


@dataclass
class TuneResult:
    split: str
    points: list[GridPoint]
    best: GridPoint
    written: bool


def grid(beams: Sequence[int], penalties: Sequence[float], current: tuple[int, float]) -> list[tuple[int, float]]:
    """Every (beam, alpha) pair, the current one included; greedy search has no length penalty, so beam 1
    appears once (with alpha 0, or the current alpha when the run decodes greedily)."""
    if not beams or not penalties:
        raise ConfigError("tune: give at least one beam size and one length penalty")
    if not all(1 <= beam <= MAX_BEAM for beam in beams):
        raise ConfigError(f"tune: beam sizes go from 1 to {MAX_BEAM}, got {', '.join(map(str, beams))}")
    if not all(0 <= alpha <= MAX_LENGTH_PENALTY for alpha in penalties):  # NaN fails both comparisons
        raise ConfigError(f"tune: a length penalty is a number from 0 to {MAX_LENGTH_PENALTY:g}, got "
                          + ", ".join(f"{a:g}" for a in penalties))
    points = {(1, current[1] if current[0] == 1 else 0.0) if beam == 1 else (beam, alpha)
              for beam in beams for alpha in penalties}
    points.add(current)
    return sorted(points)


def tune(run_dir: Path, beams: Sequence[int] = TUNE_BEAMS, penalties: Sequence[float] = TUNE_LENGTH_PENALTIES,
         split: str = "dev", checkpoint: str = "best", write: bool = True, src_file: Path | None = None,
         ref_file: Path | None = None, mbr: bool = False) -> TuneResult:
    """Decode `split` (or the aligned `src_file` and `ref_file`: a run without a corpus, e.g. imported) with
    each beam size and length penalty of the grid, and by MBR when `mbr` is on or the run decodes by MBR; write
    the best into the run's config unless `write` is off."""
    loaded = load_model(run_dir, checkpoint)
    config = loaded.config
    data = eval_set(config.data, split, src_file, ref_file)
    own = config.decoding
    current = (own.beam_size, own.length_penalty)
    tried: list[tuple[int, float, MbrConfig | None]] = [(b, a, None) for b, a in grid(beams, penalties, current)]
    if mbr or own.mbr is not None:
        tried.append((*current, own.mbr or MbrConfig()))
    points = []
    for beam, alpha, chosen in tried:
        decoding = own.model_copy(update={"beam_size": beam, "length_penalty": alpha, "n_best": 1, "mbr": chosen})
        translator = Translator(loaded.model, loaded.tokenizer, decoding, config.data.clean, config.evaluation)
        decoded = decode_and_score(translator, data, config.evaluation, None if chosen else beam, mbr=chosen or False)
        points.append(GridPoint(beam, alpha, decoded.bleu.score, decoded.chrf.score, decoded.sentences_per_s,
                                (beam, alpha, chosen) == (*current, own.mbr), chosen))
    best = max(points, key=lambda p: (round(p.bleu, 2), p.current, p.mbr is None, -p.beam_size))
    if write:
        before = next(p for p in points if p.current)
        record = TunedDecoding(split=data.name, checkpoint=loaded.checkpoint.path.name, bleu=round(best.bleu, 2),
                               before={"beam_size": before.beam_size, "length_penalty": before.length_penalty,
                                       "bleu": round(before.bleu, 2),
                                       **({"mbr_candidates": before.mbr.candidates} if before.mbr else {})},
                               beams=sorted({p.beam_size for p in points if p.mbr is None}),
                               length_penalties=sorted({p.length_penalty for p in points if p.mbr is None}))
        decoding = own.model_copy(update={
            "beam_size": best.beam_size, "length_penalty": best.length_penalty,
            "n_best": min(own.n_best, best.beam_size), "mbr": best.mbr, "tuned": record})
        loaded.run.write_config(config_to_yaml(config.model_copy(update={"decoding": decoding})))
    return TuneResult(data.name, points, best, write)
