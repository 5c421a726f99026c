"""The connection side of `nmt serve`, below the API: what uvicorn and Starlette leave unbounded. A deadline
for receiving a request (`DeadlineH11Protocol`), a body size limit (`BodyLimit`), noticing a client that went
away (`unless_disconnected`), hearing SIGTERM before uvicorn's graceful shutdown ends (`hearing_shutdown`), and
carrying a decode thread's output to a server-sent-events response as it is made, stopping that thread's work
once the response has ended (`EventStream`, `server_sent_event`)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

import h11
from fastapi import Request
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from nmt.serve.service import ClientError

log = logging.getLogger(__name__)

T = TypeVar("T")


def error_response(status: int, field: str | None, message: str) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status)


def server_sent_event(event: str, data: Any) -> str:
    """One event of a text/event-stream body: its name and its data as one line of JSON."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class Stopped(Exception):
    """Raised in the thread that feeds an `EventStream` whose response has ended: it ends that thread's work."""


class EventStream(Generic[T]):
    """Items from a worker thread to a streaming response, in order, as they are made. The thread calls `put`;
    the response iterates the stream until `end()` (a callback of the work's future, so every item put comes
    first). Once the response has ended early (`stop()`: its client went away), `put` raises `Stopped` in the
    thread instead, so the work ends at its next item rather than at its end. Made in the event loop."""

    _END = object()

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stopped = threading.Event()

    def put(self, item: T) -> None:
        self.check()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def check(self) -> None:
        """Raise `Stopped` once the response has ended (for the thread to call between two items)."""
        if self.stopped.is_set():
            raise Stopped("the response has ended: its client went away")

    def end(self, *_: object) -> None:
        self.queue.put_nowait(self._END)

    def stop(self) -> None:
        self.stopped.set()

    async def __aiter__(self) -> AsyncIterator[T]:
        while (item := await self.queue.get()) is not self._END:
            yield item



class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, by Content-Length or while reading a chunked body."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            refused = error_response(413, "body", f"{int(declared)} bytes; at most {self.limit}")
            return await refused(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                scope.setdefault("state", {})["body_too_large"] = True
                raise ValueError("request body over the limit")
            return message

        return await self.app(scope, limited, send)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for receiving a request. uvicorn has none: `timeout_keep_alive`
    runs only while a connection is idle between two requests (not before its first one) and stops at the
    first byte of the next, so a client that sends half a head or half a body holds its connection for
    ever. Here a request's head and body must arrive within `request_timeout_s` (from the lifespan state) of
    the connection or of the request's first byte; otherwise 408 if no response has started, and the
    connection is closed."""

    deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.deadline is None:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is h11.DONE:  # the whole request is in
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        seconds = self.app_state.get("request_timeout_s")
        if seconds is not None:
            self.deadline = self.loop.call_later(seconds, self._expire, seconds)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _expire(self, seconds: float) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        log.warning("closing a connection from %s: no complete request within %g s (request_timeout_s)",
                    self.client[0] if self.client else "?", seconds)
        current = self.cycle if self.conn.their_state is h11.SEND_BODY else None  # else: the head is not in
        if current is None or not current.response_started:
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        self.transport.close()


@contextmanager
def hearing_shutdown(callback: Callable[[], None]) -> Iterator[None]:
    """Call `callback` in the event loop on SIGTERM or SIGINT, then uvicorn's own handler. uvicorn tells the
    app of a shutdown only after every request in flight has ended (or timeout_graceful_shutdown), and the
    batcher must hear of it at once to stop a long decode between two chunks. Needs uvicorn's handlers to be
    Python functions (`signal.signal`, uvicorn >= 0.29); elsewhere (FastAPI's test client) nothing is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    chained: dict[int, Callable[[int, Any], Any]] = {sig: handler for sig, handler in previous.items()
                                                    if callable(handler)}

    def handle(sig: int, frame: Any) -> None:
        loop.call_soon_threadsafe(callback)
        chained[sig](sig, frame)

    for sig in chained:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in chained.items():
            signal.signal(sig, handler)


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone away: the body was read, so `receive()` waits for http.disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client goes away first (uvicorn does not cancel a handler whose
    client left): the batcher then drops the request's chunks not yet decoded."""
    job, gone = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((job, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        finished = job.done()
        job.cancel()
    if not finished:
        raise ClientError("client", "went away before its answer", status=499)  # nobody reads this answer
    return job.result()
