"""Image codecs: PNG, JPEG, TIFF, WebP, JPEG 2000 and JPEG XL files, and TIFF segments, as zarr chunks.

The codecs are found through the ``zarr.codecs`` and ``numcodecs.codecs`` entry
points, so opening an array needs no import; `register` does the same by hand
(for a source checkout that is not installed). See ``spec/image-codecs.md``.
"""

from __future__ import annotations

from refstore.codecs._fit import LAYOUTS, Layout
from refstore.codecs._formats import FORMATS, ImageCodecError, ImageFormat, available_formats
from refstore.codecs._numcodecs import (
    NUMCODECS_CODECS,
    ImageNumcodec,
    Jpeg2kNumcodec,
    JpegNumcodec,
    JpegxlNumcodec,
    PngNumcodec,
    TiffNumcodec,
    WebpNumcodec,
)
from refstore.codecs._tiffseg import TiffSegment
from refstore.codecs._tiffseg_codecs import TIFF_SEGMENT, TiffSegmentCodec, TiffSegmentNumcodec
from refstore.codecs._zarr3 import (
    ZARR3_CODECS,
    ImageCodec,
    Jpeg2kCodec,
    JpegCodec,
    JpegxlCodec,
    PngCodec,
    TiffCodec,
    WebpCodec,
)

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "NUMCODECS_CODECS",
    "TIFF_SEGMENT",
    "ZARR3_CODECS",
    "ImageCodec",
    "ImageCodecError",
    "ImageFormat",
    "ImageNumcodec",
    "Jpeg2kCodec",
    "Jpeg2kNumcodec",
    "JpegCodec",
    "JpegNumcodec",
    "JpegxlCodec",
    "JpegxlNumcodec",
    "Layout",
    "PngCodec",
    "PngNumcodec",
    "TiffCodec",
    "TiffNumcodec",
    "TiffSegment",
    "TiffSegmentCodec",
    "TiffSegmentNumcodec",
    "WebpCodec",
    "WebpNumcodec",
    "available_formats",
    "register",
]


def register() -> None:
    """Register every image codec with zarr (format 3) and numcodecs (format 2).

    Equivalent to the package's entry points; safe to call more than once.
    zarr keys each implementation by its qualified class name, so registering
    the class an entry point also names leaves one implementation, not two.
    """
    import numcodecs
    from zarr.registry import register_codec

    for cls in ZARR3_CODECS:
        register_codec(cls.codec_name, cls)
    register_codec(TIFF_SEGMENT, TiffSegmentCodec)
    for ncls in NUMCODECS_CODECS:
        numcodecs.register_codec(ncls, codec_id=ncls.codec_id)
    numcodecs.register_codec(TiffSegmentNumcodec, codec_id=TIFF_SEGMENT)
