"""The ASGI application: routes ``/<dataset>/<key>`` to metadata documents and chunks, with
ranges, conditional requests, CORS, bearer tokens and back-pressure."""

from __future__ import annotations

import hmac
import logging
import types
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from refstore.serve._config import DatasetConfig, ServerConfig
from refstore.serve._dataset import Chunk, ServedDataset
from refstore.serve._fast import FastPath
from refstore.serve._http import error_response, http_date, not_modified, parse_range, status_of
from refstore.serve._index import dataset_page, index_page
from refstore.serve._limits import BackPressure, RateLimit

__all__ = ["RefstoreApp", "app"]

log = logging.getLogger("refstore.serve")
_METHODS = ("GET", "HEAD")
#: The headers CORS lets a cross-site page read.
_EXPOSED = ["Content-Range", "Content-Length", "ETag", "Last-Modified", "Accept-Ranges", "Retry-After"]


class _Server:
    """The request handlers, holding the datasets and the shared HTTP settings."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.datasets = {d.name: ServedDataset(d) for d in config.datasets}
        self._base_headers: dict[float | None, dict[str, str]] = {}

    def _headers(self, etag: str | None, last_modified: float | None) -> dict[str, str]:
        base = self._base_headers.get(last_modified)
        if base is None:
            base = {"Accept-Ranges": "bytes", "Cache-Control": self.config.cache_control}
            if last_modified is not None:
                base["Last-Modified"] = http_date(last_modified)
            self._base_headers[last_modified] = base
        headers = dict(base)
        if etag is not None:
            headers["ETag"] = etag
        return headers

    def _error(self, status: int, title: str, **kwargs: Any) -> JSONResponse:
        return error_response(status, title, redact_urls=self.config.redact_urls, **kwargs)

    async def root(self, request: Request) -> Response:
        """The answer for ``/``: the datasets."""
        if request.method not in _METHODS:
            return self._error(405, f"method {request.method} not allowed: the server is read-only", headers={"Allow": "GET, HEAD"})
        if _wants_html(request):
            return HTMLResponse(index_page(self.datasets))
        return JSONResponse({"datasets": sorted(self.datasets)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request: ``/`` lists the datasets, ``/<dataset>/<key>`` the rest."""
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]  # mounted under a prefix
        request = Request(scope, receive)
        name, _, key = path.lstrip("/").partition("/")
        response = await (self.root(request) if not name else self.key(request, name, key))
        await response(scope, receive, send)

    async def key(self, request: Request, name: str, key: str) -> Response:
        """The answer for *key* of dataset *name* (``""``: its listing)."""
        if request.method not in _METHODS:
            return self._error(405, f"method {request.method} not allowed: the server is read-only",
                               dataset=name, key=key, headers={"Allow": "GET, HEAD"})
        ds = self.datasets.get(name)
        if ds is None:
            return self._error(404, f"no dataset {name!r}; the datasets are {sorted(self.datasets)}", key=key)
        if ds.config.token is not None and not _authorized(request, ds.config.token):
            return self._error(401, "a bearer token is required for this dataset", dataset=name,
                               headers={"WWW-Authenticate": 'Bearer realm="refstore"'})
        try:
            await ds.load()
            if key in ("", "/"):
                listing = ds.listing()
                if _wants_html(request):
                    return HTMLResponse(dataset_page(name, listing))
                return JSONResponse(listing)
            return await self._answer(request, ds, key)
        except Exception as exc:
            status, title = status_of(exc)
            if status == 500:
                log.exception("refstore serve: %s/%s", name, key)
            return self._error(status, title, dataset=name, key=key, exc=exc)

    async def _answer(self, request: Request, ds: ServedDataset, key: str) -> Response:
        head = request.method == "HEAD"
        doc = ds.document(key)
        if doc is not None:
            rng = request.headers.get("range")
            zipped = rng is None and doc.gzipped is not None and "gzip" in request.headers.get("accept-encoding", "")
            etag = doc.etag[:-1] + '-gz"' if zipped else doc.etag
            headers = self._headers(etag, ds.last_modified)
            headers["Content-Type"] = "application/json"
            if doc.gzipped is not None:
                headers["Vary"] = "Accept-Encoding"
            if not_modified(request.headers, etag, ds.last_modified):
                return Response(status_code=304, headers=headers)
            if zipped:
                assert doc.gzipped is not None
                headers["Content-Encoding"] = "gzip"
                return self._body(doc.gzipped, headers, None, head, ds, key)
            return self._body(doc.body, headers, rng, head, ds, key)
        chunk = ds.chunk(key)
        if chunk is None:
            return self._error(404, "no such key", dataset=ds.name, key=key)
        etag = await ds.etag(chunk)
        headers = self._headers(etag, ds.last_modified)
        headers["Content-Type"] = "application/octet-stream"
        if not_modified(request.headers, etag, ds.last_modified):
            return Response(status_code=304, headers=headers)
        rng = request.headers.get("range")
        if chunk.array.transcode:
            data = await ds.transcoded(chunk)
            if data is None:
                return self._error(404, "no such key (the chunk reads as the fill value)", dataset=ds.name, key=key)
            return self._body(data, headers, rng, head, ds, key)
        if rng is None and not head and chunk.array.max_chunk_bytes > self.config.stream_bytes:
            streamed = await self._stream(ds, chunk, key, headers)
            if streamed is not None:
                return streamed
        if rng is None and not head:
            data = await ds.passed_through(chunk)
            if data is None:
                return self._error(404, "no such key (the chunk reads as the fill value)", dataset=ds.name, key=key)
            return self._body(data, headers, None, head, ds, key)
        try:
            size = await ds.source.size(chunk.source_key)
        except FileNotFoundError:
            return self._error(404, "no such key (the chunk reads as the fill value)", dataset=ds.name, key=key)
        span = parse_range(rng, size)
        if isinstance(span, tuple):
            refused = self._too_large(span[1] - span[0], size, ds, key)
            if refused is not None:
                return refused
            if head:
                return _head(206, span[1] - span[0], {**headers, "Content-Range": f"bytes {span[0]}-{span[1] - 1}/{size}"})
            data = await ds.source.get(chunk.source_key, span[0], span[1])
            if data is None:
                return self._error(404, "no such key", dataset=ds.name, key=key)
            return Response(data, 206, {**headers, "Content-Range": f"bytes {span[0]}-{span[1] - 1}/{size}"})
        if span == "unsatisfiable":
            return self._unsatisfiable(size, headers, ds, key)
        if head:
            return _head(200, size, headers)
        data = await ds.source.get(chunk.source_key)
        if data is None:
            return self._error(404, "no such key", dataset=ds.name, key=key)
        return self._body(data, headers, None, head, ds, key)

    async def _stream(self, ds: ServedDataset, chunk: Chunk, key: str, headers: dict[str, str]) -> Response | None:
        """A large pass-through chunk read from the source in pieces as it is sent (None: small enough to send whole)."""
        try:
            size = await ds.source.size(chunk.source_key)
        except FileNotFoundError:
            return self._error(404, "no such key (the chunk reads as the fill value)", dataset=ds.name, key=key)
        step = self.config.stream_bytes
        if size <= step:
            return None
        refused = self._too_large(size, size, ds, key)
        if refused is not None:
            return refused

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, size, step):
                data = await ds.source.get(chunk.source_key, start, min(start + step, size))
                if data is None:
                    raise FileNotFoundError(f"{ds.name}/{key} vanished while it was sent")
                yield data

        return StreamingResponse(pieces(), 200, {**headers, "Content-Length": str(size)})

    def _too_large(self, n: int, size: int, ds: ServedDataset, key: str) -> Response | None:
        limit = self.config.max_range_bytes
        if limit and n > limit:
            return self._error(416, f"range of {n} bytes is larger than the server's limit of {limit} bytes",
                               dataset=ds.name, key=key, headers={"Content-Range": f"bytes */{size}"})
        return None

    def _unsatisfiable(self, size: int, headers: dict[str, str], ds: ServedDataset, key: str) -> Response:
        return self._error(416, f"range not satisfiable: the body is {size} bytes", dataset=ds.name, key=key,
                           headers={**headers, "Content-Range": f"bytes */{size}"})

    def _body(self, data: bytes, headers: dict[str, str], rng: str | None, head: bool,
              ds: ServedDataset, key: str) -> Response:
        """A 200 of *data*, or the 206/416 its ``Range`` asks for."""
        size = len(data)
        span = parse_range(rng, size)
        if span == "unsatisfiable":
            return self._unsatisfiable(size, headers, ds, key)
        status = 200
        if isinstance(span, tuple):
            refused = self._too_large(span[1] - span[0], size, ds, key)
            if refused is not None:
                return refused
            headers = {**headers, "Content-Range": f"bytes {span[0]}-{span[1] - 1}/{size}"}
            data = data[span[0]:span[1]]
            status = 206
        elif self.config.max_range_bytes and size > self.config.max_range_bytes:
            refused = self._too_large(size, size, ds, key)
            if refused is not None:
                return refused
        if head:
            return _head(status, len(data), headers)
        return Response(data, status, headers)


