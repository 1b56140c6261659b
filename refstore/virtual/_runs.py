"""Runs: many whole embedded sources placed one after another, written once (definition version 2).

A concatenation of N inputs has N layers that differ only in where they sit along one
axis and in their extent along it, and N sources whose metadata differ only in that
extent. A *run* writes them as the shared parts once and, per source, its length
(``spec/virtual.md``, "Runs"): the definition then costs a few bytes per input, and no
source needs metadata documents of its own in the manifest.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, overload

import numpy as np

from refstore.errors import ManifestError
from refstore.virtual._index import Layer

#: The metadata documents of an embedded source (``{"path": P}``), or None if it has none.
DocsOf = Callable[[str], Mapping[str, bytes] | None]

#: Of a source's attributes, a run keeps only the dimension names: reads need nothing else.
_KEPT_ATTRS = ("_ARRAY_DIMENSIONS",)


def _split_path(path: str) -> tuple[str, int] | None:
    """``("a/.sources/", 12)`` for ``"a/.sources/12"``; None if the path does not end in a number."""
    head, sep, tail = path.rpartition("/")
    if not sep or not tail.isdigit() or (len(tail) > 1 and tail[0] == "0"):
        return None
    return head + sep, int(tail)


def template_of(docs: Mapping[str, bytes]) -> tuple[dict[str, Any], list[int]] | None:
    """``(template, shape)`` of a source's metadata documents: what a run stores once, and the source's shape.

    The template is the zarr 3 ``zarr.json`` (attributes dropped) or the zarr 2 ``.zarray``
    (with ``.zattrs`` reduced to the dimension names); None if the documents are neither.
    """
    if "zarr.json" in docs:
        meta = json.loads(docs["zarr.json"])
        if meta.get("node_type") != "array":
            return None
        meta["attributes"] = {}
        return {"zarr.json": meta}, list(meta["shape"])
    if ".zarray" not in docs:
        return None
    zarray = json.loads(docs[".zarray"])
    attrs = json.loads(docs[".zattrs"]) if ".zattrs" in docs else {}
    kept = {k: attrs[k] for k in _KEPT_ATTRS if k in attrs}
    out: dict[str, Any] = {".zarray": zarray}
    if kept:
        out[".zattrs"] = kept
    return out, list(zarray["shape"])


def _shape_key(template: Mapping[str, Any], axis: int | None) -> str:
    """The template as a string with the extent along ``axis`` blanked: equal for sources a run can share."""
    doc = dict(template)
    name = "zarr.json" if "zarr.json" in doc else ".zarray"
    meta = dict(doc[name])
    shape = list(meta["shape"])
    if axis is not None:
        shape[axis] = -1
    meta["shape"] = shape
    doc[name] = meta
    return json.dumps(doc, sort_keys=True)


def _layer_kind(layer: Mapping[str, Any], ndim: int) -> tuple[str, int | None] | None:
    """``("concat", None)`` for an identity map, ``("stack", axis)`` for one skipping ``axis``, else None."""
    m = layer["map"]
    if not all(isinstance(e, list) and len(e) == 3 and e[1] == 0 and e[2] == 1 for e in m):
        return None
    vdims = [e[0] for e in m]
    if len(m) == ndim and vdims == list(range(ndim)):
        return "concat", None
    if len(m) == ndim - 1:
        missing = sorted(set(range(ndim)) - set(vdims))
        if len(missing) == 1 and vdims == [d for d in range(ndim) if d != missing[0]]:
            return "stack", missing[0]
    return None


class _Candidate:
    """One layer that could join a run: its source's place, shape and template."""

    def __init__(self, layer: Mapping[str, Any], ndim: int, docs_of: DocsOf) -> None:
        self.ok = False
        src = layer["source"]
        if set(src) != {"path"} or not isinstance(src["path"], str):
            return
        where = _split_path(src["path"])
        kind = _layer_kind(layer, ndim)
        docs = docs_of(src["path"])
        if where is None or kind is None or docs is None:
            return
        found = template_of(docs)
        if found is None:
            return
        self.prefix, self.number = where
        self.kind, self.new_axis = kind
        self.template, src_shape = found
        self.origin, self.shape = list(layer["origin"]), list(layer["shape"])
        full = src_shape if self.kind == "concat" else src_shape[: self.new_axis] + [1] + src_shape[self.new_axis :]
        self.ok = full == self.shape  # the layer shows the whole source


