"""SentencePiece subword models for the source and target sides, with the special ids of nmt/tokens.py.

Models are trained on the training split only. With `joint: true` both sides share one model; a run
directory still holds one model per side so that loading never depends on that choice.

An imported model (runs/marian.py) keeps its own SentencePiece models, whose piece ids are not the model's:
a `Vocabulary` then maps pieces to ids, as Marian's vocab.json does (a piece it lacks is UNK)."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sentencepiece as spm

from nmt.config import TokenizerConfig
from nmt.errors import DataError
from nmt.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

log = logging.getLogger(__name__)



def train_sentencepiece(lines: Iterable[str], cfg: TokenizerConfig, what: str) -> bytes:
    """Train one SentencePiece model in memory and return its serialized proto. `lines` is streamed:
    SentencePiece keeps a random sample of at most `max_sentences` of them."""
    lines = iter(lines)
    first = next(lines, None)
    if first is None:
        raise DataError(f"cannot train the {what} tokenizer: no training sentences")
    log.info("training SentencePiece %s (%s, vocab %d) on a sample of at most %d sentences", what, cfg.model_type,
             cfg.vocab_size, cfg.max_sentences)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain([first], lines),
            model_writer=model,
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            hard_vocab_limit=False,  # a corpus with fewer distinct pieces gets a smaller vocabulary, not an error
            character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.max_sentences,
            shuffle_input_sentence=True,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            max_sentence_length=1 << 16,
            minloglevel=2,
            num_threads=2,
        )
    except RuntimeError as err:
        raise DataError(f"SentencePiece training for the {what} side failed: {err}") from None
    proto = model.getvalue()
    size = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    if size < cfg.vocab_size:
        log.info("the %s vocabulary has %d pieces: the corpus supports no more than that", what, size)
    return proto


@dataclass(frozen=True)
class Vocabulary:
    """Each side's pieces by id, for SentencePiece models whose own ids are not the model's. Ids PAD_ID..EOS_ID
    are the special ids of nmt/tokens.py whatever their entries say; the other entries are pieces."""

    src: tuple[str, ...]
    tgt: tuple[str, ...]
    src_ids: dict[str, int] = field(init=False, repr=False, compare=False)
    tgt_ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for side, pieces in (("src", self.src), ("tgt", self.tgt)):
            object.__setattr__(self, f"{side}_ids", {p: i for i, p in enumerate(pieces) if i > EOS_ID})

    def as_json(self) -> dict[str, list[str]]:
        return {"src": list(self.src), "tgt": list(self.tgt)}

    def to_text(self) -> str:
        """vocab.json's text (the run's and the data cache's)."""
        return json.dumps(self.as_json(), ensure_ascii=False) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        """Read what `to_text` wrote; ValueError when it is not that."""
        return cls.from_json(json.loads(text))

    @classmethod
    def from_json(cls, raw: object) -> Vocabulary:
        """Read what `as_json` gave; ValueError when it is not that."""
        sides = [raw.get(side) if isinstance(raw, dict) else None for side in ("src", "tgt")]
        src, tgt = (s if isinstance(s, list) and len(s) > EOS_ID and all(isinstance(p, str) for p in s) else None
                    for s in sides)
        if src is None or tgt is None:
            raise ValueError('expected {"src": [pieces], "tgt": [pieces]}, each with the special ids first')
        return cls(tuple(src), tuple(tgt))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_json(), ensure_ascii=False).encode()).hexdigest()


LANGUAGE_CODE_START, LANGUAGE_CODE_END = ">>", "<<"
WORD_START = "\u2581"  # SentencePiece's "▁"


def _split_code(line: str) -> tuple[list[str], str]:
    """A leading target-language code (">>fr<<"), which MarianTokenizer keeps as one piece, and the rest."""
    if line.startswith(LANGUAGE_CODE_START) and (end := line.find(LANGUAGE_CODE_END)) != -1:
        return [line[: end + len(LANGUAGE_CODE_END)]], line[end + len(LANGUAGE_CODE_END):]
    return [], line


