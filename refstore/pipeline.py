"""``ThreadedCodecPipeline``: zarr reads that fetch and decode each chunk in a worker thread.

zarr's default ``BatchedCodecPipeline`` runs one coroutine per chunk on its
single event-loop thread; for small, cheap chunks (image tiles) that thread,
not decoding, sets the pace. Opt in with::

    zarr.config.set({"codec_pipeline.path": "refstore.pipeline.ThreadedCodecPipeline"})

* On zarr versions that ship ``FusedCodecPipeline`` (3.4), this class *is*
  that pipeline under a name that works on every zarr version.
* On older zarr (3.1), it is ``BatchedCodecPipeline`` with a threaded read
  path: when the store has synchronous reads (``ReferenceStore`` over local
  files, see ``ReferenceStore._supports_sync_io``) and every codec decodes
  synchronously, each chunk's read, decode and copy into the output run as one
  task in a thread pool of ``codec_pipeline.max_workers`` threads (default: the
  number of CPUs). Anything else (other stores, remote references, sharding,
  codecs without a synchronous decode, and all writes) takes the batched path
  unchanged.

The class is registered with zarr through the ``zarr.codec_pipeline`` entry
point, so the configuration above needs no import.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from zarr.core import codec_pipeline as _zarr_pipeline
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.config import config

if TYPE_CHECKING:
    from collections.abc import Iterable

    from zarr.abc.store import ByteGetter
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer
    from zarr.core.indexing import SelectorTuple

    # zarr's per-chunk read request: byte getter, chunk spec, chunk selection, output
    # selection, whether the chunk is complete
    ReadItem = tuple[ByteGetter, ArraySpec, SelectorTuple, SelectorTuple, bool]

__all__ = ["ThreadedCodecPipeline"]


_POOL: tuple[ThreadPoolExecutor, int] | None = None  # the pool and its size
_POOL_LOCK = threading.Lock()


def _workers() -> int:
    """``codec_pipeline.max_workers`` if set to a positive integer, else the number of CPUs."""
    try:
        value = int(config.get("codec_pipeline.max_workers", default=None) or 0)
    except (TypeError, ValueError):
        value = 0
    return value if value > 0 else (os.cpu_count() or 1)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The shared decode pool, made again larger if more workers are asked for."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[1] < workers:
            # an older, smaller pool is left to finish what it runs and be collected
            _POOL = (ThreadPoolExecutor(workers, thread_name_prefix="refstore-decode"), workers)
        return _POOL[0]


def _reads_sync(byte_getter: object) -> bool:
    """Whether *byte_getter* is a zarr ``StorePath`` whose store offers cheap synchronous reads.

    zarr's convention (``zarr.abc.store._store_supports_sync_io``): the three
    ``*_sync`` methods, and a ``_supports_sync_io`` attribute that is not False.
    """
    store = getattr(byte_getter, "store", None)
    return (
        isinstance(getattr(byte_getter, "path", None), str)
        and all(callable(getattr(store, m, None)) for m in ("get_sync", "set_sync", "delete_sync"))
        and bool(getattr(store, "_supports_sync_io", True))
    )


class _ThreadedRead(BatchedCodecPipeline):
    """``BatchedCodecPipeline`` whose reads run in threads where store and codecs allow it."""

    def _decodes_sync(self) -> bool:
        codecs = (*self.array_array_codecs, self.array_bytes_codec, *self.bytes_bytes_codecs)
        return not self.supports_partial_decode and all(callable(getattr(c, "_decode_sync", None)) for c in codecs)

    async def read(  # type: ignore[override]  # zarr 3.1's signature; zarr >= 3.4 uses Fused instead
        self,
        batch_info: Iterable[ReadItem],
        out: NDBuffer,
        drop_axes: tuple[int, ...] = (),
    ) -> None:
        # docstring inherited
        batch = list(batch_info)
        if batch and self._decodes_sync() and _reads_sync(batch[0][0]):
            # one thread hop for the whole selection, then one pool task per chunk
            await asyncio.to_thread(self._read_threaded, batch, out, drop_axes)
            return
        await super().read(batch, out, drop_axes)

    def _read_threaded(self, batch: list[ReadItem], out: NDBuffer, drop_axes: tuple[int, ...]) -> None:
        def one(item: ReadItem) -> None:
            byte_getter, spec, chunk_selection, out_selection, _ = item
            store: Any = byte_getter.store  # type: ignore[attr-defined]
            raw = store.get_sync(byte_getter.path, prototype=spec.prototype)  # type: ignore[attr-defined]
            if raw is None:
                out[out_selection] = _zarr_pipeline.fill_value_or_default(spec)
                return
            part = self._decode_one(raw, spec)[chunk_selection]
            out[out_selection] = part.squeeze(axis=drop_axes) if drop_axes else part

        workers = _workers()
        if workers == 1 or len(batch) == 1:
            for item in batch:
                one(item)
        else:
            for _ in _pool(workers).map(one, batch):  # re-raises the first failure
                pass

    def _decode_one(self, data: Buffer, spec: ArraySpec) -> NDBuffer:
        """Decode one chunk through the codec chain, each codec seeing the spec of its input."""
        aa_specs = []
        for codec in self.array_array_codecs:
            aa_specs.append(spec)
            spec = codec.resolve_metadata(spec)
        ab_spec = spec
        spec = self.array_bytes_codec.resolve_metadata(spec)
        bb_specs = []
        for bb_codec in self.bytes_bytes_codecs:
            bb_specs.append(spec)
            spec = bb_codec.resolve_metadata(spec)
        for bb_codec, s in reversed(list(zip(self.bytes_bytes_codecs, bb_specs))):
            data = bb_codec._decode_sync(data, s)  # type: ignore[attr-defined]
        array = self.array_bytes_codec._decode_sync(data, ab_spec)  # type: ignore[attr-defined]
        for codec, s in reversed(list(zip(self.array_array_codecs, aa_specs))):
            array = codec._decode_sync(array, s)  # type: ignore[attr-defined]
        return array


_Base: type = getattr(_zarr_pipeline, "FusedCodecPipeline", _ThreadedRead)


class ThreadedCodecPipeline(_Base):  # type: ignore[misc, valid-type]
    """zarr's ``FusedCodecPipeline`` where it exists, else a threaded-read ``BatchedCodecPipeline``.

    See the module docstring for what runs in threads and how to turn it on.
    Results are those of zarr's default pipeline; only where the work runs changes.
    """
