"""The HTTP(S) target: range GETs over one aiohttp session, each redirect hop checked, each answer verified.

- The URL sent is the canonical form the URL policy checked
  (:func:`~refstore.fetch._urls.canonical_http`), sent verbatim
  (``yarl.URL(..., encoded=True)``), so the client cannot rewrite it after the check.
- Redirects of GET and HEAD are followed by hand, at most five, each hop
  checked by the policy as it will be sent.
- A ``206`` must carry exactly the ``Content-Range`` asked for, and its body
  is never read past that length; anything else raises
  :class:`~refstore.errors.BadResponse`, so a key never gets another key's bytes.
- A ``200`` to a range request (a server that ignores ``Range``): the object
  is read whole once per URL and kept, within :data:`WHOLE_CACHE_BYTES` for
  all such URLs, and a :class:`~refstore.errors.RefstoreWarning` says so; an
  object too large to keep is streamed for each range, keeping only the range.
- With a recorded identity (:mod:`._identity`), GETs are conditional (``If-Match``) and
  each answer's ``ETag``, ``Last-Modified`` and size are compared with it.
- The connect and first-byte deadlines of :class:`~refstore.fetch.Deadlines`
  are aiohttp's ``sock_connect`` and ``sock_read``; the fetcher holds each
  attempt to the total and retries. A ``Retry-After`` on 429/503 travels with
  the :class:`~refstore.fetch.TransientError` to the fetcher.
"""

from __future__ import annotations

import asyncio
import re
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from yarl import URL

from refstore._source_identity import SourceIdentity
from refstore.errors import BadResponse, RefstoreWarning
from refstore.fetch._deadlines import Deadlines, FetchTimeout, TransientError, retry_after
from refstore.fetch._identity import (
    Verifier,
    check_headers,
    conditional_headers,
    precondition_failed,
)
from refstore.fetch._registry import TargetContext, register_target
from refstore.fetch._targets import TRANSIENT_STATUS
from refstore.fetch._urls import canonical_http, join

__all__ = ["TRANSIENT_STATUS", "WHOLE_CACHE_BYTES", "HTTPTarget"]
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*\Z", re.IGNORECASE)
_NETWORK_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)
#: Bytes of whole objects kept for servers that ignore ``Range`` (all their URLs together, per target).
WHOLE_CACHE_BYTES = 64 << 20
_CHUNK = 1 << 16


