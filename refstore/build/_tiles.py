"""Deep Zoom images (``.dzi`` + ``_files/``) as manifests, and the level arrays every tile pyramid shares."""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import xml.etree.ElementTree as ET
from fractions import Fraction
from typing import Any, Literal

import fsspec
import numpy as np

from refstore.build._common import (
    array_metadata,
    chunk_key,
    group_metadata,
    image_axes,
    image_shape,
    probe_image,
    pyramid_channel_last,
)
from refstore.build._scan import ProgressMode, exists_all, scan
from refstore.manifest import Manifest, Reference
from refstore.manifest._sources import record_sources
from refstore.multiscale import multiscale_attributes

__all__ = ["can_list", "dzi", "level_arrays", "listing", "location", "sample_tile"]


def location(path: str) -> str:
    """Return *path* as written into references: an absolute path, or the URL unchanged."""
    return path if "://" in path else os.path.abspath(path)


def listing(fs: Any, folder: str) -> set[str] | None:
    """Return the file names directly in *folder*, or None if the filesystem cannot list it."""
    try:
        return {posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False)}
    except (OSError, NotImplementedError, ValueError):
        return None


def level_arrays(
    manifest: Manifest,
    levels: list[tuple[int, int, dict[tuple[int, int], str]]],
    tile: int,
    sample: bytes,
    sample_name: str,
    channel_first: bool,
    resampling_offset: bool,
    name: str,
    overlap: int = 0,
    shifts: list[tuple[Fraction, Fraction]] | None = None,
) -> None:
    """Write the group and level arrays ``0``, ``1``, ... (largest first) of a tile pyramid.

    *levels* holds ``(height, width, {(row, col): url})`` per level, largest first.
    With *overlap*, levels of more than one tile are virtual arrays over their tiles
    (see :func:`_overlap_level`). *shifts* adds a ``(y, x)`` offset per level, in
    level-0 pixels (an XYZ level whose first tile starts before level 0's).
    """
    info = probe_image(sample, sample_name)
    axes, layout = image_axes(info.channels, channel_first)
    shapes = [image_shape(h, w, info.channels, layout) for h, w, _ in levels]
    spatial = [a in ("y", "x") for a in axes]
    factors = [[Fraction(2**k) if s else Fraction(1) for s in spatial] for k in range(len(levels))]
    offsets = [[(f - 1) / 2 if resampling_offset else Fraction(0) for f in fs] for fs in factors]
    for level_offsets, (dy, dx) in zip(offsets, shifts or [], strict=False):
        for d, a in enumerate(axes):
            level_offsets[d] += dy if a == "y" else dx if a == "x" else 0
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


