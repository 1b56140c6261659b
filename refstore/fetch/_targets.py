"""Targets: the per-protocol readers of byte spans (local pread, any fsspec filesystem; HTTP in ._http).

A target reads ``[start, end)`` of one object and raises ``FileNotFoundError``
for a missing object, :class:`TransientError` for what a retry may cure, and
any other ``OSError`` for the rest. Targets are created inside the event loop
that uses them, since aiohttp and fsspec sessions belong to one loop. The
fetcher retries (:mod:`._deadlines`); the S3 and GCS filesystems a target builds
are told the deadlines and not to retry on their own, so retries do not stack.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import types
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import fsspec
from fsspec.asyn import AsyncFileSystem

from refstore._source_identity import SourceIdentity, identity_from_info
from refstore.fetch._deadlines import Deadlines, FetchTimeout, TransientError, retry_after
from refstore.fetch._identity import (
    SourceMismatch,
    Verifier,
    check_once,
    compare,
    compare_stat,
    hash_descriptor,
)
from refstore.fetch._registry import TargetContext, register_target
from refstore.fetch._s3 import s3_conditional_get

__all__ = ["TRANSIENT_STATUS", "FsspecTarget", "LocalTarget", "TransientError", "as_transient"]

#: Reads of at most this many bytes from an already open local file run in the event loop.
_INLINE_BYTES = 256 * 1024
#: Times a local file that changes while it is read is opened and read again.
_REREADS = 3
_Signature = tuple[int, int, int, int]
"""``(device, inode, size, mtime_ns)``: which file a descriptor was opened on, and its state."""


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _sig(st: os.stat_result) -> str:
    """The once-per-file key of a SHA-256 check: the file's inode and state."""
    return "sha256 {}:{}:{}:{}".format(*_signature(st))


#: HTTP statuses a retry may cure, whatever the protocol that reports them.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: S3 error codes a retry may cure (besides those sent with a status above).
_TRANSIENT_CODES = frozenset({
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "TooManyRequestsException",
})


