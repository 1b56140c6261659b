"""numcodecs image codecs for zarr format 2: id ``refstore.image`` and per-format aliases."""

from __future__ import annotations

from typing import Any, ClassVar, Final

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_contiguous_ndarray, ndarray_copy

from refstore.codecs._fit import Layout, chunk_to_image, fit_image, geometry, parse_layout
from refstore.codecs._formats import (
    ImageCodecError,
    ImageFormat,
    check_options,
    decode_image,
    encode_image,
    parse_format,
)

__all__ = [
    "NUMCODECS_CODECS",
    "ImageNumcodec",
    "Jpeg2kNumcodec",
    "JpegNumcodec",
    "JpegxlNumcodec",
    "PngNumcodec",
    "TiffNumcodec",
    "WebpNumcodec",
]


class ImageNumcodec(Codec):
    """numcodecs codec storing each chunk as one image file (zarr format 2).

    Use it as the array's ``compressor`` (or as its only filter). Decoding
    detects the format from the bytes, as the zarr 3 `ImageCodec` does, and
    applies the same padding and channel rules. A numcodecs codec is not told
    the chunk's shape, dtype or fill value, so the configuration carries them.

    Parameters
    ----------
    format, level, lossless, layout
        As for `ImageCodec`.
    chunk_shape
        The array's ``chunks``. Needed to pad edge tiles and to convert channels;
        without it a decoded tile is returned at its own size (in ``layout``
        order), and zarr's reshape refuses any tile that is not exactly a chunk.
    dtype
        The array's dtype (e.g. ``"|u1"``). Without it the tile's own dtype is
        returned, which zarr then reinterprets; set it whenever tiles may differ.
    fill_value
        The array's ``fill_value``, used to pad edge tiles; None means 0.
    """

    codec_id: ClassVar[str] = "refstore.image"
    fixed_format: ClassVar[ImageFormat | None] = None

    def __init__(
        self,
        *,
        format: ImageFormat | str | None = None,
        level: int | None = None,
        lossless: bool | None = None,
        layout: Layout | str | None = None,
        chunk_shape: list[int] | tuple[int, ...] | None = None,
        dtype: str | None = None,
        fill_value: int | float | str | None = None,
    ) -> None:
        fixed = type(self).fixed_format
        fmt = parse_format(format) if format is not None else (fixed or "png")
        if fixed is not None and fmt != fixed:
            raise ImageCodecError(
                f"codec id {self.codec_id!r} always writes {fixed}; got format={format!r}. "
                "Use 'refstore.image' to choose the format"
            )
        check_options(level, lossless)
        self.format: ImageFormat = fmt
        self.level = level
        self.lossless = lossless
        self.layout: Layout | None = parse_layout(layout)
        self.chunk_shape: tuple[int, ...] | None = None
        if chunk_shape is not None:
            self.chunk_shape = tuple(int(d) for d in chunk_shape)
            geometry(self.chunk_shape, self.layout)  # refuse a layout that cannot fit now
        self.dtype: np.dtype | None = None if dtype is None else np.dtype(dtype)
        self.fill_value = fill_value
        if self.dtype is not None and fill_value is not None:
            try:
                np.asarray(fill_value).astype(self.dtype, casting="unsafe")
            except (TypeError, ValueError) as e:
                raise ImageCodecError(
                    f"fill_value={fill_value!r} is not a value of dtype {self.dtype}"
                ) from e

    def get_config(self) -> dict[str, Any]:
        """Return ``{"id": ..., ...}`` with unset options left out."""
        config: dict[str, Any] = {"id": self.codec_id}
        if self.fixed_format is None:
            config["format"] = self.format
        for key in ("level", "lossless", "layout", "fill_value"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        if self.chunk_shape is not None:
            config["chunk_shape"] = list(self.chunk_shape)
        if self.dtype is not None:
            config["dtype"] = self.dtype.str
        return config

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({args})"

    def encode(self, buf: Any) -> bytes:
        """Encode one chunk (an array of the chunk's shape) as an image file.

        A flat buffer is accepted when ``chunk_shape`` and ``dtype`` are configured.
        """
        chunk = np.asarray(buf)
        if chunk.ndim < 2:
            if self.chunk_shape is None or self.dtype is None:
                raise ImageCodecError(
                    f"codec {self.codec_id!r} got a flat buffer of {chunk.nbytes} bytes to "
                    "encode; configure chunk_shape and dtype, or pass the chunk as an array"
                )
            chunk = ensure_contiguous_ndarray(buf).view(self.dtype).reshape(self.chunk_shape)
        image = chunk_to_image(chunk, self.layout)
        return encode_image(image, self.format, level=self.level, lossless=self.lossless)

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        """Decode one image file into a chunk.

        Returns
        -------
        numpy.ndarray
            With ``chunk_shape`` set (or an ``out`` array of two or more
            dimensions): exactly that shape, in ``dtype`` (or ``out``'s dtype),
            padded and converted as for `ImageCodec`. Otherwise the tile at its
            own size, channel axis placed per ``layout``. Written into *out* if given.
        """
        image = decode_image(ensure_contiguous_ndarray(buf))
        shape = self.chunk_shape
        dtype = self.dtype
        if out is not None:
            out_array = np.asarray(out)
            dtype = dtype if dtype is not None else out_array.dtype
            if shape is None and out_array.ndim >= 2:
                shape = tuple(out_array.shape)
        if shape is None:
            shape = _own_shape(image, self.layout)
        chunk = fit_image(
            image, shape, image.dtype if dtype is None else dtype, self.fill_value, self.layout
        )
        return ndarray_copy(chunk, out) if out is not None else chunk


def _own_shape(image: np.ndarray, layout: Layout | None) -> tuple[int, ...]:
    """Chunk shape that holds *image* exactly, in *layout* order (channel-last by default)."""
    height, width, samples = image.shape
    if layout == "yx":
        return (height, width)
    if layout == "cyx":
        return (samples, height, width)
    return (height, width, samples)


class PngNumcodec(ImageNumcodec):
    """`ImageNumcodec` with codec id ``refstore.png``: writes PNG, reads every format."""

    codec_id = "refstore.png"
    fixed_format = "png"


class JpegNumcodec(ImageNumcodec):
    """`ImageNumcodec` with codec id ``refstore.jpeg``: writes JPEG, reads every format."""

    codec_id = "refstore.jpeg"
    fixed_format = "jpeg"


class TiffNumcodec(ImageNumcodec):
    """`ImageNumcodec` with codec id ``refstore.tiff``: writes deflated TIFF, reads every format."""

    codec_id = "refstore.tiff"
    fixed_format = "tiff"


class WebpNumcodec(ImageNumcodec):
    """`ImageNumcodec` with codec id ``refstore.webp``: writes WebP, reads every format."""

    codec_id = "refstore.webp"
    fixed_format = "webp"


class Jpeg2kNumcodec(ImageNumcodec):
    """`ImageNumcodec` with codec id ``refstore.jpeg2k``: writes JPEG 2000, reads every format."""

    codec_id = "refstore.jpeg2k"
    fixed_format = "jpeg2k"


class JpegxlNumcodec(ImageNumcodec):
    """`ImageNumcodec` with codec id ``refstore.jpegxl``: writes JPEG XL, reads every format."""

    codec_id = "refstore.jpegxl"
    fixed_format = "jpegxl"


NUMCODECS_CODECS: Final[tuple[type[ImageNumcodec], ...]] = (
    ImageNumcodec,
    PngNumcodec,
    JpegNumcodec,
    TiffNumcodec,
    WebpNumcodec,
    Jpeg2kNumcodec,
    JpegxlNumcodec,
)
"""Every numcodecs image codec class; each registers under its ``codec_id``."""
