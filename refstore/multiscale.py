"""Multiscale metadata: OME-NGFF 0.4/0.5 attributes with exact level factors, and level choice.

Builders write it with :func:`multiscale_attributes`; readers list a pyramid's
levels with :func:`levels` and choose one with :func:`pick_level`. See
``spec/multiscale.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

__all__ = ["LEVELS_KEY", "Level", "levels", "multiscale_attributes", "ngff_order", "pick_level"]

LEVELS_KEY = "refstore:levels"
"""The group attribute holding exact per-level factors and offsets."""

_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


@dataclass(frozen=True)
class Level:
    """One level of a pyramid.

    Attributes
    ----------
    path
        The array's path inside the group (``"0"``, ``"1"``, ...).
    shape
        The array's shape.
    factor
        Per axis, how many level-0 pixels one pixel of this level spans (1 for
        level 0 and for non-spatial axes).
    offset
        Per axis, where the centre of this level's first pixel lies, in level-0
        pixel coordinates (the NGFF translation with unit pixel size).
    """

    path: str
    shape: tuple[int, ...]
    factor: tuple[Fraction, ...]
    offset: tuple[Fraction, ...]


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


def levels(group: Any) -> list[Level]:
    """Return the levels of the pyramid *group* (a zarr group), largest first.

    Factors and offsets come from ``refstore:levels`` when present, then from the
    NGFF ``scale``/``translation`` (relative to level 0), then from array shapes of
    children named ``0``, ``1``, ... .

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
    result = []
    for (path, factor, offset), shape in zip(found, shapes, strict=True):
        if factor is None:
            factor = [Fraction(a, b) if b else Fraction(1) for a, b in zip(shapes[0], shape)]
        if offset is None:
            offset = [Fraction(0)] * len(shape)
        result.append(Level(path, shape, tuple(factor), tuple(offset)))
    return result


def pick_level(group: Any, resolution_or_shape: float | Sequence[float] | Sequence[int]) -> Level:
    """Choose the level of *group* to read for a wanted resolution or output shape.

    Parameters
    ----------
    resolution_or_shape
        - A number or a sequence of floats: the wanted downsample factor relative
          to level 0 (all axes, or one per axis). The coarsest level whose factor is
          at most the wanted one on every axis is chosen (never coarser than asked).
        - A sequence of ints: a wanted shape (one per axis, or for the last axes).
          The smallest level at least that large on every given axis is chosen.

    Returns
    -------
    Level
        Level 0 when nothing finer than asked exists.
    """
    all_levels = levels(group)
    if isinstance(resolution_or_shape, (int, float)):
        wanted = [float(resolution_or_shape)]
        by_shape = False
    else:
        values = list(resolution_or_shape)
        by_shape = all(isinstance(v, int) for v in values)
        wanted = [float(v) for v in values]
    best = all_levels[0]
    for level in all_levels:
        if by_shape:
            ok = all(have >= want for have, want in zip(level.shape[-len(wanted):], wanted))
        else:
            factors = [float(f) for f in level.factor]
            if len(wanted) == 1:
                ok = all(f <= wanted[0] * (1 + 1e-9) or math.isclose(f, 1) for f in factors)
            else:
                ok = all(f <= w * (1 + 1e-9) for f, w in zip(factors[-len(wanted):], wanted))
        if ok:
            best = level
    return best
