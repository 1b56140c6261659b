"""What source verification costs: the same reads with ``verify="off"``, ``"cheap"`` and ``"full"``.

``python -m benchmarks.integrity [--repeat N] [--chunks N]`` reads an uncompressed array of
N contiguous 8 KiB chunks (4096 by default) from one local file and from a loopback HTTP
server whose answers carry an ETag, three ways: through zarr (``ReferenceStore``, async
path, merged reads), key by key with ``get_sync`` (one read, and one ``stat``, per chunk:
the worst case for local files) and, for HTTP, through zarr. Each verify setting runs with
the source's identity recorded; ``off`` is the baseline. Variants are interleaved and the
medians printed, since the machine is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import refstore
from refstore.manifest import Manifest, Reference, SourceIdentity, record_sources

CHUNK = 8192


def _manifest(url: str, n: int, identity: SourceIdentity | None) -> Manifest:
    m = Manifest()
    m.set("zarr.json", b'{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    meta = {
        "zarr_format": 3, "node_type": "array", "shape": [n * CHUNK], "data_type": "uint8", "fill_value": 0,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [CHUNK]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "codecs": [{"name": "bytes"}], "attributes": {},
    }
    m.set("a/zarr.json", json.dumps(meta).encode())
    for i in range(n):
        m.set(f"a/c/{i}", Reference(url, i * CHUNK, CHUNK))
    if identity is not None:
        m.sources[url] = identity
    return m


def _zarr_read(m: Manifest, verify: str) -> Callable[[], Any]:
    def run() -> Any:
        return zarr.open_array(refstore.ReferenceStore(m, verify=verify), path="a", mode="r")[:]
    return run


def _get_sync(m: Manifest, verify: str, n: int) -> Callable[[], Any]:
    def run() -> Any:
        store = refstore.ReferenceStore(m, verify=verify)
        return [store.get_sync(f"a/c/{i}") for i in range(n)]
    return run


def _measure(variants: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat):
        for name, run in variants.items():  # interleaved: drifts of a shared machine hit all alike
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _http_server(root: Path) -> Any:
    """A loopback server for *root* that sends an ETag (``tests/_servers.py``'s, plus the header)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from _servers import RangeHTTPServer

    class ETagServer(RangeHTTPServer):
        def _respond(self, req: Any, path: str) -> Any:
            resp = super()._respond(req, path)
            resp.headers["ETag"] = '"v1"'
            return resp

    return ETagServer(root).start()


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print medians and overheads against ``verify="off"``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--chunks", type=int, default=4096)
    args = parser.parse_args(argv)
    n = args.chunks
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.bin")
        payload = np.random.default_rng(0).integers(0, 255, n * CHUNK, dtype=np.uint8).tobytes()
        Path(path).write_bytes(payload)
        local = _manifest(path, n, None)
        record_sources(local, checksum=True)
        plain = _manifest(path, n, None)
        server = _http_server(Path(tmp))
        url = f"{server.url}/data.bin"
        remote = _manifest(url, n, SourceIdentity(size=len(payload), etag='"v1"',
                                                   sha256=hashlib.sha256(payload).hexdigest()))
        try:
            groups = {
                "local, zarr read": {
                    "off": _zarr_read(local, "off"), "cheap, no identity": _zarr_read(plain, "cheap"),
                    "cheap": _zarr_read(local, "cheap"), "full": _zarr_read(local, "full"),
                },
                "local, get_sync per chunk": {
                    "off": _get_sync(local, "off", n), "cheap, no identity": _get_sync(plain, "cheap", n),
                    "cheap": _get_sync(local, "cheap", n), "full": _get_sync(local, "full", n),
                },
                "loopback HTTP, zarr read": {
                    "off": _zarr_read(remote, "off"), "cheap": _zarr_read(remote, "cheap"),
                    "full": _zarr_read(remote, "full"),
                },
            }
            print(f"{n} chunks of {CHUNK} B, medians of {args.repeat} (seconds; overhead against verify='off')")
            for title, variants in groups.items():
                medians = _measure(variants, args.repeat)
                base = medians["off"]
                cells = ", ".join(f"{k} {v:.3f} ({(v / base - 1) * 100:+.1f}%)" for k, v in medians.items())
                print(f"  {title}: {cells}")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
