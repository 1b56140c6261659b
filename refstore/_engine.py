"""The dataset engine every face stands on: one manifest, its virtual arrays, the URL policy
and the fetcher, answering "bytes of key K", "does K exist" and "what is under P".

The faces (``ReferenceStore``, ``ReferenceFileSystem``, the threaded pipeline through
``ReferenceStore.get_sync``) translate their callers' requests into these calls, so a
virtual array is served the same way by every face. Virtual arrays read their
``{"path": ...}`` sources back through :class:`EngineStore`, a read-only zarr view of the
engine, and ``{"manifest": ...}`` sources through a new engine with the same policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import fsspec.asyn
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import default_buffer_prototype

from refstore._options import Options
from refstore._reader import KeyRange, Reader
from refstore.errors import KeyNotInManifest, SnapshotUnavailable
from refstore.fetch._deadlines import run_sync
from refstore.manifest import Manifest
from refstore.virtual import _spec
from refstore.virtual._store import DEFINITION_NAME, VirtualResolver

if TYPE_CHECKING:
    from collections.abc import Iterator

    from zarr.core.buffer import Buffer, BufferPrototype

    from refstore.fetch import URLPolicy


#: The names of zarr's metadata documents (both formats).
METADATA_NAMES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"})


def to_range(byte_range: ByteRequest | None) -> tuple[int | None, int | None]:
    """zarr's byte request as fsspec-style ``(start, end)`` (negative start: a suffix)."""
    if byte_range is None:
        return None, None
    if isinstance(byte_range, RangeByteRequest):
        return byte_range.start, byte_range.end
    if isinstance(byte_range, OffsetByteRequest):
        return byte_range.offset, None
    if isinstance(byte_range, SuffixByteRequest):
        return -byte_range.suffix, None
    raise TypeError(f"Unexpected byte_range, got {byte_range}.")


def to_request(start: int | None, end: int | None) -> ByteRequest | None:
    """The inverse of :func:`to_range` for the ranges zarr can express (else None: read all)."""
    if start is None and end is None:
        return None
    if start is not None and start < 0 and end is None:
        return SuffixByteRequest(-start)
    if end is None:
        return OffsetByteRequest(start or 0)
    if (start or 0) >= 0 and end >= 0:
        return RangeByteRequest(start or 0, end)
    return None


def _cut(data: bytes, start: int | None, end: int | None) -> bytes:
    return data[slice(start, end)]


