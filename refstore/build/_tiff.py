"""TIFF, OME-TIFF and COG files as manifests: byte ranges of every tile of every pyramid level."""

from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import fsspec
import numpy as np

from refstore.build._common import pyramid_channel_last
from refstore.codecs._tiffseg import CCITT_FAX4, JPEG_COMPRESSIONS, TiffSegment
from refstore.codecs._tiffseg_codecs import TIFF_SEGMENT
from refstore.manifest import Manifest, Reference
from refstore.manifest._sources import (
    SourceIdentity,
    identity_from_info,
    local_identity,
    record_sources,
)
from refstore.multiscale import multiscale_attributes, ngff_order

__all__ = ["needs_imagecodecs", "tiff"]

_AXES = {"Y": "y", "X": "x", "S": "c", "C": "c", "Z": "z", "T": "t", "Q": "q", "I": "i"}
_PAGE = ("sample plane", "z", "y", "x", "c")  # tifffile's normalised page shape (separate, depth, length, width, contig)
_SEGMENT = ("-", "z", "y", "x", "s")  # where each page axis sits in a decoded segment
_UNSUPPORTED = {2: "CCITT RLE", 3: "CCITT T.4", 6: "old-style JPEG", 65000: "EER", 65001: "EER",
                65002: "EER", 48124: "Jetraw"}


@dataclass
class _Axis:
    """One axis of a level array: its name, length, chunk length and where it comes from."""

    name: str
    size: int
    chunk: int
    page_dim: int | None  # index into the page's normalised shape, or None for an axis across pages
    lead_dim: int | None = None  # index among the axes across pages


def _check_supported(page: Any, where: str) -> None:
    """Refuse (naming *where*) what the TIFF segment codec cannot decode."""
    import tifffile

    compression = int(page.compression)
    if compression in _UNSUPPORTED or (compression != 1 and compression not in tifffile.TIFF.DECOMPRESSORS):
        name = _UNSUPPORTED.get(compression, "unknown")
        raise ValueError(f"{where}: TIFF compression {compression} ({name}) is not supported")
    if page.dtype is None or page.sampleformat not in (1, 2, 3):
        raise ValueError(f"{where}: sample format {page.sampleformat} with {page.bitspersample} bits is not supported")
    image = compression in JPEG_COMPRESSIONS or compression in tifffile.TIFF.IMAGE_COMPRESSIONS or compression == CCITT_FAX4
    bits = page.bitspersample
    packed = isinstance(bits, int) and bits not in (8, 16, 32, 64)
    if not image and (not isinstance(bits, int) or not 1 <= bits <= 64 or (packed and page.predictor != 1)):
        raise ValueError(f"{where}: {bits}-bit samples with predictor {page.predictor} are not supported")
    if page.is_subsampled and compression not in JPEG_COMPRESSIONS:
        raise ValueError(f"{where}: chroma subsampling without JPEG compression is not supported")
    if not page.is_tiled and page.shaped[1] > 1:
        raise ValueError(f"{where}: stripped images with depth {page.shaped[1]} are not supported")


def _segment(page: Any, where: str) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Return the segment shape and the page's segment grid (planes, depth, rows, columns)."""
    planes, depth, length, width, samples = (int(n) for n in page.shaped)
    if page.is_tiled:
        seg = (int(page.tiledepth), int(page.tilelength), int(page.tilewidth), samples)
    else:
        seg = (1, min(int(page.rowsperstrip) or length, length), width, samples)
    grid = (planes, math.ceil(depth / seg[0]), math.ceil(length / seg[1]), math.ceil(width / seg[2]))
    if len(page.dataoffsets) < math.prod(grid):
        raise ValueError(f"{where}: {len(page.dataoffsets)} segments for a grid of {grid}; the file is truncated")
    return seg, grid