def _axis_between(a: _Candidate, b: _Candidate) -> int | None:
    """The axis along which ``b`` directly follows ``a`` (the same everywhere else), or None."""
    if a.kind != b.kind or a.prefix != b.prefix or b.number != a.number + 1 or len(a.origin) != len(b.origin):
        return None
    if a.kind == "stack":
        axis = a.new_axis
        if b.new_axis != axis:
            return None
    else:
        moved = [d for d in range(len(a.origin)) if a.origin[d] != b.origin[d]]
        if len(moved) != 1:
            return None
        axis = moved[0]
    assert axis is not None
    same_elsewhere = all(
        a.origin[d] == b.origin[d] and a.shape[d] == b.shape[d] for d in range(len(a.origin)) if d != axis
    )
    return axis if same_elsewhere and b.origin[axis] == a.origin[axis] + a.shape[axis] else None


def pack_runs(layers: Sequence[dict[str, Any]], ndim: int, docs_of: DocsOf) -> tuple[list[dict[str, Any]], set[str]]:
    """Replace each stretch of two or more consecutive run-able layers by one run.

    A layer can join a run when its source is embedded (``{"path": "<prefix><k>"}`` with
    metadata documents from ``docs_of``), it shows the whole source unmapped (concat) or
    with one new axis (stack), and it sits right after the previous layer along one axis
    with source number ``k + 1``.

    Returns
    -------
    (layers, paths)
        The definition's layers (runs among them, in place, so "last wins" is kept)
        and the source paths that runs now describe (their metadata documents need not
        be stored).
    """
    cands = [_Candidate(layer, ndim, docs_of) for layer in layers]
    out: list[dict[str, Any]] = []
    packed: set[str] = set()
    i = 0
    while i < len(layers):
        j, axis = i + 1, None
        if cands[i].ok:
            while j < len(layers) and cands[j].ok:
                step = _axis_between(cands[j - 1], cands[j])
                if step is None or (axis is not None and step != axis):
                    break
                axis = step
                j += 1
        if j - i < 2 or axis is None:
            out.append(layers[i])
            i += 1
            continue
        out.append({"run": _run(cands[i:j], axis)})
        packed.update(f"{c.prefix}{c.number}" for c in cands[i:j])
        i = j
    return out, packed


def _run(cands: Sequence[_Candidate], axis: int) -> dict[str, Any]:
    first = cands[0]
    templates: list[dict[str, Any]] = []
    keys: dict[str, int] = {}
    which = []
    for c in cands:
        key = _shape_key(c.template, None if c.kind == "stack" else axis)
        if key not in keys:
            keys[key] = len(templates)
            templates.append(c.template)
        which.append(keys[key])
    run: dict[str, Any] = {"axis": axis, "origin": first.origin, "path": first.prefix, "first": first.number}
    if first.kind == "stack":
        run["count"] = len(cands)
    else:
        run["lengths"] = [c.shape[axis] for c in cands]
    run["metadata"] = templates
    if len(templates) > 1:
        run["which"] = which
    return run


