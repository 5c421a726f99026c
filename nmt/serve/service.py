"""Trained runs loaded once and served: translation with per-request decoding settings (minimum Bayes risk
included) and per-text steering (a forced prefix, required phrases), with a quality score per translation,
streamed token by token or whole, attention views and model descriptions,
with every client mistake turned into a `ClientError` that names the field. This is what `nmt serve` exposes
over HTTP (nmt/serve/server.py), kept free of HTTP so that it is testable on its own."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nmt.data.corpus import has_content, normalize
from nmt.documents.translate import DocumentTranslator
from nmt.errors import ArgumentError
from nmt.inference.options import DecodingOptions
from nmt.inference.steer import Steer
from nmt.inference.streaming import StreamedToken, translate_streamed
from nmt.inference.translate import Translation, Translator
from nmt.inspect.attribution import Cost
from nmt.inspect.view import AttentionView, attention_view
from nmt.models import count_parameters
from nmt.runs.loading import LoadedRun, load_model


class ClientError(ArgumentError):
    """A request the server cannot honour because of what the client sent (HTTP 4xx; an `ArgumentError` from
    the checks the server shares with the API is a 422)."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(field, message)
        self.status = status

    def __reduce__(self):
        return type(self), (self.field, self.message, self.status)


@dataclass(frozen=True, kw_only=True)
class Decoding(DecodingOptions):
    """A request's decoding options and the model they decode with; requests that share them can share a batch.
    With `n_alternatives` K, each text gets the K best continuations that differ at the first position after its
    prefix instead of the n-best; with `mbr`, the translation chosen by minimum Bayes risk."""

    model: str
    n_alternatives: int | None = None


@dataclass(frozen=True)
class SteeredText:
    """One text of a request with its steering: what the micro-batcher batches. The fields are the request's
    names of the prefix and of each constraint, for the errors about them."""

    text: str
    steer: Steer = Steer()
    prefix_field: str = "prefix"
    constraint_fields: tuple[str, ...] = ()

    def phrases(self) -> list[tuple[str, str]]:
        """The target phrases the translation must hold, each with its field: the prefix, then the constraints."""
        prefix = [(self.steer.prefix, self.prefix_field)] if self.steer.prefix else []
        return prefix + list(zip(self.steer.constraints, self.constraint_fields, strict=True))


@dataclass
class ServedModel:
    name: str
    loaded: LoadedRun
    translator: Translator  # the run's own decoding settings

    def describe(self) -> dict:
        """The model (`describe()`: what it is and which attention maps it has), the checkpoint served, and the
        run's decoding defaults: what /models answers and the page builds its choices from."""
        config, meta = self.loaded.config, self.loaded.checkpoint.meta
        model = self.loaded.model
        described = model.describe()
        return {"name": self.name, "architecture": described.summary, "type": described.family,
                "attention": described.attention, "layers": described.layers, "heads": described.heads,
                "kinds": described.kinds, "parameters": count_parameters(model),
                "dev_bleu": meta.get("dev_bleu"), "step": meta.get("step"),
                "checkpoint": self.loaded.checkpoint.path.name, "moving_average": self.loaded.checkpoint.files.ema,
                "src_lang": config.data.src_lang, "tgt_lang": config.data.tgt_lang,
                "beam_size": config.decoding.beam_size, "length_penalty": config.decoding.length_penalty,
                "mbr": config.decoding.mbr.model_dump() if config.decoding.mbr else None,
                "quality_calibrated": self.translator.estimator is not None and self.translator.estimator.calibrated,
                "max_src_tokens": self.translator.source_limit[0]}


def translate_response(decoding: Decoding, translations: Sequence[Translation]) -> dict[str, Any]:
    """Translations as POST /translate answers them: the one producer of that JSON, for the server and for the
    page inline in a notebook (nmt.api.inline)."""
    return {**asdict(decoding), "mbr": decoding.mbr.model_dump() if decoding.mbr else None,
            "translations": [{"source": t.source, "text": t.text, "hypotheses": [
                {"text": text, "score": h.score, "log_prob": h.log_prob, "tokens": len(h.tokens),
                 "utility": t.utilities[i] if t.utilities else None}
                for i, (h, text) in enumerate(zip(t.hypotheses, t.texts[:len(t.hypotheses)], strict=True))],
                "missing": t.missing, "quality": t.quality}
                for t in translations]}  # a document has its text and no hypotheses


