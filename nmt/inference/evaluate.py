"""Score a trained run on a split of its corpus or on any external source/reference pair of files:
translate, score with sacrebleu (BLEU, chrF, TER with signatures), write the hypotheses and a JSON report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nmt.config import MbrConfig
from nmt.data.splits import eval_set
from nmt.fileio import atomic_write_text
from nmt.inference.ensemble import load_models
from nmt.inference.metrics import Score, scores_to_dict
from nmt.inference.options import DecodingOptions
from nmt.inference.scoring import decode_and_score
from nmt.inference.translate import Translator


@dataclass
class EvaluationReport:
    name: str
    scores: list[Score]
    hypotheses_path: Path
    report_path: Path
    sentences: int
    mbr: MbrConfig | None = None  # the translations were chosen by MBR with these settings
    quality_spearman: float | None = None  # of the quality scores with sentence chrF (None: undefined)
    quality_calibrated: bool = False  # whether the checkpoint held a quality calibration
    checkpoint: str = ""  # which weights translated (Checkpoint.label)


def evaluate(run_dir: Path | Sequence[Path], split: str | None = None, src_file: Path | None = None,
             ref_file: Path | None = None, checkpoint: str = "best", beam_size: int | None = None,
             progress: bool = False, overrides: Sequence[str] = (), quantize: str | None = None,
             runtime: str = "torch", mbr: object = None, seed: int | None = None) -> EvaluationReport:
    """Translate and score a split or the files given (beam size and MBR default to the run's; `mbr` and
    `seed` as `Translator.translate` takes them); also how well the quality scores rank the translations."""
    loaded = load_models(run_dir, checkpoint, overrides, quantize=quantize, runtime=runtime)
    config = loaded.config
    found = eval_set(config.data, split, src_file, ref_file)
    settings = DecodingOptions.resolve(config.decoding, beam_size, mbr=mbr)
    translator = Translator.for_run(loaded)
    decoded = decode_and_score(translator, found, config.evaluation, beam_size, progress, mbr=mbr, seed=seed)
    hypotheses = decoded.hypotheses
    scores = decoded.scores(found.references, config.evaluation)
    rank = decoded.quality_spearman(found.references, config.evaluation)
    calibrated = translator.estimator is not None and translator.estimator.calibrated
    # another checkpoint's evaluation, or MBR's, never overwrites the best checkpoint's search
    tag = found.name if checkpoint == "best" else f"{found.name}.{checkpoint}"
    if settings.mbr:
        tag += f".mbr-{settings.mbr.source}{settings.mbr.candidates}-{settings.mbr.metric}"
    hyp_path, report_path = loaded.run.eval_files(tag, settings.beam_size)
    atomic_write_text(hyp_path, "".join(h + "\n" for h in hypotheses))
    report = {"test_set": found.name, "sentences": len(found.sources), "checkpoint": loaded.checkpoint.path.name,
              "moving_average": loaded.checkpoint.files.ema,
              "beam_size": settings.beam_size, "mbr": settings.mbr.model_dump() if settings.mbr else None,
              "scores": scores_to_dict(scores), "quality": {"spearman": rank, "calibrated": calibrated}}
    if not isinstance(run_dir, Path) and len(run_dir) > 1:
        report["ensemble"] = [str(path) for path in run_dir]
    atomic_write_text(report_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return EvaluationReport(found.name, scores, hyp_path, report_path, len(found.sources), settings.mbr, rank,
                            calibrated, loaded.checkpoint.label)
