"""Fitting a decoded image into a chunk (layout, channels, dtype, edge padding), and back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

from refstore.codecs._formats import ImageCodecError

__all__ = [
    "LAYOUTS",
    "ChunkGeometry",
    "Layout",
    "chunk_to_image",
    "fit_image",
    "geometry",
    "parse_layout",
    "resolve_layout",
]

Layout = Literal["yx", "yxc", "cyx"]
"""Order of the image axes at the end of a chunk's shape."""

LAYOUTS: Final[tuple[Layout, ...]] = ("yx", "yxc", "cyx")

_CHANNEL_NAMES: Final[dict[int, str]] = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}


def parse_layout(value: object) -> Layout | None:
    """Return *value* as a layout name (None stays None), or raise naming the choices."""
    if value is None:
        return None
    for layout in LAYOUTS:
        if value == layout:
            return layout
    raise ImageCodecError(
        f"layout={value!r} is not a chunk layout; choose one of {LAYOUTS} "
        "(or leave it unset: 'yx' for 2-D chunks, 'yxc' otherwise)"
    )


def resolve_layout(layout: Layout | None, ndim: int) -> Layout:
    """Return the layout to use for chunks of *ndim* dimensions.

    An unset layout means ``"yx"`` (one gray image) for 2-D chunks and
    ``"yxc"`` (channel-last) for everything else.
    """
    if layout is not None:
        return layout
    return "yx" if ndim == 2 else "yxc"


@dataclass(frozen=True, slots=True)
class ChunkGeometry:
    """Where the image sits in a chunk shape.

    ``height``, ``width`` and ``channels`` are the chunk's image extent (channels
    is 1 for ``"yx"``); the chunk shape is ``(1,) * leading`` followed by the
    image axes in ``layout`` order.
    """

    layout: Layout
    height: int
    width: int
    channels: int
    leading: int


def geometry(shape: tuple[int, ...], layout: Layout | None) -> ChunkGeometry:
    """Read a chunk shape as an image of the given layout.

    Parameters
    ----------
    shape
        The chunk shape. Axes before the image axes must have length 1.
    layout
        ``"yx"``, ``"yxc"``, ``"cyx"``, or None for the default (see `resolve_layout`).

    Raises
    ------
    ImageCodecError
        If the shape has too few axes, a leading axis longer than 1, or a
        channel axis outside 1..4 (the message suggests the layout that fits).
    """
    lay = resolve_layout(layout, len(shape))
    n = 2 if lay == "yx" else 3
    if len(shape) < n or any(d != 1 for d in shape[:-n]):
        raise ImageCodecError(
            f"chunk shape {shape} does not fit layout {lay!r}: it needs {n} image axes "
            f"({', '.join(lay)}) at the end, and every axis before them must have length 1"
        )
    core = shape[-n:]
    if lay == "yx":
        height, width, channels = core[0], core[1], 1
    elif lay == "yxc":
        height, width, channels = core
    else:
        channels, height, width = core
    if not 1 <= channels <= 4:
        raise ImageCodecError(
            f"chunk shape {shape} with layout {lay!r} has {channels} channels, but image tiles "
            "have 1 to 4 (gray, gray+alpha, RGB, RGBA); set layout 'cyx' for channel-first "
            "chunks or 'yx' for single-channel ones"
        )
    return ChunkGeometry(lay, height, width, channels, len(shape) - n)


def _opaque(dtype: np.dtype) -> int | float | bool:
    """Return the fully opaque alpha value of *dtype*: its maximum, 1.0 for floats."""
    if dtype.kind == "b":
        return True
    if dtype.kind in "iu":
        return int(np.iinfo(dtype).max)
    return 1.0


def _describe(samples: int) -> str:
    return f"{samples}-channel ({_CHANNEL_NAMES.get(samples, '?')})"