def attention_response(model: str, view: AttentionView) -> dict[str, Any]:
    """A view as POST /attention answers it (attribution apart): the one producer of that JSON, for the server
    and for the page inline in a notebook (nmt.api.inline)."""
    stats = view.stats
    return {"model": model, "source": view.source, "translation": view.translation, "kind": view.kind,
            "layer": view.layer, "head": view.head, "row_tokens": view.row_labels, "col_tokens": view.col_labels,
            "weights": view.weights.tolist(),
            "panels": [{"caption": caption, "weights": weights.tolist()} for caption, weights in view.panels],
            "entropy": stats.entropy, "max_weight": stats.max_weight, "above_threshold": stats.above_threshold,
            "threshold": stats.threshold, "summary": stats.summary(), "words": view.words, "eos": view.eos,
            "heads": [vars(h) for h in view.heads]}


def text_field(texts: Sequence[str], i: int) -> str:
    """How a request names its i-th text: `text` when it sent one, `text[i]` when it sent a list."""
    return "text" if len(texts) == 1 else f"text[{i}]"


def decoding_costs(decoding: DecodingOptions, lengths: Sequence[int], max_cost: int,
                   weights: Sequence[int] | None = None) -> list[int]:
    """Each text's decoding cost in search rows (the beam, or MBR's candidates) x source tokens (each row runs up
    to max_ratio x length + max_extra steps) x its weight (`steering_weight`, default 1); a request above
    `max_cost` in all is refused with 413: one request must not hold the decoder, which serves every client in
    turn, for minutes."""
    weights = weights or [1] * len(lengths)
    rows, what = decoding.rows, "mbr.candidates" if decoding.mbr is not None else "beam_size"
    costs = [rows * length * weight for length, weight in zip(lengths, weights, strict=True)]
    if sum(costs) > max_cost:
        weighed = any(weight > 1 for weight in weights)
        raise ClientError("text", f"costs {sum(costs)} ({what} {rows} x {sum(lengths)} source tokens"
                                  f"{' x constraints and alternatives' if weighed else ''}); at most {max_cost} per "
                                  f"request: send fewer or shorter texts, or a smaller {what}"
                                  f"{', fewer constraints or alternatives' if weighed else ''}", status=413)
    return costs


def steering_weight(decoding: Decoding, text: SteeredText) -> int:
    """How many plain decodes of `text` its steering costs at most: 1 + its constraints (each beam is also
    extended by every phrase's next token, and the search cannot end before the phrases are in; the time
    measured grows more slowly than this, so the bound errs high), times the alternatives (each is completed by
    a search of its own)."""
    return (1 + len(text.steer.constraints)) * (decoding.n_alternatives or 1)


def check_attribution_cost(cost: Cost, max_cost: int) -> None:
    """An attribution above `max_cost` (nmt.inspect.attribution.Cost: target x source tokens x integration
    steps) is refused with 413, before any gradient: it would hold the model's attribution child for minutes."""
    if cost.total > max_cost:
        cheaper = " or input_x_gradient" if cost.steps > 1 else ""
        raise ClientError("attribution", f"{cost}; at most {max_cost} per request: send a shorter text{cheaper}",
                          status=413)


def _options(decoding: Decoding) -> dict[str, Any]:
    """A request's decoding settings as `Translator.translate` takes them (MBR sets its own beam)."""
    return {"beam_size": None if decoding.mbr else decoding.beam_size, "n_best": decoding.n_best,
            "length_penalty": decoding.length_penalty,
            "no_repeat_ngram_size": decoding.no_repeat_ngram_size or None,  # 0 (off) is the run's own, not a value
            "repetition_penalty": decoding.repetition_penalty, "n_alternatives": decoding.n_alternatives,
            "mbr": decoding.mbr or False}