def _level_axes(level: Any, where: str) -> list[_Axis]:
    """Return the axes of one level in tifffile's order: pages first, then the page's own."""
    page = level.keyframe
    shaped = [int(n) for n in page.shaped]
    seg, _ = _segment(page, where)
    chunks = [1, seg[0], seg[1], seg[2], seg[3]]
    kept = [i for i in range(5) if shaped[i] > 1 or i in (2, 3)]
    if tuple(shaped[i] for i in kept) != tuple(page.shape):
        raise ValueError(f"{where}: page shape {page.shape} is not tifffile's normalised {tuple(shaped)} squeezed")
    shape, letters = tuple(level.shape), level.axes
    nlead = len(shape) - len(kept)
    if nlead < 0 or shape[nlead:] != tuple(page.shape):
        raise ValueError(f"{where}: series shape {shape} does not end with the page shape {page.shape}")
    axes = [_Axis(letters[i], shape[i], 1, None, i) for i in range(nlead)]
    axes += [_Axis(letters[nlead + j], shaped[i], chunks[i], i) for j, i in enumerate(kept)]
    names = [_AXES.get(a.name, a.name.lower()) for a in axes]
    for a, name in zip(axes, names, strict=True):
        a.name = name if names.count(name) == 1 else a.name.lower()
    return axes


def _ordered(axes: list[_Axis], channel_last: bool) -> list[_Axis]:
    """Reorder *axes*: OME-NGFF's order by default, the channel last with *channel_last*."""
    if channel_last:
        return [a for a in axes if a.name != "c"] + [a for a in axes if a.name == "c"]
    return [axes[i] for i in ngff_order([a.name for a in axes])]


def _jpeg_colorspace(page: Any) -> tuple[int | None, int | str | None]:
    """What JPEG segments hold and what to decode them to (tifffile's ``jpeg_decode_colorspace``)."""
    colorspace: int | None = None
    outcolorspace: int | str | None = None
    photometric = int(page.photometric)
    if not page.extrasamples:
        if photometric == 6:  # YCbCr -> RGB
            outcolorspace = 2
        elif photometric == 2:  # RGB; without a JFIF marker (Aperio SVS) the data is RGB, not YCbCr
            colorspace = None if page.is_jfif else 2
            outcolorspace = 2
        elif photometric == 5:  # CMYK
            outcolorspace = 4
        elif photometric > 3:
            outcolorspace = page.photometric.name
    if page.planarconfig != 1:
        outcolorspace = 1  # separate planes decode to gray
    return colorspace, outcolorspace


def _codec_config(page: Any, axes: list[_Axis], seg: tuple[int, int, int, int], byteorder: str) -> dict[str, Any]:
    """The ``refstore.tiff_segment`` configuration of one level."""
    extra: dict[str, Any] = {}
    if int(page.compression) in JPEG_COMPRESSIONS:
        colorspace, outcolorspace = _jpeg_colorspace(page)
        tables = page.jpegtables
        extra = {
            "jpeg_tables": None if tables is None else base64.b64encode(tables).decode(),
            "jpeg_header": None if page.jpegheader is None else base64.b64encode(page.jpegheader).decode(),
            "jpeg_colorspace": colorspace,
            "jpeg_outcolorspace": outcolorspace,
            "bitspersample": int(page.bitspersample),
        }
    elif int(page.compression) != CCITT_FAX4 and int(page.bitspersample) not in (8, 16, 32, 64):
        extra = {"bitspersample": int(page.bitspersample)}  # packed samples
    letters = "".join("-" if a.page_dim is None else _SEGMENT[a.page_dim] for a in axes)
    segment = TiffSegment(
        axes=letters,
        segment=seg,
        compression=int(page.compression),
        predictor=int(page.predictor),
        byteorder=byteorder,
        bitorder=page.fillorder == 2,
        **extra,
    )
    return segment.to_config()


