"""``refstore serve`` under load, side by side: ``python -m benchmarks.serve [--quick]``.

Three servers answer the same chunk keys over loopback HTTP, each in its own process:

* ``refstore``: ``refstore.serve.app`` under uvicorn (one worker), hot-chunk cache off
  (``cache_bytes = 0``: every request reads the source, and transcodes);
* ``refstore_cached``: the same with a 256 MiB cache, filled by one pass before timing;
* ``peer``: what zarr-python's experimental ``zarr.experimental.serve.serve_store`` does (a
  Starlette route answering each key with one ``store.get``), over ``refstore.ReferenceStore``
  on the same manifest, under uvicorn. zarr's module is not in any released zarr (3.4.2 is the
  newest on PyPI), so this is a re-statement of its request path, not the package itself;
* ``nginx`` (the limit, when Debian's nginx is installed): static files of a materialized
  copy of the chunks refstore serves, one worker.

Workloads: ``contiguous`` (4,096 uncompressed 8 KiB chunks of one file, in key order),
``scattered`` (the same keys shuffled), ``remote`` (the scattered read of the same chunks
behind a source answering after 20 ms, as a distant object store would) and ``png`` (256
PNG tiles of 256x256 RGB, which refstore transcodes to gzip; the peer passes the PNG bytes
through, which a client without refstore's codec cannot decode, and nginx serves refstore's
gzip'd output as files). The load comes from wrk (Debian's ``wrk``: one C thread, 1, 16 and 64
connections, ``--seconds`` a run, every body compared byte for byte by ``serve_load.lua``), or
with ``--client aiohttp`` from coroutines in this process (which cap every server near 6,000
chunks/s on 2 cores). Printed: chunks/s, p50/p99 latency (ms) and the server's CPU time per
chunk (steadier than wall time on shared cores), medians of ``--repeat`` runs, the servers
interleaved. ``--soak SECONDS``: one wrk run of 64 connections over all keys mixed against one
refstore server with a 16 MiB cache (smaller than the data: it keeps evicting), reporting
requests, failures, wrong bodies and the server's memory at start, middle and end.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHUNK = 8192
#: The served datasets (manifests ``<name>.json`` under the data folder).
DATASETS = ("contig", "png", "remote")
#: First-byte delay of the remote source (s), as a distant object store would answer.
REMOTE_DELAY = 0.02


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------- data
def make_data(root: Path, n_chunks: int, n_tiles: int) -> dict[str, Any]:
    """Write the chunk file, the PNG tiles and their manifests under *root*."""
    import imagecodecs
    import numpy as np

    from refstore.build._common import array_metadata, group_metadata

    root.mkdir(parents=True, exist_ok=True)
    blob = np.random.default_rng(0).bytes(n_chunks * CHUNK)
    (root / "chunks.bin").write_bytes(blob)
    zarray = {"shape": [n_chunks * CHUNK], "chunks": [CHUNK], "dtype": "|u1", "fill_value": 0, "order": "C",
              "filters": None, "compressor": None, "dimension_separator": ".", "zarr_format": 2}
    refs: dict[str, Any] = {".zgroup": json.dumps({"zarr_format": 2}), "a/.zarray": json.dumps(zarray)}
    for i in range(n_chunks):
        refs[f"a/{i}"] = [str(root / "chunks.bin"), i * CHUNK, CHUNK]
    (root / "contig.json").write_text(json.dumps({"version": 1, "refs": refs}))
    side = int(n_tiles ** 0.5)
    yy, xx = np.mgrid[0:256, 0:256]
    tiles = root / "tiles"
    tiles.mkdir(exist_ok=True)
    prefs: dict[str, Any] = {"zarr.json": group_metadata().decode()}
    prefs["png/zarr.json"] = array_metadata((side * 256, side * 256, 3), (256, 256, 3), np.dtype("u1"), "yxc",
                                            ["y", "x", "c"]).decode()
    pixels = {}
    for r in range(side):
        for c in range(side):
            tile = np.stack([(xx + c * 7) % 256, (yy + r * 5) % 256, (xx * yy + r + c) % 251], -1).astype("u1")
            path = tiles / f"{r}_{c}.png"
            path.write_bytes(imagecodecs.png_encode(tile))
            prefs[f"png/c/{r}/{c}/0"] = [str(path)]
            pixels[f"png/{r}/{c}/0"] = hashlib.sha1(tile.tobytes()).hexdigest()
    (root / "png.json").write_text(json.dumps({"version": 1, "refs": prefs}))
    expected = {f"a/{i}": hashlib.sha1(blob[i * CHUNK:(i + 1) * CHUNK]).hexdigest() for i in range(n_chunks)}
    return {"contig": expected, "png_pixels": pixels, "blob": blob}


# ---------------------------------------------------------------------- servers
def peer_app(root: Path) -> Any:
    """A Starlette app answering each key with one ``ReferenceStore.get`` (zarr's serve_store request path)."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route
    from zarr.core.buffer import default_buffer_prototype

    import refstore

    stores = {name: refstore.ReferenceStore(str(root / f"{name}.json")) for name in DATASETS
              if (root / f"{name}.json").exists()}
    proto = default_buffer_prototype()

    async def handle(request: Any) -> Response:
        store = stores.get(request.path_params["dataset"])
        if store is None:
            return Response(status_code=404)
        buf = await store.get(request.path_params["key"], proto)
        return Response(status_code=404) if buf is None else Response(buf.to_bytes(), media_type="application/octet-stream")

    return Starlette(routes=[Route("/{dataset}/{key:path}", handle, methods=["GET"])])


def refstore_app(root: Path, cache_bytes: int) -> Any:
    from refstore.serve import app

    return app({name: {"source": str(root / f"{name}.json"), "cache_bytes": cache_bytes} for name in DATASETS
                if (root / f"{name}.json").exists()}, queue_limit=100_000)


def source_app(root: Path, delay: float) -> Any:
    """The remote source: aiohttp serving *root* (ranges), holding every answer back *delay* seconds."""
    from aiohttp import web

    from benchmarks.servers import Counter, _http_app

    application = _http_app(root, Counter())

    @web.middleware
    async def slow(request: web.Request, handler: Any) -> Any:
        await asyncio.sleep(delay)
        return await handler(request)

    application.middlewares.append(slow)
    return application


def _serve_source(root: Path, port: int, delay: float) -> None:
    from aiohttp import web

    web.run_app(source_app(root, delay), host="127.0.0.1", port=port, print=None, access_log=None)


def _serve_main(kind: str, root: Path, port: int, cache_bytes: int) -> None:
    import uvicorn

    if kind == "source":
        _serve_source(root, port, REMOTE_DELAY)
        return
    application = peer_app(root) if kind == "peer" else refstore_app(root, cache_bytes)
    uvicorn.run(application, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Server:
    """A server in its own process (``refstore``, ``peer`` or ``nginx``)."""

    def __init__(self, kind: str, root: Path, cache_bytes: int = 0) -> None:
        self.kind = kind
        self.port = _free_port()
        if kind == "nginx":
            conf = root / "nginx.conf"
            conf.write_text(f"""
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    server {{ listen 127.0.0.1:{self.port}; root {root}/materialized; }}
}}
""")
            self.proc = subprocess.Popen([_nginx(), "-c", str(conf), "-p", str(root)])
        else:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                                 os.environ.get("PYTHONPATH", "")])}
            self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.serve", "--serve", kind.split("_")[0], "--root", str(root),
                                          "--port", str(self.port), "--cache-bytes", str(cache_bytes)], env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} server did not start") from None
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the server process and its children so far."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        pids = [self.proc.pid]
        try:
            pids += [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except OSError:
            pass
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def _nginx() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


# ----------------------------------------------------------------------- client
async def run_clients(base: str, keys: list[str], clients: int, check: Any) -> dict[str, float]:
    """GET every key with *clients* concurrent coroutines; chunks/s, p50, p99 (ms), failures."""
    import aiohttp

    latencies: list[float] = []
    failures = 0
    it = iter(keys)
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def worker() -> None:
            nonlocal failures
            for key in it:
                t0 = time.perf_counter()
                async with session.get(f"{base}/{key}") as resp:
                    body = await resp.read()
                    ok = resp.status == 200 and check(key, body)
                latencies.append(time.perf_counter() - t0)
                failures += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {"chunks_per_s": len(keys) / wall, "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], "failures": failures}


def _checker(expected: dict[str, str], pixels: dict[str, str], kind: str) -> Any:
    def check(key: str, body: bytes) -> bool:
        if key.startswith("png/"):
            if kind == "peer":
                return body[:4] == b"\x89PNG"  # passed through: the client would need refstore's codec
            return hashlib.sha1(gzip.decompress(body)).hexdigest() == pixels[key.removeprefix("png/")]
        return hashlib.sha1(body).hexdigest() == expected[key.split("/", 1)[1]]

    return check


def _wrk() -> str | None:
    return shutil.which("wrk")


LOAD_SCRIPT = Path(__file__).resolve().parent / "serve_load.lua"


def write_load(folder: Path, name: str, keys: list[str], bodies: list[bytes]) -> tuple[Path, Path]:
    """The files :data:`LOAD_SCRIPT` reads: *keys* as paths, and the body each must answer with."""
    folder.mkdir(parents=True, exist_ok=True)
    keys_file, bodies_file = folder / f"{name}.keys", folder / f"{name}.bodies"
    keys_file.write_text("".join(f"/{k}\n" for k in keys))
    with bodies_file.open("wb") as f:
        for body in bodies:
            f.write(b"%d\n" % len(body))
            f.write(body)
    return keys_file, bodies_file


def run_wrk(base: str, load: tuple[Path, Path], clients: int, seconds: float, start: int = 0) -> dict[str, float]:
    """wrk (one thread: C, a fraction of a core) GETting the keys of *load* round and round with
    *clients* connections for *seconds*, every body compared byte for byte; chunks/s, p50, p99 (ms),
    failures (a status other than 200, a socket error, a wrong body, answers that do not balance)."""
    wrk = _wrk()
    assert wrk is not None
    cmd = [wrk, "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(LOAD_SCRIPT), base,
           "--", str(load[0]), str(load[1]), str(start)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    extra = _unanswered_beyond(got, clients)
    return {"chunks_per_s": got["requests"] / got["seconds"], "p50_ms": got["p50_ms"], "p99_ms": got["p99_ms"],
            "failures": got["failed"] + got["socket_errors"], "wrong": got["wrong"] + got["unbalanced_negative"] + extra,
            "requests": got["requests"]}


def _unanswered_beyond(got: dict[str, int], clients: int) -> int:
    """Requests counted up and never answered, beyond what is due: at the end each connection may
    still wait for one answer, wrk asks the script for one request it never sends (to check the
    script), and a failed answer balances nothing."""
    return max(0, got["unbalanced_positive"] - clients - 1 - got["failed"] - got["socket_errors"])


def peer_key(key: str) -> str:
    """The key the peer serves for served key *key*: the manifest's own (refstore serves zarr 3
    arrays with zarr 2's chunk key encoding, so ``png/png/0/1/0`` is the store's ``png/png/c/0/1/0``)."""
    if key.startswith("png/"):
        name, array, rest = key.split("/", 2)
        return f"{name}/{array}/c/{rest}"
    return key


def expected_bodies(kind: str, keys: list[str], data: dict[str, Any], root: Path, served: dict[str, bytes]) -> list[bytes]:
    """What server *kind* must answer for each key: the chunk's bytes; for a PNG tile, refstore's gzip
    (checked against the pixels in :func:`served_tiles`), or the PNG file the peer passes through."""
    blob = data["blob"]
    out = []
    for key in keys:
        if key.startswith("png/"):
            if kind == "peer":
                r, c = key.split("/")[2:4]
                out.append((root / "tiles" / f"{r}_{c}.png").read_bytes())
            else:
                out.append(served[key])
        else:
            i = int(key.rsplit("/", 1)[1])
            out.append(blob[i * CHUNK:(i + 1) * CHUNK])
    return out


def served_tiles(base: str, png: list[str], pixels: dict[str, str]) -> dict[str, bytes]:
    """refstore's answers for the PNG tiles, each checked: its gzip holds the tile's pixels."""
    import urllib.request

    out = {}
    for key in png:
        with urllib.request.urlopen(f"{base}/{key}") as resp:
            body = resp.read()
        if hashlib.sha1(gzip.decompress(body)).hexdigest() != pixels[key.removeprefix("png/")]:
            raise AssertionError(f"refstore's {key} does not hold the tile's pixels")
        out[key] = body
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of process *pid* (MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def soak(root: Path, data: dict[str, Any], keys: list[str], seconds: float, clients: int, cache_bytes: int) -> None:
    """*clients* clients reading *keys* round and round from one refstore server for *seconds*
    (one wrk run checking every body); prints the server's memory every ~10% of the time, then
    requests, failures, wrong answers and the memory at start, middle and end."""
    server = Server("refstore", root, cache_bytes)
    samples: list[tuple[float, float]] = []
    try:
        png = [k for k in keys if k.startswith("png/")]
        served = served_tiles(server.url, png, data["png_pixels"])
        load = write_load(root / "load", "soak", keys, expected_bodies("refstore", keys, data, root, served))
        samples.append((0.0, rss_mib(server.proc.pid)))
        print(f"soak start: server RSS {samples[0][1]:.0f} MiB (after one pass over the tiles)", flush=True)
        wrk = _wrk()
        assert wrk is not None
        cmd = [wrk, "-t1", f"-c{clients}", f"-d{seconds:g}s", "--timeout", "30s", "-s", str(LOAD_SCRIPT), server.url,
               "--", str(load[0]), str(load[1]), "0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        start = time.monotonic()
        while proc.poll() is None:
            time.sleep(min(10.0, seconds / 60))
            elapsed = time.monotonic() - start
            samples.append((elapsed, rss_mib(server.proc.pid)))
            if len(samples) % 6 == 0:
                print(f"soak {elapsed:6.0f} s: server RSS {samples[-1][1]:.0f} MiB", flush=True)
        out, _ = proc.communicate()
        got = json.loads(out.strip().splitlines()[-1])
    finally:
        server.stop()
    extra = _unanswered_beyond(got, clients)
    wrong = got["wrong"] + got["unbalanced_negative"] + extra
    mid = min(samples, key=lambda s: abs(s[0] - seconds / 2))
    peak = max(m for _, m in samples)
    print("\n| requests | chunks/s | p50 / p99 ms | failed | wrong bytes | server RSS start / middle / end / peak (MiB) |")
    print("|---|---|---|---|---|---|")
    print(f"| {got['requests']:,} | {got['requests'] / got['seconds']:,.0f} | {got['p50_ms']:.1f} / {got['p99_ms']:.1f} | "
          f"{got['failed'] + got['socket_errors']} | {wrong} | {samples[0][1]:.0f} / {mid[1]:.0f} / {samples[-1][1]:.0f} / "
          f"{peak:.0f} |")


def materialize(root: Path, base: str, keys: list[str]) -> None:
    """Write what refstore serves for *keys* as static files (nginx's copy)."""
    import urllib.request

    for key in keys:
        path = root / "materialized" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(f"{base}/{key}") as resp:
            path.write_bytes(resp.read())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1,024 chunks and 64 tiles, one repeat")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--clients", default="1,16,64")
    p.add_argument("--servers", default="refstore,refstore_cached,peer,nginx")
    p.add_argument("--workloads", default="contiguous,scattered,png,remote")
    p.add_argument("--soak", type=float, default=0, metavar="SECONDS",
                   help="instead: 64 clients (--clients) on refstore for SECONDS, all workloads mixed; failures and memory")
    p.add_argument("--client", choices=("wrk", "aiohttp"), default=None,
                   help="load generator: wrk (default when installed: C, checks every body) or aiohttp coroutines here")
    p.add_argument("--seconds", type=float, default=None, help="with wrk: seconds each run lasts (default 4; --quick 2)")
    p.add_argument("--soak-cache-bytes", type=int, default=16 * 2**20,
                   help="the soaked server's hot-chunk cache (default 16 MiB: smaller than the data, so it churns)")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cache-bytes", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.serve:
        _serve_main(a.serve, a.root, a.port, a.cache_bytes)
        return
    n_chunks, n_tiles, repeat = (1024, 64, 1) if a.quick else (4096, 256, a.repeat)
    root = Path(tempfile.mkdtemp(prefix="refstore-serve-bench-"))
    root.chmod(0o755)  # nginx's workers run as another user
    data = make_data(root, n_chunks, n_tiles)
    contig = [f"contig/a/{i}" for i in range(n_chunks)]
    scattered = random.Random(1).sample(contig, len(contig))
    png = [f"png/{k}" for k in data["png_pixels"]]
    remote = [f"remote/a/{i}" for i in range(n_chunks)]
    workloads = {"contiguous": contig, "scattered": scattered, "png": png,
                 "remote": random.Random(3).sample(remote, len(remote))}
    workloads = {k: v for k, v in workloads.items() if k in a.workloads.split(",")}
    client = a.client or ("wrk" if _wrk() else "aiohttp")
    seconds = a.seconds or (2.0 if a.quick else 4.0)
    if a.soak:
        if _wrk() is None:
            raise SystemExit("the soak runs wrk (Debian: apt-get install wrk)")
        mixed = random.Random(2).sample(contig + png, len(contig) + len(png))
        soak(root, data, mixed, a.soak, int(a.clients.split(",")[-1]), a.soak_cache_bytes)
        shutil.rmtree(root, ignore_errors=True)
        return
    print(f"load generator: {client}" + (f", {seconds:g} s a run" if client == "wrk" else "") +
          f"; servers: uvicorn {_version('uvicorn')} (httptools {_version('httptools')}, uvloop {_version('uvloop')})"
          f"; load average {os.getloadavg()[0]:.1f}", flush=True)
    kinds = [k for k in a.servers.split(",") if k != "nginx" or os.path.exists(_nginx())]
    servers: dict[str, Server] = {}
    rows = []
    try:
        if "remote" in workloads:  # the same chunks behind a slow source (a distant object store)
            servers["source"] = source = Server("source", root)
            refs = json.loads((root / "contig.json").read_text())
            refs["refs"] = {k: [f"{source.url}/chunks.bin", *v[1:]] if isinstance(v, list) else v
                            for k, v in refs["refs"].items()}
            (root / "remote.json").write_text(json.dumps(refs))
        if "nginx" in kinds:
            ref = Server("refstore", root)
            materialize(root, ref.url, contig + png)
            ref.stop()
            shutil.copytree(root / "materialized" / "contig", root / "materialized" / "remote")
        for kind in kinds:
            servers[kind] = Server(kind, root, 256 * 2**20 if kind == "refstore_cached" else 0)
        if "refstore_cached" in servers:  # every chunk in its cache before timing
            warm = contig + png + (workloads.get("remote") or [])
            asyncio.run(run_clients(servers["refstore_cached"].url, warm, 16, lambda k, b: True))
        loads: dict[tuple[str, str], tuple[Path, Path]] = {}
        if client == "wrk":
            ref = next((servers[k] for k in ("refstore", "refstore_cached") if k in servers), None)
            served = served_tiles(ref.url, png, data["png_pixels"]) if ref is not None and "png" in workloads else {}
            for kind in kinds:
                for workload, keys in workloads.items():
                    asked = [peer_key(k) for k in keys] if kind == "peer" else keys
                    loads[kind, workload] = write_load(root / "load", f"{kind}-{workload}", asked,
                                                       expected_bodies(kind, keys, data, root, served))
        for workload, keys in workloads.items():
            for clients in (int(c) for c in a.clients.split(",")):
                runs: dict[str, list[dict[str, float]]] = {}
                for _ in range(repeat):  # servers interleaved: the shared cores' noise hits all alike
                    for kind in kinds:
                        server = servers[kind]
                        check = _checker(data["contig"], data["png_pixels"], kind)
                        cpu0 = server.cpu_seconds()
                        if client == "wrk":
                            result = run_wrk(server.url, loads[kind, workload], clients, seconds)
                        else:
                            asked = [peer_key(k) for k in keys] if kind == "peer" else keys
                            result = asyncio.run(run_clients(server.url, asked, clients, check))
                            result["requests"], result["wrong"] = len(keys), 0
                        result["cpu_us"] = 1e6 * (server.cpu_seconds() - cpu0) / max(1, result["requests"])
                        runs.setdefault(kind, []).append(result)
                for kind, got in runs.items():
                    row = {"server": kind, "workload": workload, "clients": clients,
                           **{k: statistics.median(r[k] for r in got) for k in ("chunks_per_s", "p50_ms", "p99_ms", "cpu_us")},
                           "failures": sum(r["failures"] for r in got), "wrong": sum(r["wrong"] for r in got)}
                    rows.append(row)
                    print(f"{kind:9s} {workload:11s} {clients:3d} clients: {row['chunks_per_s']:8.0f} chunks/s  "
                          f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  server CPU {row['cpu_us']:6.0f} us/chunk  "
                          f"failures {row['failures']} wrong {row['wrong']}",
                          flush=True)
    finally:
        for server in servers.values():
            server.stop()
    print("\n| workload | clients | " + " | ".join(f"{k} chunks/s (p50/p99 ms; server CPU/chunk)" for k in kinds) + " | refstore / peer (uncached / cached) |")
    print("|---|---|" + "---|" * (len(kinds) + 1))
    for workload in workloads:
        for clients in (int(c) for c in a.clients.split(",")):
            cells, by = [], {}
            for kind in kinds:
                row = next((r for r in rows if r["server"] == kind and r["workload"] == workload and r["clients"] == clients), None)
                by[kind] = row
                cells.append("-" if row is None else
                             f"{row['chunks_per_s']:.0f} ({row['p50_ms']:.1f}/{row['p99_ms']:.1f}; {row['cpu_us']:.0f} us)")
            ratios = [f"{by[k]['chunks_per_s'] / by['peer']['chunks_per_s']:.2f}x" if by.get(k) and by.get("peer") else "-"
                      for k in ("refstore", "refstore_cached")]
            print(f"| {workload} | {clients} | " + " | ".join(cells) + f" | {' / '.join(ratios)} |")
    bad = [(r["server"], r["workload"], r["clients"], r["failures"], r["wrong"]) for r in rows if r["failures"] or r["wrong"]]
    print(f"\nfailed or wrong answers: {bad or 'none'}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
