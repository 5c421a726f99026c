"""Import a Marian translation model (OPUS-MT) from the Hugging Face format into a run directory.

A Marian folder holds config.json, source.spm and target.spm, vocab.json (and target_vocab.json with separate
vocabularies) and the weights (model.safetensors; pytorch_model.bin is read with `weights_only=True`). The run
gets a config whose Transformer is Marian's (post-norm, sinusoidal halves, SiLU, sqrt(D) scaling, a fixed final
logits bias), the two SentencePiece models with a `Vocabulary` mapping their pieces to the model's ids, and a
verified checkpoint at step 0 whose metadata says where it came from.

Ids: nmt's special ids come first (PAD, UNK, BOS, EOS: nmt/tokens.py), then Marian's other ids in order.
Marian starts decoding from its pad id, so that row becomes BOS; PAD is then one row Marian does not have, with
a zero embedding and a fixed logit bias of PAD_LOGIT: its probability underflows to exactly 0, so the
distribution over the other ids is Marian's. Search never emits BOS or PAD (inference/search.py), as Marian's
generation bans its pad id.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from nmt.config import (
    MAX_BEAM,
    CleanConfig,
    Config,
    DataConfig,
    DecodingConfig,
    ModelConfig,
    TextSource,
    TokenizerConfig,
    TrainingConfig,
    TransformerConfig,
    config_to_yaml,
)
from nmt.data.tokenizer import Tokenizer, Vocabulary
from nmt.errors import CheckpointError, ConfigError, DownloadError, NmtError
from nmt.fileio import sha256_of, staged_folder
from nmt.models import build_model
from nmt.runs.checkpoint import checkpoint_meta, write_checkpoint
from nmt.runs.rundir import RunDir
from nmt.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

log = logging.getLogger(__name__)

CONFIG, SOURCE_SPM, TARGET_SPM = "config.json", "source.spm", "target.spm"
VOCAB, TARGET_VOCAB, GENERATION = "vocab.json", "target_vocab.json", "generation_config.json"
SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
HUB_FILES = [CONFIG, SOURCE_SPM, TARGET_SPM, VOCAB, TARGET_VOCAB, GENERATION, "tokenizer_config.json",
             "model*.safetensors*", PYTORCH_BIN]
ACTIVATIONS: dict[str, Literal["relu", "gelu", "silu"]] = {"swish": "silu", "silu": "silu", "relu": "relu",
                                                          "gelu": "gelu"}
PAD_LOGIT = -1e4
"""The fixed logit bias of the PAD row Marian lacks: exp(-1e4) is 0 in float32 (and bf16, fp16)."""
SPECIAL_NAMES = ("<pad>", "<unk>", "<s>", "</s>")  # the entries of nmt's special ids in a Vocabulary


@dataclass(frozen=True)
class SideMapping:
    """One side's ids: `rows[i]` is the Marian id whose embedding (and logit) nmt's id i takes; None for PAD."""

    pieces: tuple[str, ...]
    rows: tuple[int | None, ...]

    def ours(self) -> dict[int, int]:
        """Marian id -> nmt id."""
        return {row: i for i, row in enumerate(self.rows) if row is not None}


@dataclass
class ImportResult:
    run_dir: Path
    source: str
    summary: str  # the model's shape, as the training log names it
    parameters: int
    src_vocab_size: int
    tgt_vocab_size: int


def resolve_source(source: str) -> Path:
    """A local Marian folder, or a hub id (owner/name) fetched with huggingface_hub (online only)."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists() or source.count("/") != 1 or source.startswith((".", "/", "~")):
        raise ConfigError(f"--hf {source}: not a folder, nor a Hugging Face hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise NmtError(f"--hf {source}: fetching from the hub needs huggingface_hub (pip install huggingface_hub); "
                       "or give a local folder") from None
    try:
        return Path(snapshot_download(repo_id=source, allow_patterns=HUB_FILES))
    except Exception as err:  # offline, unknown repository, refused: huggingface_hub has many error classes
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DownloadError(f"--hf {source}: cannot fetch from the Hugging Face hub ({reason})") from None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a Marian folder holds {CONFIG}, {SOURCE_SPM}, {TARGET_SPM}, "
                              f"{VOCAB} and {SAFETENSORS})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable or not JSON ({err})") from None


