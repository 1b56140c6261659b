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
  number of CPUs). Anything else (other stores, sharding, codecs without a
  synchronous decode, and all writes) takes the batched path unchanged.
* **Full width** (every zarr version): a read from one of refstore's stores
  that has no cheap synchronous reads (remote references, virtual arrays),
  through ``ReferenceStore`` or ``reference://`` (zarr's ``FsspecStore`` over
  refstore's filesystem), asks the store for a whole window of the selection's
  chunks at once (``get_partial_values``), not ``async.concurrency`` (10) at a
  time. refstore's fetcher then merges nearby ranges and keeps up to its own
  ``max_concurrency`` requests in flight; chunks are decoded in threads while
  the next window is fetched. Results are those of zarr's default pipeline.

The class is registered with zarr through the ``zarr.codec_pipeline`` entry
point, so the configuration above needs no import.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

from zarr.core import codec_pipeline as _zarr_pipeline
from zarr.core.codec_pipeline import BatchedCodecPipeline
from zarr.core.config import config

from refstore.errors import BadResponse, ChunkDecodeError, ReferenceNotReachable, URLNotAllowed

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
    """Whether *byte_getter* holds fetched bytes, or is a zarr ``StorePath`` whose store offers
    cheap synchronous reads.

    zarr's convention (``zarr.abc.store._store_supports_sync_io``): the three
    ``*_sync`` methods, and a ``_supports_sync_io`` attribute that is not False.
    """
    if isinstance(byte_getter, _Fetched):
        return True
    store = getattr(byte_getter, "store", None)
    return (
        isinstance(getattr(byte_getter, "path", None), str)
        and all(callable(getattr(store, m, None)) for m in ("get_sync", "set_sync", "delete_sync"))
        and bool(getattr(store, "_supports_sync_io", True))
    )


# chunks asked of the store at once on the full-width path; the next window is fetched while
# this one decodes, so at most two windows of encoded chunks are held
WINDOW = 512


class _Fetched:
    """A chunk's bytes, fetched already, standing in for its ``StorePath`` (a zarr ``SyncByteGetter``)."""

    __slots__ = ("path", "store", "value")

    def __init__(self, where: Any, value: Buffer | None) -> None:
        self.path, self.store, self.value = where.path, where.store, value

    def get_sync(self, prototype: Any = None, byte_range: Any = None) -> Buffer | None:
        if byte_range is not None:  # zarr asks whole chunks of unsharded arrays; this path takes no other
            raise ValueError(f"prefetched chunk {self.path!r} was asked for a byte range {byte_range!r}")
        return self.value

    async def get(self, prototype: Any = None, byte_range: Any = None) -> Buffer | None:
        return self.get_sync(prototype, byte_range)


def _serves_refstore(store: object) -> bool:
    """Whether *store* is refstore's zarr store, or zarr's ``FsspecStore`` over refstore's filesystem."""
    from refstore._engine import EngineStore
    from refstore.fs import ReferenceFileSystem

    return isinstance(store, EngineStore) or isinstance(getattr(store, "fs", None), ReferenceFileSystem)


def _reads_full_width(pipeline: Any, batch: list[Any]) -> bool:
    """Whether to fetch *batch* a window at a time through ``get_partial_values`` (module docstring)."""
    if len(batch) < 2 or pipeline.supports_partial_decode:
        return False
    first = batch[0][0]
    store = getattr(first, "store", None)
    return (
        isinstance(getattr(first, "path", None), str)
        and not _reads_sync(first)
        and _serves_refstore(store)
        and all(getattr(item[0], "store", None) is store for item in batch)
    )


async def _fetch_window(window: list[Any]) -> list[Any]:
    """*window*'s items with their byte getters replaced by the fetched bytes (one store call)."""
    store = window[0][0].store
    values = await store.get_partial_values(window[0][1].prototype, [(item[0].path, None) for item in window])
    return [(_Fetched(item[0], value), *item[1:]) for item, value in zip(window, values, strict=True)]


async def _read_in_windows(read: Any, batch: list[Any], out: Any, drop_axes: tuple[int, ...]) -> Any:
    """``read`` (zarr's pipeline) over *batch*, each window fetched whole while the one before decodes.

    Returns what ``read`` returns: None (zarr 3.1) or the per-chunk results in order (zarr >= 3.4).
    """
    windows = [batch[i : i + WINDOW] for i in range(0, len(batch), WINDOW)]
    pending = asyncio.ensure_future(_fetch_window(windows[0]))
    results: list[Any] | None = None
    try:
        for k in range(len(windows)):
            fetched = await pending
            if k + 1 < len(windows):
                pending = asyncio.ensure_future(_fetch_window(windows[k + 1]))
            got = await read(fetched, out, drop_axes)
            if got is not None:
                results = [*(results or ()), *got]
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
    return None if results is None else tuple(results)


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
            if isinstance(byte_getter, _Fetched):
                raw = byte_getter.get_sync(spec.prototype)
            else:
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
        out: Any = data
        for codec, codec_spec in _decode_steps(self, spec):
            out = codec._decode_sync(out, codec_spec)
        return cast("NDBuffer", out)


_Base: type = getattr(_zarr_pipeline, "FusedCodecPipeline", _ThreadedRead)


