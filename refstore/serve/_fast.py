"""The fast path: a GET of a chunk or metadata document (and a HEAD of a document) answered in
raw ASGI, with the header lists built ahead and no request or response objects.

Most of what a zarr client asks for is whole chunks and documents. Answering them through
Starlette's request, response and CORS layers and the engine's merging fetcher cost a server
about twice what the HTTP server itself does per request (``benchmarks/serve.py``). Here a
request costs: one pass over its headers, the limits (the same counters as the middleware's),
the cached ETag, the hot-chunk cache or a read of a small local chunk on this thread (as the
engine reads small local spans anyway), and the two ASGI messages.

Anything else (ranges, listings, HEAD of chunks, large streamed chunks, OPTIONS, an unloaded
dataset, a failed token) is declined before anything is counted or sent, and the full chain
in :mod:`refstore.serve._app` answers it, so each behaviour lives in one place.
"""

from __future__ import annotations

import hmac
import logging

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from refstore.serve._config import ServerConfig
from refstore.serve._dataset import Chunk, Document, ServedDataset
from refstore.serve._http import error_response, http_date, not_modified, status_of
from refstore.serve._limits import BackPressure, RateLimit

__all__ = ["FastPath"]

log = logging.getLogger("refstore.serve")
_Headers = list[tuple[bytes, bytes]]


class _Cors:
    """The CORS headers of a simple (non-preflight) answer, as Starlette's ``CORSMiddleware``
    adds them with the app's settings (no credentials): ``Vary: Origin`` always; for a request
    with an ``Origin``, the exposed headers, and ``*`` or the origin itself if it is allowed."""

    def __init__(self, origins: tuple[str, ...], expose: list[str]) -> None:
        self.any = "*" in origins
        self.origins = {o.encode("latin-1") for o in origins}
        self.simple: _Headers = [(b"access-control-expose-headers", ", ".join(expose).encode("latin-1"))]
        if self.any:
            self.simple.insert(0, (b"access-control-allow-origin", b"*"))

    def add(self, headers: _Headers, origin: bytes | None, vary: bytes | None) -> None:
        """Append the CORS headers for a request from *origin* to *headers* (whose ``Vary`` is *vary*)."""
        if origin is not None:
            headers.extend(self.simple)
            if not self.any and origin in self.origins:
                headers.append((b"access-control-allow-origin", origin))
        headers.append((b"vary", b"Origin" if vary is None else vary + b", Origin"))


