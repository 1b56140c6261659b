"""ReferenceStore: a native zarr 3 store over a reference manifest."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import fsspec.asyn
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)

from refstore._reader import Reader
from refstore.errors import KeyNotInManifest

if TYPE_CHECKING:
    from zarr.core.buffer import Buffer, BufferPrototype


def _to_range(byte_range: ByteRequest | None) -> tuple[int | None, int | None]:
    if byte_range is None:
        return None, None
    if isinstance(byte_range, RangeByteRequest):
        return byte_range.start, byte_range.end
    if isinstance(byte_range, OffsetByteRequest):
        return byte_range.offset, None
    if isinstance(byte_range, SuffixByteRequest):
        return -byte_range.suffix, None
    raise TypeError(f"Unexpected byte_range, got {byte_range}.")


class ReferenceStore(Store):
    """A zarr 3 store whose keys are the entries of a reference manifest.

    Parameters
    ----------
    fo
        The manifest: a :class:`refstore.Manifest`, a kerchunk reference dict,
        or a path/URL of JSON or parquet references.
    read_only
        True (the default) refuses writes. With False, ``set`` and ``delete``
        edit the manifest in memory (the targets are never written); save the
        result with ``store.manifest.save(...)``.
    **kwargs
        The keyword arguments of :class:`refstore.ReferenceFileSystem`:
        ``target``, ``target_protocol``, ``target_options``,
        ``remote_protocol``, ``remote_options``, ``fs``,
        ``template_overrides``, ``max_gap``, ``max_block``,
        ``max_concurrency``, ``read_ahead``, ``retries``, ``cache_size``,
        ``url_policy``; and ``decoded_cache_bytes``, the budget of decoded
        source chunks shared by assembled virtual-array chunks
        (:class:`refstore.virtual.VirtualResolver`).

    Notes
    -----
    A key the manifest lacks reads as None (zarr fills it). A key whose
    target cannot be read raises :class:`refstore.ReferenceNotReachable`, and
    a URL outside the policy raises :class:`refstore.URLNotAllowed`: a broken
    dataset never reads as fill values.
    """

    supports_writes: bool = True
    supports_deletes: bool = True
    supports_listing: bool = True

    def __init__(self, fo: Any, *, read_only: bool = True, **kwargs: Any) -> None:
        super().__init__(read_only=read_only)
        self._virtual_options = {k: kwargs.pop(k) for k in ("decoded_cache_bytes",) if k in kwargs}
        self._reader = kwargs.pop("_reader", None) or Reader(fo, **kwargs)
        self._kwargs = kwargs
        self._virtual: Any = None
        self._find_virtual_arrays()

    def _find_virtual_arrays(self) -> None:
        """Serve virtual arrays (see ``spec/virtual.md``) if the manifest defines any."""
        from refstore.virtual._store import DEFINITION_NAME, VirtualResolver

        if self._virtual is None and any(
            k.rpartition("/")[2] == DEFINITION_NAME for k in self.manifest._inline
        ):
            self._virtual = VirtualResolver(self, **self._virtual_options, **self._kwargs)

    @property
    def manifest(self) -> Any:
        """The :class:`refstore.Manifest` this store reads."""
        return self._reader.manifest

    def with_read_only(self, read_only: bool = False) -> ReferenceStore:
        # docstring inherited
        return type(self)(self.manifest, read_only=read_only, _reader=self._reader)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ReferenceStore)
            and self.read_only == other.read_only
            and (other.manifest is self.manifest or dict(other.manifest.items()) == dict(self.manifest.items()))
        )

    def __repr__(self) -> str:
        return f"ReferenceStore({self.manifest!r}, read_only={self.read_only})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_is_open"] = False
        return state

    # -- reads --------------------------------------------------------------------------------

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        # docstring inherited
        if not self._is_open:
            await self._open()
        if self._virtual is not None and (found := await self._virtual.locate(key)) is not None:
            return await self._virtual.read(found, prototype, byte_range)
        start, end = _to_range(byte_range)
        try:
            data = await self._reader.read(key, start, end)
        except KeyNotInManifest:
            return None
        return prototype.buffer.from_bytes(data)

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """:meth:`get` without an event loop (zarr's ``SupportsGetSync``), for threads.

        Local targets are read in the calling thread; remote targets and virtual
        arrays are read on fsspec's IO loop (so not from that loop's thread).

        Returns
        -------
        Buffer or None
            The bytes, or None for a key the manifest lacks (zarr fills it).

        Raises
        ------
        ReferenceNotReachable
            If the target cannot be read (missing file, HTTP error, fewer bytes
            than the reference promises); the cause is chained.
        URLNotAllowed
            If the reference's URL is outside the URL policy.
        """
        prototype = prototype or _default_prototype()
        if self._virtual is not None:
            return fsspec.asyn.sync(fsspec.asyn.get_loop(), self.get, key, prototype, byte_range)
        self._is_open = True  # opening a ReferenceStore has nothing to wait for
        try:
            data = self._reader.read_sync(key, *_to_range(byte_range))
        except KeyNotInManifest:
            return None
        return prototype.buffer.from_bytes(data)

    @property
    def _supports_sync_io(self) -> bool:
        """Whether zarr should read this store through :meth:`get_sync` in its worker threads.

        True when every reference targets a local file and there are no virtual
        arrays: then a sync read costs no thread hop, and
        :class:`refstore.pipeline.ThreadedCodecPipeline` (zarr's
        ``FusedCodecPipeline``) fetches and decodes each chunk in one worker
        thread. Remote reads stay on the async path, where many requests are in
        flight at once rather than one per worker thread.
        """
        return self._virtual is None and self._reader.reads_in_thread()

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        # docstring inherited
        key_ranges = list(key_ranges)
        if self._virtual is not None:
            return [await self.get(key, prototype, br) for key, br in key_ranges]
        requests = [(key, *_to_range(br)) for key, br in key_ranges]
        results = await self._reader.read_many(requests)
        out: list[Buffer | None] = []
        for res in results:
            if isinstance(res, KeyNotInManifest):
                out.append(None)
            elif isinstance(res, BaseException):
                raise res
            else:
                out.append(prototype.buffer.from_bytes(res))
        return out

    async def exists(self, key: str) -> bool:
        # docstring inherited
        if self._virtual is not None and await self._virtual.is_virtual(key):
            return await self._virtual.has_chunk(key)
        return key in self.manifest

    async def getsize(self, key: str) -> int:
        # docstring inherited
        try:
            return await self._reader.size(key)
        except KeyNotInManifest:
            raise FileNotFoundError(key) from None

    # -- in-memory edits ----------------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self.set_sync(key, value)

    def set_sync(self, key: str, value: Buffer) -> None:
        """:meth:`set` without an event loop (zarr's ``SupportsSetSync``)."""
        self._check_writable()
        if not isinstance(value, _buffer_type()):
            raise TypeError(f"ReferenceStore.set(): `value` must be a Buffer instance. Got an instance of {type(value)} instead.")
        self.manifest.set(key, value.to_bytes())
        self._find_virtual_arrays()

    async def delete(self, key: str) -> None:
        # docstring inherited
        self.delete_sync(key)

    def delete_sync(self, key: str) -> None:
        """:meth:`delete` without an event loop (zarr's ``SupportsDeleteSync``)."""
        self._check_writable()
        try:
            self.manifest.delete(key)
        except KeyNotInManifest:
            pass

    # -- listing ------------------------------------------------------------------------------

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited; with virtual arrays, also their chunk keys (spec/virtual.md)
        for key in self.manifest.keys():
            yield key
        if self._virtual is not None:
            async for key in self._virtual.list_keys():
                yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in self.manifest.keys():
            if key.startswith(prefix):
                yield key
        if self._virtual is not None:
            async for key in self._virtual.list_keys(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        files, dirs = self.manifest.list_dir(prefix)
        names = set(files) | set(dirs)
        if self._virtual is not None:
            names |= await self._virtual.list_dir(prefix)
        for name in sorted(names):
            yield name

    def close(self) -> None:
        """Close the store and the fetcher's sessions and files (reopened by the next read)."""
        self._reader.fetcher.close_all()
        super().close()


def _buffer_type() -> type:
    from zarr.core.buffer import Buffer

    return Buffer


def _default_prototype() -> BufferPrototype:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()
