"""TIFF, OME-TIFF and COG files as manifests: byte ranges of every tile of every pyramid level."""

from __future__ import annotations

import io
import json
import os
from fractions import Fraction

from refstore.manifest import Manifest
from refstore.manifest._sources import SourceIdentity, local_identity, record_sources
from refstore.multiscale import multiscale_attributes

__all__ = ["IMAGECODECS_COMPRESSORS", "tiff"]

IMAGECODECS_COMPRESSORS = "imagecodecs_"
"""Prefix of codec ids that need ``imagecodecs.numcodecs.register_codecs()`` before reading."""

_AXES = {"Y": "y", "X": "x", "S": "c", "C": "c", "Z": "z", "T": "t", "Q": "q", "I": "i"}


class _KeepOpen(io.StringIO):
    """A StringIO that survives ``close()`` (tifffile closes the file it writes to)."""

    def close(self) -> None:
        pass


def tiff(path: str, *, series: int = 0, channel_first: bool = False, url: str | None = None) -> Manifest:
    """Build a manifest reading one series of a TIFF file (all pyramid levels) as a group.

    Parameters
    ----------
    path
        A local TIFF, OME-TIFF or COG file.
    series
        Which tifffile series to read.
    channel_first
        Refused for chunky (interleaved) RGB: a TIFF tile stores samples interleaved,
        and zarr format 2 cannot transpose them. Planar files are channel-first already.
    url
        The URL written into references instead of the absolute path (for example
        where the file will be served).

    Returns
    -------
    Manifest
        A zarr format 2 group (tifffile's ``write_fsspec`` output) with level arrays
        ``0``, ``1``, ... (largest first), whose chunks are byte ranges of the TIFF
        tiles or strips, plus ``refstore:levels`` and (when the axes allow) NGFF 0.4
        ``multiscales`` attributes. Compressors are numcodecs ids: ``zlib``, ``lzma``
        and none read everywhere; ``imagecodecs_*`` ids (LZW, JPEG, JPEG 2000, WebP,
        PackBits, Zstd, ...) need ``imagecodecs.numcodecs.register_codecs()`` first,
        because imagecodecs declares no entry points. :func:`needs_imagecodecs` tells.

    Raises
    ------
    ValueError
        What tifffile refuses (incomplete strips, CCITT, odd bit depths, JPEG tables in
        multi-page series), naming the file; and ``channel_first`` with chunky samples.
    """
    import tifffile

    location = url or os.path.abspath(path)
    prefix, name = location.rsplit("/", 1)
    with tifffile.TiffFile(path) as tif:
        if series >= len(tif.series):
            raise ValueError(f"{path}: series {series} requested, the file has {len(tif.series)}")
        s = tif.series[series]
        axes = [_AXES.get(a, a.lower()) for a in s.axes]
        if channel_first and axes[-1] == "c":
            raise ValueError(f"{path}: samples are interleaved (axes {s.axes}); channel_first is not supported for TIFF")
        shapes = [tuple(level.shape) for level in s.levels]
        out = _KeepOpen()
        store = s.aszarr(multiscales=True)
        try:
            store.write_fsspec(out, url=prefix + "/")
        except ValueError as exc:
            raise ValueError(f"{path}: tifffile cannot express it as references ({exc})") from exc
        finally:
            store.close()
    refs = json.loads(out.getvalue())
    # tifffile names the file relative to url; rewrite to our exact location.
    for value in refs.values():
        if isinstance(value, list) and value and isinstance(value[0], str) and value[0].endswith(name):
            value[0] = location
    attrs = json.loads(refs.get(".zattrs", "{}"))
    attrs.pop("multiscales", None)
    spatial = [a in ("y", "x", "z") for a in axes]
    factors = [[Fraction(shapes[0][i], sh[i]) if spatial[i] else Fraction(1) for i in range(len(axes))] for sh in shapes]
    attrs.update(
        multiscale_attributes([str(i) for i in range(len(shapes))], shapes, axes, factors=factors, zarr_format=2)
    )
    refs[".zattrs"] = json.dumps(attrs)
    for i in range(len(shapes)):
        refs[f"{i}/.zattrs"] = json.dumps({"_ARRAY_DIMENSIONS": axes})
    manifest = Manifest.from_dict(refs)
    ident = local_identity(path)
    # the file's own size and mtime; at another url only its size is known to hold
    record_sources(manifest, {location: ident if url is None else SourceIdentity(size=ident.size)}, local=False)
    return manifest


def needs_imagecodecs(manifest: Manifest) -> bool:
    """True if some array of *manifest* uses an ``imagecodecs_*`` numcodecs codec."""
    for key, value in manifest.items():
        if key.endswith(".zarray") and isinstance(value, bytes) and IMAGECODECS_COMPRESSORS.encode() in value:
            return True
    return False