class Run:
    """A parsed run: the place, shape and metadata documents of each of its sources.

    Checked when parsed (in time proportional to the number of sources, vectorized): every
    source lies inside the virtual array of ``shape``; its layers are made on demand.

    Raises
    ------
    refstore.ManifestError
        On a malformed run, naming the field (``where`` says which layer).
    """

    def __init__(self, d: Mapping[str, Any], shape: tuple[int, ...], where: str) -> None:
        ndim = len(shape)
        try:
            self.axis = int(d["axis"])
            self.origin = [int(o) for o in d["origin"]]
            self.path = str(d["path"])
            self.first = int(d.get("first", 0))
            self.new_axis = "count" in d
            count = int(d["count"]) if self.new_axis else 0
            # checked before anything is allocated for it: a hostile count must not fill memory
            fits = 0 <= count <= max(shape, default=0)
            lengths = np.ones(count if fits else 0, np.int64) if self.new_axis else np.asarray(d["lengths"], np.int64)
            self.templates = list(d["metadata"])
            which = np.asarray(d.get("which", np.zeros(len(lengths), np.int64)), np.int64)
        except KeyError as e:
            raise ManifestError(f"{where}: run lacks field {e.args[0]!r}") from None
        except (TypeError, ValueError, OverflowError):
            raise ManifestError(f"{where}: run fields have the wrong types") from None
        if not fits:
            raise ManifestError(f"{where}: run count {count} does not fit the shape {shape}")
        if lengths.ndim != 1 or which.shape != lengths.shape:
            raise ManifestError(f"{where}: run field 'which' must give a metadata index per source")
        self.lengths, self.which = lengths, which
        if not 0 <= self.axis < ndim or len(self.origin) != ndim or self.first < 0:
            raise ManifestError(f"{where}: run axis {self.axis} or origin {self.origin} do not fit {ndim} dimensions")
        if bool(((which < 0) | (which >= len(self.templates))).any()):
            raise ManifestError(f"{where}: run field 'which' must give a metadata index per source")
        if bool((lengths < 0).any()):
            raise ManifestError(f"{where}: run lengths must be non-negative")
        #: where each source starts along the axis, and (last) where the run ends
        self.starts = self.origin[self.axis] + np.concatenate([[0], np.cumsum(lengths)])
        self._shapes: list[list[int]] = []
        for k, t in enumerate(self.templates):
            if not isinstance(t, dict) or not ({"zarr.json", ".zarray"} & set(t)):
                raise ManifestError(f"{where}: run metadata {k} holds neither 'zarr.json' nor '.zarray'")
            meta = t.get("zarr.json", t.get(".zarray"))
            tshape = meta.get("shape") if isinstance(meta, dict) else None
            if not isinstance(tshape, list) or len(tshape) != (ndim - 1 if self.new_axis else ndim):
                raise ManifestError(f"{where}: run metadata {k} has no shape of the run's dimensions")
            full = list(tshape)
            if self.new_axis:
                full.insert(self.axis, 1)
            self._shapes.append(full)
        #: the extent of every source off the axis (the same for all)
        self.box = list(self._shapes[0]) if self._shapes else [0] * ndim
        if any(f[:self.axis] + f[self.axis + 1:] != self.box[:self.axis] + self.box[self.axis + 1:]
               for f in self._shapes):
            raise ManifestError(f"{where}: run metadata differ in shape off the run's axis")
        for dim in range(ndim):
            end = int(self.starts[-1]) if dim == self.axis else self.origin[dim] + self.box[dim]
            if self.origin[dim] < 0 or end > shape[dim]:
                raise ManifestError(f"{where}: run lies outside the shape {shape}")
        self._docs: dict[tuple[int, int], dict[str, bytes]] = {}
        self._meta: dict[tuple[int, int], Any] = {}

    def __len__(self) -> int:
        return len(self.lengths)

    def place(self, k: int) -> tuple[str, tuple[int, ...], tuple[int, ...], tuple[tuple[int, int, int], ...]]:
        """``(path, origin, shape, map)`` of the layer of source ``k``."""
        ndim = len(self.origin)
        origin = list(self.origin)
        origin[self.axis] = int(self.starts[k])
        shape = list(self.box)
        shape[self.axis] = int(self.lengths[k])
        dims = range(ndim)
        src_map = tuple((d, 0, 1) for d in dims if not (self.new_axis and d == self.axis))
        return f"{self.path}{self.first + k}", tuple(origin), tuple(shape), src_map

    def touching(self, lo: int, hi: int) -> range:
        """The sources whose extent along the axis meets ``[lo, hi)`` (empty ones included)."""
        first = int(np.searchsorted(self.starts[1:], lo, side="right"))
        stop = int(np.searchsorted(self.starts[:-1], hi, side="left"))
        return range(first, max(first, stop))

    def docs(self, k: int) -> dict[str, bytes]:
        """The metadata documents of source ``k`` (shared by the sources of one template and length)."""
        key = (int(self.which[k]), int(self.lengths[k]))
        found = self._docs.get(key)
        if found is None:
            t = self.templates[key[0]]
            name = "zarr.json" if "zarr.json" in t else ".zarray"
            meta = dict(t[name])
            if not self.new_axis:
                shape = list(meta["shape"])
                shape[self.axis] = key[1]
                meta["shape"] = shape
            found = {name: json.dumps(meta).encode()}
            if ".zattrs" in t:
                found[".zattrs"] = json.dumps(t[".zattrs"]).encode()
            self._docs[key] = found
        return found

    async def open(self, k: int, root: Any) -> Any:
        """Source ``k`` as a ``zarr.AsyncArray`` in ``root``.

        Its metadata is parsed, and its codec pipeline made, once per template and length:
        the sources sharing them are copies of one array that differ in their path only.
        """
        import copy

        from zarr.core.array import AsyncArray
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import MemoryStore, StorePath

        key = (int(self.which[k]), int(self.lengths[k]))
        where = StorePath(root, f"{self.path}{self.first + k}")
        proto = self._meta.get(key)
        if proto is None:
            docs = self.docs(k)
            buffers = default_buffer_prototype()
            store = MemoryStore({n: buffers.buffer.from_bytes(b) for n, b in docs.items()})
            meta = (await AsyncArray.open(store, zarr_format=3 if "zarr.json" in docs else 2)).metadata
            proto = self._meta[key] = AsyncArray(meta, where)
            return proto
        arr = copy.copy(proto)  # no __init__: the pipeline is the prototype's (it depends on metadata and root)
        object.__setattr__(arr, "store_path", where)
        return arr


