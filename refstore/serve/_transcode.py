"""Transcoding: decode a chunk with its source's codecs (zarr's own pipeline, so refstore's image
codecs and ``imagecodecs_*`` too) and re-encode it with a codec every zarr client reads; with a
bounded LRU of the results, concurrent asks for one chunk sharing one transcode."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from refstore.serve._metadata import Compressor, ServedArray

__all__ = ["ChunkCache", "transcode_chunk"]


def _numcodec(compressor: Compressor, itemsize: int) -> Any:
    from numcodecs import get_codec

    return get_codec(compressor.v2(itemsize))


async def decode_chunk(array: ServedArray, coords: tuple[int, ...], data: bytes) -> np.ndarray:
    """The values of chunk *coords* of *array* from its stored bytes *data*: the whole chunk,
    edge chunks padded with the fill value (zarr's codecs decide the rest).

    Raises
    ------
    Exception
        Whatever the source's codec raises for bytes it cannot decode.
    """
    from zarr.core.array import AsyncArray
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore, StorePath

    meta = array.source_meta
    store = MemoryStore({meta.encode_chunk_key(coords): default_buffer_prototype().buffer.from_bytes(data)})
    arr = AsyncArray(meta, StorePath(store))  # type: ignore[call-overload]
    box = tuple(slice(c * n, min((c + 1) * n, s)) for c, n, s in zip(coords, array.chunks, array.shape))
    values = np.asarray(await arr.getitem(box))
    if values.shape == array.chunks:
        return values
    full = np.full(array.chunks, 0 if array.fill is None else array.fill, dtype=array.dtype)
    full[tuple(slice(0, n) for n in values.shape)] = values
    return full


def encode_chunk(array: ServedArray, values: np.ndarray) -> bytes:
    """*values* (one whole chunk) as the served encoding stores it: C order, served dtype, compressor.

    gzip goes through imagecodecs (zlib-ng or libdeflate; 2-3x faster than Python's zlib
    here) when it is installed, else through numcodecs; either writes a standard gzip stream.
    """
    raw = np.asarray(values, dtype=array.dtype).tobytes(order="F" if array.order == "F" else "C")
    compressor = array.compressor
    if compressor is None:
        return raw
    if compressor.name == "gzip" and _fast_gzip is not None:
        return bytes(_fast_gzip(raw, level=int(compressor.config.get("level", 1))))
    return bytes(_numcodec(compressor, array.dtype.itemsize).encode(raw))


def _gzip_encoder() -> Any:
    try:
        import imagecodecs
    except ImportError:
        return None
    return imagecodecs.gzip_encode if getattr(getattr(imagecodecs, "GZIP", None), "available", False) else None


_fast_gzip = _gzip_encoder()


def zlib_to_gzip(data: bytes) -> bytes:
    """The zlib stream *data* as a gzip stream holding the same deflate data (no recompression).

    Raises
    ------
    ValueError
        If *data* is not one complete zlib stream without a preset dictionary.
    """
    if len(data) < 6 or data[0] & 0x0F != 8 or ((data[0] << 8) | data[1]) % 31 or data[1] & 0x20:
        raise ValueError("not a zlib stream")
    d = zlib.decompressobj()
    raw = d.decompress(data)
    if not d.eof or d.unused_data:
        raise ValueError("not one complete zlib stream")
    trailer = struct.pack("<II", zlib.crc32(raw), len(raw) & 0xFFFFFFFF)
    return _GZIP_HEADER + data[2:-4] + trailer


#: gzip's member header: deflate, no flags, mtime 0, no extra flags, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


async def transcode_chunk(array: ServedArray, coords: tuple[int, ...], data: bytes) -> bytes:
    """Chunk *coords* of *array* re-encoded from the source's stored bytes *data*."""
    if array.rewrap:
        try:
            return await asyncio.to_thread(zlib_to_gzip, data)
        except (ValueError, zlib.error):
            pass  # decoded and encoded below instead
    values = await decode_chunk(array, coords, data)
    return await asyncio.to_thread(encode_chunk, array, values)


class ChunkCache:
    """An LRU of transcoded chunks bounded by bytes; concurrent misses of one key share one computation.

    Parameters
    ----------
    max_bytes
        The budget (0 keeps nothing, but still shares concurrent computations).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Any, bytes] = OrderedDict()
        self._pending: dict[Any, asyncio.Future[bytes | None]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def peek(self, key: Any) -> bytes | None:
        """The cached value of *key* (counted as a hit and made the newest), or None: no await."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return value

    def put(self, key: Any, value: bytes | None) -> None:
        """Keep *value* as *key*'s, computed by the caller after a :meth:`peek` miss (counted as a miss)."""
        self.misses += 1
        if value is not None and key not in self._items:
            self._keep(key, value)

    def _keep(self, key: Any, value: bytes) -> None:
        if len(value) <= self.max_bytes:
            self._items[key] = value
            self.nbytes += len(value)
            while self.nbytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.nbytes -= len(old)

    async def get(self, key: Any, compute: Callable[[], Awaitable[bytes | None]]) -> bytes | None:
        """The cached value of *key*, else ``await compute()`` (kept if it fits; None is not kept)."""
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        pending = self._pending.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it, nobody is warned
            raise
        finally:
            self._pending.pop(key, None)
        future.set_result(value)
        if value is not None:
            self._keep(key, value)
        return value