def _steers(texts: Sequence[SteeredText]) -> list[Steer] | None:
    """The texts' steering as `Translator.translate` takes it; None where none is steered (the plain search)."""
    steers = [text.steer for text in texts]
    return steers if any(steer != Steer() for steer in steers) else None


def served_runs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """`--model` values: RUN_DIR (served under the folder's name) or NAME=RUN_DIR."""
    found = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "/" in name:
            name, path = Path(spec).resolve().name, spec
        found.append((name, Path(path)))
    return found


class ModelRegistry:
    """The served models by name, the first one the default."""

    def __init__(self, models: Sequence[ServedModel]):
        if not models:
            raise ArgumentError("model", "give at least one run directory to serve")
        self.models: dict[str, ServedModel] = {}
        for served in models:
            if served.name in self.models:
                raise ArgumentError("model", f"{served.loaded.run.path}: two served runs are both named "
                                             f"{served.name!r}; serve one as NAME=RUN_DIR")
            self.models[served.name] = served

    @classmethod
    def load(cls, runs: Sequence[tuple[str, Path]], checkpoint: str = "best", quantize: str | None = None
             ) -> ModelRegistry:
        """Each (name, run directory) loaded once, its checkpoint `checkpoint`, int8 with `quantize`."""
        served = []
        for name, run_dir in runs:
            loaded = load_model(run_dir, checkpoint, quantize=quantize)
            served.append(ServedModel(name, loaded, Translator.for_run(loaded)))
        return cls(served)

    def get(self, name: str | None) -> ServedModel:
        if name is None:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise ClientError("model", f"unknown model {name!r}; served: {', '.join(self.models)}", status=404)
        return self.models[name]

    def decoding(self, name: str | None, beam_size: int | None, n_best: int | None, length_penalty: float | None,
                 no_repeat_ngram_size: int | None = None, repetition_penalty: float | None = None,
                 n_alternatives: int | None = None, mbr: object = None, streaming: bool = False,
                 constrained: bool = False) -> Decoding:
        """A request's decoding settings, each defaulting to the run's own (MBR too: `DecodingOptions.resolve`,
        for a stream or constrained texts where they ask it); checked against each other."""
        served = self.get(name)
        if n_alternatives is not None and n_best is not None:
            raise ClientError("n_alternatives", "replaces the n-best list: give n_best or n_alternatives")
        exclusive = "streaming" if streaming else "n_alternatives" if n_alternatives is not None else None
        settings = DecodingOptions.resolve(served.loaded.config.decoding, beam_size, n_best, length_penalty,
                                           no_repeat_ngram_size, repetition_penalty, mbr=mbr, exclusive=exclusive,
                                           constrained=constrained)
        return Decoding(**asdict(settings), model=served.name, n_alternatives=n_alternatives)

    def check_texts(self, name: str | None, texts: Sequence[str], max_texts: int) -> list[int]:
        """Refuse what cannot be translated faithfully: no texts, too many, an empty one, or one longer than the
        model takes (`Translator.source_limit`: decoding.max_src_tokens, or a Transformer's max_positions when
        smaller; the server truncates nothing). Returns each text's source tokens, EOS included."""
        if not texts:
            raise ClientError("text", "give one text or a non-empty list of texts")
        if len(texts) > max_texts:
            raise ClientError("text", f"{len(texts)} texts in one request; at most {max_texts}", status=413)
        served = self.get(name)
        cleaned = [normalize(text, served.loaded.config.data.clean) for text in texts]
        for i, line in enumerate(cleaned):
            if not has_content(line):
                raise ClientError(text_field(texts, i), "is empty or only whitespace")
        limit, setting = served.translator.source_limit
        lengths = [len(ids) for ids in served.loaded.tokenizer.encode_src(cleaned)]
        for i, length in enumerate(lengths):
            if length > limit:
                raise ClientError(text_field(texts, i), f"has {length} subword tokens; {served.name} takes at most "
                                                        f"{limit} ({setting})")
        return lengths

    def check_documents(self, name: str | None, texts: Sequence[str], max_texts: int) -> list[int]:
        """Refuse no documents, too many or an empty one; each document's source tokens (markup included: what
        the request's cost bound counts), with no bound per document, which is translated sentence by
        sentence."""
        if not texts:
            raise ClientError("text", "give one document or a non-empty list of documents")
        if len(texts) > max_texts:
            raise ClientError("text", f"{len(texts)} documents in one request; at most {max_texts}", status=413)
        for i, text in enumerate(texts):
            if not has_content(text):
                raise ClientError(text_field(texts, i), "is empty or only whitespace")
        return [len(ids) for ids in self.get(name).loaded.tokenizer.encode_src(list(texts))]

    def translate_documents(self, decoding: Decoding, texts: Sequence[str], fmt: str, protect: bool | None
                            ) -> list[Translation]:
        """Documents translated as `nmt translate --format` does (nmt.documents): one Translation each, its
        text the translated document, without hypotheses."""
        served = self.models[decoding.model]
        translator = DocumentTranslator(served.loaded, fmt, protect=fmt != "text" if protect is None else protect,
                                        beam_size=decoding.beam_size, length_penalty=decoding.length_penalty,
                                        no_repeat_ngram_size=decoding.no_repeat_ngram_size or None,
                                        repetition_penalty=decoding.repetition_penalty)
        return [Translation(text, [], [translator.translate(text)], []) for text in texts]

    def check_steering(self, decoding: Decoding, texts: Sequence[SteeredText], lengths: Sequence[int]) -> None:
        """Refuse a prefix or constraint that cannot be in the translation: empty, with a piece the target
        vocabulary lacks, or longer than the text's output limit (decoding.max_ratio x its source tokens +
        decoding.max_extra); `lengths` are the texts' source tokens (`check_texts`). Alternatives go with a
        prefix, not with constraints."""
        if decoding.n_alternatives is not None and any(text.steer.constraints for text in texts):
            raise ClientError("n_alternatives", "goes with a prefix, not with constraints")
        translator = self.models[decoding.model].translator
        limits = translator.output_limits(torch.tensor(list(lengths))).tolist()
        for text, limit in zip(texts, limits, strict=True):
            for phrase, field in text.phrases():
                translator.encode_target(phrase, field, limit)

    def translate(self, decoding: Decoding, texts: Sequence[str], steers: Sequence[Steer] | None = None
                  ) -> list[Translation]:
        """Translate `texts` as `decoding` says, each steered by its `steers` entry when given."""
        return self.models[decoding.model].translator.translate(texts, steers=steers, **_options(decoding))

    def translate_steered(self, decoding: Decoding, texts: Sequence[SteeredText]) -> list[Translation]:
        """The micro-batcher's decode: texts as requests sent them, steered where they asked for it."""
        return self.translate(decoding, [text.text for text in texts], _steers(texts))

    def stream(self, decoding: Decoding, text: SteeredText, emit: Callable[[StreamedToken], None],
               every_step: Callable[[], None] | None = None) -> tuple[Translation, str]:
        """One text's translation streamed (nmt.inference.streaming.translate_streamed): `emit` gets each token
        of the best hypothesis as it is decoded; an exception `emit` or `every_step` raises ends the search."""
        return translate_streamed(self.models[decoding.model].translator, text.text, emit, every_step,
                                  steers=_steers([text]), **_options(decoding))

    def attention(self, name: str | None, text: str, beam_size: int | None, kind: str, layer: int | None,
                  head: int | None, threshold: float, words: bool = False, eos: bool = True
                  ) -> tuple[ServedModel, AttentionView]:
        served = self.get(name)
        return served, attention_view(served.loaded, text, threshold=threshold, beam_size=beam_size, kind=kind,
                                      layer=layer, head=head, translator=served.translator, words=words, eos=eos)
