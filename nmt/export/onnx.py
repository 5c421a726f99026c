"""Export a trained run to ONNX: two graphs, the encoder and one decoder step, while the search loop
(inference/search.py: greedy, beam, n-best, length penalty) stays in Python. The graphs take and return the
model's memory and decoder state as flat lists of tensors, in the order the model's `flat_layout` gives;
inference/onnx_runtime.py decodes them on onnxruntime."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import cast

import torch
from torch import nn

from nmt.export import export_folder, require_export
from nmt.fileio import describe_files
from nmt.inference.onnx_runtime import ENCODER, LAYOUT, STEP
from nmt.models.flat import FlatLayout
from nmt.models.interface import Exportable
from nmt.runs.loading import LoadedRun, load_model
from nmt.runs.rundir import RunDir
from nmt.tokens import PAD_ID

OPSET = 17


class EncoderGraph(nn.Module):
    def __init__(self, model: Exportable):
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory, state = self.model.encode(src, lengths, src != PAD_ID)
        return (*memory.flatten(), *state.flatten())


class StepGraph(nn.Module):
    def __init__(self, model: Exportable, layout: FlatLayout):
        super().__init__()
        self.model, self.memory_count = model, len(layout.memory)

    def forward(self, prev: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory, state = self.model.unflatten(list(tensors[:self.memory_count]), list(tensors[self.memory_count:]))
        log_probs, state, weights = self.model.step_log_probs(prev, state, memory)
        return (log_probs, weights, *state.flatten())


def _dynamic_axes(layout: FlatLayout, names: list[str], sequence: str) -> dict[str, dict[int, str]]:
    """Batch (B) and source (S) or cache (T) lengths vary; everything else is fixed by the model."""
    axes: dict[str, dict[int, str]] = {}
    for name in names:
        base = name.removeprefix("new_")
        if base in layout.state:
            batch = layout.state_batch_axes[layout.state.index(base)]
            axes[name] = {batch: "B", **({1: sequence} if base.startswith("cache") else {})}
        else:
            axes[name] = {0: "B", 1: "S"}
    return axes


def export_onnx(run_dir: Path, which: str = "best", output: Path | None = None) -> Path:
    """Write encoder.onnx, step.onnx and layout.json (which records each graph's size and sha256) for a run's
    checkpoint into `output` (RUN/export/onnx), replacing an earlier export whole."""
    return write_onnx(load_model(run_dir, which), output or RunDir(run_dir).export_dir("onnx"))


def write_onnx(loaded: LoadedRun, folder: Path) -> Path:
    """`export_onnx` of a loaded run, into `folder`."""
    require_export(loaded.model, "onnx")
    model = cast(Exportable, loaded.model)
    layout = model.flat_layout()
    src = torch.tensor([[5, 6, 7, 8, 3], [9, 10, 3, PAD_ID, PAD_ID]]) % loaded.tokenizer.src_vocab_size
    lengths = (src != PAD_ID).sum(dim=1)
    # torch's TorchScript-based exporter traces the graphs and warns about every shape it reads in Python;
    # the dynamic batch, source and cache axes are what the export tests check on other shapes.
    with export_folder(folder, LAYOUT) as staging, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoded = EncoderGraph(model)(src, lengths)
        memory = list(encoded[:len(layout.memory)])
        state = list(encoded[len(layout.memory):])
        # Trace the step one position in, so every cache has a non-empty (and dynamic) length.
        step_memory, step_state = model.unflatten(memory, state)
        _, first, _ = model.step_log_probs(torch.tensor([2, 2]), step_state, step_memory)
        state = first.flatten()
        encoder_outputs = [*layout.memory, *layout.state]
        torch.onnx.export(EncoderGraph(model), (src, lengths), str(staging / ENCODER), dynamo=False,
                          opset_version=OPSET, input_names=["src", "lengths"], output_names=encoder_outputs,
                          dynamic_axes={"src": {0: "B", 1: "S"}, "lengths": {0: "B"},
                                        **_dynamic_axes(layout, encoder_outputs, "T")})
        step_inputs = ["prev", *layout.memory, *layout.state]
        step_outputs = ["log_probs", "weights", *(f"new_{name}" for name in layout.state)]
        torch.onnx.export(StepGraph(model, layout), (torch.tensor([4, 5]), *memory, *state), str(staging / STEP),
                          dynamo=False, opset_version=OPSET, input_names=step_inputs, output_names=step_outputs,
                          dynamic_axes={"prev": {0: "B"}, "log_probs": {0: "B"}, "weights": {0: "B", 1: "S"},
                                        **_dynamic_axes(layout, step_inputs[1:], "T"),
                                        **_dynamic_axes(layout, step_outputs[2:], "T1")})
        saved = {**layout.__dict__, "checkpoint": loaded.checkpoint.path.name,
                 "moving_average": loaded.checkpoint.files.ema, "checkpoint_meta": loaded.checkpoint.meta,
                 "files": describe_files(staging)}
        (staging / LAYOUT).write_text(json.dumps(saved, indent=2) + "\n")
    return folder