def _convert_channels(tile: np.ndarray, channels: int, chunk_shape: tuple[int, ...]) -> np.ndarray:
    """Convert a ``(h, w, s)`` tile to *channels* samples where no value is lost.

    Colour: gray -> RGB replicates; RGB -> gray only if R == G == B everywhere.
    Alpha: a missing alpha is added as opaque (the tile dtype's maximum); an alpha
    is dropped only if it is opaque everywhere.
    """
    samples = tile.shape[2]
    if samples == channels:
        return tile
    has_alpha, want_alpha = samples in (2, 4), channels in (2, 4)
    color = tile[:, :, : samples - 1] if has_alpha else tile
    want_color = channels - 1 if want_alpha else channels
    refusal = (
        f"a {_describe(samples)} {tile.dtype} tile of shape {tile.shape[:2]} cannot be "
        f"stored in a {_describe(channels)} chunk of shape {chunk_shape} without losing data: "
    )
    if color.shape[2] == 1 and want_color == 3:
        color = np.repeat(color, 3, axis=2)
    elif color.shape[2] == 3 and want_color == 1:
        if not (
            np.array_equal(color[:, :, 0], color[:, :, 1])
            and np.array_equal(color[:, :, 0], color[:, :, 2])
        ):
            raise ImageCodecError(
                refusal + "its red, green and blue differ; give the array "
                f"{3 + want_alpha} channels"
            )
        color = color[:, :, :1]
    opaque = _opaque(tile.dtype)
    parts = [color]
    if want_alpha:
        if has_alpha:
            parts.append(tile[:, :, -1:])
        else:
            parts.append(np.full((*tile.shape[:2], 1), opaque, dtype=tile.dtype))
    elif has_alpha and not np.all(tile[:, :, -1] == opaque):
        raise ImageCodecError(
            refusal + f"its alpha channel is not opaque ({opaque}) everywhere; give the array "
            f"{want_color + 1} channels"
        )
    return np.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]


def fit_image(
    tile: np.ndarray,
    shape: tuple[int, ...],
    dtype: np.dtype,
    fill_value: object,
    layout: Layout | None,
) -> np.ndarray:
    """Place a decoded image in a new chunk array.

    Parameters
    ----------
    tile
        Decoded image, ``(h, w)`` or ``(h, w, s)`` channel-last with 1 to 4 samples.
    shape, dtype
        The chunk's shape and dtype.
    fill_value
        Value of the chunk outside the tile (edge tiles); None means 0.
    layout
        The chunk layout (see `geometry`).

    Returns
    -------
    numpy.ndarray
        A C-contiguous array of exactly *shape* and *dtype*. A tile smaller than
        the chunk is anchored top-left (at y = 0, x = 0) and the rest is
        *fill_value*; channels and dtype are converted only where no value changes.

    Raises
    ------
    ImageCodecError
        If the tile is larger than the chunk in height or width, its dtype holds
        values the chunk dtype cannot (e.g. uint16 into uint8), or its channels
        cannot be converted losslessly (RGB with differing channels into gray,
        non-opaque alpha into a chunk without alpha).
    """
    geo = geometry(shape, layout)
    dtype = np.dtype(dtype)
    if tile.ndim == 2:
        tile = tile[:, :, np.newaxis]
    height, width = tile.shape[:2]
    if height > geo.height or width > geo.width:
        raise ImageCodecError(
            f"image tile of shape {tile.shape} (height {height}, width {width}) is larger than "
            f"the chunk shape {shape} (layout {geo.layout!r}: height {geo.height}, width "
            f"{geo.width}); a tile must fit in its chunk: edge tiles may be smaller and are "
            "padded, but tiles are never cropped"
        )
    if tile.dtype != dtype and not np.can_cast(tile.dtype, dtype, casting="safe"):
        raise ImageCodecError(
            f"image tile of dtype {tile.dtype} cannot be stored in a chunk of dtype {dtype} "
            f"(chunk shape {shape}) without losing values; declare the array as {tile.dtype} "
            "or wider"
        )
    tile = _convert_channels(tile, geo.channels, shape)
    if geo.layout == "cyx":
        tile = tile.transpose(2, 0, 1)
    elif geo.layout == "yx":
        tile = tile[:, :, 0]
    if (height, width) == (geo.height, geo.width):
        return np.ascontiguousarray(tile, dtype=dtype).reshape(shape)
    out = np.full(shape[geo.leading :], 0 if fill_value is None else fill_value, dtype=dtype)
    if geo.layout == "cyx":
        out[:, :height, :width] = tile
    else:
        out[:height, :width, ...] = tile
    return out.reshape(shape)


def chunk_to_image(chunk: np.ndarray, layout: Layout | None) -> np.ndarray:
    """Return a chunk as a channel-last image for encoding.

    Parameters
    ----------
    chunk
        The whole chunk (zarr passes edge chunks full size, padded with the fill value).
    layout
        The chunk layout (see `geometry`).

    Returns
    -------
    numpy.ndarray
        ``(height, width)`` for one channel, else ``(height, width, channels)``;
        C-contiguous.

    Raises
    ------
    ImageCodecError
        If the chunk shape does not fit the layout.
    """
    geo = geometry(tuple(chunk.shape), layout)
    image = chunk.reshape(chunk.shape[geo.leading :])
    if geo.layout == "cyx":
        image = image.transpose(1, 2, 0)
    if image.ndim == 3 and geo.channels == 1:
        image = image[:, :, 0]
    return np.ascontiguousarray(image)
