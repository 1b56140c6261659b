"""Targets: the per-protocol readers of byte spans (local pread, any fsspec filesystem; HTTP in ._http).

A target reads ``[start, end)`` of one object and raises ``FileNotFoundError``
for a missing object, :class:`TransientError` for what a retry may cure, and
any other ``OSError`` for the rest. Targets are created inside the event loop
that uses them, since aiohttp and fsspec sessions belong to one loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.asyn import AsyncFileSystem

#: Reads of at most this many bytes from an already open local file run in the event loop.
_INLINE_BYTES = 256 * 1024


class TransientError(OSError):
    """A failure a retry may cure (HTTP 5xx/429, a dropped connection, a timeout)."""


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
    """

    def __init__(self, max_open: int = 128) -> None:
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._busy: dict[int, int] = {}  # descriptor -> reads using it
        self._doomed: set[int] = set()  # evicted while busy: closed by the last reader
        self._lock = threading.Lock()
        self._max_open = max_open

    def _acquire(self, path: str) -> int:
        with self._lock:
            fd = self._fds.get(path)
            if fd is not None:
                self._fds.move_to_end(path)
                self._busy[fd] = self._busy.get(fd, 0) + 1
                return fd
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        with self._lock:
            if path in self._fds:  # another thread opened it meanwhile
                os.close(fd)
                fd = self._fds[path]
            else:
                self._fds[path] = fd
                while len(self._fds) > self._max_open:
                    self._drop(self._fds.popitem(last=False)[1])
            self._busy[fd] = self._busy.get(fd, 0) + 1
            return fd

    def _release(self, fd: int) -> None:
        with self._lock:
            left = self._busy[fd] - 1
            if left:
                self._busy[fd] = left
                return
            del self._busy[fd]
            if fd in self._doomed:
                self._doomed.discard(fd)
                os.close(fd)

    def _drop(self, fd: int) -> None:
        """Close *fd* now, or when its last read ends (called with the lock held)."""
        if fd in self._busy:
            self._doomed.add(fd)
        else:
            os.close(fd)

    def read_sync(self, path: str, spans: list[tuple[int, int | None]]) -> list[bytes]:
        """Read *spans* of the file at *path* in the calling thread.

        Raises
        ------
        FileNotFoundError
            If the file does not exist.
        OSError
            For any other failure to open or read it.
        """
        fd = self._acquire(path)
        try:
            out = []
            for start, end in spans:
                size = (os.fstat(fd).st_size - start) if end is None else end - start
                out.append(os.pread(fd, max(size, 0), start) if size > 0 else b"")
            return out
        finally:
            self._release(fd)

    async def read(self, path: str, spans: list[tuple[int, int | None]]) -> list[bytes]:
        if all(e is not None for _, e in spans) and (
            sum(e - s for s, e in spans if e is not None) <= _INLINE_BYTES
        ):
            # a small read costs less than the hop to a worker thread
            return self.read_sync(path, spans)
        return await asyncio.to_thread(self.read_sync, path, spans)

    async def size(self, path: str) -> int:
        return (await asyncio.to_thread(os.stat, path)).st_size

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
    """

    def __init__(self, protocol: str, options: Mapping[str, Any], fs: Any = None) -> None:
        self.protocol = protocol
        self._given = fs
        self._options = dict(options)
        self._fs: Any = None
        self._native = False  # True when awaiting fs's coroutines in this loop is safe

    async def _ensure(self) -> Any:
        if self._fs is not None:
            return self._fs
        fs = self._given
        if fs is None:
            cls = fsspec.get_filesystem_class(self.protocol)
            if issubclass(cls, AsyncFileSystem):
                opts = {**self._options, "asynchronous": True, "skip_instance_cache": True}
                opts.setdefault("loop", asyncio.get_running_loop())
                fs = cls(**opts)
                if hasattr(fs, "set_session"):
                    await fs.set_session()
                self._native = True
            else:
                fs = cls(**self._options)
        elif isinstance(fs, AsyncFileSystem) and getattr(fs, "asynchronous", False):
            self._native = getattr(fs, "_loop", None) in (None, asyncio.get_running_loop())
        self._fs = fs
        return fs

    def _full(self, fs: Any, url: str) -> str:
        return fs._strip_protocol(url) if "://" in url else url

    async def read(self, url: str, spans: list[tuple[int, int | None]]) -> list[bytes]:
        fs = await self._ensure()
        path = self._full(fs, url)
        if self._native:
            if len(spans) == 1:
                return [await fs._cat_file(path, start=spans[0][0], end=spans[0][1])]
            return list(await asyncio.gather(*(fs._cat_file(path, start=s, end=e) for s, e in spans)))
        return await asyncio.to_thread(
            lambda: [fs.cat_file(path, start=s, end=e) for s, e in spans]
        )

    async def size(self, url: str) -> int:
        fs = await self._ensure()
        path = self._full(fs, url)
        if self._native:
            return int((await fs._info(path))["size"])
        return int((await asyncio.to_thread(fs.info, path))["size"])

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
