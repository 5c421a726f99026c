"""`nmt serve`: the REST API (FastAPI, OpenAPI docs at /docs) and the attention explorer page at /, over
the runs in a `ModelRegistry`. Translation requests go through a `MicroBatcher`; POST /translate/stream sends
one text's translation token by token as server-sent events, decoded on the batcher's stream thread beside its
chunks (streams one at a time). Every client mistake is a 4xx JSON body {"error": {"field": ..., "message":
...}} (for a stream, before its first event), never a 500 or a traceback in the log.

Every resource a client can hold is bounded (`Limits`, one field per bound): the texts, the body, the decoding
cost of a request (beam x source tokens x (1 + constraints) x alternatives, 413 above it; a stream's too) and
of one decode (a big request is decoded in chunks, round-robin with the others; a stream is one decode); the
cost of an attribution (target x source tokens x integration steps, 413 above it; computed in a child process,
nmt.serve.attributor); the connections; the time to send a request (uvicorn has no such timeout:
`DeadlineH11Protocol`); the header size. A client that goes away has its remaining work dropped, a stream's
decoding stopped at its next token; SIGTERM refuses what is not decoded `shutdown_grace_s` later (503) and the
process exits."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from nmt.config import (
    MAX_ATTRIBUTION_COST,
    MAX_BEAM,
    MAX_LENGTH_PENALTY,
    MAX_MBR_CANDIDATES,
    MAX_NGRAM,
    MAX_REPETITION_PENALTY,
    AttentionKind,
)
from nmt.errors import ArgumentError, CheckpointError, NmtError
from nmt.inference.steer import Steer
from nmt.inference.streaming import StreamedToken
from nmt.inference.translate import Translation
from nmt.inspect.attribution import STEPS, Cost, Method, shape_attribution
from nmt.inspect.view import AttentionView
from nmt.serve.attributor import Attributor, ServedCheckpoint
from nmt.serve.microbatch import Closing, MicroBatcher
from nmt.serve.service import (
    ClientError,
    Decoding,
    ModelRegistry,
    ServedModel,
    SteeredText,
    attention_response,
    check_attribution_cost,
    decoding_costs,
    steering_weight,
    translate_response,
)
from nmt.serve.transport import (
    BodyLimit,
    DeadlineH11Protocol,
    EventStream,
    Stopped,
    error_response,
    hearing_shutdown,
    server_sent_event,
    unless_disconnected,
)
from nmt.threads import use_threads

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SETTINGS_VARIABLE = "NMT_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process



class Limits(BaseModel):
    """The bounds of one server process. Costs are beam size x source tokens, EOS included, x (1 + constraints)
    x alternatives (service.decoding_costs, service.steering_weight): the default request bound keeps a request
    to seconds on a small CPU with the shipped configs' model sizes even when no hypothesis ends before
    max_ratio x length + max_extra tokens, a chunk to a quarter of that (RELIABILITY.md has the measurements).
    An attribution's cost is target x source tokens x integration steps (nmt.inspect.attribution.Cost),
    bounded by default as the API and `nmt attention` bound it (config.MAX_ATTRIBUTION_COST)."""

    max_texts: int = 64  # texts in one /translate request (413 above)
    max_body_bytes: int = 1 << 20  # a request's body (413 above)
    max_request_cost: int = 1024  # a /translate, /translate/stream or /attention request's decoding cost (413 above)
    max_attribution_cost: int = MAX_ATTRIBUTION_COST  # an attribution's target x source tokens x steps (413 above)
    max_batch_sentences: int = 64  # texts in one decode
    max_batch_cost: int = 256  # one decode's cost: a big request is decoded in chunks of this, round-robin
    batch_wait_ms: float = 2.0  # how long the first request of a batch waits for others
    max_connections: int = 256  # uvicorn limit_concurrency: open connections, idle ones too (503 beyond)
    keep_alive_s: int = 5  # uvicorn timeout_keep_alive: an idle connection between two requests is closed
    request_timeout_s: float = 10.0  # a request's head and body must arrive within this (DeadlineH11Protocol)
    max_header_bytes: int = 16_384  # uvicorn h11_max_incomplete_event_size: request line and headers (400 above)
    shutdown_grace_s: float = 2.0  # on SIGTERM, work in progress goes on this long; what is left gets 503


SHUTDOWN_MARGIN_S = 3
"""uvicorn's timeout_graceful_shutdown is shutdown_grace_s plus this: the time for a last chunk and the
responses, after which uvicorn cancels what still runs."""


# Requests and responses -------------------------------------------------------------------------------

class Strict(BaseModel):
    """Unknown fields refused; numbers strict (no `true` for a beam size) and finite (no Infinity or NaN)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


