"""Transports compared: obstore (Rust) against refstore's own targets (aiohttp for HTTP, s3fs for S3).

``python -m benchmarks.transport [--quick] [--repeat N] [--concurrency N] [--backends http,s3]``
reads the same byte ranges through each transport, one request per range,
*concurrency* requests in flight (an ``asyncio.Semaphore``), and checks every
answer against the file's bytes:

* ``scattered``: the chunks of the ``scattered_*`` selection (2,000 ranges of
  8-64 KiB over ~870 files; 200 over 100 files with ``--quick``);
* ``contiguous``: the 4,096 8 KiB chunks of the ``contiguous_*`` file (512);
* ``blocks``: the same file in 1 MiB ranges (what the fetcher's merging sends).

Timed: making the client (session, filesystem or store) and all the reads.
The servers are the byte-counting loopback aiohttp server and moto of
:mod:`benchmarks.scattered`, in subprocesses.  refstore's targets are used as the
fetcher uses them (:class:`~refstore.fetch._http.HTTPTarget`,
:class:`~refstore.fetch._targets.FsspecTarget`), without the fetcher's merging,
so that only the transport differs; obstore reads with ``get_range_async`` per
range (not ``get_ranges_async``, which would merge ranges itself).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import Config, default_cache_dir
from .data import contiguous_file
from .scattered import BUCKET, ByteServer, dataset, selection, sizes
from .servers import s3_options, set_dummy_aws_env

#: ``(object path relative to the served root, start, end)``
Span = tuple[str, int, int]
BLOCK = 1 << 20


@dataclass
class Workload:
    """Ranges to read and the CRC-32 each answer must have."""

    name: str
    spans: list[Span]
    crcs: list[int]

    @property
    def nbytes(self) -> int:
        return sum(e - s for _, s, e in self.spans)


def _workloads(cfg: Config, root: Path) -> list[Workload]:
    """The three workloads, with paths relative to *root* (the cache directory)."""
    n_files, n_reads = sizes(cfg.quick)
    ds = dataset(root, n_files, cfg.verbose)
    sel = selection(ds, n_reads)
    scattered = [(f"{ds.folder.name}/{ds.name(int(t))}", int(ds.offsets[t, k]), int(ds.offsets[t, k] + ds.lengths[t, k]))
                 for t, k in zip(sel.t.tolist(), sel.k.tolist())]
    path = contiguous_file(root, cfg.n_chunks, cfg.chunk_size)
    rel = path.relative_to(root).as_posix()
    size = path.stat().st_size
    small = [(rel, i * cfg.chunk_size, (i + 1) * cfg.chunk_size) for i in range(cfg.n_chunks)]
    blocks = [(rel, s, min(s + BLOCK, size)) for s in range(0, size, BLOCK)]
    out = []
    for name, spans in (("scattered", scattered), ("contiguous", small), ("blocks", blocks)):
        crcs = []
        for rel_path, s, e in spans:
            with open(root / rel_path, "rb") as f:
                f.seek(s)
                crcs.append(zlib.crc32(f.read(e - s)))
        out.append(Workload(name, spans, crcs))
    return out


# -------------------------------------------------------------------- transports
Reader = Callable[[str, int, int], Awaitable[bytes]]


async def _refstore_http(base: str) -> tuple[Reader, Callable[[], Awaitable[None]]]:
    from refstore.fetch._http import HTTPTarget

    target = HTTPTarget({}, lambda url: None)

    async def read(rel: str, s: int, e: int) -> bytes:
        return (await target.read(f"{base}/{rel}", [(s, e)]))[0]

    return read, target.close


async def _refstore_s3(opts: dict[str, Any]) -> tuple[Reader, Callable[[], Awaitable[None]]]:
    from refstore.fetch._targets import FsspecTarget

    target = FsspecTarget("s3", opts)

    async def read(rel: str, s: int, e: int) -> bytes:
        return (await target.read(f"s3://{BUCKET}/{rel}", [(s, e)]))[0]

    return read, target.close


async def _plain_aiohttp(base: str) -> tuple[Reader, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession()

    async def read(rel: str, s: int, e: int) -> bytes:
        async with session.get(f"{base}/{rel}", headers={"Range": f"bytes={s}-{e - 1}"}) as resp:
            resp.raise_for_status()
            return await resp.read()

    return read, session.close


async def _plain_s3fs(opts: dict[str, Any]) -> tuple[Reader, Callable[[], Awaitable[None]]]:
    import s3fs

    fs = s3fs.S3FileSystem(**opts, asynchronous=True, skip_instance_cache=True)
    await fs.set_session()

    async def read(rel: str, s: int, e: int) -> bytes:
        return bytes(await fs._cat_file(f"{BUCKET}/{rel}", start=s, end=e))

    async def close() -> None:
        await fs._s3creator.__aexit__(None, None, None)

    return read, close


def _obstore_reader(store: Any) -> tuple[Reader, Callable[[], Awaitable[None]]]:
    import obstore

    async def read(rel: str, s: int, e: int) -> bytes:
        return bytes(await obstore.get_range_async(store, rel, start=s, end=e))

    async def close() -> None:
        return None

    return read, close


async def _obstore_http(base: str) -> tuple[Reader, Callable[[], Awaitable[None]]]:
    from obstore.store import HTTPStore

    return _obstore_reader(HTTPStore.from_url(base, client_options={"allow_http": True}))


async def _obstore_s3(opts: dict[str, Any]) -> tuple[Reader, Callable[[], Awaitable[None]]]:
    from obstore.store import S3Store

    store = S3Store(BUCKET, endpoint=opts["client_kwargs"]["endpoint_url"], access_key_id=opts["key"],
                    secret_access_key=opts["secret"], region="us-east-1", virtual_hosted_style_request=False,
                    client_options={"allow_http": True})
    return _obstore_reader(store)


async def _read_all(make: Callable[[], Awaitable[tuple[Reader, Callable[[], Awaitable[None]]]]],
                    w: Workload, concurrency: int) -> list[bytes]:
    read, close = await make()
    sem = asyncio.Semaphore(concurrency)

    async def one(span: Span) -> bytes:
        async with sem:
            return await read(*span)

    try:
        return list(await asyncio.gather(*(one(sp) for sp in w.spans)))
    finally:
        await close()


def _check(w: Workload, got: list[bytes]) -> None:
    for i, (blob, crc) in enumerate(zip(got, w.crcs)):
        if zlib.crc32(blob) != crc:
            raise AssertionError(f"{w.name}: range {w.spans[i]} came back wrong ({len(blob)} bytes)")


def _time(make: Any, w: Workload, concurrency: int, server: ByteServer, repeat: int) -> dict[str, Any]:
    """Median wall and CPU seconds over *repeat* runs (after one untimed warm-up), and the requests."""
    walls, cpus, reqs = [], [], 0
    for r in range(repeat + 1):
        server.reset()
        t0, c0 = time.perf_counter(), time.process_time()
        got = asyncio.run(_read_all(make, w, concurrency))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        _check(w, got)
        reqs = server.stats()["requests"]
        if r:
            walls.append(wall)
            cpus.append(cpu)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "requests": reqs, "walls": walls}


async def _redirect_probe() -> list[str]:
    """Does obstore follow a cross-host redirect?  One loopback server answers every GET with
    ``307`` to another loopback server (another port), which answers ``206 EVIL``; each obstore
    store (S3, HTTP) reads 4 bytes, with ``max_retries=0``.  Returns one line per store."""
    import obstore
    from aiohttp import web
    from obstore.store import HTTPStore, S3Store

    seen: list[str] = []

    async def start(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_route("GET", "/{p:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, runner.addresses[0][1]

    async def elsewhere(req: web.Request) -> web.StreamResponse:
        seen.append(f"other host got {req.path} Range={req.headers.get('Range')} "
                    f"Authorization={'yes' if 'Authorization' in req.headers else 'no'}")
        return web.Response(status=206, body=b"EVIL", headers={"Content-Range": "bytes 0-3/4"})

    other, other_port = await start(elsewhere)

    async def redirect(req: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{other_port}/elsewhere")

    origin, port = await start(redirect)
    stores = {
        "S3Store": S3Store("bkt", endpoint=f"http://127.0.0.1:{port}", access_key_id="a", secret_access_key="b",
                           region="us-east-1", virtual_hosted_style_request=False,
                           client_options={"allow_http": True}, retry_config={"max_retries": 0}),
        "HTTPStore": HTTPStore.from_url(f"http://127.0.0.1:{port}", client_options={"allow_http": True},
                                        retry_config={"max_retries": 0}),
    }
    out = []
    try:
        for name, store in stores.items():
            seen.clear()
            try:
                got = bytes(await obstore.get_range_async(store, "key", start=0, end=4))
                out.append(f"obstore {name}: followed the redirect, returned {got!r}; {'; '.join(seen)}")
            except Exception as exc:
                out.append(f"obstore {name}: refused ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    finally:
        await origin.cleanup()
        await other.cleanup()
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print one table per backend."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.transport", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--backends", default="http,s3")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--redirect-probe", action="store_true",
                   help="only check whether obstore follows a cross-host redirect (refstore's URL policy needs "
                        "every hop checked, or redirects refused)")
    a = p.parse_args(argv)
    if a.redirect_probe:
        print("\n".join(asyncio.run(_redirect_probe())))
        return 0
    cfg = Config(quick=a.quick, cache_dir=a.cache_dir or default_cache_dir())
    if a.quick:
        cfg.n_chunks = 512
    root = cfg.cache_dir
    loads = _workloads(cfg, root)
    lines = [f"{'backend':8} {'workload':11} {'ranges':>6} {'MiB':>6}  {'transport':29} {'s':>7} {'cpu s':>7} "
             f"{'requests':>8}  {'refstore/this':>13}"]
    for backend in a.backends.split(","):
        if backend == "http":
            server = ByteServer("http", root)
            base = server.url
            makers = {"refstore aiohttp (HTTPTarget)": lambda base=base: _refstore_http(base),
                      "obstore HTTPStore": lambda base=base: _obstore_http(base),
                      "plain aiohttp session.get": lambda base=base: _plain_aiohttp(base)}
        elif backend == "s3":
            import s3fs

            set_dummy_aws_env()
            server = ByteServer("s3")
            opts = s3_options(server.url)
            fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
            fs.mkdir(BUCKET)
            files = sorted({rel for w in loads for rel, _, _ in w.spans})
            fs.put([str(root / f) for f in files], [f"{BUCKET}/{f}" for f in files], batch_size=8)
            makers = {"refstore s3fs (FsspecTarget)": lambda opts=opts: _refstore_s3(opts),
                      "obstore S3Store": lambda opts=opts: _obstore_s3(opts),
                      "plain s3fs _cat_file": lambda opts=opts: _plain_s3fs(opts)}
        else:
            raise SystemExit(f"unknown backend {backend!r}")
        try:
            for w in loads:
                res = {}
                for label, make in makers.items():
                    try:
                        res[label] = _time(make, w, a.concurrency, server, a.repeat)
                    except Exception as exc:  # obstore not installed, a failed check, ...
                        res[label] = {"wall": None, "cpu": None, "requests": "-", "walls": [],
                                      "error": f"{type(exc).__name__}: {exc}"}
                    print(f"  {backend} {w.name} {label}: {res[label]['walls']}", flush=True)
                ref = next(iter(res.values()))
                for label, r in res.items():
                    if r["wall"] is None:
                        lines.append(f"{backend:8} {w.name:11} {len(w.spans):>6} {w.nbytes / 2**20:>6.1f}  "
                                     f"{label:29} FAILED: {r['error']}")
                        continue
                    ratio = f"{ref['wall'] / r['wall']:.2f}x" if r is not ref and ref["wall"] else ""
                    lines.append(f"{backend:8} {w.name:11} {len(w.spans):>6} {w.nbytes / 2**20:>6.1f}  {label:29} "
                                 f"{r['wall']:>7.3f} {r['cpu']:>7.3f} {r['requests']:>8}  {ratio:>13}")
        finally:
            server.close()
    print()
    print("\n".join(lines))
    print(f"\nmedians of {a.repeat} (after a warm-up run); {a.concurrency} requests in flight; "
          "cpu s = this process (all threads); refstore/this > 1: this transport is faster than refstore's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
