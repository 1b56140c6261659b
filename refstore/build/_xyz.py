"""XYZ (slippy-map, ``<z>/<y>/<x>.<fmt>``) tile folders as manifests: listed, or by zoom range and bounds."""

from __future__ import annotations

import math
import posixpath
import re
from fractions import Fraction
from typing import Any

import fsspec

from refstore.build._common import probe_image, pyramid_channel_last
from refstore.build._scan import ProgressMode, exists_all, progress
from refstore.build._tiles import can_list, level_arrays, location, sample_tile
from refstore.manifest import Manifest
from refstore.manifest._sources import record_sources

__all__ = ["xyz"]

_XYZ = re.compile(r"(\d+)/(\d+)/(\d+)\.(\w+)$")
_MAX_DISCOVERY = 1 << 16  # tiles probed at the lowest zoom when no bounds are given

Cells = dict[int, set[tuple[int, int]]]  # zoom -> {(row, col)}


def _listed(fs: Any, fsroot: str, root: str, zooms: tuple[int, int] | None, show: ProgressMode) -> tuple[Cells, str]:
    """Tiles found by listing *fsroot*, and their suffix."""
    cells: Cells = {}
    suffixes: set[str] = set()
    for p in progress(sorted(fs.find(fsroot)), f"xyz {root}: listing", show):
        m = _XYZ.search(p[len(fsroot):])
        if m and (zooms is None or zooms[0] <= int(m[1]) <= zooms[1]):
            cells.setdefault(int(m[1]), set()).add((int(m[2]), int(m[3])))
            suffixes.add(m[4])
    if len(suffixes) > 1:
        raise ValueError(f"{root}: tiles of several formats ({sorted(suffixes)}); keep one per folder")
    return cells, next(iter(suffixes), "")


def _in_bounds(bounds: tuple[int, int, int, int], zmax: int, z: int) -> set[tuple[int, int]]:
    """Every (row, col) at zoom *z* under *bounds* ``(x_min, y_min, x_max, y_max)`` at zoom *zmax*."""
    x0, y0, x1, y1 = bounds
    k = zmax - z
    return {(r, c) for r in range(y0 >> k, (y1 >> k) + 1) for c in range(x0 >> k, (x1 >> k) + 1)}