Beam = Annotated[int | None, Field(ge=1, le=MAX_BEAM, description="1 = greedy; default: the run's")]


class MbrRequest(Strict):
    """Minimum Bayes risk settings, each over the run's decoding.mbr (else the defaults); checked by the library
    (nmt.inference.options.mbr_settings), as `run.translate(mbr=...)` is."""

    candidates: int | None = Field(None, description=f"Candidates per text, 2 to {MAX_MBR_CANDIDATES}; each "
                                                     "counts in the request's cost as a beam's hypothesis does")
    source: str | None = Field(None, description="beam (a beam's n-best) or sample (epsilon sampling)")
    epsilon: float | None = Field(None, description="sample: tokens below this probability are never drawn")
    metric: str | None = Field(None, description="The utility: chrf, bleu or ter")


class TranslateRequest(Strict):
    text: str | list[str] = Field(description="One text, or a list of texts translated together")
    model: str | None = Field(None, description="A served model's name (GET /models); default: the first")
    beam_size: Beam = None
    n_best: int | None = Field(None, ge=1, le=MAX_BEAM, description="Hypotheses returned per text")
    length_penalty: float | None = Field(None, ge=0.0, le=MAX_LENGTH_PENALTY, description="GNMT alpha; default: "
                                         "the run's")
    prefix: str | list[str] | None = Field(None, description="Target text each translation begins with (one for "
                                                             "every text, or a list aligned with text)")
    constraints: list[str] | list[list[str]] | None = Field(None, description="Target phrases each translation "
                                                            "must contain (one list for every text, or a list of "
                                                            "lists aligned with text); each makes a text cost more")
    no_repeat_ngram_size: int | None = Field(None, ge=1, le=MAX_NGRAM, description="No n-gram of this size twice "
                                             "in a translation; default: the run's")
    repetition_penalty: float | None = Field(None, ge=1.0, le=MAX_REPETITION_PENALTY, description="Multiplies "
                                             "the log-probability of tokens already generated (1: off); default: "
                                             "the run's")
    n_alternatives: int | None = Field(None, ge=1, le=MAX_BEAM, description="Instead of the n-best: the K best "
                                       "translations that differ at the first word after the prefix")
    format: Literal["text", "html", "xml"] = Field("text", description="html or xml: each text is a document, "
                                                   "translated sentence by sentence with its inline tags placed by "
                                                   "word alignment")
    protect: bool | None = Field(None, description="Carry URLs, e-mail addresses, numbers and placeholders "
                                                   "through unchanged; default: on for html and xml")
    mbr: MbrRequest | bool | None = Field(None, description="Choose each translation among candidates by minimum "
                                          "Bayes risk: true (the run's decoding.mbr, else the defaults), settings "
                                          "over those, or false; default: on where the run sets decoding.mbr "
                                          "(unless beam_size, n_alternatives or a stream is asked for)")

    def mbr_argument(self) -> object:
        """`mbr` as the library takes it: None, a bool, or the settings sent."""
        return self.mbr.model_dump(exclude_none=True) if isinstance(self.mbr, MbrRequest) else self.mbr


class StreamRequest(TranslateRequest):
    text: str = Field(description="One text")
    n_best: None = Field(None, description="Not for a stream: it sends the best hypothesis (POST /translate "
                                           "lists n-best)")
    n_alternatives: None = Field(None, description="Not for a stream (POST /translate gives alternatives)")
    mbr: None = Field(None, description="Not for a stream (POST /translate decodes by MBR)")


class Hypothesis(BaseModel):
    text: str
    score: float  # what the beam ranks by: log p / length penalty
    log_prob: float
    tokens: int  # target subwords, EOS not counted
    utility: float | None = None  # MBR: expected utility against the other candidates (what ranks them)


