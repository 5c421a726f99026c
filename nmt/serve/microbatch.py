"""Micro-batching for the server: translation requests that arrive together and share their decoding settings
are decoded as one batch, on one worker thread, so that the event loop keeps accepting requests and
throughput grows with the number of concurrent clients.

The worker takes the first waiting request, then gathers more for at most `max_wait_ms` or until
`max_sentences` are collected; while it decodes, new requests queue up and form the next batch. One
worker thread means one decode at a time: torch already spreads each decode over the CPU's cores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class _Request:
    key: Hashable
    texts: Sequence[str]
    done: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(self, decode: Callable[[Any, list[str]], list], max_sentences: int = 64, max_wait_ms: float = 2.0):
        """`decode(key, texts)` returns one result per text, in order; `key` holds the shared settings."""
        self.decode, self.max_sentences, self.max_wait = decode, max_sentences, max_wait_ms / 1000
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nmt-decode")
        self.queue: asyncio.Queue[_Request] | None = None
        self.worker: asyncio.Task | None = None
        self.batches = 0  # decodes run, for tests and statistics
        self.sentences = 0

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, key: Hashable, texts: Sequence[str]) -> list:
        """Translate `texts` with the settings `key`, batched with whatever else is waiting."""
        assert self.queue is not None, "MicroBatcher.start() first"
        request = _Request(key, texts, asyncio.get_running_loop().create_future())
        await self.queue.put(request)
        return await request.done

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run other model work (attention views) on the decode thread, one thing at a time with decodes."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def _gather(self, first: _Request) -> list[_Request]:
        assert self.queue is not None
        batch, count = [first], len(first.texts)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_sentences:
            try:
                request = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    request = await asyncio.wait_for(self.queue.get(), timeout=left)
                except asyncio.TimeoutError:
                    break
            batch.append(request)
            count += len(request.texts)
        return batch

    async def _work(self) -> None:
        assert self.queue is not None
        while True:
            batch = await self._gather(await self.queue.get())
            groups: dict[Hashable, list[_Request]] = {}
            for request in batch:
                groups.setdefault(request.key, []).append(request)
            for key, requests in groups.items():
                texts = [text for request in requests for text in request.texts]
                try:
                    results = await self.run(self.decode, key, texts)
                except Exception as err:  # the requests fail, the worker goes on
                    for request in requests:
                        if not request.done.done():
                            request.done.set_exception(err)
                    continue
                self.batches += 1
                self.sentences += len(texts)
                start = 0
                for request in requests:
                    if not request.done.done():  # a client that went away cancelled its future
                        request.done.set_result(results[start:start + len(request.texts)])
                    start += len(request.texts)
