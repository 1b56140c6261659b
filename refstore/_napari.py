"""napari reader (npe2): manifests, Deep Zoom images, XYZ tile folders and TIFFs as multiscale layers.

napari finds it through the ``napari.manifest`` entry point (``refstore/napari.yaml``).
Every level is a dask array over the level's zarr array, so nothing is read until
napari draws. See ``spec/multiscale.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["get_reader", "layer_data"]

LayerData = tuple[Any, dict[str, Any], str]

_MANIFESTS = (".json", ".json.gz", ".json.zst", ".parq")
_TIFFS = (".tif", ".tiff")


def _kind(path: str) -> str | None:
    """What *path* is: ``manifest``, ``dzi``, ``tiff``, ``xyz`` or None (not ours)."""
    lower = path.lower().rstrip("/")
    if lower.endswith(_MANIFESTS):
        return "manifest"
    if lower.endswith(".dzi"):
        return "dzi"
    if lower.endswith(_TIFFS):
        return "tiff"
    if os.path.isdir(path) and any(p.name.isdigit() and p.is_dir() for p in Path(path).iterdir()):
        return "xyz"
    return None


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return the reader for *path* if refstore can open it, else None (napari asks the next plugin)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    return _read if _kind(str(path)) is not None else None


def _read(path: str | list[str]) -> list[LayerData]:
    return layer_data(str(path[0] if isinstance(path, list) else path))


def _open_group(path: str) -> Any:
    """The zarr group (or array) *path* describes, through a ReferenceStore."""
    import zarr

    from refstore import ReferenceStore, build

    kind = _kind(path)
    if kind == "manifest":
        source: Any = path
    elif kind == "dzi":
        source = build.dzi(path, show_progress=False)
    elif kind == "tiff":
        source = build.tiff(path)
    elif kind == "xyz":
        source = build.xyz(path, show_progress=False)
    else:
        raise ValueError(f"{path}: not a manifest (.json, .parq), .dzi, XYZ tile folder or TIFF")
    return zarr.open(ReferenceStore(source), mode="r")


def layer_data(path: str) -> list[LayerData]:
    """Return napari layer data for *path*: one image layer, multiscale when it is a pyramid.

    RGB(A) levels (a channel axis ``c`` of 3 or 4 integer samples) are shown as RGB
    with the channel last; other channel axes become ``channel_axis``.

    Raises
    ------
    ValueError
        If *path* holds no image: no pyramid levels and no single array of 2 or more axes.
    """
    import dask.array as da

    from refstore.multiscale import levels

    node = _open_group(path)
    name = Path(path.rstrip("/")).name
    if hasattr(node, "array_keys"):
        try:
            found = levels(node)
        except ValueError:
            found = []
        if found:
            arrays, axes = [level.array for level in found], found[0].axes
        else:
            images = [node[k] for k in node.array_keys() if len(node[k].shape) >= 2]
            if len(images) != 1:
                raise ValueError(f"{path}: no pyramid and {len(images)} arrays of 2+ axes; cannot pick an image")
            arrays, axes = images, _names(images[0])
    else:
        arrays, axes = [node], _names(node)
    data = [da.from_zarr(a) for a in arrays]
    meta: dict[str, Any] = {"name": name, "multiscale": len(data) > 1}
    if axes is not None and "c" in axes:
        c = axes.index("c")
        if data[0].shape[c] in (3, 4) and data[0].dtype.kind in "ui":
            data = [d if c == d.ndim - 1 else da.moveaxis(d, c, -1) for d in data]
            meta["rgb"] = True
        else:
            meta["channel_axis"] = c
    if axes is not None and "rgb" not in meta and "channel_axis" not in meta:
        meta["metadata"] = {"axes": list(axes)}
    return [(data if len(data) > 1 else data[0], meta, "image")]


def _names(array: Any) -> tuple[str, ...] | None:
    names = getattr(getattr(array, "metadata", None), "dimension_names", None)
    if names is None:
        names = dict(array.attrs).get("_ARRAY_DIMENSIONS")
    return tuple(str(n) for n in names) if names and all(n is not None for n in names) else None
