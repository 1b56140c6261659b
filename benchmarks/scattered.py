"""Scenarios ``scattered_local`` / ``scattered_http`` / ``scattered_s3`` and the range-merging sweep.

The data set imitates a kerchunk manifest over 1,000 netCDF4/HDF5 files: file
``t`` holds time step ``t`` of a zarr v3 int32 array ``temp`` of shape
``(n_files, 1024, 1024)``, chunked ``(1, 128, 128)`` and gzip-compressed, so
each file has an 8 KiB header and 64 chunks of 8-64 KiB (log-uniform), each
after a hole of 0-4 KiB (other HDF5 objects).  The manifest is kerchunk JSON
v1 with one URL template per file.  The workload reads 2,000 random points,
each in a different random chunk (fixed seed), with
``arr.get_coordinate_selection``: 2,000 whole-chunk reads spread over ~860
files, about two per touched file.  The values are checked against values
regenerated from the seed (every chunk's tail holds its own id, so a wrong
chunk cannot pass).  Timed: the selection only; building the store and
opening the array are untimed (``open_json`` measures opening).

The servers count requests and response bytes, so each row also reports the
read amplification: bytes transferred / bytes of the chunks needed.

``python -m benchmarks.scattered sweep`` times refstore over a grid of
``max_gap`` x ``max_block`` on this workload, on the contiguous one of
:mod:`benchmarks.contiguous` and on ``ReferenceFileSystem.cat`` of all its
keys, locally, over loopback HTTP, over HTTP with a simulated WAN (first-byte
latency and bandwidth, see :class:`Link`) and over moto S3.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import os
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import peers
from ._common import Config, Job, Row, Timing, default_cache_dir, import_refstore, run_interleaved
from .contiguous import Backend, close_store, fsspec_store, refstore_rfs
from .servers import (
    RESET_PATH,
    STATS_PATH,
    Counter,
    Server,
    s3_options,
    serve_app,
    set_dummy_aws_env,
)

SEED = 5_2024
EDGE = 128  # chunk edge (elements)
GRID = 8  # chunks per file along y and x: 64 chunks per file
RAW_BYTES = EDGE * EDGE * 4  # int32 chunk, 64 KiB before compression
MIN_Z, MAX_Z = 8 * 1024, 64 * 1024  # compressed chunk sizes, log-uniform
HEADER = 8192
MAX_HOLE = 4096
ARRAY = "temp"
BUCKET = "bench"
FSSPEC = "fsspec RFS + FsspecStore"
REF_STORE = "refstore.ReferenceStore"
REF_WIDE = "refstore.ReferenceStore, ThreadedCodecPipeline"
WIDE_CONFIG = {"codec_pipeline.path": "refstore.pipeline.ThreadedCodecPipeline"}
REF_RFS = "refstore RFS + FsspecStore"
KiB, MiB = 1024, 1024 * 1024


def sizes(quick: bool) -> tuple[int, int]:
    """``(n_files, n_reads)`` of the scattered workload."""
    return (100, 200) if quick else (1000, 2000)


# ------------------------------------------------------------------- the data set
def chunk_values(t: int, k: int) -> np.ndarray:
    """The int32 values of chunk ``k`` (C order in the 8x8 grid) of file ``t``.

    The first values are random (their number sets the compressed size), the
    rest repeat the chunk's id ``t * 64 + k + 1``, so every value tells which
    chunk it came from.
    """
    rng = np.random.default_rng((SEED, t, k))
    target = math.exp(rng.uniform(math.log(MIN_Z), math.log(MAX_Z)))
    n = min(max(int(target) // 4 - 24, 0), EDGE * EDGE)
    out = np.full(EDGE * EDGE, t * GRID * GRID + k + 1, dtype="<i4")
    out[:n] = rng.integers(-(2**31), 2**31 - 1, n, dtype=np.int32, endpoint=True)
    return out.reshape(EDGE, EDGE)


def _encode(values: np.ndarray) -> bytes:
    """gzip level 1, as zarr's ``gzip`` codec reads it."""
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)
    return comp.compress(values.tobytes()) + comp.flush()


def array_metadata(n_files: int) -> dict[str, Any]:
    """zarr v3 metadata of ``temp``."""
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [n_files, GRID * EDGE, GRID * EDGE],
        "data_type": "int32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, EDGE, EDGE]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [
            {"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "gzip", "configuration": {"level": 1}},
        ],
        "attributes": {"units": "cK"},
        "dimension_names": ["time", "y", "x"],
        "storage_transformers": [],
    }


GROUP_JSON = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})


@dataclass
class Dataset:
    """The files on disk and where each chunk is (``offsets``/``lengths`` of shape (n_files, 64))."""

    folder: Path
    n_files: int
    offsets: np.ndarray
    lengths: np.ndarray

    def name(self, t: int) -> str:
        """File name of time step ``t``."""
        return f"file_{t:04d}.nc"

    def path(self, t: int) -> Path:
        """Local path of time step ``t``."""
        return self.folder / self.name(t)

    def refs(self, base: str) -> dict[str, Any]:
        """kerchunk v1 references with one template per file, URLs under *base*."""
        refs: dict[str, Any] = {"zarr.json": GROUP_JSON, f"{ARRAY}/zarr.json": json.dumps(array_metadata(self.n_files))}
        offs, lens = self.offsets.tolist(), self.lengths.tolist()
        for t in range(self.n_files):
            u = f"{{{{f{t}}}}}"
            o, n = offs[t], lens[t]
            for k in range(GRID * GRID):
                refs[f"{ARRAY}/c/{t}/{k // GRID}/{k % GRID}"] = [u, o[k], n[k]]
        templates = {f"f{t}": f"{base}/{self.name(t)}" for t in range(self.n_files)}
        return {"version": 1, "templates": templates, "refs": refs}


