"""The run directory: every file name of a run, and the small readers and writers around them.

    RUN/config.yaml                   the resolved config: rebuilds the model and reproduces the run alone
    RUN/src.model, tgt.model          SentencePiece models; tokenizer.json records the special ids
    RUN/vocab.json                    an imported model's pieces by id, per side (data/tokenizer.Vocabulary)
    RUN/checkpoints/step-00001000/    model.safetensors, state.pt, meta.json, MANIFEST.json (see checkpoint.py);
                                      ema.safetensors with training.ema
    RUN/metrics.jsonl, train.log      training and validation records, one JSON object a line; the log
    RUN/tensorboard/                  the same as TensorBoard event files, with attention images (optional)
    RUN/eval/, attention/, analysis/  what `nmt evaluate`, `nmt attention` and `nmt analyze` write

No other module spells these names: they ask a `RunDir` (or a `CheckpointFiles`) for a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nmt.data.tokenizer import Tokenizer
from nmt.fileio import atomic_write_bytes, atomic_write_text
from nmt.tokens import SPECIAL_IDS

CHECKPOINT_PREFIX = "step-"


@dataclass(frozen=True)
class CheckpointFiles:
    """The files of one checkpoint folder; the manifest lists the sha256 of every other file. `ema`: the
    weights to load are the moving average saved beside the trained ones (training.ema)."""

    folder: Path
    ema: bool = False

    WEIGHTS = "model.safetensors"
    EMA_WEIGHTS = "ema.safetensors"
    STATE = "state.pt"
    META = "meta.json"
    MANIFEST = "MANIFEST.json"
    HASHED = (WEIGHTS, STATE, META)
    """Every checkpoint's files; one of a run with training.ema also has EMA_WEIGHTS."""

    @property
    def weights(self) -> Path:
        return self.folder / (self.EMA_WEIGHTS if self.ema else self.WEIGHTS)

    @property
    def state(self) -> Path:
        return self.folder / self.STATE

    @property
    def meta(self) -> Path:
        return self.folder / self.META

    @property
    def manifest(self) -> Path:
        return self.folder / self.MANIFEST


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def owning(cls, config_path: Path) -> RunDir | None:
        """The run whose own config.yaml `config_path` is (`nmt train` writes it beside the run's SentencePiece
        models), or None for a config kept anywhere else."""
        run = cls(config_path.parent)
        return run if config_path.name == "config.yaml" and run.src_model_path.is_file() else None

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard_dir(self) -> Path:
        """TensorBoard event files (training.tensorboard)."""
        return self.path / "tensorboard"

    @property
    def attention_dir(self) -> Path:
        return self.path / "attention"

    @property
    def analysis_dir(self) -> Path:
        return self.path / "analysis"

    def export_dir(self, format_: str) -> Path:
        """Where `nmt export --format FORMAT` writes."""
        return self.path / "export" / format_

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    # Checkpoints ------------------------------------------------------------------------------------------

    def checkpoint(self, step: int) -> CheckpointFiles:
        return CheckpointFiles(self.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step:08d}")

    def averaged_checkpoint(self) -> CheckpointFiles:
        """What `nmt average` writes: outside the step-N series, so pruning and resuming never touch it."""
        return CheckpointFiles(self.checkpoints_dir / "averaged")

    @property
    def lock_path(self) -> Path:
        """Held by the one process that writes the run (runs/lock.py)."""
        return self.path / ".lock"

    def stale_staging(self) -> list[Path]:
        """Step checkpoints being written, or left half-written by a killed writer (fileio.staged_folder's
        `.step-N.<random>.tmp`)."""
        return sorted(self.checkpoints_dir.glob(f".{CHECKPOINT_PREFIX}*.tmp"))

    def checkpoints(self) -> list[CheckpointFiles]:
        """Every published checkpoint folder, oldest first (intact or not: checkpoint.py verifies)."""
        if not self.checkpoints_dir.is_dir():
            return []
        return [CheckpointFiles(p) for p in sorted(self.checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*")) if p.is_dir()]

    # Config and tokenizer --------------------------------------------------------------------------------

    def write_config(self, yaml_text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, yaml_text)

    @property
    def src_model_path(self) -> Path:
        return self.path / "src.model"

    @property
    def tgt_model_path(self) -> Path:
        return self.path / "tgt.model"

    @property
    def vocab_path(self) -> Path:
        return self.path / "vocab.json"

    def write_tokenizer(self, tokenizer: Tokenizer) -> None:
        atomic_write_bytes(self.src_model_path, tokenizer.src_proto)
        atomic_write_bytes(self.tgt_model_path, tokenizer.tgt_proto)
        if tokenizer.vocabulary is not None:
            atomic_write_text(self.vocab_path, tokenizer.vocabulary.to_text())
        info = {"special_ids": SPECIAL_IDS, "src_vocab_size": tokenizer.src_vocab_size,
                "tgt_vocab_size": tokenizer.tgt_vocab_size}
        atomic_write_text(self.path / "tokenizer.json", json.dumps(info, indent=2) + "\n")

    # Metrics -------------------------------------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _metrics_lines(self) -> list[str]:
        return self.metrics_path.read_text(encoding="utf-8").splitlines() if self.metrics_path.is_file() else []

    def metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl; a line cut short by a kill is skipped."""
        return _records(self._metrics_lines())

    def truncate_metrics(self, step: int) -> int:
        """Keep the records up to `step` (a resumed run trains the later steps again) and drop lines a kill cut
        short; returns how many records were dropped."""
        lines = self._metrics_lines()
        records = _records(lines)
        kept = [r for r in records if int(r.get("step", 0)) <= step]
        if len(kept) != len(lines):
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        return len(records) - len(kept)

    # Outputs of evaluate / attention / analyze ---------------------------------------------------------

    def eval_files(self, test_set: str, beam_size: int) -> tuple[Path, Path]:
        """The hypotheses file and the JSON report of one evaluation."""
        stem = f"{test_set}.beam{beam_size}"
        return self.eval_dir / f"{stem}.hyp", self.eval_dir / f"{stem}.json"

    def eval_reports(self, test_set: str) -> list[Path]:
        return sorted(self.eval_dir.glob(f"{test_set}.beam*.json")) if self.eval_dir.is_dir() else []


def _records(lines: list[str]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
