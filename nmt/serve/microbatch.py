"""Micro-batching for the server: translation requests that arrive together and share their decoding settings
are decoded as one batch (the texts are whatever the decode function takes for one: the server's carry their
own steering), on one worker thread, so that the event loop keeps accepting requests and
throughput grows with the number of concurrent clients. One worker thread means one decode at a time: torch
already spreads each decode over the CPU's cores. A streamed translation decodes on a second thread, beside the
batches, so that its first token does not wait for a chunk in progress.

Bounds. The worker takes the first waiting request, then gathers more for at most `max_wait_ms` or until
`max_sentences` texts wait. It decodes in chunks of at most `max_sentences` texts and `max_cost` cost units
(a text alone may pass it), then turns to the next request in line (round-robin): a big request is decoded a
chunk at a time with the others' chunks in between, so a small request waits for one chunk of each request
ahead of it, never for a whole big one. A request whose future is cancelled (its client went away) has its
remaining chunks dropped. A chunk that fails is decoded again one request at a time, so that only the
requests whose own texts fail get the error. `close(grace)` (on SIGTERM) lets the work go on for `grace`
seconds, then refuses what is left with `Closing`, between two chunks. Other model work (attention views,
streamed translations) runs on the same thread through `run`, one thing at a time with the chunks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class Closing(Exception):
    """The server is shutting down: the request was not (completely) decoded."""


@dataclass(eq=False)
class _Request:
    key: Hashable
    texts: Sequence[Any]
    costs: Sequence[int]  # one per text
    done: asyncio.Future = field(repr=False)
    results: list = field(default_factory=list)  # of the texts decoded so far, in order

    @property
    def finished(self) -> bool:
        return len(self.results) == len(self.texts)


@dataclass
class _Part:
    """The texts start:stop of one request, in a chunk."""

    request: _Request
    start: int
    stop: int


class MicroBatcher:
    def __init__(self, decode: Callable[[Any, list[Any]], list], max_sentences: int = 64, max_wait_ms: float = 2.0,
                 max_cost: int | None = None):
        """`decode(key, texts)` returns one result per text, in order; `key` holds the shared settings."""
        self.decode, self.max_sentences, self.max_wait = decode, max_sentences, max_wait_ms / 1000
        self.max_cost = max_cost
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nmt-decode")
        # streams decode one at a time beside the batches: a stream's first token must not wait for a chunk
        self.stream_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nmt-stream")
        self.queue: asyncio.Queue[_Request] | None = None
        self.line: list[_Request] = []  # taken from the queue, not finished; served round-robin
        self.worker: asyncio.Task | None = None
        self.closing_at: float | None = None  # monotonic time after which what is left is refused
        self.batches = 0  # decodes run, for tests and statistics
        self.sentences = 0  # texts decoded
        self.dropped = 0  # texts never decoded because their request was cancelled

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._work())

    def close(self, grace: float) -> None:
        """Stop taking requests; refuse, between two chunks, what is not decoded `grace` seconds from now."""
        if self.closing_at is None:
            self.closing_at = time.monotonic() + grace

    async def stop(self) -> None:
        """End the worker, fail what is left and wait for the chunk in progress (the executor's thread)."""
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        self._refuse_all()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.stream_executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, key: Hashable, texts: Sequence[Any], costs: Sequence[int] | None = None) -> list:
        """Translate `texts` with the settings `key`, batched with whatever else is waiting; `costs` (one per
        text, default 1) bound the chunks. Cancelling the caller drops the chunks not yet decoded."""
        assert self.queue is not None, "MicroBatcher.start() first"
        if self.closing_at is not None:
            raise Closing("the server is shutting down")
        request = _Request(key, texts, costs or [1] * len(texts), asyncio.get_running_loop().create_future())
        await self.queue.put(request)
        return await request.done

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run other model work (attention views) on the decode thread, one thing at a time with decodes;
        refused at once (`Closing`) once the server is shutting down. Cancelling the future before the thread
        takes the work drops it."""
        return self._submit(self.executor, function, *args)

    def run_stream(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run a stream's decoding on the stream thread, beside the decodes (streams one at a time): its first
        token comes after its own first step, not after the chunk in progress (BENCHMARKS.md measures both).
        Refused as `run` is."""
        return self._submit(self.stream_executor, function, *args)

    def _submit(self, executor: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        if self.closing_at is not None:
            raise Closing("the server is shutting down")
        return asyncio.get_running_loop().run_in_executor(executor, function, *args)

    # The worker -------------------------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self.queue is not None
        while True:
            if not self.line:
                self.line.append(await self.queue.get())
                await self._gather()
            self._take_queued()
            self._drop_cancelled()
            if self.closing_at is not None and time.monotonic() >= self.closing_at:
                self._refuse_all()
            elif self.line:
                await self._decode(self._chunk())

    async def _gather(self) -> None:
        """Wait up to max_wait for more requests to share the first one's batch."""
        assert self.queue is not None
        count = sum(len(request.texts) for request in self.line)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_sentences:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                request = await asyncio.wait_for(self.queue.get(), timeout=left)
            except asyncio.TimeoutError:
                break
            self.line.append(request)
            count += len(request.texts)

    def _take_queued(self) -> None:
        """New requests join the end of the line."""
        assert self.queue is not None
        while not self.queue.empty():
            self.line.append(self.queue.get_nowait())

    def _drop_cancelled(self) -> None:
        for request in self.line:
            if request.done.cancelled():
                self.dropped += len(request.texts) - len(request.results)
        self.line = [request for request in self.line if not request.done.done()]

    def _refuse_all(self) -> None:
        self._take_queued()
        for request in self.line:
            if not request.done.done():
                request.done.set_exception(Closing("the server is shutting down"))
        self.line = []

    def _chunk(self) -> list[_Part]:
        """The next chunk: texts of the first request in line, then of the others with the same settings, up to
        max_sentences texts and max_cost (the first text is taken whatever its cost)."""
        key = self.line[0].key
        parts: list[_Part] = []
        count = cost = 0
        for request in self.line:
            if request.key != key:
                continue
            start = stop = len(request.results)
            while stop < len(request.texts) and count < self.max_sentences and (
                    count == 0 or self.max_cost is None or cost + request.costs[stop] <= self.max_cost):
                cost += request.costs[stop]
                count += 1
                stop += 1
            if stop > start:
                parts.append(_Part(request, start, stop))
        return parts

    async def _decode(self, parts: list[_Part]) -> None:
        """Decode a chunk and hand out its results; the requests it served that are not finished go to the back
        of the line. If the chunk fails, each request's part is tried alone."""
        texts = [text for part in parts for text in part.request.texts[part.start:part.stop]]
        try:
            results = await self.run(self.decode, parts[0].request.key, texts)
        except Exception as err:
            if len(parts) > 1:
                for part in parts:
                    await self._decode([part])
                return
            self._fail(parts[0].request, err)
            return
        self.batches += 1
        self.sentences += len(texts)
        offset = 0
        for part in parts:
            part.request.results.extend(results[offset:offset + part.stop - part.start])
            offset += part.stop - part.start
            if part.request.finished and not part.request.done.done():
                part.request.done.set_result(part.request.results)
        served = [part.request for part in parts]
        self._take_queued()  # those that came during the decode go before the ones it served
        self.line = [r for r in self.line if r not in served] + [r for r in served if not r.finished]

    def _fail(self, request: _Request, err: Exception) -> None:
        if not request.done.done():
            request.done.set_exception(err)
        self.line = [r for r in self.line if r is not request]