def xyz(
    root: str,
    *,
    channel_last: bool = False,
    tile_size: int | None = None,
    show_progress: ProgressMode = True,
    zooms: tuple[int, int] | None = None,
    bounds: tuple[int, int, int, int] | None = None,
    probe: bool = False,
    suffix: str | None = None,
    storage_options: dict[str, Any] | None = None,
    concurrency: int = 32,
    channel_first: bool | None = None,
) -> Manifest:
    """Build a manifest reading an XYZ (slippy-map, vips ``--layout google``) tile set.

    Parameters
    ----------
    root
        A local folder or fsspec URL holding ``<z>/<y>/<x>.<suffix>``.
    channel_last
        Make RGB(A) levels ``(y, x, c)`` instead of the default OME-NGFF ``(c, y, x)``;
        the group then has no NGFF ``multiscales``.
    tile_size
        Tile edge in pixels; default: the size of the first tile read.
    show_progress
        Draw a progress bar on stderr.
    zooms
        ``(min, max)`` zoom levels to read, inclusive. Without listing (HTTP, or with
        *bounds* or *probe*) it is required.
    bounds
        ``(x_min, y_min, x_max, y_max)``: the tile columns and rows at the highest zoom,
        inclusive; each lower zoom covers the tiles above them. Nothing is listed:
        every tile in bounds is assumed present unless *probe*.
    probe
        Ask for each tile (a HEAD over HTTP), *concurrency* at a time: every tile in
        *bounds*, or without bounds, every tile of the lowest zoom (at most 65536)
        and then only the four children of each tile found, zoom by zoom.
    suffix
        The tiles' file suffix (``png``, ``jpg``, ...); required without listing.
    storage_options
        Options of the fsspec filesystem of a URL *root*.
    concurrency
        How many probes run at once.
    channel_first
        The older keyword: ``channel_first=False`` means ``channel_last=True``.

    Returns
    -------
    Manifest
        A zarr 3 group whose arrays ``0``, ``1``, ... are zoom levels, the highest zoom
        first. A listed folder's levels start at tile ``(0, 0)`` and go down to zoom 0;
        level ``k`` spans ``max(tiles present, ceil(n0 / 2**k))`` tiles per axis, where
        ``n0`` is the tile count of the highest zoom. With *bounds* or *probe*, levels
        start at the first tile row and column in use, and ``refstore:levels`` and the
        NGFF translation say where each level lies. Absent tiles read as fill 0.

    Raises
    ------
    ValueError
        If no tiles are found, tiles are not square, or *zooms* or *suffix* are
        missing where nothing is listed.
    """
    fs, fsroot = fsspec.core.url_to_fs(root, **(storage_options or {}))
    fsroot, prefix = fsroot.rstrip("/"), root.rstrip("/")
    listed = bounds is None and not probe and can_list(fs)
    if zooms is not None and not 0 <= zooms[0] <= zooms[1]:
        raise ValueError(f"zooms={zooms!r}: need 0 <= min <= max")
    if listed:
        cells, suffix = _listed(fs, fsroot, root, zooms, show_progress)
    else:
        if zooms is None or not suffix:
            raise ValueError(f"{root}: without a listing, pass zooms=(min, max) and suffix= (and bounds or probe=True)")
        suffix = suffix.lstrip(".")
        cells = _unlisted(fs, fsroot, root, zooms, bounds, probe, suffix, show_progress, concurrency)
    cells = {z: c for z, c in cells.items() if c}
    if not cells:
        raise ValueError(f"{root}: no <z>/<y>/<x>.<format> tiles found")
    zmax = max(cells)
    zmin = zooms[0] if zooms else 0

    def path(z: int, r: int, c: int) -> str:
        return f"{z}/{r}/{c}.{suffix}"

    small = min(cells)
    candidates = [(f"{fsroot}/{path(small, r, c)}", location(f"{prefix}/{path(small, r, c)}"))
                  for r, c in sorted(cells[small])[:8]]
    sample, sample_name = sample_tile(fs, candidates)
    info = probe_image(sample, sample_name)
    if tile_size is None:
        if info.height != info.width:
            raise ValueError(f"{sample_name}: tile is {info.height}x{info.width}; pass tile_size for non-square tiles")
        tile_size = info.height
    top = cells[zmax]
    if listed:
        y0 = x0 = 0
        y_end, x_end = max(r for r, _ in top) + 1, max(c for _, c in top) + 1
    elif bounds is not None:
        x0, y0, x_end, y_end = bounds[0], bounds[1], bounds[2] + 1, bounds[3] + 1
    else:
        y0, x0 = min(r for r, _ in top), min(c for _, c in top)
        y_end, x_end = max(r for r, _ in top) + 1, max(c for _, c in top) + 1
    levels, shifts = [], []
    for k, z in enumerate(range(zmax, zmin - 1, -1)):
        here = cells.get(z, set())
        r0, c0 = y0 >> k, x0 >> k
        rows = max([math.ceil(y_end / 2**k)] + [r + 1 for r, _ in here]) - r0
        cols = max([math.ceil(x_end / 2**k)] + [c + 1 for _, c in here]) - c0
        refs = {(r - r0, c - c0): location(f"{prefix}/{path(z, r, c)}") for r, c in here if r >= r0 and c >= c0}
        levels.append((rows * tile_size, cols * tile_size, refs))
        shifts.append((Fraction(((r0 << k) - y0) * tile_size), Fraction(((c0 << k) - x0) * tile_size)))
    manifest = Manifest()
    level_arrays(manifest, levels, tile_size, sample, sample_name,
                 not pyramid_channel_last(channel_last, channel_first), True, posixpath.basename(prefix),
                 shifts=shifts)
    record_sources(manifest)  # local tiles: size and mtime (a stat each)
    return manifest


def _unlisted(
    fs: Any,
    fsroot: str,
    root: str,
    zooms: tuple[int, int],
    bounds: tuple[int, int, int, int] | None,
    probe: bool,
    suffix: str,
    show: ProgressMode,
    concurrency: int,
) -> Cells:
    """The tiles of an XYZ set that is not listed: all in *bounds*, or those *probe* finds."""
    zmin, zmax = zooms

    def present(z: int, wanted: set[tuple[int, int]]) -> set[tuple[int, int]]:
        if not probe:
            return wanted
        order = sorted(wanted)
        found = exists_all(fs, [f"{fsroot}/{z}/{r}/{c}.{suffix}" for r, c in order],
                           label=f"xyz {root}: probing zoom {z}", show_progress=show, concurrency=concurrency)
        return {rc for rc, ok in zip(order, found, strict=True) if ok}

    if bounds is not None:
        if bounds[0] > bounds[2] or bounds[1] > bounds[3] or min(bounds) < 0:
            raise ValueError(f"bounds={bounds!r}: need 0 <= x_min <= x_max and 0 <= y_min <= y_max")
        return {z: present(z, _in_bounds(bounds, zmax, z)) for z in range(zmax, zmin - 1, -1)}
    if not probe:
        raise ValueError(f"{root}: without a listing, pass bounds=(x_min, y_min, x_max, y_max) or probe=True")
    side = 1 << zmin
    if side * side > _MAX_DISCOVERY:
        raise ValueError(f"{root}: zoom {zmin} has {side * side} tiles to probe; pass bounds or a lower zooms[0]")
    cells: Cells = {zmin: present(zmin, {(r, c) for r in range(side) for c in range(side)})}
    for z in range(zmin + 1, zmax + 1):
        children = {(2 * r + dr, 2 * c + dc) for r, c in cells[z - 1] for dr in (0, 1) for dc in (0, 1)}
        cells[z] = present(z, children)
    return cells