class TranslationOut(BaseModel):
    source: str
    text: str  # the best hypothesis, as `nmt translate` prints it
    hypotheses: list[Hypothesis]  # the n-best, or the alternatives, best first
    missing: list[str]  # constraints the best hypothesis lacks (no room in the length limit, or an n-gram ban)
    quality: float | None = None  # estimated sentence chrF of `text`, 0-100, calibrated on dev (null: a document)


class MbrSettings(BaseModel):
    candidates: int
    source: str
    epsilon: float
    metric: str


class Settings(BaseModel):
    """The settings a translation was decoded with."""

    model: str
    beam_size: int
    n_best: int
    length_penalty: float
    no_repeat_ngram_size: int  # 0: off
    repetition_penalty: float  # 1: off
    n_alternatives: int | None
    mbr: MbrSettings | None = None  # chosen by minimum Bayes risk with these settings (beam_size: its beam)


class TranslateResponse(Settings):
    translations: list[TranslationOut]


class StreamDone(Settings, TranslationOut):
    """The data of a stream's last event (`done`): the translation as /translate gives it and its settings."""

    delta: str  # what the text adds after the token events' deltas (normally "")


class AttentionRequest(Strict):
    text: str
    model: str | None = None
    beam_size: Beam = None
    kind: AttentionKind = "cross"
    layer: int | None = Field(None, ge=1, description="1 to the model's layers (/models); default the last")
    head: int | None = Field(None, ge=1, description="1 to the model's heads (/models); default all heads (grid) "
                                                     "and their average")
    threshold: float = Field(0.1, ge=0.0, le=1.0, description="Count positions above this weight")
    words: bool = Field(False, description="Merge subwords into words: sum over a source word's pieces, mean over "
                                           "a target word's; statistics of the merged map")
    eos: bool = Field(True, description="false: leave out the EOS row and column, rows renormalized")
    attribution: Method | None = Field(None, description="Also attribute each target token to the source tokens "
                                                         f"by gradients (integrated gradients: {STEPS} steps), "
                                                         "shaped as the weights; kind cross only")


class Panel(BaseModel):
    caption: str
    weights: list[list[float]]  # rows x columns


class HeadStatistics(BaseModel):
    layer: int
    head: int
    entropy: float
    max_weight: float


class AttributionOut(BaseModel):
    method: str
    weights: list[list[float]]  # rows x columns as the attention weights; each row sums to 1
    spearman: list[float | None]  # per row, against the attention weights; null where a row is constant
    mean_spearman: float | None  # over the rows that have one


class AttentionResponse(BaseModel):
    model: str
    source: str
    translation: str
    kind: str
    layer: int
    head: int | None
    row_tokens: list[str]  # who attends: target outputs (source tokens for encoder self-attention)
    col_tokens: list[str]  # what is attended to
    weights: list[list[float]]  # the chosen head, or the heads' average
    panels: list[Panel]  # every head of the layer (grid), or the one chosen
    entropy: list[float]  # per row, nats
    max_weight: list[float]
    above_threshold: list[int]
    threshold: float
    summary: dict[str, tuple[float, float]]  # (mean, std) of each statistic
    heads: list[HeadStatistics]  # every layer and head of this kind
    words: bool  # rows and columns are words (subwords merged), statistics of that map
    eos: bool  # false: EOS left out, rows renormalized
    attribution: AttributionOut | None = None  # when asked for


# The application --------------------------------------------------------------------------------------

def _field(location: Sequence) -> str:
    """pydantic's error location as the client wrote it: ("body", "text", "list[str]", 1) -> "text[1]",
    ("body", "mbr", "MbrRequest", "candidates") -> "mbr.candidates" (the member of a union that was tried, a type
    or a model's name, is left out: the fields are snake_case)."""
    parts: list[str] = []
    for part in location[1:] if location and location[0] == "body" else location:
        if isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
        elif part not in ("str", "int", "float", "bool") and "[" not in str(part) and not str(part)[:1].isupper():
            parts.append(str(part))
    return ".".join(parts) or "body"


def _aligned(values: list, count: int, field: str) -> list:
    """A list sent for the texts, one entry per text."""
    if len(values) != count:
        raise ClientError(field, f"has {len(values)} entries for {count} texts: give one value for every text, or "
                                 "a list aligned with text")
    return values