class Layers(Sequence[Layer]):
    """The layers of a definition with runs: a run's layers (and sources) are made when first asked for.

    ``parts`` are, in order, plain :class:`Layer` objects and :class:`Run` objects (whose
    sources are in ``root``). Indexing, ``len`` and iteration are those of the expanded
    list; :meth:`hits` finds the layers touching a box without making the others.
    """

    def __init__(self, parts: Sequence[Layer | Run], root: Any) -> None:
        self.parts = list(parts)
        self.root = root
        sizes = [len(p) if isinstance(p, Run) else 1 for p in self.parts]
        self._offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._made: dict[tuple[int, int], Layer] = {}

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @overload
    def __getitem__(self, i: int) -> Layer: ...

    @overload
    def __getitem__(self, i: slice) -> list[Layer]: ...

    def __getitem__(self, i: int | slice) -> Layer | list[Layer]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"layer {i} of {n}")
        i %= n
        p = int(np.searchsorted(self._offsets, i, side="right")) - 1
        part = self.parts[p]
        return part if isinstance(part, Layer) else self._layer(p, part, i - int(self._offsets[p]))

    def __iter__(self) -> Iterator[Layer]:
        for p, part in enumerate(self.parts):
            if isinstance(part, Layer):
                yield part
            else:
                for k in range(len(part)):
                    yield self._layer(p, part, k)

    def boxes(self) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
        """``(origin, shape)`` of every layer, in order, without making the layers of runs."""
        for part in self.parts:
            if isinstance(part, Layer):
                yield part.origin, part.shape
            else:
                for k in range(len(part)):
                    _, origin, shape, _ = part.place(k)
                    yield origin, shape

    def _layer(self, p: int, run: Run, k: int) -> Layer:
        layer = self._made.get((p, k))
        if layer is None:
            from refstore.virtual._source import ZarrSource

            path, origin, shape, src_map = run.place(k)
            src = ZarrSource(opener=functools.partial(run.open, k, self.root), ref={"path": path})
            layer = self._made[(p, k)] = Layer(src, origin, shape, src_map)
        return layer

    def hits(self, box: Sequence[tuple[int, int]]) -> list[int]:
        """Indices, in layer order, of the non-empty layers whose box meets ``box`` (``(lo, hi)`` per dimension)."""
        out: list[int] = []
        for p, part in enumerate(self.parts):
            if isinstance(part, Layer):
                if 0 not in part.shape and _meets(part.origin, part.shape, box):
                    out.append(int(self._offsets[p]))
                continue
            a = part.axis
            off = [(o, n) for d, (o, n) in enumerate(zip(part.origin, part.box)) if d != a]
            if any(n == 0 or not (o < hi and lo < o + n) for (o, n), (lo, hi) in
                   zip(off, [b for d, b in enumerate(box) if d != a])):
                continue
            base = int(self._offsets[p])
            out += [base + k for k in part.touching(*box[a]) if part.lengths[k]]
        return out


def _meets(origin: Sequence[int], shape: Sequence[int], box: Sequence[tuple[int, int]]) -> bool:
    return all(o < hi and lo < o + n for o, n, (lo, hi) in zip(origin, shape, box))