def _require(hf: dict[str, Any], folder: Path, key: str) -> Any:
    if key not in hf:
        raise CheckpointError(f"{folder / CONFIG}: no '{key}'")
    return hf[key]


def marian_settings(hf: dict[str, Any], folder: Path) -> TransformerConfig:
    """Our Transformer with Marian's sizes and choices; an architecture we cannot reproduce is refused by name."""
    where = folder / CONFIG
    kind = hf.get("model_type")
    if kind != "marian":
        raise ConfigError(f"{where}: model_type {kind!r} is not supported (only 'marian': MarianMTModel)")
    for flag in ("normalize_before", "add_final_layer_norm", "normalize_embedding", "layernorm_embedding",
                 "scale_attention", "static_position_embeddings"):
        if hf.get(flag):
            raise ConfigError(f"{where}: {flag} is set: not a Marian architecture nmt reproduces")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if _require(hf, folder, a) != _require(hf, folder, b):
            raise ConfigError(f"{where}: {a} {hf[a]} != {b} {hf[b]}: nmt's Transformer uses one value for both")
    activation = hf.get("activation_function", "gelu")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"{where}: activation_function {activation!r} is not supported ({', '.join(ACTIVATIONS)})")
    if not hf.get("tie_word_embeddings", True) and hf.get("share_encoder_decoder_embeddings", True):
        raise ConfigError(f"{where}: shared encoder/decoder embeddings with a separate output layer are not "
                          "supported (tie_word_embeddings false)")
    shared = hf.get("share_encoder_decoder_embeddings", True)
    tie: Literal["none", "decoder", "all"] = ("all" if shared else "decoder") if hf.get("tie_word_embeddings", True) \
        else "none"
    try:
        return TransformerConfig(
            d_model=_require(hf, folder, "d_model"), heads=hf["encoder_attention_heads"], ff_size=hf["encoder_ffn_dim"],
            encoder_layers=_require(hf, folder, "encoder_layers"),
            decoder_layers=_require(hf, folder, "decoder_layers"),
            dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.0),
            positions="sinusoidal_halves", max_positions=_require(hf, folder, "max_position_embeddings"), norm="post",
            tie=tie, activation=ACTIVATIONS[activation], scale_embeddings=bool(hf.get("scale_embedding", False)),
            final_logits_bias=True)
    except ValueError as err:
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None


def side_mapping(vocab: Any, path: Path, size: int, pad: int, start: int, eos: int) -> SideMapping:
    """nmt's ids for one side of Marian's vocabulary (module docstring)."""
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise CheckpointError(f"{path}: expected a JSON object mapping pieces to ids")
    by_id = {i: piece for piece, i in vocab.items()}
    if sorted(by_id) != list(range(size)):
        raise CheckpointError(f"{path}: maps pieces to {len(by_id)} distinct ids, the model has {size} rows")
    if "<unk>" not in vocab:
        raise CheckpointError(f"{path}: no '<unk>' piece")
    special: dict[int, int | None] = {PAD_ID: pad if pad != start else None, UNK_ID: vocab["<unk>"],
                                      BOS_ID: start, EOS_ID: eos}
    taken = {row for row in special.values() if row is not None}
    others = [i for i in range(size) if i not in taken]
    rows: tuple[int | None, ...] = tuple(special[i] for i in range(EOS_ID + 1)) + tuple(others)
    return SideMapping(SPECIAL_NAMES + tuple(by_id[i] for i in others), rows)


def read_marian_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors by name, without the "model." prefix; never unpickles code."""
    try:
        if (folder / SAFETENSORS).is_file():
            tensors = load_file(str(folder / SAFETENSORS))
        elif (folder / SAFETENSORS_INDEX).is_file():
            shards = sorted(set(_read_json(folder / SAFETENSORS_INDEX).get("weight_map", {}).values()))
            tensors = {k: v for shard in shards for k, v in load_file(str(folder / shard)).items()}
        elif (folder / PYTORCH_BIN).is_file():
            tensors = torch.load(folder / PYTORCH_BIN, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(f"{folder}: no weights ({SAFETENSORS} or {PYTORCH_BIN})")
    except (SafetensorError, OSError, RuntimeError, pickle.UnpicklingError) as err:  # weights_only: pickled code
        raise CheckpointError(f"{folder}: cannot read the weights safely ({str(err).splitlines()[0]})") from None
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{folder}: the weights are not a mapping of tensors")
    return {name.removeprefix("model."): tensor.float() for name, tensor in tensors.items()}


class _Weights:
    """Marian's tensors, read by name; a missing one is an error naming it."""

    def __init__(self, tensors: dict[str, torch.Tensor], folder: Path):
        self.tensors, self.folder = tensors, folder

    def __call__(self, *names: str) -> torch.Tensor:
        for name in names:
            if name in self.tensors:
                return self.tensors[name]
        raise CheckpointError(f"{self.folder}: the weights have no {' or '.join(names)}")


