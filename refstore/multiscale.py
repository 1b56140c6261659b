"""Multiscale metadata: OME-NGFF 0.4/0.5 attributes with exact level factors, and level choice.

Builders write it with :func:`multiscale_attributes`; readers list a pyramid's
levels with :func:`levels` and choose one with :func:`pick_level`. See
``spec/multiscale.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import Any

__all__ = ["LEVELS_KEY", "Level", "levels", "multiscale_attributes", "ngff_order", "pick_level"]

LEVELS_KEY = "refstore:levels"
"""The group attribute holding exact per-level factors and offsets."""

_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


@dataclass(frozen=True)
class Level:
    """One level of a pyramid, with its array opened on first access.

    Attributes
    ----------
    path
        The array's path inside the group (``"0"``, ``"1"``, ...).
    shape
        The array's shape.
    factor
        Per axis, how many level-0 pixels one pixel of this level spans (1 for
        level 0 and for non-spatial axes). Also available as ``factors``.
    offset
        Per axis, where the centre of this level's first pixel lies, in level-0
        pixel coordinates (the NGFF translation with unit pixel size). Also
        available as ``offsets``.
    axes
        The axis names (NGFF ``axes``, else the array's dimension names), or None.
    group
        The group the level belongs to (None for a level made by hand).
    """

    path: str
    shape: tuple[int, ...]
    factor: tuple[Fraction, ...]
    offset: tuple[Fraction, ...]
    axes: tuple[str, ...] | None = None
    group: Any = field(default=None, repr=False, compare=False)

    @property
    def factors(self) -> tuple[Fraction, ...]:
        """Per-axis downsample factors relative to level 0 (the same as ``factor``)."""
        return self.factor

    @property
    def offsets(self) -> tuple[Fraction, ...]:
        """Per-axis position of the first pixel's centre in level-0 pixels (``offset``)."""
        return self.offset

    @cached_property
    def array(self) -> Any:
        """The level's array (a ``zarr.Array``), opened from the group on first access.

        Raises
        ------
        ValueError
            If the level was not read from a group (``levels(group)`` sets it).
        """
        if self.group is None:
            raise ValueError(f"level {self.path!r} has no group to open its array from; get it from levels(group)")
        return self.group[self.path]


def _encode(value: Fraction) -> int | str:
    value = Fraction(value)
    return int(value) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _decode(value: int | float | str) -> Fraction:
    return Fraction(value) if not isinstance(value, float) else Fraction(value).limit_denominator(1 << 20)


def _ngff_conforms(axes: Sequence[str]) -> bool:
    """True if *axes* are in the order OME-NGFF 0.4/0.5 requires: [t] [c] space{2,3}."""
    types = [_TYPES.get(a) for a in axes]
    if None in types or not 2 <= len(types) <= 5:
        return False
    rank = {"time": 0, "channel": 1, "space": 2}
    order = [rank[t] for t in types]  # type: ignore[index]
    spaces = order.count(2)
    return order == sorted(order) and order.count(0) <= 1 and order.count(1) <= 1 and 2 <= spaces <= 3


def ngff_order(axes: Sequence[str]) -> list[int]:
    """Return the permutation putting *axes* in OME-NGFF's order: ``t``, ``c``, then space.

    Axes of the same kind keep their order; axes NGFF does not type come first.
    """
    rank = {"time": 0, "channel": 1, "space": 2}
    return sorted(range(len(axes)), key=lambda i: rank.get(_TYPES.get(axes[i], ""), -1))


def multiscale_attributes(
    paths: Sequence[str],
    shapes: Sequence[Sequence[int]],
    axes: Sequence[str],
    *,
    factors: Sequence[Sequence[Fraction | int]] | None = None,
    offsets: Sequence[Sequence[Fraction | int]] | None = None,
    zarr_format: int = 3,
    name: str | None = None,
    resampling: str | None = None,
) -> dict[str, Any]:
    """Return group attributes describing a pyramid.

    Parameters
    ----------
    paths
        Level array paths, largest level first.
    shapes
        The level arrays' shapes.
    axes
        Axis names of every level (``c``, ``t``, ``z``, ``y``, ``x`` are typed for NGFF).
    factors
        Exact per-axis downsample factors relative to level 0. Default: ``shape0 / shape``
        on spatial axes (as exact rationals), 1 elsewhere.
    offsets
        Per-axis position of each level's first pixel centre in level-0 pixels.
        Default 0.
    zarr_format
        3 writes NGFF 0.5 (``{"ome": {"version": "0.5", "multiscales": [...]}}``),
        2 writes NGFF 0.4 (``{"multiscales": [{"version": "0.4", ...}]}``).
    name, resampling
        Written as the multiscale's ``name`` and ``type`` (default ``"image"`` and
        ``"unknown"``: NGFF's strict schema asks for both).

    Returns
    -------
    dict
        Always the ``refstore:levels`` attribute; the NGFF attribute too when *axes*
        follow NGFF's required order ([t] [c] then 2-3 space axes). Channel-last axes
        (``y, x, c``) do not, so such pyramids carry ``refstore:levels`` only.
    """
    spatial = [_TYPES.get(a) == "space" for a in axes]
    if factors is None:
        factors = [
            [Fraction(shapes[0][i], s[i]) if spatial[i] and s[i] else Fraction(1) for i in range(len(axes))]
            for s in shapes
        ]
    if offsets is None:
        offsets = [[Fraction(0)] * len(axes) for _ in shapes]
    records = [
        {"path": p, "factor": [_encode(Fraction(f)) for f in fs], "offset": [_encode(Fraction(o)) for o in os]}
        for p, fs, os in zip(paths, factors, offsets, strict=True)
    ]
    attrs: dict[str, Any] = {LEVELS_KEY: records}
    if not _ngff_conforms(axes):
        return attrs
    multiscale: dict[str, Any] = {
        "axes": [{"name": a, "type": _TYPES[a]} for a in axes],
        "datasets": [
            {
                "path": p,
                "coordinateTransformations": [
                    {"type": "scale", "scale": [float(f) for f in fs]},
                    {"type": "translation", "translation": [float(o) for o in os]},
                ],
            }
            for p, fs, os in zip(paths, factors, offsets, strict=True)
        ],
    }
    # name, type and metadata are optional in NGFF, but its strict schema asks for them
    multiscale["name"] = name or "image"
    multiscale["type"] = resampling or "unknown"
    multiscale["metadata"] = {"refstore:levels": "exact factors and offsets are in the group's refstore:levels"}
    if zarr_format == 2:
        attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    else:
        attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    return attrs


def _ngff_multiscale(attrs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    ome = attrs.get("ome")
    found = (ome or {}).get("multiscales") if isinstance(ome, Mapping) else None
    found = found or attrs.get("multiscales")
    if isinstance(found, list) and found and isinstance(found[0], Mapping):
        return found[0]
    return None


def _axis_names(attrs: Mapping[str, Any], group: Any, first: str) -> tuple[str, ...] | None:
    """The pyramid's axis names: NGFF ``axes``, else the first level's dimension names."""
    ms = _ngff_multiscale(attrs)
    if ms is not None and isinstance(ms.get("axes"), list):
        declared = [a.get("name") if isinstance(a, Mapping) else a for a in ms["axes"]]
        if all(isinstance(n, str) for n in declared):
            return tuple(str(n) for n in declared)
    array = group[first]
    dims = getattr(getattr(array, "metadata", None), "dimension_names", None)
    if dims is None:
        dims = dict(array.attrs).get("_ARRAY_DIMENSIONS")
    return tuple(str(n) for n in dims) if dims and all(n is not None for n in dims) else None


def levels(group: Any) -> list[Level]:
    """Return the levels of the pyramid *group* (a zarr group), largest first.

    Factors and offsets come from ``refstore:levels`` when present, then from the
    NGFF ``scale``/``translation`` (relative to level 0), then from array shapes of
    children named ``0``, ``1``, ... . Each level's ``array`` opens on first access.

    Raises
    ------
    ValueError
        If the group describes no levels.
    """
    attrs = dict(group.attrs)
    found: list[tuple[str, list[Fraction] | None, list[Fraction] | None]] = []
    if isinstance(attrs.get(LEVELS_KEY), list):
        for rec in attrs[LEVELS_KEY]:
            found.append((str(rec["path"]), [_decode(v) for v in rec["factor"]], [_decode(v) for v in rec["offset"]]))
    elif (ms := _ngff_multiscale(attrs)) is not None:
        base: list[Fraction] | None = None
        for ds in ms.get("datasets", []):
            scale = translation = None
            for t in ds.get("coordinateTransformations", []):
                if t.get("type") == "scale":
                    scale = [_decode(v) for v in t["scale"]]
                elif t.get("type") == "translation":
                    translation = [_decode(v) for v in t["translation"]]
            if scale is not None and base is None:
                base = scale
            factor = [s / b if b else Fraction(1) for s, b in zip(scale, base)] if scale and base else None
            offset = [t / b if b else Fraction(0) for t, b in zip(translation, base)] if translation and base else None
            found.append((str(ds["path"]), factor, offset))
    else:
        names = sorted((n for n in group.array_keys() if n.isdigit()), key=int)
        found = [(n, None, None) for n in names]
    if not found:
        raise ValueError(f"{group}: no pyramid levels (no {LEVELS_KEY!r}, NGFF multiscales, or arrays 0, 1, ...)")
    shapes = [tuple(group[path].shape) for path, _, _ in found]
    axes = _axis_names(attrs, group, found[0][0])
    result = []
    for (path, factor, offset), shape in zip(found, shapes, strict=True):
        if factor is None:
            factor = [Fraction(a, b) if b else Fraction(1) for a, b in zip(shapes[0], shape)]
        if offset is None:
            offset = [Fraction(0)] * len(shape)
        result.append(Level(path, shape, tuple(factor), tuple(offset), axes, group))
    return result


def pick_level(
    group: Any,
    resolution_or_shape: float | Sequence[float] | Sequence[int] | None = None,
    *,
    resolution: float | Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
) -> Level:
    """Choose the level of a pyramid to read for a wanted resolution or output shape.

    Parameters
    ----------
    group
        A pyramid group, or the list `levels` returned for one.
    resolution_or_shape
        Positional shorthand: a number or a sequence of floats is a *resolution*,
        a sequence of ints a *shape*.
    resolution
        The wanted downsample factor relative to level 0: one number for every
        axis whose factor is not 1, or one per axis (or per trailing axis). The
        coarsest level whose factor is at most the wanted one on every axis is
        chosen (never coarser than asked).
    shape
        The wanted output shape, one length per axis or per trailing axis (for
        example ``(height, width)`` of a display). The smallest level at least
        that large on every given axis is chosen.

    Returns
    -------
    Level
        Level 0 when nothing finer than asked exists.

    Raises
    ------
    ValueError
        If neither or both of a resolution and a shape are given.
    """
    if resolution_or_shape is not None:
        if isinstance(resolution_or_shape, (int, float)):
            resolution = resolution if resolution is not None else float(resolution_or_shape)
        elif all(isinstance(v, int) for v in resolution_or_shape):
            shape = shape if shape is not None else [int(v) for v in resolution_or_shape]
        else:
            resolution = resolution if resolution is not None else [float(v) for v in resolution_or_shape]
    if (resolution is None) == (shape is None):
        raise ValueError("pick_level: give either a resolution (downsample factor) or a shape, not both or neither")
    all_levels = group if isinstance(group, list) else levels(group)
    best = all_levels[0]
    for level in all_levels:
        if shape is not None:
            wanted = [int(v) for v in shape]
            ok = all(have >= want for have, want in zip(level.shape[-len(wanted):], wanted))
        else:
            factors = [float(f) for f in level.factor]
            if isinstance(resolution, (int, float)):
                ok = all(f <= float(resolution) * (1 + 1e-9) or math.isclose(f, 1) for f in factors)
            else:
                wanted_f = [float(v) for v in resolution or ()]
                ok = all(f <= w * (1 + 1e-9) for f, w in zip(factors[-len(wanted_f):], wanted_f))
        if ok:
            best = level
    return best
