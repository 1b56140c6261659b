"""Tile pyramids as manifests: Deep Zoom (``.dzi`` + ``_files/``) and XYZ (``z/y/x.fmt``) folders."""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import xml.etree.ElementTree as ET
from fractions import Fraction
from typing import Any

import fsspec
import numpy as np

from refstore.build._common import (
    array_metadata,
    chunk_key,
    group_metadata,
    image_axes,
    image_shape,
    probe_image,
    progress,
    pyramid_channel_last,
)
from refstore.manifest import Manifest, Reference
from refstore.manifest._sources import record_sources
from refstore.multiscale import multiscale_attributes

__all__ = ["dzi", "xyz"]


def _location(path: str) -> str:
    """Return *path* as written into references: an absolute path, or the URL unchanged."""
    return path if "://" in path else os.path.abspath(path)


def _listing(fs: Any, folder: str) -> set[str] | None:
    """Return the file names directly in *folder*, or None if the filesystem cannot list it."""
    try:
        return {posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False)}
    except (OSError, NotImplementedError, ValueError):
        return None


def _level_arrays(
    manifest: Manifest,
    levels: list[tuple[int, int, dict[tuple[int, int], str]]],
    tile: int,
    sample: bytes,
    sample_name: str,
    channel_first: bool,
    resampling_offset: bool,
    name: str,
    overlap: int = 0,
) -> None:
    """Write the group and level arrays ``0``, ``1``, ... (largest first) of a tile pyramid.

    *levels* holds ``(height, width, {(row, col): url})`` per level, largest first.
    With *overlap*, levels of more than one tile are virtual arrays over their tiles
    (see :func:`_overlap_level`).
    """
    info = probe_image(sample, sample_name)
    axes, layout = image_axes(info.channels, channel_first)
    shapes = [image_shape(h, w, info.channels, layout) for h, w, _ in levels]
    spatial = [a in ("y", "x") for a in axes]
    factors = [[Fraction(2**k) if s else Fraction(1) for s in spatial] for k in range(len(levels))]
    offsets = [[(f - 1) / 2 if resampling_offset else Fraction(0) for f in fs] for fs in factors]
    paths = [str(i) for i in range(len(levels))]
    attrs = multiscale_attributes(paths, shapes, axes, factors=factors, offsets=offsets, name=name)
    manifest.set("zarr.json", group_metadata(attrs))
    chunks = image_shape(tile, tile, info.channels, layout)
    for path, shape, (h, w, tiles) in zip(paths, shapes, levels, strict=True):
        if overlap and (h > tile or w > tile):
            _overlap_level(manifest, path, shape, tiles, tile, overlap, info.channels, info.dtype, layout, axes)
            continue
        manifest.set(f"{path}/zarr.json", array_metadata(shape, chunks, info.dtype, layout, axes))
        for (row, col), url in sorted(tiles.items()):
            index = {"y": row, "x": col, "c": 0}
            manifest.set(chunk_key(path, [index[a] for a in axes]), Reference(url, 0, None))


def _overlap_level(
    manifest: Manifest,
    path: str,
    shape: list[int],
    tiles: dict[tuple[int, int], str],
    tile: int,
    overlap: int,
    channels: int,
    dtype: Any,
    layout: str,
    axes: list[str],
) -> None:
    """Write one Deep Zoom level whose tiles overlap as a virtual array (``spec/builders.md``).

    Tile ``(row, col)`` covers rows ``[row*tile - (overlap if row else 0), (row+1)*tile + overlap)``
    (clipped to the image), and likewise columns. The tiles become the chunks of a raw
    array at ``<path>/.sources/0`` with chunks of ``tile + 2*overlap`` (each tile at the
    top-left of its chunk); the level is a virtual array with chunks of ``tile`` whose
    blocked maps skip ``overlap`` rows and columns of every tile but the first.
    """
    from refstore.virtual._store import DEFINITION_NAME, SOURCES_DIR

    stride = tile + 2 * overlap
    rows, cols = math.ceil(shape[axes.index("y")] / tile), math.ceil(shape[axes.index("x")] / tile)
    raw = f"{path}/{SOURCES_DIR}/0"
    raw_shape = image_shape(rows * stride, cols * stride, channels, layout)
    raw_chunks = image_shape(stride, stride, channels, layout)
    manifest.set(f"{raw}/zarr.json", array_metadata(raw_shape, raw_chunks, dtype, layout, axes))
    for (row, col), url in sorted(tiles.items()):
        index = {"y": row, "x": col, "c": 0}
        manifest.set(chunk_key(raw, [index[a] for a in axes]), Reference(url, 0, None))
    chunks = image_shape(tile, tile, channels, layout)
    manifest.set(f"{path}/zarr.json", array_metadata(shape, chunks, dtype, layout, axes, raw=True))
    blocked = {"start": 0, "step": 1, "block": tile, "stride": stride, "offsets": [0, overlap]}
    definition = {
        "refstore_virtual": 1,
        "shape": shape,
        "dtype": np.dtype(dtype).str,
        "chunks": chunks,
        "fill_value": 0,
        "dimension_names": axes,
        "layers": [
            {
                "source": {"path": raw},
                "origin": [0] * len(shape),
                "shape": shape,
                "map": [{"dim": d, **blocked} if a in ("y", "x") else [d, 0, 1] for d, a in enumerate(axes)],
            }
        ],
    }
    manifest.set(f"{path}/{DEFINITION_NAME}", json.dumps(definition).encode())


