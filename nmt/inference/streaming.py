"""A translation as it is decoded: the search passes on the best hypothesis's tokens once they can no longer
change (nmt.inference.controls.TokenListener); `TextDeltas` turns them into pieces of text that, joined, are
exactly the detokenized translation. Used by `nmt translate --stream` and POST /translate/stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nmt.data.tokenizer import Tokenizer

if TYPE_CHECKING:
    from nmt.inference.search import Sampling
    from nmt.inference.steer import Steer
    from nmt.inference.translate import Translation, Translator

INCOMPLETE = "\ufffd"  # what decoding shows for the first bytes of a character whose last byte is still to come


@dataclass(frozen=True)
class StreamedToken:
    id: int
    piece: str  # the subword as the vocabulary spells it
    delta: str  # the text it adds to what was sent before ("" while the text is not settled)


class TextDeltas:
    """A token listener that detokenizes the tokens so far after each one and sends `emit` the text added since
    the last time. A text that is not settled (it does not extend what was sent, or ends in a partial
    character) sends nothing until it is; `rest(final)` is what the final text adds after all of them.
    `every_step` is called at each search step, tokens or not: it may raise to stop the search at once (a
    beam can go many steps without a token that is final)."""

    def __init__(self, tokenizer: Tokenizer, emit: Callable[[StreamedToken], None],
                 every_step: Callable[[], None] | None = None):
        self.tokenizer, self.emit, self.every_step = tokenizer, emit, every_step
        self.tokens: list[int] = []
        self.sent = ""

    def __call__(self, ids: list[int]) -> None:
        if self.every_step is not None:
            self.every_step()
        for token in ids:
            self.tokens.append(token)
            text = self.tokenizer.decode_tgt(self.tokens)
            delta = ""
            if text.startswith(self.sent) and not text.endswith(INCOMPLETE):
                delta, self.sent = text[len(self.sent):], text
            self.emit(StreamedToken(token, self.tokenizer.tgt_pieces([token])[0], delta))

    def rest(self, final: str) -> str:
        """What `final` (the translation's text) adds to the deltas sent; the deltas are always its beginning."""
        if not final.startswith(self.sent):  # cannot happen with SentencePiece: decoding more adds text
            raise AssertionError(f"streamed {self.sent!r}, which does not begin {final!r}")
        return final[len(self.sent):]


def translate_streamed(translator: Translator, line: str, emit: Callable[[StreamedToken], None],
                       every_step: Callable[[], None] | None = None, **options: Any) -> tuple[Translation, str]:
    """Translate one line, calling `emit` with each token of the best hypothesis as it is decoded (and
    `every_step` at each search step: either may raise to stop the search); `options` are
    `Translator.translate`'s. Returns the translation and what its text adds to the deltas emitted (normally
    nothing)."""
    deltas = TextDeltas(translator.tokenizer, emit, every_step)
    [found] = translator.translate([line], listener=deltas, **options)
    return found, deltas.rest(found.text)


def stream_line(translator: Translator, line: str, write: Callable[[str], None], beam_size: int | None = None, *,
                sampling: Sampling | None = None, steer: Steer | None = None, **options: Any) -> Translation:
    """Translate one line, passing its text to `write` piece by piece as it is decoded, then a line end;
    `options` are `Translator.translate`'s."""
    found, rest = translate_streamed(translator, line, lambda token: write(token.delta) if token.delta else None,
                                     beam_size=beam_size, sampling=sampling, steers=[steer] if steer else None,
                                     **options)
    write(rest + "\n")
    return found
