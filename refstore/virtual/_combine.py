"""``refstore combine``: join datasets (reference manifests) along one dimension, as xarray would."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from refstore.errors import CombineError, CoordinateOrderError, InputsDiffer, UnknownDimension
from refstore.virtual._inputs import expand_pattern, open_inputs
from refstore.virtual._layout import DEFAULT_INLINE_LIMIT, ArrayLayout, save_layout
from refstore.virtual._source import DIMENSIONS_ATTR, dimension_names_of, same_value

#: xarray's ``combine_attrs`` choices, for global attributes and those of concatenated variables.
COMBINE_ATTRS = ("override", "drop", "identical", "no_conflicts", "drop_conflicts")

#: Attributes xarray decodes values with (CF masking and packing; ``units`` and ``calendar``
#: of times): they must be equal in every input, and are kept whatever ``combine_attrs``
#: says, since xarray keeps them in the encoding.
DECODING_ATTRS = ("_FillValue", "missing_value", "scale_factor", "add_offset", "_Unsigned", "units", "calendar")

#: Attributes compared between inputs: they change what the values mean.
CHECKED_ATTRS = (*DECODING_ATTRS, "valid_min", "valid_max", "valid_range")


def _decoding(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes of ``attrs`` that xarray decodes with (``units``/``calendar`` only of times)."""
    is_time = " since " in str(attrs.get("units", ""))
    return {k: v for k, v in attrs.items() if k in DECODING_ATTRS and (is_time or k not in ("units", "calendar"))}

@dataclass
class _Dataset:
    """One input: its arrays, global attributes, how messages name it, and how definitions name its arrays."""

    label: str
    arrays: dict[str, Any]
    attrs: dict[str, Any]
    zarr_format: int
    refs: dict[str, dict[str, Any]]

    def dims(self, name: str) -> tuple[str | None, ...]:
        return tuple(dimension_names_of(self.arrays[name]) or ())

    def source(self, name: str) -> Any:
        """Array ``name`` as a concat input: a ``ZarrSource`` named by its store's URL, if it has one."""
        from refstore.virtual._source import ZarrSource

        ref = self.refs.get(name)
        return self.arrays[name] if ref is None else ZarrSource(self.arrays[name], ref=ref)


def _datasets(inputs: Sequence[Any], options: Mapping[str, Any], **kwargs: Any) -> list[_Dataset]:
    import zarr

    out = []
    for inp in open_inputs(inputs, options, **kwargs):
        arrays = {name: node for name, node in inp.group.members(max_depth=None) if isinstance(node, zarr.Array)}
        out.append(_Dataset(inp.label, arrays, dict(inp.group.attrs), inp.group.metadata.zarr_format, inp.refs))
    return out


