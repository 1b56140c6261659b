"""Serving virtual arrays as zarr: the chunk resolver, a wrapping store, saving and flattening."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import numpy as np
from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from refstore.errors import ManifestError
from refstore.virtual._array import VirtualArray, leaf_sources
from refstore.virtual._source import ZarrSource, chunk_key_parser, encode_chunk, encoding_of, same_value

#: The manifest key (under an array's prefix) that holds its virtual definition.
DEFINITION_NAME = "refstore.virtual.json"
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


async def plan_chunk(v: VirtualArray, encoding: str, coords: tuple[int, ...]) -> tuple[str, Any, Any]:
    """Decide how chunk ``coords`` of ``v`` is produced.

    Returns ``("fill", None, None)`` when no layer touches it, ``("pass", source,
    source_coords)`` when it is exactly one stored chunk of a source encoded like the
    virtual array (``encoding``, see :func:`encoding_of`), else ``("assemble", None, None)``.
    """
    box = [(c * n, min((c + 1) * n, s)) for c, n, s in zip(coords, v.chunks, v.shape)]
    hits = [
        layer for layer in v.layers
        if all(o < hi and lo < o + n for (lo, hi), o, n in zip(box, layer.origin, layer.shape))
    ]
    if not hits:
        return "fill", None, None
    layer = hits[-1]
    src = layer.source
    if not isinstance(src, ZarrSource):
        return "assemble", None, None
    if not all(o <= lo and hi <= o + n for (lo, hi), o, n in zip(box, layer.origin, layer.shape)):
        return "assemble", None, None
    mapped = layer.mapped()
    if layer.blocked or any(isinstance(m, int) for m in layer.src_map):
        return "assemble", None, None
    for d in range(v.ndim):
        if d not in mapped and v.chunks[d] != 1:
            return "assemble", None, None
    arr = await src.open_async()
    if encoding_of(arr) != encoding or not same_value(src.fill_value, v.fill_value):
        return "assemble", None, None
    src_coords = [0] * len(layer.src_map)
    src_chunks = tuple(arr.chunks)
    for d, (k, start, step) in mapped.items():
        if step != 1 or src_chunks[k] != v.chunks[d]:
            return "assemble", None, None
        first = start + box[d][0] - layer.origin[d]
        if first % src_chunks[k]:
            return "assemble", None, None
        src_coords[k] = first // src_chunks[k]
    return "pass", src, tuple(src_coords)


class VirtualResolver:
    """Produces the chunk bytes of the virtual arrays defined in a store.

    A virtual array is a zarr array whose prefix holds :data:`DEFINITION_NAME`; its
    metadata documents are ordinary keys, its chunk keys are made here: passed
    through from a source's stored chunk when aligned and identically encoded,
    else assembled (decoded from the sources, encoded with the array's codecs).

    Parameters
    ----------
    store
        The store holding the definitions (e.g. a :class:`refstore.ReferenceStore`).
    **options
        Passed to :class:`refstore.ReferenceStore` for ``{"manifest": ...}`` sources.
    """

    def __init__(self, store: Store, **options: Any) -> None:
        self.store = store
        self.options = options
        self._arrays: dict[str, tuple[VirtualArray, Any, str, Any] | None] = {}

    async def _load(self, prefix: str) -> tuple[VirtualArray, Any, str, Any] | None:
        if prefix in self._arrays:
            return self._arrays[prefix]
        proto = default_buffer_prototype()
        buf = await self.store.get(f"{prefix}/{DEFINITION_NAME}" if prefix else DEFINITION_NAME, proto)
        entry = None
        if buf is not None:
            v = VirtualArray.from_dict(json.loads(buf.to_bytes()), root=self.store, **self.options)
            docs = {}
            for name in ("zarr.json", ".zarray", ".zattrs"):
                b = await self.store.get(f"{prefix}/{name}" if prefix else name, proto)
                if b is not None:
                    docs[name] = b.to_bytes()
            if not docs:
                raise ManifestError(f"virtual array {prefix!r} has a definition but no zarr metadata")
            arr = await _open_meta(docs)
            entry = (v, docs, encoding_of(arr), chunk_key_parser(arr.metadata))
        self._arrays[prefix] = entry
        return entry

    async def _split(self, key: str) -> tuple[str, str, tuple[VirtualArray, Any, str, Any]] | None:
        parts = key.split("/")
        for cut in range(len(parts) - 1, -1, -1):
            prefix = "/".join(parts[:cut])
            if SOURCES_DIR in parts[:cut]:
                continue
            entry = await self._load(prefix)
            if entry is not None:
                return prefix, "/".join(parts[cut:]), entry
        return None

    async def is_virtual(self, key: str) -> bool:
        """True if ``key`` is a chunk key of a virtual array (served by :meth:`get_chunk`)."""
        parts = key.split("/")
        if parts[-1] in _METADATA or parts[-1] == DEFINITION_NAME or SOURCES_DIR in parts:
            return False  # never virtual; also keeps a store hook from recursing into itself
        found = await self._split(key)
        return found is not None and found[2][3](found[1]) is not None

    async def get_chunk(self, key: str) -> bytes | None:
        """The encoded bytes of chunk ``key`` of a virtual array; None reads as fill.

        Raises
        ------
        KeyError
            If ``key`` is not a chunk key of a virtual array (check :meth:`is_virtual`).
        """
        found = await self._split(key)
        coords = found[2][3](found[1]) if found else None
        if found is None or coords is None:
            raise KeyError(key)
        v, docs, encoding, _ = found[2]
        if any(c * n >= s for c, n, s in zip(coords, v.chunks, v.shape)):
            return None
        how, src, src_coords = await plan_chunk(v, encoding, coords)
        if how == "fill":
            return None
        if how == "pass":
            data = await src.get_chunk_bytes(src_coords)
            if data is not None or same_value(src.fill_value, v.fill_value):
                return data
        box = tuple(slice(c * n, min((c + 1) * n, s)) for c, n, s in zip(coords, v.chunks, v.shape))
        chunk = await v.read_async(box)
        return await encode_chunk(docs, coords, v.chunks, chunk)


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
    """

    supports_writes: bool = False
    supports_deletes: bool = False
    supports_partial_writes: bool = False
    supports_listing: bool = True

    def __init__(self, store: Store, **options: Any) -> None:
        super().__init__(read_only=True)
        self.store = store
        self.resolver = VirtualResolver(store, **options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VirtualStore) and other.store == self.store

    def __repr__(self) -> str:
        return f"VirtualStore({self.store!r})"

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        # docstring inherited
        if await self.resolver.is_virtual(key):
            data = await self.resolver.get_chunk(key)
            return None if data is None else prototype.buffer.from_bytes(_slice_bytes(data, byte_range))
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
            return await self.resolver.get_chunk(key) is not None
        return await self.store.exists(key)

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()

    async def delete(self, key: str) -> None:
        self._check_writable()

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited; virtual chunk keys are not listed
        async for key in self.store.list():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        async for key in self.store.list_prefix(prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        async for key in self.store.list_dir(prefix):
            yield key


def open_virtual(fo: Any, **options: Any) -> VirtualStore:
    """Open a manifest written by :func:`save_virtual` as a zarr store serving its virtual arrays.

    ``options`` go to :class:`refstore.ReferenceStore` (for the manifest itself and
    for ``{"manifest": ...}`` sources). Open with ``zarr.open_group(store, mode="r")``.
    """
    from refstore.store import ReferenceStore

    return VirtualStore(ReferenceStore(fo, **options), **options)


# -- saving ---------------------------------------------------------------------------------------


async def _entries(array: Any) -> list[tuple[str, Any]]:
    """``(relative key, bytes | Reference)`` for every stored key of a zarr array."""
    from refstore.manifest import Reference
    from refstore.store import ReferenceStore

    store, path = array.store_path.store, array.store_path.path
    prefix = f"{path}/" if path else ""
    keys = [k async for k in store.list_prefix(prefix)]
    out: list[tuple[str, Any]] = []
    proto = default_buffer_prototype()
    for key in keys:
        rel = key[len(prefix) :]
        if isinstance(store, ReferenceStore):
            out.append((rel, store.manifest.get(key)))
        elif type(store).__name__ == "LocalStore" and rel.rsplit("/", 1)[-1] not in _METADATA:
            full = os.path.join(str(store.root), key)
            out.append((rel, Reference("file://" + os.path.abspath(full), 0, os.path.getsize(full))))
        else:
            buf = await store.get(key, proto)
            if buf is not None:
                out.append((rel, buf.to_bytes()))
    return out


def _source_entry(src: ZarrSource, coords: tuple[int, ...]) -> Any:
    """The manifest entry (bytes or Reference) of one stored source chunk, or None."""
    from zarr.core.sync import sync

    from refstore.manifest import Reference
    from refstore.store import ReferenceStore

    arr = src.array
    store, path = arr.store_path.store, arr.store_path.path
    key = (f"{path}/" if path else "") + arr.metadata.encode_chunk_key(coords)
    if isinstance(store, ReferenceStore):
        return store.manifest.get(key)
    if type(store).__name__ == "LocalStore":
        full = os.path.join(str(store.root), key)
        return Reference("file://" + os.path.abspath(full), 0, os.path.getsize(full)) if os.path.exists(full) else None
    return sync(src.get_chunk_bytes(coords))


def _put_docs(manifest: Any, name: str, docs: Mapping[str, bytes]) -> None:
    for k, b in docs.items():
        manifest.set(f"{name}/{k}", b)


def _root_docs(zarr_format: int) -> dict[str, bytes]:
    if zarr_format == 2:
        return {".zgroup": b'{"zarr_format": 2}'}
    return {"zarr.json": json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()}


def save_virtual(
    arrays: Mapping[str, VirtualArray],
    out: str | None = None,
    *,
    flatten: bool = False,
    zarr_format: int | None = None,
) -> Any:
    """Write virtual arrays into one reference manifest: a zarr group with one array per name.

    Parameters
    ----------
    arrays
        ``{name: VirtualArray}``.
    out
        Where to save the manifest (``.json`` or parquet, see :meth:`refstore.Manifest.save`);
        None only returns it.
    flatten
        Write plain kerchunk references (no definition), readable by any kerchunk reader;
        raises :class:`refstore.ManifestError` if some chunk would need assembling.
    zarr_format
        Metadata format of the virtual arrays; None keeps the sources' when they share one
        encoding, else 3.

    Returns
    -------
    refstore.Manifest
        The manifest written. Open it with :func:`open_virtual` (or, once the store hook is
        installed, ``refstore.ReferenceStore``).

    Notes
    -----
    Sources are saved as references, not copied: a source read through a
    ``ReferenceStore`` contributes its references; a ``LocalStore`` source, ``file://``
    references to its chunk files; other stores (e.g. ``MemoryStore``) are inlined.
    They are embedded under ``<name>/.sources/<i>/`` and named ``{"path": ...}`` by the
    definition, unless the source has its own ``ref`` (e.g. loaded from a definition).
    """
    from zarr.core.sync import sync

    from refstore.manifest import Manifest

    if flatten:
        return _finish(globals()["flatten"](arrays, zarr_format=zarr_format), out)
    all_docs = _all_docs(arrays, zarr_format)
    fmt = _format_of(next(iter(all_docs.values()))) if all_docs else (zarr_format or 3)
    manifest = Manifest()
    _put_groups(manifest, arrays, fmt)
    for name, v in arrays.items():
        embedded: dict[int, str] = {}

        def ref(src: ZarrSource, name: str = name, embedded: dict[int, str] = embedded) -> dict[str, Any]:
            if src.ref is not None and "path" not in src.ref:
                return dict(src.ref)
            if id(src.array) not in embedded:
                path = f"{name}/{SOURCES_DIR}/{len(embedded)}"
                for rel, entry in sync(_entries(src.array)):
                    manifest.set(f"{path}/{rel}", entry)
                embedded[id(src.array)] = path
            return {"path": embedded[id(src.array)]}

        definition = v.to_dict(source_ref=ref)
        _put_docs(manifest, name, all_docs[name])
        manifest.set(f"{name}/{DEFINITION_NAME}", json.dumps(definition).encode())
    return _finish(manifest, out)


def _finish(manifest: Any, out: str | None) -> Any:
    if out is not None:
        manifest.save(out)
    return manifest


def _format_of(docs: Mapping[str, bytes]) -> int:
    return 3 if "zarr.json" in docs else 2


def _all_docs(arrays: Mapping[str, VirtualArray], zarr_format: int | None) -> dict[str, dict[str, bytes]]:
    """Metadata documents per array, all in one zarr format (3 when the sources' formats differ)."""
    for name in arrays:
        _check_name(name)
    docs = {name: v.encoding_docs(zarr_format) for name, v in arrays.items()}
    if len({_format_of(d) for d in docs.values()}) > 1:
        docs = {name: v.encoding_docs(3) for name, v in arrays.items()}
    return docs


def _put_groups(manifest: Any, arrays: Mapping[str, Any], zarr_format: int) -> None:
    """Group metadata for the root and every parent of the array names."""
    groups = {""}
    for name in arrays:
        parts = name.split("/")
        groups.update("/".join(parts[:k]) for k in range(1, len(parts)))
    for g in sorted(groups):
        for k, b in _root_docs(zarr_format).items():
            manifest.set(f"{g}/{k}" if g else k, b)


def _check_name(name: str) -> None:
    if not name or name.startswith("/") or name.endswith("/") or SOURCES_DIR in name.split("/"):
        raise ManifestError(f"save_virtual: invalid array name {name!r}")


def flatten(arrays: Mapping[str, VirtualArray], zarr_format: int | None = None) -> Any:
    """A plain kerchunk :class:`refstore.Manifest` for virtual arrays whose chunks all pass through.

    Raises
    ------
    refstore.ManifestError
        Naming the array and chunk that would need assembling.
    """
    from zarr.core.sync import sync

    from refstore.manifest import Manifest

    all_docs = _all_docs(arrays, zarr_format)
    manifest = Manifest()
    _put_groups(manifest, arrays, _format_of(next(iter(all_docs.values()))) if all_docs else 3)
    for name, v in arrays.items():
        docs = all_docs[name]
        arr = sync(_open_meta(docs))
        encoding = encoding_of(arr)
        if any(encoding_of(s.array) != encoding for s in leaf_sources(v)):
            raise ManifestError(
                f"cannot flatten {name!r}: its sources are encoded differently; save it "
                "without flatten=True (chunks are then assembled)"
            )
        _put_docs(manifest, name, docs)
        grid = [range(-(-s // c)) for s, c in zip(v.shape, v.chunks)]
        for coords in itertools.product(*grid):
            how, src, src_coords = sync(plan_chunk(v, encoding, tuple(coords)))
            if how == "fill":
                continue
            if how != "pass":
                raise ManifestError(
                    f"cannot flatten {name!r}: chunk {tuple(coords)} is not one aligned source chunk "
                    "(misaligned, cropped, strided, padded or nested source); save it without flatten=True"
                )
            entry = _source_entry(src, src_coords)
            if entry is not None:
                manifest.set(f"{name}/{arr.metadata.encode_chunk_key(tuple(coords))}", entry)
    return manifest
