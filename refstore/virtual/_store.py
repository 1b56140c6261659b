"""Serving virtual arrays as zarr: the chunk resolver (get, exists, listing) and a wrapping store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from refstore.errors import ManifestError
from refstore.virtual._array import VirtualArray
from refstore.virtual._cache import DEFAULT_CACHE_BYTES, DecodedChunkCache
from refstore.virtual._index import touched_chunks
from refstore.virtual._plan import ChunkPlanner, Plan
from refstore.virtual._source import ChunkEncoder, chunk_key_parser, encoding_of
from refstore.virtual._spec import DEFINITION_NAME

#: Where :func:`save_virtual` embeds the references of sources that have no URL of their own.
SOURCES_DIR = ".sources"
_METADATA = (".zarray", ".zgroup", ".zattrs", ".zmetadata", "zarr.json")


async def _open_meta(docs: Mapping[str, bytes]) -> Any:
    from zarr.core.array import AsyncArray
    from zarr.storage import MemoryStore

    proto = default_buffer_prototype()
    store = MemoryStore({k: proto.buffer.from_bytes(v) for k, v in docs.items()})
    arr = await AsyncArray.open(store, zarr_format=3 if "zarr.json" in docs else 2)
    return arr


_UNLOADED = object()


@dataclass
class _Entry:
    """A virtual array served by a :class:`VirtualResolver`, with what serving it needs."""

    array: VirtualArray
    encoding: str
    parse: Callable[[str], tuple[int, ...] | None]
    encoder: ChunkEncoder
    metadata: Any
    planner: ChunkPlanner


class VirtualResolver:
    """Produces (and lists) the chunk keys of the virtual arrays defined in a store.

    A virtual array is a zarr array whose prefix holds :data:`DEFINITION_NAME`; its
    metadata documents are ordinary keys, its chunk keys are made here: passed
    through from a source's stored chunk when aligned and identically encoded,
    else assembled (decoded from the sources, encoded with the array's codecs).

    Parameters
    ----------
    store
        The store holding the definitions (e.g. a :class:`refstore.ReferenceStore`).
    decoded_cache_bytes
        Budget of the LRU of decoded source chunks that assembled chunks share
        (:class:`~refstore.virtual._cache.DecodedChunkCache`); 0 keeps none.
    **options
        ``open_manifest`` (a callable ``(url, **options) -> zarr Store``), ``url_policy``
        and the options for ``{"manifest": ...}`` sources.
    """

    def __init__(self, store: Store, *, decoded_cache_bytes: int = DEFAULT_CACHE_BYTES, **options: Any) -> None:
        self.store = store
        self.options = options
        self.cache = DecodedChunkCache(decoded_cache_bytes)
        self._arrays: dict[str, _Entry | None] = {}
        self._loading: dict[str, asyncio.Task[_Entry | None]] = {}
        self._prefixes: list[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # loaded arrays hold open sources and tasks: a copy loads its own, on first use
        return {**self.__dict__, "_arrays": {}, "_loading": {}}

    async def _load(self, prefix: str) -> _Entry | None:
        """The virtual array at ``prefix`` (None if there is none), loaded once even when asked concurrently."""
        try:
            return self._arrays[prefix]
        except KeyError:
            pass
        task = self._loading.get(prefix)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.get_running_loop().create_task(self._read_definition(prefix))
            self._loading[prefix] = task
        try:
            entry = await asyncio.shield(task)
        finally:
            if task.done() and self._loading.get(prefix) is task:
                del self._loading[prefix]
        self._arrays[prefix] = entry
        return entry

    async def _read_definition(self, prefix: str) -> _Entry | None:
        proto = default_buffer_prototype()
        buf = await self.store.get(f"{prefix}/{DEFINITION_NAME}" if prefix else DEFINITION_NAME, proto)
        if buf is None:
            return None
        v = VirtualArray.from_dict(json.loads(buf.to_bytes()), root=self.store, **self.options)
        docs = {}
        for name in ("zarr.json", ".zarray", ".zattrs"):
            b = await self.store.get(f"{prefix}/{name}" if prefix else name, proto)
            if b is not None:
                docs[name] = b.to_bytes()
        if not docs:
            raise ManifestError(f"virtual array {prefix!r} has a definition but no zarr metadata")
        arr = await _open_meta(docs)
        encoding = encoding_of(arr)
        return _Entry(
            v, encoding, chunk_key_parser(arr.metadata), ChunkEncoder(docs, arr), arr.metadata, ChunkPlanner(v, encoding)
        )

    async def _split(self, parts: list[str]) -> tuple[str, str, _Entry] | None:
        """The innermost virtual array whose path is a prefix of the key ``parts``, and the rest."""
        arrays = self._arrays
        for cut in range(len(parts) - 1, -1, -1):
            prefix = "/".join(parts[:cut])
            entry = arrays.get(prefix, _UNLOADED)  # loaded already: no coroutine on the hot path
            if entry is _UNLOADED:
                entry = await self._load(prefix)
            if entry is not None:
                return prefix, "/".join(parts[cut:]), entry  # type: ignore[return-value]
        return None

    async def locate(self, key: str) -> tuple[_Entry, tuple[int, ...]] | None:
        """The virtual array and chunk coordinates of ``key``, or None if it is no virtual chunk key."""
        parts = key.split("/")
        if parts[-1] in _METADATA or parts[-1] == DEFINITION_NAME or SOURCES_DIR in parts:
            return None  # never virtual; also keeps a store hook from recursing into itself
        found = await self._split(parts)
        if found is None:
            return None
        coords = found[2].parse(found[1])
        return None if coords is None else (found[2], coords)

    async def is_virtual(self, key: str) -> bool:
        """True if ``key`` is a chunk key of a virtual array (served by :meth:`get_chunk`)."""
        return await self.locate(key) is not None

    async def read(
        self,
        found: tuple[_Entry, tuple[int, ...]],
        prototype: BufferPrototype,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        """The stored bytes (or ``byte_range`` of them) of the chunk :meth:`locate` found; None reads as fill.

        A pass-through chunk is the source store's answer for its own chunk key, so
        no bytes are copied on the way; an assembled chunk is encoded here.
        """
        entry, coords = found
        v = entry.array
        how, src, src_coords = await _plan(found)
        if how == "fill":
            return None
        if how == "pass":
            return await src.get_chunk_buffer(src_coords, prototype, byte_range)
        box = tuple(slice(c * n, min((c + 1) * n, s)) for c, n, s in zip(coords, v.chunks, v.shape))
        chunk = await v.read_layers_async(box, entry.planner.hits(coords), cache=self.cache)
        data = await entry.encoder.encode(coords, chunk)
        return None if data is None else prototype.buffer.from_bytes(_slice_bytes(data, byte_range))

    async def get_chunk(self, key: str) -> bytes | None:
        """The encoded bytes of chunk ``key`` of a virtual array; None reads as fill.

        Raises
        ------
        KeyError
            If ``key`` is not a chunk key of a virtual array (check :meth:`is_virtual`).
        """
        found = await self.locate(key)
        if found is None:
            raise KeyError(key)
        buf = await self.read(found, default_buffer_prototype())
        return None if buf is None else buf.to_bytes()

    async def has_chunk(self, key: str) -> bool:
        """True if chunk ``key`` of a virtual array holds data (reads other than as absent).

        Raises
        ------
        KeyError
            If ``key`` is not a chunk key of a virtual array.
        """
        found = await self.locate(key)
        if found is None:
            raise KeyError(key)
        how, src, src_coords = await _plan(found)
        if how == "pass":
            return await src.chunk_exists(src_coords)
        return how != "fill" and await self.read(found, default_buffer_prototype()) is not None

    # -- listing ------------------------------------------------------------------------------

    async def prefixes(self) -> list[str]:
        """The paths of the virtual arrays in the store (found by listing it once if read-only)."""
        if self._prefixes is not None:
            return self._prefixes
        found = []
        async for key in self._stored_keys():
            head, _, name = key.rpartition("/")
            if name == DEFINITION_NAME and SOURCES_DIR not in head.split("/"):
                found.append(head)
        if self.store.read_only:
            self._prefixes = found
        return found

    async def _stored_keys(self) -> AsyncIterator[str]:
        manifest = getattr(self.store, "manifest", None)
        if manifest is not None:  # a ReferenceStore: its list() already holds the virtual keys
            for key in manifest.keys():
                yield key
        else:
            async for key in self.store.list():
                yield key

    async def list_keys(self, prefix: str = "") -> AsyncIterator[str]:
        """The chunk keys of every virtual array that some layer touches, starting with ``prefix``.

        A chunk no layer touches reads as fill and is not listed; a listed chunk whose
        sources hold only fill may still read as absent.
        """
        for path in await self.prefixes():
            base = f"{path}/" if path else ""
            if not (base.startswith(prefix) or prefix.startswith(base)):
                continue
            entry = await self._load(path)
            if entry is not None:
                for key in _chunk_keys(base, entry):
                    if key.startswith(prefix):
                        yield key

    async def list_dir(self, prefix: str) -> set[str]:
        """The names directly under ``prefix`` that the virtual chunk keys add (``/`` at the ends ignored)."""
        prefix = prefix.strip("/")
        base = f"{prefix}/" if prefix else ""
        names: set[str] = set()
        for path in await self.prefixes():
            inside = prefix.startswith(f"{path}/") if path else bool(prefix)
            if path != prefix and not inside:
                continue  # arrays below prefix are listed by the store itself (their metadata)
            entry = await self._load(path)
            if entry is None:
                continue
            keys = _chunk_keys(f"{path}/" if path else "", entry)
            if path == prefix and entry.metadata.zarr_format == 3:
                first = next(keys, None)  # every zarr 3 key shares its first part ("c")
                if first is not None:
                    names.add(first[len(base) :].split("/")[0])
                continue
            names.update(k[len(base) :].split("/")[0] for k in keys if k.startswith(base))
        return names


def _chunk_keys(base: str, entry: _Entry) -> Iterator[str]:
    """The keys (with ``base`` in front) of the chunks of ``entry`` that some layer touches."""
    encode = entry.metadata.encode_chunk_key
    for coords in touched_chunks(entry.array):
        yield base + encode(coords)


async def _plan(found: tuple[_Entry, tuple[int, ...]]) -> Plan:
    """The planner's ``(how, source, source coords)`` for a located chunk; ``"fill"`` past the array's end."""
    entry, coords = found
    v = entry.array
    if any(c * n >= s for c, n, s in zip(coords, v.chunks, v.shape)):
        return "fill", None, None
    return await entry.planner.plan(coords)


def _slice_bytes(data: bytes, byte_range: ByteRequest | None) -> bytes:
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest

    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return data[-byte_range.suffix :]
    raise TypeError(f"Unexpected byte_range, got {byte_range}.")


class VirtualStore(Store):
    """A read-only store that serves the virtual arrays of ``store`` on top of its keys.

    Every key that is not a virtual array's chunk is read from ``store`` unchanged.
    Listing adds the virtual chunk keys some layer touches (see
    :meth:`VirtualResolver.list_keys`). ``decoded_cache_bytes`` and ``options`` are
    those of :class:`VirtualResolver`.
    """

    supports_writes: bool = False
    supports_deletes: bool = False
    supports_partial_writes = False
    supports_listing = True
    #: It serves (and lists) virtual arrays, as a ``ReferenceStore`` of a manifest holding definitions does.
    serves_virtual_arrays = True

    def __init__(self, store: Store, *, decoded_cache_bytes: int = DEFAULT_CACHE_BYTES, **options: Any) -> None:
        super().__init__(read_only=True)
        self.store = store
        self.resolver = VirtualResolver(store, decoded_cache_bytes=decoded_cache_bytes, **options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VirtualStore) and other.store == self.store

    def __repr__(self) -> str:
        return f"VirtualStore({self.store!r})"

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        # docstring inherited
        found = await self.resolver.locate(key)
        if found is not None:
            return await self.resolver.read(found, prototype, byte_range)
        return await self.store.get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        # docstring inherited
        import asyncio

        return list(await asyncio.gather(*(self.get(k, prototype, br) for k, br in key_ranges)))

    async def exists(self, key: str) -> bool:
        # docstring inherited
        if await self.resolver.is_virtual(key):
            return await self.resolver.has_chunk(key)
        return await self.store.exists(key)

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()

    async def delete(self, key: str) -> None:
        self._check_writable()

    def _inner_lists_virtual(self) -> bool:
        """True if ``store`` lists the virtual chunk keys itself (a ReferenceStore serving them)."""
        return bool(getattr(self.store, "serves_virtual_arrays", False))

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited; virtual chunk keys are those some layer touches
        async for key in self.store.list():
            yield key
        if not self._inner_lists_virtual():
            async for key in self.resolver.list_keys():
                yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        async for key in self.store.list_prefix(prefix):
            yield key
        if not self._inner_lists_virtual():
            async for key in self.resolver.list_keys(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        names = {key async for key in self.store.list_dir(prefix)}
        if not self._inner_lists_virtual():
            names |= await self.resolver.list_dir(prefix)
        for name in sorted(names):
            yield name


def open_virtual(fo: Any, *, decoded_cache_bytes: int = DEFAULT_CACHE_BYTES, **options: Any) -> VirtualStore:
    """Open a manifest written by :func:`save_virtual` as a zarr store serving its virtual arrays.

    ``options`` go to :class:`refstore.ReferenceStore` (for the manifest itself and
    for ``{"manifest": ...}`` sources); ``decoded_cache_bytes`` to :class:`VirtualResolver`.
    Open with ``zarr.open_group(store, mode="r")``.
    """
    from refstore.virtual._spec import open_manifest_store

    store = open_manifest_store(fo, **options)
    return VirtualStore(
        store, decoded_cache_bytes=decoded_cache_bytes, open_manifest=open_manifest_store,
        **{**options, "url_policy": store.url_policy},
    )