def combine(
    inputs: Sequence[Any],
    concat_dim: str,
    out: str | None = None,
    *,
    new_dim: bool = False,
    keep_order: bool = False,
    combine_attrs: str = "override",
    flatten: bool = False,
    layout: str = "auto",
    inline_limit: int = DEFAULT_INLINE_LIMIT,
    zarr_format: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    scanner: str | None = None,
    **options: Any,
) -> Any:
    """Combine datasets given as reference manifests along dimension ``concat_dim``, as xarray would.

    The result read with ``xr.open_zarr`` equals ``xr.open_mfdataset(files,
    combine="by_coords")`` of the files the inputs describe (``combine="nested",
    concat_dim=...`` with ``keep_order=True``): values, masking and packing attributes,
    dtypes, coordinates, variable and global attributes, dimension names, time units
    and calendar. Every array with ``concat_dim`` among its dimensions is concatenated
    along it (lengths may differ, e.g. 365 and 366 days; chunks need not align). Arrays
    without it (``lat``, a scalar ``crs``) must be identical in every input and are
    copied, with their references, from the first. The result keeps the inputs' zarr
    format, so zarr 2 ``fill_value`` (``null`` included) means to xarray what it meant
    for each input.

    Before anything is written the inputs are checked: the same variables everywhere;
    per variable the same zarr format, dimension names, dtype, shape off ``concat_dim``,
    fill value, and the attributes of :data:`CHECKED_ATTRS` (``units``, ``calendar``,
    ``scale_factor``, ``add_offset``, ``_FillValue``, ``missing_value``, ...). Inputs are
    put in the order of their ``concat_dim`` coordinate (the 1-d array of that name).

    Parameters
    ----------
    inputs
        A sequence of datasets, or one string: a glob pattern (``"tas_*.nc"``, also
        by URL), whose matches are the inputs in sorted order. Datasets are reference manifests (kerchunk JSON or parquet, e.g. kerchunk's or
        VirtualiZarr's scans of netCDF files; paths, URLs, dicts or
        :class:`refstore.Manifest`), zarr stores (v2 or v3; a local directory, or a URL
        ending in ``.zarr`` or ``/``), or netCDF/HDF5 files, which are scanned first (see
        :func:`refstore.virtual._inputs.kind_of` for how each is recognized).
    concat_dim
        The dimension to join along; it must be a dimension of the inputs unless
        ``new_dim`` is true.
    out
        Where to write the result (see :func:`refstore.virtual.save_virtual`); None only
        returns it.
    new_dim
        ``concat_dim`` is a new dimension: stack every array of the inputs along it (in
        the order given), as a new leading axis of chunk length 1.
    keep_order
        Concatenate in the order given, not by coordinate, and check no coordinate values
        (xarray's ``combine="nested"``).
    combine_attrs
        How global attributes and those of concatenated variables combine, as in xarray:
        ``"override"`` (the first input's, in concatenation order; xarray's
        ``open_mfdataset`` default), ``"drop"``, ``"identical"``, ``"no_conflicts"`` or
        ``"drop_conflicts"``. Attributes xarray decodes values with
        (:data:`DECODING_ATTRS`) are always kept, as they are in xarray's encoding.
    flatten
        The same as ``layout="kerchunk"`` (kept from before ``layout`` existed).
    layout
        How the result is written. ``"auto"`` (the default): flat where representable,
        as kerchunk's ``MultiZarrToZarr`` writes it: plain kerchunk references for every
        variable whose chunks each are one aligned input chunk; coordinates (1-d arrays
        named after their dimension, and variables that a ``coordinates`` or ``bounds``
        attribute names) inlined as values where they cannot be, and the ``concat_dim``
        coordinate always (as ``MultiZarrToZarr`` does); virtual arrays for the rest.
        ``"kerchunk"``: the same, but a variable that would need a virtual array is
        refused (:class:`~refstore.errors.NotRepresentable`), so the result is readable by
        any kerchunk reader. ``"virtual"``: every concatenated variable as a virtual array.
    inline_limit
        Coordinates larger than this (bytes, decoded) are not inlined.
    storage_options
        fsspec options for zarr stores and files given by URL (e.g. ``{"anon": True}``).
    progress
        A progress line on stderr while scanning files: None (the default) when stderr
        is a terminal, True always, False never.
    scanner
        ``"kerchunk"`` or ``"virtualizarr"`` to scan netCDF/HDF5 files with; None takes
        kerchunk if it is installed (and not a version known to drop variables), else
        VirtualiZarr.
    zarr_format
        The metadata format of the result; None (the default) keeps the inputs'. zarr 2
        inputs (kerchunk's scans) written as zarr 3 get a ``_FillValue`` attribute as
        xarray writes it where they declare a fill value (xarray masks with the zarr 2
        ``fill_value``, but in zarr 3 only with ``_FillValue``), and 0 where they declare
        ``null`` (nothing masked); variables without ``concat_dim`` are then virtual too.
    **options
        :class:`refstore.ReferenceStore` options for reading the inputs.

    Returns
    -------
    refstore.Manifest

    Raises
    ------
    refstore.errors.UnknownDimension
        ``concat_dim`` is no dimension of the inputs (the message lists those present),
        or is one though ``new_dim`` was given.
    refstore.errors.CoordinateOrderError
        An input's coordinate is not strictly monotonic, inputs run in different
        directions, overlap or repeat a value, or an input has no coordinate to order by.
    refstore.errors.InputsDiffer
        A variable differs between inputs in a checked field, or global attributes
        conflict under ``combine_attrs="identical"``/``"no_conflicts"``; the message names
        the input, the variable and the field.
    refstore.errors.NotRepresentable
        With ``layout="kerchunk"``, a variable needs a virtual array (the message names it
        and why).
    refstore.errors.CombineError
        A variable is missing from an input, or the inputs' zarr formats differ.
    """
    return combine_with_layout(
        inputs, concat_dim, out, new_dim=new_dim, keep_order=keep_order, combine_attrs=combine_attrs,
        flatten=flatten, layout=layout, inline_limit=inline_limit, zarr_format=zarr_format,
        storage_options=storage_options, progress=progress, scanner=scanner, **options,
    )[0]