class Engine:
    """One opened dataset.

    Parameters
    ----------
    fo
        The manifest (see :class:`refstore.ReferenceFileSystem`).
    options
        How to open and read it (:class:`refstore._options.Options`); also used to
        open ``{"manifest": ...}`` sources of virtual arrays.
    reader
        An existing :class:`~refstore._reader.Reader` to share (a store's ``with_read_only`` copy).
    **kwargs
        Options given one by one (``remote_protocol=...``), applied over *options*.

    Raises
    ------
    TypeError
        For a keyword that is not an option.
    """

    def __init__(
        self, fo: Any = None, options: Options | None = None, *, reader: Reader | None = None, **kwargs: Any,
    ) -> None:
        self.options = Options.of(options, **kwargs)
        self.reader = reader or Reader(fo, self.options)
        self.decoded_cache_bytes = self.options.decoded_cache_bytes
        self.virtual: VirtualResolver | None = None
        self.store = EngineStore(self)
        self.refresh()

    @property
    def manifest(self) -> Manifest:
        """The manifest (edits land here; call :meth:`refresh` after adding a definition)."""
        return self.reader.manifest

    def refresh(self) -> None:
        """Serve the virtual arrays (``spec/virtual.md``) the manifest defines, if any."""
        if self.virtual is not None:
            return
        try:
            defined = any(k.rpartition("/")[2] == DEFINITION_NAME for k in self.manifest.inline_keys())
        except SnapshotUnavailable:  # unpickled without its snapshot: its first read raises instead
            return
        if defined:
            self.virtual = VirtualResolver(
                self.store,
                open_manifest=_open_manifest_store,
                **{**self.options.as_kwargs(), "url_policy": self.reader.policy},
            )

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes | None:
        """Bytes ``[start, end)`` of *key* (fsspec ``cat_file`` ranges), or None if it holds none.

        Raises
        ------
        URLNotAllowed, ReferenceNotReachable, ManifestError
            As :meth:`refstore._reader.Reader.read`; never None for a key that failed.
        """
        if self.virtual is not None and (found := await self.virtual.locate(key)) is not None:
            request = to_request(start, end)
            buf = await self.virtual.read(found, default_buffer_prototype(), request)
            if buf is None:
                return None
            data = buf.to_bytes()
            return data if request is not None or (start is None and end is None) else _cut(data, start, end)
        try:
            return await self.reader.read(key, start, end)
        except KeyNotInManifest:
            return None

    async def get_many(self, requests: Sequence[KeyRange]) -> list[bytes | BaseException | None]:
        """Many key ranges at once (merged per URL); each result is bytes, None (absent) or the error."""
        if self.virtual is None:
            got = await self.reader.read_many(requests)
            return [None if isinstance(r, KeyNotInManifest) else r for r in got]
        out: list[bytes | BaseException | None] = [None] * len(requests)
        plain: list[int] = []
        virtual: list[int] = []
        for i, (key, _, _) in enumerate(requests):
            (virtual if await self.virtual.locate(key) is not None else plain).append(i)
        slots = asyncio.Semaphore(self.options.max_concurrency)

        async def one(i: int) -> None:
            async with slots:
                try:
                    out[i] = await self.get(*requests[i])
                except Exception as exc:  # noqa: BLE001 - returned per key, as read_many does
                    out[i] = exc

        async def plain_reads() -> None:
            for i, r in zip(plain, await self.reader.read_many([requests[i] for i in plain])):
                out[i] = None if isinstance(r, KeyNotInManifest) else r

        await asyncio.gather(plain_reads(), *(one(i) for i in virtual))
        return out

    def get_sync(self, key: str, start: int | None = None, end: int | None = None) -> bytes | None:
        """:meth:`get` from a thread without a running event loop.

        Local references are read in the calling thread; remote ones and virtual
        arrays on fsspec's IO loop (so not from that loop's thread).
        """
        if self.virtual is not None:
            return run_sync(fsspec.asyn.get_loop(), self.get, key, start, end)
        try:
            return self.reader.read_sync(key, start, end)
        except KeyNotInManifest:
            return None

    def reads_in_thread(self) -> bool:
        """True when :meth:`get_sync` never hops threads: local references only, no virtual arrays."""
        return self.virtual is None and self.reader.reads_in_thread()

    async def exists(self, key: str) -> bool:
        """Whether *key* holds data (a virtual chunk that reads as fill does not)."""
        if self.virtual is not None and await self.virtual.is_virtual(key):
            return await self.virtual.has_chunk(key)
        return key in self.manifest

    async def size(self, key: str) -> int:
        """Size in bytes of *key*.

        Raises
        ------
        FileNotFoundError
            If the key holds no data.
        """
        if self.virtual is not None and await self.virtual.is_virtual(key):
            data = await self.get(key)
            if data is None:
                raise FileNotFoundError(key)
            return len(data)
        try:
            return await self.reader.size(key)
        except KeyNotInManifest:
            raise FileNotFoundError(key) from None

    # -- listing ----------------------------------------------------------------------------------

    def metadata_keys(self) -> Iterator[str]:
        """The keys of the zarr metadata documents in the manifest, in its order.

        ``.zarray``, ``.zattrs``, ``.zgroup``, ``.zmetadata`` and ``zarr.json`` held inline
        (as every builder and kerchunk writes them), virtual arrays' included; cheap for a
        large manifest, whose chunk references are never visited.
        """
        for key in self.manifest.inline_keys():
            if key.rpartition("/")[2] in METADATA_NAMES:
                yield key

    async def keys(self, prefix: str = "") -> AsyncIterator[str]:
        """Every key starting with *prefix*: the manifest's, then the virtual arrays' chunk keys."""
        for key in self.manifest.keys():
            if key.startswith(prefix):
                yield key
        if self.virtual is not None:
            async for key in self.virtual.list_keys(prefix):
                yield key

    async def list_dir(self, prefix: str) -> tuple[list[str], list[str]]:
        """``(files, dirs)``: the names directly under *prefix*, virtual chunk keys included."""
        files, dirs = self.manifest.list_dir(prefix)
        if self.virtual is None:
            return files, dirs
        base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        more_files, more_dirs = set(files), set(dirs)
        for name in await self.virtual.list_dir(prefix):
            if name in more_files or name in more_dirs:
                continue
            (more_files if await self.virtual.is_virtual(base + name) else more_dirs).add(name)
        return sorted(more_files), sorted(more_dirs)

    async def is_dir(self, path: str) -> bool:
        """Whether some key lies below *path*."""
        if self.manifest.is_dir(path):
            return True
        files, dirs = await self.list_dir(path)
        return bool(files or dirs)

    async def describe(self, key: str) -> str:
        """Where the bytes of *key* come from, for error messages.

        ``"<url> bytes <start>-<end>"`` for a reference (the URL as it is read, or as
        written when the policy refuses it), ``"inline (<n> bytes)"``, ``"a virtual
        chunk"`` for a virtual array's chunk, or ``"no entry"``. Never raises.
        """
        if self.virtual is not None and await self.virtual.is_virtual(key):
            return "a virtual chunk, assembled from its sources"
        entry = self.manifest.get(key)
        if entry is None:
            return "no entry"
        if isinstance(entry, bytes):
            return f"inline ({len(entry)} bytes)"
        try:
            url = self.reader.resolve_url(entry.url, key)
        except Exception:  # noqa: BLE001 - a description must not fail
            url = str(entry.url)
        if entry.length is None:
            return f"{url} (from byte {entry.offset} to the end)" if entry.offset else f"{url} (whole object)"
        return f"{url} bytes {entry.offset}-{entry.offset + entry.length} ({entry.length} bytes)"

    def close_all(self) -> None:
        """Close the fetcher's sessions and files in every loop (reopened by the next read)."""
        self.reader.fetcher.close_all()


