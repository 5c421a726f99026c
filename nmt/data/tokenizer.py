"""SentencePiece subword models for the source and target sides, with the special ids of nmt/tokens.py.

Models are trained on the training split only. With `joint: true` both sides share one model; a run
directory still holds one model per side so that loading never depends on that choice."""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import Iterable, Sequence

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


class Tokenizer:
    """Encodes raw text to ids and decodes ids to detokenized text, one processor per side."""

    def __init__(self, src_proto: bytes, tgt_proto: bytes):
        self.src_proto, self.tgt_proto = src_proto, tgt_proto
        self.src = spm.SentencePieceProcessor(model_proto=src_proto)
        self.tgt = spm.SentencePieceProcessor(model_proto=tgt_proto)

    @classmethod
    def train(cls, src_lines: Iterable[str], tgt_lines: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
        if cfg.joint:
            proto = train_sentencepiece(itertools.chain(src_lines, tgt_lines), cfg, "joint")
            return cls(proto, proto)
        return cls(train_sentencepiece(src_lines, cfg, "source"), train_sentencepiece(tgt_lines, cfg, "target"))

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, lines: Sequence[str]) -> list[list[int]]:
        """Source ids end with EOS, so the encoder sees where a sentence stops."""
        return [ids + [EOS_ID] for ids in self.src.encode(list(lines))]

    def encode_tgt(self, lines: Sequence[str]) -> list[list[int]]:
        """Target ids without BOS/EOS: batching adds them for the teacher-forcing shift."""
        return self.tgt.encode(list(lines))

    def decode_tgt(self, ids: Sequence[int]) -> str:
        return self.tgt.decode([i for i in ids if i > EOS_ID])

    def src_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.src.id_to_piece(int(i)) for i in ids]

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.tgt.id_to_piece(int(i)) for i in ids]

