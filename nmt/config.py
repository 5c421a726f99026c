"""One YAML file describes a run. It is read with safe YAML and validated into frozen pydantic models
before anything runs; every default lives here.

`load_config(path, overrides)` reads a YAML file, applies `--set key.sub=value` overrides and validates;
`parse_config(raw)` validates a mapping (a run's saved config, the Python API's `nmt.train(Config)`). Both
reject unknown keys, wrong types and bad values with the key path, and return a frozen `Config`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nmt.errors import ConfigError

log = logging.getLogger(__name__)

Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no setting means .inf or .nan


def _check_exists(location: str | None, info: ValidationInfo) -> str | None:
    """Local files must exist when the config is about to be used for data preparation."""
    if location and info.context and info.context.get("check_files") and not is_url(location):
        if not Path(location).exists():
            raise ValueError(f"file not found: {location}")
    return location


class TextSource(Section):
    """Two aligned text files (plain or .gz), one sentence per line; each a path or a URL."""

    format: Literal["text"]
    src: str
    tgt: str
    src_sha256: str | None = None
    tgt_sha256: str | None = None

    _exists = field_validator("src", "tgt")(_check_exists)


class TsvSource(Section):
    """One tab-separated file (plain or .gz; a path or a URL) with the two sides in two columns."""

    format: Literal["tsv"]
    path: str
    sha256: str | None = None
    src_column: Annotated[int, Field(ge=0)] = 0
    tgt_column: Annotated[int, Field(ge=0)] = 1

    _exists = field_validator("path")(_check_exists)


class HfSource(Section):
    """A Hugging Face dataset through `datasets.load_dataset(name, config, split=..., data_files=...)`.

    `src_field`/`tgt_field` name the two sides; with `field` set (e.g. "translation"), they are keys of
    that nested dict, as in the WMT datasets.
    """

    format: Literal["hf"]
    name: str
    config: str | None = None
    split: str = "train"
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    field: str | None = None
    src_field: str
    tgt_field: str


Source = Annotated[TextSource | TsvSource | HfSource, Field(discriminator="format")]


class CleanConfig(Section):
    unicode_normalization: Literal["none", "NFC", "NFKC"] = "NFKC"
    collapse_whitespace: bool = True
    lowercase: bool = False
    max_chars: PositiveInt = 400
    """Training pairs with a side longer than this many characters are dropped."""
    max_length_ratio: Annotated[float, Field(ge=1.0)] = 4.0
    """Training pairs whose longer side has more than this many times the characters of the shorter are dropped."""


class DataConfig(Section):
    src_lang: str
    tgt_lang: str
    train: Source
    dev: Source
    test: Source | None = None
    mirror: str | None = None
    """A local mirror directory consulted before any URL (the variable NMT_DATA_MIRROR is consulted too)."""
    mirror_subdir: str | None = None
    """The corpus folder inside a mirror, e.g. small_parallel_enja."""
    download_dir: str = "data/downloads"
    cache_dir: str = "data/cache"
    clean: CleanConfig = CleanConfig()

    def split(self, name: str) -> Source:
        source = {"train": self.train, "dev": self.dev, "test": self.test}.get(name)
        if source is None:
            raise ConfigError(f"data.{name}: the config declares no '{name}' split")
        return source

    def mirrors(self) -> list[Path]:
        found = [self.mirror, os.environ.get("NMT_DATA_MIRROR")]
        return [Path(m) for m in found if m]


class SubwordSampling(Section):
    """SentencePiece's sampling of a unigram model's segmentations: P(x) ** alpha over all of them (nbest -1,
    forward-filtering backward-sampling) or over the `nbest` most probable."""

    alpha: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    """The smoothing exponent: small values sample more evenly (0.1 to 0.5 in Kudo 2018)."""
    nbest: int = -1

    @field_validator("nbest")
    @classmethod
    def _nbest(cls, nbest: int) -> int:
        if nbest != -1 and not 2 <= nbest <= MAX_SAMPLING_NBEST:
            raise ValueError(f"nbest is -1 (every segmentation) or 2..{MAX_SAMPLING_NBEST}")
        return nbest


MAX_SAMPLING_NBEST = 64
"""The most segmentations a sample is drawn from (each one is a Viterbi pass: cost grows with it)."""


class TokenizerConfig(Section):
    model_type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: Annotated[int, Field(ge=16)] = 8000
    joint: bool = False
    """One SentencePiece model (and vocabulary) for both sides, instead of one per side."""
    character_coverage: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    max_sentences: PositiveInt = 2_000_000
    """At most this many training sentences are sampled to train SentencePiece."""
    sampling: SubwordSampling | None = None
    """unigram: each epoch segments the training split anew, sampled (subword regularization, Kudo 2018)."""
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """bpe: each epoch segments the training split anew, each merge skipped with this probability (BPE-dropout,
    Provilkov et al. 2020; 0: off, 0.1 in the paper)."""

    @model_validator(mode="after")
    def _regularization_fits(self) -> TokenizerConfig:
        if self.sampling is not None and self.model_type != "unigram":
            raise ValueError("sampling samples a unigram model's segmentations: set model_type: unigram, "
                             "or use dropout with bpe")
        if self.dropout and self.model_type != "bpe":
            raise ValueError("dropout drops BPE merges: set model_type: bpe, or use sampling "
                             "with unigram")
        return self

    @property
    def regularized(self) -> bool:
        """Whether training segments its split anew each epoch (dev, test and inference never do)."""
        return self.sampling is not None or self.dropout > 0.0


class EncoderConfig(Section):
    rnn: Literal["gru", "lstm"] = "gru"
    hidden_size: PositiveInt = 256
    layers: PositiveInt = 1
    bidirectional: bool = True
    dropout: Fraction = 0.2

    @property
    def output_size(self) -> int:
        return self.hidden_size * (2 if self.bidirectional else 1)


class DecoderConfig(Section):
    rnn: Literal["gru", "lstm"] = "gru"
    hidden_size: PositiveInt = 256
    layers: PositiveInt = 1
    dropout: Fraction = 0.2
    input_feeding: bool | None = None
    """Luong attention (dot, general, concat): feed the previous attentional state h~_{t-1} into the next
    step's RNN input; default true. Bahdanau attention feeds its context c_t instead, so it is always false
    there (an explicit `true` is turned off with a warning). The resolved config records the value used."""


class AttentionConfig(Section):
    """The RNN decoder's attention over the encoder outputs."""

    type: Literal["bahdanau", "dot", "general", "concat", "multihead"] = "bahdanau"
    dim: PositiveInt | None = None
    """Hidden size of the additive scorers (bahdanau, concat) or of all heads together (multihead); default:
    the decoder hidden size."""
    heads: PositiveInt = 4
    """multihead: scaled dot-product heads computed in parallel and concatenated (dim must divide by it)."""
    dropout: Fraction = 0.0
    scale: bool = False
    """dot / general: divide the scores by sqrt(decoder hidden size), as scaled dot-product attention does
    (Vaswani et al. 2017), so that they start near unit variance."""



