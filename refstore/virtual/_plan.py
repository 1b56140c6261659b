"""How each chunk of a virtual array is produced: absent, passed through from a source, or assembled."""

from __future__ import annotations

from typing import Any

from refstore.virtual._source import ZarrSource, encoding_of, is_sharded, same_value

#: ``("fill", None, None)``, ``("pass", source, source_coords)`` or ``("assemble", None, None)``.
Plan = tuple[str, Any, Any]

_FILL: Plan = ("fill", None, None)
_ASSEMBLE: Plan = ("assemble", None, None)
_UNDECIDED: Any = object()


class ChunkPlanner:
    """Plans the chunks of one virtual array; built once, so each plan costs a few lookups.

    The layers touching a chunk are found through buckets along one dimension (the
    one that separates the layers best, e.g. the concatenation axis), and whether a
    layer can pass chunks through is decided once per layer.

    Parameters
    ----------
    v
        The :class:`~refstore.virtual.VirtualArray`.
    encoding
        The virtual array's encoding (:func:`~refstore.virtual._source.encoding_of`);
        a source chunk passes through only from a source encoded the same way.
    """

    def __init__(self, v: Any, encoding: str) -> None:
        from refstore.virtual._runs import Layers

        self.v = v
        self.encoding = encoding
        self._static: dict[int, tuple[ZarrSource, dict[int, tuple[int, int, int]], tuple[int, ...]] | None] = {}
        self._encodings: dict[int, tuple[Any, str]] = {}
        #: a definition's runs find their layers by bisection, without making the others
        self._lazy = v.layers if isinstance(v.layers, Layers) else None
        if self._lazy is not None:
            self._ranges: list[tuple[tuple[int, int], ...] | None] = []
            self._dim: int | None = None
            self._buckets: list[list[int]] = []
            return
        #: per layer, its chunk-index range per dimension (None for an empty layer)
        self._ranges = [
            None if 0 in layer.shape else tuple(
                (o // c, -(-(o + n) // c)) for o, n, c in zip(layer.origin, layer.shape, v.chunks)
            )
            for layer in v.layers
        ]
        self._dim, self._buckets = self._index()

    def _index(self) -> tuple[int | None, list[list[int]]]:
        """Buckets of layer indices per chunk index along the best dimension (None: scan all)."""
        live = [r for r in self._ranges if r is not None]
        if len(live) < 8 or not self.v.ndim:
            return None, []
        grids = [-(-n // c) for n, c in zip(self.v.shape, self.v.chunks)]
        entries = [sum(r[d][1] - r[d][0] for r in live) for d in range(self.v.ndim)]
        # the dimension whose buckets hold the fewest layers on average
        dim = min(range(self.v.ndim), key=lambda d: entries[d] / max(grids[d], 1))
        grid = grids[dim]
        if entries[dim] > 4 * (grid + len(live)) or entries[dim] >= grid * len(live):
            return None, []  # layers overlap too much along every dimension for buckets to help
        buckets: list[list[int]] = [[] for _ in range(grid)]
        for i, r in enumerate(self._ranges):
            if r is not None:
                for c in range(*r[dim]):
                    buckets[c].append(i)
        return dim, buckets

    def hits(self, coords: tuple[int, ...]) -> list[int]:
        """Indices (in layer order) of the layers whose box touches chunk ``coords``."""
        if self._lazy is not None:
            return self._lazy.hits([(c * n, (c + 1) * n) for c, n in zip(coords, self.v.chunks)])
        if self._dim is None:
            candidates: Any = range(len(self._ranges))
        else:
            c = coords[self._dim]
            candidates = self._buckets[c] if 0 <= c < len(self._buckets) else ()
        out = []
        for i in candidates:
            r = self._ranges[i]
            if r is not None and all(lo <= c < hi for c, (lo, hi) in zip(coords, r)):
                out.append(i)
        return out

    async def _passable(self, i: int) -> tuple[ZarrSource, dict[int, tuple[int, int, int]], tuple[int, ...]] | None:
        """What layer ``i`` needs to pass chunks through, or None if it never can."""
        if i in self._static:
            return self._static[i]
        layer, v = self.v.layers[i], self.v
        found = None
        src = layer.source
        mapped = layer.mapped()
        if (
            isinstance(src, ZarrSource)
            and not layer.blocked
            and not any(isinstance(m, int) for m in layer.src_map)
            and all(d in mapped or v.chunks[d] == 1 for d in range(v.ndim))
        ):
            arr = await src.open_async()
            if i in self._static:  # decided by a concurrent plan while this one waited
                return self._static[i]
            src_chunks = tuple(arr.chunks)
            if (
                not is_sharded(arr)  # a stored object is a shard of many chunks: assembled instead
                and self._encoding_of(arr) == self.encoding
                and same_value(src.fill_value, v.fill_value)
                and all(step == 1 and src_chunks[k] == v.chunks[d] for d, (k, _, step) in mapped.items())
            ):
                found = (src, mapped, src_chunks)
        self._static[i] = found
        return found

    def _encoding_of(self, arr: Any) -> str:
        """:func:`encoding_of`, once per metadata object (the sources of a run share a few)."""
        meta = arr.metadata
        found = self._encodings.get(id(meta))
        if found is None or found[0] is not meta:
            found = self._encodings[id(meta)] = (meta, encoding_of(arr))
        return found[1]

    async def plan(self, coords: tuple[int, ...]) -> Plan:
        """How chunk ``coords`` is produced (see ``spec/virtual.md``, "Producing a chunk")."""
        hits = self.hits(coords)
        if not hits:
            return _FILL
        i = hits[-1]
        layer, v = self.v.layers[i], self.v
        box = [(c * n, min((c + 1) * n, s)) for c, n, s in zip(coords, v.chunks, v.shape)]
        if not all(o <= lo and hi <= o + n for (lo, hi), o, n in zip(box, layer.origin, layer.shape)):
            return _ASSEMBLE
        static = self._static.get(i, _UNDECIDED)
        if static is _UNDECIDED:
            static = await self._passable(i)
        if static is None:
            return _ASSEMBLE
        src, mapped, src_chunks = static
        src_coords = [0] * len(layer.src_map)
        for d, (k, start, _) in mapped.items():
            first = start + box[d][0] - layer.origin[d]
            if first % src_chunks[k]:
                return _ASSEMBLE
            src_coords[k] = first // src_chunks[k]
        return "pass", src, tuple(src_coords)


async def plan_chunk(v: Any, encoding: str, coords: tuple[int, ...]) -> Plan:
    """Decide how chunk ``coords`` of ``v`` is produced (one-off; see :class:`ChunkPlanner`).

    Returns ``("fill", None, None)`` when no layer touches it, ``("pass", source,
    source_coords)`` when it is exactly one stored chunk of a source encoded like the
    virtual array (``encoding``), else ``("assemble", None, None)``.
    """
    return await ChunkPlanner(v, encoding).plan(coords)