class LocalTarget:
    """Positional reads of local files, keeping a small LRU of open descriptors.

    Each batch of spans of one file is read in one worker thread, so a merged
    or batched read costs one thread hop, not one per chunk; a batch of at most
    256 KiB (an image tile, a compressed chunk) is read in the event loop
    itself, since a page-cache read is cheaper than the hop. :meth:`read_sync`
    reads in the calling thread; every method is safe from any thread.

    A descriptor evicted from the LRU (or closed) while a read uses it is closed
    when that read ends, never under it: a closed and reused descriptor number
    would otherwise read another file's bytes.

    Unless the *verifier*'s policy is ``"off"``, a file is checked against its
    recorded identity when its descriptor is opened, and each read ends with a
    ``stat`` of the path: a file replaced (another inode) or rewritten (size or
    mtime) since its descriptor was opened is opened again and read again, so a
    changed file is never served from the old descriptor, and one with a
    recorded identity raises :class:`~refstore.fetch._identity.SourceMismatch`.
    """

    def __init__(self, max_open: int = 128, verifier: Verifier | None = None) -> None:
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._busy: dict[int, int] = {}  # descriptor -> reads using it
        self._doomed: set[int] = set()  # evicted while busy: closed by the last reader
        self._signatures: dict[int, _Signature] = {}  # descriptor -> the file it was opened on
        self._lock = threading.Lock()
        self._max_open = max_open
        self._verifier = verifier if verifier is not None and verifier.active else None

    def _open(self, path: str) -> tuple[int, _Signature | None]:
        """Open *path*; with a verifier, check it against its identity and note what it was."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        verifier = self._verifier
        if verifier is None:
            return fd, None
        try:
            st = os.fstat(fd)
            identity = verifier.expected(path)
            if identity is not None:
                compare_stat(path, identity, st.st_size, st.st_mtime_ns)
                if verifier.full and identity.sha256 is not None and not verifier.passed(path, _sig(st)):
                    hash_descriptor(path, fd, identity)
                    verifier.mark(path, _sig(st))
        except BaseException:
            os.close(fd)
            raise
        return fd, _signature(st)

    def _acquire(self, path: str) -> int:
        """A descriptor of *path*, marked busy until :meth:`_release`."""
        return self._checkout(path)[0]

    def _checkout(self, path: str) -> tuple[int, _Signature | None]:
        """:meth:`_acquire`, and the file the descriptor was opened on (None when not watched)."""
        with self._lock:
            fd = self._fds.get(path)
            if fd is not None:
                self._fds.move_to_end(path)
                self._busy[fd] = self._busy.get(fd, 0) + 1
                return fd, self._signatures.get(fd)
        fd, signature = self._open(path)
        with self._lock:
            if path in self._fds:  # another thread opened it meanwhile
                os.close(fd)
                fd = self._fds[path]
                signature = self._signatures.get(fd)
            else:
                self._fds[path] = fd
                if signature is not None:
                    self._signatures[fd] = signature
                while len(self._fds) > self._max_open:
                    self._drop(self._fds.popitem(last=False)[1])
            self._busy[fd] = self._busy.get(fd, 0) + 1
            return fd, signature

    def _release(self, fd: int) -> None:
        with self._lock:
            left = self._busy[fd] - 1
            if left:
                self._busy[fd] = left
                return
            del self._busy[fd]
            if fd in self._doomed:
                self._doomed.discard(fd)
                self._close(fd)

    def _drop(self, fd: int) -> None:
        """Close *fd* now, or when its last read ends (called with the lock held)."""
        if fd in self._busy:
            self._doomed.add(fd)
        else:
            self._close(fd)

    def _close(self, fd: int) -> None:
        self._signatures.pop(fd, None)
        os.close(fd)

    def _forget(self, path: str, fd: int) -> None:
        """Stop using *fd* for *path* (the file changed since it was opened)."""
        with self._lock:
            if self._fds.get(path) == fd:
                del self._fds[path]
                self._drop(fd)

    def read_sync(self, path: str, spans: list[tuple[int, int | None]]) -> list[bytes]:
        """Read *spans* of the file at *path* in the calling thread.

        Raises
        ------
        FileNotFoundError
            If the file does not exist.
        SourceMismatch
            If it differs from its recorded identity.
        OSError
            For any other failure to open or read it, or a file that changed
            each of the times it was read.
        """
        for _ in range(_REREADS):
            fd, signature = self._checkout(path)
            try:
                out = []
                for start, end in spans:
                    size = (os.fstat(fd).st_size - start) if end is None else end - start
                    out.append(os.pread(fd, max(size, 0), start) if size > 0 else b"")
            finally:
                self._release(fd)
            if signature is None:
                return out
            try:  # after the read: is the path still the file read, unchanged since it was opened?
                now = _signature(os.stat(path))
            except FileNotFoundError:
                now = None
            if now == signature:
                return out
            self._forget(path, fd)  # replaced or rewritten: open (and check) it again
        raise OSError(f"{path} changed each of the {_REREADS} times it was read; try again when it is still")

    async def read(self, path: str, spans: list[tuple[int, int | None]]) -> list[bytes]:
        if all(e is not None for _, e in spans) and (
            sum(e - s for s, e in spans if e is not None) <= _INLINE_BYTES
        ):
            # a small read costs less than the hop to a worker thread
            return self.read_sync(path, spans)
        return await asyncio.to_thread(self.read_sync, path, spans)

    async def size(self, path: str) -> int:
        st = await asyncio.to_thread(os.stat, path)
        identity = self._verifier.expected(path) if self._verifier is not None else None
        if identity is not None:
            compare_stat(path, identity, st.st_size, st.st_mtime_ns)
        return st.st_size

    async def close(self) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        """Close every descriptor (those in use when their reads end)."""
        with self._lock:
            fds, self._fds = list(self._fds.values()), OrderedDict()
            for fd in fds:
                self._drop(fd)


class FsspecTarget:
    """Any fsspec filesystem: async ones are awaited in this loop, sync ones run in threads.

    Parameters
    ----------
    fs
        A filesystem instance given by the user, or None to build one for
        *protocol* with *options* inside the running loop.
    deadlines
        The connect and first-byte deadlines given to the S3 and GCS
        filesystems built here (whose own retries are turned off); a given
        filesystem is used as it is.
    """

    def __init__(
        self,
        protocol: str,
        options: Mapping[str, Any],
        fs: Any = None,
        deadlines: Deadlines | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.protocol = protocol
        self._given = fs
        self._options = dict(options)
        self._deadlines = deadlines or Deadlines()
        self._fs: Any = None
        self._native = False  # True when awaiting fs's coroutines in this loop is safe
        self._verifier = verifier if verifier is not None and verifier.active else None
        self._checking: dict[str, asyncio.Future[None]] = {}  # once-per-URL info checks under way

    async def _ensure(self) -> Any:
        if self._fs is not None:
            return self._fs
        fs = self._given
        if _is_async_wrapper(fs):
            # fsspec's wrapper of a sync filesystem runs each call in a thread of fsspec's IO loop,
            # where a busy loop stalls a purely local read: run the sync filesystem in ours instead
            fs = fs.sync_fs
        if fs is None:
            cls = fsspec.get_filesystem_class(self.protocol)
            options = _tuned_options(cls, self._options, self._deadlines)
            if issubclass(cls, AsyncFileSystem):
                opts = {**options, "asynchronous": True, "skip_instance_cache": True}
                opts.setdefault("loop", asyncio.get_running_loop())
                fs = cls(**opts)
                _no_own_retries(fs)
                if hasattr(fs, "set_session"):
                    await fs.set_session()
                self._native = True
            else:
                fs = cls(**options)
                _no_own_retries(fs)
        elif isinstance(fs, AsyncFileSystem) and getattr(fs, "asynchronous", False):
            self._native = getattr(fs, "_loop", None) in (None, asyncio.get_running_loop())
        self._fs = fs
        return fs

    def _full(self, fs: Any, url: str) -> str:
        return fs._strip_protocol(url) if "://" in url else url

    async def read(self, url: str, spans: list[tuple[int, int | None]]) -> list[bytes]:
        """Bytes of each ``[start, end)`` span of *url*.

        Raises
        ------
        TransientError
            For a failure a retry may cure (:func:`as_transient`).
        OSError
            For the others, as the filesystem raised them.
        """
        fs = await self._ensure()
        path = self._full(fs, url)
        identity = self._verifier.expected(url) if self._verifier is not None else None
        try:
            if identity is not None:
                if self._native and _package(type(fs)) == "s3fs" and identity.etag is not None:
                    # every GET conditional on the recorded ETag: no extra request
                    return list(await asyncio.gather(*(
                        s3_conditional_get(fs, path, url, s, e, identity) for s, e in spans
                    )))
                await self._check_info(fs, path, url, identity)
            if self._native:
                if len(spans) == 1:
                    return [await fs._cat_file(path, start=spans[0][0], end=spans[0][1])]
                return list(await asyncio.gather(*(fs._cat_file(path, start=s, end=e) for s, e in spans)))
            return await asyncio.to_thread(
                lambda: [fs.cat_file(path, start=s, end=e) for s, e in spans]
            )
        except SourceMismatch:
            raise
        except Exception as exc:
            transient = as_transient(exc, self._own_deadlines())
            if transient is None or transient is exc:
                raise
            raise transient from exc

    async def _check_info(self, fs: Any, path: str, url: str, identity: SourceIdentity) -> None:
        """Compare the object's ``info`` with *identity*, once per URL; raises :class:`SourceMismatch`."""
        assert self._verifier is not None

        async def check() -> None:
            if hasattr(fs, "invalidate_cache"):
                fs.invalidate_cache(path)  # a listing cached by the filesystem says nothing of now
            info = await fs._info(path) if self._native else await asyncio.to_thread(fs.info, path)
            found = identity_from_info(info)
            compare(url, identity, size=found.size, etag=found.etag, mtime=found.mtime)

        await check_once(self._verifier, url, "info", self._checking, check)

    def _own_deadlines(self) -> Deadlines | None:
        """The deadlines the filesystem was built with (None for a filesystem given by the caller)."""
        return self._deadlines if self._given is None else None

    async def size(self, url: str) -> int:
        """Size in bytes of the object at *url*; raises as :meth:`read`."""
        fs = await self._ensure()
        path = self._full(fs, url)
        try:
            if self._native:
                return int((await fs._info(path))["size"])
            return int((await asyncio.to_thread(fs.info, path))["size"])
        except Exception as exc:
            transient = as_transient(exc, self._own_deadlines())
            if transient is None or transient is exc:
                raise
            raise transient from exc

    async def close(self) -> None:
        fs, self._fs = self._fs, None
        if fs is None or self._given is not None or not self._native:
            return
        try:
            creator = getattr(fs, "_s3creator", None)  # s3fs: an aiobotocore client context
            if creator is not None:
                await creator.__aexit__(None, None, None)
                fs._s3 = fs._s3creator = None
            for name in ("_session", "session"):  # fsspec's HTTP, gcsfs: an aiohttp session
                session = fs.__dict__.get(name)
                closer = getattr(session, "close", None)
                if closer is not None:
                    result = closer()
                    if asyncio.iscoroutine(result):
                        await result
        except Exception:  # closing is best effort  # noqa: BLE001
            pass