class FastPath:
    """The fast answers of one app.

    Parameters
    ----------
    config
        The server's configuration.
    datasets
        The served datasets by name (the full chain's).
    pressure, rate
        The app's back-pressure and rate limit (None: no rate limit): a request answered here
        counts against them as one answered by the full chain does.
    expose
        The headers CORS exposes (the full chain's list).
    """

    def __init__(self, config: ServerConfig, datasets: dict[str, ServedDataset], pressure: BackPressure,
                 rate: RateLimit | None, expose: list[str]) -> None:
        self.config = config
        self.datasets = datasets
        self.pressure = pressure
        self.rate = rate
        self.cors = _Cors(config.cors_origins, expose) if config.cors_origins else None
        self._base: dict[str, tuple[_Headers, _Headers]] = {}

    def _bases(self, ds: ServedDataset) -> tuple[_Headers, _Headers]:
        """The headers every 200 of *ds* has: (chunks, documents)."""
        found = self._base.get(ds.name)
        if found is None:
            common = [(b"accept-ranges", b"bytes"), (b"cache-control", self.config.cache_control.encode("latin-1"))]
            if ds.last_modified is not None:
                common.append((b"last-modified", http_date(ds.last_modified).encode("latin-1")))
            found = ([*common, (b"content-type", b"application/octet-stream")],
                     [*common, (b"content-type", b"application/json")])
            self._base[ds.name] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request of *scope* if it is one for the fast path (True); False: nothing was
        counted or sent, and the full chain must answer it."""
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            return False
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]  # mounted under a prefix
        name, _, key = path.lstrip("/").partition("/")
        ds = self.datasets.get(name)
        if ds is None or not ds.ready or not key or key == "/":
            return False
        headers = dict(scope["headers"])
        if b"range" in headers:
            return False
        token = ds.config.token
        if token is not None and not _authorized(headers.get(b"authorization"), token):
            return False
        doc = ds.documents.get(key)
        chunk = None
        if doc is None:
            if method == "HEAD":
                return False
            try:
                chunk = ds.chunk(key)
            except Exception:  # noqa: BLE001 - the full chain answers it, and reports what went wrong
                return False
            if chunk is None or chunk.array.max_chunk_bytes > self.config.stream_bytes:
                return False
        if self.rate is not None:
            refused = self.rate.refuse(scope)
            if refused is not None:
                await self._send(refused, scope, receive, send, headers)
                return True
        if not self.pressure.try_enter() and not await self.pressure.enter():
            await self._send(self.pressure.busy(), scope, receive, send, headers)
            return True
        try:
            if doc is not None:
                answer = await self._document(ds, doc, key, method == "HEAD", headers, send)
            else:
                assert chunk is not None
                answer = await self._chunk(ds, chunk, key, headers, send)
            if answer is not None:
                await self._send(answer, scope, receive, send, headers)
        finally:
            self.pressure.leave()
        return True

    async def _document(self, ds: ServedDataset, doc: Document, key: str, head: bool, headers: dict[bytes, bytes],
                        send: Send) -> Response | None:
        """Send the document (None), or return the error answer to send instead."""
        zipped = doc.gzipped is not None and b"gzip" in headers.get(b"accept-encoding", b"")
        etag = doc.etag[:-1] + '-gz"' if zipped else doc.etag
        out = [*self._bases(ds)[1], (b"etag", etag.encode())]
        if self.cors is not None:
            self.cors.add(out, headers.get(b"origin"), b"Accept-Encoding" if doc.gzipped is not None else None)
        elif doc.gzipped is not None:
            out.append((b"vary", b"Accept-Encoding"))
        if _conditional(headers) and not_modified(_conditions(headers), etag, ds.last_modified):
            await _answer(send, 304, out, b"")
            return None
        body = doc.body
        if zipped:
            assert doc.gzipped is not None
            body = doc.gzipped
            out.append((b"content-encoding", b"gzip"))
        refused = self._too_large(len(body), ds, key)
        if refused is not None:
            return refused
        out.append((b"content-length", str(len(body)).encode()))
        await _answer(send, 200, out, b"" if head else body)
        return None

    async def _chunk(self, ds: ServedDataset, chunk: Chunk, key: str, headers: dict[bytes, bytes],
                     send: Send) -> Response | None:
        """Send the chunk (None), or return the error answer to send instead."""
        try:
            etag = ds.known_etag(chunk) or await ds.etag(chunk)
            out = [*self._bases(ds)[0], (b"etag", etag.encode())]
            if self.cors is not None:
                self.cors.add(out, headers.get(b"origin"), None)
            if _conditional(headers) and not_modified(_conditions(headers), etag, ds.last_modified):
                await _answer(send, 304, out, b"")
                return None
            if chunk.array.transcode:
                data = ds.cache.peek(chunk.source_key) or await ds.transcoded(chunk)
            elif ds.reads_inline(chunk):
                data = ds.read_inline(chunk)
            else:
                data = await ds.passed_through(chunk)
        except Exception as exc:
            status, title = status_of(exc)
            if status == 500:
                log.exception("refstore serve: %s/%s", ds.name, key)
            return error_response(status, title, dataset=ds.name, key=key, exc=exc, redact_urls=self.config.redact_urls)
        if data is None:
            return error_response(404, "no such key (the chunk reads as the fill value)", dataset=ds.name, key=key)
        refused = self._too_large(len(data), ds, key)
        if refused is not None:
            return refused
        out.append((b"content-length", str(len(data)).encode()))
        await _answer(send, 200, out, data)
        return None

    def _too_large(self, size: int, ds: ServedDataset, key: str) -> Response | None:
        limit = self.config.max_range_bytes
        if limit and size > limit:
            return error_response(416, f"range of {size} bytes is larger than the server's limit of {limit} bytes",
                                  dataset=ds.name, key=key, headers={"Content-Range": f"bytes */{size}"})
        return None

    async def _send(self, response: Response, scope: Scope, receive: Receive, send: Send,
                    headers: dict[bytes, bytes]) -> None:
        """Send an error answer (a Starlette response) with the CORS headers the full chain would add."""
        if self.cors is not None:
            self.cors.add(response.raw_headers, headers.get(b"origin"), None)
        await response(scope, receive, send)


async def _answer(send: Send, status: int, headers: _Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _conditional(headers: dict[bytes, bytes]) -> bool:
    return b"if-none-match" in headers or b"if-modified-since" in headers


def _conditions(headers: dict[bytes, bytes]) -> dict[str, str]:
    return {name.decode("latin-1"): headers[name].decode("latin-1")
            for name in (b"if-none-match", b"if-modified-since") if name in headers}


def _authorized(given: bytes | None, token: str) -> bool:
    scheme, _, value = (given or b"").partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), token.encode())