def can_list(fs: Any) -> bool:
    """Whether *fs* lists folders by its nature: not HTTP, which has no listing (only index pages)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return not {"http", "https"} & set(protocols)


def sample_tile(fs: Any, candidates: list[tuple[str, str]]) -> tuple[bytes, str]:
    """Return the bytes and name of the first of *candidates* (fs path, url) that can be read."""
    for fspath, url in candidates:
        try:
            return fs.cat_file(fspath), url
        except FileNotFoundError:
            continue
    raise ValueError(f"no tile could be read (tried {', '.join(u for _, u in candidates[:3])}, ...)")


def dzi(
    path: str,
    *,
    channel_last: bool = False,
    check_tiles: bool | Literal["probe"] = True,
    show_progress: ProgressMode = True,
    storage_options: dict[str, Any] | None = None,
    concurrency: int = 32,
    channel_first: bool | None = None,
) -> Manifest:
    """Build a manifest reading a Deep Zoom image as a multiscale group.

    Parameters
    ----------
    path
        The ``.dzi`` descriptor: a local path or any fsspec URL (``http(s)://``,
        ``s3://``, ...). Tiles are read from ``<name>_files/<level>/<col>_<row>.<format>``
        beside it. The descriptor alone gives every level's tile grid; nothing is listed
        unless *check_tiles* asks.
    channel_last
        Make RGB(A) levels ``(y, x, c)``, as the tiles store them, instead of the
        default OME-NGFF ``(c, y, x)``; the group then has no NGFF ``multiscales``.
        Gray images are ``(y, x)`` either way.
    check_tiles
        True: on filesystems that list folders (local, S3, GCS, ...), list each level
        folder (one listing per level) and leave out tiles that do not exist; over HTTP,
        which has no listings, every tile is assumed present. ``"probe"``: ask for every
        tile (a HEAD over HTTP), *concurrency* at a time. False: assume every tile present.
        Missing tiles read as the fill value 0.
    show_progress
        Draw a progress bar on stderr (see ``spec/builders.md``).
    storage_options
        Options of the fsspec filesystem of a URL *path* (for example an S3 endpoint).
    concurrency
        How many listings or probes run at once.
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
        ``TileSize`` is below 1 or its ``Overlap`` is negative, or no tile can be read.
    """
    if check_tiles not in (True, False, "probe"):
        raise ValueError(f"check_tiles={check_tiles!r}: use True, False or 'probe'")
    fs, fspath = fsspec.core.url_to_fs(path, **(storage_options or {}))
    with fs.open(fspath, "rb") as f:
        width, height, tile, overlap, fmt = _dzi_descriptor(f.read().decode("utf-8", "replace"), path)
    if tile < 1 or not overlap >= 0:
        raise ValueError(f"{path}: TileSize={tile} and Overlap={overlap}; need TileSize >= 1 and Overlap >= 0")
    base = re.sub(r"\.(dzi|xml)$", "", path, flags=re.IGNORECASE) + "_files"
    fsbase = re.sub(r"\.(dzi|xml)$", "", fspath, flags=re.IGNORECASE) + "_files"
    top = math.ceil(math.log2(max(width, height))) if max(width, height) > 1 else 0
    grid: list[tuple[int, int, int, list[tuple[int, int]]]] = []  # (dzi level, h, w, [(row, col)])
    for level in range(top, -1, -1):
        k = top - level
        h, w = math.ceil(height / 2**k), math.ceil(width / 2**k)
        grid.append((level, h, w, [(r, c) for r in range(math.ceil(h / tile)) for c in range(math.ceil(w / tile))]))

    def name(row: int, col: int) -> str:
        return f"{col}_{row}.{fmt}"

    present: list[set[tuple[int, int]] | None] = [None] * len(grid)
    if check_tiles is True and can_list(fs):
        listed = scan(lambda g: listing(fs, f"{fsbase}/{g[0]}"), grid, label=f"dzi {path}: listing levels",
                      show_progress=show_progress, concurrency=concurrency)
        present = [None if names is None else {rc for rc in g[3] if name(*rc) in names}
                   for g, names in zip(grid, listed, strict=True)]
    elif check_tiles == "probe":
        wanted = [(i, rc) for i, g in enumerate(grid) for rc in g[3]]
        found = exists_all(fs, [f"{fsbase}/{grid[i][0]}/{name(*rc)}" for i, rc in wanted], label=f"dzi {path}: probing",
                           show_progress=show_progress, concurrency=concurrency)
        present = [set() for _ in grid]
        for (i, rc), ok in zip(wanted, found, strict=True):
            if ok:
                present[i].add(rc)  # type: ignore[union-attr]
    levels = []
    for (level, h, w, cells), have in zip(grid, present, strict=True):
        tiles = {rc: location(f"{base}/{level}/{name(*rc)}") for rc in cells if have is None or rc in have}
        levels.append((h, w, tiles))
    # the smallest levels' tiles are the cheapest to fetch for the sample
    candidates = [(f"{fsbase}/{g[0]}/{name(*rc)}", url)
                  for g, (_, _, tiles) in zip(reversed(grid), reversed(levels), strict=True)
                  for rc, url in sorted(tiles.items())[:1]]
    if not candidates:
        raise ValueError(f"{path}: no tiles found under {base}")
    sample, sample_name = sample_tile(fs, candidates)
    manifest = Manifest()
    level_arrays(
        manifest, levels, tile, sample, sample_name, not pyramid_channel_last(channel_last, channel_first), True,
        posixpath.basename(base[:-6]), overlap,
    )
    record_sources(manifest)  # local tiles: size and mtime (a stat each)
    return manifest
