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

The folder is input that may be hostile: marian_files.py reads it (bounded, hashed, validated before anything is
allocated). The run directory is written under its lock (runs/lock.py), as `nmt train` writes it, and appears
whole in one rename that the system refuses where the folder is not empty: an import never replaces a run.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

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
    shown_value,
)
from nmt.data.tokenizer import Tokenizer, Vocabulary, load_sentencepiece
from nmt.errors import CheckpointError, ConfigError, DownloadError, NmtError
from nmt.fileio import staged_folder
from nmt.models import build_model
from nmt.runs.checkpoint import checkpoint_meta, write_checkpoint
from nmt.runs.lock import RunLock, lock_run
from nmt.runs.marian_files import (
    CONFIG,
    GENERATION,
    MAX_VOCAB_BYTES,
    PYTORCH_BIN,
    SOURCE_SPM,
    TARGET_SPM,
    TARGET_VOCAB,
    TOKENIZER_CONFIG,
    VOCAB,
    HFConfig,
    HFGeneration,
    HFTokenizer,
    MarianFiles,
    Weights,
    read_generation,
    read_hf_config,
    read_weights,
    validated,
)
from nmt.runs.rundir import RunDir
from nmt.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

log = logging.getLogger(__name__)

HUB_FILES = [CONFIG, SOURCE_SPM, TARGET_SPM, VOCAB, TARGET_VOCAB, GENERATION, TOKENIZER_CONFIG, "model*.safetensors*",
             PYTORCH_BIN]
ACTIVATIONS: dict[str, Literal["relu", "gelu", "silu"]] = {"swish": "silu", "silu": "silu", "relu": "relu",
                                                          "gelu": "gelu"}
PAD_LOGIT = -1e4
"""The fixed logit bias of the PAD row Marian lacks: exp(-1e4) is 0 in float32 (and bf16, fp16)."""
SPECIAL_NAMES = ("<pad>", "<unk>", "<s>", "</s>")  # the entries of nmt's special ids in a Vocabulary
IMPORT = "nmt import"  # how the run's lock file names the import holding it


@dataclass(frozen=True)
class SideMapping:
    """One side's ids: `rows[i]` is the Marian id whose embedding (and logit) nmt's id i takes; None for PAD."""

    pieces: tuple[str, ...]
    rows: tuple[int | None, ...]

    def ours(self) -> dict[int, int]:
        """Marian id -> nmt id."""
        return {row: i for i, row in enumerate(self.rows) if row is not None}

    @property
    def marian_size(self) -> int:
        """Marian's rows on this side (every one of them has an nmt id)."""
        return sum(row is not None for row in self.rows)


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


def marian_settings(hf: HFConfig, where: Path) -> TransformerConfig:
    """Our Transformer with Marian's sizes and choices; an architecture we cannot reproduce is refused by name."""
    for flag in ("normalize_before", "add_final_layer_norm", "normalize_embedding", "layernorm_embedding",
                 "scale_attention"):  # static_position_embeddings, true in OPUS-MT's configs, is Marian's own
        if getattr(hf, flag):
            raise ConfigError(f"{where}: {flag} is set: not a Marian architecture nmt reproduces")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if getattr(hf, a) != getattr(hf, b):
            raise ConfigError(f"{where}: {a} {getattr(hf, a)} != {b} {getattr(hf, b)}: nmt's Transformer uses one "
                              "value for both")
    if hf.activation_function not in ACTIVATIONS:
        raise ConfigError(f"{where}: activation_function {shown_value(hf.activation_function)} is not supported "
                          f"({', '.join(ACTIVATIONS)})")
    shared, tied = hf.share_encoder_decoder_embeddings, hf.tie_word_embeddings
    if not tied and shared:
        raise ConfigError(f"{where}: shared encoder/decoder embeddings with a separate output layer are not "
                          "supported (tie_word_embeddings false)")
    tie: Literal["none", "decoder", "all"] = ("all" if shared else "decoder") if tied else "none"
    try:
        return TransformerConfig(
            d_model=hf.d_model, heads=hf.encoder_attention_heads, ff_size=hf.encoder_ffn_dim,
            encoder_layers=hf.encoder_layers, decoder_layers=hf.decoder_layers, dropout=hf.dropout,
            attention_dropout=hf.attention_dropout, positions="sinusoidal_halves",
            max_positions=hf.max_position_embeddings, norm="post", tie=tie,
            activation=ACTIVATIONS[hf.activation_function], scale_embeddings=hf.scale_embedding,
            final_logits_bias=True)
    except ValueError as err:
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None