# -- S3 and GCS: deadlines in, own retries out -----------------------------------------------


def _package(cls: type) -> str:
    return cls.__module__.partition(".")[0]


def _tuned_options(cls: type, options: Mapping[str, Any], deadlines: Deadlines) -> dict[str, Any]:
    """*options* for building *cls*, with the connect and first-byte deadlines and one try per
    call for s3fs (botocore) and gcsfs; what the caller set explicitly is kept."""
    opts = dict(options)
    package = _package(cls)
    if package == "s3fs":
        config = dict(opts.get("config_kwargs") or {})
        if deadlines.connect is not None:
            config.setdefault("connect_timeout", deadlines.connect)
        if deadlines.first_byte is not None:
            config.setdefault("read_timeout", deadlines.first_byte)
        config.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
        opts["config_kwargs"] = config
    elif package == "gcsfs" and opts.get("requests_timeout") is None:
        opts["requests_timeout"] = aiohttp.ClientTimeout(
            total=None, sock_connect=deadlines.connect, sock_read=deadlines.first_byte
        )
    return opts


def _no_own_retries(fs: Any) -> None:
    """Make an s3fs or gcsfs instance try each call once: refstore's fetcher retries.

    s3fs retries ``retries`` times (an attribute, 5 by default); gcsfs wraps
    ``_request`` in a retrying decorator (6 tries), bypassed here through the
    ``__wrapped__`` function the decorator keeps.
    """
    package = _package(type(fs))
    if package == "s3fs" and isinstance(getattr(fs, "retries", None), int):
        fs.retries = 1
    elif package == "gcsfs":
        unwrapped = getattr(getattr(type(fs), "_request", None), "__wrapped__", None)
        if unwrapped is not None:
            fs._request = types.MethodType(unwrapped, fs)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """*exc* and the exceptions it was raised from (``__cause__``), at most eight."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 8:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__


def _status_of(exc: BaseException) -> tuple[int | None, str | None, dict[str, Any]]:
    """``(HTTP status, error code, headers)`` an exception of botocore, gcsfs or aiohttp carries."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):  # botocore ClientError
        meta = response.get("ResponseMetadata") or {}
        error = response.get("Error") or {}
        status = meta.get("HTTPStatusCode")
        return (status if isinstance(status, int) else None, error.get("Code"), dict(meta.get("HTTPHeaders") or {}))
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status, None, dict(exc.headers or {})
    code = getattr(exc, "code", None)  # gcsfs HttpError
    if type(exc).__name__ == "HttpError" and _package(type(exc)) == "gcsfs":
        try:
            return int(code), None, {}  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None, None, {}
    return None, None, {}


