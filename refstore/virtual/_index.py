"""Index math for virtual arrays: layers placed in the virtual index space, and views over them."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from refstore.errors import ManifestError


@dataclass(frozen=True)
class Blocked:
    """A source dimension read in blocks that sit at a per-block offset inside fixed strides.

    Virtual index ``i`` on ``vdim`` gives ``j = start + (i - origin[vdim]) * step``, which
    lies in block ``k = j // block`` at position ``p = j % block``; it reads source index
    ``k * stride + offset(k) + p``, where ``offset(k)`` is ``offsets[k]``, the last entry
    repeating for later blocks. A Deep Zoom level with overlap ``ov`` and tile size ``T``
    stored as chunks of ``T + 2 * ov`` is ``Blocked(d, 0, 1, T, T + 2 * ov, (0, ov))``.
    """

    vdim: int
    start: int
    step: int
    block: int
    stride: int
    offsets: tuple[int, ...]

    def offset(self, k: int) -> int:
        """The offset of block ``k`` inside its stride."""
        return self.offsets[min(k, len(self.offsets) - 1)]

    def source_index(self, j: int) -> int:
        """The source index of position ``j`` (already shifted by ``start`` and scaled by ``step``)."""
        k, p = divmod(j, self.block)
        return k * self.stride + self.offset(k) + p

    def runs(self, n: int) -> list[tuple[int, int, slice, tuple[int, int]]]:
        """Split virtual positions ``0 .. n-1`` (relative to the origin) into one run per block.

        Returns ``(lo, hi, source_slice, block_span)``: positions ``lo .. hi-1`` read
        ``source_slice``; ``block_span`` is the source range the block can ever read.
        """
        out = []
        t = 0
        while t < n:
            j = self.start + t * self.step
            k = j // self.block
            hi = min(n, _ceil_div((k + 1) * self.block - self.start, self.step))
            first = self.source_index(j)
            base = k * self.stride + self.offset(k)
            out.append((t, hi, slice(first, first + (hi - t - 1) * self.step + 1, self.step), (base, base + self.block)))
            t = hi
        return out


#: One source dimension of a layer: a fixed source index (the dimension was dropped by an
#: integer index); ``(virtual_dim, start, step)``: virtual index ``i`` on ``virtual_dim``
#: reads source index ``start + (i - origin[virtual_dim]) * step``; or a :class:`Blocked` map.
SourceDim = int | tuple[int, int, int] | Blocked

#: One piece of a layer read: the box it fills (slices relative to the layer's origin),
#: the source selection, and per source dimension the source range the layer's map can
#: reach around it (None: unbounded), which tells whether a source chunk can be read again.
Piece = tuple[tuple[slice, ...], tuple[int | slice, ...], tuple[tuple[int, int] | None, ...]]

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
        """``{virtual_dim: (source_dim, start, step)}`` for the plainly mapped virtual dimensions."""
        return {m[0]: (k, m[1], m[2]) for k, m in enumerate(self.src_map) if isinstance(m, tuple)}

    @property
    def blocked(self) -> bool:
        """True if some source dimension is a :class:`Blocked` map."""
        return any(isinstance(m, Blocked) for m in self.src_map)

    def source_selection(self) -> tuple[int | slice, ...]:
        """The source index that reads this layer's whole box (layers without blocked maps)."""
        pieces = self.pieces()
        if len(pieces) != 1:
            raise ValueError("a layer with blocked maps reads as several pieces; use pieces()")
        return pieces[0][1]

    def pieces(self) -> list[Piece]:
        """The layer's box split into rectangular source selections: one per block combination.

        A layer without :class:`Blocked` maps is one piece covering its whole box.
        """
        per_dim: list[list[tuple[int | None, int, int, int | slice, tuple[int, int] | None]]] = []
        for m in self.src_map:
            if isinstance(m, int):
                per_dim.append([(None, 0, 0, m, None)])
            elif isinstance(m, Blocked):
                per_dim.append([(m.vdim, lo, hi, sl, span) for lo, hi, sl, span in m.runs(self.shape[m.vdim])])
            else:
                vdim, start, step = m
                n = self.shape[vdim]
                per_dim.append([(vdim, 0, n, slice(start, start + step * (n - 1) + 1, step), None)])
        out: list[Piece] = []
        for combo in itertools.product(*per_dim):
            box = [slice(0, n) for n in self.shape]
            for cdim, lo, hi, _, _ in combo:
                if cdim is not None:
                    box[cdim] = slice(lo, hi)
            out.append((tuple(box), tuple(c[3] for c in combo), tuple(c[4] for c in combo)))
        return out

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
    for sm in layer.src_map:
        if isinstance(sm, int):
            src_map.append(sm)
            continue
        if isinstance(sm, Blocked):
            o = layer.origin[sm.vdim]
            if sm.vdim in fixed:
                src_map.append(sm.source_index(sm.start + (fixed[sm.vdim] - o) * sm.step))
            else:
                start = sm.start + (first[sm.vdim] - o) * sm.step
                src_map.append(replace(sm, vdim=new_dim[sm.vdim], start=start, step=sm.step * sub[sm.vdim]))
            continue
        vdim, start, step = sm
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
        src_map = [_renumber(m, insert_axis) for m in src_map]
    origin = [o + off for o, off in zip(origin, offset)]
    return Layer(layer.source, tuple(origin), tuple(shape), tuple(src_map))


def _renumber(m: SourceDim, insert_axis: int) -> SourceDim:
    """``m`` with its virtual dimension moved up by one if it is at or after ``insert_axis``."""
    if isinstance(m, int):
        return m
    if isinstance(m, Blocked):
        return replace(m, vdim=m.vdim + 1) if m.vdim >= insert_axis else m
    return ((m[0] + 1 if m[0] >= insert_axis else m[0]), m[1], m[2])


def touched_chunks(v: Any) -> Iterator[tuple[int, ...]]:
    """The coordinates of the chunks of virtual array ``v`` that some layer's box touches, each once."""
    boxes = []
    # a definition's runs give their boxes without making their layers (refstore.virtual._runs.Layers)
    places = v.layers.boxes() if hasattr(v.layers, "boxes") else ((la.origin, la.shape) for la in v.layers)
    for origin, shape in places:
        if 0 in shape:
            continue
        boxes.append(tuple(range(o // c, -(-(o + n) // c)) for o, n, c in zip(origin, shape, v.chunks)))
    for i, box in enumerate(boxes):
        # earlier boxes this one shares chunks with (few: only neighbours, for concatenations)
        earlier = [b for b in boxes[:i] if all(r.start < q.stop and q.start < r.stop for r, q in zip(box, b))]
        for coords in itertools.product(*box):
            if not any(all(c in r for c, r in zip(coords, b)) for b in earlier):
                yield coords


def check_axis(axis: int, ndim: int, what: str) -> int:
    """Normalize a possibly negative ``axis`` for an array of ``ndim`` dimensions."""
    if not -ndim <= axis < ndim:
        raise ManifestError(f"{what}: axis {axis} is out of range for {ndim} dimensions")
    return axis % ndim
