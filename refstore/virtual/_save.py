"""Saving virtual arrays into reference manifests (definition + embedded sources), and flattening."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Mapping
from typing import Any

from zarr.core.buffer import default_buffer_prototype

from refstore.errors import ManifestError
from refstore.virtual._array import VirtualArray, leaf_sources
from refstore.virtual._plan import ChunkPlanner
from refstore.virtual._source import ZarrSource, encoding_of
from refstore.virtual._store import _METADATA, DEFINITION_NAME, SOURCES_DIR, _open_meta


async def stored_entry(store: Any, key: str) -> Any:
    """The manifest entry of ``key`` of a zarr store: a Reference, inline bytes, or None if absent.

    A refstore store gives its manifest's entry; a ``LocalStore`` a ``file://`` reference
    to the file; a remote fsspec store (HTTP, S3, ...) a reference to the whole object;
    any other store (e.g. a ``MemoryStore``) the bytes themselves.
    """
    from zarr.storage import FsspecStore, LocalStore

    from refstore.manifest import Manifest, Reference

    found = getattr(store, "manifest", None)
    if isinstance(found, Manifest):  # refstore's stores
        return found.get(key)
    if isinstance(store, LocalStore):
        full = os.path.abspath(os.path.join(str(store.root), key))  # noqa: ASYNC240 - string work only
        try:
            size = await asyncio.to_thread(os.path.getsize, full)
        except FileNotFoundError:
            return None
        return Reference("file://" + full, 0, size)
    if isinstance(store, FsspecStore) and _remote(store):
        if not await store.exists(key):
            return None
        return Reference(store.fs.unstrip_protocol(f"{store.path.rstrip('/')}/{key}"), 0, None)
    buf = await store.get(key, default_buffer_prototype())
    return None if buf is None else buf.to_bytes()


def _remote(store: Any) -> bool:
    """True if an fsspec store reads objects by URL (not from memory)."""
    protocol = store.fs.protocol
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return not ({"memory", "reference"} & set(protocols))


async def _entries(array: Any) -> list[tuple[str, Any]]:
    """``(relative key, bytes | Reference)`` for every stored key of a zarr array.

    Keys are listed from the store, except on remote fsspec stores (HTTP cannot list):
    there the metadata documents and the chunk keys of the array's grid are tried.
    """
    from zarr.storage import FsspecStore

    store, path = array.store_path.store, array.store_path.path
    prefix = f"{path}/" if path else ""
    if isinstance(store, FsspecStore) and _remote(store):
        meta = array.metadata
        grid = [range(-(-s // c)) for s, c in zip(array.shape, array.chunks)]
        rels = sorted(_METADATA) + [meta.encode_chunk_key(tuple(c)) for c in itertools.product(*grid)]
        keys = [prefix + rel for rel in rels]
    else:
        keys = [k async for k in store.list_prefix(prefix)]
    proto = default_buffer_prototype()

    async def one(key: str) -> tuple[str, Any]:
        rel = key[len(prefix) :]
        if rel.rsplit("/", 1)[-1] in _METADATA:
            buf = await store.get(key, proto)
            return rel, None if buf is None else buf.to_bytes()
        return rel, await stored_entry(store, key)

    found = []
    for start in range(0, len(keys), 64):  # a few requests at a time on remote stores
        found += await asyncio.gather(*(one(k) for k in keys[start : start + 64]))
    return [(rel, entry) for rel, entry in found if entry is not None]


async def source_entry(src: ZarrSource, coords: tuple[int, ...]) -> Any:
    """The manifest entry (bytes or Reference) of one stored source chunk, or None."""
    arr = await src.open_async()
    path = arr.store_path.path
    return await stored_entry(arr.store_path.store, (f"{path}/" if path else "") + arr.metadata.encode_chunk_key(coords))


def _source_entry(src: ZarrSource, coords: tuple[int, ...]) -> Any:
    """:func:`source_entry`, from outside zarr's event loop."""
    from zarr.core.sync import sync

    return sync(source_entry(src, coords))


