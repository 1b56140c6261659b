"""TIFF segments (strips and tiles) as chunks: the configuration, and decoding one into a chunk.

A TIFF stores its pixels in segments, each compressed on its own (none, deflate,
LZW, JPEG with shared tables, JPEG 2000, JPEG XL, WebP, zstd, PackBits, ...),
optionally with a predictor. `TiffSegment` records how one array's segments were
written; `decode_segment` turns the bytes of one segment into one chunk, as
tifffile would read them. See ``spec/image-codecs.md`` ("TIFF segments").
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Literal

import numpy as np

from refstore.errors import ImageCodecError

__all__ = ["CCITT_FAX4", "JPEG_COMPRESSIONS", "SEGMENT_AXES", "TiffSegment", "decode_segment"]

JPEG_COMPRESSIONS: Final[frozenset[int]] = frozenset({7, 33007, 34892})
"""TIFF compression codes of (new-style) JPEG, decoded with the JPEGTables and colour spaces."""

CCITT_FAX4: Final[int] = 4
"""TIFF compression code of CCITT Group 4 fax (bilevel images)."""

SEGMENT_AXES: Final[str] = "zyxs"
"""Names of a decoded segment's axes: depth, length (rows), width, samples per pixel."""

_PREDICTOR_FLOAT: Final[frozenset[int]] = frozenset({3, 34894, 34895})


@dataclass(frozen=True)
class TiffSegment:
    """How the segments of one TIFF image were written, and where their axes go in a chunk.

    Attributes
    ----------
    axes
        One letter per chunk axis: ``z``, ``y``, ``x`` or ``s`` (samples) place that
        axis of the decoded segment; ``-`` is an axis of length 1 that the segment
        does not have (a page or a separate sample plane). ``"yxs"`` is a chunky
        RGB tile as it is stored, ``"syx"`` the same tile channel-first.
    segment
        The full segment shape ``(depth, length, width, samples)``: the tile, or
        ``rowsperstrip`` rows of the image width. A last strip may be shorter.
    compression, predictor
        TIFF tag values (1 is none).
    byteorder
        ``"<"`` or ``">"``: the TIFF file's byte order, for uncompressed samples.
    bitorder
        True for FillOrder 2 (bits of each byte reversed).
    jpeg_tables, jpeg_header
        Base64 of the JPEGTables tag (abbreviated JPEG segments), and of a header.
    jpeg_colorspace, jpeg_outcolorspace
        What the JPEG segments hold and what to decode them to (as tifffile's
        ``jpeg_decode_colorspace`` says: YCbCr is decoded to RGB).
    bitspersample
        For JPEG: 8 or 12. For other compressions, set only for packed samples
        (1 to 63 bits other than 8, 16, 32), which are unpacked row by row.
    """

    axes: str
    segment: tuple[int, int, int, int]
    compression: int = 1
    predictor: int = 1
    byteorder: str = "<"
    bitorder: bool = False
    jpeg_tables: str | None = None
    jpeg_header: str | None = None
    jpeg_colorspace: int | None = None
    jpeg_outcolorspace: int | str | None = None
    bitspersample: int | None = None
    _tables: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.axes, str) or any(a not in SEGMENT_AXES + "-" for a in self.axes):
            raise ImageCodecError(f"TIFF segment axes={self.axes!r}: use letters of {SEGMENT_AXES!r} and '-'")
        placed = self.axes.replace("-", "")
        if len(set(placed)) != len(placed):
            raise ImageCodecError(f"TIFF segment axes={self.axes!r} names an axis twice")
        try:
            segment = tuple(int(n) for n in self.segment)
        except (TypeError, ValueError) as exc:
            raise ImageCodecError(f"TIFF segment shape {self.segment!r} is not 4 integers") from exc
        if len(segment) != 4 or min(segment) < 1:
            raise ImageCodecError(f"TIFF segment shape {self.segment!r}: need (depth, length, width, samples) >= 1")
        object.__setattr__(self, "segment", segment)
        for name in SEGMENT_AXES:
            if name not in placed and segment[SEGMENT_AXES.index(name)] != 1:
                raise ImageCodecError(
                    f"TIFF segment axes={self.axes!r} leave out {name!r}, whose segment length is "
                    f"{segment[SEGMENT_AXES.index(name)]}; every axis longer than 1 needs a place"
                )
        if self.byteorder not in ("<", ">"):
            raise ImageCodecError(f"TIFF segment byteorder={self.byteorder!r}: use '<' or '>'")
        if self.jpeg_tables is not None:
            object.__setattr__(self, "_tables", base64.b64decode(self.jpeg_tables))

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str) -> TiffSegment:
        """Build from a codec configuration, refusing unknown keys (naming *where*)."""
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ImageCodecError(f"{where}: unknown configuration key(s) {unknown}; known keys are {sorted(known)}")
        missing = sorted({"axes", "segment"} - set(config))
        if missing:
            raise ImageCodecError(f"{where}: configuration lacks {missing}")
        return cls(**config)

    def to_config(self) -> dict[str, Any]:
        """Return the configuration, leaving out keys at their defaults."""
        defaults = {f.name: f.default for f in fields(self) if f.init}
        out = {k: v for k, v in asdict(self).items() if k in defaults and (k in ("axes", "segment") or v != defaults[k])}
        out["segment"] = list(self.segment)
        return out