class TransformerConfig(Section):
    """The Transformer of Vaswani et al. (2017): `model.type: transformer`."""

    d_model: PositiveInt = 256
    heads: PositiveInt = 4
    ff_size: PositiveInt = 1024
    encoder_layers: PositiveInt = 3
    decoder_layers: PositiveInt = 3
    dropout: Fraction = 0.1
    """On embeddings + positions, on each sublayer's output and after the feed-forward ReLU."""
    attention_dropout: Fraction = 0.1
    """On the attention weights."""
    positions: Literal["sinusoidal", "sinusoidal_halves", "learned"] = "sinusoidal"
    """sinusoidal: sin and cos interleaved (the paper's sec. 3.5); sinusoidal_halves: the same waves with all
    the sines first, then all the cosines (Marian's, and Hugging Face's MarianMTModel's); learned: a table."""
    max_positions: PositiveInt = 1024
    norm: Literal["pre", "post"] = "pre"
    """pre: x + Sublayer(LayerNorm(x)) with a final LayerNorm (stable without long warmup); post: the paper's."""
    tie: Literal["none", "decoder", "all"] = "decoder"
    """decoder: target embeddings = output layer; all: source embeddings too (needs tokenizer.joint)."""
    activation: Literal["relu", "gelu", "silu"] = "relu"
    """The feed-forward nonlinearity: relu (the paper's), gelu, or silu (x * sigmoid(x), Marian's "swish")."""
    scale_embeddings: bool = True
    """Multiply embeddings by sqrt(d_model) before adding positions (sec. 3.4); Marian's scale_embedding."""
    final_logits_bias: bool = False
    """A fixed (not trained) bias added to the output logits: Marian's final_logits_bias, set by `nmt import`."""

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        return self