def dataset(cache_dir: Path, n_files: int, verbose: bool = True) -> Dataset:
    """The scattered data set of *n_files* files (generated once into *cache_dir*)."""
    folder = cache_dir / f"scattered_{n_files}"
    layout = folder / "layout.npz"
    if layout.exists():
        with np.load(layout) as z:
            return Dataset(folder, n_files, z["offsets"], z["lengths"])
    folder.mkdir(parents=True, exist_ok=True)
    if verbose:
        print(f"  generating {n_files} files in {folder} (once)", flush=True)
    offsets = np.zeros((n_files, GRID * GRID), dtype=np.int64)
    lengths = np.zeros_like(offsets)
    for t in range(n_files):
        rng = np.random.default_rng((SEED, t, 10_000))
        parts = [rng.bytes(HEADER)]
        pos = HEADER
        for k in range(GRID * GRID):
            hole = rng.bytes(int(rng.integers(0, MAX_HOLE)))
            blob = _encode(chunk_values(t, k))
            parts += [hole, blob]
            pos += len(hole)
            offsets[t, k], lengths[t, k] = pos, len(blob)
            pos += len(blob)
        path = folder / f"file_{t:04d}.nc"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(parts))
        os.replace(tmp, path)
    tmp_layout = folder / "layout.tmp.npz"
    np.savez(tmp_layout, offsets=offsets, lengths=lengths)
    os.replace(tmp_layout, layout)
    return Dataset(folder, n_files, offsets, lengths)


@dataclass
class Selection:
    """The points read: one in each of ``n`` distinct random chunks."""

    t: np.ndarray
    k: np.ndarray
    y: np.ndarray
    x: np.ndarray
    expected: np.ndarray
    raw_crc: np.ndarray  # crc32 of each chunk's raw bytes, to check raw reads

    @property
    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coordinates for ``get_coordinate_selection``."""
        return self.t, self.y, self.x


def selection(ds: Dataset, n: int) -> Selection:
    """*n* random points in distinct chunks (fixed seed) and their true values."""
    rng = np.random.default_rng((SEED, 1))
    flat = rng.choice(ds.n_files * GRID * GRID, size=n, replace=False)
    t, k = flat // (GRID * GRID), flat % (GRID * GRID)
    iy, ix = rng.integers(0, EDGE, n), rng.integers(0, EDGE, n)
    y, x = (k // GRID) * EDGE + iy, (k % GRID) * EDGE + ix
    expected = np.empty(n, dtype=np.int32)
    crc = np.empty(n, dtype=np.int64)
    for i in range(n):
        vals = chunk_values(int(t[i]), int(k[i]))
        expected[i] = vals[iy[i], ix[i]]
        crc[i] = zlib.crc32(vals.tobytes())
    return Selection(t, k, y, x, expected, crc)


def needed_bytes(ds: Dataset, sel: Selection) -> int:
    """Bytes of the chunks the selection needs (the denominator of the amplification)."""
    return int(ds.lengths[sel.t, sel.k].sum())


# ------------------------------------------------------------ servers counting bytes
class ByteCounter(Counter):
    """Request counters plus the bytes of response bodies."""

    def reset(self) -> None:
        with self._lock:
            self.data = {"requests": 0, "ranged": 0, "gets": 0, "other": 0, "bytes": 0}

    def add_bytes(self, n: int) -> None:
        """Count *n* body bytes sent."""
        with self._lock:
            self.data["bytes"] += n


@dataclass
class Link:
    """A simulated network for the HTTP server: each response is held back until a
    link shared by all connections (``total`` bytes/s) and the connection itself
    (``per_conn`` bytes/s) could have carried it, starting ``latency`` seconds
    after the request arrived.  All zero: plain loopback."""

    latency: float = 0.0
    per_conn: float = 0.0
    total: float = 0.0
    _free_at: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.latency or self.per_conn or self.total)

    def delay(self, nbytes: int) -> float:
        """Seconds to wait before sending *nbytes* (reserves the shared link)."""
        now = time.monotonic()
        ready = now + self.latency
        done = ready + (nbytes / self.per_conn if self.per_conn else 0.0)
        if self.total:
            start = max(ready, self._free_at)
            self._free_at = start + nbytes / self.total
            done = max(done, self._free_at)
        return max(done - now, 0.0)

    def argv(self) -> list[str]:
        return [repr(self.latency), repr(self.per_conn), repr(self.total)]


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``bytes=`` range, None if unsatisfiable."""
    spec = header.split("=", 1)[1].split(",")[0].strip()
    first, _, last = spec.partition("-")
    if not first:
        start, end = max(size - int(last), 0), size
    else:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    return (start, end) if start < size and start < end else None