def convert_weights(weights: _Weights, settings: TransformerConfig, src: SideMapping, tgt: SideMapping
                    ) -> dict[str, torch.Tensor]:
    """Marian's tensors under our names, embedding rows (and logit biases) in nmt's id order."""
    def rows(matrix: torch.Tensor, side: SideMapping) -> torch.Tensor:
        out = matrix.new_zeros(len(side.rows), *matrix.shape[1:])
        ours, theirs = zip(*((i, row) for i, row in enumerate(side.rows) if row is not None), strict=True)
        out[torch.tensor(ours)] = matrix[torch.tensor(theirs)]
        return out

    state: dict[str, torch.Tensor] = {
        "src_embed.weight": rows(weights("encoder.embed_tokens.weight", "shared.weight"), src),
        "tgt_embed.weight": rows(weights("decoder.embed_tokens.weight", "shared.weight"), tgt),
    }
    lm_head = weights("lm_head.weight") if settings.tie == "none" else None
    state["output.weight"] = state["tgt_embed.weight"] if lm_head is None else rows(lm_head, tgt)
    bias = rows(weights("final_logits_bias").reshape(-1, 1), tgt).squeeze(1)
    bias[PAD_ID] = PAD_LOGIT if tgt.rows[PAD_ID] is None else bias[PAD_ID]
    state["final_logits_bias"] = bias

    def linear(ours: str, theirs: str) -> None:
        state[f"{ours}.weight"], state[f"{ours}.bias"] = weights(f"{theirs}.weight"), weights(f"{theirs}.bias")

    def attention(ours: str, theirs: str) -> None:
        linear(f"{ours}.query_proj", f"{theirs}.q_proj")
        linear(f"{ours}.out_proj", f"{theirs}.out_proj")
        for part in ("weight", "bias"):  # our memory projection is W^K and W^V stacked
            state[f"{ours}.memory_proj.{part}"] = torch.cat([weights(f"{theirs}.k_proj.{part}"),
                                                             weights(f"{theirs}.v_proj.{part}")])

    def feed_forward(ours: str, theirs: str) -> None:
        linear(f"{ours}.ff.inner", f"{theirs}.fc1")
        linear(f"{ours}.ff.outer", f"{theirs}.fc2")
        linear(f"{ours}.ff_sub.norm", f"{theirs}.final_layer_norm")

    for i in range(settings.encoder_layers):
        ours, theirs = f"encoder_layers.{i}", f"encoder.layers.{i}"
        attention(f"{ours}.self_attn", f"{theirs}.self_attn")
        linear(f"{ours}.attn_sub.norm", f"{theirs}.self_attn_layer_norm")
        feed_forward(ours, theirs)
    for i in range(settings.decoder_layers):
        ours, theirs = f"decoder_layers.{i}", f"decoder.layers.{i}"
        attention(f"{ours}.self_attn", f"{theirs}.self_attn")
        linear(f"{ours}.self_sub.norm", f"{theirs}.self_attn_layer_norm")
        attention(f"{ours}.cross_attn", f"{theirs}.encoder_attn")
        linear(f"{ours}.cross_sub.norm", f"{theirs}.encoder_attn_layer_norm")
        feed_forward(ours, theirs)
    return state


@dataclass
class MarianModel:
    """Everything read from a Marian folder, converted: what `import_marian` writes."""

    folder: Path
    settings: TransformerConfig
    src: SideMapping
    tgt: SideMapping
    tokenizer: Tokenizer
    state: dict[str, torch.Tensor]
    generation: dict[str, Any]
    languages: tuple[str, str]