class HTTPTarget:
    """HTTP(S) range reads over one aiohttp session (see the module docstring).

    Parameters
    ----------
    options
        ``headers`` and ``client_kwargs`` (as fsspec's HTTP filesystem takes them);
        a ``client_kwargs["timeout"]`` (an ``aiohttp.ClientTimeout``) replaces
        the connect and first-byte deadlines.
    check_url
        The URL policy's check, called for every redirect hop; raises
        :class:`~refstore.errors.URLNotAllowed`.
    whole_cache_bytes
        Bound on the whole objects kept for servers that ignore ``Range``.
    deadlines
        The connect and first-byte deadlines (the total is the fetcher's).
    verifier
        The identities to hold answers to (:mod:`._identity`): each GET of a URL with one
        carries ``If-Match`` (or ``If-Unmodified-Since``), and its answer's ``ETag``,
        ``Last-Modified`` and object size are compared, at no extra request.
    """

    def __init__(
        self,
        options: Mapping[str, Any],
        check_url: Callable[[str], None],
        whole_cache_bytes: int = WHOLE_CACHE_BYTES,
        deadlines: Deadlines | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        opts = dict(options)
        self._headers = dict(opts.pop("headers", {}) or {})
        client_kwargs = dict(opts.pop("client_kwargs", {}) or {})
        self._headers.update(client_kwargs.pop("headers", {}) or {})
        self._deadlines = deadlines or Deadlines()
        timeout = client_kwargs.pop("timeout", None) or aiohttp.ClientTimeout(
            total=None, sock_connect=self._deadlines.connect, sock_read=self._deadlines.first_byte
        )
        self._session = aiohttp.ClientSession(timeout=timeout, **client_kwargs)
        self._check_url = check_url
        self._whole: OrderedDict[str, bytes] = OrderedDict()
        self._whole_bytes = 0
        self._whole_cap = whole_cache_bytes
        self._loading: dict[str, asyncio.Future[bytes | None]] = {}
        self._warned: set[str] = set()
        self._verifier = verifier if verifier is not None and verifier.active else None

    # -- requests -------------------------------------------------------------------------

    @asynccontextmanager
    async def _request(
        self, method: str, url: str, headers: Mapping[str, str]
    ) -> AsyncIterator[tuple[str, aiohttp.ClientResponse]]:
        """The final response to *method* on *url* and the canonical URL it came from.

        Raises
        ------
        URLNotAllowed
            If a redirect leads outside the URL policy (or away from http/https).
        OSError
            After more than five redirects.
        """
        target = canonical_http(url)
        for _ in range(_MAX_REDIRECTS + 1):
            async with self._session.request(
                method, URL(target, encoded=True), headers=headers, allow_redirects=False
            ) as resp:
                location = resp.headers.get("Location")
                if resp.status in _REDIRECT_STATUS and location is not None:
                    hop = join(target, location)
                    self._check_url(hop)
                    target = canonical_http(hop)
                    continue
                yield target, resp
                return
        raise OSError(f"too many redirects (more than {_MAX_REDIRECTS}) for {url}")

    async def read_one(self, url: str, start: int, end: int | None) -> bytes:
        """Bytes ``[start, end)`` of *url* (to the end of the object if *end* is None).

        Raises
        ------
        FileNotFoundError
            For 404 and 410.
        TransientError
            For what a retry may cure (5xx, 429, dropped connections, timeouts).
        BadResponse
            For an answer that is not the range asked for.
        OSError
            For any other failure.
        """
        if end is not None and end <= start:
            return b""
        if self._kept_now(url):
            whole = await self._kept(url)
            if whole is not None:
                return whole[start:] if end is None else whole[start:end]
        headers = dict(self._headers)
        identity = self._identity(url)
        if identity is not None:
            headers.update(conditional_headers(identity))
        ranged = bool(start) or end is not None
        if ranged:
            headers["Range"] = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
            headers.setdefault("Accept-Encoding", "identity")  # a range of the bytes as stored
        try:
            async with self._request("GET", url, headers) as (target, resp):
                if identity is not None:
                    _verify(url, identity, resp)
                if resp.status == 206:
                    return await _partial(target, resp, start, end)
                if resp.status == 200:
                    if not ranged:
                        return await resp.read()
                    return await self._range_ignored(url, target, resp, start, end)
                if resp.status == 416:
                    return b""
                _raise_for(resp, target)
        except _NETWORK_ERRORS as exc:
            raise self._transient(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _identity(self, url: str) -> SourceIdentity | None:
        return self._verifier.expected(url) if self._verifier is not None else None

    def _transient(self, exc: BaseException) -> TransientError:
        """The :class:`TransientError` for a network failure, naming the deadline that ran out."""
        timeout = self._session.timeout
        if isinstance(exc, aiohttp.ConnectionTimeoutError) and timeout.sock_connect is not None:
            return FetchTimeout(f"no connection within {timeout.sock_connect:g} s (the connect deadline)")
        if isinstance(exc, aiohttp.SocketTimeoutError) and timeout.sock_read is not None:
            return FetchTimeout(f"no byte for {timeout.sock_read:g} s (the first_byte deadline)")
        if isinstance(exc, asyncio.TimeoutError):
            return FetchTimeout(f"{type(exc).__name__}: {exc}")
        return TransientError(f"{type(exc).__name__}: {exc}")

    async def read(self, url: str, spans: list[tuple[int, int | None]]) -> list[bytes]:
        if len(spans) == 1:
            return [await self.read_one(url, *spans[0])]
        return list(await asyncio.gather(*(self.read_one(url, s, e) for s, e in spans)))

    async def size(self, url: str) -> int:
        """Size of the object at *url*: from HEAD, else from the ``Content-Range`` of a one-byte GET.

        Raises as :meth:`read_one`.
        """
        whole = await self._kept(url)
        if whole is not None:
            return len(whole)
        try:
            async with self._request("HEAD", url, self._headers) as (target, resp):
                if resp.status in (404, 410) or resp.status in TRANSIENT_STATUS:
                    _raise_for(resp, target)
                identity = self._identity(url)
                if identity is not None and resp.status < 300:
                    _verify(url, identity, resp)
                length = resp.headers.get("Content-Length", "")
                if resp.status < 300 and length.isdigit():
                    return int(length)
            async with self._request("GET", url, {**self._headers, "Range": "bytes=0-0"}) as (target, resp):
                if resp.status == 206:
                    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if match is None or match.group(1) != "0" or match.group(3) == "*":
                        raise BadResponse(
                            f"{target}: asked for bytes 0-0 to learn its size, the server answered 206 with "
                            f"Content-Range {resp.headers.get('Content-Range')!r}"
                        )
                    return int(match.group(3))
                if resp.status == 416:
                    return 0
                if resp.status == 200:
                    return len(await self._range_ignored(url, target, resp, 0, None))
                _raise_for(resp, target)
        except _NETWORK_ERRORS as exc:
            raise self._transient(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        await self._session.close()
        self._whole.clear()
        self._whole_bytes = 0

    # -- servers that ignore Range --------------------------------------------------------

    async def _kept(self, url: str) -> bytes | None:
        """The whole object of *url* if it is kept (waiting for it if it is being read), else None."""
        whole = self._whole.get(url)
        if whole is not None:
            self._whole.move_to_end(url)
            return whole
        loading = self._loading.get(url)
        return None if loading is None else await asyncio.shield(loading)

    def _kept_now(self, url: str) -> bool:
        """True if *url* is kept whole or being read whole (two dict lookups, no coroutine)."""
        return url in self._whole or url in self._loading

    async def _range_ignored(
        self, url: str, target: str, resp: aiohttp.ClientResponse, start: int, end: int | None
    ) -> bytes:
        """Answer ``[start, end)`` from a ``200`` (whole-object) response to a range request."""
        if target not in self._warned:
            self._warned.add(target)
            warnings.warn(
                f"{target} ignores Range requests (it answered 200 to one): refstore reads the whole "
                f"object once and keeps it if it has at most {self._whole_cap} bytes, else streams it "
                "for each range",
                RefstoreWarning,
                stacklevel=2,
            )
        loading = self._loading.get(url)
        if loading is not None:  # another read is fetching it whole: wait for that one
            resp.close()
            whole = await asyncio.shield(loading)
            if whole is not None:
                return whole[start:] if end is None else whole[start:end]
            return await self._read_streamed(url, start, end)
        declared = resp.headers.get("Content-Length", "")
        keep = self._whole_cap if not declared.isdigit() or int(declared) <= self._whole_cap else 0
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._loading[url] = future
        try:
            piece, whole = await _stream_slice(resp, start, end, keep)
        except BaseException:
            future.set_result(None)
            raise
        finally:
            self._loading.pop(url, None)
        if whole is not None:
            self._keep(url, whole)
        if not future.done():
            future.set_result(whole)
        return piece

    async def _read_streamed(self, url: str, start: int, end: int | None) -> bytes:
        """Read ``[start, end)`` by streaming the whole object and keeping only the range."""
        try:
            async with self._request("GET", url, self._headers) as (target, resp):
                if resp.status != 200:
                    _raise_for(resp, target)
                identity = self._identity(url)
                if identity is not None:
                    _verify(url, identity, resp)
                return (await _stream_slice(resp, start, end, 0))[0]
        except _NETWORK_ERRORS as exc:
            raise self._transient(exc) from exc

    def _keep(self, url: str, whole: bytes) -> None:
        if len(whole) > self._whole_cap:
            return
        old = self._whole.pop(url, None)
        if old is not None:
            self._whole_bytes -= len(old)
        self._whole[url] = whole
        self._whole_bytes += len(whole)
        while self._whole_bytes > self._whole_cap:
            self._whole_bytes -= len(self._whole.popitem(last=False)[1])


def _verify(url: str, identity: SourceIdentity, resp: aiohttp.ClientResponse) -> None:
    """Compare an answer with the recorded *identity* (412: the server found the precondition false).

    Raises
    ------
    SourceMismatch
        If the server refused the precondition, or the answer's ``ETag``,
        ``Last-Modified`` or object size differ from *identity*.
    """
    if resp.status == 412:
        raise precondition_failed(url, identity, resp.headers)
    if resp.status not in (200, 206):
        return  # an error: said by the status, not by the headers of its page
    size = None
    if resp.status == 206:
        match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if match is not None and match.group(3) != "*":
            size = int(match.group(3))
    elif resp.status == 200 and resp.headers.get("Content-Encoding", "identity").strip().lower() == "identity":
        length = resp.headers.get("Content-Length", "")
        size = int(length) if length.isdigit() else None
    check_headers(url, identity, resp.headers, size)


def _raise_for(resp: aiohttp.ClientResponse, target: str) -> None:
    """Raise the error an unexpected HTTP status stands for (with the ``Retry-After`` of a transient one)."""
    status = resp.status
    if status in (404, 410):
        raise FileNotFoundError(f"HTTP {status} for {target}")
    if status in TRANSIENT_STATUS:
        wait = retry_after(resp.headers.get("Retry-After"))
        asked = "" if wait is None else f" (Retry-After: {resp.headers.get('Retry-After')})"
        raise TransientError(f"HTTP {status} for {target}{asked}", retry_after=wait)
    raise OSError(f"HTTP {status} for {target}")


async def _partial(target: str, resp: aiohttp.ClientResponse, start: int, end: int | None) -> bytes:
    """The body of a ``206``, verified against the range asked for and read no further than it.

    A range past the end of the object may be answered up to the object's last
    byte (the caller checks lengths it was promised).

    Raises
    ------
    BadResponse
        For a missing or different ``Content-Range``, or a body of another length.
    """
    asked = f"bytes {start}-{'' if end is None else end - 1}"
    header = resp.headers.get("Content-Range")
    match = _CONTENT_RANGE.match(header or "")
    if match is None:
        raise BadResponse(f"{target}: asked for {asked}, the server answered 206 with Content-Range {header!r}")
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if end is None:
        ok = first == start and last >= first and (total is None or last == total - 1)
    else:
        ok = first == start and (last == end - 1 or (total is not None and first <= last == total - 1 < end - 1))
    if not ok:
        raise BadResponse(
            f"{target}: asked for {asked}, the server answered 206 with Content-Range {header!r}; "
            "refusing bytes of another range"
        )
    n = last - first + 1
    declared = resp.headers.get("Content-Length", "")
    identity = resp.headers.get("Content-Encoding", "identity").strip().lower() == "identity"
    if identity and declared.isdigit() and int(declared) != n:
        raise BadResponse(f"{target}: Content-Range {header!r} promises {n} bytes, Content-Length says {declared}")
    body = await _read_at_most(resp, n)
    if len(body) != n:
        raise BadResponse(f"{target}: Content-Range {header!r} promises {n} bytes, the body has "
                          f"{'more' if len(body) > n else len(body)}")
    return body


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of the body (one more than allowed shows that there are more)."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await resp.content.read(min(limit + 1 - size, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


async def _stream_slice(
    resp: aiohttp.ClientResponse, start: int, end: int | None, keep_up_to: int
) -> tuple[bytes, bytes | None]:
    """Stream a whole-object body: return ``[start, end)`` of it, and the whole body if it has at
    most *keep_up_to* bytes (else None). Stops once the range is read and the body cannot be kept."""
    piece = bytearray()
    whole: bytearray | None = bytearray()
    pos = 0
    async for chunk in resp.content.iter_chunked(_CHUNK):
        lo = max(start - pos, 0)
        hi = len(chunk) if end is None else min(end - pos, len(chunk))
        if lo < hi:
            piece += chunk[lo:hi]
        if whole is not None:
            whole += chunk
            if len(whole) > keep_up_to:
                whole = None
        pos += len(chunk)
        if whole is None and end is not None and pos >= end:
            break
    return bytes(piece), None if whole is None else bytes(whole)


def _http_target(context: TargetContext) -> HTTPTarget | None:
    """HTTP(S) URLs are read by :class:`HTTPTarget`, unless the caller gave its own filesystem."""
    if context.filesystem is not None:
        return None
    return HTTPTarget(context.options, context.check_url, deadlines=context.deadlines, verifier=context.verifier)


register_target(("http", "https"), _http_target)