def _json_number(value: Any) -> Any:
    """A fill value as zarr's JSON spells it: NaN and infinities as the strings zarr 2 and 3 use."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _array_docs(
    path: str, axes: list[_Axis], dtype: np.dtype, fill: Any, config: dict[str, Any], zarr_format: int
) -> dict[str, bytes]:
    """The metadata documents of one level array."""
    shape, chunks, names = [a.size for a in axes], [a.chunk for a in axes], [a.name for a in axes]
    if zarr_format == 2:
        zarray = {
            "zarr_format": 2,
            "shape": shape,
            "chunks": chunks,
            "dtype": dtype.str,
            "compressor": {"id": TIFF_SEGMENT, **config, "chunk_shape": chunks, "dtype": dtype.str, "fill_value": fill},
            "filters": None,
            "fill_value": fill,
            "order": "C",
        }
        return {
            f"{path}/.zarray": json.dumps(zarray).encode(),
            f"{path}/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": names}).encode(),
        }
    doc = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": shape,
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [{"name": TIFF_SEGMENT, "configuration": config}],
        "attributes": {},
        "dimension_names": names,
    }
    return {f"{path}/zarr.json": json.dumps(doc).encode()}


def _level_references(
    level: Any, axes: list[_Axis], grid: tuple[int, int, int, int], location: str, path: str, zarr_format: int
) -> dict[str, Reference]:
    """Chunk key -> byte range of every segment of one level that has bytes."""
    page0 = level.keyframe
    lead_shape = [a.size for a in sorted((a for a in axes if a.page_dim is None), key=lambda a: a.lead_dim or 0)]
    npages = math.prod(lead_shape)
    pages = level.pages
    contiguous = level.dataoffset is not None and len(pages) < npages
    page_bytes = int(page0.size) * page0.dtype.itemsize
    counts = [math.ceil(a.size / a.chunk) for a in axes]
    refs: dict[str, Reference] = {}
    for index in np.ndindex(*counts):
        lead = [0] * len(lead_shape)
        where = [0, 0, 0, 0, 0]
        for a, i in zip(axes, index, strict=True):
            if a.page_dim is None:
                lead[a.lead_dim or 0] = i
            else:
                where[a.page_dim] = i
        pageindex = int(np.ravel_multi_index(lead, lead_shape)) if lead_shape else 0
        segindex = ((where[0] * grid[1] + where[1]) * grid[2] + where[2]) * grid[3] + where[3]
        if contiguous:
            offset, count = pageindex * page_bytes + page0.dataoffsets[segindex], page0.databytecounts[segindex]
        else:
            page = pages[pageindex]
            if page is None or segindex >= len(page.dataoffsets):
                continue
            offset, count = page.dataoffsets[segindex], page.databytecounts[segindex]
        if offset and count:
            key = ".".join(map(str, index)) if zarr_format == 2 else "c/" + "/".join(map(str, index))
            refs[f"{path}/{key}"] = Reference(location, int(offset), int(count))
    return refs


def _open(path: str, storage_options: dict[str, Any] | None) -> tuple[Any, str, SourceIdentity | None]:
    """Open *path* (local or fsspec URL) for tifffile; return the file, its location and identity."""
    if "://" not in path and "::" not in path:
        return open(path, "rb"), os.path.abspath(path), local_identity(path)
    fs, fspath = fsspec.core.url_to_fs(path, **(storage_options or {}))
    info = fs.info(fspath)
    handle = fs.open(fspath, "rb", block_size=1 << 16, cache_type="readahead")  # header pages, not tiles
    return handle, path, identity_from_info(info)


def tiff(
    path: str,
    *,
    series: int = 0,
    channel_last: bool = False,
    url: str | None = None,
    zarr_format: int = 2,
    storage_options: dict[str, Any] | None = None,
    channel_first: bool | None = None,
) -> Manifest:
    """Build a manifest reading one series of a TIFF file (all pyramid levels) as a group.

    Parameters
    ----------
    path
        A TIFF, OME-TIFF or COG file: a local path or an fsspec URL (``http(s)://``,
        ``s3://``, ...). Only the headers are read.
    series
        Which tifffile series to read.
    channel_last
        Keep samples last (``y, x, c``) as chunky TIFFs store them, instead of the
        default OME-NGFF order (``c, y, x``); the group then carries only
        ``refstore:levels``, no NGFF ``multiscales``.
    url
        The URL written into references instead of *path* (for example where the
        file will be served).
    zarr_format
        2 (``.zarray``, NGFF 0.4) or 3 (``zarr.json``, NGFF 0.5).
    storage_options
        Options of the fsspec filesystem of a URL *path*.
    channel_first
        Accepted for compatibility: ``channel_first=False`` means ``channel_last=True``.

    Returns
    -------
    Manifest
        A group with level arrays ``0``, ``1``, ... (largest first) whose chunks are
        byte ranges of the TIFF tiles or strips, decoded by the
        ``refstore.tiff_segment`` codec (found through entry points: nothing to
        import or register), whatever the compression, predictor or planar
        configuration. Short last strips and missing segments read as the fill value.

    Raises
    ------
    ValueError
        Naming the file: a series that does not exist, compressions the codec
        cannot decode (CCITT, old-style JPEG, EER, Jetraw), packed bit depths,
        chroma subsampling without JPEG, or pages whose JPEG tables differ.
    """
    import tifffile

    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format={zarr_format!r}: use 2 or 3")
    channel_last = pyramid_channel_last(channel_last, channel_first)
    handle, location, identity = _open(path, storage_options)
    location = url or location
    manifest = Manifest()
    with handle, tifffile.TiffFile(handle) as tif:
        if not 0 <= series < len(tif.series):
            raise ValueError(f"{path}: series {series} requested, the file has {len(tif.series)}")
        byteorder = tif.byteorder
        level_axes: list[list[_Axis]] = []
        for i, level in enumerate(tif.series[series].levels):
            where = f"{path} (series {series}, level {i})"
            page = level.keyframe
            _check_supported(page, where)
            if getattr(level, "is_multifile", False):
                raise ValueError(f"{where}: the series has pages in other files (multi-file OME-TIFF); "
                                 "build a manifest of each file instead")
            seg, grid = _segment(page, where)
            axes = _ordered(_level_axes(level, where), channel_last)
            if page.jpegtables is not None and any(
                getattr(p, "jpegtables", page.jpegtables) != page.jpegtables for p in level.pages if p is not None
            ):
                raise ValueError(f"{where}: pages have different JPEG tables")
            dtype = np.dtype(level.dtype).newbyteorder("<")
            fill = page.nodata if page.nodata is not None else 0
            fill = fill.item() if isinstance(fill, np.generic) else fill
            fill = bool(fill) if dtype.kind == "b" else _json_number(fill)
            config = _codec_config(page, axes, seg, byteorder)
            for key, doc in _array_docs(str(i), axes, dtype, fill, config, zarr_format).items():
                manifest.set(key, doc)
            for key, ref in _level_references(level, axes, grid, location, str(i), zarr_format).items():
                manifest.set(key, ref)
            level_axes.append(axes)
    names = [a.name for a in level_axes[0]]
    shapes = [[a.size for a in axes] for axes in level_axes]
    spatial = [n in ("y", "x", "z") for n in names]
    factors = [[Fraction(shapes[0][d], s[d]) if spatial[d] else Fraction(1) for d in range(len(names))] for s in shapes]
    attrs = multiscale_attributes(
        [str(i) for i in range(len(shapes))], shapes, names, factors=factors, zarr_format=zarr_format
    )
    if zarr_format == 2:
        manifest.set(".zgroup", json.dumps({"zarr_format": 2}).encode())
        manifest.set(".zattrs", json.dumps(attrs).encode())
    else:
        manifest.set("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs}).encode())
    # the file's own identity; at another url only its size is known to hold
    if identity is not None:
        record_sources(manifest, {location: identity if url is None else SourceIdentity(size=identity.size)}, local=False)
    return manifest



def needs_imagecodecs(manifest: Manifest) -> bool:
    """True if some array of *manifest* uses an ``imagecodecs_*`` numcodecs codec.

    Manifests that :func:`tiff` builds never do (their ``refstore.tiff_segment``
    codec registers through entry points); TIFF references written by other tools
    (tifffile's ``write_fsspec``, kerchunk) often do, and then need
    ``imagecodecs.numcodecs.register_codecs()`` before reading.
    """
    for key, value in manifest.items():
        if key.endswith(".zarray") and isinstance(value, bytes) and b'"imagecodecs_' in value:
            return True
    return False
