"""Score a trained run on a split of its corpus or on any external source/reference pair of files:
translate, score with sacrebleu (BLEU, chrF, TER with signatures), write the hypotheses and a JSON report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nmt.checkpoint import load_model
from nmt.config import Config
from nmt.corpus import read_lines
from nmt.errors import DataError
from nmt.fileio import atomic_write_text
from nmt.metrics import Score, score_all, scores_to_dict
from nmt.prepare import prepare_data
from nmt.translate import Translator


@dataclass
class EvaluationReport:
    name: str
    scores: list[Score]
    hypotheses_path: Path
    report_path: Path
    sentences: int


def test_set(config: Config, split: str | None, src_file: Path | None, ref_file: Path | None
             ) -> tuple[str, list[str], list[str]]:
    """(name, sources, references) from a split of the run's corpus or from two aligned files."""
    if src_file is not None or ref_file is not None:
        if src_file is None or ref_file is None:
            raise DataError("--src and --ref go together")
        src, ref = list(read_lines(src_file)), list(read_lines(ref_file))
        if len(src) != len(ref):
            raise DataError(f"{src_file} has {len(src)} lines but {ref_file} has {len(ref)}")
        return src_file.name, src, ref
    name = split or "dev"
    config.data.split(name)  # a clear error for a split the config does not declare
    encoded = prepare_data(config).splits[name]
    return name, encoded.src_text, encoded.tgt_text


def evaluate(run_dir: Path, split: str | None = None, src_file: Path | None = None, ref_file: Path | None = None,
             checkpoint: str = "best", beam_size: int | None = None, progress: bool = False,
             overrides: Sequence[str] = ()) -> EvaluationReport:
    config, tokenizer, model, found = load_model(run_dir, checkpoint, overrides)
    name, sources, references = test_set(config, split, src_file, ref_file)
    translator = Translator(model, tokenizer, config.decoding)
    beam = beam_size or config.decoding.beam_size
    hypotheses = [t.text for t in translator.translate(sources, beam_size=beam, progress=progress)]
    scores = score_all(hypotheses, references, config.evaluation)
    out_dir = run_dir / "eval"
    hyp_path, report_path = out_dir / f"{name}.beam{beam}.hyp", out_dir / f"{name}.beam{beam}.json"
    atomic_write_text(hyp_path, "".join(h + "\n" for h in hypotheses))
    report = {"test_set": name, "sentences": len(sources), "checkpoint": found.path.name, "beam_size": beam,
              "scores": scores_to_dict(scores)}
    atomic_write_text(report_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return EvaluationReport(name, scores, hyp_path, report_path, len(sources))
