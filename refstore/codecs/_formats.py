"""Image file formats: recognise one by its magic bytes, decode it, encode pixels to it."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, Final, Literal, cast

import numpy as np

from refstore.errors import ImageCodecError

__all__ = [
    "FORMATS",
    "ImageCodecError",
    "ImageFormat",
    "available_formats",
    "check_options",
    "decode_image",
    "detect_format",
    "encode_image",
    "parse_format",
]

ImageFormat = Literal["png", "jpeg", "tiff", "webp", "jpeg2k", "jpegxl"]
"""The formats the image codecs read and write."""

FORMATS: Final[tuple[ImageFormat, ...]] = ("png", "jpeg", "tiff", "webp", "jpeg2k", "jpegxl")

_TITLES: Final[dict[str, str]] = {
    "png": "PNG",
    "jpeg": "JPEG",
    "tiff": "TIFF",
    "webp": "WebP",
    "jpeg2k": "JPEG 2000",
    "jpegxl": "JPEG XL",
}

# Prefixes that identify a file. WebP (RIFF....WEBP) is checked separately.
_MAGIC: Final[tuple[tuple[bytes, ImageFormat], ...]] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2k"),  # JP2 container
    (b"\xff\x4f\xff\x51", "jpeg2k"),  # raw J2K codestream
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "jpegxl"),  # JPEG XL container
    (b"\xff\x0a", "jpegxl"),  # raw JPEG XL codestream
)

# imagecodecs' name for the library behind each format (``imagecodecs.<NAME>.available``).
_LIBRARY: Final[dict[str, str]] = {
    "png": "PNG",
    "jpeg": "JPEG8",
    "tiff": "TIFF",
    "webp": "WEBP",
    "jpeg2k": "JPEG2K",
    "jpegxl": "JPEGXL",
}


def _imagecodecs() -> Any:
    """Import imagecodecs on first use, so the codec classes load without it."""
    try:
        import imagecodecs
    except ImportError as e:  # pragma: no cover - exercised only without imagecodecs
        raise ImageCodecError(
            "the refstore image codecs need the 'imagecodecs' package: pip install imagecodecs"
        ) from e
    return imagecodecs


def parse_format(value: object, field: str = "format") -> ImageFormat:
    """Return *value* as a known format name, or raise naming the field and the choices."""
    if isinstance(value, str) and value.lower() in FORMATS:
        return cast(ImageFormat, value.lower())
    raise ImageCodecError(f"{field}={value!r} is not an image format; choose one of {FORMATS}")


def check_options(level: object, lossless: object) -> None:
    """Raise ImageCodecError unless *level* is an int or None and *lossless* a bool or None."""
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        raise ImageCodecError(f"level={level!r} must be an integer or null")
    if lossless is not None and not isinstance(lossless, bool):
        raise ImageCodecError(f"lossless={lossless!r} must be true, false or null")


def available_formats() -> tuple[ImageFormat, ...]:
    """Return the formats the installed imagecodecs build can decode and encode.

    Returns
    -------
    tuple of str
        A subset of `FORMATS`, in the same order; empty without imagecodecs.
    """
    try:
        ic = _imagecodecs()
    except ImageCodecError:
        return ()
    return tuple(f for f in FORMATS if _library_available(ic, f))


def _library_available(ic: Any, fmt: str) -> bool:
    lib = getattr(ic, _LIBRARY[fmt], None)
    return bool(getattr(lib, "available", False))


def _require(fmt: ImageFormat) -> Any:
    ic = _imagecodecs()
    if not _library_available(ic, fmt):
        raise ImageCodecError(
            f"this imagecodecs build ({ic.__version__}) has no {_TITLES[fmt]} support "
            f"(imagecodecs.{_LIBRARY[fmt]}.available is False); install a build that has it"
        )
    return ic


def _nbytes(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    return data.nbytes if isinstance(data, (memoryview, np.ndarray)) else len(data)


def detect_format(data: bytes | bytearray | memoryview | np.ndarray) -> ImageFormat:
    """Recognise the image format of *data* from its first bytes.

    Parameters
    ----------
    data
        The whole file or tile.

    Returns
    -------
    str
        One of `FORMATS`.

    Raises
    ------
    ImageCodecError
        If no known signature matches; the message shows the first bytes.
    """
    head = bytes(memoryview(data).cast("B")[:16])  # type: ignore[arg-type]  # ndarrays are buffers
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    raise ImageCodecError(
        f"chunk bytes ({_nbytes(data)} bytes, starting {head[:12]!r}) are "
        f"not a {', '.join(_TITLES.values())} file; check that the reference points at an "
        "image tile"
    )


def decode_image(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Detect the format of *data* and decode it.

    Parameters
    ----------
    data
        The whole file or tile. TIFF: the first page (IFD 0) is decoded and later
        pages are ignored; WebP, JPEG XL: the first frame.

    Returns
    -------
    numpy.ndarray
        Shape ``(height, width, samples)`` with 1 to 4 samples, channel-last, in the
        file's own dtype. A 2-D image comes back as ``samples == 1``.

    Raises
    ------
    ImageCodecError
        If the format is unknown or unsupported by this imagecodecs build, the
        bytes are corrupt, or the image is not 2-D with 1 to 4 samples (e.g. CMYK JPEG).
    """
    fmt = detect_format(data)
    ic = _require(fmt)
    decoders: dict[str, Callable[[Any], np.ndarray]] = {
        "png": ic.png_decode,
        "jpeg": ic.jpeg_decode,
        "tiff": lambda d: _decode_tiff(ic, d),
        "webp": ic.webp_decode,
        "jpeg2k": ic.jpeg2k_decode,
        "jpegxl": lambda d: ic.jpegxl_decode(d, index=0),
    }
    try:
        image = np.asarray(decoders[fmt](data))
    except ImageCodecError:
        raise
    except Exception as e:
        raise ImageCodecError(
            f"cannot decode {_TITLES[fmt]} tile ({_nbytes(data)} bytes): "
            f"{type(e).__name__}: {e}"
        ) from e
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if image.ndim != 3 or not 1 <= image.shape[2] <= 4:
        raise ImageCodecError(
            f"{_TITLES[fmt]} tile decoded to shape {image.shape}; only 2-D images with 1 to 4 "
            "samples (gray, gray+alpha, RGB, RGBA) fit a chunk"
        )
    if fmt == "jpeg" and image.shape[2] not in (1, 3):
        raise ImageCodecError(
            f"JPEG tile has {image.shape[2]} components (CMYK/YCCK or unusual); only gray and "
            "RGB JPEG are read, because other colour models would read as wrong colours"
        )
    return image


