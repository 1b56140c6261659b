"""VirtualArray: a lazy array made of layers of zarr arrays, plus concat, stack and pad."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from refstore.errors import IncompatibleSources, ManifestError
from refstore.virtual._cache import DecodedChunkCache, read_cached
from refstore.virtual._index import (
    Item,
    Layer,
    Piece,
    check_axis,
    normalize_index,
    shift_layer,
    view_layer,
)
from refstore.virtual._source import (
    CF_ATTRS,
    DIMENSIONS_ATTR,
    ZarrSource,
    dimension_names_of,
    fill_of,
    is_sharded,
    same_value,
    xarray_fill_attr,
)


class VirtualArray:
    """A lazy array assembled from layers of zarr arrays (or other virtual arrays).

    Build one with :func:`refstore.concat`, :func:`refstore.stack`, :func:`refstore.pad`,
    or load a definition with :meth:`from_dict`.

    Indexing: ``v[...]`` (a bare Ellipsis) reads the whole array and returns numpy
    data; any other basic index (ints, slices with positive steps) returns a lazy
    *view*, itself a ``VirtualArray``: ``v[10:20, ::2][...]`` reads only that window.
    ``np.asarray(v)`` and :meth:`read` also materialize.

    Parameters
    ----------
    shape, dtype, chunks, fill_value
        The virtual array's own shape, dtype, chunk grid and fill value (read where
        no layer covers). A fill value of None is zarr 2's ``null``: reads give 0 where
        nothing is stored, and zarr 2 metadata says ``null`` (xarray then masks nothing;
        zarr 3 metadata, which needs a value, says 0). :attr:`no_fill` tells which.
    layers
        Later layers win where they overlap earlier ones.
    attrs, dimension_names
        Metadata of the virtual array.
    encoding
        Metadata documents (``zarr.json`` or ``.zarray``) whose codecs the virtual
        array uses when served as zarr; None means "copy the first source's encoding
        if all sources share it, else plain bytes".
    """

    def __init__(
        self,
        shape: Sequence[int],
        dtype: Any,
        chunks: Sequence[int],
        fill_value: Any,
        layers: Sequence[Layer],
        *,
        attrs: dict[str, Any] | None = None,
        dimension_names: Sequence[str | None] | None = None,
        encoding: dict[str, bytes] | None = None,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.chunks = tuple(int(c) for c in chunks)
        #: True when the array declares no fill value (zarr 2 ``null``); ``fill_value`` is then 0
        self.no_fill = fill_value is None
        self.fill_value = np.asarray(0 if fill_value is None else fill_value).astype(self.dtype)[()]
        # a definition's runs keep their layers unmade until asked for (refstore.virtual._runs.Layers)
        self.layers: Sequence[Layer] = layers if _is_lazy(layers) else tuple(layers)
        # dimension names live in dimension_names; zarr 2 metadata adds _ARRAY_DIMENSIONS back
        self.attrs = {k: v for k, v in (attrs or {}).items() if k != DIMENSIONS_ATTR}
        self.dimension_names = tuple(dimension_names) if dimension_names is not None else None
        self._encoding = encoding
        if len(self.chunks) != len(self.shape):
            raise ManifestError(f"chunks {self.chunks} do not match shape {self.shape}")

    # -- numpy-like surface ----------------------------------------------------------------

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d virtual array")
        return self.shape[0]

    def __repr__(self) -> str:
        return (
            f"<VirtualArray shape={self.shape} dtype={self.dtype} chunks={self.chunks} "
            f"layers={len(self.layers)}>"
        )

    def __getitem__(self, index: Any) -> Any:
        if index is Ellipsis:
            return self.read()
        return self.view(index)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read()
        return out if dtype is None else out.astype(dtype)

    def view(self, index: Any) -> VirtualArray:
        """A lazy view of ``index`` (ints, positive-step slices, one Ellipsis)."""
        return self._view(normalize_index(index, self.shape))

    def _view(self, sel: tuple[Item, ...]) -> VirtualArray:
        shape, chunks, names = [], [], []
        for d, item in enumerate(sel):
            if isinstance(item, int):
                continue
            n = len(range(*item))
            shape.append(n)
            chunks.append(max(1, min(self.chunks[d], n)))
            names.append(self.dimension_names[d] if self.dimension_names else None)
        layers = [v for v in (view_layer(layer, sel) for layer in self.layers) if v is not None]
        return VirtualArray(
            shape, self.dtype, chunks, self.declared_fill, layers, attrs=self.attrs,
            dimension_names=names if self.dimension_names else None,
        )

    @property
    def declared_fill(self) -> Any:
        """The fill value as the metadata declares it: None for zarr 2 ``null``, else :attr:`fill_value`."""
        return None if self.no_fill else self.fill_value

    def read(self, index: Any = Ellipsis) -> np.ndarray:
        """Read ``index`` (default: everything) as a numpy array."""
        from zarr.core.sync import sync

        return sync(self.read_async(index))

    async def read_async(self, index: Any = Ellipsis, *, cache: DecodedChunkCache | None = None) -> np.ndarray:
        """Async :meth:`read`; run it on zarr's event loop (where the sources' stores live).

        With ``cache``, source chunks the read takes only in part are decoded through it,
        so the reads of neighbouring windows share them (see :func:`read_cached`).
        """
        sel = normalize_index(index, self.shape)
        return await self._view(sel)._read_all(cache)

    async def read_layers_async(
        self, index: Any, layers: Sequence[int], *, cache: DecodedChunkCache | None = None
    ) -> np.ndarray:
        """:meth:`read_async` of ``index`` using only the layers numbered ``layers`` (in layer order).

        For callers that know which layers touch the window (a chunk planner), so a read
        does not visit every layer of a concatenation of many inputs.
        """
        sub = VirtualArray(self.shape, self.dtype, self.chunks, self.fill_value, [self.layers[i] for i in layers])
        return await sub.read_async(index, cache=cache)

    async def read_source(
        self, selection: tuple[int | slice, ...], cache: DecodedChunkCache | None = None
    ) -> np.ndarray:
        """Read as a layer source does (same contract as :meth:`ZarrSource.read`)."""
        return await self.read_async(selection, cache=cache)

    async def _read_all(self, cache: DecodedChunkCache | None = None) -> np.ndarray:
        import asyncio

        out = np.full(self.shape, self.fill_value, dtype=self.dtype)
        if not self.layers or out.size == 0:
            return out
        datas = await asyncio.gather(*(_read_layer(layer, self.dtype, cache) for layer in self.layers))
        for layer, data in zip(self.layers, datas):
            out[layer.box()] = data
        return out

    # -- metadata for serving as zarr --------------------------------------------------------

    def encoding_docs(self, zarr_format: int | None = None, *, copy_encoding: bool | None = None) -> dict[str, bytes]:
        """The zarr metadata documents of this virtual array (``zarr.json`` or ``.zarray``/``.zattrs``).

        Parameters
        ----------
        zarr_format
            The metadata format; None keeps the copied encoding's, else 3. Written as
            zarr 3 from zarr 2 sources that declare a fill value, the array also gets the
            ``_FillValue`` attribute as xarray writes it: xarray masks with a zarr 2
            ``fill_value``, but in zarr 3 only with ``_FillValue``.
        copy_encoding
            True: copy the first source's encoding (codecs, compressor, filters, order)
            when every leaf source shares it, so aligned chunks pass through as stored
            bytes. None (the default): do so unless the layers that cannot pass chunks
            through (misaligned, strided, cropped mid-chunk, nested) touch more than half
            of the chunks; those chunks are assembled, and re-compressing each one costs
            more than it saves. False: never. Without a copied encoding the array is plain
            uncompressed bytes.
        """
        from refstore.virtual._source import encoding_of, metadata_docs

        if self._encoding is not None and zarr_format is None:
            return self._encoding
        leaves = list(leaf_sources(self))
        like = None
        if leaves and copy_encoding is not False:
            first = leaves[0].array
            enc = encoding_of(first)
            if all(encoding_of(s.array) == enc for s in leaves[1:]):
                like = first
            if like is not None and zarr_format is not None and like.metadata.zarr_format != zarr_format:
                like = None
            if like is not None and copy_encoding is None and _mostly_assembled(self):
                like = None
        attrs = dict(self.attrs)
        fmt = like.metadata.zarr_format if like is not None else (zarr_format or 3)
        if fmt == 3 and not self.no_fill and "_FillValue" not in attrs and leaves and all(
            s.array.metadata.zarr_format == 2 for s in leaves
        ):
            attrs["_FillValue"] = xarray_fill_attr(self.fill_value)
        return metadata_docs(
            like, shape=self.shape, chunks=self.chunks, dtype=self.dtype, fill_value=self.declared_fill,
            attributes=attrs, dimension_names=self.dimension_names, zarr_format=fmt,
        )

    # -- definitions ---------------------------------------------------------------------------

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """The JSON definition (see ``spec/virtual.md``); see :func:`refstore.virtual._spec.to_dict`."""
        from refstore.virtual._spec import to_dict

        return to_dict(self, **kwargs)

    @classmethod
    def from_dict(cls, d: dict[str, Any], **kwargs: Any) -> VirtualArray:
        """Load a JSON definition; see :func:`refstore.virtual._spec.from_dict`."""
        from refstore.virtual._spec import from_dict

        return from_dict(d, **kwargs)

    def to_manifest(self, name: str = "data") -> Any:
        """A plain kerchunk :class:`refstore.Manifest` for this array, if every chunk passes through.

        Raises :class:`refstore.ManifestError` naming the first chunk that would need
        assembling (misaligned, cropped, strided or differently encoded sources).
        """
        from refstore.virtual._save import flatten

        return flatten({name: self})


def _is_lazy(layers: Sequence[Layer]) -> bool:
    from refstore.virtual._runs import Layers

    return isinstance(layers, Layers)


async def _read_layer(layer: Layer, dtype: np.dtype[Any], cache: DecodedChunkCache | None) -> np.ndarray:
    """The data of ``layer``'s whole box: one source read per piece (one per block if blocked)."""
    import asyncio

    src = layer.source

    async def read_piece(piece: Piece) -> np.ndarray:
        box, sel, reach = piece
        if isinstance(src, VirtualArray):
            data = await src.read_source(sel, cache)
        elif cache is not None:
            data = await read_cached(src, sel, reach, cache)
        else:
            data = await src.read(sel)
        return np.asarray(data).reshape(tuple(b.stop - b.start for b in box))

    pieces = layer.pieces()
    if len(pieces) == 1:
        return await read_piece(pieces[0])
    out = np.empty(layer.shape, dtype)
    datas = await asyncio.gather(*(read_piece(piece) for piece in pieces))
    for (box, _, _), data in zip(pieces, datas):
        out[box] = data
    return out


