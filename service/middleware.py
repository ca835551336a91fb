"""Request body limit (ASGI middleware): 413 with a JSON message for bodies over `max_bytes`.

A Content-Length over the limit is refused before the body is read; a chunked body (no Content-Length) is
counted as it arrives and refused when it crosses the limit (FastAPI passes the HTTPException raised while
reading the body on to the app's exception handlers). Starlette's own limiter answers in plain text, hence
this one.
"""
from __future__ import annotations

import functools
import os
import socket
import time

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


class InFlightLimitMiddleware:
    """A global limit on the ranked requests (/search, /recommend, /retrieve) a process works on at once: one over
    `limit` is answered 429 with Retry-After at once, before routing, validation or the cache (a pure ASGI check
    of a counter, so a refusal costs microseconds of the event loop). Health, metrics, events and admin requests
    are not counted. The refusal names the process (X-Unisr-Instance) like every other response."""

    PATHS = ("/search", "/recommend", "/retrieve")

    def __init__(self, app: ASGIApp, limit: int, retry_after_s: int = 1):
        self.app, self.limit, self.retry_after_s = app, limit, retry_after_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.PATHS:
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            metrics.REFUSED.labels(scope["path"].lstrip("/"), "in_flight_limit").inc()
            body = {"detail": f"too many requests in flight: the limit is {self.limit} (UNISR_MAX_IN_FLIGHT); "
                              f"retry after {self.retry_after_s} s"}
            headers = {"Retry-After": str(self.retry_after_s), "X-Unisr-Instance": instance()}
            return await JSONResponse(body, status_code=429, headers=headers)(scope, receive, send)
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
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