MAX_POSITIONS_SETTING = "model.transformer.max_positions"
"""The setting a model's `max_positions` (the longest sequence it encodes or decodes) comes from, named in the
messages of code that enforces it without knowing the model (only the Transformer has such a bound)."""


class ModelConfig(Section):
    type: Literal["rnn", "transformer"] = "rnn"
    """rnn: the encoder/decoder/attention keys below; transformer: the `transformer` section."""
    transformer: TransformerConfig = TransformerConfig()
    embed_dim: PositiveInt = 256
    encoder: EncoderConfig = EncoderConfig()
    decoder: DecoderConfig = DecoderConfig()
    attention: AttentionConfig = AttentionConfig()
    bridge: bool = True
    """Initialise the decoder state from the encoder's final states (tanh of a linear map); else zeros."""
    tie_embeddings: bool = False
    """Share the target embedding matrix with the output layer (needs embed_dim == decoder.hidden_size)."""

    @classmethod
    def of_transformer(cls, settings: TransformerConfig) -> ModelConfig:
        """A Transformer of these settings (what `nmt import` builds from a Marian model's config)."""
        return cls(type="transformer", transformer=settings)

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model can encode or decode (a Transformer's position table); None: any."""
        return self.transformer.max_positions if self.type == "transformer" else None

    @property
    def cache_floats_per_position(self) -> int:
        """Floats a decoding row's state grows by per decoded position: a Transformer's self-attention keys and
        values in every decoder layer; 0 for an RNN, whose state does not grow."""
        t = self.transformer
        return 2 * t.d_model * t.decoder_layers if self.type == "transformer" else 0

    @property
    def input_feeding(self) -> bool:
        """Whether the decoder feeds h~_{t-1} into step t (resolved by `_resolve_input_feeding`)."""
        return bool(self.decoder.input_feeding)

    @property
    def attention_shape(self) -> tuple[int, int]:
        """The decoder's cross-attention maps: (layers, heads per layer); an RNN has one layer."""
        if self.type == "transformer":
            return self.transformer.decoder_layers, self.transformer.heads
        return 1, self.attention.heads if self.attention.type == "multihead" else 1

    @property
    def scheduled_sampling(self) -> bool:
        """Whether the model can train with teacher_forcing below 1: an RNN decodes step by step and can feed
        its own predictions back; a Transformer decodes every target position in parallel from the reference."""
        return self.type == "rnn"

    @property
    def shares_source_embeddings(self) -> bool:
        """One embedding matrix for source and target (a Transformer's tie: all), which needs a joint
        vocabulary."""
        return self.type == "transformer" and self.transformer.tie == "all"

    @model_validator(mode="after")
    def _resolve_input_feeding(self) -> ModelConfig:
        """Input feeding is a Luong option: on by default there, always off with Bahdanau attention."""
        bahdanau = self.attention.type == "bahdanau"
        if bahdanau and self.decoder.input_feeding:
            log.warning("model.decoder.input_feeding: Bahdanau attention feeds its context vector into the RNN, "
                        "not h~; input feeding applies to Luong attention (dot, general, concat) and is off here")
        if self.decoder.input_feeding is None or bahdanau:
            # resolved, not set: fine-tuning puts only what a config sets on top of the other run's model
            decoder = DecoderConfig.model_construct(self.decoder.model_fields_set,
                                                    **{**dict(self.decoder), "input_feeding": not bahdanau})
            object.__setattr__(self, "decoder", decoder)  # frozen model: resolved once, while validating
        return self

    @property
    def summary(self) -> str:
        """What `nmt compare` and the training log call the architecture."""
        if self.type == "transformer":
            t = self.transformer
            return f"transformer {t.encoder_layers}+{t.decoder_layers}x{t.d_model}, {t.heads} heads"
        if self.attention.type == "multihead":
            return f"rnn, multihead ({self.attention.heads})"
        return f"rnn, {self.attention.type}"

    @model_validator(mode="after")
    def _compatible(self) -> ModelConfig:
        attention_dim = self.attention.dim or self.decoder.hidden_size
        if self.attention.type == "multihead" and attention_dim % self.attention.heads:
            raise ValueError(f"attention.type multihead: attention.dim ({attention_dim}) must be a multiple of "
                             f"attention.heads ({self.attention.heads})")
        if self.attention.scale and self.attention.type not in ("dot", "general"):
            raise ValueError(f"attention.scale is for the dot and general scores, not {self.attention.type}")
        if self.attention.type == "dot" and self.encoder.output_size != self.decoder.hidden_size:
            raise ValueError(
                f"attention.type dot needs the encoder output size ({self.encoder.output_size}) to equal "
                f"decoder.hidden_size ({self.decoder.hidden_size}); use 'general' or change the sizes"
            )
        if self.tie_embeddings and self.embed_dim != self.decoder.hidden_size:
            raise ValueError(
                f"tie_embeddings needs embed_dim ({self.embed_dim}) == decoder.hidden_size "
                f"({self.decoder.hidden_size})"
            )
        return self


class ScheduleConfig(Section):
    type: Literal["constant", "warmup_inverse_sqrt", "warmup_linear", "plateau"] = "constant"
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    plateau_factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    plateau_patience: Annotated[int, Field(ge=0)] = 1
    min_lr: Annotated[float, Field(ge=0.0)] = 1e-5


class InitFrom(Section):
    """Start from another run's weights and tokenizer (`nmt train --init-from RUN`): fine-tuning. The optimizer,
    schedule and step count start fresh; a resumed run continues from its own checkpoints."""

    run: str
    """The run directory whose best checkpoint gives the first weights (an imported one: nmt import)."""
    vocab: Literal["same", "extend"] = "same"
    """same: the run's vocabulary (a config asking for another tokenizer is refused); extend: a tokenizer trained
    on this corpus, whose pieces the run lacks get new embedding and output rows."""
    checkpoint: str | None = None
    """The checkpoint the weights came from: recorded when training starts."""


class GuidedAlignment(Section):
    """Train one cross-attention head to align words (Garg et al. 2019; Marian's --guided-alignment): the loss
    adds `weight` x the cross-entropy between that head's weights and the word alignments in `path`, mapped to
    subwords, per target token. `nmt align --prepare --config CONFIG` writes the file with eflomal."""

    path: str
    """Word alignments of the training pairs, one Pharaoh line (`i-j`, source-target, from 0) per pair, in the
    order `nmt data` keeps them after cleaning."""
    weight: Annotated[float, Field(gt=0.0)] = 0.1
    layer: PositiveInt | None = None
    """The decoder layer, from 1 (default: the penultimate, which aligns best in Garg et al.; an RNN: 1)."""
    head: PositiveInt = 1
    """The head of that layer, from 1 (an RNN's single-head attention has one; its multi-head attention has
    model.attention.heads)."""


class EmaConfig(Section):
    """An exponential moving average of the weights, kept beside them during training: after each optimizer
    step, ema = decay x ema + (1 - decay) x weights."""

    decay: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.999
    """How slowly the average follows: it spans about 1 / (1 - decay) steps."""


class TrainingConfig(Section):
    batch_tokens: PositiveInt = 4000
    """Token budget of a batch: sentences x longest side (source or target, in subwords), padding included."""
    max_batch_sentences: PositiveInt = 512
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: Annotated[float, Field(gt=0.0)] = 1e-3
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    schedule: ScheduleConfig = ScheduleConfig()
    label_smoothing: Fraction = 0.1
    clip_norm: Annotated[float, Field(gt=0.0)] | None = 1.0
    accumulate: PositiveInt = 1
    teacher_forcing: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    fast_dropout: bool = True
    """Dropout masks from 16-bit random lanes on the CPU (a quarter of torch's random draws, the same
    distribution: models/dropout.py); false takes torch's dropout kernel. GPUs always use torch's."""
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    """fp16 runs only on CUDA (with a gradient scaler); bf16 runs on CUDA and on CPUs; auto takes bf16 on a
    GPU that supports it, and on a CPU whichever of fp32 and bf16 trains this model faster, timed on its own
    step once per CPU, torch version and model (nmt.training.precision)."""
    max_steps: PositiveInt | None = None
    max_epochs: PositiveInt | None = None
    max_minutes: Annotated[float, Field(gt=0.0)] | None = None
    validate_every: PositiveInt = 500
    log_every: PositiveInt = 50
    patience: PositiveInt | None = None
    """Stop after this many validations without a better dev BLEU."""
    keep_last: PositiveInt = 3
    max_nonfinite: PositiveInt = 10
    """Stop with an error after this many consecutive steps with a non-finite loss or gradient."""
    threads: PositiveInt | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    init_from: InitFrom | None = None
    guided_alignment: GuidedAlignment | None = None
    ema: EmaConfig | None = None
    """Keep an averaged copy of the weights: validation scores it, each checkpoint saves it beside the raw
    weights (`--checkpoint ema` loads it)."""
    tensorboard: bool = False
    """Also write loss, learning rate, tokens/s, gradient norm, dev scores and one attention heatmap per
    validation to RUN/tensorboard (needs the tensorboard package)."""
    distributed_timeout_minutes: Annotated[float, Field(gt=0.0)] = 30.0
    """Under torchrun: how long a rank waits for the others (rank 0's validation included) before the job
    ends with an error instead of hanging."""

    @model_validator(mode="after")
    def _budget(self) -> TrainingConfig:
        if self.max_steps is None and self.max_epochs is None and self.max_minutes is None:
            raise ValueError("set at least one budget: max_steps, max_epochs or max_minutes")
        if self.schedule.type == "warmup_linear" and self.max_steps is None:
            raise ValueError("schedule.type warmup_linear decays to 0 at max_steps: set training.max_steps")
        return self


AttentionKind = Literal["cross", "encoder", "decoder"]
"""What attention to inspect: cross (target over source), encoder self-attention, decoder self-attention."""
ATTENTION_KINDS: tuple[str, ...] = get_args(AttentionKind)

MAX_BEAM = 64
"""The largest beam: search memory grows with beam x output length x source length."""
MAX_ATTRIBUTION_COST = 8192
"""The default bound of a gradient attribution's cost, target x source tokens x integration steps
(nmt.inspect.attribution.Cost), in the API, `nmt attention --max-cost` and the server (413): integrated
gradients of a sentence of 15 subwords (16 x 16 x 32), seconds of one CPU core with the shipped Transformer
(RELIABILITY.md has the measurement)."""
MAX_STEPS = 1024
"""The most integration steps an attribution may ask for, in the API and `nmt attention --steps`."""
MAX_LENGTH_PENALTY = 10.0
"""Far above any useful alpha (0 to 2): larger ones only turn every score into -0.0."""
MAX_SEED = 2**32 - 1
MAX_NGRAM = 10
"""The largest no_repeat_ngram_size: a longer n-gram repeated is a quotation, not a decoding loop."""
MAX_REPETITION_PENALTY = 10.0
"""Far above any useful repetition penalty (1.0 to 1.5): larger ones ban every token already generated."""
"""The largest seed: what every random generator takes (NumPy's is the narrowest)."""

TUNE_BEAMS = (1, 3, 5, 8)
TUNE_LENGTH_PENALTIES = (0.0, 0.6, 1.0, 1.5)
"""The grid `nmt tune` searches by default."""


class TunedDecoding(Section):
    """What `nmt tune` chose the decoding settings on: written into a run's config.yaml, never by hand."""

    split: str
    checkpoint: str
    bleu: float
    before: dict[str, float]
    """The settings (and their BLEU on `split`) that the tuned ones replaced."""
    beams: list[int]
    length_penalties: list[float]


MAX_MBR_CANDIDATES = 64
"""The most candidates MBR compares: its time and memory grow with their square."""


class MbrConfig(Section):
    """Minimum Bayes risk decoding (Kumar & Byrne 2004; Freitag et al. 2022): draw `candidates` translations
    and keep the one with the highest expected `metric` against the others as pseudo-references."""

    candidates: Annotated[int, Field(ge=2, le=MAX_MBR_CANDIDATES)] = 16
    source: Literal["beam", "sample"] = "beam"
    """beam: the n-best of a beam of `candidates`; sample: `candidates` draws (epsilon sampling, what Freitag et
    al. 2023 recommend for large models; the small ones trained here write better candidates by beam: 0.6 to
    3.3 BLEU more on test2016, BENCHMARKS.md)."""
    epsilon: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.02
    """sample: tokens below this probability are never drawn (epsilon sampling, Hewitt et al. 2022, the
    source of MBR candidates Freitag et al. 2023 recommend)."""
    metric: Literal["chrf", "bleu", "ter"] = "chrf"
    """The utility, from sacrebleu: chrF, sentence BLEU (effective order), or TER (lower is better)."""


class DecodingConfig(Section):
    beam_size: Annotated[int, Field(ge=1, le=MAX_BEAM)] = 1
    length_penalty: Annotated[float, Field(ge=0.0, le=MAX_LENGTH_PENALTY)] = 0.0
    """GNMT alpha: hypotheses are ranked by log p / ((5 + length) / 6) ** alpha."""
    n_best: PositiveInt = 1
    max_ratio: Annotated[float, Field(gt=0.0, le=10.0)] = 2.0
    max_extra: Annotated[int, Field(ge=0, le=1000)] = 10
    """A translation has at most max_ratio x source length + max_extra tokens (bounded: search buffers grow with it)."""
    max_src_tokens: PositiveInt = 256
    """Longer inputs are truncated (with a warning), and so are translations given to `nmt score`; a Transformer
    also stops at its model.transformer.max_positions."""
    no_repeat_ngram_size: Annotated[int, Field(ge=0, le=MAX_NGRAM)] = 0
    """A translation never repeats an n-gram of this size (0: off)."""
    repetition_penalty: Annotated[float, Field(ge=1.0, le=MAX_REPETITION_PENALTY, allow_inf_nan=False)] = 1.0
    """A token already generated has its log-probability multiplied by this (1.0: off; CTRL, Keskar et al. 2019)."""
    protect: list[str] = []
    """Regular expressions of text that `nmt translate --format html|xml` (and `--protect`) carries through
    translation unchanged, besides URLs, e-mail addresses, numbers and placeholders."""
    mbr: MbrConfig | None = None
    """Minimum Bayes risk decoding instead of the search's best (`--mbr` turns it on with these settings)."""
    batch_sentences: PositiveInt = 128
    """Sentences decoded together; beam search decodes beam_size rows for each (fewer sentences where the
    attention history and the caches of a batch would pass 1 GiB)."""
    tuned: TunedDecoding | None = None

    @field_validator("protect")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{pattern!r} is not a regular expression ({err})") from None
            if re.fullmatch(pattern, ""):
                raise ValueError(f"{pattern!r} matches empty text")
        return patterns

    @model_validator(mode="after")
    def _n_best(self) -> DecodingConfig:
        if self.n_best > self.beam_size:
            raise ValueError(f"n_best ({self.n_best}) cannot exceed beam_size ({self.beam_size})")
        return self


class EvaluationConfig(Section):
    tokenize: Literal["13a", "intl", "char", "none", "zh", "ja-mecab", "ko-mecab", "flores200"] = "13a"
    lowercase: bool = False


class Config(Section):
    name: str
    run_dir: str | None = None
    """Default: runs/<name>."""
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] = 42
    data: DataConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig
    decoding: DecodingConfig = DecodingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    @model_validator(mode="after")
    def _sections_agree(self) -> Config:
        if self.model.shares_source_embeddings and not self.tokenizer.joint:
            raise ValueError("model.transformer.tie all shares source and target embeddings: set "
                             "tokenizer.joint: true")
        if self.training.teacher_forcing < 1.0 and not self.model.scheduled_sampling:
            raise ValueError("training.teacher_forcing below 1 (scheduled sampling) is for model.type rnn")
        if (guided := self.training.guided_alignment) is not None:
            layers, heads = self.model.attention_shape
            if guided.layer is not None and guided.layer > layers:
                raise ValueError(f"training.guided_alignment.layer {guided.layer}: the decoder has {layers} "
                                 f"attention layer{'s' if layers > 1 else ''}")
            if guided.head > heads:
                raise ValueError(f"training.guided_alignment.head {guided.head}: the layer has {heads} "
                                 f"head{'s' if heads > 1 else ''}")
        return self

    @property
    def guided_layer(self) -> int:
        """The guided decoder layer from 1 (the config's, else the penultimate); requires guided_alignment."""
        guided = self.training.guided_alignment
        assert guided is not None
        return guided.layer or max(1, self.model.attention_shape[0] - 1)


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases (`*name`): a config has no use for them, and nested aliases expand exponentially
    (a 1 KB "billion laughs" file would take minutes and gigabytes)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted in a config",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _yaml_problem(err: yaml.YAMLError) -> str:
    return getattr(err, "problem", None) or str(err).splitlines()[0]


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_NoAliasLoader)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (UnicodeDecodeError, OSError) as err:
        raise ConfigError(f"{path}: cannot read config ({err})") from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {_yaml_problem(err)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of sections, got {type(raw).__name__}")
    return raw


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `key.sub=value` override in place; the value is parsed as YAML (`0.5`, `true`, `[1, 2]`)."""
    key, sep, value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {shown_value(assignment)}: expected key.sub=value")
    parts = key.strip().split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:  # an optional section left unset (`mbr: null` in a run's config) is set by its first key
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {shown_value(assignment)}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    try:
        node[parts[-1]] = parse_yaml(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {shown_value(assignment)}: the value is not valid YAML: "
                          f"{_yaml_problem(err)}") from None


SHOWN_INPUT_CHARS = 80


def shown_value(value: Any) -> str:
    """A value as an error message quotes it: at most SHOWN_INPUT_CHARS characters, so that a huge input never
    makes a huge message."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        return f"an {type(value).__name__} of more than {sys.get_int_max_str_digits()} digits"
    return text if len(text) <= SHOWN_INPUT_CHARS else f"{text[:SHOWN_INPUT_CHARS]}... ({len(text):,} characters)"


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        # Drop the discriminator tags pydantic inserts into union locations ('text', 'tsv', 'hf').
        loc = [str(p) for p in item["loc"] if p not in ("text", "tsv", "hf")]
        key = ".".join(loc) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        quoted = item["type"] not in ("missing", "extra_forbidden") and not isinstance(item.get("input"), dict)
        got = f" (got {shown_value(item.get('input'))})" if quoted else ""  # a section's check names its keys itself
        lines.append(f"{source}: {key}: {message}{got}")
    return "\n".join(lines)


def parse_config(raw: dict[str, Any], source: str = "config", check_files: bool = False) -> Config:
    try:
        return Config.model_validate(raw, context={"check_files": check_files})
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_files: bool = True) -> Config:
    raw = read_yaml(Path(path))
    for assignment in overrides:
        apply_override(raw, assignment)
    return parse_config(raw, source=str(path), check_files=check_files)


def config_diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The dotted keys whose values differ between two nested mappings, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            found.extend(config_diff(old.get(key), new.get(key), path))
        return found
    return [] if old == new else [(prefix, old, new)]


def format_diff(differences: list[tuple[str, Any, Any]]) -> str:
    """`key old -> new; ...`: how every message names what changed between two configs."""
    return "; ".join(f"{key} {old!r} -> {new!r}" for key, old, new in differences)


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