def steered_texts(body: TranslateRequest, texts: list[str]) -> list[SteeredText]:
    """Each text with its prefix and constraints, named as the request sent them: `prefix` and `constraints[j]`
    where one value is for every text, `prefix[i]` and `constraints[i][j]` where a list aligned with `text`."""
    count = len(texts)
    own_prefix = isinstance(body.prefix, list)
    prefixes = _aligned(body.prefix, count, "prefix") if isinstance(body.prefix, list) else [body.prefix or ""] * count
    shared = [phrase for phrase in body.constraints or [] if isinstance(phrase, str)]
    own = [phrases for phrases in body.constraints or [] if isinstance(phrases, list)]  # a list aligned with text
    phrase_lists = _aligned(own, count, "constraints") if own else [shared] * count
    steered = []
    for i, (text, prefix, phrases) in enumerate(zip(texts, prefixes, phrase_lists, strict=True)):
        where = f"constraints[{i}]" if own else "constraints"
        steered.append(SteeredText(text, Steer(prefix, tuple(phrases)), f"prefix[{i}]" if own_prefix else "prefix",
                                   tuple(f"{where}[{j}]" for j in range(len(phrases)))))
    return steered


@dataclass
class StreamCounts:
    """Streamed translations since the start (/health): begun, and stopped early because their client left."""

    started: int = 0
    stopped: int = 0