def side_mapping(vocab: Any, path: Path, size: int, hf: HFConfig) -> SideMapping:
    """nmt's ids for one side of Marian's vocabulary (module docstring): every id of the side's `size` rows
    given to exactly one piece, '<unk>' among them with an id of its own."""
    if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()):
        raise CheckpointError(f"{path}: expected a JSON object mapping pieces to ids")
    by_id: dict[int, str] = {}
    for piece, i in vocab.items():
        if not 0 <= i < size:
            raise CheckpointError(f"{path}: piece {shown_value(piece)} has id {i}, outside the model's {size} rows "
                                  f"(0 to {size - 1})")
        if i in by_id:
            raise CheckpointError(f"{path}: pieces {shown_value(by_id[i])} and {shown_value(piece)} both have id {i}")
        by_id[i] = piece
    if len(by_id) < size:
        missing = next(i for i in range(size) if i not in by_id)
        raise CheckpointError(f"{path}: no piece has id {missing}: {len(by_id)} pieces for the model's {size} rows")
    if "<unk>" not in vocab:
        raise CheckpointError(f"{path}: no '<unk>' piece")
    pad, start, eos, unk = hf.pad_token_id, hf.start_id, hf.eos_token_id, vocab["<unk>"]
    for key, value in (("pad_token_id", pad), ("decoder_start_token_id", start), ("eos_token_id", eos)):
        if value == unk:
            raise CheckpointError(f"{path}: '<unk>' has id {unk}, {CONFIG}'s {key}: each needs an id of its own")
    special: dict[int, int | None] = {PAD_ID: pad if pad != start else None, UNK_ID: unk, BOS_ID: start,
                                      EOS_ID: eos}
    taken = {row for row in special.values() if row is not None}
    others = [i for i in range(size) if i not in taken]
    rows: tuple[int | None, ...] = tuple(special[i] for i in range(EOS_ID + 1)) + tuple(others)
    return SideMapping(SPECIAL_NAMES + tuple(by_id[i] for i in others), rows)


