"""Fine-tuning: a run that starts from another run's weights and tokenizer (`training.init_from`, set by
`nmt train --init-from RUN`), an imported pretrained model (`nmt import`) or one trained here.

The new run takes the other run's model and, with `vocab: same`, its tokenizer, with the keys the config (or
`--set`) gives explicitly on top: one that changes anything but dropout is refused by name. With `vocab: extend`
a tokenizer is trained on the new corpus as the config says (shared by both sides when the other run's is, unless
the config sets `tokenizer.joint`), and the pieces the other run lacks get new ids after its own: their
embedding and output rows start as a fresh model's, every other weight is the other run's. The optimizer,
schedule and step count start fresh; the config records the checkpoint the weights came from, and a resumed
run continues from its own checkpoints as any other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel

from nmt.config import Config, InitFrom, config_diff, format_diff, parse_config
from nmt.data.prepare import prepare_data
from nmt.data.tokenizer import Tokenizer, Vocabulary
from nmt.errors import CheckpointError, ConfigError
from nmt.models import VOCABULARY_ROWS, Model
from nmt.runs.checkpoint import Checkpoint, find_checkpoint, surviving_pruning
from nmt.runs.loading import load_run_config, load_tokenizer, load_weights, read_weights
from nmt.runs.rundir import RunDir
from nmt.tokens import EOS_ID

log = logging.getLogger(__name__)


def with_init_from(config: Config, run_dir: Path, vocab: Literal["same", "extend"] = "same") -> Config:
    """`config` starting from `run_dir`'s weights (what `nmt train --init-from RUN [--vocab extend]` asks)."""
    training = config.training.model_copy(update={"init_from": InitFrom(run=str(run_dir), vocab=vocab)})
    return config.model_copy(update={"training": training})


@dataclass
class Initialization:
    """The config to train (the other run's model and vocabulary, the checkpoint recorded), the checkpoint
    whose weights start it, and the other run's tokenizer."""

    config: Config
    checkpoint: Checkpoint
    tokenizer: Tokenizer

    @property
    def extend(self) -> bool:
        init = self.config.training.init_from
        return init is not None and init.vocab == "extend"


