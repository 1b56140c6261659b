"""Flat where representable: kerchunk references where chunks align, small coordinates inlined,
virtual arrays only for the variables that need them."""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from refstore.errors import NotRepresentable
from refstore.virtual._array import VirtualArray, leaf_sources
from refstore.virtual._plan import ChunkPlanner
from refstore.virtual._save import (
    _all_docs,
    _finish,
    _format_of,
    _is_zarr_array,
    _put_docs,
    _put_groups,
    _put_plain,
    is_parquet,
    put_virtual,
    source_entry,
)
from refstore.virtual._source import ChunkEncoder, encoding_of, is_sharded, same_value
from refstore.virtual._store import _open_meta

#: How the arrays of a combined result are written (``layout=``).
LAYOUTS = ("auto", "kerchunk", "virtual")

#: Coordinates up to this many bytes (decoded) are inlined where they cannot be references.
DEFAULT_INLINE_LIMIT = 4 * 2**20

REFERENCES, INLINED, VIRTUAL = "references", "inlined", "virtual"


@dataclass(frozen=True)
class ArrayLayout:
    """How one array of a result was written.

    Attributes
    ----------
    name
        The array.
    how
        ``"references"`` (plain kerchunk references to the sources' chunks),
        ``"inlined"`` (values stored in the manifest, as kerchunk's ``MultiZarrToZarr``
        stores concatenated coordinates) or ``"virtual"`` (a virtual array definition,
        read by refstore only).
    reason
        Why it is not references (empty for references).
    nbytes
        The decoded size of the array.
    """

    name: str
    how: str
    reason: str = ""
    nbytes: int = 0


