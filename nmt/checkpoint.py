"""The run directory: self-contained, written atomically, loaded safely.

    runs/X/config.yaml                 resolved config: rebuilds the model and reproduces the run alone
    runs/X/src.model, tgt.model        SentencePiece models (+ tokenizer.json with the special ids)
    runs/X/checkpoints/step-00001000/  model.safetensors, state.pt (optimizer, scheduler, scaler, RNG,
                                       position in the data), meta.json, MANIFEST.json (sha256 of each)
    runs/X/best.json                   names the checkpoint folder with the best dev BLEU
    runs/X/metrics.jsonl, train.log

A checkpoint folder is written under a temporary name and renamed when complete; loading verifies every
file against the manifest, so a truncated or corrupted checkpoint is reported by name and skipped.
Weights are safetensors; the training state is read with `torch.load(weights_only=True)`, which refuses
to unpickle arbitrary objects.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nmt.config import Config, apply_override, config_to_yaml, parse_config, read_yaml
from nmt.download import sha256_of
from nmt.errors import CheckpointError, ConfigError
from nmt.fileio import atomic_write_text, fsync_dir
from nmt.model import Seq2Seq, build_model
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

WEIGHTS, STATE, META, MANIFEST = "model.safetensors", "state.pt", "meta.json", "MANIFEST.json"


@dataclass
class Checkpoint:
    path: Path
    meta: dict

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def write_run_files(run_dir: Path, config: Config, tokenizer: Tokenizer) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(config))
    tokenizer.save(run_dir)


def save_checkpoint(run_dir: Path, model: Seq2Seq, train_state: dict[str, Any], meta: dict, keep_last: int) -> Path:
    """Write checkpoint `step-N` atomically (files fsynced, manifest, then a rename), then prune old ones."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"refusing to save a checkpoint: parameter {name} is not finite")
    folder = checkpoints_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{meta['step']:08d}"
    for stale in folder.glob(".step-*.tmp"):  # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    staging = folder / f".{final.name}.tmp"
    staging.mkdir()
    try:
        # Tied weights share storage; safetensors stores each tensor once, so clone to plain tensors.
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()},
                  str(staging / WEIGHTS))
        torch.save(train_state, staging / STATE)
        (staging / META).write_text(json.dumps(meta, indent=2) + "\n")
        manifest = {name: sha256_of(staging / name) for name in (WEIGHTS, STATE, META)}
        for name in (WEIGHTS, STATE, META):
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        fsync_dir(staging)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        fsync_dir(folder)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {err.strerror or err}") from None
    _prune(run_dir, keep_last)
    return final


def mark_best(run_dir: Path, checkpoint: Path, meta: dict) -> None:
    atomic_write_text(run_dir / "best.json", json.dumps({"checkpoint": checkpoint.name, **meta}, indent=2) + "\n")


def best_checkpoint_name(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "best.json").read_text())["checkpoint"]
    except (OSError, ValueError, KeyError):
        return None


def _prune(run_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints and the best one."""
    best = best_checkpoint_name(run_dir)
    folders = sorted(p for p in checkpoints_dir(run_dir).glob("step-*") if p.is_dir())
    for old in folders[:-keep_last]:
        if old.name != best:
            shutil.rmtree(old, ignore_errors=True)


def verify(folder: Path) -> Checkpoint:
    """Check every file of a checkpoint against its manifest; raise CheckpointError naming what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{folder}: missing or unreadable {MANIFEST} (incomplete checkpoint)") from None
    for name, digest in manifest.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if sha256_of(path) != digest:
            raise CheckpointError(f"{path}: corrupted (sha256 does not match the manifest)")
    return Checkpoint(folder, json.loads((folder / META).read_text()))


def latest_intact(run_dir: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies, saying which newer ones were skipped and why."""
    for folder in sorted(checkpoints_dir(run_dir).glob("step-*"), reverse=True):
        try:
            return verify(folder)
        except CheckpointError as err:
            log.warning("skipping checkpoint: %s", err)
    return None


def find_checkpoint(run_dir: Path, which: str) -> Checkpoint:
    """'best' (by dev BLEU, falling back to the latest) or 'last'."""
    if which == "best" and (name := best_checkpoint_name(run_dir)):
        return verify(checkpoints_dir(run_dir) / name)
    found = latest_intact(run_dir)
    if found is None:
        raise CheckpointError(f"{run_dir}: no intact checkpoint (train first, or check the run directory)")
    return found


def load_weights(model: Seq2Seq, checkpoint: Checkpoint) -> None:
    try:
        tensors = load_file(str(checkpoint.path / WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{checkpoint.path / WEIGHTS}: cannot read weights ({err})") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if m != "decoder.output.weight" or not model.cfg.tie_embeddings]
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint.path / WEIGHTS}: does not match the config's model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


def load_train_state(checkpoint: Checkpoint) -> dict[str, Any]:
    path = checkpoint.path / STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses pickled code with an UnpicklingError, among others
        raise CheckpointError(f"{path}: refused to load ({type(err).__name__}: {str(err).splitlines()[0]})") \
            from None


RUN_OVERRIDABLE = ("decoding.", "evaluation.")


def load_run_config(run_dir: Path, overrides: Sequence[str] = ()) -> Config:
    """A run's saved config; `overrides` may change how it decodes and scores, not what was trained."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no config.yaml)")
    raw = read_yaml(path)
    for assignment in overrides:
        if not assignment.strip().startswith(RUN_OVERRIDABLE):
            raise ConfigError(f"--set {assignment!r}: a trained run accepts only decoding.* and evaluation.* "
                              "overrides")
        apply_override(raw, assignment)
    return parse_config(raw, source=str(path))


def load_model(run_dir: Path, which: str = "best", overrides: Sequence[str] = (),
               device: str | torch.device = "cpu") -> tuple[Config, Tokenizer, Seq2Seq, Checkpoint]:
    """Rebuild a trained model from its run directory alone."""
    config = load_run_config(run_dir, overrides)
    tokenizer = Tokenizer.load(run_dir)
    checkpoint = find_checkpoint(run_dir, which)
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    load_weights(model, checkpoint)
    return config, tokenizer, model.to(device).eval(), checkpoint
