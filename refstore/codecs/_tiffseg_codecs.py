"""The ``refstore.tiff_segment`` codec: one TIFF strip or tile per chunk, for zarr 3 and numcodecs.

Read-only: the chunks are the segments of an existing TIFF file, referenced by a
manifest. Both codecs register through entry points, so a TIFF manifest of any
compression opens with refstore installed and nothing imported.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_contiguous_ndarray, ndarray_copy
from zarr.abc.codec import ArrayBytesCodec

from refstore.codecs._tiffseg import TiffSegment, decode_segment
from refstore.codecs._zarr3 import native_dtype
from refstore.errors import ImageCodecError

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

__all__ = ["TIFF_SEGMENT", "TiffSegmentCodec", "TiffSegmentNumcodec"]

TIFF_SEGMENT = "refstore.tiff_segment"
"""The codec's zarr 3 name and numcodecs id."""

_READ_ONLY = (
    f"codec {TIFF_SEGMENT!r} reads the strips and tiles of existing TIFF files and cannot write; "
    "write the array with another codec (for example refstore.tiff or zarr's zstd)"
)


@dataclass(frozen=True)
class TiffSegmentCodec(ArrayBytesCodec):
    """Zarr 3 array-to-bytes codec decoding each chunk as one TIFF segment (read-only).

    Parameters
    ----------
    **config
        The `TiffSegment` fields: ``axes``, ``segment``, ``compression``,
        ``predictor``, ``byteorder``, ``bitorder``, the ``jpeg_*`` keys and
        ``bitspersample``.
    """

    codec_name: ClassVar[str] = TIFF_SEGMENT
    is_fixed_size = False

    segment: TiffSegment

    def __init__(self, **config: Any) -> None:
        object.__setattr__(self, "segment", TiffSegment.from_config(config, f"codec {TIFF_SEGMENT!r}"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build the codec from ``{"name": "refstore.tiff_segment", "configuration": {...}}``."""
        if data.get("name") != cls.codec_name:
            raise ImageCodecError(f"expected codec name {cls.codec_name!r}, got {data.get('name')!r}")
        config = data.get("configuration")
        if not isinstance(config, dict):
            raise ImageCodecError(f"codec {cls.codec_name!r}: configuration must be an object")
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {"name": self.codec_name, "configuration": self.segment.to_config()}

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        """Decode one segment into a chunk of exactly ``chunk_spec.shape`` and dtype."""
        chunk = decode_segment(
            chunk_bytes.as_numpy_array(),
            self.segment,
            tuple(chunk_spec.shape),
            native_dtype(chunk_spec.dtype),
            chunk_spec.fill_value,
        )
        return chunk_spec.prototype.nd_buffer.from_numpy_array(chunk)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        raise ImageCodecError(_READ_ONLY)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        raise ImageCodecError(_READ_ONLY)

    def compute_encoded_size(self, _input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("TIFF segments have no fixed encoded size")


class TiffSegmentNumcodec(Codec):
    """numcodecs codec decoding each chunk as one TIFF segment (zarr format 2, read-only).

    Parameters
    ----------
    chunk_shape, dtype, fill_value
        The array's ``chunks``, ``dtype`` and ``fill_value`` (numcodecs does not
        tell its codecs). ``chunk_shape`` and ``dtype`` are required.
    **config
        The `TiffSegment` fields, as for `TiffSegmentCodec`.
    """

    codec_id: ClassVar[str] = TIFF_SEGMENT

    def __init__(
        self,
        *,
        chunk_shape: list[int] | tuple[int, ...] | None = None,
        dtype: str | None = None,
        fill_value: int | float | str | None = None,
        **config: Any,
    ) -> None:
        if chunk_shape is None or dtype is None:
            raise ImageCodecError(f"codec {TIFF_SEGMENT!r} needs chunk_shape and dtype (the array's chunks and dtype)")
        self.segment = TiffSegment.from_config(config, f"codec {TIFF_SEGMENT!r}")
        self.chunk_shape = tuple(int(n) for n in chunk_shape)
        self.dtype = np.dtype(dtype)
        self.fill_value = float(fill_value) if isinstance(fill_value, str) else fill_value  # "NaN", "Infinity"

    def get_config(self) -> dict[str, Any]:
        """Return ``{"id": "refstore.tiff_segment", ...}``."""
        config: dict[str, Any] = {"id": self.codec_id, **self.segment.to_config()}
        config.update(chunk_shape=list(self.chunk_shape), dtype=self.dtype.str)
        if self.fill_value is not None:
            nonfinite = isinstance(self.fill_value, float) and not np.isfinite(self.fill_value)
            config["fill_value"] = str(self.fill_value).replace("nan", "NaN").replace("inf", "Infinity") if nonfinite \
                else self.fill_value
        return config

    def encode(self, buf: Any) -> bytes:
        """Refused: the codec is read-only."""
        raise ImageCodecError(_READ_ONLY)

    def decode(self, buf: Any, out: Any = None) -> np.ndarray:
        """Decode one segment into a chunk of ``chunk_shape`` and ``dtype`` (into *out* if given)."""
        chunk = decode_segment(
            ensure_contiguous_ndarray(buf), self.segment, self.chunk_shape, self.dtype, self.fill_value
        )
        return ndarray_copy(chunk, out) if out is not None else chunk