def combine_with_layout(
    inputs: Sequence[Any],
    concat_dim: str,
    out: str | None = None,
    *,
    new_dim: bool = False,
    keep_order: bool = False,
    combine_attrs: str = "override",
    flatten: bool = False,
    layout: str = "auto",
    inline_limit: int = DEFAULT_INLINE_LIMIT,
    zarr_format: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    scanner: str | None = None,
    labels: Sequence[str] | None = None,
    **options: Any,
) -> tuple[Any, list[ArrayLayout]]:
    """:func:`combine`, also returning how each variable was written (references, inlined or virtual).

    ``labels`` name the inputs in messages (default: their paths, or their positions).
    """
    from refstore.virtual._array import concat, stack

    if isinstance(inputs, (str, os.PathLike)):
        inputs = expand_pattern(os.fspath(inputs), storage_options)
    if not inputs:
        raise CombineError("combine: no inputs")
    if combine_attrs not in COMBINE_ATTRS:
        raise ValueError(f"combine: combine_attrs must be one of {COMBINE_ATTRS}, got {combine_attrs!r}")
    datasets = _datasets(inputs, options, storage_options=storage_options, show_progress=progress, scanner=scanner,
                         labels=labels)
    _check_variables_and_format(datasets)
    dims = sorted({d for ds in datasets for name in ds.arrays for d in ds.dims(name) if d is not None})
    if new_dim and concat_dim in dims:
        raise UnknownDimension(
            f"combine: {concat_dim!r} is already a dimension of the inputs; concatenate along it "
            "without new_dim (--new-dim), or name a new dimension to stack along"
        )
    if not new_dim and concat_dim not in dims:
        raise UnknownDimension(
            f"combine: {concat_dim!r} is not a dimension of the inputs; their dimensions are {dims}. "
            "To stack the inputs along a new dimension, pass new_dim=True (--new-dim)"
        )
    first = datasets[0]
    for name in first.arrays:
        _check_variable(name, datasets, None if new_dim else concat_dim)
    if not new_dim and not keep_order:
        datasets = _order_by_coordinate(datasets, concat_dim)
    first = datasets[0]
    arrays: dict[str, Any] = {}
    for name, arr in first.arrays.items():
        column = [ds.arrays[name] for ds in datasets]
        sources = [ds.source(name) for ds in datasets]
        if new_dim:
            arrays[name] = stack(sources, axis=0, dimension_name=concat_dim)
            arrays[name].attrs = _merge_attrs([a.attrs for a in column], datasets, combine_attrs, f"variable {name!r}")
        elif concat_dim in first.dims(name):
            arrays[name] = concat(sources, axis=first.dims(name).index(concat_dim))
            arrays[name].attrs = _merge_attrs([a.attrs for a in column], datasets, combine_attrs, f"variable {name!r}")
        else:
            _check_identical(name, datasets, concat_dim)
            # copied as it is, references and all; its attributes combine as xarray's merge does
            merged = _merge_attrs([a.attrs for a in column], datasets, combine_attrs, f"variable {name!r}")
            arrays[name] = _with_attrs(arr, merged)
    attrs = _merge_attrs([ds.attrs for ds in datasets], datasets, combine_attrs, "global attributes", decoding=False)
    fmt = zarr_format or first.zarr_format
    coords = _coordinates(first)
    always = {concat_dim} if not new_dim and first.arrays.get(concat_dim) is not None and first.dims(concat_dim) == (
        concat_dim,) else set()
    return save_layout(
        arrays, out, layout="kerchunk" if flatten else layout, inline=coords, always_inline=always,
        inline_limit=inline_limit, zarr_format=fmt, attrs=attrs,
    )


def _coordinates(ds: _Dataset) -> set[str]:
    """The coordinates of ``ds``: 1-d arrays named after their dimension, and the variables that a
    ``coordinates`` or ``bounds`` attribute names."""
    found = {name for name in ds.arrays if ds.dims(name) == (name,)}
    for arr in ds.arrays.values():
        for attr in ("coordinates", "bounds"):
            value = arr.attrs.get(attr)
            if isinstance(value, str):
                found.update(n for n in value.split() if n in ds.arrays)
    return found


def _with_attrs(arr: Any, attrs: dict[str, Any]) -> Any:
    """``arr`` (same store, same chunks) with metadata attributes ``attrs``."""
    import zarr
    from zarr.core.array import AsyncArray

    meta = arr.metadata
    names = dimension_names_of(arr)
    if meta.zarr_format == 2 and names is not None:
        attrs = {**attrs, DIMENSIONS_ATTR: list(names)}
    if attrs == dict(arr.attrs):
        return arr
    meta = type(meta).from_dict({**meta.to_dict(), "attributes": attrs})
    return zarr.Array(AsyncArray(meta, arr.store_path))


