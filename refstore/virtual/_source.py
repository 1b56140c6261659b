"""Sources of virtual arrays: zarr arrays opened lazily, their metadata, and chunk encoding."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype

#: Attributes compared between inputs because they change what the values mean.
CF_ATTRS = ("scale_factor", "add_offset", "_FillValue", "missing_value")
#: The zarr 2 attribute naming an array's dimensions (xarray's convention; zarr 3 has ``dimension_names``).
DIMENSIONS_ATTR = "_ARRAY_DIMENSIONS"


class ZarrSource:
    """A zarr array used as a virtual-array source, opened on first use.

    Parameters
    ----------
    array
        An open ``zarr.Array`` (from any store), or None with ``opener``.
    opener
        An async callable returning the ``zarr.AsyncArray`` (or ``zarr.Array``); awaited
        once, on first use.
    ref
        How a saved definition names this source (``{"path": ...}``, ``{"url": ..., ...}``),
        or None if it must be embedded when saved.
    """

    def __init__(
        self,
        array: Any = None,
        *,
        opener: Callable[[], Coroutine[Any, Any, Any]] | None = None,
        ref: dict[str, Any] | None = None,
    ) -> None:
        if array is None and opener is None:
            raise TypeError("ZarrSource needs an array or an opener")
        self._array = array
        self._opener = opener
        self._opening: asyncio.Task[Any] | None = None
        self._where: tuple[Any, str, Callable[[tuple[int, ...]], str]] | None = None
        self.ref = ref

    @property
    def array(self) -> Any:
        """The ``zarr.Array`` (opened now if it was not yet; do not call on zarr's loop)."""
        if self._array is None:
            from zarr.core.sync import sync

            sync(self.open_async())
        return self._array

    async def open_async(self) -> Any:
        """Open the source if it is not yet open, and return the ``zarr.Array``.

        Concurrent first calls (on one event loop) share one opening.
        """
        if self._array is not None:
            return self._array
        assert self._opener is not None
        loop = asyncio.get_running_loop()
        task = self._opening
        if task is None or task.get_loop() is not loop:
            task = self._opening = loop.create_task(self._opener())
        try:
            arr = await asyncio.shield(task)
        finally:
            if task.done() and self._opening is task:
                self._opening = None
        if self._array is None:
            self._array = arr if isinstance(arr, zarr.Array) else zarr.Array(arr)
        return self._array

    @property
    def metadata(self) -> Any:
        return self.array.metadata

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks)

    @property
    def fill_value(self) -> Any:
        return fill_of(self.array)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.array.attrs)

    @property
    def dimension_names(self) -> tuple[str | None, ...] | None:
        return dimension_names_of(self.array)

    async def read(self, selection: tuple[int | slice, ...]) -> np.ndarray:
        """Decode ``selection`` of the source with its own codecs."""
        arr = await self.open_async()
        out = await arr._async_array.getitem(selection)
        return np.asarray(out)

    async def get_chunk_bytes(self, coords: tuple[int, ...]) -> bytes | None:
        """The stored (encoded) bytes of one source chunk, or None if it is absent."""
        arr = await self.open_async()
        key = arr.metadata.encode_chunk_key(coords)
        buf = await (arr.store_path / key).get(default_buffer_prototype())
        return None if buf is None else buf.to_bytes()

    async def get_chunk_buffer(
        self, coords: tuple[int, ...], prototype: Any, byte_range: Any = None
    ) -> Any:
        """The stored bytes of one source chunk as its store returns them (a zarr ``Buffer``), or None."""
        if self._where is None:
            arr = await self.open_async()
            path = arr.store_path.path
            self._where = (arr.store_path.store, f"{path}/" if path else "", arr.metadata.encode_chunk_key)
        store, base, encode = self._where
        return await store.get(base + encode(coords), prototype, byte_range)

    async def chunk_exists(self, coords: tuple[int, ...]) -> bool:
        """True if the source stores chunk ``coords``."""
        arr = await self.open_async()
        return await arr.store_path.store.exists((arr.store_path / arr.metadata.encode_chunk_key(coords)).path)

    def __repr__(self) -> str:
        where = self.ref or self._array
        return f"ZarrSource({where!r})"


def fill_of(array: Any) -> Any:
    """The fill value of a zarr array as a numpy scalar of its dtype (None becomes 0)."""
    fv = array.fill_value
    dtype = np.dtype(array.dtype)
    if fv is None:
        return np.zeros((), dtype)[()]
    return np.asarray(fv).astype(dtype)[()]


def dimension_names_of(array: Any) -> tuple[str | None, ...] | None:
    """v3 ``dimension_names``, else v2 ``_ARRAY_DIMENSIONS``, else None."""
    names = getattr(array.metadata, "dimension_names", None)
    if names is not None:
        return tuple(names)
    dims = array.attrs.get(DIMENSIONS_ATTR)
    return tuple(dims) if dims is not None else None