def create_app(registry: ModelRegistry, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    batcher = MicroBatcher(registry.translate_steered, limits.max_batch_sentences, limits.batch_wait_ms,
                           limits.max_batch_cost)
    attributor = Attributor()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await batcher.start()
        with hearing_shutdown(lambda: batcher.close(limits.shutdown_grace_s)):
            yield {"request_timeout_s": limits.request_timeout_s}  # for DeadlineH11Protocol
        await batcher.stop()
        attributor.close()

    app = FastAPI(title="nmt", summary="Translate and inspect attention with trained nmt runs.", lifespan=lifespan)
    app.state.batcher = batcher
    streams = StreamCounts()
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)

    @app.exception_handler(ArgumentError)
    async def client_error(_request: Request, err: ArgumentError) -> JSONResponse:
        return error_response(getattr(err, "status", 422), err.field, err.message)  # ClientError sets its own

    @app.exception_handler(Closing)
    async def closing(_request: Request, err: Closing) -> JSONResponse:
        return error_response(503, None, f"{err}; retry")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        if first.get("type") == "json_invalid":
            return error_response(422, "body", f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}")
        return error_response(422, _field(first.get("loc", ())), first["msg"])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if getattr(request.state, "body_too_large", False):
            return error_response(413, "body", f"request body over {limits.max_body_bytes} bytes")
        return error_response(err.status_code, None, str(err.detail))

    @app.get("/health")
    async def health() -> dict:
        """Liveness, the served models and the decoder's counters since the start."""
        return {"status": "ok", "models": list(registry.models), "decodes": batcher.batches,
                "texts_decoded": batcher.sentences, "texts_dropped": batcher.dropped, "streams": streams.started,
                "streams_stopped": streams.stopped}

    @app.get("/models")
    async def models() -> list[dict]:
        """The served runs: architecture, attention, size, dev BLEU, languages, decoding defaults."""
        return [served.describe() for served in registry.models.values()]

    def accept(body: TranslateRequest) -> tuple[Decoding, list[SteeredText], list[int]]:
        """A translation request checked before any decoding: its settings, its texts with their steering, and
        each text's cost (413 above the request bound)."""
        texts = [body.text] if isinstance(body.text, str) else body.text
        steered = steered_texts(body, texts)
        decoding = registry.decoding(body.model, body.beam_size, body.n_best, body.length_penalty,
                                     body.no_repeat_ngram_size, body.repetition_penalty, body.n_alternatives,
                                     body.mbr_argument(), isinstance(body, StreamRequest),
                                     any(text.steer.constraints for text in steered))
        lengths = registry.check_texts(decoding.model, texts, limits.max_texts)
        registry.check_steering(decoding, steered, lengths)
        costs = decoding_costs(decoding, lengths, limits.max_request_cost,
                               [steering_weight(decoding, text) for text in steered])
        return decoding, steered, costs

    async def translate_documents(body: TranslateRequest, request: Request) -> TranslateResponse:
        """Documents (`format` html or xml, or `protect`), one request at a time on the decode thread."""
        given = [name for name in ("n_best", "prefix", "constraints", "n_alternatives", "mbr")
                 if getattr(body, name) is not None]
        if given:
            raise ClientError(given[0], f"goes with sentences, not with format {body.format!r} or protect")
        texts = [body.text] if isinstance(body.text, str) else body.text
        decoding = registry.decoding(body.model, body.beam_size, None, body.length_penalty,
                                     body.no_repeat_ngram_size, body.repetition_penalty, mbr=False)
        lengths = registry.check_documents(decoding.model, texts, limits.max_texts)
        decoding_costs(decoding, lengths, limits.max_request_cost)
        found = await unless_disconnected(request, batcher.run(registry.translate_documents, decoding, texts,
                                                               body.format, body.protect))
        return TranslateResponse(**translate_response(decoding, found))

    @app.post("/translate", response_model=TranslateResponse)
    async def translate(body: TranslateRequest, request: Request) -> TranslateResponse:
        """Translate one text or a list, each optionally begun with a prefix and holding constraints; requests
        arriving together with the same settings are decoded in one batch. Documents (`format`) are translated
        whole, their tags and protected spans carried through."""
        if body.format != "text" or body.protect:
            return await translate_documents(body, request)
        decoding, texts, costs = accept(body)
        found = await unless_disconnected(request, batcher.submit(decoding, texts, costs))
        return TranslateResponse(**translate_response(decoding, found))

    def stream_on_stream_thread(decoding: Decoding, text: SteeredText, events: EventStream[StreamedToken]
                                ) -> tuple[Translation, str] | None:
        """A stream's decoding, on the batcher's stream thread; None when its client went away (counted)."""
        try:
            return registry.stream(decoding, text, events.put, events.check)
        except Stopped:
            streams.stopped += 1
            return None

    async def stream_events(decoding: Decoding, events: EventStream[StreamedToken],
                            work: asyncio.Future[tuple[Translation, str] | None]) -> AsyncIterator[str]:
        """A stream's body. Starlette cancels it when the client goes away, which stops the decoding."""
        try:
            async for token in events:
                yield server_sent_event("token", asdict(token))
            result = await work
        except (ArgumentError, Closing) as err:
            field, message = (err.field, err.message) if isinstance(err, ArgumentError) else (None, str(err))
            yield server_sent_event("error", {"error": {"field": field, "message": message}})
            return
        finally:
            events.stop()
        if result is not None:
            translation, rest = result
            answer = translate_response(decoding, [translation])
            [translated] = answer.pop("translations")
            yield server_sent_event("done", StreamDone(**answer, **translated, delta=rest).model_dump())

    @app.post("/translate/stream", response_class=StreamingResponse, responses={200: {
        "content": {"text/event-stream": {}}, "description": "Server-sent events: token ..., then done or error"}})
    async def translate_stream(body: StreamRequest) -> StreamingResponse:
        """One text's translation as server-sent events while it is decoded: a `token` event per token of the best
        hypothesis ({"id", "piece", "delta"}: the deltas joined are the text so far), then `done` (the translation
        as /translate gives it, with its settings and a last `delta`: StreamDone) or `error` ({"error": {"field",
        "message"}}). A mistake in the request is answered as by /translate, before any event. It is decoded on
        the batcher's stream thread, beside its chunks; the client going away stops it at its next search
        step."""
        decoding, [text], _costs = accept(body)
        events: EventStream[StreamedToken] = EventStream()
        work = batcher.run_stream(stream_on_stream_thread, decoding, text, events)
        work.add_done_callback(events.end)
        streams.started += 1
        return StreamingResponse(stream_events(decoding, events, work), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def attribution(served: ServedModel, view: AttentionView, method: str) -> AttributionOut:
        """The gradient attribution of `view`'s translation by the checkpoint `served` decodes with, shaped as
        its weights and compared with them. A refusal from the child is not worth a retry: the served checkpoint
        gone (503 without "retry"), the input (422); a child that died is (503)."""
        check_attribution_cost(Cost.of(method, len(view.tgt_ids) + int(view.ended), len(view.src_ids), STEPS),
                               limits.max_attribution_cost)
        try:
            relevance = await attributor.relevance(served.name, ServedCheckpoint.of(served.loaded), view.src_ids,
                                                   view.tgt_ids, view.ended, method, STEPS)
        except CheckpointError as err:
            log.warning("attribution for %s refused: %s", served.name, err)
            raise ClientError("attribution", str(err), status=503) from None
        except NmtError as err:
            raise ClientError("attribution", str(err)) from None
        except Exception as err:  # the child died: the server itself is fine
            log.warning("attribution for %s failed in its child process: %s", served.name, err)
            raise ClientError("attribution", f"the attribution process of {served.name} failed ({err}); retry, "
                                             "or ask without attribution", status=503) from None
        shaped = await asyncio.to_thread(shape_attribution, view, served.loaded.tokenizer, relevance, method)
        return AttributionOut(method=method, weights=shaped.relevance.tolist(),
                              spearman=[None if math.isnan(r) else r for r in shaped.spearman],
                              mean_spearman=None if math.isnan(shaped.mean_spearman) else shaped.mean_spearman)

    @app.post("/attention", response_model=AttentionResponse)
    async def attention(body: AttentionRequest, request: Request) -> AttentionResponse:
        """One text's translation with its attention weights and the statistics `nmt attention` prints; with
        `attribution`, the gradient attribution of the same translation beside them."""
        if body.attribution and body.kind != "cross":
            raise ClientError("attribution", f"is over the source tokens: it goes with kind cross, not {body.kind}")
        lengths = registry.check_texts(body.model, [body.text], 1)
        decoding_costs(registry.decoding(body.model, body.beam_size, None, None), lengths,
                       limits.max_request_cost)  # as attention_view decodes
        served, view = await unless_disconnected(request, batcher.run(
            registry.attention, body.model, body.text, body.beam_size, body.kind, body.layer, body.head,
            body.threshold, body.words, body.eos))
        explained = None
        if body.attribution:
            explained = await unless_disconnected(request, attribution(served, view, body.attribution))
        return AttentionResponse(**attention_response(served.name, view), attribution=explained)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def app_from_environment() -> FastAPI:
    """The app of one `--workers` process, built from the settings `serve` put in the environment."""
    settings = json.loads(os.environ[SETTINGS_VARIABLE])
    log.info("%s", use_threads(settings["threads"]))
    registry = ModelRegistry.load([(name, Path(path)) for name, path in settings["runs"]], settings["checkpoint"],
                             settings["quantize"])
    return create_app(registry, Limits(**settings["limits"]))


def serve(runs: Sequence[tuple[str, Path]], host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          checkpoint: str = "best", limits: Limits | None = None, quantize: str | None = None,
          threads: int | None = None) -> None:
    """Load the runs, then serve until Ctrl-C or SIGTERM (uvicorn shuts down cleanly on both). `threads`: CPU threads
    of each process (None: the cores shared among the workers)."""
    import uvicorn

    limits = limits or Limits()
    if host not in LOCAL_HOSTS:
        log.warning("listening on %s: anyone who can reach port %d can use this server; it has no authentication",
                    host, port)
    registry = ModelRegistry.load(runs, checkpoint, quantize)  # a bad run directory fails here, before binding the port
    bounds: dict[str, Any] = {
        "http": DeadlineH11Protocol, "limit_concurrency": limits.max_connections,
        "timeout_keep_alive": limits.keep_alive_s, "h11_max_incomplete_event_size": limits.max_header_bytes,
        "timeout_graceful_shutdown": math.ceil(limits.shutdown_grace_s) + SHUTDOWN_MARGIN_S}
    if workers == 1:
        log.info("%s", use_threads(threads))
        uvicorn.run(create_app(registry, limits), host=host, port=port, log_level="info", **bounds)
        return
    import torch

    os.environ[SETTINGS_VARIABLE] = json.dumps({
        "runs": [(name, str(path)) for name, path in runs], "checkpoint": checkpoint, "quantize": quantize,
        "limits": limits.model_dump(),
        "threads": threads or max(1, torch.get_num_threads() // workers)})
    uvicorn.run("nmt.serve.server:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="info", **bounds)
