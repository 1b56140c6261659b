"""Decoded source chunks shared by assembled virtual chunks: an LRU bounded by bytes.

A misaligned virtual chunk needs parts of several source chunks, and its neighbours
need the other parts; without a cache each neighbour decodes them again.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import numpy as np

#: Default budget of :class:`DecodedChunkCache`, in bytes of decoded data.
DEFAULT_CACHE_BYTES = 64 * 2**20


class DecodedChunkCache:
    """Decoded chunks by key, least recently used first out, at most ``max_bytes`` in total.

    Concurrent :meth:`get` calls for one key on one event loop share a single load:
    the first starts it, the others wait for it. A load that fails is not cached;
    every caller waiting for it gets its exception. A chunk larger than the budget
    is shared by the calls waiting for it but not kept.

    Parameters
    ----------
    max_bytes
        The budget; 0 disables keeping chunks (concurrent loads are still shared).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"decoded chunk cache: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.nbytes = 0
        #: Calls answered from the cache or from a load already under way.
        self.hits = 0
        #: Loads started.
        self.misses = 0
        self._chunks: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._pending: dict[Hashable, asyncio.Task[np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._chunks)

    def __repr__(self) -> str:
        return f"DecodedChunkCache({len(self)} chunks, {self.nbytes}/{self.max_bytes} bytes)"

    def __getstate__(self) -> dict[str, Any]:
        return {"max_bytes": self.max_bytes}  # a copy starts empty (chunks, loads and lock stay here)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])  # type: ignore[misc]

    def clear(self) -> None:
        """Drop every kept chunk (loads under way finish and are kept)."""
        with self._lock:
            self._chunks.clear()
            self.nbytes = 0

    async def get(self, key: Hashable, load: Callable[[], Awaitable[np.ndarray]]) -> np.ndarray:
        """The chunk ``key``: kept, being loaded, or loaded now by awaiting ``load()``.

        The array returned is shared and read-only.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._chunks.get(key)
            if found is not None:
                self._chunks.move_to_end(key)
                self.hits += 1
                return found
            task = self._pending.get(key)
            if task is not None and task.get_loop() is loop:
                self.hits += 1
            else:
                task = loop.create_task(self._load(key, load))
                task.add_done_callback(_retrieve)
                self._pending[key] = task
                self.misses += 1
        # a caller cancelled while waiting must not cancel the load the others wait for
        return await asyncio.shield(task)

    async def _load(self, key: Hashable, load: Callable[[], Awaitable[np.ndarray]]) -> np.ndarray:
        try:
            data = np.asarray(await load())
            data.setflags(write=False)
            with self._lock:
                if data.nbytes <= self.max_bytes and key not in self._chunks:
                    self._chunks[key] = data
                    self.nbytes += data.nbytes
                    while self.nbytes > self.max_bytes:
                        _, old = self._chunks.popitem(last=False)
                        self.nbytes -= old.nbytes
            return data
        finally:
            with self._lock:
                if self._pending.get(key) is asyncio.current_task():
                    del self._pending[key]


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a load's exception as retrieved even if every waiter was cancelled."""
    if not task.cancelled():
        task.exception()


#: Per source dimension: ``(chunk index, index inside the chunk, output slice or None, partial)``.
_Part = tuple[int, int | slice, slice | None, bool]


def _dim_parts(item: int | slice, n: int, c: int, reach: tuple[int, int] | None) -> list[_Part]:
    """How selection ``item`` of a dimension of length ``n`` and chunk ``c`` falls on its chunks.

    A part is *partial* when its chunk holds indices that the read does not take but the
    layer's map can reach (``reach``; None: anywhere), so another read may want them.
    """
    if isinstance(item, int):
        k = item // c
        lo, hi = k * c, min((k + 1) * c, n)
        rlo, rhi = (lo, hi) if reach is None else (max(lo, reach[0]), min(hi, reach[1]))
        return [(k, item - lo, None, rlo < item or rhi > item + 1)]
    idx = range(*item.indices(n))
    if not idx:
        return []
    step = idx.step
    parts: list[_Part] = []
    for k in range(idx[0] // c, idx[-1] // c + 1):
        lo, hi = k * c, min((k + 1) * c, n)
        t0 = max(0, -((idx.start - lo) // step))
        t1 = min(len(idx), -((idx.start - hi) // step))
        if t0 >= t1:
            continue
        first, last = idx[t0], idx[t1 - 1]
        rlo, rhi = (lo, hi) if reach is None else (max(lo, reach[0]), min(hi, reach[1]))
        parts.append((k, slice(first - lo, last - lo + 1, step), slice(t0, t1), rlo < first or rhi > last + 1))
    return parts


async def read_cached(
    src: Any,
    selection: tuple[int | slice, ...],
    reach: tuple[tuple[int, int] | None, ...],
    cache: DecodedChunkCache,
) -> np.ndarray:
    """Read ``selection`` of zarr source ``src``, taking partially read chunks from ``cache``.

    Chunks the selection reads entirely are decoded directly (no other read of the
    layer needs them); chunks it reads in part are decoded once, kept in ``cache``, and
    shared with the reads of the neighbouring virtual chunks. ``reach`` bounds, per
    source dimension, what the layer can read at all (None: anywhere).
    """
    arr = await src.open_async()
    shape, chunks = tuple(arr.shape), tuple(arr.chunks)
    per_dim = [_dim_parts(item, n, c, r) for item, n, c, r in zip(selection, shape, chunks, reach)]
    out_shape = tuple(len(range(*s.indices(n))) for s, n in zip(selection, shape) if isinstance(s, slice))
    if not any(p[3] for parts in per_dim for p in parts) or any(not parts for parts in per_dim):
        return await src.read(selection)
    out = np.empty(out_shape, np.dtype(arr.dtype))

    async def fill(combo: tuple[_Part, ...]) -> None:
        coords = tuple(p[0] for p in combo)
        inner = tuple(p[1] for p in combo)
        where = tuple(p[2] for p in combo if p[2] is not None)
        if any(p[3] for p in combo):
            box = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(coords, chunks, shape))
            data = await cache.get((src, coords), lambda: src.read(box))
            out[where] = data[inner]
        else:
            sub = tuple(slice(k * c + s.start, k * c + s.stop, s.step) if isinstance(s, slice) else k * c + s
                        for (k, s), c in zip(((p[0], p[1]) for p in combo), chunks))
            out[where] = await src.read(sub)

    await asyncio.gather(*(fill(combo) for combo in itertools.product(*per_dim)))
    return out
