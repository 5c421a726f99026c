"""Loading a trained run: its config (with the overrides a trained run accepts), its SentencePiece models, and
its model rebuilt from the config with a checkpoint's weights, refusing any mismatch by name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file

from nmt.config import (
    Config,
    ModelConfig,
    apply_override,
    config_diff,
    format_diff,
    load_config,
    parse_config,
    read_yaml,
)
from nmt.data.tokenizer import Tokenizer, Vocabulary
from nmt.errors import CheckpointError, ConfigError
from nmt.models import Model, build_model
from nmt.models.interface import Decoder
from nmt.models.quantize import quantize_int8
from nmt.runs.checkpoint import Checkpoint, find_checkpoint, surviving_pruning
from nmt.runs.rundir import CheckpointFiles, RunDir


def read_config(path: Path, overrides: Sequence[str] = (), check_files: bool = True) -> Config:
    """A config file as the run commands read it. A run's own config.yaml names that run, whatever its
    run_dir says relative to the working directory, and in a copied run the copy: a resume never starts a new
    run elsewhere. Pointing it at another run_dir with --set is refused."""
    config = load_config(path, list(overrides), check_files)
    own = RunDir.owning(path)
    if own is None or _same_folder(config.run_path, own.path):
        return config
    if any(o.partition("=")[0].strip() == "run_dir" for o in overrides):
        raise ConfigError(f"--set run_dir={config.run_dir}: {path} is the config of the run in {own.path}, which "
                          "continues there only; to start a new run from it, copy the file elsewhere first")
    return config.model_copy(update={"run_dir": str(own.path)})


def _same_folder(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def load_tokenizer(run: RunDir) -> Tokenizer:
    """The run's SentencePiece models (src.model, tgt.model) and, for an imported model, its vocabulary."""
    try:
        return Tokenizer(run.src_model_path.read_bytes(), run.tgt_model_path.read_bytes(), _read_vocabulary(run))
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"{run.path}: cannot load the SentencePiece models ({err})") from None