def _aligned(v: VirtualArray, layer: Layer) -> bool:
    """True if ``layer`` can pass every chunk it fully covers through (its own encoding aside)."""
    src = layer.source
    if not isinstance(src, ZarrSource) or layer.blocked or any(isinstance(m, int) for m in layer.src_map):
        return False
    if is_sharded(src.array):
        return False
    mapped = layer.mapped()
    src_chunks = src.chunks
    for d in range(v.ndim):
        if d not in mapped:
            if v.chunks[d] != 1:
                return False
            continue
        k, start, step = mapped[d]
        if step != 1 or src_chunks[k] != v.chunks[d] or (start - layer.origin[d]) % v.chunks[d]:
            return False
    return True


def _mostly_assembled(v: VirtualArray) -> bool:
    """True if layers that cannot pass chunks through touch more than half of ``v``'s chunks."""
    import math

    def n_chunks(layer: Layer) -> int:
        return math.prod(-(-(o + n) // c) - o // c for o, n, c in zip(layer.origin, layer.shape, v.chunks))

    total = sum(n_chunks(layer) for layer in v.layers)
    assembled = sum(n_chunks(layer) for layer in v.layers if not _aligned(v, layer))
    return 2 * assembled > total


def leaf_sources(v: VirtualArray) -> Any:
    """The zarr sources under ``v``, depth first, in layer order."""
    for layer in v.layers:
        if isinstance(layer.source, VirtualArray):
            yield from leaf_sources(layer.source)
        else:
            yield layer.source


# -- building ------------------------------------------------------------------------------------


class _Input:
    """The metadata of one input, however it was given."""

    def __init__(self, src: Any, index: int) -> None:
        from refstore.virtual._spec import served_virtual

        self.index = index
        source = None
        if not isinstance(src, VirtualArray):
            source = src if isinstance(src, ZarrSource) else ZarrSource(src)
            arr = source.array
            # a virtual array its store serves: join its layers, not the view (which cannot be embedded)
            src = (served_virtual(arr) if hasattr(arr, "store_path") else None) or src
        if isinstance(src, VirtualArray):
            self.virtual: VirtualArray | None = src
            self.layers = list(src.layers)
            self.shape, self.dtype, self.chunks = src.shape, src.dtype, src.chunks
            self.fill, self.attrs, self.names = src.declared_fill, src.attrs, src.dimension_names
            return
        assert source is not None
        if not hasattr(arr, "metadata") or not hasattr(arr, "chunks"):
            raise TypeError(f"input {index}: expected a zarr array or VirtualArray, got {type(src).__name__}")
        self.virtual = None
        self.shape, self.dtype, self.chunks = tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks)
        self.fill = None if arr.metadata.fill_value is None else fill_of(arr)  # None: zarr 2 null
        self.names = dimension_names_of(arr)
        self.attrs = {k: v for k, v in arr.attrs.items() if k != DIMENSIONS_ATTR}
        ndim = len(self.shape)
        self.layers = [Layer(source, (0,) * ndim, self.shape, tuple((d, 0, 1) for d in range(ndim)))]


def _validate(inputs: list[_Input], axis: int | None, what: str) -> None:
    first = inputs[0]

    def fail(inp: _Input, field: str, a: Any, b: Any) -> None:
        raise IncompatibleSources(
            f"{what}: input {inp.index} differs from input 0 in {field}: "
            f"input {inp.index} has {b!r}, input 0 has {a!r}"
        )

    for inp in inputs[1:]:
        if inp.dtype != first.dtype:
            fail(inp, "dtype", first.dtype, inp.dtype)
        if len(inp.shape) != len(first.shape):
            fail(inp, "ndim", len(first.shape), len(inp.shape))
        for d, (a, b) in enumerate(zip(first.shape, inp.shape)):
            if d != axis and a != b:
                fail(inp, f"shape (axis {d})", first.shape, inp.shape)
        if not same_value(first.fill, inp.fill):
            fail(inp, "fill_value", first.fill, inp.fill)
        for attr in CF_ATTRS:
            if not same_value(first.attrs.get(attr), inp.attrs.get(attr)):
                fail(inp, f"attribute {attr!r}", first.attrs.get(attr), inp.attrs.get(attr))
        if first.names is not None and inp.names is not None and tuple(first.names) != tuple(inp.names):
            fail(inp, "dimension names", first.names, inp.names)


def concat(sources: Sequence[Any], axis: int = 0) -> VirtualArray:
    """Concatenate zarr arrays or virtual arrays along an existing ``axis``, like ``numpy.concatenate``.

    Parameters
    ----------
    sources
        ``zarr.Array`` objects (from any store) or :class:`VirtualArray` objects.
    axis
        The axis to join along.

    Returns
    -------
    VirtualArray
        Lazy; chunks and metadata are the first input's.

    Raises
    ------
    IncompatibleSources
        If dtype, ndim, shape off ``axis``, fill value, CF attributes
        (``scale_factor``, ``add_offset``, ``_FillValue``, ``missing_value``) or dimension
        names differ; the message names the input index and the field.
    """
    if not sources:
        raise ManifestError("concat: need at least one input")
    inputs = [_Input(s, i) for i, s in enumerate(sources)]
    first = inputs[0]
    if not first.shape:
        raise ManifestError("concat: zero-dimensional inputs cannot be concatenated")
    axis = check_axis(axis, len(first.shape), "concat")
    _validate(inputs, axis, "concat")
    layers: list[Layer] = []
    pos = 0
    for inp in inputs:
        offset = tuple(pos if d == axis else 0 for d in range(len(first.shape)))
        layers.extend(shift_layer(layer, offset) for layer in inp.layers)
        pos += inp.shape[axis]
    shape = tuple(pos if d == axis else n for d, n in enumerate(first.shape))
    return VirtualArray(
        shape, first.dtype, first.chunks, first.fill, layers, attrs=first.attrs, dimension_names=first.names
    )


def stack(sources: Sequence[Any], axis: int = 0, dimension_name: str | None = None) -> VirtualArray:
    """Stack same-shaped arrays along a new ``axis``, like ``numpy.stack``.

    The new axis has chunk length 1. ``dimension_name`` names it when the inputs
    have dimension names. Raises :class:`IncompatibleSources` as :func:`concat` does.
    """
    if not sources:
        raise ManifestError("stack: need at least one input")
    inputs = [_Input(s, i) for i, s in enumerate(sources)]
    first = inputs[0]
    axis = check_axis(axis, len(first.shape) + 1, "stack")
    _validate(inputs, None, "stack")
    layers: list[Layer] = []
    for i, inp in enumerate(inputs):
        offset = tuple(i if d == axis else 0 for d in range(len(first.shape) + 1))
        layers.extend(shift_layer(layer, offset, insert_axis=axis) for layer in inp.layers)
    shape = first.shape[:axis] + (len(inputs),) + first.shape[axis:]
    chunks = first.chunks[:axis] + (1,) + first.chunks[axis:]
    names = None
    if first.names is not None:
        names = tuple(first.names[:axis]) + (dimension_name,) + tuple(first.names[axis:])
    return VirtualArray(shape, first.dtype, chunks, first.fill, layers, attrs=first.attrs, dimension_names=names)


def pad(source: Any, pad_width: Any, fill_value: Any = None) -> VirtualArray:
    """Pad an array with ``fill_value`` (default: the source's), like ``numpy.pad(mode="constant")``.

    ``pad_width`` is an int, ``(before, after)``, or one ``(before, after)`` per axis.
    Padding need not fill whole chunks.
    """
    inp = _Input(source, 0)
    ndim = len(inp.shape)
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (ndim, 2))
    if (widths < 0).any():
        raise ManifestError(f"pad: pad_width must be non-negative, got {pad_width!r}")
    offset = tuple(int(w) for w in widths[:, 0])
    shape = tuple(int(n + b + a) for n, (b, a) in zip(inp.shape, widths))
    layers = [shift_layer(layer, offset) for layer in inp.layers]
    fill = inp.fill if fill_value is None else fill_value  # a source without one pads with 0
    return VirtualArray(shape, inp.dtype, inp.chunks, fill, layers, attrs=inp.attrs, dimension_names=inp.names)