def _network_errors() -> tuple[type[BaseException], ...]:
    """Connection and timeout errors of the client libraries already imported (none is imported here)."""
    found: list[type[BaseException]] = [
        TimeoutError, ConnectionError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
    ]
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        found += [botocore.HTTPClientError, botocore.ConnectionError]
    requests = sys.modules.get("requests.exceptions")
    if requests is not None:
        found += [requests.ConnectionError, requests.Timeout, requests.ChunkedEncodingError]
    return tuple(found)


def as_transient(exc: BaseException, deadlines: Deadlines | None = None) -> TransientError | None:
    """The :class:`TransientError` a failure of a filesystem stands for, or None if a retry would not cure it.

    Transient: the statuses of :data:`TRANSIENT_STATUS` (from botocore,
    gcsfs or aiohttp errors, found along the chain of causes, as s3fs
    translates botocore's), S3's throttling codes, and the connection and
    timeout errors of aiohttp, botocore and requests. A ``Retry-After`` that
    came with the answer is kept. With the *deadlines* the filesystem was
    built with, a connect or read timeout names the deadline that ran out.
    """
    if isinstance(exc, TransientError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return None
    network = _network_errors()
    for err in _chain(exc):
        status, code, headers = _status_of(err)
        if status is not None or code is not None:
            if status in TRANSIENT_STATUS or code in _TRANSIENT_CODES:
                wait = retry_after(next((str(v) for k, v in headers.items() if k.lower() == "retry-after"), None))
                what = f"HTTP {status}" + (f" ({code})" if code else "")
                return TransientError(f"{what}: {exc}", retry_after=wait)
            return None
        if isinstance(err, network):
            if isinstance(err, TimeoutError) or "Timeout" in type(err).__name__:
                return FetchTimeout(_which_deadline(err, deadlines) + f"{type(err).__name__}: {err}")
            return TransientError(f"{type(err).__name__}: {err}")
    return None


def _which_deadline(err: BaseException, deadlines: Deadlines | None) -> str:
    """``"no byte for 20 s (the first_byte deadline): "`` or the like, for a timeout of a client
    that was given *deadlines*; empty if that cannot be told."""
    if deadlines is None:
        return ""
    name = type(err).__name__
    if ("ConnectTimeout" in name or "ConnectionTimeout" in name) and deadlines.connect is not None:
        return f"no connection within {deadlines.connect:g} s (the connect deadline): "
    if ("ReadTimeout" in name or "SocketTimeout" in name) and deadlines.first_byte is not None:
        return f"no byte for {deadlines.first_byte:g} s (the first_byte deadline): "
    return ""


def _is_async_wrapper(fs: Any) -> bool:
    """True for fsspec's ``AsyncFileSystemWrapper`` (an async face over a sync filesystem)."""
    try:
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
    except ImportError:  # an fsspec without it
        return False
    return isinstance(fs, AsyncFileSystemWrapper) and getattr(fs, "sync_fs", None) is not None


def _fsspec_target(context: TargetContext) -> FsspecTarget:
    """Any protocol fsspec knows, or the filesystem the caller gave."""
    return FsspecTarget(
        context.protocol, context.options, context.filesystem, deadlines=context.deadlines, verifier=context.verifier
    )


register_target(None, _fsspec_target)