def _on_top(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _on_top(base[key], value) if both else value
    return merged


def inherited(source: BaseModel, given: BaseModel) -> dict[str, Any]:
    """`source`'s settings with those `given` sets explicitly on top: a `--set model.transformer.dropout=0.2`
    changes that key of the other run's model, where the rest of `given` would fall back to the defaults."""
    return _on_top(source.model_dump(mode="json"), given.model_dump(mode="json", exclude_unset=True))


def resolve_init(config: Config) -> Initialization:
    """Read the run `training.init_from` names and check `config` against it (module docstring)."""
    init = config.training.init_from
    assert init is not None  # the caller asks only then
    source = RunDir(Path(init.run))
    where = f"--init-from {source.path}"
    try:
        source_config = load_run_config(source)
    except CheckpointError as err:
        raise ConfigError(f"{where}: {err}") from None
    checkpoint = surviving_pruning(source, lambda: find_checkpoint(source, "best"))
    raw = config.model_dump(mode="json")
    raw["model"] = inherited(source_config.model, config.model)
    refused = [d for d in config_diff(source_config.model.model_dump(mode="json"), raw["model"], "model")
               if not d[0].endswith("dropout")]
    if refused:
        raise ConfigError(f"{where}: the config's model differs from the run's: {format_diff(refused)} (leave "
                          "the model section out to fine-tune the run's model; only dropout may differ)")
    if init.vocab == "extend":
        if "joint" not in config.tokenizer.model_fields_set:  # a shared vocabulary (tie: all) stays shared
            raw["tokenizer"]["joint"] = source_config.tokenizer.joint
    else:
        raw["tokenizer"] = inherited(source_config.tokenizer, config.tokenizer)
        if differences := config_diff(source_config.tokenizer.model_dump(mode="json"), raw["tokenizer"], "tokenizer"):
            raise ConfigError(f"{where}: the config asks for another vocabulary than the run's "
                              f"({format_diff(differences)}); fine-tuning keeps the run's vocabulary: leave the "
                              "tokenizer section out, or map the new one with --vocab extend")
    raw["training"]["init_from"] = init.model_copy(update={"checkpoint": checkpoint.path.name}).model_dump(mode="json")
    return Initialization(parse_config(raw, source=where), checkpoint, load_tokenizer(source))


def resumed_init(config: Config, own: Config) -> Config:
    """`config` resuming a fine-tuned run: the model, vocabulary and recorded origin of the run's own config,
    with what `config` sets explicitly on top (compared on resume, as for any run)."""
    raw = config.model_dump(mode="json")
    raw["model"], raw["tokenizer"] = inherited(own.model, config.model), inherited(own.tokenizer, config.tokenizer)
    raw["training"]["init_from"] = own.training.init_from.model_dump(mode="json") if own.training.init_from else None
    return parse_config(raw, source="--resume")


def fine_tuning_start(config: Config, run: RunDir, resuming: bool) -> tuple[Config, Initialization | None]:
    """A fine-tuning run's config, and the other run's weights to start from; resuming, none: the run's own
    config says what it started from (that run may be gone) and its own checkpoint holds the weights."""
    if config.training.init_from is None:
        return config, None
    if resuming:
        return resumed_init(config, load_run_config(run)), None
    init = resolve_init(config)
    return init.config, init


def extend_tokenizer(old: Tokenizer, new: Tokenizer) -> Tokenizer:
    """`new`'s SentencePiece models with a vocabulary that keeps `old`'s ids and appends the pieces it lacks."""
    def pieces(side: Literal["src", "tgt"]) -> tuple[str, ...]:
        kept = list(old.src_pieces(range(old.src_vocab_size)) if side == "src"
                    else old.tgt_pieces(range(old.tgt_vocab_size)))
        known = set(kept[EOS_ID + 1:])
        processor = new.src if side == "src" else new.tgt
        for i in range(EOS_ID + 1, processor.get_piece_size()):
            piece = processor.id_to_piece(i)
            if piece not in known:
                kept.append(piece)
                known.add(piece)
        return tuple(kept)

    vocabulary = Vocabulary(pieces("src"), pieces("tgt"))
    log.info("vocabulary extended: source %d -> %d, target %d -> %d pieces", old.src_vocab_size,
             len(vocabulary.src), old.tgt_vocab_size, len(vocabulary.tgt))
    return Tokenizer(new.src_proto, new.tgt_proto, vocabulary)


def fine_tuning_tokenizer(init: Initialization) -> Tokenizer:
    """The tokenizer the new run encodes its corpus with: the other run's, or (extend) it grown with the pieces
    of one trained on the new corpus."""
    if not init.extend:
        return init.tokenizer
    return extend_tokenizer(init.tokenizer, prepare_data(init.config).tokenizer)


def starting_tokenizer(init: Initialization | None, run: RunDir) -> Tokenizer:
    """A fine-tuning run's tokenizer: the other run's (or extended), the run's own once it resumes."""
    return fine_tuning_tokenizer(init) if init is not None else load_tokenizer(run)


def load_initial_weights(model: Model, init: Initialization) -> None:
    """The other run's weights into `model`; with a grown vocabulary, into its first rows."""
    if not init.extend:
        load_weights(model, init.checkpoint, init.config.model, init.checkpoint.path)
        return
    tensors = read_weights(init.checkpoint)
    state = model.state_dict()
    if sorted(tensors) != sorted(state):
        raise CheckpointError(f"{init.checkpoint.files.weights}: not the weights of the config's model")
    with torch.no_grad():
        for name, target in state.items():
            source = tensors[name]
            grown = name.endswith(VOCABULARY_ROWS) and source.shape[1:] == target.shape[1:] and \
                source.shape[0] <= target.shape[0]
            if source.shape != target.shape and not grown:
                raise CheckpointError(f"{init.checkpoint.files.weights}: {name} is {tuple(source.shape)}, the "
                                      f"model's {tuple(target.shape)}")
            target[: source.shape[0]].copy_(source)