def _read_vocabulary(run: RunDir) -> Vocabulary | None:
    if not run.vocab_path.is_file():
        return None
    try:
        return Vocabulary.from_text(run.vocab_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # json's errors are ValueErrors too
        raise CheckpointError(f"{run.vocab_path}: unreadable, or not a vocabulary ({err})") from None


def _check_model_config(checkpoint: Checkpoint, config: ModelConfig, config_path: Path) -> None:
    saved = checkpoint.meta.get("model")
    if not isinstance(saved, dict):
        return  # metadata without the model (edited by hand): the shape and tying checks below still run
    try:  # a setting added since the checkpoint was written takes its default, which is how it was trained
        saved = ModelConfig.model_validate(saved).model_dump(mode="json")
    except ValidationError:
        pass  # from a newer version or edited: compared as recorded
    differences = [d for d in config_diff(saved, config.model_dump(mode="json"), "model")
                   if not d[0].endswith("dropout")]
    if differences:
        raise CheckpointError(f"{checkpoint.path.name} was saved with another model than {config_path} "
                              f"describes: {format_diff(differences)}")


def read_weights(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """A checkpoint's weights by name (CheckpointError naming the file when they cannot be read)."""
    try:
        return load_file(str(checkpoint.files.weights))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{checkpoint.files.weights}: cannot read weights ({err})") from None


def load_weights(model: Model, checkpoint: Checkpoint, config: ModelConfig | None = None,
                 config_path: Path | None = None) -> None:
    """Load a checkpoint's weights into `model`, refusing any mismatch of names, shapes or tying by name."""
    if config is not None:
        _check_model_config(checkpoint, config, config_path or checkpoint.path)
    tensors = read_weights(checkpoint)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = [f"{k} {tuple(tensors[k].shape)} in the checkpoint, {tuple(expected[k].shape)} in the model"
              for k in sorted(set(expected) & set(tensors)) if tensors[k].shape != expected[k].shape]
    problems = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
               ([f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []) + shapes[:3]
    tied = [(a, b) for a, b in _shared_names(model)
            if a in tensors and b in tensors and not torch.equal(tensors[a], tensors[b])]
    if tied:
        problems.append(f"{tied[0][0]} and {tied[0][1]} are one tied matrix in the model but differ in the checkpoint")
    untied = [(a, b) for a, b in _separate_pairs(model, tensors) if torch.equal(tensors[a], tensors[b])]
    if untied:
        problems.append(f"{untied[0][0]} and {untied[0][1]} are tied in the checkpoint but separate in the model")
    if problems:
        raise CheckpointError(f"{checkpoint.files.weights}: does not match the config's model: {'; '.join(problems)}")
    model.load_state_dict(tensors)


def _shared_names(model: Model) -> list[tuple[str, str]]:
    """Pairs of state-dict names that are one parameter in `model` (tied embeddings)."""
    first: dict[int, str] = {}
    pairs = []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            pairs.append((first[id(param)], name))
        else:
            first[id(param)] = name
    return pairs


def _separate_pairs(model: Model, tensors: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    """Same-shaped embedding and output matrices that `model` keeps separate: equal values in a checkpoint
    mean it was saved with them tied (trained matrices are never equal by chance)."""
    shared = {n for pair in _shared_names(model) for n in pair}
    candidates = [n for n in tensors if n.endswith(("embed.weight", "output.weight")) and n not in shared]
    return [(a, b) for i, a in enumerate(candidates) for b in candidates[i + 1:]
            if tensors[a].shape == tensors[b].shape]


RUN_OVERRIDABLE = ("decoding.", "evaluation.")


def load_run_config(run: RunDir, overrides: Sequence[str] = ()) -> Config:
    """A run's saved config; `overrides` may change how it decodes and scores, not what was trained."""
    if not run.config_path.is_file():
        raise CheckpointError(f"{run.path}: not a run directory (no {run.config_path.name})")
    raw = read_yaml(run.config_path)
    for assignment in overrides:
        if not assignment.strip().startswith(RUN_OVERRIDABLE):
            raise ConfigError(f"--set {assignment!r}: a trained run accepts only decoding.* and evaluation.* "
                              "overrides")
        apply_override(raw, assignment)
    return parse_config(raw, source=str(run.config_path))


@dataclass
class DecodingRun:
    """A run ready to decode: its config, its SentencePiece models, the checkpoint decoded, and a model that
    offers the decoding interface (a PyTorch model, an ensemble, an export on ONNX Runtime)."""

    run: RunDir
    config: Config
    tokenizer: Tokenizer
    model: Decoder
    checkpoint: Checkpoint


@dataclass
class LoadedRun(DecodingRun):
    """A trained PyTorch model rebuilt from its run directory alone: what scoring, averaging, export and
    attention inspection need beyond decoding."""

    model: Model


def load_model(run_dir: Path, which: str | CheckpointFiles = "best", overrides: Sequence[str] = (),
               device: str | torch.device = "cpu", quantize: str | None = None) -> LoadedRun:
    """A run's model ready to decode, from the checkpoint `which` names (runs.checkpoint.find_checkpoint);
    `quantize="int8"` makes it a dynamically quantized CPU model."""
    if quantize not in (None, "int8"):
        raise ConfigError(f"quantize: {quantize!r} is not supported (int8 is)")
    if quantize and torch.device(device).type != "cpu":
        raise ConfigError("quantize: int8 decoding runs on the CPU only")
    run = RunDir(run_dir)
    config = load_run_config(run, overrides)
    tokenizer = load_tokenizer(run)
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)

    def read() -> Checkpoint:
        checkpoint = find_checkpoint(run, which)
        load_weights(model, checkpoint, config.model, run.config_path)
        return checkpoint

    checkpoint = surviving_pruning(run, read)
    model = model.to(device).eval()
    return LoadedRun(run, config, tokenizer, quantize_int8(model) if quantize else model, checkpoint)