def _put_docs(manifest: Any, name: str, docs: Mapping[str, bytes]) -> None:
    for k, b in docs.items():
        manifest.set(f"{name}/{k}", b)


def _group_docs(zarr_format: int, attrs: Mapping[str, Any] | None = None) -> dict[str, bytes]:
    if zarr_format == 2:
        docs = {".zgroup": b'{"zarr_format": 2}'}
        if attrs:
            docs[".zattrs"] = json.dumps(dict(attrs)).encode()
        return docs
    return {"zarr.json": json.dumps({"zarr_format": 3, "node_type": "group", "attributes": dict(attrs or {})}).encode()}


def _is_zarr_array(a: Any) -> bool:
    import zarr

    return isinstance(a, (zarr.Array, zarr.AsyncArray))


def _plain_docs(array: Any) -> dict[str, bytes]:
    """The metadata documents of a zarr array, from its metadata (which may differ from its store's)."""
    proto = default_buffer_prototype()
    return {k: b.to_bytes() for k, b in array.metadata.to_buffer_dict(proto).items()}


def _put_plain(manifest: Any, name: str, array: Any, docs: Mapping[str, bytes]) -> None:
    """A plain zarr array under ``name``: ``docs`` and the entries of its stored chunks."""
    from zarr.core.sync import sync

    _put_docs(manifest, name, docs)
    for rel, entry in sync(_entries(array)):
        if rel.rsplit("/", 1)[-1] not in _METADATA:
            manifest.set(f"{name}/{rel}", entry)


