"""Ensembles: several trained runs decoding as one model. At every search step each member scores the next
token and the ensemble's distribution is the mean of their probabilities (log of the mean, so it stays a
distribution); greedy and beam search use it through the same step function as a single model.

Members must share their SentencePiece models (so source positions and target ids mean the same thing);
the first run's decoding and cleaning settings apply."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from nmt.errors import ArgumentError
from nmt.inference.onnx_runtime import load_onnx
from nmt.models.interface import Decoder
from nmt.runs.loading import DecodingRun, load_model


@dataclass
class EnsembleMemory:
    members: list[Any]

    def repeat(self, times: int) -> EnsembleMemory:
        return EnsembleMemory([m.repeat(times) for m in self.members])

    def select(self, index: torch.Tensor) -> EnsembleMemory:
        """Keep these sentences, each with its beams."""
        return EnsembleMemory([m.select(index) for m in self.members])


@dataclass
class EnsembleState:
    members: list[Any]

    def select(self, index: torch.Tensor) -> EnsembleState:
        return EnsembleState([s.select(index) for s in self.members])


class Ensemble(nn.Module):
    """The search-side interface of a model (`encode`, `step_log_probs`) over several models."""

    def __init__(self, models: Sequence[Decoder]):
        super().__init__()
        self.members: list[Decoder] = list(models)
        # registered as submodules (every member is an nn.Module), so eval(), train() and parameters() reach them
        self.registered = nn.ModuleList(cast(list[nn.Module], self.members))
        bounds = [m.max_positions for m in self.members if m.max_positions is not None]
        self.max_positions = min(bounds) if bounds else None  # what every member can encode
        self.cache_floats_per_position = sum(m.cache_floats_per_position for m in self.members)

    def encode(self, src: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor
               ) -> tuple[EnsembleMemory, EnsembleState]:
        encoded = [m.encode(src, lengths, mask) for m in self.members]
        return EnsembleMemory([e[0] for e in encoded]), EnsembleState([e[1] for e in encoded])

    def step_log_probs(self, prev_ids: torch.Tensor, state: EnsembleState, memory: EnsembleMemory
                       ) -> tuple[torch.Tensor, EnsembleState, torch.Tensor]:
        """log(mean of the members' probabilities) (N, V), the members' new states, their mean weights (N, S)."""
        steps = [m.step_log_probs(prev_ids, s, mem)
                 for m, s, mem in zip(self.members, state.members, memory.members, strict=True)]
        log_probs = torch.logsumexp(torch.stack([s[0] for s in steps]), dim=0) - math.log(len(steps))
        weights = torch.stack([s[2] for s in steps]).mean(dim=0)
        return log_probs, EnsembleState([s[1] for s in steps]), weights


def load_models(run_dirs: Path | Sequence[Path], which: str = "best", overrides: Sequence[str] = (),
                quantize: str | None = None, runtime: str = "torch") -> DecodingRun:
    """One run as it is, or several as an Ensemble with the first run's config and tokenizer; `runtime="onnx"`
    decodes each run's ONNX export (nmt export) on onnxruntime instead of its PyTorch checkpoint."""
    run_dirs = [run_dirs] if isinstance(run_dirs, Path) else list(run_dirs)
    if not run_dirs:
        raise ArgumentError("model", "give at least one run directory")
    if runtime == "onnx":
        if quantize or which != "best":
            raise ArgumentError("runtime", "onnx decodes the export, which holds one checkpoint (chosen when it was "
                                           "exported) and is not quantized: quantize and checkpoint apply to torch")
        loaded = [load_onnx(run_dir, overrides) for run_dir in run_dirs]
    else:
        loaded = [load_model(run_dir, which, overrides, quantize=quantize) for run_dir in run_dirs]
    first = loaded[0]
    if len(loaded) == 1:
        return first
    for other in loaded[1:]:
        if (other.tokenizer.src_proto, other.tokenizer.tgt_proto, other.tokenizer.vocabulary) != (
                first.tokenizer.src_proto, first.tokenizer.tgt_proto, first.tokenizer.vocabulary):
            raise ArgumentError("model", f"{other.run.path}: its SentencePiece models differ from "
                                         f"{first.run.path}'s; an ensemble needs runs trained on the same vocabularies")
    ensemble = Ensemble([run.model for run in loaded]).eval()
    return DecodingRun(first.run, first.config, first.tokenizer, ensemble, first.checkpoint)