def _open_manifest_store(fo: Any, **options: Any) -> EngineStore:
    """A read-only zarr store over another manifest (a virtual array's ``{"manifest": ...}`` source)."""
    return Engine(fo, **options).store


_spec.default_manifest_opener = _open_manifest_store


class EngineStore(Store):
    """A read-only zarr 3 view of an :class:`Engine` (what virtual arrays read their sources through)."""

    supports_writes = False
    supports_deletes = False
    supports_partial_writes = False
    supports_listing = True

    def __init__(self, engine: Engine, *, read_only: bool = True) -> None:
        super().__init__(read_only=read_only)
        self.engine = engine

    @property
    def manifest(self) -> Manifest:
        """The engine's manifest."""
        return self.engine.manifest

    @property
    def url_policy(self) -> URLPolicy:
        """The :class:`refstore.URLPolicy` every reference URL is checked against."""
        return self.engine.reader.policy

    @property
    def serves_virtual_arrays(self) -> bool:
        """True if the manifest defines virtual arrays (their chunk keys are listed here too)."""
        return self.engine.virtual is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EngineStore) and other.engine is self.engine

    async def describe(self, key: str) -> str:
        """Where the bytes of *key* come from (see :meth:`Engine.describe`); for error messages."""
        return await self.engine.describe(key)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        # docstring inherited
        data = await self.engine.get(key, *to_range(byte_range))
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        # docstring inherited
        results = await self.engine.get_many([(key, *to_range(br)) for key, br in key_ranges])
        out: list[Buffer | None] = []
        for res in results:
            if isinstance(res, BaseException):
                raise res
            out.append(None if res is None else prototype.buffer.from_bytes(res))
        return out

    async def exists(self, key: str) -> bool:
        # docstring inherited
        return await self.engine.exists(key)

    async def getsize(self, key: str) -> int:
        # docstring inherited
        return await self.engine.size(key)

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self._check_writable()

    async def delete(self, key: str) -> None:
        # docstring inherited
        self._check_writable()

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        async for key in self.engine.keys():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        async for key in self.engine.keys(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        files, dirs = await self.engine.list_dir(prefix)
        for name in sorted({*files, *dirs}):
            yield name