def _differ(ds: _Dataset, first: _Dataset, what: str, field: str, theirs: Any, ours: Any) -> InputsDiffer:
    return InputsDiffer(
        f"combine: {what} of {ds.label} differs from {first.label} in {field}: {theirs!r} in "
        f"{ds.label}, {ours!r} in {first.label}. Make the inputs agree (re-encode or fix the "
        "attribute), or combine them separately"
    )


def _check_variables_and_format(datasets: Sequence[_Dataset]) -> None:
    """Every input holds the same arrays, in the same zarr format."""
    first = datasets[0]
    for ds in datasets[1:]:
        if ds.zarr_format != first.zarr_format:
            raise CombineError(
                f"combine: {ds.label} is zarr {ds.zarr_format} but {first.label} is zarr {first.zarr_format}; "
                "their fill values mean different things to xarray. Combine inputs of one zarr format"
            )
        for a, b, where in ((first, ds, ds), (ds, first, first)):
            missing = sorted(set(a.arrays) - set(b.arrays))
            if missing:
                raise CombineError(
                    f"combine: variable {missing[0]!r} of {a.label} is missing from {where.label}; "
                    "every input must hold the same variables"
                )


def _check_variable(name: str, datasets: Sequence[_Dataset], concat_dim: str | None) -> None:
    """Raise :class:`InputsDiffer` unless variable ``name`` agrees in every input (off ``concat_dim``)."""
    from refstore.virtual._source import fill_of

    first = datasets[0]
    a = first.arrays[name]
    what = f"variable {name!r}"
    dims = first.dims(name)

    def fill(arr: Any) -> Any:
        return None if arr.metadata.fill_value is None else fill_of(arr)

    for ds in datasets[1:]:
        b = ds.arrays[name]
        if ds.dims(name) != dims:
            raise _differ(ds, first, what, "dimensions", list(ds.dims(name)), list(dims))
        if b.metadata.zarr_format != a.metadata.zarr_format:
            raise _differ(ds, first, what, "zarr format", b.metadata.zarr_format, a.metadata.zarr_format)
        if np.dtype(b.dtype) != np.dtype(a.dtype):
            raise _differ(ds, first, what, "dtype", str(np.dtype(b.dtype)), str(np.dtype(a.dtype)))
        for d, (m, n) in enumerate(zip(a.shape, b.shape)):
            if m != n and (concat_dim is None or dims[d] != concat_dim):
                raise _differ(ds, first, what, f"length of dimension {dims[d] or d!r}", n, m)
        if not same_value(fill(a), fill(b)):
            raise _differ(ds, first, what, "fill_value (xarray's _FillValue)", fill(b), fill(a))
        for attr in CHECKED_ATTRS:
            ours, theirs = a.attrs.get(attr), b.attrs.get(attr)
            if not same_value(ours, theirs):
                raise _differ(ds, first, what, f"attribute {attr!r}", theirs, ours)


def _check_identical(name: str, datasets: Sequence[_Dataset], concat_dim: str) -> None:
    """Raise unless every input holds the same values of ``name`` (which lacks ``concat_dim``)."""
    first = datasets[0]
    values = np.asarray(first.arrays[name][...])
    for ds in datasets[1:]:
        theirs = np.asarray(ds.arrays[name][...])
        if not np.array_equal(values, theirs, equal_nan=values.dtype.kind in "fc"):
            raise InputsDiffer(
                f"combine: variable {name!r} has no {concat_dim!r} dimension, so it must be identical in "
                f"every input, but its values in {ds.label} differ from those in {first.label}"
            )


def _order_by_coordinate(datasets: Sequence[_Dataset], dim: str) -> list[_Dataset]:
    """The inputs in the order of their ``dim`` coordinate, checked to be strictly monotonic overall."""
    coords: list[np.ndarray] = []
    for ds in datasets:
        if dim not in ds.arrays or ds.dims(dim) != (dim,):
            raise CoordinateOrderError(
                f"combine: {ds.label} has no coordinate {dim!r} (a 1-d array named after the dimension) to "
                "order the inputs by; pass keep_order=True (--keep-order) to concatenate them as given"
            )
        coords.append(np.asarray(ds.arrays[dim][...]))
    return [datasets[k] for k in order_by_coordinate([ds.label for ds in datasets], coords, dim)]