def _dzi_descriptor(text: str, where: str) -> tuple[int, int, int, int, str]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"{where}: not a Deep Zoom descriptor ({exc})") from exc
    size = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Size"), None)
    try:
        tile = int(root.attrib["TileSize"])
        overlap = int(root.attrib.get("Overlap", "0"))
        fmt = root.attrib["Format"]
        assert size is not None
        width, height = int(size.attrib["Width"]), int(size.attrib["Height"])
    except (KeyError, ValueError, AssertionError) as exc:
        raise ValueError(f"{where}: Deep Zoom descriptor lacks TileSize, Format or Size Width/Height") from exc
    return width, height, tile, overlap, fmt


def dzi(
    path: str,
    *,
    channel_last: bool = False,
    check_tiles: bool = True,
    show_progress: bool = True,
    channel_first: bool | None = None,
) -> Manifest:
    """Build a manifest reading a Deep Zoom image as a multiscale group.

    Parameters
    ----------
    path
        The ``.dzi`` descriptor: a local path or any fsspec URL. Tiles are read from
        ``<name>_files/<level>/<col>_<row>.<format>`` beside it.
    channel_last
        Make RGB(A) levels ``(y, x, c)``, as the tiles store them, instead of the
        default OME-NGFF ``(c, y, x)``; the group then has no NGFF ``multiscales``.
        Gray images are ``(y, x)`` either way.
    check_tiles
        List each level folder and leave out tiles that do not exist (they read as
        the fill value 0). Where listing is impossible every tile is assumed present.
    show_progress
        Draw a progress line on stderr (see ``spec/builders.md``).
    channel_first
        The older keyword: ``channel_first=False`` means ``channel_last=True``.

    Returns
    -------
    Manifest
        A zarr 3 group whose arrays ``0``, ``1``, ... are the DZI levels, largest
        first (DZI level ``max`` is array ``0``). DZI level sizes round up:
        level ``L`` is ``ceil(size / 2**(max - L))`` with ``max = ceil(log2(max(W, H)))``.
        Chunks are whole-file references decoded by the ``refstore.image`` codec.
        With ``Overlap > 0``, each level of more than one tile is a virtual array
        (``spec/virtual.md``) over a raw array of whole tiles, which crops each tile's
        overlap by its position; it reads through :class:`refstore.ReferenceStore`.

    Raises
    ------
    ValueError
        If the descriptor is malformed (naming the file and the field), its
        ``TileSize`` is below 1 or its ``Overlap`` is negative.
    """
    fs, fspath = fsspec.core.url_to_fs(path)
    with fs.open(fspath, "rb") as f:
        width, height, tile, overlap, fmt = _dzi_descriptor(f.read().decode("utf-8", "replace"), path)
    if tile < 1 or not overlap >= 0:
        raise ValueError(f"{path}: TileSize={tile} and Overlap={overlap}; need TileSize >= 1 and Overlap >= 0")
    base = re.sub(r"\.(dzi|xml)$", "", path, flags=re.IGNORECASE) + "_files"
    fsbase = re.sub(r"\.(dzi|xml)$", "", fspath, flags=re.IGNORECASE) + "_files"
    top = math.ceil(math.log2(max(width, height))) if max(width, height) > 1 else 0
    levels = []
    sample: tuple[bytes, str] | None = None
    for level in progress(list(range(top, -1, -1)), f"dzi {path}", show_progress):
        k = top - level
        h, w = math.ceil(height / 2**k), math.ceil(width / 2**k)
        names = _listing(fs, f"{fsbase}/{level}") if check_tiles else None
        tiles = {}
        for row in range(math.ceil(h / tile)):
            for col in range(math.ceil(w / tile)):
                name = f"{col}_{row}.{fmt}"
                if names is None or name in names:
                    tiles[(row, col)] = _location(f"{base}/{level}/{name}")
                    if sample is None:
                        sample = (fs.cat_file(f"{fsbase}/{level}/{name}"), f"{base}/{level}/{name}")
        levels.append((h, w, tiles))
    if sample is None:
        raise ValueError(f"{path}: no tiles found under {base}")
    manifest = Manifest()
    _level_arrays(
        manifest, levels, tile, sample[0], sample[1], not pyramid_channel_last(channel_last, channel_first), True,
        posixpath.basename(base[:-6]), overlap,
    )
    record_sources(manifest)  # local tiles: size and mtime (a stat each)
    return manifest


