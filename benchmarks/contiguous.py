"""Scenarios ``contiguous_local``, ``contiguous_http`` and ``contiguous_s3``.

One file of ``n_chunks * chunk_size`` random bytes is described by references
as an uncompressed zarr v3 uint8 array (chunk ``c/i`` = bytes
``[i * size, (i + 1) * size)``).  Each implementation opens the array through
zarr and reads it whole with ``arr[:]``; the result is compared with the file
bytes.  Timed: building the store, opening the array and reading it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import peers
from ._common import Config, Job, Row, Timing, array_checker, import_refstore, run_interleaved
from .data import contiguous_file, contiguous_refs, localstore_copy
from .servers import Server, s3_options, set_dummy_aws_env

BUCKET = "bench"
FSSPEC = "fsspec RFS + FsspecStore"
REF_STORE = "refstore.ReferenceStore"
REF_RFS = "refstore RFS + FsspecStore"
REF_WIDE = "refstore.ReferenceStore, ThreadedCodecPipeline"
WIDE_CONFIG = {"codec_pipeline.path": "refstore.pipeline.ThreadedCodecPipeline"}


@dataclass
class Backend:
    """Where the data file lives and how to reach it."""

    name: str
    url: str
    protocol: str
    options: dict[str, Any]
    limits: dict[str, Callable[[], Any]] = field(default_factory=dict)
    server: Server | None = None


def _read_zarr(store: Any, path: str | None = None) -> np.ndarray:
    """Open the array at *path* (the root if None) of ``store`` and read all of it."""
    import zarr

    return zarr.open_array(store=store, path=path, mode="r")[:] if path else zarr.open_array(store=store, mode="r")[:]


def fsspec_store(refs: dict[str, Any], b: Backend) -> Any:
    """zarr 3 store over fsspec's own ReferenceFileSystem (the baseline).

    fsspec's RFS must be asynchronous for zarr's FsspecStore; the remote
    filesystem must then be asynchronous too (sync ones such as
    ``LocalFileSystem`` are wrapped by RFS in ``AsyncFileSystemWrapper``).
    """
    from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS
    from zarr.storage import FsspecStore

    fs = FsspecRFS(
        fo=refs,
        remote_protocol=b.protocol,
        remote_options={**b.options, "asynchronous": True},
        asynchronous=True,
    )
    return FsspecStore(fs, read_only=True)


def refstore_native(refs: dict[str, Any], b: Backend) -> Any:
    """refstore's native zarr 3 store."""
    refstore = import_refstore()
    assert refstore is not None
    return refstore.ReferenceStore(refs, remote_protocol=b.protocol, remote_options=b.options)


def refstore_rfs(refs: dict[str, Any], b: Backend) -> Any:
    """zarr's FsspecStore over refstore's drop-in ReferenceFileSystem."""
    from zarr.storage import FsspecStore

    refstore = import_refstore()
    assert refstore is not None
    fs = refstore.ReferenceFileSystem(
        fo=refs,
        remote_protocol=b.protocol,
        remote_options={**b.options, "asynchronous": True},
        asynchronous=True,
    )
    return FsspecStore(fs, read_only=True)


async def _close_remote(fs: Any) -> None:
    """Close the client session of an async remote filesystem, if it has one.

    Asynchronous fsspec filesystems never close their sessions themselves
    (fsspec only registers finalizers for synchronous instances), so without
    this every repeat would leak an aiohttp session and its connections.
    """
    fs = getattr(fs, "sync_fs", fs)  # unwrap AsyncFileSystemWrapper
    session = getattr(fs, "_session", None)
    if session is not None and hasattr(session, "close"):
        await session.close()
        fs._session = None
    creator = getattr(fs, "_s3creator", None)
    if creator is not None:
        await creator.__aexit__(None, None, None)
        fs._s3creator = fs._s3 = None


def close_store(store: Any) -> None:
    """Release what a store opened (untimed cleanup between repeats)."""
    from zarr.core.sync import sync

    fs = getattr(store, "fs", None)
    subs = list(getattr(fs, "fss", {}).values()) if fs is not None else []
    for sub in {id(x): x for x in subs}.values():
        try:
            sync(_close_remote(sub))
        except Exception:
            pass
    for owner in (store, fs):  # refstore's reader owns its sessions (private, best effort)
        reader = getattr(owner, "_reader", None)
        if reader is not None and callable(getattr(reader, "close", None)):
            try:
                res = reader.close()
                if asyncio.iscoroutine(res):
                    sync(res)
            except Exception:
                pass
    close = getattr(store, "close", None)
    if callable(close):
        try:
            res = close()
            if asyncio.iscoroutine(res):
                sync(res)
        except Exception:
            pass