def same_value(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN and compares arrays elementwise."""
    if a is None or b is None:
        return a is None and b is None
    try:
        aa, bb = np.asarray(a), np.asarray(b)
        if aa.shape != bb.shape:
            return False
        if aa.dtype.kind in "fc" or bb.dtype.kind in "fc":
            return bool(np.all((aa == bb) | (np.isnan(aa.astype("f8")) & np.isnan(bb.astype("f8")))))
        return bool(np.all(aa == bb))
    except (TypeError, ValueError):
        return bool(a == b)


def encoding_of(array: Any) -> str:
    """A canonical string of the codecs, dtype and order that decide how a stored chunk decodes.

    The fill value is left out (a v2 ``null`` and ``0`` decode stored chunks alike);
    pass-through compares fill values on its own, since they decide absent chunks.
    """
    d = array.metadata.to_dict()
    for k in ("shape", "chunks", "chunk_grid", "attributes", "dimension_names", "chunk_key_encoding",
              "dimension_separator", "fill_value"):
        d.pop(k, None)
    return json.dumps(d, sort_keys=True, default=str)


def is_sharded(array: Any) -> bool:
    """True if ``array`` (zarr 3) stores shards: its stored objects are not single chunks."""
    codecs = getattr(array.metadata, "codecs", ()) if array.metadata.zarr_format == 3 else ()
    return any(type(c).__name__ == "ShardingCodec" for c in codecs)


def chunk_key_parser(meta: Any) -> Callable[[str], tuple[int, ...] | None]:
    """A function from a chunk key (relative to the array) to its grid coordinates, or None."""
    ndim = len(meta.shape)
    if meta.zarr_format == 2:
        prefix, sep = "", getattr(meta, "dimension_separator", ".") or "."
        zero_d = "0"
    else:
        enc = meta.chunk_key_encoding
        sep = enc.separator
        prefix = "c" + sep if getattr(enc, "name", "default") == "default" else ""
        zero_d = "c" if prefix else "0"

    def parse(key: str) -> tuple[int, ...] | None:
        if ndim == 0:
            return () if key == zero_d else None
        if not key.startswith(prefix):
            return None
        parts = key[len(prefix) :].split(sep)
        if len(parts) != ndim or not all(p.isdigit() for p in parts):
            return None
        return tuple(int(p) for p in parts)

    return parse


def metadata_docs(
    like: Any | None,
    *,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: np.dtype[Any],
    fill_value: Any,
    attributes: dict[str, Any],
    dimension_names: tuple[str | None, ...] | None,
    zarr_format: int = 3,
) -> dict[str, bytes]:
    """The metadata documents (``zarr.json``, or ``.zarray`` + ``.zattrs``) of a virtual array.

    A ``fill_value`` of None is written as zarr 2's ``null`` (zarr 3 has no such value:
    0 of the dtype). Dimension names go in ``_ARRAY_DIMENSIONS`` for zarr 2 and in
    ``dimension_names`` for zarr 3, never in both. With ``like`` (a source ``zarr.Array``), its encoding (codecs, compressor, filters,
    order, dtype) is copied, so its chunks can pass through unchanged. Without it, the
    array is uncompressed: zarr v3 with the plain ``bytes`` codec (or v2 with no compressor).
    """
    proto = default_buffer_prototype()
    attributes = {k: v for k, v in attributes.items() if k != DIMENSIONS_ATTR}
    if like is not None:
        d = like.metadata.to_dict()
        d["shape"] = list(shape)
        d["attributes"] = dict(attributes)
        if fill_value is None and d["zarr_format"] == 2:
            d["fill_value"] = None
        else:
            d["fill_value"] = json_fill(np.asarray(0 if fill_value is None else fill_value).astype(dtype)[()])
        if d["zarr_format"] == 2:
            d["chunks"] = list(chunks)
            if dimension_names is not None and all(n is not None for n in dimension_names):
                d["attributes"]["_ARRAY_DIMENSIONS"] = list(dimension_names)
        else:
            d["chunk_grid"] = {"name": "regular", "configuration": {"chunk_shape": list(chunks)}}
            d["dimension_names"] = list(dimension_names) if dimension_names is not None else None
        meta = type(like.metadata).from_dict(d)
        return {k: v.to_bytes() for k, v in meta.to_buffer_dict(proto).items()}
    store = zarr.storage.MemoryStore()
    names = list(dimension_names) if dimension_names is not None and zarr_format == 3 else None
    attrs = dict(attributes)
    if zarr_format == 2 and dimension_names is not None and all(n is not None for n in dimension_names):
        attrs[DIMENSIONS_ATTR] = list(dimension_names)
    if fill_value is None and zarr_format == 3:
        fill_value = np.zeros((), dtype)[()]
    zarr.create_array(
        store,
        shape=shape,
        chunks=chunks,
        dtype=dtype,
        fill_value=fill_value,
        compressors=None,
        filters=None,
        zarr_format=zarr_format,  # type: ignore[arg-type]
        attributes=attrs,
        dimension_names=names,
        write_data=False,
    )
    return {k: v.to_bytes() for k, v in store._store_dict.items()}


class ChunkEncoder:
    """Encodes the chunks of one virtual array with the codecs its metadata names.

    Uncompressed arrays (zarr 3 with only the ``bytes`` codec, zarr 2 with no compressor
    and no filters) are encoded with numpy directly; others through zarr's codecs, by
    writing the chunk into a throwaway in-memory array built on the parsed metadata.
    Either way a chunk that is entirely fill encodes as None (zarr then reads it as fill).

    Parameters
    ----------
    docs
        The array's metadata documents (``zarr.json``, or ``.zarray`` and ``.zattrs``).
    array
        The same array opened (a ``zarr.AsyncArray`` over ``docs``).
    """

    def __init__(self, docs: dict[str, bytes], array: Any) -> None:
        self.docs = docs
        self.metadata = array.metadata
        self.chunks = tuple(array.chunks)
        self.fill = fill_of(zarr.Array(array) if isinstance(array, zarr.AsyncArray) else array)
        self._raw_dtype, self._order = _raw_layout(array)

    async def encode(self, coords: tuple[int, ...], data: np.ndarray) -> bytes | None:
        """The stored bytes of chunk ``coords`` holding ``data`` (clipped to the array's shape)."""
        if self._raw_dtype is None:
            return await self._encode_with_zarr(coords, data)
        if _all_equal(data, self.fill):
            return None
        if data.shape != self.chunks:
            full = np.full(self.chunks, self.fill, self._raw_dtype)
            full[tuple(slice(0, n) for n in data.shape)] = data
            data = full
        return np.asarray(data, dtype=self._raw_dtype).tobytes(order=self._order)

    async def _encode_with_zarr(self, coords: tuple[int, ...], data: np.ndarray) -> bytes | None:
        from zarr.core.array import AsyncArray
        from zarr.storage import MemoryStore, StorePath

        store = MemoryStore()
        arr = AsyncArray(self.metadata, StorePath(store))
        sel = tuple(slice(c * n, c * n + s) for c, n, s in zip(coords, self.chunks, data.shape))
        await arr.setitem(sel, data)
        buf = store._store_dict.get(self.metadata.encode_chunk_key(coords))
        return None if buf is None else buf.to_bytes()


def _raw_layout(array: Any) -> tuple[np.dtype[Any] | None, Literal["C", "F"]]:
    """``(stored dtype, order)`` when ``array``'s chunks are its values' plain bytes, else ``(None, "C")``."""
    meta = array.metadata
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "biufc":
        return None, "C"
    if meta.zarr_format == 2:
        if meta.compressor is not None or meta.filters:
            return None, "C"
        native = getattr(meta.dtype, "to_native_dtype", None)
        stored = np.dtype(native()) if callable(native) else np.dtype(meta.dtype)
        return stored, "F" if meta.order == "F" else "C"
    codecs = tuple(meta.codecs)
    if len(codecs) != 1 or type(codecs[0]).__name__ != "BytesCodec":
        return None, "C"
    endian = getattr(codecs[0].endian, "value", None)
    return dtype.newbyteorder(">" if endian == "big" else "<"), "C"


def _all_equal(data: np.ndarray, value: Any) -> bool:
    """True if every element of ``data`` equals ``value`` (NaN equal to NaN)."""
    if data.dtype.kind in "fc" and np.isnan(value):
        return bool(np.isnan(data).all())
    return bool((data == value).all())


def json_fill(value: Any) -> Any:
    """A fill value as zarr writes it in JSON (NaN and infinities as strings)."""
    v = np.asarray(value)[()]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        if math.isnan(f):
            return "NaN"
        if math.isinf(f):
            return "Infinity" if f > 0 else "-Infinity"
        return f
    if isinstance(v, (np.complexfloating, complex)):
        return [json_fill(v.real), json_fill(v.imag)]
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (np.bytes_, bytes)):
        return v.decode("latin1")
    return v.item() if hasattr(v, "item") else v


def xarray_fill_attr(value: Any) -> Any:
    """``value`` as xarray writes a ``_FillValue`` attribute in zarr 3 (and reads it back).

    Floats are the base64 of a little-endian float64, complex numbers a pair of them;
    integers and booleans are plain JSON (xarray's ``FillValueCoder``).
    """
    import base64
    import struct

    v = np.asarray(value)[()]

    def b64(f: float) -> str:
        return base64.standard_b64encode(struct.pack("<d", f)).decode()

    if isinstance(v, np.floating):
        return b64(float(v))
    if isinstance(v, np.complexfloating):
        return [b64(float(v.real)), b64(float(v.imag))]
    return json_fill(v)


def nbytes_of(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    return math.prod(shape) * dtype.itemsize
