"""Score a trained run on a split of its corpus or on any external source/reference pair of files:
translate, score with sacrebleu (BLEU, chrF, TER with signatures), write the hypotheses and a JSON report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nmt.config import Config
from nmt.data.corpus import load_split, read_lines
from nmt.errors import DataError
from nmt.fileio import atomic_write_text
from nmt.inference.ensemble import load_models
from nmt.inference.metrics import Score, score_all, scores_to_dict
from nmt.inference.translate import Translator


@dataclass
class EvalSet:
    name: str
    sources: list[str]
    references: list[str]


@dataclass
class EvaluationReport:
    name: str
    scores: list[Score]
    hypotheses_path: Path
    report_path: Path
    sentences: int


def eval_set(config: Config, split: str | None, src_file: Path | None, ref_file: Path | None) -> EvalSet:
    """A split of the run's corpus (read and cleaned as in training, nothing re-encoded or re-trained) or
    two aligned files."""
    if src_file is not None or ref_file is not None:
        if src_file is None or ref_file is None:
            raise DataError("--src and --ref go together")
        found = EvalSet(src_file.name, list(read_lines(src_file)), list(read_lines(ref_file)))
        if len(found.sources) != len(found.references):
            raise DataError(f"{src_file} has {len(found.sources)} lines but {ref_file} has {len(found.references)}")
        if not found.sources:
            raise DataError(f"{src_file} and {ref_file} hold no sentences to score")
        return found
    name = split or "dev"
    corpus = load_split(config.data, name)
    if not len(corpus):
        raise DataError(f"data.{name}: the split holds no sentences to score")
    return EvalSet(name, corpus.src, corpus.tgt)


def evaluate(run_dir: Path | Sequence[Path], split: str | None = None, src_file: Path | None = None,
             ref_file: Path | None = None, checkpoint: str = "best", beam_size: int | None = None,
             progress: bool = False, overrides: Sequence[str] = (), quantize: str | None = None,
             runtime: str = "torch") -> EvaluationReport:
    loaded = load_models(run_dir, checkpoint, overrides, quantize=quantize, runtime=runtime)
    config = loaded.config
    found = eval_set(config, split, src_file, ref_file)
    translator = Translator.for_run(loaded)
    beam = beam_size or config.decoding.beam_size
    hypotheses = [t.text for t in translator.translate(found.sources, beam_size=beam, progress=progress)]
    scores = score_all(hypotheses, found.references, config.evaluation)
    hyp_path, report_path = loaded.run.eval_files(found.name, beam)
    atomic_write_text(hyp_path, "".join(h + "\n" for h in hypotheses))
    report = {"test_set": found.name, "sentences": len(found.sources), "checkpoint": loaded.checkpoint.path.name,
              "beam_size": beam, "scores": scores_to_dict(scores)}
    if not isinstance(run_dir, Path) and len(run_dir) > 1:
        report["ensemble"] = [str(path) for path in run_dir]
    atomic_write_text(report_path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return EvaluationReport(found.name, scores, hyp_path, report_path, len(found.sources))
