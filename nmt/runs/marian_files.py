"""The files of a Marian folder, read as input that may be hostile (runs/marian.py converts what they hold).

Every file is read once, with a size cap, from a regular file, and hashed from the bytes read: the run's
provenance names exactly the files the import used. config.json and generation_config.json are validated whole
(types as transformers writes them, ranges, special ids inside the vocabulary, the size of the model) before
anything is allocated. Weights are taken by name, floating point only, with the shape the config implies, from
a flat mapping of names to tensors; the shards of an index are plain file names inside the folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from nmt.config import MAX_LENGTH_PENALTY, format_validation_error, shown_value
from nmt.errors import CheckpointError, ConfigError

CONFIG, SOURCE_SPM, TARGET_SPM = "config.json", "source.spm", "target.spm"
VOCAB, TARGET_VOCAB, GENERATION = "vocab.json", "target_vocab.json", "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
CONTENTS = f"a Marian folder holds {CONFIG}, {SOURCE_SPM}, {TARGET_SPM}, {VOCAB} and {SAFETENSORS}"

MAX_JSON_BYTES = 1 << 20
"""config.json, generation_config.json, tokenizer_config.json and a shard index: kilobytes in OPUS-MT."""
MAX_VOCAB_BYTES = 64 << 20
"""Each vocabulary (JSON) and SentencePiece model: about a megabyte in OPUS-MT."""
MAX_PARAMETERS = 1 << 32
"""The most floats a model may have, counted as config.json implies with every matrix apart: ten times the
largest OPUS-MT models (a few hundred million), so a mistyped or hostile size is refused before any allocation.
Its weight files may hold as many float64s (MAX_WEIGHT_OVERHEAD more for their headers)."""
MAX_LAYERS = 64
"""Encoder or decoder layers: OPUS-MT has 6 to 12 (each is a module built one by one)."""
MAX_WEIGHT_OVERHEAD = 1 << 20


class MarianFiles:
    """One Marian folder's files, each read through `read`; `sha256` holds the hash of every file read, from
    the bytes read."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.sha256: dict[str, str] = {}

    def has(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def read(self, name: str, limit: int, missing: str = CONTENTS, bound: str = "a file of its kind may hold"
             ) -> bytes:
        """The bytes of regular file `name`, refused beyond `limit` bytes (`bound` says why) without reading them;
        a FIFO or a device is refused without waiting on it."""
        path = self.folder / name
        too_big = f"{path}: more than the {limit:,} bytes {bound}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing ({missing})") from None
        except OSError as err:
            raise CheckpointError(f"{path}: unreadable ({err.strerror})") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise CheckpointError(f"{path}: not a regular file")
            if info.st_size > limit:
                raise CheckpointError(f"{too_big} ({info.st_size:,})")
            try:
                data = handle.read(limit + 1)
            except OSError as err:
                raise CheckpointError(f"{path}: unreadable ({err.strerror})") from None
        if len(data) > limit:  # it grew while read
            raise CheckpointError(too_big)
        self.sha256[name] = hashlib.sha256(data).hexdigest()
        return data

    def json(self, name: str, limit: int = MAX_JSON_BYTES) -> Any:
        try:
            return json.loads(self.read(name, limit).decode("utf-8"))
        except (ValueError, RecursionError) as err:  # JSON and UTF-8 errors are ValueErrors
            raise CheckpointError(f"{self.folder / name}: not JSON ({str(err)[:200]})") from None

    def json_object(self, name: str, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
        found = self.json(name, limit)
        if not isinstance(found, dict):
            raise CheckpointError(f"{self.folder / name}: not a JSON object")
        return found


Size = Annotated[int, Field(gt=0)]
TokenId = Annotated[int, Field(ge=0)]
Layers = Annotated[int, Field(gt=0, le=MAX_LAYERS)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
Language = Annotated[str, Field(pattern=r"^[\w+-]{1,64}$")]


class _Strict(BaseModel):
    """Values as transformers writes them: "512" or true is no size, null no boolean, NaN no number."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)


class HFConfig(_Strict):
    """What the import reads from config.json."""

    model_type: str
    d_model: Size
    encoder_attention_heads: Size
    decoder_attention_heads: Size
    encoder_ffn_dim: Size
    decoder_ffn_dim: Size
    encoder_layers: Layers
    decoder_layers: Layers
    max_position_embeddings: Size
    vocab_size: Size
    decoder_vocab_size: Size | None = None
    share_encoder_decoder_embeddings: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: TokenId
    eos_token_id: TokenId
    decoder_start_token_id: TokenId | None = None
    dropout: Fraction = 0.1
    attention_dropout: Fraction = 0.0
    activation_function: str = "gelu"
    scale_embedding: bool = False
    normalize_before: bool | None = None  # these five, set, are architectures nmt does not reproduce
    add_final_layer_norm: bool | None = None
    normalize_embedding: bool | None = None
    layernorm_embedding: bool | None = None
    scale_attention: bool | None = None

    @property
    def tgt_vocab_size(self) -> int:
        return self.vocab_size if self.share_encoder_decoder_embeddings else self.decoder_vocab_size or self.vocab_size

    @property
    def start_id(self) -> int:
        """Where Marian's decoding starts (its pad id, unless set)."""
        return self.pad_token_id if self.decoder_start_token_id is None else self.decoder_start_token_id

    def most_parameters(self) -> int:
        """The floats of every tensor a file of this model may hold, each counted apart (source, target and output
        embeddings, two position tables): bounds the model and its weight files."""
        d, ff = self.d_model, max(self.encoder_ffn_dim, self.decoder_ffn_dim)
        attention = 4 * (d * d + d)
        feed_forward = 2 * d * ff + ff + d
        encoder = self.encoder_layers * (attention + feed_forward + 4 * d)
        decoder = self.decoder_layers * (2 * attention + feed_forward + 6 * d)
        tables = (self.vocab_size + 2 * self.tgt_vocab_size + 2 * self.max_position_embeddings) * d
        return tables + self.tgt_vocab_size + encoder + decoder

    def max_weight_bytes(self) -> int:
        return 8 * self.most_parameters() + MAX_WEIGHT_OVERHEAD


class HFGeneration(_Strict):
    """What the import reads from generation_config.json; its special ids, where given, must be config.json's."""

    num_beams: Size | None = None
    length_penalty: Annotated[float, Field(ge=0.0, le=MAX_LENGTH_PENALTY)] | None = None
    pad_token_id: TokenId | None = None
    eos_token_id: TokenId | list[TokenId] | None = None
    decoder_start_token_id: TokenId | None = None


class HFTokenizer(_Strict):
    """What the import reads from tokenizer_config.json: the languages, which name the run's placeholder data."""

    source_lang: Language | None = None
    target_lang: Language | None = None


def validated(model: type[_Strict], raw: dict[str, Any], where: Path) -> Any:
    """`raw` as `model`, or a ConfigError with a line for each wrong value, naming the file and the key."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(where), err)) from None


def read_hf_config(files: MarianFiles) -> HFConfig:
    """config.json, whole: types and ranges, special ids inside both vocabularies and distinct where they must
    be, and a model within MAX_PARAMETERS; the architecture's choices are runs/marian.py's to judge."""
    where = files.folder / CONFIG
    raw = files.json_object(CONFIG)
    kind = raw.get("model_type")
    if kind != "marian":
        raise ConfigError(f"{where}: model_type {shown_value(kind)} is not supported (only 'marian': MarianMTModel)")
    hf: HFConfig = validated(HFConfig, raw, where)
    if hf.share_encoder_decoder_embeddings and hf.decoder_vocab_size not in (None, hf.vocab_size):
        raise ConfigError(f"{where}: decoder_vocab_size {hf.decoder_vocab_size} != vocab_size {hf.vocab_size} with "
                          "share_encoder_decoder_embeddings: one embedding matrix has one size")
    size = min(hf.vocab_size, hf.tgt_vocab_size)  # both sides map these ids
    ids = {"pad_token_id": hf.pad_token_id, "eos_token_id": hf.eos_token_id, "decoder_start_token_id": hf.start_id}
    for key, value in ids.items():
        if value >= size:
            raise ConfigError(f"{where}: {key} {value} is outside the vocabulary ({size} ids: 0 to {size - 1})")
    for key in ("pad_token_id", "decoder_start_token_id"):
        if ids[key] == hf.eos_token_id:
            raise ConfigError(f"{where}: eos_token_id {hf.eos_token_id} is also the {key}: the end of a sentence "
                              "needs an id of its own")
    if hf.most_parameters() > MAX_PARAMETERS:
        raise ConfigError(f"{where}: a model of up to {hf.most_parameters():,} parameters (d_model {hf.d_model}, "
                          f"ffn {hf.encoder_ffn_dim}, {hf.max_position_embeddings} positions, vocabulary "
                          f"{hf.vocab_size}): more than the {MAX_PARAMETERS:,} an import accepts")
    return hf


def read_generation(files: MarianFiles, hf: HFConfig) -> HFGeneration:
    """generation_config.json where there is one (its settings are the run's decoding defaults)."""
    if not files.has(GENERATION):
        return HFGeneration()
    where = files.folder / GENERATION
    generation: HFGeneration = validated(HFGeneration, files.json_object(GENERATION), where)
    ours = {"pad_token_id": hf.pad_token_id, "eos_token_id": hf.eos_token_id, "decoder_start_token_id": hf.start_id}
    for key, value in ours.items():
        theirs = getattr(generation, key)
        if theirs is not None and theirs not in (value, [value]):
            raise ConfigError(f"{where}: {key} {theirs!r} is not {CONFIG}'s {value}: the import decodes with one "
                              "set of special ids")
    return generation


class Weights:
    """Marian's tensors by name (without the "model." prefix), each taken with the shape the config implies."""

    def __init__(self, files: MarianFiles):
        self.folder = files.folder
        self.tensors: dict[str, tuple[torch.Tensor, str, str]] = {}  # name -> (tensor, file, its name in the file)

    def add(self, source: str, tensors: dict[str, torch.Tensor]) -> None:
        for key, tensor in tensors.items():
            self.tensors[key.removeprefix("model.")] = (tensor, source, key)

    def __call__(self, *names: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The first of `names` there is, as float32; refused unless it is floating point (integers and booleans are
        not cast) and of `shape`."""
        for name in names:
            if name in self.tensors:
                tensor, source, key = self.tensors[name]
                if not tensor.is_floating_point():
                    dtype = str(tensor.dtype).removeprefix("torch.")
                    raise CheckpointError(f"{self.folder / source}: {key} holds {dtype} values: weights must be "
                                          "floating point (they are not cast)")
                if tuple(tensor.shape) != shape:
                    raise CheckpointError(f"{self.folder / source}: {key} has shape {list(tensor.shape)}, where "
                                          f"{CONFIG} implies {list(shape)}")
                return tensor.float()
        raise CheckpointError(f"{self.folder}: the weights have no {' or '.join(names)}")


def read_weights(files: MarianFiles, hf: HFConfig) -> Weights:
    """The weights (model.safetensors, the shards of model.safetensors.index.json, or pytorch_model.bin, read with
    `weights_only=True`: never unpickling code), at most what the config's model can take in all."""
    if files.has(SAFETENSORS):
        sources = [SAFETENSORS]
    elif files.has(SAFETENSORS_INDEX):
        sources = _shards(files)
    elif files.has(PYTORCH_BIN):
        sources = [PYTORCH_BIN]
    else:
        raise CheckpointError(f"{files.folder}: no weights ({SAFETENSORS}, {SAFETENSORS_INDEX} or {PYTORCH_BIN})")
    weights, left = Weights(files), hf.max_weight_bytes()
    for name in sources:
        data = files.read(name, left, bound=f"the weights of the model of {CONFIG} take at most, in float64")
        left -= len(data)
        weights.add(name, _tensors(files.folder / name, data))
    return weights


def _shards(files: MarianFiles) -> list[str]:
    """The shard files of the index: plain names of files inside the folder."""
    where = files.folder / SAFETENSORS_INDEX
    weight_map = files.json_object(SAFETENSORS_INDEX).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or \
            not all(isinstance(shard, str) for shard in weight_map.values()):
        raise CheckpointError(f"{where}: expected a 'weight_map' object mapping tensor names to shard file names")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if shard in ("", ".", "..") or Path(shard).name != shard or "\0" in shard:
            raise CheckpointError(f"{where}: shard {shard[:100]!r} is not the name of a file in the folder (no "
                                  "folders, '..' or absolute paths)")
    return shards


def _tensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """A file's tensors: a flat mapping of names to tensors, or refused."""
    try:
        if path.name == PYTORCH_BIN:
            found = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        else:
            found = load_safetensors(data)
    except SafetensorError as err:
        raise CheckpointError(f"{path}: not a safetensors file ({str(err).splitlines()[0][:200]})") from None
    except Exception:  # weights_only refuses pickled code with an UnpicklingError; damage raises others
        raise CheckpointError(f"{path}: cannot read the weights safely: not plain tensors (damaged, or pickled "
                              f"objects, which nmt never unpickles); convert them to {SAFETENSORS}") from None
    if not isinstance(found, dict):
        raise CheckpointError(f"{path}: not a mapping of names to tensors")
    for key, value in found.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {str(key)[:100]!r} is a {type(value).__name__}, not a tensor: the weights "
                                  "must map names to tensors")
    return found
