"""Decode an exported run (nmt export --format onnx) on onnxruntime: `OnnxModel` wraps the encoder and step
graphs behind the same interface as a PyTorch model (`encode`, `step_log_probs`, `memory.repeat` and `select`,
`state.select`), so the Translator and the Python search decode it unchanged. This module also owns the
export folder's file names, which the exporter writes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nmt.config import ModelConfig
from nmt.errors import CheckpointError, ConfigError, NmtError
from nmt.models.flat import FlatLayout
from nmt.runs.checkpoint import Checkpoint
from nmt.runs.loading import DecodingRun, load_run_config, load_tokenizer
from nmt.runs.rundir import CheckpointFiles, RunDir

ENCODER, STEP, LAYOUT = "encoder.onnx", "step.onnx", "layout.json"


@dataclass
class OnnxMemory:
    tensors: list[np.ndarray]
    beams: int = 1  # rows per sentence

    def repeat(self, times: int) -> OnnxMemory:
        return OnnxMemory([np.repeat(t, times, axis=0) for t in self.tensors], self.beams * times)

    def select(self, index: torch.Tensor) -> OnnxMemory:
        """Keep these sentences, each with its beams."""
        rows = (index.cpu().numpy()[:, None] * self.beams + np.arange(self.beams)).reshape(-1)
        return OnnxMemory([np.take(t, rows, axis=0) for t in self.tensors], self.beams)


@dataclass
class OnnxState:
    tensors: list[np.ndarray]
    batch_axes: list[int]

    def select(self, index: torch.Tensor) -> OnnxState:
        rows = index.cpu().numpy()
        return OnnxState([np.take(t, rows, axis=axis) for t, axis in zip(self.tensors, self.batch_axes, strict=True)],
                         self.batch_axes)


@dataclass
class Export:
    """What one opening of an export folder holds: the layout, the checkpoint it was exported from (its folder
    name and metadata, kept in the export: training may have pruned the checkpoint since), the graphs."""

    layout: FlatLayout
    checkpoint: str
    moving_average: bool  # the graphs hold the checkpoint's moving average of the weights (training.ema)
    checkpoint_meta: dict[str, Any]
    encoder: bytes
    step: bytes


def read_layout(path: Path,
                text: bytes) -> tuple[FlatLayout, str, bool, dict[str, Any], dict[str, tuple[int, str]]]:
    """layout.json: the flat tensors' names and batch axes, the folder name (in the run's checkpoints/), whether
    its moving average was exported, the metadata of the checkpoint the graphs were exported from, and the size
    and sha256 of each graph; a damaged or tampered file is refused in one line."""
    try:
        saved = json.loads(text)
        layout = FlatLayout([str(n) for n in saved["memory"]], [str(n) for n in saved["state"]],
                            [int(a) for a in saved["state_batch_axes"]])
        checkpoint, meta = saved["checkpoint"], saved["checkpoint_meta"]
        moving_average = saved.get("moving_average", False)  # absent from exports written before training.ema
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: not a layout written by nmt export (export the run again)") from None
    if (len(layout.state) != len(layout.state_batch_axes) or not layout.memory or not isinstance(meta, dict)
            or type(meta.get("step")) is not int or not isinstance(moving_average, bool)):
        raise CheckpointError(f"{path}: not a layout written by nmt export (export the run again)")
    if not _plain_name(checkpoint):
        raise CheckpointError(f"{path}: 'checkpoint' must name a folder in the run's checkpoints/, got {checkpoint!r}")
    files = saved.get("files")
    if (not isinstance(files, dict) or not {ENCODER, STEP} <= set(files)
            or not all(_plain_name(name) and isinstance(r, dict) and type(r.get("size")) is int
                       and isinstance(r.get("sha256"), str) for name, r in files.items())):
        raise CheckpointError(f"{path}: does not record the size and sha256 of every file ({ENCODER}, {STEP}): "
                              "damaged, or written by an older nmt export (export the run again)")
    return layout, checkpoint, moving_average, meta, {name: (r["size"], r["sha256"]) for name, r in files.items()}


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def _read_at(directory: int, folder: Path, name: str) -> bytes | None:
    """A file of `folder`, open as descriptor `directory`; None if it is missing."""
    try:
        with open(os.open(name, os.O_RDONLY, dir_fd=directory), "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CheckpointError(f"{folder / name}: {err.strerror or err}") from None


def read_export(folder: Path) -> Export:
    """The export in `folder`, every file checked against the size and sha256 that layout.json records before
    anything runs: a truncated, swapped or foreign graph is refused in one line naming it. Everything is read
    through one opening of the folder, so an export that `nmt export` swaps in meanwhile is never mixed in."""
    missing = ConfigError(f"{folder}: no exported model (write one with: nmt export --model RUN --format onnx)")
    try:
        directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        raise missing from None
    try:
        text = _read_at(directory, folder, LAYOUT)
        if text is None:
            raise missing
        layout, checkpoint, moving_average, meta, records = read_layout(folder / LAYOUT, text)
        found = {}
        for name, (size, digest) in records.items():
            data = _read_at(directory, folder, name)
            if data is None:
                raise CheckpointError(f"{folder / name}: missing (export the run again)")
            if len(data) != size:
                raise CheckpointError(f"{folder / name}: {len(data):,} bytes where {LAYOUT} records {size:,} "
                                      "(truncated or replaced; export the run again)")
            if hashlib.sha256(data).hexdigest() != digest:
                raise CheckpointError(f"{folder / name}: sha256 does not match {LAYOUT} (damaged, or a file of "
                                      "another export; export the run again)")
            found[name] = data
    finally:
        os.close(directory)
    return Export(layout, checkpoint, moving_average, meta, found[ENCODER], found[STEP])


class OnnxModel(nn.Module):
    """The exported graphs on onnxruntime's CPU provider, decoding through the PyTorch search code."""

    def __init__(self, folder: Path, model: ModelConfig):
        super().__init__()
        self.max_positions = model.max_positions  # the exported model's, as its config says
        self.cache_floats_per_position = model.cache_floats_per_position
        try:
            import onnxruntime
        except ImportError:
            raise NmtError("ONNX decoding needs onnxruntime: pip install 'nmt[export]'") from None
        export = read_export(folder)
        self.layout, self.checkpoint, self.checkpoint_meta = export.layout, export.checkpoint, export.checkpoint_meta
        self.moving_average = export.moving_average
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the threads PyTorch decoding would use
        # Spinning threads wait for work by burning CPU: on shared cores that starves everything else.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.encoder, self.step = (onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
                                   for graph in (export.encoder, export.step))
        self.encoder_inputs = {i.name for i in self.encoder.get_inputs()}  # a Transformer's ignores `lengths`
        self.step_inputs = [i.name for i in self.step.get_inputs()]

    def encode(self, src: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> tuple[OnnxMemory, OnnxState]:
        feed = {"src": src.cpu().numpy(), "lengths": lengths.cpu().numpy()}
        outputs = self.encoder.run(None, {k: v for k, v in feed.items() if k in self.encoder_inputs})
        count = len(self.layout.memory)
        return OnnxMemory(outputs[:count]), OnnxState(outputs[count:], self.layout.state_batch_axes)

    def step_log_probs(self, prev: torch.Tensor, state: OnnxState, memory: OnnxMemory
                       ) -> tuple[torch.Tensor, OnnxState, torch.Tensor]:
        values = dict(zip([*self.layout.memory, *self.layout.state], [*memory.tensors, *state.tensors], strict=True))
        values["prev"] = prev.cpu().numpy()
        log_probs, weights, *new_state = self.step.run(None, {name: values[name] for name in self.step_inputs})
        return torch.from_numpy(log_probs), OnnxState(new_state, state.batch_axes), torch.from_numpy(weights)


def load_onnx(run_dir: Path, overrides: Sequence[str] = ()) -> DecodingRun:
    """A run's exported model, which the Translator decodes like a PyTorch one."""
    run = RunDir(run_dir)
    config = load_run_config(run, overrides)
    model = OnnxModel(run.export_dir("onnx"), config.model)
    # the checkpoint as the export recorded it: it needs no checkpoint on disk (training may have pruned it)
    checkpoint = Checkpoint(CheckpointFiles(run.checkpoints_dir / model.checkpoint, ema=model.moving_average),
                            model.checkpoint_meta)
    return DecodingRun(run, config, load_tokenizer(run), model, checkpoint)