_XYZ = re.compile(r"(\d+)/(\d+)/(\d+)\.(\w+)$")


def xyz(
    root: str,
    *,
    channel_last: bool = False,
    tile_size: int | None = None,
    show_progress: bool = True,
    channel_first: bool | None = None,
) -> Manifest:
    """Build a manifest reading an XYZ (slippy-map, vips ``--layout google``) tile folder.

    Parameters
    ----------
    root
        A local folder or listable fsspec URL holding ``<z>/<y>/<x>.<fmt>``.
    channel_last
        Make RGB(A) levels ``(y, x, c)`` instead of the default OME-NGFF ``(c, y, x)``;
        the group then has no NGFF ``multiscales``.
    tile_size
        Tile edge in pixels; default: the size of the first tile found.
    show_progress
        Draw a progress line on stderr.
    channel_first
        The older keyword: ``channel_first=False`` means ``channel_last=True``.

    Returns
    -------
    Manifest
        A zarr 3 group whose arrays ``0``, ``1``, ... are zoom levels, the highest
        zoom (largest) first. Level ``k`` spans ``max(tiles present, ceil(n0 / 2**k))``
        tiles per axis, where ``n0`` is the tile count of the highest zoom, so the
        arrays cover every tile present and no more of the world. Absent tiles
        read as fill 0.

    Raises
    ------
    ValueError
        If no ``z/y/x.fmt`` tiles are found, or tiles are not square.
    """
    fs, fsroot = fsspec.core.url_to_fs(root)
    fsroot = fsroot.rstrip("/")
    found: dict[int, dict[tuple[int, int], str]] = {}
    for p in progress(sorted(fs.find(fsroot)), f"xyz {root}", show_progress):
        m = _XYZ.search(p[len(fsroot):])
        if m:
            z, y, x = int(m[1]), int(m[2]), int(m[3])
            found.setdefault(z, {})[(y, x)] = p
    if not found:
        raise ValueError(f"{root}: no <z>/<y>/<x>.<format> tiles found")
    zooms = sorted(found, reverse=True)
    first = found[zooms[0]][min(found[zooms[0]])]
    sample = fs.cat_file(first)
    info = probe_image(sample, first)
    if tile_size is None:
        if info.height != info.width:
            raise ValueError(f"{first}: tile is {info.height}x{info.width}; pass tile_size for non-square tiles")
        tile_size = info.height
    rows0 = max(r for r, _ in found[zooms[0]]) + 1
    cols0 = max(c for _, c in found[zooms[0]]) + 1
    prefix = root.rstrip("/")
    levels = []
    for k, z in enumerate(range(zooms[0], -1, -1)):
        tiles = found.get(z, {})
        rows = max([math.ceil(rows0 / 2**k)] + [r + 1 for r, _ in tiles])
        cols = max([math.ceil(cols0 / 2**k)] + [c + 1 for _, c in tiles])
        refs = {rc: _location(prefix + p[len(fsroot):]) for rc, p in tiles.items()}
        levels.append((rows * tile_size, cols * tile_size, refs))
    manifest = Manifest()
    channel_first_levels = not pyramid_channel_last(channel_last, channel_first)
    _level_arrays(manifest, levels, tile_size, sample, first, channel_first_levels, True, posixpath.basename(prefix))
    record_sources(manifest)  # local tiles: size and mtime (a stat each)
    return manifest
