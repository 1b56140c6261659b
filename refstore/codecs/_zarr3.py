"""Zarr 3 image codecs: the array-to-bytes codec ``refstore.image`` and per-format aliases."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

import numpy as np
from zarr.abc.codec import ArrayBytesCodec

from refstore.codecs._fit import Layout, chunk_to_image, fit_image, parse_layout, resolve_layout
from refstore.codecs._formats import (
    ImageCodecError,
    ImageFormat,
    check_options,
    decode_image,
    encode_image,
    parse_format,
)

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

__all__ = [
    "ZARR3_CODECS",
    "ImageCodec",
    "Jpeg2kCodec",
    "JpegCodec",
    "JpegxlCodec",
    "PngCodec",
    "TiffCodec",
    "WebpCodec",
]

_CONFIG_KEYS: Final = ("format", "level", "lossless", "layout")


def native_dtype(dtype: object) -> np.dtype:
    """Return the numpy dtype of a zarr data type (a ZDType since zarr 3.1, else a numpy dtype)."""
    to_native = getattr(dtype, "to_native_dtype", None)
    return np.dtype(to_native() if callable(to_native) else dtype)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """Zarr 3 array-to-bytes codec storing each chunk as one image file.

    Decoding detects the format from the chunk's bytes (PNG, JPEG, TIFF, WebP,
    JPEG 2000, JPEG XL), so one array may mix formats. The image is fitted into
    the chunk: smaller (edge) tiles are padded top-left with the fill value, gray
    and RGB(A) are converted where lossless, anything lossy or larger than the
    chunk is refused with `ImageCodecError`. See ``spec/image-codecs.md``.

    Parameters
    ----------
    format
        Format written when zarr encodes a chunk; default ``"png"``. Decoding
        ignores it.
    level
        Compression level or quality for the encoder; None for its default.
    lossless
        None: lossless for every format except JPEG. False selects lossy WebP,
        JPEG 2000 and JPEG XL; True selects lossless JPEG.
    layout
        ``"yxc"`` (channel-last), ``"cyx"`` (channel-first) or ``"yx"`` (one
        channel); None means ``"yx"`` for 2-D chunks and ``"yxc"`` otherwise.
        Axes before the image axes must have length 1.
    """

    codec_name: ClassVar[str] = "refstore.image"
    fixed_format: ClassVar[ImageFormat | None] = None
    is_fixed_size = False

    format: ImageFormat
    level: int | None
    lossless: bool | None
    layout: Layout | None

    def __init__(
        self,
        *,
        format: ImageFormat | str | None = None,
        level: int | None = None,
        lossless: bool | None = None,
        layout: Layout | str | None = None,
    ) -> None:
        fixed = type(self).fixed_format
        fmt = parse_format(format) if format is not None else (fixed or "png")
        if fixed is not None and fmt != fixed:
            raise ImageCodecError(
                f"codec {self.codec_name!r} always writes {fixed}; got format={format!r}. "
                f"Use 'refstore.image' to choose the format"
            )
        check_options(level, lossless)
        object.__setattr__(self, "format", fmt)
        object.__setattr__(self, "level", level)
        object.__setattr__(self, "lossless", lossless)
        object.__setattr__(self, "layout", parse_layout(layout))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build the codec from its JSON form ``{"name": ..., "configuration": {...}}``.

        Raises
        ------
        ImageCodecError
            If the name is not this codec's, or the configuration has unknown keys
            or bad values.
        """
        if data.get("name") != cls.codec_name:
            raise ImageCodecError(
                f"expected codec name {cls.codec_name!r}, got {data.get('name')!r}"
            )
        config = data.get("configuration") or {}
        if not isinstance(config, dict):
            raise ImageCodecError(f"codec {cls.codec_name!r}: configuration must be an object")
        unknown = sorted(set(config) - set(_CONFIG_KEYS))
        if unknown:
            raise ImageCodecError(
                f"codec {cls.codec_name!r}: unknown configuration key(s) {unknown}; "
                f"known keys are {list(_CONFIG_KEYS)}"
            )
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form, leaving out unset options (and ``configuration`` if empty)."""
        config: dict[str, Any] = {}
        if self.fixed_format is None:
            config["format"] = self.format
        for key in ("level", "lossless", "layout"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return {"name": self.codec_name, **({"configuration": config} if config else {})}

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        """Refuse arrays whose dtype is not numeric or whose rank is too small for the layout.

        The chunk shape itself (channel count, leading axes) is checked on every
        decode and encode, where the exact chunk spec is known.
        """
        native = native_dtype(dtype)
        if native.kind not in "biuf":
            raise ImageCodecError(
                f"codec {self.codec_name!r} stores images, so the array dtype must be bool, "
                f"integer or float; got {native}"
            )
        layout = resolve_layout(self.layout, len(shape))
        if len(shape) < (2 if layout == "yx" else 3):
            raise ImageCodecError(
                f"codec {self.codec_name!r} with layout {layout!r} needs an array of at least "
                f"{2 if layout == 'yx' else 3} dimensions; got shape {shape}"
            )

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        """Decode one image file into a chunk of exactly ``chunk_spec.shape`` and dtype."""
        image = decode_image(chunk_bytes.as_numpy_array())
        chunk = fit_image(
            image,
            tuple(chunk_spec.shape),
            native_dtype(chunk_spec.dtype),
            chunk_spec.fill_value,
            self.layout,
        )
        return chunk_spec.prototype.nd_buffer.from_numpy_array(chunk)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        """Encode one chunk as an image file of the configured format."""
        image = chunk_to_image(chunk_array.as_numpy_array(), self.layout)
        data = encode_image(image, self.format, level=self.level, lossless=self.lossless)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, _input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("image files have no fixed encoded size")


class PngCodec(ImageCodec):
    """`ImageCodec` named ``refstore.png``: writes PNG, reads every format."""

    codec_name = "refstore.png"
    fixed_format = "png"


class JpegCodec(ImageCodec):
    """`ImageCodec` named ``refstore.jpeg``: writes JPEG, reads every format."""

    codec_name = "refstore.jpeg"
    fixed_format = "jpeg"


class TiffCodec(ImageCodec):
    """`ImageCodec` named ``refstore.tiff``: writes TIFF (deflate), reads every format."""

    codec_name = "refstore.tiff"
    fixed_format = "tiff"


class WebpCodec(ImageCodec):
    """`ImageCodec` named ``refstore.webp``: writes WebP, reads every format."""

    codec_name = "refstore.webp"
    fixed_format = "webp"


class Jpeg2kCodec(ImageCodec):
    """`ImageCodec` named ``refstore.jpeg2k``: writes JPEG 2000, reads every format."""

    codec_name = "refstore.jpeg2k"
    fixed_format = "jpeg2k"


class JpegxlCodec(ImageCodec):
    """`ImageCodec` named ``refstore.jpegxl``: writes JPEG XL, reads every format."""

    codec_name = "refstore.jpegxl"
    fixed_format = "jpegxl"


ZARR3_CODECS: Final[tuple[type[ImageCodec], ...]] = (
    ImageCodec,
    PngCodec,
    JpegCodec,
    TiffCodec,
    WebpCodec,
    Jpeg2kCodec,
    JpegxlCodec,
)
"""Every zarr 3 image codec class; each registers under its ``codec_name``."""