def _head(status: int, length: int, headers: dict[str, str]) -> Response:
    response = Response(b"", status, {**headers, "Content-Length": str(length)})
    return response


def _authorized(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def _wants_html(request: Request) -> bool:
    if request.query_params.get("format") == "json":
        return False
    return "text/html" in request.headers.get("accept", "")


def _datasets(datasets: Any) -> tuple[DatasetConfig, ...]:
    if isinstance(datasets, Mapping):
        out = []
        for name, value in datasets.items():
            if isinstance(value, DatasetConfig):
                out.append(value if value.name == name else DatasetConfig(**{**vars(value), "name": name}))
            elif isinstance(value, Mapping):
                out.append(DatasetConfig(name=name, **value))
            else:
                out.append(DatasetConfig(name=name, source=str(value)))
        return tuple(out)
    if isinstance(datasets, Sequence) and not isinstance(datasets, str):
        return tuple(datasets)
    raise TypeError(f"datasets must be a mapping name -> source or a sequence of DatasetConfig, got {type(datasets).__name__}")


def app(datasets: Any = None, *, config: ServerConfig | None = None, **server_options: Any) -> RefstoreApp:
    """The ASGI application serving *datasets* as plain zarr (both formats) over HTTP.

    Parameters
    ----------
    datasets
        ``{name: source}`` (a manifest path/URL, a ``.dzi``, a zarr folder), ``{name: {field: value}}``
        with :class:`~refstore.serve.DatasetConfig` fields, or a sequence of ``DatasetConfig``.
    config
        A whole :class:`~refstore.serve.ServerConfig` (its datasets are added to *datasets*).
    **server_options
        :class:`~refstore.serve.ServerConfig` fields applied over *config* (``cors_origins``,
        ``max_in_flight``, ``queue_limit``, ``redact_urls``, ...).

    Returns
    -------
    RefstoreApp
        An ASGI application: run it with uvicorn, or mount it in FastAPI/Starlette
        (``Mount("/zarr", app=...)``); key ``K`` of dataset ``D`` is at ``/D/K``.
    """
    base = config or ServerConfig()
    given = _datasets(datasets) if datasets is not None else ()
    if "cors_origins" in server_options and server_options["cors_origins"] is not None:
        server_options["cors_origins"] = tuple(server_options["cors_origins"])
    cfg = base.replace(datasets=base.datasets + given, **server_options)
    if not cfg.datasets:
        raise ValueError("no datasets to serve: pass {name: source} or a config with [datasets.<name>] tables")
    server = _Server(cfg)
    pressure = BackPressure(server, max_in_flight=cfg.max_in_flight, queue_limit=cfg.queue_limit,
                            retry_after=cfg.retry_after)
    chain: ASGIApp = pressure
    rate = None
    if cfg.rate_limit:
        chain = rate = RateLimit(chain, rate=cfg.rate_limit, burst=cfg.rate_burst or max(1, int(cfg.rate_limit)))
    if cfg.cors_origins:
        chain = CORSMiddleware(
            chain, allow_origins=list(cfg.cors_origins), allow_methods=list(_METHODS),
            allow_headers=["Range", "Authorization", "If-None-Match", "If-Modified-Since"],
            expose_headers=_EXPOSED, max_age=3600,
        )
    return RefstoreApp(chain, server, FastPath(cfg, server.datasets, pressure, rate, _EXPOSED))


class RefstoreApp:
    """The ASGI application :func:`app` returns: lifespan (loads the datasets), then the fast path
    (:mod:`refstore.serve._fast`: GETs of whole chunks and documents), else the middleware
    (CORS, rate limit, back-pressure) and the handlers; ``state.refstore`` holds the datasets.

    A plain ASGI callable rather than a Starlette application: a request passes through no
    router or exception layers it does not need. Mount it in Starlette or FastAPI with
    ``Mount("/prefix", app=...)``.
    """

    def __init__(self, chain: ASGIApp, server: _Server, fast: FastPath) -> None:
        self.chain = chain
        self.fast = fast
        self.state = types.SimpleNamespace(refstore=server)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http" and await self.fast(scope, receive, send):
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.chain(scope, receive, tracked)
        except Exception:
            log.exception("refstore serve: %s", scope.get("path"))
            if started or scope["type"] != "http":
                raise
            await error_response(500, "internal error")(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                for ds in self.state.refstore.datasets.values():
                    try:
                        await ds.load()
                    except Exception:
                        log.exception("refstore serve: dataset %r could not be loaded", ds.name)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