def _decode_tiff(ic: Any, data: Any) -> np.ndarray:
    """Decode the first page with libtiff, or with tifffile where libtiff lacks the compression."""
    try:
        image = np.asarray(ic.tiff_decode(data, index=0))
    except ic.TiffError as libtiff_error:
        try:
            import tifffile
        except ImportError:
            raise libtiff_error from None
        with tifffile.TiffFile(io.BytesIO(bytes(memoryview(data).cast("B")))) as tif:
            image = np.asarray(tif.pages[0].asarray())
    if image.ndim == 3 and _tiff_planar_separate(data):
        image = np.moveaxis(image, 0, -1)  # both decoders return separate planes first
    return image


def _tiff_planar_separate(data: Any) -> bool:
    """Whether the first IFD of a TIFF says PlanarConfiguration = 2 (samples in separate planes)."""
    head = memoryview(data).cast("B")
    order = "<" if bytes(head[:2]) == b"II" else ">"
    big = int(np.frombuffer(head[2:4], order + "u2")[0]) == 43
    try:
        if big:
            offset = int(np.frombuffer(head[8:16], order + "u8")[0])
            count = int(np.frombuffer(head[offset : offset + 8], order + "u8")[0])
            start, size = offset + 8, 20
        else:
            offset = int(np.frombuffer(head[4:8], order + "u4")[0])
            count = int(np.frombuffer(head[offset : offset + 2], order + "u2")[0])
            start, size = offset + 2, 12
        for i in range(min(count, 4096)):
            entry = head[start + i * size : start + (i + 1) * size]
            if int(np.frombuffer(entry[:2], order + "u2")[0]) == 284:  # PlanarConfiguration, SHORT
                return (
                    int(np.frombuffer(entry[size - (8 if big else 4) :][:2], order + "u2")[0]) == 2
                )
    except (IndexError, ValueError):  # truncated IFD: the decoder has read it, so assume contiguous
        return False
    return False