class ThreadedCodecPipeline(_Base):  # type: ignore[misc, valid-type]
    """zarr's ``FusedCodecPipeline`` where it exists, else a threaded-read ``BatchedCodecPipeline``.

    See the module docstring for what runs in threads and how to turn it on.
    Results are those of zarr's default pipeline; only where the work runs changes,
    and a chunk that does not decode raises :class:`refstore.errors.ChunkDecodeError`
    naming its key, where its bytes came from and the codec (zarr raises the codec's
    bare error, e.g. ``zlib.error: incorrect header check``).
    """

    async def read(self, batch_info: Any, out: Any, drop_axes: tuple[int, ...] = ()) -> Any:
        # docstring inherited
        batch = list(batch_info)
        try:
            if _reads_full_width(self, batch):
                return await _read_in_windows(super().read, batch, out, drop_axes)
            return await super().read(batch, out, drop_axes)
        except (ChunkDecodeError, ReferenceNotReachable, URLNotAllowed, BadResponse):
            raise  # fetch errors already name key, URL and cause
        except Exception:
            # find the chunk and codec again, one chunk at a time (only on this failing path)
            named = await _name_decode_failure(self, batch)
            if named is None:
                raise
            raise named[0] from named[1]


async def _name_decode_failure(pipeline: Any, batch: list[Any]) -> tuple[ChunkDecodeError, BaseException] | None:
    """The first chunk of *batch* whose bytes a codec of *pipeline* refuses, as an error to raise."""
    for item in batch:
        byte_getter, spec = item[0], item[1]
        try:
            data = await byte_getter.get(prototype=spec.prototype)
        except Exception:  # noqa: BLE001 - not a decode failure; the original error stands
            continue
        if data is None:
            continue
        failed = await _failing_codec(pipeline, data, spec)
        if failed is not None:
            codec, cause = failed
            key = str(getattr(byte_getter, "path", byte_getter))
            source = await _describe(byte_getter, key)
            return ChunkDecodeError(key, source, codec, cause), cause
    return None


def _decode_steps(pipeline: Any, spec: Any) -> list[tuple[Any, Any]]:
    """*pipeline*'s codecs in decoding order, each with the spec of what it decodes into."""
    aa_specs = []
    for codec in pipeline.array_array_codecs:
        aa_specs.append(spec)
        spec = codec.resolve_metadata(spec)
    ab_spec = spec
    spec = pipeline.array_bytes_codec.resolve_metadata(spec)
    bb_steps = []
    for codec in pipeline.bytes_bytes_codecs:
        bb_steps.append((codec, spec))
        spec = codec.resolve_metadata(spec)
    return [*reversed(bb_steps), (pipeline.array_bytes_codec, ab_spec),
            *reversed(list(zip(pipeline.array_array_codecs, aa_specs)))]


async def _failing_codec(pipeline: Any, data: Any, spec: Any) -> tuple[str, BaseException] | None:
    """Run *data* down *pipeline*'s codecs; the name of the first that raises, and its error."""
    chain = _decode_steps(pipeline, spec)
    for codec, codec_spec in chain:
        try:
            (data,) = await codec.decode([(data, codec_spec)])
        except Exception as exc:  # noqa: BLE001 - the failure being looked for
            return _v2_part(codec, data) or _codec_name(codec), exc
    return None


def _v2_part(codec: Any, data: Any) -> str | None:
    """For zarr's codec of a zarr 2 array (compressor + filters in one), the part that fails."""
    compressor = getattr(codec, "compressor", None)
    filters = getattr(codec, "filters", None)
    if compressor is None and not filters:
        return None
    try:
        raw: Any = data.to_bytes() if hasattr(data, "to_bytes") else data
        if compressor is not None:
            try:
                raw = compressor.decode(raw)
            except Exception:  # noqa: BLE001 - found it
                return _codec_name(compressor)
        for f in reversed(list(filters or ())):
            try:
                raw = f.decode(raw)
            except Exception:  # noqa: BLE001 - found it
                return _codec_name(f)
    except Exception:  # noqa: BLE001 - a description must not fail
        return None
    return None


def _codec_name(codec: Any) -> str:
    """The name a codec goes by in metadata (a numcodecs codec's id), else its class name."""
    codec_id = getattr(codec, "codec_id", None)
    if isinstance(codec_id, str) and codec_id:
        return codec_id
    try:
        name = codec.to_dict().get("name")
    except Exception:  # noqa: BLE001 - any codec: fall back to the class name
        name = None
    return name if isinstance(name, str) else type(codec).__name__


async def _describe(byte_getter: Any, key: str) -> str:
    """Where *key*'s bytes came from, asked of refstore's store or filesystem; else just the store."""
    store = getattr(byte_getter, "store", None)
    describe = getattr(store, "describe", None)
    if describe is not None:
        return str(await describe(key))
    fs = getattr(store, "fs", None)  # zarr's FsspecStore over refstore's ReferenceFileSystem
    if fs is not None and callable(getattr(fs, "describe", None)):
        root = str(getattr(store, "path", "")).strip("/")
        return str(await fs.describe(f"{root}/{key}" if root else key))
    return f"store {store!r}" if store is not None else "an in-memory shard"