def coordinate_of(group: Any, label: str, dim: str) -> np.ndarray:
    """The values of 1-d coordinate ``dim`` of zarr ``group`` (input ``label``), checked strictly monotonic.

    Raises
    ------
    refstore.errors.CoordinateOrderError
        If the group has no such coordinate, or it is not strictly monotonic.
    """
    import zarr

    try:
        arr = group[dim]
    except KeyError:
        arr = None
    if not isinstance(arr, zarr.Array) or tuple(dimension_names_of(arr) or ()) != (dim,):
        raise CoordinateOrderError(
            f"combine: {label} has no coordinate {dim!r} (a 1-d array named after the dimension) to "
            "order the inputs by; pass keep_order=True (--keep-order) to concatenate them as given"
        )
    values = np.asarray(arr[...])
    order_by_coordinate([label], [values], dim)
    return values


def order_by_coordinate(labels: Sequence[str], coords: Sequence[np.ndarray], dim: str) -> list[int]:
    """The order (indices) of inputs named ``labels`` by their ``dim`` coordinate values ``coords``.

    Each coordinate must be strictly monotonic, all in one direction, and no two inputs may
    overlap or repeat a value; inputs with an empty coordinate go last. A coordinate may be
    given by its first and last values only once its monotonicity has been checked (this
    is how the parallel builder orders inputs whose coordinates were read in workers).

    Raises
    ------
    refstore.errors.CoordinateOrderError
        Naming the inputs and values at fault.
    """
    directions: dict[int, str] = {}
    for label, values in zip(labels, coords):
        if len(values) < 2:
            continue
        up, down = values[1:] > values[:-1], values[1:] < values[:-1]
        sign = 1 if bool(up.all()) else -1 if bool(down.all()) else 0
        if not sign:
            bad = int(np.argmin(up if bool(up[0]) else down)) + 1
            raise CoordinateOrderError(
                f"combine: the {dim!r} coordinate of {label} is not strictly monotonic: "
                f"{_show(values[bad - 1])} at index {bad - 1} is followed by {_show(values[bad])}. "
                "Fix the input, or pass keep_order=True (--keep-order) to concatenate without this check"
            )
        directions.setdefault(sign, label)
    if len(directions) > 1:
        raise CoordinateOrderError(
            f"combine: the {dim!r} coordinate increases in {directions[1]} but decreases in "
            f"{directions[-1]}; pass keep_order=True (--keep-order) to concatenate as given"
        )
    sign = next(iter(directions), 1)
    filled = sorted((k for k, values in enumerate(coords) if len(values)), key=lambda k: coords[k][0],
                    reverse=sign < 0)
    for prev, nxt in itertools.pairwise(filled):
        last, start = coords[prev][-1], coords[nxt][0]
        if not (start > last if sign > 0 else start < last):
            a, b = labels[prev], labels[nxt]
            if start == last:
                problem = f"{b} repeats {_show(start)}, the last value of {a}"
            else:
                problem = f"{b} starts at {_show(start)}, before {a} ends (at {_show(last)})"
            raise CoordinateOrderError(
                f"combine: the inputs overlap along {dim!r}: the coordinate of {problem}. Every {dim!r} "
                "value must be in one input only: leave out the duplicate input or trim the overlap"
            )
    return filled + [k for k, values in enumerate(coords) if not len(values)]


def _show(value: Any) -> str:
    """A coordinate value as messages show it (``0.0``, not ``np.float64(0.0)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _merge_attrs(
    dicts: Sequence[Mapping[str, Any]], datasets: Sequence[_Dataset], mode: str, what: str, *, decoding: bool = True
) -> dict[str, Any]:
    """xarray's ``merge_attrs`` of ``dicts`` (one per input, in order) under ``combine_attrs=mode``.

    With ``decoding``, :data:`DECODING_ATTRS` (checked equal beforehand) are kept from the
    first whatever ``mode`` says. ``_ARRAY_DIMENSIONS`` is left out (the metadata carries
    dimension names).
    """
    dicts = [{k: v for k, v in d.items() if k != DIMENSIONS_ATTR} for d in dicts]
    keep = _decoding(dicts[0]) if decoding else {}
    if mode == "override":
        return dict(dicts[0])
    if mode == "drop":
        return keep
    first = datasets[0]
    out = dict(dicts[0])
    conflicts: set[str] = set()
    for d, ds in zip(dicts[1:], datasets[1:]):
        if mode == "identical" and set(d) != set(out):
            key = sorted(set(d) ^ set(out))[0]
            raise _differ(ds, first, what, f"attribute {key!r}", d.get(key), out.get(key))
        for key, value in d.items():
            if key not in out and key not in conflicts:
                out[key] = value
            elif key in out and not same_value(out[key], value):
                if mode == "drop_conflicts":
                    conflicts.add(key)
                    del out[key]
                else:
                    raise _differ(ds, first, what, f"attribute {key!r}", value, out[key])
    return {**out, **keep}

