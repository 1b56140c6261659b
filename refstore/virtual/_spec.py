"""The JSON definition of a virtual array (``spec/virtual.md``): writing and loading it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from refstore.errors import ManifestError
from refstore.virtual._index import Blocked, Layer, SourceDim
from refstore.virtual._source import ZarrSource, json_fill

FORMAT_VERSION = 1
#: The version of definitions whose layers hold runs (:mod:`refstore.virtual._runs`).
RUNS_VERSION = 2
#: The versions this reader reads.
READ_VERSIONS = (FORMAT_VERSION, RUNS_VERSION)
#: The manifest key (under an array's prefix) that holds its virtual definition.
DEFINITION_NAME = "refstore.virtual.json"

#: Given a :class:`ZarrSource`, return its JSON source reference.
SourceRef = Callable[[ZarrSource], dict[str, Any]]


def _parse_fill(value: Any, dtype: np.dtype[Any]) -> Any:
    if value is None:  # zarr 2 null: no fill value declared
        return None
    if isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        value = float(value.replace("Infinity", "inf"))
    if isinstance(value, list) and dtype.kind == "c":
        value = complex(_parse_fill(value[0], np.dtype("f8")), _parse_fill(value[1], np.dtype("f8")))
    return np.asarray(value).astype(dtype)[()]


def _default_ref(source: ZarrSource) -> dict[str, Any]:
    if source.ref is None:
        raise ManifestError(
            f"{source!r} has no saved location; save it with refstore.save_virtual, which embeds "
            "the source's references, or give the source a ref"
        )
    return dict(source.ref)


def to_dict(v: Any, source_ref: SourceRef | None = None) -> dict[str, Any]:
    """The JSON definition of virtual array ``v``.

    Parameters
    ----------
    v
        The :class:`~refstore.virtual.VirtualArray`.
    source_ref
        Maps each zarr source to its JSON reference (``{"path": ...}`` etc.); by
        default the source's own ``ref``.
    """
    from refstore.virtual._array import VirtualArray

    ref = source_ref or _default_ref
    layers = []
    for layer in v.layers:
        if isinstance(layer.source, VirtualArray):
            src: dict[str, Any] = {"virtual": to_dict(layer.source, source_ref)}
        else:
            src = ref(layer.source)
        layers.append(
            {
                "source": src,
                "origin": list(layer.origin),
                "shape": list(layer.shape),
                "map": [_map_to_json(m) for m in layer.src_map],
            }
        )
    return {
        "refstore_virtual": FORMAT_VERSION,
        "shape": list(v.shape),
        "dtype": v.dtype.str,
        "chunks": list(v.chunks),
        "fill_value": None if v.no_fill else json_fill(v.fill_value),
        "attributes": v.attrs,
        "dimension_names": list(v.dimension_names) if v.dimension_names is not None else None,
        "layers": layers,
    }


def _map_to_json(m: SourceDim) -> Any:
    if isinstance(m, int):
        return m
    if isinstance(m, Blocked):
        return {"dim": m.vdim, "start": m.start, "step": m.step, "block": m.block, "stride": m.stride,
                "offsets": list(m.offsets)}
    return list(m)


def _map_from_json(m: Any, where: str) -> SourceDim:
    """One ``map`` entry of a layer: an int, ``[vdim, start, step]`` or a blocked-map object."""
    if isinstance(m, int) and not isinstance(m, bool):
        return m
    if isinstance(m, list) and len(m) == 3 and all(isinstance(x, int) for x in m):
        if m[2] < 1:
            raise ManifestError(f"{where}: step must be >= 1, got {m!r}")
        return (m[0], m[1], m[2])
    if isinstance(m, dict):
        unknown = set(m) - {"dim", "start", "step", "block", "stride", "offsets"}
        if unknown:
            raise ManifestError(f"{where}: unknown blocked-map field(s) {sorted(unknown)}")
        try:
            b = Blocked(int(m["dim"]), int(m.get("start", 0)), int(m.get("step", 1)), int(m["block"]),
                        int(m["stride"]), tuple(int(o) for o in m["offsets"]))
        except KeyError as e:
            raise ManifestError(f"{where}: blocked map lacks field {e.args[0]!r}") from None
        except (TypeError, ValueError):
            raise ManifestError(f"{where}: blocked-map fields must be integers, got {m!r}") from None
        if b.block < 1 or b.step < 1 or b.start < 0 or not b.offsets:
            raise ManifestError(f"{where}: blocked map needs block >= 1, step >= 1, start >= 0 and offsets, got {m!r}")
        if any(o < 0 or o + b.block > b.stride for o in b.offsets):
            raise ManifestError(f"{where}: every offset o must satisfy 0 <= o and o + block <= stride, got {m!r}")
        return b
    raise ManifestError(f"{where}: expected an int, [dim, start, step] or a blocked-map object, got {m!r}")


#: Opens ``{"manifest": url}`` sources when the caller names no ``open_manifest``:
#: ``(url, **options) -> zarr Store``. The engine registers itself here
#: (:mod:`refstore._engine`), so this layer never imports the layers above it.
default_manifest_opener: Callable[..., Any] | None = None


def open_manifest_store(fo: Any, **options: Any) -> Any:
    """A read-only zarr store over the manifest *fo*, serving its virtual arrays (the registered opener).

    Raises
    ------
    RuntimeError
        If no opener is registered (``refstore`` itself registers one on import).
    """
    if default_manifest_opener is None:
        raise RuntimeError("no manifest opener registered; import refstore first")
    return default_manifest_opener(fo, **options)


def open_source(ref: dict[str, Any], root: Any = None, **options: Any) -> ZarrSource:
    """A lazily opened :class:`ZarrSource` for a JSON source reference.

    ``{"path": p}`` is an array in ``root`` (the store holding the definition);
    ``{"manifest": url, "path": p, "options": {...}}`` an array of another reference
    manifest; ``{"zarr": url, "path": p, "storage_options": {...}}`` an array of a zarr
    store at ``url``. ``options`` are passed to ``open_manifest(url, **options)`` (the
    caller's opener, e.g. a ``ReferenceStore``) for ``"manifest"`` sources when the
    reference has none; ``options["url_policy"]`` also checks the source's URL.
    """
    from zarr.api.asynchronous import open_array

    path = ref.get("path", "")
    open_manifest = options.pop("open_manifest", None) or default_manifest_opener
    # a definition inside a manifest may reach only what that manifest's URL policy allows
    policy = options.get("url_policy")
    for field in ("manifest", "zarr"):
        if policy is not None and isinstance(ref.get(field), str):
            policy.check(ref[field], key=f"virtual source {field!r}")
    if "manifest" in ref:

        async def opener() -> Any:
            import asyncio

            if open_manifest is None:
                raise ManifestError(f"source {ref!r}: no opener for manifest sources was given")
            kwargs = dict(ref.get("options") or options)
            if policy is not None:
                kwargs["url_policy"] = policy
            store = await asyncio.to_thread(open_manifest, ref["manifest"], **kwargs)
            return await open_array(store=store, mode="r", path=path)

    elif "zarr" in ref:

        async def opener() -> Any:
            return await open_array(store=ref["zarr"], mode="r", path=path, storage_options=ref.get("storage_options"))

    elif "path" in ref:
        if root is None:
            raise ManifestError(f"source {ref!r} names a path but no store to resolve it in was given")

        async def opener() -> Any:
            return await open_array(store=root, mode="r", path=path)

    else:
        raise ManifestError(f"source {ref!r}: expected one of 'path', 'manifest', 'zarr' or 'virtual'")
    return ZarrSource(opener=opener, ref=dict(ref))


def from_dict(d: dict[str, Any], root: Any = None, **options: Any) -> Any:
    """Load a virtual array from its JSON definition; sources open lazily, on first read.

    Parameters
    ----------
    d
        The definition (see ``spec/virtual.md``).
    root
        The zarr store that ``{"path": ...}`` sources are resolved in.
    **options
        ``open_manifest``, ``url_policy`` and the options for ``{"manifest": ...}``
        sources (see :func:`open_source`).
    """
    from refstore.virtual._array import VirtualArray

    if d.get("refstore_virtual") not in READ_VERSIONS:
        raise ManifestError(
            f"virtual array definition: field 'refstore_virtual' must be one of {list(READ_VERSIONS)}, "
            f"got {d.get('refstore_virtual')!r}"
        )
    try:
        dtype = np.dtype(d["dtype"])
        shape, chunks = tuple(d["shape"]), tuple(d["chunks"])
        layers: list[Any] = []
        runs = False
        for k, ld in enumerate(d["layers"]):
            if "run" in ld and d["refstore_virtual"] >= RUNS_VERSION:
                layers.append(_run(ld["run"], shape, root, f"virtual array definition: layer {k}"))
                runs = True
                continue
            sref = ld["source"]
            src: Any = from_dict(sref["virtual"], root, **options) if "virtual" in sref else open_source(sref, root, **options)
            src_map = tuple(_map_from_json(m, f"virtual array definition: layer {k} map") for m in ld["map"])
            layer = Layer(src, tuple(ld["origin"]), tuple(ld["shape"]), src_map)
            layers.append(_checked(layer, shape, f"virtual array definition: layer {k}"))
    except KeyError as e:
        raise ManifestError(f"virtual array definition: missing field {e.args[0]!r}") from None
    if runs:
        from refstore.virtual._runs import Layers

        layers = Layers(layers, root)  # type: ignore[assignment]
    return VirtualArray(
        shape, dtype, chunks, _parse_fill(d.get("fill_value"), dtype), layers,
        attrs=d.get("attributes") or {}, dimension_names=d.get("dimension_names"),
    )


def _checked(layer: Layer, shape: tuple[int, ...], where: str) -> Layer:
    """``layer`` if it fits a virtual array of ``shape``; else ManifestError naming ``where`` and the field."""
    if len(layer.origin) != len(shape) or len(layer.shape) != len(shape):
        raise ManifestError(f"{where} has origin/shape of the wrong length")
    vdims = [m.vdim if isinstance(m, Blocked) else m[0] for m in layer.src_map if not isinstance(m, int)]
    if any(not 0 <= d < len(shape) for d in vdims) or vdims != sorted(set(vdims)):
        raise ManifestError(
            f"{where} map names virtual dimensions {vdims}; they must be "
            f"distinct, increasing and below {len(shape)}"
        )
    for o, n, total in zip(layer.origin, layer.shape, shape):
        if o < 0 or n < 0 or o + n > total:
            raise ManifestError(f"{where} lies outside the shape {shape}")
    return layer


def _run(d: Any, shape: tuple[int, ...], root: Any, where: str) -> Any:
    """A parsed run (see :mod:`refstore.virtual._runs`); its layers and sources are made on first use."""
    from refstore.virtual._runs import Run

    if not isinstance(d, dict):
        raise ManifestError(f"{where}: a run must be an object")
    if root is None:
        raise ManifestError(f"{where}: a run names sources by path but no store to resolve them in was given")
    return Run(d, shape, where)


def served_virtual(array: Any) -> Any:
    """The :class:`~refstore.virtual.VirtualArray` that ``array``'s store defines at its path, or None.

    A zarr array opened from a manifest written by :func:`~refstore.virtual.save_virtual`
    through a store that serves virtual arrays (its ``serves_virtual_arrays`` is true:
    ``ReferenceStore``, :class:`~refstore.virtual.VirtualStore`) is such a view; loaded here over the same
    store, its layers can be joined directly instead of read through the view.
    """
    import json

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    store, path = array.store_path.store, array.store_path.path
    if not getattr(store, "serves_virtual_arrays", False):  # no request to stores that cannot hold one
        return None
    buf = sync(store.get(f"{path}/{DEFINITION_NAME}" if path else DEFINITION_NAME, default_buffer_prototype()))
    if buf is None:
        return None
    policy = getattr(store, "url_policy", None)
    options = {"url_policy": policy} if policy is not None else {}
    return from_dict(json.loads(buf.to_bytes()), root=store, **options)