def save_virtual(
    arrays: Mapping[str, Any],
    out: str | None = None,
    *,
    flatten: bool = False,
    zarr_format: int | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """Write virtual arrays into one reference manifest: a zarr group with one array per name.

    Parameters
    ----------
    arrays
        ``{name: VirtualArray or zarr.Array}``. A plain zarr array is saved as itself:
        its metadata and its chunks' references (see Notes), with no definition; one in
        another zarr format than the others is saved as a virtual array over it, so
        its metadata can be converted.
    out
        Where to save the manifest (``.json`` or parquet, see :meth:`refstore.Manifest.save`);
        None only returns it.
    flatten
        Write plain kerchunk references (no definition), readable by any kerchunk reader;
        raises :class:`refstore.ManifestError` if some chunk would need assembling.
    zarr_format
        Metadata format of the arrays; None keeps the sources' when they all share one,
        else 3.
    attrs
        Attributes of the root group (e.g. a dataset's global attributes).

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
    from refstore.manifest import Manifest

    if flatten:
        return _finish(globals()["flatten"](arrays, zarr_format=zarr_format, attrs=attrs), out, arrays)
    arrays, all_docs = _all_docs(arrays, zarr_format)
    fmt = _format_of(next(iter(all_docs.values()))) if all_docs else (zarr_format or 3)
    manifest = Manifest()
    _put_groups(manifest, arrays, fmt, attrs)
    for name, v in arrays.items():
        if _is_zarr_array(v):
            _put_plain(manifest, name, v, all_docs[name])
        else:
            put_virtual(manifest, name, v, all_docs[name], source_docs_in_runs=is_parquet(out))
    return _finish(manifest, out, arrays)


def is_parquet(out: str | None) -> bool:
    """True if ``out`` names a parquet reference directory (what :meth:`refstore.Manifest.save` writes there)."""
    return out is not None and out.rstrip("/").lower().endswith((".parq", ".parquet"))


def put_virtual(
    manifest: Any, name: str, v: VirtualArray, docs: Mapping[str, bytes], *, source_docs_in_runs: bool = False
) -> None:
    """Virtual array ``v`` under ``name``: metadata ``docs``, its definition, and its sources embedded.

    Consecutive whole sources (a concatenation's or a stack's inputs) are written as runs
    (:mod:`refstore.virtual._runs`, definition version 2): their shared metadata once in
    the definition, none under their ``.sources/<i>/`` unless ``source_docs_in_runs``
    (the parquet layout holds chunk keys only of arrays with metadata; readers use the
    run's). A definition without runs stays version 1, readable by earlier refstore versions.
    """
    from zarr.core.sync import sync

    from refstore.virtual._runs import pack_runs
    from refstore.virtual._spec import RUNS_VERSION

    embedded: dict[int, str] = {}
    source_docs: dict[str, dict[str, bytes]] = {}

    def ref(src: ZarrSource) -> dict[str, Any]:
        if src.ref is not None and set(src.ref) != {"path"}:  # names its own store (a "path" alone is ours)
            return dict(src.ref)
        if id(src.array) not in embedded:
            path = f"{name}/{SOURCES_DIR}/{len(embedded)}"
            meta: dict[str, bytes] = {}
            for rel, entry in sync(_entries(src.array)):
                if rel in _METADATA and isinstance(entry, bytes):
                    meta[rel] = entry
                else:
                    manifest.set(f"{path}/{rel}", entry)
            # a source its store keeps no documents for (one of a run): from its parsed metadata
            source_docs[path] = meta or _plain_docs(src.array)
            embedded[id(src.array)] = path
        return {"path": embedded[id(src.array)]}

    definition = v.to_dict(source_ref=ref)
    layers, in_runs = pack_runs(definition["layers"], v.ndim, source_docs.get)
    if in_runs:
        definition["layers"] = layers
        definition["refstore_virtual"] = RUNS_VERSION
    for path, meta in source_docs.items():
        if source_docs_in_runs or path not in in_runs:
            _put_docs(manifest, path, meta)
    _put_docs(manifest, name, docs)
    manifest.set(f"{name}/{DEFINITION_NAME}", json.dumps(definition).encode())


def _finish(manifest: Any, out: str | None, arrays: Mapping[str, Any]) -> Any:
    _carry_sources(manifest, arrays)
    if out is not None:
        manifest.save(out)
    return manifest


def _carry_sources(manifest: Any, arrays: Mapping[str, Any]) -> None:
    """Give *manifest* the recorded identity of each source URL it names: from the manifests of the
    stores its arrays read (a ``ReferenceStore``'s), else a ``stat`` of a local file."""
    from refstore.manifest import Manifest
    from refstore.manifest._sources import record_sources

    stores = []
    for v in arrays.values():
        if _is_zarr_array(v):
            stores.append(v.store_path.store)
        else:
            stores += [src.array.store_path.store for src in leaf_sources(v)]
    urls = set(manifest.urls)
    for store in stores:
        found = getattr(store, "manifest", None)
        if isinstance(found, Manifest) and found.sources:
            for url, ident in found.sources.items():
                if url in urls and url not in manifest.sources:
                    manifest.sources[url] = ident
    record_sources(manifest)


def _format_of(docs: Mapping[str, bytes]) -> int:
    return 3 if "zarr.json" in docs else 2


def _all_docs(
    arrays: Mapping[str, Any], zarr_format: int | None, copy_encoding: bool | None = None
) -> tuple[dict[str, Any], dict[str, dict[str, bytes]]]:
    """The arrays to save and their metadata documents, all in one zarr format.

    The format is ``zarr_format``, else the arrays' when they all share one, else 3.
    A plain zarr array in another format is replaced by a virtual array over it (whose
    metadata is converted); a zero-dimensional one cannot be, and is refused.
    ``copy_encoding`` is that of :meth:`VirtualArray.encoding_docs`.
    """
    from refstore.virtual._array import concat

    for name, v in arrays.items():
        _check_name(name)
        if not (_is_zarr_array(v) or isinstance(v, VirtualArray)):
            raise TypeError(f"save_virtual: array {name!r} must be a VirtualArray or a zarr array, got {type(v).__name__}")
    arrays = {name: _as_savable(v) for name, v in arrays.items()}

    def docs_of(v: Any, fmt: int | None) -> dict[str, bytes]:
        if _is_zarr_array(v):
            return _plain_docs(v)
        return v.encoding_docs(fmt, copy_encoding=copy_encoding)

    docs = {name: docs_of(v, zarr_format) for name, v in arrays.items()}
    formats = {_format_of(d) for d in docs.values()}
    if len(formats) > 1 or (zarr_format is not None and formats != {zarr_format}):
        target = zarr_format or 3
        converted: dict[str, Any] = {}
        for name, v in arrays.items():
            if _is_zarr_array(v) and _format_of(docs[name]) != target:
                if not v.ndim:
                    raise ManifestError(
                        f"save_virtual: zero-dimensional array {name!r} is zarr {_format_of(docs[name])} and "
                        f"cannot be converted to zarr {target}; pass zarr_format={_format_of(docs[name])}"
                    )
                v = concat([_zarr_array(v)], axis=0)
            converted[name] = v
        arrays = converted
        docs = {name: docs_of(v, target) for name, v in arrays.items()}
    return dict(arrays), docs


def _zarr_array(v: Any) -> Any:
    import zarr

    return v if isinstance(v, zarr.Array) else zarr.Array(v)


def _as_savable(v: Any) -> Any:
    """A VirtualArray as it is; a zarr array as a ``zarr.Array``, or as the virtual array its store serves.

    A zarr array served as a virtual array by its store has a definition whose sources
    are named relative to that store: its layers are saved (sources embedded), not its keys.
    """
    from refstore.virtual._spec import served_virtual

    if isinstance(v, VirtualArray):
        return v
    arr = _zarr_array(v)
    return served_virtual(arr) or arr


def _put_groups(
    manifest: Any, arrays: Mapping[str, Any], zarr_format: int, attrs: Mapping[str, Any] | None = None
) -> None:
    """Group metadata for the root (with ``attrs``) and every parent of the array names."""
    groups = {""}
    for name in arrays:
        parts = name.split("/")
        groups.update("/".join(parts[:k]) for k in range(1, len(parts)))
    for g in sorted(groups):
        for k, b in _group_docs(zarr_format, attrs if not g else None).items():
            manifest.set(f"{g}/{k}" if g else k, b)


def _check_name(name: str) -> None:
    if not name or name.startswith("/") or name.endswith("/") or SOURCES_DIR in name.split("/"):
        raise ManifestError(f"save_virtual: invalid array name {name!r}")


def flatten(
    arrays: Mapping[str, Any], zarr_format: int | None = None, attrs: Mapping[str, Any] | None = None
) -> Any:
    """A plain kerchunk :class:`refstore.Manifest` for virtual arrays whose chunks all pass through.

    Plain zarr arrays among ``arrays`` are copied as they are (see :func:`save_virtual`);
    ``attrs`` are the root group's attributes.

    Raises
    ------
    refstore.ManifestError
        Naming the array and chunk that would need assembling.
    """
    from zarr.core.sync import sync

    from refstore.manifest import Manifest

    arrays, all_docs = _all_docs(arrays, zarr_format, copy_encoding=True)
    manifest = Manifest()
    _put_groups(manifest, arrays, _format_of(next(iter(all_docs.values()))) if all_docs else 3, attrs)
    for name, v in arrays.items():
        if _is_zarr_array(v):
            _put_plain(manifest, name, v, all_docs[name])
            continue
        docs = all_docs[name]
        arr = sync(_open_meta(docs))
        encoding = encoding_of(arr)
        if any(encoding_of(s.array) != encoding for s in leaf_sources(v)):
            raise ManifestError(
                f"cannot flatten {name!r}: its sources are encoded differently; save it "
                "without flatten=True (chunks are then assembled)"
            )
        _put_docs(manifest, name, docs)
        planner = ChunkPlanner(v, encoding)
        grid = [range(-(-s // c)) for s, c in zip(v.shape, v.chunks)]
        for coords in itertools.product(*grid):
            how, src, src_coords = sync(planner.plan(tuple(coords)))
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
