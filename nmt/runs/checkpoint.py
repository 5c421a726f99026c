"""Checkpoints: written atomically, verified against a manifest, loaded safely, pruned without losing the best.

A checkpoint folder is written under a temporary name and swapped in when complete; loading verifies every
file against the manifest, so a truncated or corrupted checkpoint is reported by name and skipped.
Weights are safetensors; the training state is read with `torch.load(weights_only=True)`, which refuses
to unpickle arbitrary objects. Each checkpoint's metadata file holds its step, its dev scores and the model
config it was saved with: the best checkpoint is found from what is on disk, never from a separate marker
that a crash could lose (runs/loading.py rebuilds a model from them and refuses weights of another model).
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from nmt.config import ModelConfig, shown_value
from nmt.errors import ArgumentError, CheckpointError, DiskFullError
from nmt.fileio import sha256_of, staged_folder
from nmt.models import Model, count_parameters
from nmt.runs.rundir import CheckpointFiles, RunDir

log = logging.getLogger(__name__)

MB = 1 << 20
T = TypeVar("T")
READ_ATTEMPTS = 5


@dataclass
class Checkpoint:
    files: CheckpointFiles
    meta: dict[str, Any]
    weights_sha256: str | None = None
    """The weights' sha256 in the manifest verified: which weights these are, whatever the folder's name (a
    rewritten `averaged`, a step written again); None in an export's record of its checkpoint."""

    @property
    def path(self) -> Path:
        return self.files.folder

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def label(self) -> str:
        """The folder's name, and whether these are its moving average's weights: what a report shows."""
        return f"{self.path.name} (moving average)" if self.files.ema else self.path.name

    @property
    def dev_bleu(self) -> float | None:
        value = self.meta.get("dev_bleu")
        return float(value) if isinstance(value, int | float) else None


def _tensor_bytes(value: Any) -> int:
    """Bytes of every tensor inside nested dicts, lists and tuples (what torch.save will write, roughly)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def checkpoint_bytes(state_dict: dict[str, torch.Tensor], train_state: dict[str, Any]) -> int:
    """About what a checkpoint takes on disk: its tensors, and a megabyte for the rest."""
    return _tensor_bytes(state_dict) + _tensor_bytes(train_state) + MB


def _disk_full_error(run: RunDir, final: CheckpointFiles, needed: int) -> DiskFullError:
    free = shutil.disk_usage(run.checkpoints_dir).free
    return DiskFullError(f"cannot write checkpoint {final.folder}: no space left on the device of {run.path} "
                           f"(a checkpoint needs about {needed / MB:,.0f} MB, {free / MB:,.0f} MB free); "
                           f"free some space (older checkpoints in {run.checkpoints_dir} can go), then resume with "
                           "--resume")


def save_checkpoint(run: RunDir, model: Model, train_state: dict[str, Any], meta: dict[str, Any],
                    keep_last: int, ema: dict[str, torch.Tensor] | None = None) -> CheckpointFiles:
    """Write checkpoint `step-N` atomically (with the moving average of the weights, `ema`, beside them), then
    prune old ones."""
    final = run.checkpoint(int(meta["step"]))
    write_checkpoint(run, final, model.state_dict(), train_state, meta, ema)
    prune(run, keep_last)
    return final


def _check_finite(state_dict: dict[str, torch.Tensor], what: str) -> None:
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"refusing to save a checkpoint: {what} {name} is not finite")


def _save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    # Tied weights share storage; safetensors stores each tensor once, so clone to plain tensors.
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()}, str(path))


def write_checkpoint(run: RunDir, final: CheckpointFiles, state_dict: dict[str, torch.Tensor],
                     train_state: dict[str, Any], meta: dict[str, Any],
                     ema: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint folder atomically (fileio.staged_folder: staged beside it, files fsynced, manifest last,
    then swapped in whole); the staging folders that killed writers left are removed, a live writer's never.

    Any failure (a full disk raises OSError from our writes but RuntimeError from torch.save) removes the
    staging folder, so a failed save never keeps the disk full, and leaves earlier checkpoints as they were."""
    _check_finite(state_dict, "parameter")
    if ema is not None:
        _check_finite(ema, "the moving average of")
    run.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    needed = checkpoint_bytes(state_dict, train_state) + (_tensor_bytes(ema) if ema is not None else 0)
    if shutil.disk_usage(run.checkpoints_dir).free < needed:
        raise _disk_full_error(run, final, needed)
    try:
        with staged_folder(final.folder, siblings=True) as folder:
            staging = CheckpointFiles(folder)
            _save_weights(state_dict, staging.weights)
            hashed = list(CheckpointFiles.HASHED)
            if ema is not None:
                _save_weights(ema, staging.folder / CheckpointFiles.EMA_WEIGHTS)
                hashed.append(CheckpointFiles.EMA_WEIGHTS)
            torch.save(train_state, staging.state)
            staging.meta.write_text(json.dumps(meta, indent=2) + "\n")
            manifest = {name: sha256_of(staging.folder / name) for name in hashed}
            staging.manifest.write_text(json.dumps(manifest, indent=2) + "\n")
    except (OSError, RuntimeError, SafetensorError) as err:
        # ENOSPC arrives as OSError, as SafetensorError, or from torch.save as an opaque RuntimeError ("unexpected
        # pos ..."): a device with next to nothing free at the moment of failure tells the same story.
        full = (getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err)
                or shutil.disk_usage(run.checkpoints_dir).free < MB)
        if full:
            raise _disk_full_error(run, final, needed) from None
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        raise CheckpointError(f"cannot write checkpoint {final.folder}: {reason}") from None