def save_layout(
    arrays: Mapping[str, Any],
    out: str | None = None,
    *,
    layout: str = "auto",
    inline: Collection[str] = (),
    always_inline: Collection[str] = (),
    inline_limit: int = DEFAULT_INLINE_LIMIT,
    zarr_format: int | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> tuple[Any, list[ArrayLayout]]:
    """Write ``arrays`` into one manifest, as plain kerchunk references wherever they can be.

    Parameters
    ----------
    arrays
        ``{name: VirtualArray or zarr.Array}`` as for :func:`~refstore.virtual.save_virtual`.
    out
        Where to save (JSON, or parquet for ``.parq``/``.parquet``); None only returns it.
    layout
        ``"auto"``: references for every array whose chunks each are one aligned source
        chunk, inlined values for coordinates (``inline``) that are not, virtual arrays
        for the rest. ``"kerchunk"``: the same, but an array that would be virtual is
        refused (:class:`~refstore.errors.NotRepresentable`, naming it and why) before
        anything is written. ``"virtual"``: every virtual array as a definition (as
        :func:`~refstore.virtual.save_virtual`).
    inline
        Arrays (coordinates) to inline when they cannot be references.
    always_inline
        Arrays to inline even when they could be references (the concatenated
        coordinate, as ``MultiZarrToZarr`` does: xarray reads it whole on opening).
    inline_limit
        Only arrays of at most this many bytes (decoded) are inlined.
    zarr_format, attrs
        As for :func:`~refstore.virtual.save_virtual`.

    Returns
    -------
    (refstore.Manifest, list of ArrayLayout)
        The manifest, and how each array was written (in the order of ``arrays``).
    """
    from zarr.core.sync import sync

    from refstore.manifest import Manifest
    from refstore.virtual._save import save_virtual

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "virtual":
        manifest = save_virtual(arrays, out, zarr_format=zarr_format, attrs=attrs)
        return manifest, [
            ArrayLayout(name, REFERENCES if _is_zarr_array(v) else VIRTUAL, "" if _is_zarr_array(v) else "asked for",
                        _nbytes(v))
            for name, v in arrays.items()
        ]
    arrays, flat_docs = _all_docs(arrays, zarr_format, copy_encoding=True)
    fmt = zarr_format or (_format_of(next(iter(flat_docs.values()))) if flat_docs else 3)
    # decide every array before writing anything
    plans: dict[str, tuple[ArrayLayout, Any]] = {}
    for name, v in arrays.items():
        size = _nbytes(v)
        if _is_zarr_array(v):
            plans[name] = (ArrayLayout(name, REFERENCES, nbytes=size), None)
            continue
        if name in always_inline and size <= inline_limit:
            plans[name] = (ArrayLayout(name, INLINED, "the concatenated coordinate", size), None)
            continue
        entries, reason = sync(_flat_entries(v, flat_docs[name]))
        if entries is not None:
            plans[name] = (ArrayLayout(name, REFERENCES, nbytes=size), entries)
        elif name in inline and size <= inline_limit:
            plans[name] = (ArrayLayout(name, INLINED, reason, size), None)
        else:
            if name in inline:
                reason += f"; larger ({size} bytes) than the inline limit ({inline_limit} bytes)"
            plans[name] = (ArrayLayout(name, VIRTUAL, reason, size), None)
    if layout == "kerchunk":
        for name, (plan, _) in plans.items():
            if plan.how == VIRTUAL:
                raise NotRepresentable(
                    f"variable {name!r} cannot be written as plain kerchunk references: {plan.reason}. "
                    "Leave out kerchunk-only output (layout='kerchunk', --kerchunk-only, --flatten) to save it as a virtual "
                    "array that refstore reads, or rechunk the inputs so chunks fall on input boundaries"
                )
    manifest = Manifest()
    _put_groups(manifest, arrays, fmt, attrs)
    for name, v in arrays.items():
        plan, entries = plans[name]
        if _is_zarr_array(v):
            _put_plain(manifest, name, v, flat_docs[name])
        elif plan.how == REFERENCES:
            _put_docs(manifest, name, flat_docs[name])
            for key, entry in entries.items():
                manifest.set(f"{name}/{key}", entry)
        elif plan.how == INLINED:
            for key, data in _inlined(v, fmt).items():
                manifest.set(f"{name}/{key}", data)
        else:
            _, docs = _all_docs({name: v}, fmt)
            put_virtual(manifest, name, v, docs[name], source_docs_in_runs=is_parquet(out))
    return _finish(manifest, out, arrays), [plan for plan, _ in plans.values()]


def _nbytes(v: Any) -> int:
    return math.prod(v.shape) * np.dtype(v.dtype).itemsize


async def _flat_entries(v: VirtualArray, docs: Mapping[str, bytes]) -> tuple[dict[str, Any] | None, str]:
    """``({chunk key: entry}, "")`` if every chunk of ``v`` is one aligned source chunk (or untouched),
    else ``(None, why not)``."""
    arr = await _open_meta(docs)
    encoding = encoding_of(arr)
    for src in leaf_sources(v):
        leaf = await src.open_async()
        if leaf.metadata.zarr_format != arr.metadata.zarr_format:
            return None, (f"its inputs are zarr {leaf.metadata.zarr_format} and the result zarr "
                          f"{arr.metadata.zarr_format}, so their chunks cannot be referenced as they are")
        if encoding_of(leaf) != encoding:
            return None, "its inputs are encoded differently (codecs, compressor, filters or dtype)"
    planner = ChunkPlanner(v, encoding)
    entries: dict[str, Any] = {}
    grid = [range(-(-s // c)) for s, c in zip(v.shape, v.chunks)]
    for coords in itertools.product(*grid):
        how, src, src_coords = await planner.plan(tuple(coords))
        if how == "fill":
            continue
        if how != "pass":
            return None, await _why(v, planner, tuple(coords))
        entry = await source_entry(src, src_coords)
        if entry is not None:
            entries[arr.metadata.encode_chunk_key(tuple(coords))] = entry
    return entries, ""


async def _why(v: VirtualArray, planner: ChunkPlanner, coords: tuple[int, ...]) -> str:
    """Why chunk ``coords`` of ``v`` is not one aligned source chunk, in words."""
    names = v.dimension_names or (None,) * v.ndim

    def dim(d: int) -> str:
        return repr(names[d]) if names[d] is not None else f"axis {d}"

    box = [(c * n, min((c + 1) * n, s)) for c, n, s in zip(coords, v.chunks, v.shape)]
    where = f"chunk {coords} ({', '.join(f'{dim(d)} {lo}:{hi}' for d, (lo, hi) in enumerate(box))})"
    hits = planner.hits(coords)
    layer = v.layers[hits[-1]]
    for d, ((lo, hi), o, n) in enumerate(zip(box, layer.origin, layer.shape)):
        if lo < o or hi > o + n:
            edge = o if lo < o else o + n
            return (f"chunk {coords[d]} of {dim(d)} ({box[d][0]}:{box[d][1]}) spans two inputs, which meet "
                    f"at index {edge}: chunks of {v.chunks[d]} do not fall on the input boundaries")
    src = layer.source
    if isinstance(src, VirtualArray) or layer.blocked:
        return f"{where} comes from a nested or blocked virtual array"
    arr = await src.open_async()
    if is_sharded(arr):
        return "an input is sharded: its stored objects are shards of many chunks, not single chunks"
    if not same_value(src.fill_value, v.fill_value):
        return f"an input's fill value ({src.fill_value!r}) differs from the result's ({v.fill_value!r})"
    mapped = layer.mapped()
    for d, (k, start, step) in mapped.items():
        if step != 1:
            return f"an input is read with a stride along {dim(d)}"
        if arr.chunks[k] != v.chunks[d]:
            return (f"an input is chunked {tuple(arr.chunks)}, the result {v.chunks}: {arr.chunks[k]} and "
                    f"{v.chunks[d]} along {dim(d)}")
        first = start + box[d][0] - layer.origin[d]
        if first % arr.chunks[k]:
            return (f"{where} starts inside a chunk of its input (input index {first} of {dim(d)}, chunk "
                    f"length {arr.chunks[k]})")
    return f"{where} is not one stored chunk of an input"


def _inlined(v: VirtualArray, zarr_format: int) -> dict[str, bytes]:
    """The metadata documents and the one chunk of ``v`` read whole, as kerchunk inlines coordinates.

    The encoding is the sources' when they share one (else uncompressed).
    """
    from zarr.core.sync import sync

    whole = VirtualArray(
        v.shape, v.dtype, tuple(max(1, n) for n in v.shape), v.declared_fill, v.layers,
        attrs=v.attrs, dimension_names=v.dimension_names,
    )
    docs = whole.encoding_docs(zarr_format, copy_encoding=True)

    async def encode() -> tuple[str, bytes | None]:
        arr = await _open_meta(docs)
        zeros = (0,) * v.ndim
        data = np.asarray(await v.read_async())
        return arr.metadata.encode_chunk_key(zeros), await ChunkEncoder(dict(docs), arr).encode(zeros, data)

    key, chunk = sync(encode())
    return {**docs, key: chunk} if chunk is not None else dict(docs)
