"""Shared pieces of the builders: zarr 3 metadata documents, image probing, axis order."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from refstore._progress import progress as progress  # re-exported: the builders import it from here

#: The array layouts refstore's image codec knows, by channel count (None: gray, no c axis).
CHANNEL_LAST = "yxc"
CHANNEL_FIRST = "cyx"


@dataclass(frozen=True)
class ImageInfo:
    """What a builder needs to know of one image file.

    Attributes
    ----------
    height, width
        Pixel size.
    channels
        Samples per pixel (1 to 4).
    dtype
        The decoded dtype.
    """

    height: int
    width: int
    channels: int
    dtype: np.dtype


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def probe_image(data: bytes, name: str) -> ImageInfo:
    """Return the size, channel count and dtype of the image file *data*.

    PNG headers are parsed without decoding (a palette PNG counts as RGB, or RGBA
    when it has a transparency chunk); other formats are decoded with imagecodecs.

    Raises
    ------
    ValueError
        Naming *name*, if the bytes are not an image imagecodecs can read.
    """
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
        channels = _PNG_CHANNELS.get(colour)
        if channels is not None:
            if colour == 3:
                channels = 4 if b"tRNS" in data[: data.find(b"IDAT")] else 3
                depth = 8
            return ImageInfo(height, width, channels, np.dtype("u1" if depth <= 8 else ">u2").newbyteorder("="))
    import imagecodecs

    try:
        image = imagecodecs.imread(data)
    except Exception as exc:  # imagecodecs raises many unrelated types
        raise ValueError(f"{name}: not an image imagecodecs can decode ({exc})") from exc
    if image.ndim == 2:
        return ImageInfo(image.shape[0], image.shape[1], 1, image.dtype)
    if image.ndim == 3 and 1 <= image.shape[2] <= 4:
        return ImageInfo(image.shape[0], image.shape[1], image.shape[2], image.dtype)
    raise ValueError(f"{name}: decoded shape {image.shape} is not a 2-D image with 1-4 channels")


def image_axes(channels: int, channel_first: bool) -> tuple[list[str], str]:
    """Return the image axis names and the codec layout for *channels* samples per pixel."""
    if channels == 1:
        return ["y", "x"], "yx"
    if channel_first:
        return ["c", "y", "x"], CHANNEL_FIRST
    return ["y", "x", "c"], CHANNEL_LAST


def pyramid_channel_last(channel_last: bool, channel_first: bool | None) -> bool:
    """Return whether a pyramid builder puts RGB(A) samples last.

    Pyramids are OME-NGFF ``(c, y, x)`` unless *channel_last*; *channel_first* is the
    older keyword, accepted when it agrees (``channel_first=False`` means channel-last).

    Raises
    ------
    ValueError
        If both are set and contradict each other.
    """
    if channel_first is None:
        return channel_last
    if channel_first and channel_last:
        raise ValueError("channel_first=True and channel_last=True contradict each other")
    return channel_last or not channel_first


def image_shape(height: int, width: int, channels: int, layout: str) -> list[int]:
    """Return the image part of an array shape in *layout* order."""
    if layout == "yx":
        return [height, width]
    if layout == CHANNEL_FIRST:
        return [channels, height, width]
    return [height, width, channels]


def array_metadata(
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: np.dtype,
    layout: str,
    dimension_names: Sequence[str],
    attributes: dict[str, Any] | None = None,
    fill_value: int | float = 0,
    raw: bool = False,
) -> bytes:
    """Return the ``zarr.json`` of a zarr 3 array whose chunks are image files.

    The serializer is the ``refstore.image`` codec with *layout*, and there are no
    compressors, so each chunk's bytes are exactly one image file. With *raw*, the
    serializer is the plain little-endian ``bytes`` codec instead (for virtual arrays,
    whose chunks refstore produces). Chunk keys use the default encoding (``c/0/1/2``).
    """
    codec: dict[str, Any] = {"name": "refstore.image", "configuration": {"layout": layout}}
    if raw:
        codec = {"name": "bytes", "configuration": {"endian": "little"}}
    doc = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [int(n) for n in shape],
        "data_type": np.dtype(dtype).name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [int(n) for n in chunks]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill_value,
        "codecs": [codec],
        "attributes": attributes or {},
        "dimension_names": list(dimension_names),
    }
    return json.dumps(doc).encode()


def group_metadata(attributes: dict[str, Any] | None = None) -> bytes:
    """Return the ``zarr.json`` of a zarr 3 group with *attributes*."""
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes or {}}).encode()


def chunk_key(array: str, index: Sequence[int]) -> str:
    """Return the zarr 3 default chunk key of chunk *index* in *array* (``"" `` for the root)."""
    key = "c/" + "/".join(str(int(i)) for i in index)
    return f"{array}/{key}" if array else key


def common_dtype(dtypes: Iterable[np.dtype]) -> np.dtype:
    """Return the smallest dtype every one of *dtypes* widens to without loss."""
    return np.result_type(*dtypes)
