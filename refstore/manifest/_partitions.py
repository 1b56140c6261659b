"""The partition reader of lazy parquet manifests: partition files read on demand into a bounded LRU.

:class:`ParquetSource` knows where a parquet reference directory is, reads its
files from any thread (async filesystems through a blocking twin that runs on
a manifest IO loop of its own), decodes a partition file into compact numpy
columns (:func:`~refstore.manifest._parquet.decode_partition`) and keeps the
last ``cache_size`` loaded partitions in an LRU shared by the manifest's
arrays. :mod:`._lazy` builds the manifest over it.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from refstore.errors import ManifestError
from refstore.manifest._parquet import Partition, decode_partition, partition_path
from refstore.manifest._table import KeyLayout

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

_NOT_CACHED = object()
_PARTITION_NAME = re.compile(r"refs\.(\d+)\.parq")


# -- reading files from any thread -----------------------------------------------------------

_LOOP: tuple[int, asyncio.AbstractEventLoop] | None = None
_LOOP_LOCK = threading.Lock()


def _manifest_loop() -> asyncio.AbstractEventLoop:
    """An event loop in a daemon thread of its own, for reading manifest files (one per process)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="refstore-manifest-io", daemon=True).start()
            _LOOP = (os.getpid(), loop)
        return _LOOP[1]


def _blocking_twin(fs: AbstractFileSystem) -> AbstractFileSystem:
    """A copy of an async filesystem whose blocking calls run on the manifest loop.

    Partitions are read from inside ``Manifest.get``, which the faces call
    from their event loop, often fsspec's own IO loop. A blocking call into an
    async filesystem bound to that same loop would raise (or deadlock); the
    twin runs its coroutines on :func:`_manifest_loop` instead. Filesystems
    that are not async are returned as they are.
    """
    from fsspec.asyn import AsyncFileSystem

    if not isinstance(fs, AsyncFileSystem) or not getattr(fs, "async_impl", False):
        return fs
    # (fsspec's instance cache then shares one twin per set of options and thread)
    options = {**fs.storage_options, "asynchronous": False, "loop": _manifest_loop()}
    try:
        return type(fs)(*fs.storage_args, **options)
    except TypeError:  # pragma: no cover - a filesystem that does not take `loop`
        return fs


class ParquetSource:
    """Where a lazy manifest's files are, and the LRU of its loaded partitions.

    Parameters
    ----------
    fs, root
        The filesystem and the directory holding ``.zmetadata``.
    record_size
        Rows per partition file.
    cache_size
        Partitions kept in memory (0 keeps none, None keeps all, as fsspec's
        ``lru_cache`` would); the cache is shared by all arrays of the
        manifest. Memory is bounded by ``cache_size`` times the size of one
        partition's columns (at most 20 bytes per row).

    Notes
    -----
    Pickles as its location and options, without the cache.
    """

    def __init__(self, fs: AbstractFileSystem, root: str, record_size: int, cache_size: int | None) -> None:
        if cache_size is not None and (not isinstance(cache_size, int) or cache_size < 0):
            raise ValueError(f"cache_size must be an integer >= 0 or None, got {cache_size!r}")
        self.fs = fs
        self.root = root
        self.record_size = record_size
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int], Partition | None] = OrderedDict()
        self._lock = threading.Lock()
        self._reader: tuple[int, AbstractFileSystem] | None = None
        self._records: dict[str, list[int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"fs": self.fs, "root": self.root, "record_size": self.record_size, "cache_size": self.cache_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["fs"], state["root"], state["record_size"], state["cache_size"])  # type: ignore[misc]

    def read(self, fn: str) -> bytes:
        """The bytes of file *fn*, safe to call from any thread, in or out of an event loop.

        Raises
        ------
        FileNotFoundError
            If the file does not exist.
        """
        return self._twin().cat_file(fn)

    def _twin(self) -> AbstractFileSystem:
        reader = self._reader
        if reader is None or reader[0] != os.getpid():
            reader = self._reader = (os.getpid(), _blocking_twin(self.fs))
        return reader[1]

    def records(self, prefix: str) -> list[int]:
        """Numbers of the partition files that exist for the array at *prefix*, ascending.

        One directory listing per array, kept: a scan of a huge, sparse grid
        visits these instead of every partition number the grid allows.
        """
        with self._lock:
            found = self._records.get(prefix)
        if found is None:
            folder = partition_path(self.root, prefix, 0).rsplit("/", 1)[0]
            try:
                names = self._twin().ls(folder, detail=False)
            except (FileNotFoundError, NotADirectoryError):
                names = []
            numbers = (_PARTITION_NAME.fullmatch(str(n).rstrip("/").rsplit("/", 1)[-1]) for n in names)
            found = sorted(int(m.group(1)) for m in numbers if m is not None)
            with self._lock:
                self._records[prefix] = found
        return found

    def partition(self, layout: KeyLayout, record: int, flat: int, *, keep: bool = True) -> Partition | None:
        """Partition *record* of the array *layout*, from the cache or its file.

        Parameters
        ----------
        layout
            The array.
        record
            The partition number.
        flat
            The chunk being looked up (named in errors).
        keep
            Put a partition that was read into the cache (scans pass False so
            that they do not evict what lookups use).

        Returns
        -------
        Partition or None
            None if the file does not exist: the partition holds no chunks.

        Raises
        ------
        ManifestError
            Naming the key and the file, if the file is corrupt.
        """
        key = (layout.prefix, record)
        with self._lock:
            part = self._cache.get(key, _NOT_CACHED)
            if part is not _NOT_CACHED:
                self._cache.move_to_end(key)
                return part  # type: ignore[return-value]
        fn = partition_path(self.root, layout.prefix, record)
        try:
            data = self.read(fn)
        except FileNotFoundError:
            part = None
        except IsADirectoryError:
            raise ManifestError(
                f"key {layout.head + layout.suffix(flat)!r}: parquet partition {fn!r} is a directory, not a file"
            ) from None
        else:
            try:
                part = decode_partition(data, fn, layout, record, self.record_size)
            except ManifestError as exc:
                raise ManifestError(f"key {layout.head + layout.suffix(flat)!r}: {exc}") from None
            del data
        if keep and self.cache_size != 0:
            with self._lock:
                self._cache[key] = part
                while self.cache_size is not None and len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return part

    def cached(self) -> int:
        """Number of partitions in the cache."""
        return len(self._cache)

    def nbytes(self, prefix: str | None = None) -> int:
        """Memory of the cached partitions (of one array, if *prefix* is given)."""
        with self._lock:
            parts = [p for (pre, _), p in self._cache.items() if p is not None and prefix in (None, pre)]
        return sum(p.nbytes for p in parts)

    def clear(self) -> None:
        """Drop every cached partition."""
        with self._lock:
            self._cache.clear()


__all__ = ["ParquetSource"]
