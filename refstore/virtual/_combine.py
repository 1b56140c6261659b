"""``refstore combine``: join the arrays of many manifests along one dimension into a virtual manifest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from refstore.errors import ManifestError


def _arrays(fo: Any, options: Mapping[str, Any]) -> dict[str, Any]:
    import zarr

    from refstore.virtual._spec import open_manifest_store

    group = zarr.open_group(open_manifest_store(fo, **options), mode="r")
    return {name: node for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}


def combine(
    inputs: Sequence[Any],
    concat_dim: str,
    out: str | None = None,
    *,
    flatten: bool = False,
    **options: Any,
) -> Any:
    """Combine the arrays of several reference manifests along dimension ``concat_dim``.

    Every array with ``concat_dim`` among its dimension names is concatenated along it
    in input order (lengths may differ, e.g. 365 and 366 days); if no array has that
    dimension, every array is stacked along a new leading dimension ``concat_dim``.
    Arrays without it (coordinates such as ``lat``) must be identical in every input
    (shape, dtype and values) and are taken from the first.

    Parameters
    ----------
    inputs
        Manifests (paths, URLs, dicts or :class:`refstore.Manifest`).
    concat_dim
        The dimension name to join along.
    out
        Where to write the result (see :func:`refstore.virtual.save_virtual`).
    flatten
        Write a plain kerchunk manifest (only when every chunk aligns).
    **options
        :class:`refstore.ReferenceStore` options for reading the inputs.

    Returns
    -------
    refstore.Manifest

    Raises
    ------
    refstore.ManifestError
        If an array is missing from an input, or an array without ``concat_dim``
        differs between inputs (naming the array and the input).
    """
    from refstore.virtual._array import concat, stack
    from refstore.virtual._save import save_virtual
    from refstore.virtual._source import dimension_names_of

    if not inputs:
        raise ManifestError("combine: no inputs")
    per_input = [_arrays(fo, options) for fo in inputs]
    first = per_input[0]
    has_dim = {n for n, a in first.items() if concat_dim in (dimension_names_of(a) or ())}
    virtuals: dict[str, Any] = {}
    for name, arr in first.items():
        missing = [k for k, arrays in enumerate(per_input) if name not in arrays]
        if missing:
            raise ManifestError(f"combine: array {name!r} of input 0 is missing from input {missing[0]}")
        column = [arrays[name] for arrays in per_input]
        if has_dim:
            if name in has_dim:
                axis = list(dimension_names_of(arr) or ()).index(concat_dim)
                virtuals[name] = concat(column, axis=axis)
            else:
                _check_identical(name, column, concat_dim)
                virtuals[name] = concat([arr], axis=0) if arr.ndim else None
        else:
            virtuals[name] = stack(column, axis=0, dimension_name=concat_dim)
    skipped = [n for n, v in virtuals.items() if v is None]
    if skipped:
        raise ManifestError(f"combine: zero-dimensional arrays are not supported yet: {skipped}")
    return save_virtual(virtuals, out, flatten=flatten)


def _check_identical(name: str, column: Sequence[Any], concat_dim: str) -> None:
    """Raise unless every input holds the same array *name* (shape, dtype, values)."""
    import numpy as np

    first = column[0]
    values = first[...]
    for k, other in enumerate(column[1:], start=1):
        same = other.shape == first.shape and other.dtype == first.dtype
        if same:
            theirs = other[...]
            same = bool(np.array_equal(values, theirs, equal_nan=values.dtype.kind in "fc"))
        if not same:
            raise ManifestError(
                f"combine: array {name!r} has no {concat_dim!r} dimension, so it must be identical "
                f"in every input, but input {k} differs from input 0"
            )