# Per format: (dtypes it stores, sample counts it stores, lossless by default)
_ENCODE_LIMITS: Final[dict[str, tuple[tuple[str, ...], tuple[int, ...], bool]]] = {
    "png": (("uint8", "uint16"), (1, 2, 3, 4), True),
    "jpeg": (("uint8",), (1, 3), False),
    "tiff": (("*",), (1, 2, 3, 4), True),
    "webp": (("uint8",), (1, 2, 3, 4), True),
    "jpeg2k": (("uint8", "uint16", "int8", "int16"), (1, 2, 3, 4), True),
    "jpegxl": (("uint8", "uint16", "float16", "float32"), (1, 2, 3, 4), True),
}


def encode_image(
    image: np.ndarray, fmt: ImageFormat, *, level: int | None = None, lossless: bool | None = None
) -> bytes:
    """Encode a channel-last image as one file of format *fmt*.

    Parameters
    ----------
    image
        Shape ``(height, width)`` or ``(height, width, samples)`` with 1 to 4 samples.
    fmt
        Target format.
    level
        Compression level or quality, passed to the imagecodecs encoder as is.
    lossless
        None picks the format's default: lossless for every format except JPEG.
        True for JPEG writes lossless JPEG (``jpeg8_encode(lossless=True)``).

    Returns
    -------
    bytes
        The encoded file. WebP has no gray mode, so gray (+alpha) is written as
        RGB(A) with equal channels, which reads back into a gray chunk unchanged.

    Raises
    ------
    ImageCodecError
        If the format cannot hold this dtype or number of samples, or the encoder fails.
    """
    ic = _require(fmt)
    samples = 1 if image.ndim == 2 else image.shape[2]
    dtypes, counts, default_lossless = _ENCODE_LIMITS[fmt]
    if ("*" not in dtypes and image.dtype.name not in dtypes) or samples not in counts:
        raise ImageCodecError(
            f"{_TITLES[fmt]} cannot store a chunk of dtype {image.dtype} with {samples} "
            f"sample(s) (it stores {'/'.join(dtypes).replace('*', 'any dtype')} with "
            f"{'/'.join(map(str, counts))} samples); "
            "choose another format in the codec configuration"
        )
    exact = default_lossless if lossless is None else lossless
    image = np.ascontiguousarray(image[:, :, 0] if image.ndim == 3 and samples == 1 else image)
    try:
        if fmt == "png":
            out = ic.png_encode(image, level=level)
        elif fmt == "jpeg":
            out = ic.jpeg8_encode(image, level=level, lossless=True if exact else None)
        elif fmt == "tiff":
            photometric = "rgb" if samples >= 3 else "minisblack"
            extrasample = "unassalpha" if samples in (2, 4) else None
            out = ic.tiff_encode(
                image,
                level=level,
                compression="deflate",
                photometric=photometric,
                extrasample=extrasample,
            )
        elif fmt == "webp":
            if samples <= 2:  # no gray WebP: replicate gray into RGB, keep alpha
                gray = image if samples == 1 else image[:, :, 0]
                planes = [gray, gray, gray] + ([image[:, :, 1]] if samples == 2 else [])
                image = np.ascontiguousarray(np.stack(planes, axis=-1))
            out = ic.webp_encode(image, level=level, lossless=exact)
        elif fmt == "jpeg2k":
            out = ic.jpeg2k_encode(image, level=level, reversible=exact)
        else:
            out = ic.jpegxl_encode(image, level=level, lossless=exact)
    except Exception as e:
        raise ImageCodecError(
            f"cannot encode a chunk of shape {image.shape} and dtype {image.dtype} as "
            f"{_TITLES[fmt]}: {type(e).__name__}: {e}"
        ) from e
    return bytes(out)
