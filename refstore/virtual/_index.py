"""Index math for virtual arrays: layers placed in the virtual index space, and views over them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from refstore.errors import ManifestError

#: One source dimension of a layer: a fixed source index (the dimension was dropped by an
#: integer index), or ``(virtual_dim, start, step)``: virtual index ``i`` on ``virtual_dim``
#: reads source index ``start + (i - origin[virtual_dim]) * step``.
SourceDim = int | tuple[int, int, int]

#: A normalized index item: an int, or ``(start, stop, step)`` with ``step >= 1``.
Item = int | tuple[int, int, int]


@dataclass(frozen=True)
class Layer:
    """A source placed at ``origin`` in the virtual index space, covering a box of ``shape``.

    Parameters
    ----------
    source
        A :class:`~refstore.virtual._source.ZarrSource` or a nested ``VirtualArray``.
    origin, shape
        The box the layer covers, one entry per virtual dimension.
    src_map
        One entry per *source* dimension; see :data:`SourceDim`. Virtual dimensions no
        source dimension maps to are new axes of extent 1 (stacking).
    """

    source: Any
    origin: tuple[int, ...]
    shape: tuple[int, ...]
    src_map: tuple[SourceDim, ...]

    def mapped(self) -> dict[int, tuple[int, int, int]]:
        """``{virtual_dim: (source_dim, start, step)}`` for the mapped virtual dimensions."""
        return {m[0]: (k, m[1], m[2]) for k, m in enumerate(self.src_map) if not isinstance(m, int)}

    def source_selection(self) -> tuple[int | slice, ...]:
        """The source index that reads this layer's whole box."""
        sel: list[int | slice] = []
        for m in self.src_map:
            if isinstance(m, int):
                sel.append(m)
            else:
                vdim, start, step = m
                n = self.shape[vdim]
                sel.append(slice(start, start + step * (n - 1) + 1, step))
        return tuple(sel)

    def box(self) -> tuple[slice, ...]:
        """The layer's box as slices of the virtual array."""
        return tuple(slice(o, o + n) for o, n in zip(self.origin, self.shape))


def normalize_index(index: Any, shape: tuple[int, ...]) -> tuple[Item, ...]:
    """Normalize a basic numpy index (ints, slices with positive step, one Ellipsis).

    Raises
    ------
    IndexError
        For out-of-range integers, too many indices, or unsupported index types.
    """
    if not isinstance(index, tuple):
        index = (index,)
    if sum(1 for i in index if i is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if any(i is Ellipsis for i in index):
        pos = next(k for k, i in enumerate(index) if i is Ellipsis)
        fill = len(shape) - (len(index) - 1)
        index = index[:pos] + (slice(None),) * fill + index[pos + 1 :]
    if len(index) > len(shape):
        raise IndexError(f"too many indices for a virtual array of {len(shape)} dimensions: {index!r}")
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    out: list[Item] = []
    for dim, (item, n) in enumerate(zip(index, shape)):
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            i = int(item)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {dim} with size {n}")
            out.append(i % n)
        elif isinstance(item, slice):
            start, stop, step = item.indices(n)
            if step < 1:
                raise IndexError(f"virtual arrays support only positive slice steps, got {item!r} on axis {dim}")
            stop = max(stop, start)
            out.append((start, stop, step))
        else:
            raise IndexError(
                f"virtual arrays support ints, slices and '...', got {type(item).__name__} on axis {dim}"
            )
    return tuple(out)


def item_length(item: tuple[int, int, int]) -> int:
    start, stop, step = item
    return len(range(start, stop, step))


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def view_layer(layer: Layer, sel: tuple[Item, ...]) -> Layer | None:
    """The layer as seen through ``sel`` (in the coordinates of the view), or None if it drops out."""
    origin: list[int] = []
    shape: list[int] = []
    new_dim: dict[int, int] = {}  # old vdim -> new vdim
    first: dict[int, int] = {}  # old vdim -> first old virtual index inside the view
    sub: dict[int, int] = {}  # old vdim -> step multiplier
    fixed: dict[int, int] = {}  # old vdim (int-indexed) -> the virtual index
    for d, item in enumerate(sel):
        o, n = layer.origin[d], layer.shape[d]
        if isinstance(item, int):
            if not o <= item < o + n:
                return None
            fixed[d] = item
            continue
        a, _, s = item
        m = item_length(item)
        jlo = max(0, _ceil_div(o - a, s))
        jhi = min(m, _ceil_div(o + n - a, s))
        if jhi <= jlo:
            return None
        new_dim[d] = len(origin)
        origin.append(jlo)
        shape.append(jhi - jlo)
        first[d] = a + jlo * s
        sub[d] = s
    src_map: list[SourceDim] = []
    for m in layer.src_map:
        if isinstance(m, int):
            src_map.append(m)
            continue
        vdim, start, step = m
        o = layer.origin[vdim]
        if vdim in fixed:
            src_map.append(start + (fixed[vdim] - o) * step)
        else:
            src_map.append((new_dim[vdim], start + (first[vdim] - o) * step, step * sub[vdim]))
    return Layer(layer.source, tuple(origin), tuple(shape), tuple(src_map))


def shift_layer(layer: Layer, offset: tuple[int, ...], insert_axis: int | None = None) -> Layer:
    """Move a layer by ``offset``; with ``insert_axis``, first add a new axis of extent 1 there."""
    origin, shape, src_map = list(layer.origin), list(layer.shape), list(layer.src_map)
    if insert_axis is not None:
        origin.insert(insert_axis, 0)
        shape.insert(insert_axis, 1)
        src_map = [
            m if isinstance(m, int) else ((m[0] + 1 if m[0] >= insert_axis else m[0]), m[1], m[2])
            for m in src_map
        ]
    origin = [o + off for o, off in zip(origin, offset)]
    return Layer(layer.source, tuple(origin), tuple(shape), tuple(src_map))


def check_axis(axis: int, ndim: int, what: str) -> int:
    """Normalize a possibly negative ``axis`` for an array of ``ndim`` dimensions."""
    if not -ndim <= axis < ndim:
        raise ManifestError(f"{what}: axis {axis} is out of range for {ndim} dimensions")
    return axis % ndim