class _Opened:
    """Remembers the last store a job built so it can be closed untimed."""

    def __init__(
        self,
        make: Callable[[], Any],
        after: Callable[[], Any] | None,
        config: dict[str, Any] | None = None,
        path: str | None = None,
    ) -> None:
        self.make = make
        self._after = after
        self.config = config or {}
        self.path = path
        self.store: Any = None

    def read(self) -> np.ndarray:
        """Build the store and read the whole array (the timed part), under *config* (zarr's)."""
        import zarr

        self.store = self.make()
        with zarr.config.set(self.config):
            return _read_zarr(self.store, self.path)

    def after(self) -> Any:
        """Close the store, then report the server counters (if any)."""
        if self.store is not None:
            close_store(self.store)
            self.store = None
        return self._after() if self._after is not None else None


def _local_backend(cfg: Config, path: Path) -> Backend:
    """Local file; limits: zarr LocalStore with the same chunks, one read()."""
    import zarr
    from zarr.storage import LocalStore

    folder = localstore_copy(cfg.cache_dir, path, cfg.n_chunks, cfg.chunk_size)

    def localstore() -> np.ndarray:
        return zarr.open_array(store=LocalStore(folder, read_only=True), mode="r")[:]

    def raw_read() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return Backend("local", str(path), "file", {}, {"zarr LocalStore": localstore, "open().read()": raw_read})


def _http_backend(cfg: Config, path: Path) -> Backend:
    """Loopback aiohttp server; limit: one GET of the whole file."""
    import aiohttp

    server = Server("http", path.parent, in_process=cfg.servers_in_process)
    url = f"{server.url}/{path.name}"

    def one_get() -> bytes:
        out: list[bytes] = []

        async def get() -> None:
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                resp.raise_for_status()
                out.append(await resp.read())

        # The coroutine returns None on purpose: on CPython 3.11 asyncio.run()
        # calls repr() on the finished task, i.e. on a 32 MiB bytes result
        # (~0.5 s, more than the transfer itself).
        asyncio.run(get())
        return out[0]

    return Backend("http", url, "http", {}, {"1 GET (aiohttp)": one_get}, server)


def _s3_backend(cfg: Config, path: Path) -> Backend:
    """moto S3 server; limit: one s3fs ``cat_file`` of the whole object."""
    import s3fs

    set_dummy_aws_env()
    server = Server("s3", in_process=cfg.servers_in_process)
    opts = s3_options(server.url)
    try:
        fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        fs.put_file(str(path), f"{BUCKET}/{path.name}")
    except BaseException:
        server.close()
        raise
    url = f"s3://{BUCKET}/{path.name}"

    def cat_whole() -> bytes:
        return s3fs.S3FileSystem(**opts, skip_instance_cache=True).cat_file(url)

    return Backend("s3", url, "s3", opts, {"1 cat_file (s3fs)": cat_whole}, server)


BACKENDS: dict[str, Callable[[Config, Path], Backend]] = {
    "contiguous_local": _local_backend,
    "contiguous_http": _http_backend,
    "contiguous_s3": _s3_backend,
}


def _warm_up_zarr() -> None:
    """Start zarr's event-loop thread and import codecs outside any timing."""
    import zarr
    from zarr.storage import MemoryStore

    arr = zarr.create_array(store=MemoryStore(), shape=(16,), chunks=(8,), dtype="uint8", compressors=None)
    arr[:] = 1
    _ = arr[:]


def _memory_limit(data: np.ndarray, chunk_size: int) -> Callable[[], np.ndarray]:
    """Reading the same chunks from a MemoryStore: zarr's own per-chunk floor."""
    import zarr
    from zarr.storage import MemoryStore

    store = MemoryStore()
    arr = zarr.create_array(
        store=store, shape=data.shape, chunks=(chunk_size,), dtype="uint8", compressors=None, fill_value=0
    )
    arr[:] = data
    return lambda: zarr.open_array(store=store, mode="r")[:]