def read_marian(folder: Path) -> MarianModel:
    hf = _read_json(folder / CONFIG)
    if not isinstance(hf, dict):
        raise CheckpointError(f"{folder / CONFIG}: not a JSON object")
    settings = marian_settings(hf, folder)
    shared = settings.tie == "all" or hf.get("share_encoder_decoder_embeddings", True)
    pad, eos = _require(hf, folder, "pad_token_id"), _require(hf, folder, "eos_token_id")
    start = hf.get("decoder_start_token_id", pad)
    src_vocab = _read_json(folder / VOCAB)
    tgt_path = folder / (VOCAB if shared else TARGET_VOCAB)
    src_size = _require(hf, folder, "vocab_size")
    src = side_mapping(src_vocab, folder / VOCAB, src_size, pad, start, eos)
    tgt = src if shared else side_mapping(_read_json(tgt_path), tgt_path, hf.get("decoder_vocab_size") or src_size,
                                          pad, start, eos)
    protos = []
    for name in (SOURCE_SPM, TARGET_SPM):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name}: missing (the SentencePiece model of the "
                                  f"{'source' if name == SOURCE_SPM else 'target'} side)")
        protos.append((folder / name).read_bytes())
    try:
        tokenizer = Tokenizer(protos[0], protos[1], Vocabulary(src.pieces, tgt.pieces))
    except RuntimeError as err:
        raise CheckpointError(f"{folder}: cannot load the SentencePiece models ({err})") from None
    state = convert_weights(_Weights(read_marian_weights(folder), folder), settings, src, tgt)
    generation = _read_json(folder / GENERATION) if (folder / GENERATION).is_file() else {}
    tok_config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    languages = (str(tok_config.get("source_lang") or "src"), str(tok_config.get("target_lang") or "tgt"))
    return MarianModel(folder, settings, src, tgt, tokenizer, state, generation, languages)


def run_config(marian: MarianModel, run: RunDir) -> Config:
    """The run's config: Marian's model and decoding; `data` and `training` are placeholders that a
    fine-tuning config (`nmt train --init-from`) replaces."""
    src_lang, tgt_lang = marian.languages
    placeholder = TextSource(format="text", src=f"data/{run.path.name}/train.{src_lang}",
                             tgt=f"data/{run.path.name}/train.{tgt_lang}")
    beams = int(marian.generation.get("num_beams") or 1)
    return Config(
        name=run.path.name, run_dir=str(run.path),
        data=DataConfig(src_lang=src_lang, tgt_lang=tgt_lang, train=placeholder, dev=placeholder,
                        clean=CleanConfig(unicode_normalization="none")),  # as MarianTokenizer: SentencePiece's own
        tokenizer=TokenizerConfig(vocab_size=max(16, len(marian.tgt.pieces)), joint=marian.settings.tie == "all"),
        model=ModelConfig(type="transformer", transformer=marian.settings),
        training=TrainingConfig(max_epochs=1),
        decoding=DecodingConfig(beam_size=min(beams, MAX_BEAM),
                                length_penalty=float(marian.generation.get("length_penalty", 1.0)),
                                max_src_tokens=marian.settings.max_positions))


def import_marian(source: str, run_dir: Path) -> ImportResult:
    """Write run directory `run_dir` from a Marian model (a folder, or a hub id); refuses a run that exists."""
    run = RunDir(run_dir)
    if run.path.exists() and (not run.path.is_dir() or any(run.path.iterdir())):
        raise ConfigError(f"--run-dir {run.path}: exists and is not empty; choose a new folder")
    folder = resolve_source(source)
    marian = read_marian(folder)
    config = run_config(marian, run)
    tokenizer = marian.tokenizer
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    missing, unexpected = model.load_state_dict(marian.state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{folder}: converted weights do not fit: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}")
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    meta = checkpoint_meta(0, 0, model, config.model, None)
    meta["imported_from"] = {"format": "marian", "source": source, "folder": str(folder.resolve()),
                             "sha256": {name: sha256_of(folder / name) for name in files}}
    with staged_folder(run.path) as staging:  # the whole run or nothing: an interrupted import leaves no half run
        staged = RunDir(staging)
        staged.write_config(config_to_yaml(config))
        staged.write_tokenizer(tokenizer)
        write_checkpoint(staged, staged.checkpoint(0), model.state_dict(), {}, meta)
    log.info("imported %s into %s: %s", source, run.path, config.model.summary)
    return ImportResult(run.path, source, config.model.summary, int(meta["parameters"]), tokenizer.src_vocab_size,
                        tokenizer.tgt_vocab_size)