def _http_app(root: Path, counter: ByteCounter, link: Link) -> Any:
    """aiohttp app serving files under *root* with Range, counting requests and bytes."""
    from aiohttp import web

    fds: dict[Path, int] = {}
    base = root.resolve()

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == STATS_PATH:
            return web.json_response(counter.snapshot())
        if request.path == RESET_PATH:
            counter.reset()
            return web.json_response({})
        ranged = "Range" in request.headers
        counter.add(request.method, ranged)
        path = (base / request.match_info["name"]).resolve()
        fd = fds.get(path)
        if fd is None:
            if base not in path.parents or not path.is_file():
                raise web.HTTPNotFound()
            fd = fds[path] = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
        headers = {"Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            headers["Content-Length"] = str(size)
            return web.Response(status=200, headers=headers)
        start, end, status = 0, size, 200
        if ranged:
            rng = _parse_range(request.headers["Range"], size)
            if rng is None:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            start, end, status = rng[0], rng[1], 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        body = os.pread(fd, end - start, start)
        counter.add_bytes(len(body))
        if link.active:
            await asyncio.sleep(link.delay(len(body)))
        return web.Response(status=status, body=body, headers=headers)

    app = web.Application()
    app.router.add_route("GET", "/{name:.+}", handle)
    app.router.add_route("HEAD", "/{name:.+}", handle)
    return app


def _run_http(root: Path, link: Link, on_port: Callable[[int], None], stop: threading.Event | None) -> None:
    """Serve *root* on a free loopback port until *stop* is set (or forever)."""
    serve_app(_http_app(root, ByteCounter(), link), on_port, stop, backlog=1024)


def _make_s3_server() -> Any:
    """moto behind werkzeug, counting requests (servers.py's wrapper) and body bytes."""
    import logging

    from werkzeug.serving import make_server

    from .servers import _moto_app

    counter = ByteCounter()
    inner = _moto_app(counter)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = inner(environ, start_response)
        path = environ.get("PATH_INFO", "")
        if path in (STATS_PATH, RESET_PATH) or path.startswith("/moto-api"):
            return body

        def counted() -> Iterable[bytes]:
            n = 0
            try:
                for piece in body:
                    n += len(piece)
                    yield piece
            finally:
                counter.add_bytes(n)
                close = getattr(body, "close", None)
                if close is not None:
                    close()

        return counted()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    return make_server("127.0.0.1", 0, app, threaded=True)


class ByteServer(Server):
    """:class:`benchmarks.servers.Server` whose HTTP/S3 servers also count body bytes
    (``stats()["bytes"]``) and whose HTTP server can simulate a network (:class:`Link`)."""

    def __init__(self, kind: str, root: Path | None = None, in_process: bool = False, link: Link | None = None) -> None:
        self.link = link or Link()
        super().__init__(kind, root, in_process)

    def _server_args(self, root: Path | None) -> list[str]:
        args = ["benchmarks.scattered", "serve", self.kind]
        return args + [str(root), *self.link.argv()] if self.kind == "http" else args

    def _http_runner(self, root: Path, on_port: Callable[[int], None]) -> Callable[[], None]:
        return lambda: _run_http(root, self.link, on_port, self._stop)

    def _make_s3(self) -> Any:
        return _make_s3_server()


class PreadCounter:
    """Counts ``os.pread`` calls and bytes (refstore's local reads) while installed."""

    def __init__(self) -> None:
        self._orig = os.pread
        self._lock = threading.Lock()
        self.calls = self.bytes = 0

    def _pread(self, fd: int, n: int, offset: int) -> bytes:
        data = self._orig(fd, n, offset)
        with self._lock:
            self.calls += 1
            self.bytes += len(data)
        return data

    def install(self) -> None:
        """Reset the counts and route ``os.pread`` through the counter."""
        self.calls = self.bytes = 0
        os.pread = self._pread

    def uninstall(self) -> dict[str, int]:
        """Restore ``os.pread``; return the counts."""
        os.pread = self._orig
        return {"requests": self.calls, "bytes": self.bytes}


# ----------------------------------------------------------------------- backends
def local_backend(cfg: Config, root: Path) -> Backend:
    """Files read in place (paths with ``remote_protocol="file"``)."""
    return Backend("local", str(root.resolve()), "file", {})


def http_backend(cfg: Config, root: Path, link: Link | None = None) -> Backend:
    """A byte-counting aiohttp server over *root*."""
    server = ByteServer("http", root, in_process=cfg.servers_in_process, link=link)
    return Backend("http" if not (link and link.active) else "wan", server.url, "http", {}, server=server)


def s3_backend(cfg: Config, root: Path, files: list[Path]) -> Backend:
    """moto S3 (counting bytes) holding *files* under their paths relative to *root*."""
    import s3fs

    set_dummy_aws_env()
    server = ByteServer("s3", in_process=cfg.servers_in_process)
    opts = s3_options(server.url)
    try:
        fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        t0 = time.perf_counter()
        lpaths = [str(p) for p in files]
        rpaths = [f"{BUCKET}/{p.relative_to(root).as_posix()}" for p in files]
        fs.put(lpaths, rpaths, batch_size=8)
        if cfg.verbose:
            print(f"  uploaded {len(files)} objects to moto in {time.perf_counter() - t0:.0f} s", flush=True)
    except BaseException:
        server.close()
        raise
    return Backend("s3", f"s3://{BUCKET}", "s3", opts, server=server)


def base_url(b: Backend, rel: str) -> str:
    """URL (or path) of the folder *rel* (relative to the served root) on backend *b*."""
    return f"{b.url}/{rel}" if rel else b.url


# ------------------------------------------------------------------------ readers
def refstore_store(refs: dict[str, Any], b: Backend, **opts: Any) -> Any:
    """refstore's native zarr 3 store, with fetcher options (``max_gap``, ``max_block``)."""
    refstore = import_refstore()
    assert refstore is not None
    return refstore.ReferenceStore(refs, remote_protocol=b.protocol, remote_options=b.options, **opts)


def _open_array(store: Any, path: str | None) -> Any:
    import zarr

    return zarr.open_array(store=store, path=path, mode="r") if path else zarr.open_array(store=store, mode="r")


class Reading:
    """One implementation: ``before`` builds the store and opens the array (untimed),
    ``read`` does the timed read, ``after`` closes and returns the counters."""

    def __init__(
        self,
        make: Callable[[], Any],
        read: Callable[[Any], Any],
        path: str | None,
        server: Server | None = None,
        preads: PreadCounter | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.make, self._read, self.path = make, read, path
        self.server, self.preads = server, preads
        self.config = config or {}  # zarr's, while the array is opened (the codec pipeline is chosen then)
        self.store: Any = None
        self.arr: Any = None
        self._cpu = 0.0

    def before(self) -> None:
        import zarr

        self.store = self.make()
        with zarr.config.set(self.config):
            self.arr = _open_array(self.store, self.path)
        if self.server is not None:
            self.server.reset()
        if self.preads is not None:
            self.preads.install()
        self._cpu = time.process_time()

    def read(self) -> Any:
        return self._read(self.arr)

    def after(self) -> Any:
        cpu = time.process_time() - self._cpu
        stats = self.preads.uninstall() if self.preads is not None else None
        if self.server is not None:
            stats = self.server.stats()
        if self.store is not None:
            close_store(self.store)
        self.store = self.arr = None
        return {**(stats or {}), "cpu": cpu}


class Plain:
    """A limit without zarr (``fn`` timed), with the same counters."""

    def __init__(self, fn: Callable[[], Any], server: Server | None = None, preads: PreadCounter | None = None) -> None:
        self.fn, self.server, self.preads = fn, server, preads

    def before(self) -> None:
        if self.server is not None:
            self.server.reset()
        if self.preads is not None:
            self.preads.install()

    def after(self) -> Any:
        stats = self.preads.uninstall() if self.preads is not None else None
        if self.server is not None:
            stats = self.server.stats()
        return stats


def _value_check(expected: np.ndarray) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        arr = np.asarray(value)
        if arr.shape != expected.shape or not np.array_equal(arr, expected):
            bad = int(np.sum(arr != expected)) if arr.shape == expected.shape else -1
            raise AssertionError(f"read returned wrong data ({bad} wrong values)")

    return check


def _raw_check(sel: Selection) -> Callable[[Any], None]:
    """Check raw chunk bytes (the limits without zarr): they inflate to the right chunks."""

    def check(blobs: list[bytes]) -> None:
        if len(blobs) != len(sel.raw_crc):
            raise AssertionError(f"{len(blobs)} chunks read, expected {len(sel.raw_crc)}")
        for i, blob in enumerate(blobs):
            if zlib.crc32(gzip.decompress(blob)) != sel.raw_crc[i]:
                raise AssertionError(f"chunk {i} has wrong bytes")

    return check


def _memory_limit(ds: Dataset, sel: Selection) -> Callable[[], Any]:
    """A maker of zarr MemoryStores holding the same chunk bytes: zarr's own floor (decode included)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    content: dict[str, Any] = {}
    store = MemoryStore(content)
    proto = default_buffer_prototype()

    async def fill() -> None:
        await store.set("zarr.json", proto.buffer.from_bytes(GROUP_JSON.encode()))
        await store.set(f"{ARRAY}/zarr.json", proto.buffer.from_bytes(json.dumps(array_metadata(ds.n_files)).encode()))
        for t, k in zip(sel.t.tolist(), sel.k.tolist()):
            blob = _encode(chunk_values(t, k))
            await store.set(f"{ARRAY}/c/{t}/{k // GRID}/{k % GRID}", proto.buffer.from_bytes(blob))

    sync(fill())
    return lambda: MemoryStore(content, read_only=True)


def _localstore_limit(cache_dir: Path, ds: Dataset, sel: Selection) -> Callable[[], Any]:
    """A maker of zarr LocalStores holding the selected chunks as files (others absent, never read)."""
    from zarr.storage import LocalStore

    folder = cache_dir / f"scattered_{ds.n_files}_localstore_{len(sel.t)}.zarr"
    marker = folder / ".complete"
    if not marker.exists():
        (folder / ARRAY).mkdir(parents=True, exist_ok=True)
        (folder / "zarr.json").write_text(GROUP_JSON)
        (folder / ARRAY / "zarr.json").write_text(json.dumps(array_metadata(ds.n_files)))
        for t, k in zip(sel.t.tolist(), sel.k.tolist()):
            p = folder / ARRAY / "c" / str(t) / str(k // GRID) / str(k % GRID)
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(ds.path(t), "rb") as f:
                f.seek(int(ds.offsets[t, k]))
                p.write_bytes(f.read(int(ds.lengths[t, k])))
        marker.write_text("ok")
    return lambda: LocalStore(folder, read_only=True)


def _ranges(ds: Dataset, sel: Selection) -> list[tuple[int, int, int]]:
    return [(t, int(ds.offsets[t, k]), int(ds.lengths[t, k])) for t, k in zip(sel.t.tolist(), sel.k.tolist())]


def _preads_limit(ds: Dataset, sel: Selection) -> Callable[[], list[bytes]]:
    """One ``os.pread`` per chunk, in one thread (opening the files included)."""
    ranges = _ranges(ds, sel)

    def run() -> list[bytes]:
        fds: dict[int, int] = {}
        try:
            out = []
            for t, off, n in ranges:
                fd = fds.get(t)
                if fd is None:
                    fd = fds[t] = os.open(ds.path(t), os.O_RDONLY)
                out.append(os.pread(fd, n, off))
            return out
        finally:
            for fd in fds.values():
                os.close(fd)

    return run


def _http_gets_limit(url: str, ds: Dataset, sel: Selection, concurrency: int = 64) -> Callable[[], list[bytes]]:
    """One range GET per chunk over one aiohttp session, *concurrency* in flight."""
    import aiohttp

    ranges = _ranges(ds, sel)

    def run() -> list[bytes]:
        out: list[bytes] = [b""] * len(ranges)

        async def main() -> None:
            conn = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=conn) as session:

                async def one(i: int, t: int, off: int, n: int) -> None:
                    headers = {"Range": f"bytes={off}-{off + n - 1}"}
                    async with session.get(f"{url}/{ds.name(t)}", headers=headers) as resp:
                        resp.raise_for_status()
                        out[i] = await resp.read()

                await asyncio.gather(*(one(i, *r) for i, r in enumerate(ranges)))

        asyncio.run(main())
        return out

    return run


def _s3_gets_limit(
    url: str, opts: dict[str, Any], ds: Dataset, sel: Selection, concurrency: int = 64
) -> Callable[[], list[bytes]]:
    """One s3fs ``_cat_file`` per chunk, *concurrency* in flight."""
    import s3fs

    ranges = _ranges(ds, sel)

    def run() -> list[bytes]:
        out: list[bytes] = [b""] * len(ranges)

        async def main() -> None:
            fs = s3fs.S3FileSystem(**opts, asynchronous=True, skip_instance_cache=True)
            await fs.set_session()
            sem = asyncio.Semaphore(concurrency)

            async def one(i: int, t: int, off: int, n: int) -> None:
                async with sem:
                    out[i] = await fs._cat_file(f"{url}/{ds.name(t)}", start=off, end=off + n)

            try:
                await asyncio.gather(*(one(i, *r) for i, r in enumerate(ranges)))
            finally:
                await fs._s3creator.__aexit__(None, None, None)

        asyncio.run(main())
        return out

    return run


def warm_up() -> None:
    """Start zarr's loop thread and import the gzip codec outside any timing."""
    import zarr
    from zarr.storage import MemoryStore

    arr = zarr.create_array(
        store=MemoryStore(), shape=(16,), chunks=(8,), dtype="int32", compressors=zarr.codecs.GzipCodec()
    )
    arr[:] = 1
    _ = arr[:]


# ----------------------------------------------------------------- the scenarios
def run(name: str, cfg: Config) -> list[Row]:
    """Run one of ``scattered_local``, ``scattered_http``, ``scattered_s3``."""
    warm_up()
    n_files, n_reads = sizes(cfg.quick)
    ds = dataset(cfg.cache_dir, n_files, cfg.verbose)
    sel = selection(ds, n_reads)
    kind = name.rsplit("_", 1)[1]
    preads = PreadCounter() if kind == "local" else None
    limits: dict[str, Callable[[], Any]] = {}  # raw reads (timed whole); zarr stores: makers
    if kind == "local":
        b = local_backend(cfg, ds.folder)
        limits["1 pread per chunk"] = _preads_limit(ds, sel)
        limits["zarr LocalStore"] = _localstore_limit(cfg.cache_dir, ds, sel)
    elif kind == "http":
        b = http_backend(cfg, ds.folder)
        limits["1 GET per chunk (aiohttp)"] = _http_gets_limit(b.url, ds, sel)
    elif kind == "s3":
        touched = sorted({int(t) for t in sel.t})  # untouched objects need not exist
        b = s3_backend(cfg, cfg.cache_dir, [ds.path(t) for t in touched])
        b.url = f"s3://{BUCKET}/{ds.folder.name}"
        limits["1 cat_file per chunk (s3fs)"] = _s3_gets_limit(b.url, b.options, ds, sel)
    else:
        raise ValueError(f"unknown scenario {name!r}")
    try:
        limits["zarr MemoryStore"] = _memory_limit(ds, sel)
        refs = ds.refs(b.url)
        check = _value_check(sel.expected)
        get = lambda arr: arr.get_coordinate_selection(sel.coords)  # noqa: E731
        makers: dict[str, Callable[[], Any]] = {FSSPEC: lambda: fsspec_store(refs, b)}
        refstore = import_refstore()
        if refstore is not None:
            makers[REF_STORE] = lambda: refstore_store(refs, b)
            if kind != "local":  # local references take the threaded sync path already (decode.py)
                makers[REF_WIDE] = lambda: refstore_store(refs, b)
            makers[REF_RFS] = lambda: refstore_rfs(refs, b)
        jobs = []
        for label, make in makers.items():
            counted = preads if label != FSSPEC else None
            reading = Reading(make, get, ARRAY, b.server, counted, WIDE_CONFIG if label == REF_WIDE else None)
            reps = cfg.slow_repeat if (label == FSSPEC and kind == "s3") else cfg.repeat
            jobs.append(Job(label, reading.read, check, reps, reading.before, reading.after))
        for lname, fn in limits.items():
            if lname.startswith("zarr"):  # a zarr store over the same chunks, opened untimed like the others
                reading = Reading(fn, get, ARRAY)
                jobs.append(Job(lname, reading.read, check, cfg.repeat, reading.before, reading.after))
            else:
                plain = Plain(fn, b.server, preads)
                jobs.append(Job(lname, fn, _raw_check(sel), cfg.repeat, plain.before, plain.after))
        reasons = _peer_jobs(jobs, refs, b, cfg, name, get, check)
        results = run_interleaved(jobs, cfg.verbose)
    finally:
        if b.server is not None:
            b.server.close()
    versus = [v for v in (REF_STORE, REF_WIDE) if v in results]

    def reqs(t: Timing | None) -> str:
        s = _last_stats(t)
        return str(s["requests"]) if s else "n/a"

    peer = peers.peer_rows(name, results, versus, next(iter(limits)), reasons, reqs if b.server is not None else None)
    return _rows(name, ds, sel, b, results, list(limits)) + peer


def _peer_jobs(
    jobs: list[Job],
    refs: dict[str, Any],
    b: Backend,
    cfg: Config,
    name: str,
    get: Callable[[Any], Any],
    check: Callable[[Any], None],
) -> dict[str, str]:
    """Append a job per peer (VirtualiZarr, Icechunk) reading the same selection; return why others cannot.

    As for refstore, building the store (or opening the Icechunk repository,
    written beforehand) and opening the array are untimed; the selection is timed.
    """
    makers, reasons = peers.peer_makers(refs, b, cfg.cache_dir / f"icechunk_{name}_{sizes(cfg.quick)[0]}")
    for peer, make in makers.items():
        reading = Reading(make, get, ARRAY, b.server)
        jobs.append(Job(peer, reading.read, check, cfg.repeat, reading.before, reading.after))
    return reasons


def _last_stats(t: Timing | None) -> dict[str, Any] | None:
    """Counters of the last repeat (None if unknown)."""
    if t is None or not t.times or not t.extra.get("after"):
        return None
    last = t.extra["after"][-1]
    return last if last and "requests" in last else None


def _median_cpu(t: Timing) -> float | None:
    """Median CPU seconds of this process over the repeats (all threads)."""
    cpus = [a["cpu"] for a in t.extra.get("after", []) if a and "cpu" in a]
    return statistics.median(cpus) if cpus else None


def _rows(
    name: str, ds: Dataset, sel: Selection, b: Backend, results: dict[str, Timing], limit_names: list[str]
) -> list[Row]:
    """Table rows: time vs each limit, then the read amplification."""
    need = needed_bytes(ds, sel)
    fs = results[FSSPEC]
    raw_limit = limit_names[0]

    def reqs(t: Timing | None) -> str:
        s = _last_stats(t)
        return str(s["requests"]) if s else "n/a"

    def amp(t: Timing | None) -> float | None:
        s = _last_stats(t)
        return s["bytes"] / need if s and "bytes" in s else None

    rows = []
    wide = [(REF_WIDE, limit_names[:1])] if REF_WIDE in results else []
    for variant, lnames in ((REF_STORE, limit_names), *wide, (REF_RFS, limit_names[:1])):
        rt = results.get(variant)
        for lname in lnames:
            lim = results[lname]
            errors = (rt.error if rt else "refstore not importable", fs.error, lim.error)
            rows.append(
                Row(
                    scenario=name,
                    variant=variant,
                    refstore=rt.median if rt else None,
                    fsspec=fs.median,
                    limit=lim.median,
                    limit_name=lname,
                    requests="/".join(reqs(t) for t in (rt, fs, lim)) if lname == raw_limit else "",
                    note="; ".join(e for e in errors if e),
                )
            )
    for variant in (REF_STORE, *(v for v, _ in wide), REF_RFS):
        rt = results.get(variant)
        rows.append(
            Row(
                scenario=name,
                variant=f"{variant}: bytes read / needed",
                unit="x",
                refstore=amp(rt),
                fsspec=amp(fs),
                limit=amp(results[raw_limit]),
                limit_name=raw_limit,
                requests="/".join(reqs(t) for t in (rt, fs, results[raw_limit])),
            )
        )
    mem = results["zarr MemoryStore"]
    rows.append(
        Row(
            scenario=name,
            variant=f"{REF_STORE}: CPU s of this process",
            unit="cpu s",
            refstore=_median_cpu(results[REF_STORE]) if REF_STORE in results else None,
            fsspec=_median_cpu(fs),
            limit=_median_cpu(mem),
            limit_name="zarr MemoryStore",
        )
    )
    rows[0].raw = {
        "n_files": ds.n_files,
        "n_reads": len(sel.t),
        "files_touched": len(set(sel.t.tolist())),
        "bytes_needed": need,
        "url": b.url,
        "timings": {k: v.to_json() for k, v in results.items()},
    }
    return rows


# ---------------------------------------------------------------------- the sweep
GAPS = (0, 4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB)
BLOCKS = (1 * MiB, 4 * MiB, 16 * MiB, 64 * MiB)
WAN = Link(latency=0.020, per_conn=100e6, total=1e9)


@dataclass
class Workload:
    """What the sweep reads: an array path and a read through zarr (or a ``cat`` of keys)."""

    name: str
    refs: dict[str, Any]
    path: str | None
    read: Callable[[Any], Any]
    check: Callable[[Any], None]
    need: int
    keys: list[str] = field(default_factory=list)


def _workloads(cfg: Config, args: argparse.Namespace, b: Backend, rel: dict[str, str]) -> list[Workload]:
    from .data import contiguous_file, contiguous_refs

    out = []
    if "scattered" in args.workloads:
        ds = dataset(cfg.cache_dir, args.n_files, cfg.verbose)
        sel = selection(ds, args.n_reads)
        out.append(
            Workload(
                "scattered",
                ds.refs(base_url(b, rel["scattered"])),
                ARRAY,
                lambda arr: arr.get_coordinate_selection(sel.coords),
                _value_check(sel.expected),
                needed_bytes(ds, sel),
            )
        )
    if "contiguous" in args.workloads or "cat" in args.workloads:
        path = contiguous_file(cfg.cache_dir, cfg.n_chunks, cfg.chunk_size)
        expected = np.fromfile(path, dtype=np.uint8)
        refs = contiguous_refs(f"{base_url(b, rel['contiguous'])}/{path.name}", cfg.n_chunks, cfg.chunk_size)
        if "contiguous" in args.workloads:
            out.append(Workload("contiguous", refs, None, lambda arr: arr[:], _value_check(expected), expected.nbytes))
        if "cat" in args.workloads:
            keys = [f"c/{i}" for i in range(cfg.n_chunks)]

            def check(value: dict[str, bytes], keys: list[str] = keys, expected: np.ndarray = expected) -> None:
                got = np.frombuffer(b"".join(value[k] for k in keys), dtype=np.uint8)
                _value_check(expected)(got)

            out.append(Workload("cat", refs, None, lambda fs, keys=keys: fs.cat(keys), check, expected.nbytes, keys))
    return out


def _cat_job(
    label: str, make: Callable[[], Any], w: Workload, b: Backend, preads: PreadCounter | None, reps: int
) -> Job:
    """``fs.cat(all keys)`` through a synchronous filesystem (timed: the cat)."""
    holder: dict[str, Any] = {}

    def before() -> None:
        holder["fs"] = make()
        if b.server is not None:
            b.server.reset()
        if preads is not None:
            preads.install()
        holder["cpu"] = time.process_time()

    def after() -> Any:
        cpu = time.process_time() - holder.pop("cpu")
        stats = preads.uninstall() if preads is not None else None
        if b.server is not None:
            stats = b.server.stats()
        fs = holder.pop("fs", None)
        reader = getattr(fs, "_reader", None)  # refstore's sessions live in fsspec's loop
        if reader is not None:
            from fsspec.asyn import sync

            sync(fs.loop, reader.close)
        return {**(stats or {}), "cpu": cpu}

    return Job(label, lambda: w.read(holder["fs"]), w.check, reps, before, after)


def _sweep_one(cfg: Config, args: argparse.Namespace, b: Backend, w: Workload, conc: int | None) -> dict[str, Any]:
    """Time fsspec and every (max_gap, max_block) of refstore on one workload/backend/concurrency."""
    import zarr

    preads = PreadCounter() if b.name == "local" else None
    jobs = []
    combos = [(g, k) for g in args.gaps for k in args.blocks]
    slow = b.name == "s3"
    if w.name == "cat":
        from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS

        refstore = import_refstore()
        assert refstore is not None
        fsspec_fs = lambda: FsspecRFS(  # noqa: E731
            fo=w.refs, remote_protocol=b.protocol, remote_options=b.options, skip_instance_cache=True
        )
        jobs.append(_cat_job(FSSPEC, fsspec_fs, w, b, None, cfg.slow_repeat if slow else cfg.repeat))
        for g, k in combos:
            make = lambda g=g, k=k: refstore.ReferenceFileSystem(  # noqa: E731
                w.refs, remote_protocol=b.protocol, remote_options=b.options, max_gap=g, max_block=k, **args.options
            )
            jobs.append(_cat_job(f"{g}/{k}", make, w, b, preads, cfg.repeat))
    else:
        fs_reading = Reading(lambda: fsspec_store(w.refs, b), w.read, w.path, b.server)
        jobs.append(Job(FSSPEC, fs_reading.read, w.check, cfg.slow_repeat if slow else cfg.repeat,
                        fs_reading.before, fs_reading.after))
        for g, k in combos:
            make = lambda g=g, k=k: refstore_store(w.refs, b, max_gap=g, max_block=k, **args.options)  # noqa: E731
            r = Reading(make, w.read, w.path, b.server, preads)
            jobs.append(Job(f"{g}/{k}", r.read, w.check, cfg.repeat, r.before, r.after))
    old = zarr.config.get("async.concurrency")
    try:
        if conc is not None:
            zarr.config.set({"async.concurrency": conc})
        results = run_interleaved(jobs, cfg.verbose)
    finally:
        zarr.config.set({"async.concurrency": old})
    cells = {}
    for label, t in results.items():
        s = _last_stats(t) or {}
        cells[label] = {
            "median": t.median,
            "cpu": _median_cpu(t),
            "times": t.times,
            "error": t.error,
            "requests": s.get("requests"),
            "amplification": s["bytes"] / w.need if "bytes" in s else None,
        }
    return {"backend": b.name, "workload": w.name, "concurrency": conc, "need": w.need, "cells": cells}


def _fmt_size(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= KiB and n % KiB == 0:
        return f"{n // KiB} KiB"
    return str(n)


def format_sweep(res: dict[str, Any], gaps: list[int], blocks: list[int]) -> str:
    """One table: rows max_gap, columns max_block; cells 'median s, requests, amplification'."""
    cells = res["cells"]
    fs = cells[FSSPEC]

    def cell(c: dict[str, Any]) -> str:
        if c["median"] is None:
            return f"FAILED {c['error']}"
        req = "?" if c["requests"] is None else str(c["requests"])
        amp = "" if c["amplification"] is None else f" {c['amplification']:.2f}x"
        cpu = "" if c.get("cpu") is None else f"/{c['cpu']:.2f}"
        return f"{c['median']:.3f}{cpu}s {req}r{amp}"

    conc = res["concurrency"] if res["workload"] != "cat" else "-"
    title = f"{res['workload']} / {res['backend']} / zarr async.concurrency {conc}: fsspec {cell(fs)}"
    head = ["max_gap \\ max_block"] + [_fmt_size(k) for k in blocks]
    body = [[_fmt_size(g)] + [cell(cells[f"{g}/{k}"]) for k in blocks] for g in gaps]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def sweep(argv: list[str]) -> int:
    """``python -m benchmarks.scattered sweep``: the max_gap x max_block grid."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.scattered sweep", description=sweep.__doc__)
    p.add_argument("--quick", action="store_true", help="100 files / 200 reads / 512 contiguous chunks, 2 repeats")
    p.add_argument("--backends", default="local,http,wan", help="comma list of local, http, wan, s3")
    p.add_argument("--workloads", default="scattered,contiguous,cat", help="comma list of scattered, contiguous, cat")
    p.add_argument("--concurrency", default="10,64", help="zarr async.concurrency values")
    p.add_argument("--gaps", default=",".join(map(str, GAPS)))
    p.add_argument("--blocks", default=",".join(map(str, BLOCKS)))
    p.add_argument("--repeat", type=int, default=None)
    p.add_argument("--latency-ms", type=float, default=WAN.latency * 1000, help="wan: first-byte latency")
    p.add_argument("--conn-mbps", type=float, default=WAN.per_conn / 1e6, help="wan: MB/s per connection")
    p.add_argument("--total-mbps", type=float, default=WAN.total / 1e6, help="wan: MB/s shared by all")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--servers-in-process", action="store_true")
    p.add_argument("--option", action="append", default=[], metavar="NAME=INT",
                   help="another refstore option for every cell, e.g. read_ahead=0 (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="write all results as JSON")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    a.backends = [x for x in a.backends.split(",") if x]
    a.workloads = [x for x in a.workloads.split(",") if x]
    a.gaps = [int(x) for x in a.gaps.split(",")]
    a.blocks = [int(x) for x in a.blocks.split(",")]
    concs = [int(x) for x in a.concurrency.split(",")]
    a.options = {k: int(v) for k, _, v in (o.partition("=") for o in a.option)}
    cfg = Config(quick=a.quick, servers_in_process=a.servers_in_process, verbose=not a.quiet,
                 cache_dir=a.cache_dir or default_cache_dir())
    cfg.repeat = a.repeat or (2 if a.quick else 3)
    if a.quick:
        cfg.n_chunks = 512
    a.n_files, a.n_reads = sizes(a.quick)
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warm_up()
    everything: list[dict[str, Any]] = []
    tables: list[str] = []
    for name in a.backends:
        rel = {"scattered": f"scattered_{a.n_files}", "contiguous": f"contig_{cfg.n_chunks}x{cfg.chunk_size}"}
        if "scattered" in a.workloads:
            dataset(cfg.cache_dir, a.n_files, cfg.verbose)
        if name == "local":
            b = local_backend(cfg, cfg.cache_dir)
        elif name in ("http", "wan"):
            link = Link(a.latency_ms / 1000, a.conn_mbps * 1e6, a.total_mbps * 1e6) if name == "wan" else None
            b = http_backend(cfg, cfg.cache_dir, link)
        elif name == "s3":
            files: list[Path] = []
            if "scattered" in a.workloads:
                ds = dataset(cfg.cache_dir, a.n_files, False)
                sel = selection(ds, a.n_reads)
                files += [ds.path(t) for t in sorted({int(t) for t in sel.t})]
            if {"contiguous", "cat"} & set(a.workloads):
                from .data import contiguous_file

                files.append(contiguous_file(cfg.cache_dir, cfg.n_chunks, cfg.chunk_size))
            b = s3_backend(cfg, cfg.cache_dir, files)
        else:
            raise SystemExit(f"unknown backend {name!r}")
        try:
            for w in _workloads(cfg, a, b, rel):
                for conc in concs if w.name != "cat" else [None]:
                    if cfg.verbose:
                        print(f"== sweep {w.name} / {b.name} / concurrency {conc}", flush=True)
                    res = _sweep_one(cfg, a, b, w, conc)
                    everything.append(res)
                    tables.append(format_sweep(res, a.gaps, a.blocks))
                    if cfg.verbose:
                        print(tables[-1], flush=True)
        finally:
            if b.server is not None:
                b.server.close()
    print()
    print("\n\n".join(tables))
    print("\ncells: median wall/CPU seconds (CPU: this process, all threads), requests (server side;"
          " local: refstore's preads), bytes read / bytes needed")
    if a.out is not None:
        doc = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
            "sweep": {"gaps": a.gaps, "blocks": a.blocks, "concurrency": concs, "n_files": a.n_files,
                      "n_reads": a.n_reads, "options": a.options, "wan": [a.latency_ms, a.conn_mbps, a.total_mbps]},
            "results": everything,
        }
        a.out.write_text(json.dumps(doc, indent=1, default=str))
        print(f"wrote {a.out}")
    return 0


def _serve(argv: list[str]) -> None:
    """Subprocess entry: ``serve http ROOT LATENCY PER_CONN TOTAL`` or ``serve s3``; prints ``PORT n``."""
    from .servers import _exit_with_parent

    _exit_with_parent()
    if argv[0] == "http":
        link = Link(*(float(x) for x in argv[2:5]))
        _run_http(Path(argv[1]), link, lambda p: print(f"PORT {p}", flush=True), None)
    elif argv[0] == "s3":
        srv = _make_s3_server()
        print(f"PORT {srv.server_port}", flush=True)
        srv.serve_forever()
    else:
        raise SystemExit(f"unknown server kind {argv[0]!r}")


def main(argv: list[str] | None = None) -> int:
    """``serve ...`` (internal) or ``sweep ...``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        _serve(argv[1:])
        return 0
    if argv and argv[0] == "sweep":
        return sweep(argv[1:])
    print("usage: python -m benchmarks.scattered sweep [options]   (see --help);\n"
          "the scenarios run with: python -m benchmarks --only scattered", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