def run(name: str, cfg: Config) -> list[Row]:
    """Run one contiguous scenario and return its table rows."""
    _warm_up_zarr()
    path = contiguous_file(cfg.cache_dir, cfg.n_chunks, cfg.chunk_size)
    expected = np.fromfile(path, dtype=np.uint8)
    check = array_checker(expected)
    backend = BACKENDS[name](cfg, path)
    try:
        backend.limits["zarr MemoryStore"] = _memory_limit(expected, cfg.chunk_size)
        refs = contiguous_refs(backend.url, cfg.n_chunks, cfg.chunk_size)
        server = backend.server
        before = server.reset if server else None
        after = server.stats if server else None
        refstore = import_refstore()
        makers: dict[str, Callable[[dict[str, Any], Backend], Any]] = {FSSPEC: fsspec_store}
        if refstore is not None and hasattr(refstore, "ReferenceStore"):
            makers[REF_STORE] = refstore_native
            if hasattr(refstore, "pipeline"):
                makers[REF_WIDE] = refstore_native
        if refstore is not None and hasattr(refstore, "ReferenceFileSystem"):
            makers[REF_RFS] = refstore_rfs
        jobs = []
        for label, maker in makers.items():
            config = WIDE_CONFIG if label == REF_WIDE else None
            opened = _Opened(lambda maker=maker: maker(refs, backend), after, config)  # type: ignore[misc]
            slow = label == FSSPEC and backend.name == "s3"
            reps = cfg.slow_repeat if slow else cfg.repeat
            jobs.append(Job(label, opened.read, check, reps, before, opened.after))
        for lname, fn in backend.limits.items():
            jobs.append(Job(lname, fn, check, cfg.repeat, before, after))
        reasons = _peer_jobs(jobs, refs, backend, cfg, name, check, before, after)
        results = run_interleaved(jobs, cfg.verbose)
    finally:
        if backend.server is not None:
            backend.server.close()
    rows = _rows(name, cfg, backend, results)
    versus = [v for v in (REF_STORE, REF_WIDE) if v in results]
    reqs = _requests if backend.server is not None else None
    return rows + peers.peer_rows(name, results, versus, next(iter(backend.limits)), reasons, reqs)


def _peer_jobs(
    jobs: list[Job],
    refs: dict[str, Any],
    b: Backend,
    cfg: Config,
    name: str,
    check: Callable[[Any], None],
    before: Callable[[], Any] | None,
    after: Callable[[], Any] | None,
) -> dict[str, str]:
    """Append a job per peer (VirtualiZarr, Icechunk) to *jobs*; return why the others cannot run.

    Timed as refstore: building the store (a ManifestStore; opening the Icechunk
    repository and a read-only session, written beforehand), opening the array, reading it.
    """
    makers, reasons = peers.peer_makers(refs, b, cfg.cache_dir / f"icechunk_{name}_{cfg.n_chunks}")
    for peer, make in makers.items():
        opened = _Opened(make, after, None, peers.ROOT_ARRAY)
        jobs.append(Job(peer, opened.read, check, cfg.repeat, before, opened.after))
    return reasons


def _requests(t: Timing | None) -> str:
    """Request count of the last repeat ("-" if none were made, "n/a" if unknown)."""
    if t is None or not t.times or not t.extra.get("after"):
        return "n/a"
    last = t.extra["after"][-1]
    return str(last["requests"]) if last and last["requests"] else "-"


def _rows(name: str, cfg: Config, b: Backend, results: dict[str, Timing]) -> list[Row]:
    """Turn the timings of one scenario into table rows (raw timings on the first)."""
    fs = results[FSSPEC]
    limit_names = list(b.limits)
    rows = []
    for variant, lnames in ((REF_STORE, limit_names), (REF_WIDE, limit_names[:1]), (REF_RFS, limit_names[:1])):
        rt = results.get(variant)
        for lname in lnames:
            lim = results[lname]
            reqs = "/".join(_requests(t) for t in (rt, fs, lim)) if b.server is not None else ""
            errors = (rt.error if rt else "not available in refstore yet", fs.error, lim.error)
            rows.append(
                Row(
                    scenario=name,
                    variant=variant,
                    refstore=rt.median if rt else None,
                    fsspec=fs.median,
                    limit=lim.median,
                    limit_name=lname,
                    requests=reqs,
                    note="; ".join(e for e in errors if e),
                )
            )
    rows[0].raw = {
        "n_chunks": cfg.n_chunks,
        "chunk_size": cfg.chunk_size,
        "url": b.url,
        "timings": {k: v.to_json() for k, v in results.items()},
    }
    return rows