def _decompressed(data: Any, seg: TiffSegment, dtype: np.dtype) -> np.ndarray:
    """Return the samples of one segment as ``(depth, rows, width, samples)``; rows may be short."""
    import imagecodecs
    import tifffile

    depth, length, width, samples = seg.segment
    compression = seg.compression
    if compression in JPEG_COMPRESSIONS:
        # imagecodecs takes bitspersample (12-bit JPEG) but its newer stubs do not declare it
        precision: dict[str, Any] = {"bitspersample": seg.bitspersample}
        image = imagecodecs.jpeg_decode(
            data,
            **precision,
            tables=seg._tables,
            header=None if seg.jpeg_header is None else base64.b64decode(seg.jpeg_header),
            colorspace=seg.jpeg_colorspace,
            outcolorspace=seg.jpeg_outcolorspace,
            shape=(length, width),
        )
        return _as_segment(np.asarray(image), seg)
    if compression == CCITT_FAX4:  # bilevel rows; a short last strip decodes to extra rows outside the image
        image = imagecodecs.ccittfax4_decode(imagecodecs.bitorder_decode(data) if seg.bitorder else data, length, width)
        return _as_segment(np.asarray(image).astype(dtype.newbyteorder("=")), seg)
    if compression in tifffile.TIFF.IMAGE_COMPRESSIONS:
        if compression == 50001 and samples == 4:  # WebP drops an alpha that is opaque everywhere
            image = imagecodecs.webp_decode(data, hasalpha=True)
        else:
            image = tifffile.TIFF.DECOMPRESSORS[compression](data)
        return _as_segment(np.asarray(image), seg)
    if seg.bitorder:
        data = imagecodecs.bitorder_decode(data)
    size = depth * length * width * samples
    if compression != 1:
        data = tifffile.TIFF.DECOMPRESSORS[compression](data, out=size * dtype.itemsize)
    order: Literal["<", ">"] = "<" if seg.byteorder == "<" else ">"
    bits = seg.bitspersample
    if bits is not None and bits not in (8, 16, 32, 64):  # packed integers, bilevel: each row starts on a byte
        unpacked = "u1" if dtype.kind == "b" else dtype.char
        values = imagecodecs.packints_decode(data, np.dtype(unpacked).newbyteorder(order), bits, runlen=width * samples)
        whole = values.size - values.size % (depth * width * samples)
        return np.asarray(values[: min(whole, size)]).reshape(depth, -1, width, samples).astype(dtype.newbyteorder("="))
    raw = np.dtype(dtype.char) if seg.predictor in _PREDICTOR_FLOAT else np.dtype(dtype.char).newbyteorder(order)
    buffer = memoryview(data).cast("B")
    usable = min(len(buffer) // raw.itemsize, size)
    if usable % (depth * width * samples):
        raise ImageCodecError(
            f"TIFF segment of {len(buffer)} bytes (compression {compression}) holds {usable} samples, "
            f"not whole rows of {width} x {samples} {dtype} samples of a {seg.segment} segment"
        )
    rows = np.frombuffer(buffer, raw, count=usable).reshape(depth, -1, width, samples)
    out = rows.astype(dtype.newbyteorder("="), copy=True)
    if seg.predictor != 1:
        out = tifffile.TIFF.UNPREDICTORS[seg.predictor](out, axis=-2, out=out)
    return np.asarray(out)


def _as_segment(image: np.ndarray, seg: TiffSegment) -> np.ndarray:
    """Return an image codec's ``(h, w)`` or ``(h, w, s)`` result as ``(depth, h, w, s)``."""
    depth = seg.segment[0]
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    if image.ndim != 3 or image.shape[0] % depth:
        raise ImageCodecError(f"TIFF segment decoded to shape {image.shape}, not an image of a {seg.segment} segment")
    return image.reshape(depth, image.shape[0] // depth, image.shape[1], image.shape[2])


def decode_segment(
    data: Any, seg: TiffSegment, shape: tuple[int, ...], dtype: np.dtype, fill_value: object
) -> np.ndarray:
    """Decode the bytes of one TIFF segment into a chunk of *shape* and *dtype*.

    The segment is decoded as tifffile decodes it, its axes are placed as
    ``seg.axes`` says, and a short segment (the last strip, a JPEG edge tile) is
    padded at the end of each axis with *fill_value* (None means 0).

    Raises
    ------
    ImageCodecError
        If the bytes do not decode (the codec's error is chained), decode to more
        samples than the chunk holds, to another number of samples per pixel, or
        to a dtype the chunk's cannot hold without loss.
    """
    dtype = np.dtype(dtype)
    if len(shape) != len(seg.axes):
        raise ImageCodecError(f"chunk shape {shape} has {len(shape)} axes but TIFF segment axes are {seg.axes!r}")
    try:
        decoded = _decompressed(bytes(data) if not isinstance(data, bytes | np.ndarray) else data, seg, dtype)
    except ImageCodecError:
        raise
    except Exception as exc:  # imagecodecs and tifffile raise many unrelated types
        raise ImageCodecError(
            f"TIFF segment of {len(memoryview(data).cast('B'))} bytes (compression {seg.compression}, "
            f"predictor {seg.predictor}) does not decode: {exc}"
        ) from exc
    if decoded.shape[3] != seg.segment[3]:
        raise ImageCodecError(
            f"TIFF segment decoded to {decoded.shape[3]} samples per pixel; the image has {seg.segment[3]}"
        )
    if decoded.dtype != dtype and not np.can_cast(decoded.dtype, dtype, casting="safe"):
        raise ImageCodecError(f"TIFF segment decoded to {decoded.dtype}, which the chunk dtype {dtype} cannot hold")
    placed = [SEGMENT_AXES.index(a) for a in seg.axes if a != "-"]
    rest = [i for i in range(4) if i not in placed]
    core = decoded.transpose(placed + rest).reshape([decoded.shape[i] for i in placed])
    view = [n for n, a in zip(shape, seg.axes, strict=True) if a != "-"]
    if any(n != 1 for n, a in zip(shape, seg.axes, strict=True) if a == "-") or any(
        c > v for c, v in zip(core.shape, view, strict=True)
    ):
        raise ImageCodecError(
            f"TIFF segment decoded to {tuple(decoded.shape)} (depth, rows, width, samples), which does not fit "
            f"the chunk shape {shape} with axes {seg.axes!r}"
        )
    if list(core.shape) == view:
        return np.ascontiguousarray(core, dtype=dtype).reshape(shape)
    out = np.full(view, 0 if fill_value is None else fill_value, dtype=dtype)
    out[tuple(slice(0, n) for n in core.shape)] = core
    return out.reshape(shape)
