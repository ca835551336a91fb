"""Request body limit (ASGI middleware): 413 with a JSON message for bodies over `max_bytes`.

A Content-Length over the limit is refused before the body is read; a chunked body (no Content-Length) is
counted as it arrives and refused when it crosses the limit (FastAPI passes the HTTPException raised while
reading the body on to the app's exception handlers). Starlette's own limiter answers in plain text, hence
this one.
"""
from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
from collections import deque
from contextvars import ContextVar

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics


@functools.cache
def _host() -> str:
    return socket.gethostname()


def instance() -> str:
    """host:pid of the process answering, read at call time (Ray Serve builds the app once and copies it into
    each replica, so a value taken when the app was built would name the builder)."""
    return f"{_host()}:{os.getpid()}"


def too_large(max_bytes: int) -> str:
    return f"request body too large: the limit is {max_bytes} bytes"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            status, detail = (413, too_large(self.max_bytes)) if length.isdigit() else (400, "bad Content-Length")
            return await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, too_large(self.max_bytes))
            return message

        await self.app(scope, counted, send)


ARRIVED: ContextVar[float | None] = ContextVar("unisr_arrived", default=None)  # perf_counter() at arrival


def waited_ms() -> float:
    """How long the current request has been in the process (queued for a slot included); 0 outside a request."""
    arrived = ARRIVED.get()
    return 0.0 if arrived is None else (time.perf_counter() - arrived) * 1000


class InFlightLimitMiddleware:
    """Admission before routing, for the ranked requests (/search, /recommend, /retrieve): at most `limit` run at
    once, up to `max_queued` more wait for a slot in arrival order (waiting costs no CPU), and one beyond both is
    answered 429 with Retry-After at once (a pure ASGI check of two counters: a refusal costs microseconds of the
    event loop). Size the limit to the cores (requests beyond what the cores can work on only slow every answer,
    refusals included); the queue absorbs bursts. A request's time in the queue counts against its latency budget
    (ARRIVED / waited_ms: the pipeline hands the engine what is left). Health, metrics, events and admin requests
    are not counted. The refusal names the process (X-Unisr-Instance) like every other response."""

    PATHS = ("/search", "/recommend", "/retrieve")

    def __init__(self, app: ASGIApp, limit: int, max_queued: int = 0, retry_after_s: int = 1):
        self.app, self.limit, self.max_queued, self.retry_after_s = app, limit, max_queued, retry_after_s
        self.in_flight = 0
        self.waiting: deque[asyncio.Future] = deque()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.PATHS:
            return await self.app(scope, receive, send)
        ARRIVED.set(time.perf_counter())
        if self.in_flight >= self.limit:
            if len(self.waiting) >= self.max_queued:
                metrics.REFUSED.labels(scope["path"].lstrip("/"), "in_flight_limit").inc()
                body = {"detail": f"too many requests: {self.limit} in flight (UNISR_MAX_IN_FLIGHT) and "
                                  f"{self.max_queued} queued (UNISR_MAX_QUEUED); retry after {self.retry_after_s} s"}
                headers = {"Retry-After": str(self.retry_after_s), "X-Unisr-Instance": instance()}
                return await JSONResponse(body, status_code=429, headers=headers)(scope, receive, send)
            slot = asyncio.get_running_loop().create_future()
            self.waiting.append(slot)
            try:
                await slot  # a finishing request hands its slot over (in_flight unchanged)
            except asyncio.CancelledError:
                if slot.done() and not slot.cancelled():
                    self._release()  # the slot was handed over as this request gave up: pass it on
                else:
                    slot.cancel()  # left in the queue, skipped by _release
                raise
        else:
            self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._release()

    def _release(self) -> None:
        while self.waiting:
            slot = self.waiting.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self.in_flight -= 1


class AccessLogMiddleware:
    """Names the answering process on every response (X-Unisr-Instance: instance()) and logs one line per
    request. Pure ASGI: Starlette's BaseHTTPMiddleware costs a task group and a body stream per request on the event
    loop every request shares."""

    def __init__(self, app: ASGIApp, log):
        self.app, self.log = app, log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]
        name = instance().encode()

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-unisr-instance", name)]
            await send(message)

        try:
            await self.app(scope, receive, send_named)
        finally:
            self.log.info("request", method=scope["method"], path=scope["path"], status=status[0],
                          ms=round((time.perf_counter() - t0) * 1000, 2))