def convert_weights(weights: Weights, settings: TransformerConfig, src: SideMapping, tgt: SideMapping
                    ) -> dict[str, torch.Tensor]:
    """Marian's tensors under our names, embedding rows (and logit biases) in nmt's id order; each Marian tensor
    has the shape the config implies, or is refused by name."""
    d, ff = settings.d_model, settings.ff_size

    def rows(matrix: torch.Tensor, side: SideMapping) -> torch.Tensor:
        out = matrix.new_zeros(len(side.rows), *matrix.shape[1:])
        ours, theirs = zip(*((i, row) for i, row in enumerate(side.rows) if row is not None), strict=True)
        out[torch.tensor(ours)] = matrix[torch.tensor(theirs)]
        return out

    src_rows, tgt_rows = src.marian_size, tgt.marian_size
    state: dict[str, torch.Tensor] = {
        "src_embed.weight": rows(weights("encoder.embed_tokens.weight", "shared.weight", shape=(src_rows, d)), src),
        "tgt_embed.weight": rows(weights("decoder.embed_tokens.weight", "shared.weight", shape=(tgt_rows, d)), tgt),
    }
    lm_head = weights("lm_head.weight", shape=(tgt_rows, d)) if settings.tie == "none" else None
    state["output.weight"] = state["tgt_embed.weight"] if lm_head is None else rows(lm_head, tgt)
    bias = rows(weights("final_logits_bias", shape=(1, tgt_rows)).reshape(-1, 1), tgt).squeeze(1)
    bias[PAD_ID] = PAD_LOGIT if tgt.rows[PAD_ID] is None else bias[PAD_ID]
    state["final_logits_bias"] = bias

    def linear(ours: str, theirs: str, out: int, inner: int | None) -> None:
        """A linear layer (`inner` its input size), or a layer norm (`inner` None)."""
        state[f"{ours}.weight"] = weights(f"{theirs}.weight", shape=(out,) if inner is None else (out, inner))
        state[f"{ours}.bias"] = weights(f"{theirs}.bias", shape=(out,))

    def attention(ours: str, theirs: str) -> None:
        linear(f"{ours}.query_proj", f"{theirs}.q_proj", d, d)
        linear(f"{ours}.out_proj", f"{theirs}.out_proj", d, d)
        for part, shape in (("weight", (d, d)), ("bias", (d,))):  # our memory projection is W^K and W^V stacked
            state[f"{ours}.memory_proj.{part}"] = torch.cat([weights(f"{theirs}.k_proj.{part}", shape=shape),
                                                             weights(f"{theirs}.v_proj.{part}", shape=shape)])

    def feed_forward(ours: str, theirs: str) -> None:
        linear(f"{ours}.ff.inner", f"{theirs}.fc1", ff, d)
        linear(f"{ours}.ff.outer", f"{theirs}.fc2", d, ff)
        linear(f"{ours}.ff_sub.norm", f"{theirs}.final_layer_norm", d, None)

    for i in range(settings.encoder_layers):
        ours, theirs = f"encoder_layers.{i}", f"encoder.layers.{i}"
        attention(f"{ours}.self_attn", f"{theirs}.self_attn")
        linear(f"{ours}.attn_sub.norm", f"{theirs}.self_attn_layer_norm", d, None)
        feed_forward(ours, theirs)
    for i in range(settings.decoder_layers):
        ours, theirs = f"decoder_layers.{i}", f"decoder.layers.{i}"
        attention(f"{ours}.self_attn", f"{theirs}.self_attn")
        linear(f"{ours}.self_sub.norm", f"{theirs}.self_attn_layer_norm", d, None)
        attention(f"{ours}.cross_attn", f"{theirs}.encoder_attn")
        linear(f"{ours}.cross_sub.norm", f"{theirs}.encoder_attn_layer_norm", d, None)
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
    generation: HFGeneration
    languages: tuple[str, str]
    sha256: dict[str, str]  # of every file read, by name


def read_marian(folder: Path) -> MarianModel:
    """Read a Marian folder and convert it; every check comes before the converted weights are allocated."""
    files = MarianFiles(folder)
    hf = read_hf_config(files)
    settings = marian_settings(hf, folder / CONFIG)
    generation = read_generation(files, hf)
    src = side_mapping(files.json(VOCAB, MAX_VOCAB_BYTES), folder / VOCAB, hf.vocab_size, hf)
    tgt = src if hf.share_encoder_decoder_embeddings else \
        side_mapping(files.json(TARGET_VOCAB, MAX_VOCAB_BYTES), folder / TARGET_VOCAB, hf.tgt_vocab_size, hf)
    tokenizer = Tokenizer(_sentencepiece(files, SOURCE_SPM, "source"), _sentencepiece(files, TARGET_SPM, "target"),
                          Vocabulary(src.pieces, tgt.pieces))
    state = convert_weights(read_weights(files, hf), settings, src, tgt)
    names: HFTokenizer = validated(HFTokenizer, files.json_object(TOKENIZER_CONFIG), folder / TOKENIZER_CONFIG) \
        if files.has(TOKENIZER_CONFIG) else HFTokenizer()
    languages = (names.source_lang or "src", names.target_lang or "tgt")
    return MarianModel(folder, settings, src, tgt, tokenizer, state, generation, languages, dict(files.sha256))


def _sentencepiece(files: MarianFiles, name: str, side: str) -> bytes:
    """A SentencePiece model that loads (an empty file does not)."""
    proto = files.read(name, MAX_VOCAB_BYTES, missing=f"the SentencePiece model of the {side} side")
    try:
        load_sentencepiece(proto)
    except RuntimeError as err:
        reason = "the file is empty" if not proto else f"it does not load: {str(err).splitlines()[0].strip()}"
        raise CheckpointError(f"{files.folder / name}: not a SentencePiece model ({reason})") from None
    return proto


