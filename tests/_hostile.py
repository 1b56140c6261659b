"""A loopback HTTP server that misbehaves on purpose, for the adversarial tests (issue 13).

:class:`ScriptedServer` runs an aiohttp app on 127.0.0.1 in a daemon thread.
Each path is answered by a handler the test registers; requests are matched
the way many servers match them (the path percent-decoded and its dot segments
resolved), so a traversal that reaches the server is served. Every request is
logged with the raw path it arrived with. Nothing here imports refstore.
"""

from __future__ import annotations

import asyncio
import posixpath
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import unquote

import aiohttp
from _servers import LoopbackServer
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    raw_path: str
    path: str
    range: str | None
    at: float = field(default_factory=time.monotonic, compare=False)
    """``time.monotonic()`` when it arrived."""


def resolved(raw_path: str) -> str:
    """The path a lenient server serves for *raw_path*: decoded, dot segments resolved."""
    path = posixpath.normpath(unquote(raw_path.split("?", 1)[0]))
    return "/" + path.lstrip("/")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Inclusive ``(first, last)`` of a single ``bytes=a-b`` or ``bytes=a-`` header, clamped to *size*."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].partition("-")
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return start, end


class ScriptedServer(LoopbackServer):
    """An HTTP server whose answers are scripted per path (see the module docstring).

    Attributes
    ----------
    log
        Every request, in order.
    sent
        Body bytes the handlers managed to write, per resolved path (for streamed bodies).
    fallback
        The handler of paths without a route (404 if None): an S3 or GCS endpoint is one handler.
    """

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, Handler] = {}
        self.fallback: Handler | None = None
        self.log: list[Seen] = []
        self.sent: dict[str, int] = {}

    def route(self, path: str, handler: Handler) -> str:
        """Answer requests for *path* (as resolved by :func:`resolved`) with *handler*; return its URL."""
        self.routes[path] = handler
        return self.url + path

    def reached(self, path: str) -> bool:
        """True if any request resolved to *path*."""
        return any(seen.path == path for seen in self.log)

    def count(self, path: str, method: str = "GET") -> int:
        """Requests of *method* that resolved to *path*."""
        return sum(1 for seen in self.log if seen.path == path and seen.method == method)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = resolved(request.raw_path)
        self.log.append(Seen(request.method, request.raw_path, path, request.headers.get("Range")))
        handler = self.routes.get(path, self.fallback)
        if handler is None:
            return web.Response(status=404, text="not found")
        return await handler(request)


# -- handlers -----------------------------------------------------------------------------------


def honest(data: bytes) -> Handler:
    """Serve *data* with correct 206 answers to single ranges, and HEAD."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data))})
        span = parse_range(request.headers.get("Range"), len(data))
        if span is None:
            return web.Response(body=data)
        first, last = span
        return web.Response(
            status=206, body=data[first : last + 1],
            headers={"Content-Range": f"bytes {first}-{last}/{len(data)}"},
        )

    return handler


def wrong_range(data: bytes, kind: str) -> Handler:
    """A 206 that lies: ``"from0"`` sends bytes from 0 (with a matching Content-Range),
    ``"whole"`` the whole body, ``"none"`` no Content-Range, ``"claims"`` the right
    Content-Range over bytes from 0."""

    async def handler(request: web.Request) -> web.StreamResponse:
        span = parse_range(request.headers.get("Range"), len(data))
        assert span is not None
        first, last = span
        n = last - first + 1
        if kind == "from0":
            return web.Response(status=206, body=data[:n], headers={"Content-Range": f"bytes 0-{n - 1}/{len(data)}"})
        if kind == "whole":
            return web.Response(
                status=206, body=data, headers={"Content-Range": f"bytes 0-{len(data) - 1}/{len(data)}"}
            )
        if kind == "none":
            return web.Response(status=206, body=data[first : last + 1])
        return web.Response(status=206, body=data[:n], headers={"Content-Range": f"bytes {first}-{last}/{len(data)}"})

    return handler


def ignores_range(data: bytes, declare_length: bool = True) -> Handler:
    """Answer every GET with 200 and the whole body (``Range`` ignored)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data))})
        if declare_length:
            return web.Response(body=data)
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(data), 1 << 16):
            await resp.write(data[i : i + (1 << 16)])
        await resp.write_eof()
        return resp

    return handler


def flood(server: ScriptedServer, path: str, total: int, status: int = 206) -> Handler:
    """Promise a small range (``Content-Range`` of the bytes asked for) but stream *total* bytes,
    chunked; the bytes actually written are counted in ``server.sent[path]``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        span = parse_range(request.headers.get("Range"), total)
        headers = {}
        if status == 206 and span is not None:
            headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{total}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = b"z" * (1 << 20)
        server.sent[path] = 0
        try:
            while server.sent[path] < total:
                await resp.write(block)
                server.sent[path] += len(block)
        except (ConnectionError, RuntimeError):
            return resp  # the client hung up
        await resp.write_eof()
        return resp

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    """Answer GET and HEAD with a redirect to *location* (sent as written)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": location})

    return handler


def silent() -> Handler:
    """Accept the request and never answer (until the client hangs up)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        for _ in range(36_000):  # an hour at most; ends as soon as the client hangs up
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            await asyncio.sleep(0.1)
        return web.Response(status=500)

    return handler


def trickle(data: bytes, every: float) -> Handler:
    """Answer a range with honest headers, then send its body one byte every *every* seconds."""

    async def handler(request: web.Request) -> web.StreamResponse:
        span = parse_range(request.headers.get("Range"), len(data))
        first, last = span if span is not None else (0, len(data) - 1)
        resp = web.StreamResponse(status=206 if span else 200, headers={
            "Content-Length": str(last - first + 1),
            **({"Content-Range": f"bytes {first}-{last}/{len(data)}"} if span else {}),
        })
        await resp.prepare(request)
        try:
            for i in range(first, last + 1):
                await resp.write(data[i : i + 1])
                await asyncio.sleep(every)
        except (ConnectionError, RuntimeError):
            pass  # the client hung up
        return resp

    return handler


def failing(then: Handler | None, n: int, status: int = 503, headers: dict[str, str] | None = None,
            body: bytes = b"busy", content_type: str = "text/plain") -> Handler:
    """Answer the first *n* requests with *status* (and *headers*), the rest with *then*;
    ``n < 0`` (or no *then*) fails every request."""
    left = [n]

    async def handler(request: web.Request) -> web.StreamResponse:
        if left[0] != 0 or then is None:
            left[0] -= 1
            return web.Response(status=status, headers=headers, body=body, content_type=content_type)
        return await then(request)

    return handler


def proxy(upstream: str) -> Handler:
    """Forward the request as it came (method, path and query, headers, body) to *upstream*."""

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
            request.method, upstream + request.raw_path, headers=headers, data=await request.read(),
            allow_redirects=False,
        ) as resp:
            body = await resp.read()
            keep = {k: v for k, v in resp.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
            return web.Response(status=resp.status, headers=keep, body=body)

    return handler


#: The body of S3's 503 SlowDown answer.
S3_SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>")
#: The body of a GCS JSON API 503 answer.
GCS_UNAVAILABLE = b'{"error": {"code": 503, "message": "Backend Error"}}'
