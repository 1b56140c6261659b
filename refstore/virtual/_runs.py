"""Runs: many whole embedded sources placed one after another, written once (definition version 2).

A concatenation of N inputs has N layers that differ only in where they sit along one
axis and in their extent along it, and N sources whose metadata differ only in that
extent. A *run* writes them as the shared parts once and, per source, its length
(``spec/virtual.md``, "Runs"): the definition then costs a few bytes per input, and no
source needs metadata documents of its own in the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from refstore.errors import ManifestError

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

    Raises
    ------
    refstore.ManifestError
        On a malformed run, naming the field (``where`` says which layer).
    """

    def __init__(self, d: Mapping[str, Any], ndim: int, where: str) -> None:
        try:
            self.axis = int(d["axis"])
            self.origin = [int(o) for o in d["origin"]]
            self.path = str(d["path"])
            self.first = int(d.get("first", 0))
            self.new_axis = "count" in d
            self.lengths = [1] * int(d["count"]) if self.new_axis else [int(n) for n in d["lengths"]]
            self.templates = list(d["metadata"])
            self.which = [int(w) for w in d.get("which", [0] * len(self.lengths))]
        except KeyError as e:
            raise ManifestError(f"{where}: run lacks field {e.args[0]!r}") from None
        except (TypeError, ValueError):
            raise ManifestError(f"{where}: run fields have the wrong types") from None
        if not 0 <= self.axis < ndim or len(self.origin) != ndim or self.first < 0:
            raise ManifestError(f"{where}: run axis {self.axis} or origin {self.origin} do not fit {ndim} dimensions")
        if len(self.which) != len(self.lengths) or any(not 0 <= w < len(self.templates) for w in self.which):
            raise ManifestError(f"{where}: run field 'which' must give a metadata index per source")
        if any(n < 0 for n in self.lengths):
            raise ManifestError(f"{where}: run lengths must be non-negative")
        self._shapes: list[list[int]] = []
        for k, t in enumerate(self.templates):
            if not isinstance(t, dict) or not ({"zarr.json", ".zarray"} & set(t)):
                raise ManifestError(f"{where}: run metadata {k} holds neither 'zarr.json' nor '.zarray'")
            meta = t.get("zarr.json", t.get(".zarray"))
            shape = meta.get("shape") if isinstance(meta, dict) else None
            if not isinstance(shape, list) or len(shape) != (ndim - 1 if self.new_axis else ndim):
                raise ManifestError(f"{where}: run metadata {k} has no shape of the run's dimensions")
            self._shapes.append(shape)
        self._docs: dict[tuple[int, int], dict[str, bytes]] = {}
        self._meta: dict[tuple[int, int], Any] = {}

    def __len__(self) -> int:
        return len(self.lengths)

    def places(self) -> Iterator[tuple[str, tuple[int, ...], tuple[int, ...], tuple[tuple[int, int, int], ...]]]:
        """Per source: ``(path, origin, shape, map)`` of its layer, in order."""
        ndim = len(self.origin)
        pos = self.origin[self.axis]
        for k, n in enumerate(self.lengths):
            origin = list(self.origin)
            origin[self.axis] = pos
            shape = list(self._shapes[self.which[k]])
            if self.new_axis:
                shape.insert(self.axis, 1)
                src_map = tuple((d, 0, 1) for d in range(ndim) if d != self.axis)
            else:
                shape[self.axis] = n
                src_map = tuple((d, 0, 1) for d in range(ndim))
            pos += n
            yield f"{self.path}{self.first + k}", tuple(origin), tuple(shape), src_map

    def docs(self, k: int) -> dict[str, bytes]:
        """The metadata documents of source ``k`` (shared by the sources of one template and length)."""
        key = (self.which[k], self.lengths[k])
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
        """Source ``k`` as a ``zarr.AsyncArray`` in ``root``; its metadata parsed once per template and length."""
        from zarr.core.array import AsyncArray
        from zarr.core.buffer import default_buffer_prototype
        from zarr.storage import MemoryStore, StorePath

        key = (self.which[k], self.lengths[k])
        meta = self._meta.get(key)
        if meta is None:
            docs = self.docs(k)
            proto = default_buffer_prototype()
            store = MemoryStore({n: proto.buffer.from_bytes(b) for n, b in docs.items()})
            meta = (await AsyncArray.open(store, zarr_format=3 if "zarr.json" in docs else 2)).metadata
            self._meta[key] = meta
        return AsyncArray(meta, StorePath(root, f"{self.path}{self.first + k}"))
