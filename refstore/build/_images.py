"""Image files named by a pattern (a sequence or a mosaic) as one N-d array, one file per chunk."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from typing import Any, Literal

import fsspec

from refstore.build._common import (
    ImageInfo,
    array_metadata,
    chunk_key,
    common_dtype,
    group_metadata,
    image_axes,
    image_shape,
    probe_image,
)
from refstore.build._scan import ProgressMode, scan
from refstore.manifest import Manifest, Reference
from refstore.manifest._sources import SourceIdentity, identity_from_info, record_sources

__all__ = ["images"]

_NUMERIC = re.compile(r"[+-]?\d+")
_HEAD = 1 << 16


def _expand(files: str | Sequence[str], storage_options: dict[str, Any] | None) -> tuple[Any, list[str]]:
    """Return the filesystem and the sorted files of a glob, a folder or prefix, or a list."""
    first = files if isinstance(files, str) else (files[0] if files else "")
    fs, _ = fsspec.core.url_to_fs(first or ".", **(storage_options or {}))
    if not isinstance(files, str):
        return fs, list(files)
    fspath = fsspec.core.url_to_fs(files, **(storage_options or {}))[1]
    if glob.has_magic(fspath):
        found = sorted(fs.glob(fspath))
    elif fs.isdir(fspath):  # a folder, or an object store prefix: everything under it
        found = sorted(fs.find(fspath))
    else:
        found = [fspath] if fs.exists(fspath) else []
    if not found:
        raise ValueError(f"{files!r}: the glob, folder or prefix matches no files")
    return fs, [f if "://" not in files else fs.unstrip_protocol(f) for f in found]


def _probe(fs: Any, path: str, seen: dict[str, SourceIdentity]) -> ImageInfo:
    """The image's header facts; a remote file's identity (the ``info`` its opening fetched) goes to *seen*."""
    with fs.open(path, "rb") as f:
        details = getattr(f, "details", None)
        if "://" in path and isinstance(details, dict):
            seen[path] = identity_from_info(details)
        head = f.read(_HEAD)
        try:
            if head[:4] == b"\x89PNG":
                return probe_image(head, path)
        except ValueError:
            pass
        return probe_image(head + f.read(), path)


def _sorted_values(values: set[str]) -> list[str | int]:
    if all(_NUMERIC.fullmatch(v) for v in values):
        return sorted({int(v) for v in values})
    return sorted(values)


def _channels(infos: Sequence[ImageInfo]) -> int:
    colour = any(i.channels >= 3 for i in infos)
    alpha = any(i.channels in (2, 4) for i in infos)
    return {(False, False): 1, (False, True): 2, (True, False): 3, (True, True): 4}[(colour, alpha)]


def images(
    files: str | Sequence[str],
    pattern: str,
    *,
    mosaic: bool = False,
    channel_first: bool = False,
    on_size_mismatch: Literal["pad", "error"] = "pad",
    name: str = "image",
    show_progress: ProgressMode = True,
    storage_options: dict[str, Any] | None = None,
    concurrency: int = 32,
) -> Manifest:
    """Build a manifest reading image files as one array, each file one chunk.

    Parameters
    ----------
    files
        A glob, a folder or object-store prefix (every file under it), local or an
        fsspec URL; or a list of paths or URLs (nothing is listed then).
    pattern
        A regular expression searched in each path. Its named groups become the
        leading axes, in the order they appear; each axis holds the group's distinct
        values sorted (numerically when all are integers). Files that do not match
        are skipped.
    mosaic
        Treat groups named ``row`` and ``col`` as the tile position in one larger
        image instead of as axes: tile ``(r, c)`` starts at ``(r * H, c * W)``, where
        ``H x W`` is the largest tile size.
    channel_first
        Put the channel axis of RGB(A) images before ``y, x``.
    on_size_mismatch
        ``"pad"``: chunks are the largest image size and smaller images are padded
        bottom/right with 0 by the codec; ``"error"``: refuse differing sizes.
    name
        The array's path in the group.
    show_progress
        Draw a progress bar on stderr.
    storage_options
        Options of the fsspec filesystem of URL *files* (for example an S3 endpoint).
    concurrency
        How many remote files are probed at once (local files are read one by one).

    Returns
    -------
    Manifest
        A zarr 3 group holding one array *name* with ``dimension_names`` (group
        names, then ``y, x`` and ``c``), the ``refstore.image`` codec, whole-file
        references, and attribute ``refstore:coordinates`` mapping each group axis to
        its values. Index combinations with no file read as fill 0.

    Raises
    ------
    ValueError
        No file matches; two files map to the same chunk; sizes differ with
        ``on_size_mismatch="error"``; ``mosaic`` without ``row`` and ``col`` groups;
        a file is not an image.
    """
    if on_size_mismatch not in ("pad", "error"):
        raise ValueError(f"on_size_mismatch={on_size_mismatch!r}: use 'pad' or 'error'")
    regex = re.compile(pattern)
    groups = [g for g, _ in sorted(regex.groupindex.items(), key=lambda kv: kv[1])]
    if mosaic and not {"row", "col"} <= set(groups):
        raise ValueError(f"pattern {pattern!r}: mosaic needs named groups 'row' and 'col'")
    fs, paths = _expand(files, storage_options)
    matched: list[tuple[str, dict[str, str]]] = []
    for path in paths:
        m = regex.search(path.replace(os.sep, "/"))
        if m:
            matched.append((path, {g: m[g] for g in groups if m[g] is not None}))
    if not matched:
        raise ValueError(f"pattern {pattern!r} matches none of the {len(paths)} files (first: {paths[:1]})")
    identities: dict[str, SourceIdentity] = {}
    remote = any("://" in path for path, _ in matched[:1])
    infos = scan(lambda item: _probe(fs, item[0], identities), matched, label="images: probing",
                 show_progress=show_progress, concurrency=concurrency if remote else 1)
    height, width = max(i.height for i in infos), max(i.width for i in infos)
    if on_size_mismatch == "error":
        odd = [(p, i) for (p, _), i in zip(matched, infos) if (i.height, i.width) != (infos[0].height, infos[0].width)]
        if odd:
            raise ValueError(
                f"{odd[0][0]} is {odd[0][1].height}x{odd[0][1].width} but {matched[0][0]} is "
                f"{infos[0].height}x{infos[0].width}; pass on_size_mismatch='pad' to pad smaller images"
            )
    channels = _channels(infos)
    dtype = common_dtype(i.dtype for i in infos)
    axes_groups = [g for g in groups if not (mosaic and g in ("row", "col"))]
    values = {g: _sorted_values({v[g] for _, v in matched if g in v}) for g in groups}
    for g in groups:
        if not values[g]:
            raise ValueError(f"pattern {pattern!r}: group {g!r} never matched (make it required)")
    index_of = {g: {v: i for i, v in enumerate(values[g])} for g in groups}

    def at(group: str, raw: str) -> int:
        return index_of[group][int(raw) if isinstance(values[group][0], int) else raw]

    img_axes, layout = image_axes(channels, channel_first)
    if mosaic:
        rows = [at("row", v["row"]) for _, v in matched]
        cols = [at("col", v["col"]) for _, v in matched]
        total_h = max(r * height + i.height for r, i in zip(rows, infos))
        total_w = max(c * width + i.width for c, i in zip(cols, infos))
    else:
        total_h, total_w = height, width
    shape = [len(values[g]) for g in axes_groups] + image_shape(total_h, total_w, channels, layout)
    chunks = [1] * len(axes_groups) + image_shape(height, width, channels, layout)
    coords = {g: values[g] for g in axes_groups}
    manifest = Manifest()
    manifest.set("zarr.json", group_metadata({"refstore:coordinates": coords}))
    attrs = {"refstore:coordinates": coords, "refstore:pattern": pattern}
    manifest.set(f"{name}/zarr.json", array_metadata(shape, chunks, dtype, layout, axes_groups + img_axes, attrs))
    seen: dict[str, str] = {}
    for path, groupvalues in matched:
        image_index = {"y": at("row", groupvalues["row"]) if mosaic else 0, "c": 0}
        image_index["x"] = at("col", groupvalues["col"]) if mosaic else 0
        index = [at(g, groupvalues[g]) for g in axes_groups] + [image_index[a] for a in img_axes]
        key = chunk_key(name, index)
        if key in seen:
            raise ValueError(f"{seen[key]} and {path} map to the same chunk {index}; add a group to the pattern")
        seen[key] = path
        url = path if "://" in path else os.path.abspath(path)
        manifest.set(key, Reference(url, 0, None))
    record_sources(manifest, identities)  # local files: size and mtime (a stat each)
    return manifest