def run_config(marian: MarianModel, run: RunDir) -> Config:
    """The run's config: Marian's model and decoding; `data` and `training` are placeholders that a
    fine-tuning config (`nmt train --init-from`) replaces."""
    src_lang, tgt_lang = marian.languages
    placeholder = TextSource(format="text", src=f"data/{run.path.name}/train.{src_lang}",
                             tgt=f"data/{run.path.name}/train.{tgt_lang}")
    generation = marian.generation
    length_penalty = 1.0 if generation.length_penalty is None else generation.length_penalty
    return Config(
        name=run.path.name, run_dir=str(run.path),
        data=DataConfig(src_lang=src_lang, tgt_lang=tgt_lang, train=placeholder, dev=placeholder,
                        clean=CleanConfig(unicode_normalization="none")),  # as MarianTokenizer: SentencePiece's own
        tokenizer=TokenizerConfig(vocab_size=max(16, len(marian.tgt.pieces)), joint=marian.settings.tie == "all"),
        model=ModelConfig.of_transformer(marian.settings),
        training=TrainingConfig(max_epochs=1),
        decoding=DecodingConfig(beam_size=min(generation.num_beams or 1, MAX_BEAM), length_penalty=length_penalty,
                                max_src_tokens=marian.settings.max_positions))


def import_marian(source: str, run_dir: Path) -> ImportResult:
    """Write run directory `run_dir` from a Marian model (a folder, or a hub id), holding the run's lock from
    the start (a second import, or a trainer, is refused naming this one). The run appears whole, in one rename
    that the system refuses where `run_dir` is not empty: whatever is found there, before or during the import
    (a run copied in without the lock), is never replaced; the import is refused instead."""
    run = RunDir(run_dir)
    if run.path.is_symlink() or (run.path.exists() and not run.path.is_dir()):
        raise ConfigError(f"--run-dir {run.path}: exists and is not a folder; choose a new folder")
    lock = lock_run(run, IMPORT, "choose another --run-dir")
    try:
        _refuse_unless_empty(run)
        return _write_run(source, run, lock)
    except BaseException:
        lock.abandon()  # leaves no folder it made behind (one that something was written into stays)
        raise
    finally:
        lock.release()


def _refuse_unless_empty(run: RunDir) -> None:
    """The run directory holds nothing but its lock file: there is no run to overwrite."""
    found = sorted(path.name for path in run.path.iterdir() if path != run.lock_path)
    if found:
        raise ConfigError(f"--run-dir {run.path}: exists and is not empty ({_listing(found)}); choose a new folder")


def _listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _write_run(source: str, run: RunDir, lock: RunLock) -> ImportResult:
    folder = resolve_source(source)
    marian = read_marian(folder)
    config = run_config(marian, run)
    tokenizer = marian.tokenizer
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    missing, unexpected = model.load_state_dict(marian.state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{folder}: converted weights do not fit: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}")
    meta = checkpoint_meta(0, 0, model, config.model, None)
    meta["imported_from"] = {"format": "marian", "source": source, "folder": str(folder.resolve()),
                             "sha256": marian.sha256}
    try:
        with staged_folder(run.path, replace=False) as staging:  # the whole run or nothing
            staged = RunDir(staging)
            staged.write_config(config_to_yaml(config))
            staged.write_tokenizer(tokenizer)
            write_checkpoint(staged, staged.checkpoint(0), model.state_dict(), {}, meta)
            _refuse_unless_empty(run)  # again, right before the rename: a copy made without the lock meanwhile
            lock.unlink()  # the rename replaces only an empty folder: it fails if anything appears from here on
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        found = sorted(path.name for path in run.path.iterdir())
        raise ConfigError(f"--run-dir {run.path}: written by another process during the import "
                          f"({_listing(found)}); left as it is: choose a new folder") from None
    log.info("imported %s into %s: %s", source, run.path, config.model.summary)
    return ImportResult(run.path, source, config.model.summary, int(meta["parameters"]), tokenizer.src_vocab_size,
                        tokenizer.tgt_vocab_size)