def read_meta(files: CheckpointFiles) -> dict[str, Any]:
    try:
        meta = json.loads(files.meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CheckpointError(f"{files.meta}: missing or not JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise CheckpointError(f"{files.meta}: not a checkpoint's metadata (no integer 'step')")
    return meta


def verify(files: CheckpointFiles) -> Checkpoint:
    """Check every file of a checkpoint against its manifest; raise CheckpointError naming what is wrong.

    The manifest must list exactly the checkpoint's files: an empty or partial one proves nothing. The
    moving average's view (`files.ema`) needs the average too, and presents the average's dev scores."""
    try:
        manifest = json.loads(files.manifest.read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{files.manifest}: missing or unreadable (incomplete checkpoint)") from None
    if (not isinstance(manifest, dict) or set(manifest) - {CheckpointFiles.EMA_WEIGHTS} != set(CheckpointFiles.HASHED)
            or not all(isinstance(d, str) for d in manifest.values())):
        raise CheckpointError(f"{files.manifest}: does not list the sha256 of every file "
                              f"({', '.join(CheckpointFiles.HASHED)})")
    if files.ema and CheckpointFiles.EMA_WEIGHTS not in manifest:
        raise CheckpointError(f"{files.folder}: no moving average of the weights (saved by runs with training.ema)")
    for name, digest in manifest.items():
        path = files.folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        if sha256_of(path) != digest:
            raise CheckpointError(f"{path}: corrupted (sha256 does not match the manifest)")
    return Checkpoint(files, read_scores(files), manifest[files.weights.name])


EMA_PREFIX = "ema_"
"""A checkpoint's dev scores of the moving average are its scores' names with this prefix."""


def ema_scores(meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata as the moving average's own: its scores under the plain names (dev_bleu, ...)."""
    plain = {k: v for k, v in meta.items() if not k.startswith(EMA_PREFIX) and not k.startswith(("dev_", "quality_"))}
    return plain | {k.removeprefix(EMA_PREFIX): v for k, v in meta.items() if k.startswith(EMA_PREFIX)}


def read_scores(files: CheckpointFiles) -> dict[str, Any]:
    """The metadata of the weights `files` names: for the moving average's view, the average's own scores."""
    meta = read_meta(files)
    return ema_scores(meta) if files.ema else meta


def latest_intact(run: RunDir) -> Checkpoint | None:
    """The newest checkpoint that verifies, saying which newer ones were skipped and why."""
    for files in reversed(run.checkpoints()):
        try:
            return verify(files)
        except CheckpointError as err:
            log.warning("skipping checkpoint: %s", err)
    return None


def _scored(run: RunDir, key: str) -> list[tuple[float, int, CheckpointFiles]]:
    """(score, step, files) of every checkpoint whose metadata holds the dev score `key`."""
    scored = []
    for files in run.checkpoints():
        try:
            meta = read_meta(files)
        except CheckpointError:
            continue
        if isinstance(meta.get(key), int | float):
            scored.append((float(meta[key]), int(meta["step"]), files))
    return scored


def best_files(run: RunDir, ema: bool | None = None) -> CheckpointFiles | None:
    """The weights with the highest dev BLEU (the earliest of equals, the trained ones before their average),
    from the metadata on disk: of either kind (None), the moving average only (True) or the trained weights only
    (False). A run with training.ema validates both at every checkpoint, so its best may be the average."""
    scored: list[tuple[float, bool, int, CheckpointFiles]] = []
    for average in [False, True] if ema is None else [ema]:
        key = f"{EMA_PREFIX}dev_bleu" if average else "dev_bleu"
        scored += [(score, not average, -step, CheckpointFiles(files.folder, ema=average))
                   for score, step, files in _scored(run, key)]
    return max(scored, key=lambda s: s[:3])[3] if scored else None


def prune(run: RunDir, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints, the best trained weights and the best moving average."""
    kept = {best.folder for best in (best_files(run, ema=False), best_files(run, ema=True)) if best is not None}
    for old in run.checkpoints()[:-keep_last]:
        if old.folder not in kept:
            shutil.rmtree(old.folder, ignore_errors=True)


def surviving_pruning(run: RunDir, read: Callable[[], T]) -> T:
    """`read()` (which finds and reads checkpoints of `run`), again when it failed because a checkpoint it saw
    was removed meanwhile: a live trainer keeps only its newest training.keep_last, so a reader of a run that
    is training (average, tune, export, evaluate, serve) can lose the checkpoint it chose mid-read."""
    for attempt in range(1, READ_ATTEMPTS + 1):
        listed = run.checkpoints()
        try:
            return read()
        except CheckpointError:
            if attempt == READ_ATTEMPTS or all(files.folder.is_dir() for files in listed):
                raise
            log.info("%s: a checkpoint was pruned by the running trainer while being read; reading again", run.path)
    raise AssertionError("unreachable")


def find_checkpoint(run: RunDir, which: str | CheckpointFiles) -> Checkpoint:
    """'best' (the highest dev BLEU: the trained weights or, with training.ema, their moving average), 'last',
    'averaged' (written by `nmt average`), 'ema' (the moving average of the weights, from the checkpoint where
    its dev BLEU was best) or a checkpoint's folder name (`step-00003000`); a corrupted best falls back to the
    newest intact one, with a warning. Any other name is refused: it must never quietly mean the newest. Given
    the files of one checkpoint, that one, verified, or an error."""
    if isinstance(which, CheckpointFiles):
        if not which.folder.is_dir():
            raise CheckpointError(f"{which.folder}: no such checkpoint")
        return verify(which)
    if which not in ("best", "last", "averaged", "ema"):
        named = {files.folder.name: files for files in run.checkpoints()}
        if not isinstance(which, str) or which not in named:
            shown = ", ".join(list(named)[-3:]) or "none yet"
            raise ArgumentError("checkpoint", f"{shown_value(which)} is not best, last, averaged, ema or a "
                                              f"checkpoint of {run.path} (the newest: {shown})")
        return verify(named[which])
    if which == "ema":
        if (best := best_files(run, ema=True)) is None:
            raise CheckpointError(f"{run.path}: no validated moving average of the weights (train with "
                                  "training.ema to keep one)")
        return verify(best)
    if which == "averaged":
        if not run.averaged_checkpoint().folder.is_dir():
            raise CheckpointError(f"{run.path}: no averaged checkpoint (write one with: nmt average --model "
                                  f"{run.path})")
        return verify(run.averaged_checkpoint())
    if which == "best" and (best := best_files(run)) is not None:
        try:
            return verify(best)
        except CheckpointError as err:
            fallback = latest_intact(run)
            if fallback is None:
                raise
            log.warning("the best checkpoint %s is unusable (%s); using the newest intact one, %s",
                        best.folder.name, err, fallback.path.name)
            return fallback
    found = latest_intact(run)
    if found is None:
        raise CheckpointError(f"{run.path}: no intact checkpoint (train first, or check the run directory)")
    return found


def checkpoint_meta(step: int, epoch: int, model: Model, model_config: ModelConfig,
                    scores: dict[str, float] | None) -> dict[str, Any]:
    """What a checkpoint's metadata records: position, dev scores, parameter count and the weights' model config."""
    return {"step": step, "epoch": epoch, **(scores or {}), "parameters": count_parameters(model),
            "model": model_config.model_dump(mode="json")}


def load_train_state(checkpoint: Checkpoint) -> dict[str, Any]:
    path = checkpoint.files.state
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # weights_only refuses pickled code with an UnpicklingError, among others
        raise CheckpointError(f"{path}: not a safe checkpoint (it holds more than tensors and plain data, or is "
                              "damaged); it will not be loaded") from None


