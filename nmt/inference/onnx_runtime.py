"""Decode an exported run (nmt export --format onnx) on onnxruntime: `OnnxModel` wraps the encoder and step
graphs behind the same interface as a PyTorch model (`encode`, `step_log_probs`, `memory.repeat`,
`state.select`), so the Translator and the Python search decode it unchanged. This module also owns the
export folder's file names, which the exporter writes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nmt.errors import CheckpointError, ConfigError, NmtError
from nmt.models.flat import FlatLayout
from nmt.runs.checkpoint import verify
from nmt.runs.loading import DecodingRun, load_run_config, load_tokenizer
from nmt.runs.rundir import CheckpointFiles, RunDir

ENCODER, STEP, LAYOUT = "encoder.onnx", "step.onnx", "layout.json"


@dataclass
class OnnxMemory:
    tensors: list[np.ndarray]

    def repeat(self, times: int) -> OnnxMemory:
        return OnnxMemory([np.repeat(t, times, axis=0) for t in self.tensors])


@dataclass
class OnnxState:
    tensors: list[np.ndarray]
    batch_axes: list[int]

    def select(self, index: torch.Tensor) -> OnnxState:
        rows = index.cpu().numpy()
        return OnnxState([np.take(t, rows, axis=axis) for t, axis in zip(self.tensors, self.batch_axes, strict=True)],
                         self.batch_axes)


def read_layout(path: Path) -> tuple[FlatLayout, str]:
    """layout.json: the flat tensors' names and batch axes, and the folder name (in the run's checkpoints/) of
    the checkpoint the graphs were exported from; a damaged or tampered file is refused in one line."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        layout = FlatLayout([str(n) for n in saved["memory"]], [str(n) for n in saved["state"]],
                            [int(a) for a in saved["state_batch_axes"]])
        checkpoint = saved["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: not a layout written by nmt export (export the run again)") from None
    if len(layout.state) != len(layout.state_batch_axes) or not layout.memory:
        raise CheckpointError(f"{path}: not a layout written by nmt export (export the run again)")
    if not isinstance(checkpoint, str) or checkpoint in ("", ".", "..") or Path(checkpoint).name != checkpoint:
        raise CheckpointError(f"{path}: 'checkpoint' must name a folder in the run's checkpoints/, got {checkpoint!r}")
    return layout, checkpoint


class OnnxModel(nn.Module):
    """The exported graphs on onnxruntime's CPU provider, decoding through the PyTorch search code."""

    def __init__(self, folder: Path):
        super().__init__()
        try:
            import onnxruntime
        except ImportError:
            raise NmtError("ONNX decoding needs onnxruntime: pip install 'nmt[export]'") from None
        if not (folder / LAYOUT).is_file():
            raise ConfigError(f"{folder}: no exported model (write one with: nmt export --model RUN --format onnx)")
        self.layout, self.checkpoint = read_layout(folder / LAYOUT)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the threads PyTorch decoding would use
        # Spinning threads wait for work by burning CPU: on shared cores that starves everything else.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.encoder, self.step = (onnxruntime.InferenceSession(str(folder / name), options,
                                                                providers=["CPUExecutionProvider"])
                                   for name in (ENCODER, STEP))
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
    model = OnnxModel(run.export_dir("onnx"))
    checkpoint = verify(CheckpointFiles(run.checkpoints_dir / model.checkpoint))
    return DecodingRun(run, load_run_config(run, overrides), load_tokenizer(run), model, checkpoint)
