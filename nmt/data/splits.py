"""What a command decodes and scores: a split of a run's corpus, or two aligned files of the user's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nmt.config import DataConfig
from nmt.data.corpus import load_split, read_lines
from nmt.errors import DataError


@dataclass
class EvalSet:
    """Sentences to decode (`sources`) and what they are scored against (`references`), aligned by line."""

    name: str
    sources: list[str]
    references: list[str]


def eval_set(data: DataConfig, split: str | None = None, src_file: Path | None = None, ref_file: Path | None = None
             ) -> EvalSet:
    """A split of the run's corpus (default dev; read and cleaned as in training, nothing re-encoded or
    re-trained) or two aligned files: the one way every command reads what it decodes and scores."""
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
    corpus = load_split(data, name)
    if not len(corpus):
        raise DataError(f"data.{name}: the split holds no sentences to score")
    return EvalSet(name, corpus.src, corpus.tgt)