@dataclass(frozen=True)
class Resampling:
    """One call's sampled segmentation (tokenizer.sampling or tokenizer.dropout): SentencePiece's arguments and
    the seed of its generator. SentencePiece draws from a generator per thread, seeded from a global seed when
    the thread starts: `encode` of a list with one thread starts a fresh thread, so the same seed gives the same
    pieces, in any process (what exact resume and every torchrun rank need)."""

    arguments: dict[str, Any]
    seed: int

    @classmethod
    def of(cls, cfg: TokenizerConfig, seed: int) -> Resampling | None:
        """The config's sampling with this seed; None when training segments deterministically."""
        if cfg.sampling is not None:
            return cls({"enable_sampling": True, "alpha": cfg.sampling.alpha, "nbest_size": cfg.sampling.nbest}, seed)
        if cfg.dropout > 0.0:
            return cls({"enable_sampling": True, "alpha": cfg.dropout}, seed)
        return None


def _encode(processor: spm.SentencePieceProcessor, lines: list[str], out_type: type, sampled: Resampling | None
            ) -> list:
    if sampled is None:
        return processor.encode(lines, out_type=out_type)
    spm.set_random_generator_seed(sampled.seed)
    return processor.encode(lines, out_type=out_type, num_threads=1, **sampled.arguments)


def load_sentencepiece(proto: bytes) -> spm.SentencePieceProcessor:
    """A SentencePiece model from its serialized proto; RuntimeError for one that is not a model, an empty one
    included (the constructor's `model_proto=` skips an empty proto, leaving a processor that fails at its first
    use: "Model is not initialized")."""
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto)
    return processor


class Tokenizer:
    """Encodes raw text to ids and decodes ids to detokenized text, one processor per side; with a
    `vocabulary`, through its piece -> id mapping instead of SentencePiece's own ids."""

    def __init__(self, src_proto: bytes, tgt_proto: bytes, vocabulary: Vocabulary | None = None):
        self.src_proto, self.tgt_proto, self.vocabulary = src_proto, tgt_proto, vocabulary
        self.src, self.tgt = load_sentencepiece(src_proto), load_sentencepiece(tgt_proto)

    @classmethod
    def train(cls, src_lines: Iterable[str], tgt_lines: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
        if cfg.joint:
            proto = train_sentencepiece(itertools.chain(src_lines, tgt_lines), cfg, "joint")
            return cls(proto, proto)
        return cls(train_sentencepiece(src_lines, cfg, "source"), train_sentencepiece(tgt_lines, cfg, "target"))

    @property
    def src_vocab_size(self) -> int:
        return len(self.vocabulary.src) if self.vocabulary else self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return len(self.vocabulary.tgt) if self.vocabulary else self.tgt.get_piece_size()

    def _mapped(self, processor: spm.SentencePieceProcessor, ids: dict[str, int], lines: Sequence[str],
                sampled: Resampling | None) -> list[list[int]]:
        codes, rests = zip(*map(_split_code, lines), strict=True) if lines else ((), ())
        pieces = _encode(processor, list(rests), str, sampled)
        return [[ids.get(piece, UNK_ID) for piece in code + cut] for code, cut in zip(codes, pieces, strict=True)]

    def encode_src(self, lines: Sequence[str], sampled: Resampling | None = None) -> list[list[int]]:
        """Source ids end with EOS, so the encoder sees where a sentence stops. `sampled`: a sampled
        segmentation (training's subword regularization), else the most probable one."""
        if self.vocabulary:
            return [ids + [EOS_ID] for ids in self._mapped(self.src, self.vocabulary.src_ids, lines, sampled)]
        return [ids + [EOS_ID] for ids in _encode(self.src, list(lines), int, sampled)]

    def encode_tgt(self, lines: Sequence[str], sampled: Resampling | None = None) -> list[list[int]]:
        """Target ids without BOS/EOS: batching adds them for the teacher-forcing shift."""
        if self.vocabulary:
            return self._mapped(self.tgt, self.vocabulary.tgt_ids, lines, sampled)
        return _encode(self.tgt, list(lines), int, sampled)

    def decode_tgt(self, ids: Sequence[int]) -> str:
        kept = [int(i) for i in ids if i > EOS_ID]
        if not self.vocabulary:
            return self.tgt.decode(kept)
        # a piece the target model lacks (a joint vocabulary's source piece) keeps its word-start mark: a space
        return self.tgt.decode_pieces(self.tgt_pieces(kept)).replace(WORD_START, " ").strip()

    def src_pieces(self, ids: Sequence[int]) -> list[str]:
        if self.vocabulary:
            return [self.vocabulary.src[int(i)] for i in ids]
        return [self.src.id_to_piece(int(i)) for i in ids]

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        if self.vocabulary:
            return [self.vocabulary.tgt[int(i)] for i in ids]
        return [self.tgt.id_to_piece(int(i)) for i in ids]
