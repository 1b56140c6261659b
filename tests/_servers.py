"""Real loopback servers for the test-suite: HTTP (aiohttp), S3 (moto), GCS (emulator).

Every server binds 127.0.0.1 on a free port, runs in a daemon thread and is
stopped with ``stop()``.  Nothing here imports refstore.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote

from aiohttp import web

HOST = "127.0.0.1"

#: Environment the S3/GCS clients need.  conftest applies it at import time,
#: because gcsfs reads ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` when it is imported
#: (left "true", gcsfs tries gRPC against the emulator and hangs 60 s per bucket).
CLIENT_ENV: dict[str, str] = {
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def _iter_files(src: Path) -> list[tuple[Path, str]]:
    """(local file, relative posix key) pairs for a file or a directory tree."""
    if src.is_file():
        return [(src, src.name)]
    return [(p, p.relative_to(src).as_posix()) for p in sorted(src.rglob("*")) if p.is_file()]


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class RequestRecord:
    """One request as seen by :class:`RangeHTTPServer`."""

    method: str
    path: str
    range: str | None
    status: int


class LoopbackServer:
    """An aiohttp app on 127.0.0.1 (free port) in a daemon thread; subclasses answer in ``_handle``."""

    backlog = 128

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port: int = 0

    @property
    def url(self) -> str:
        """Base URL without trailing slash, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    def start(self) -> Self:
        """Start the server thread; returns self once it accepts connections."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._setup())
            except BaseException as exc:  # pragma: no cover - startup failure
                errors.append(exc)
                return
            finally:
                ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    async def _setup(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0, backlog=self.backlog)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the loop and join the thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None


class RangeHTTPServer(LoopbackServer):
    """Static-file HTTP server with single-range support and fault injection.

    Attributes settable from tests (thread-safe enough: plain container ops):
      * ``fail_paths``: URL paths (``"/a/b.bin"``) answered with 500.
      * ``flaky``: ``{path: n}`` -> the next ``n`` requests to ``path`` get 503.
      * ``directory_status``: the status a directory gets (404 by default; 403 acts as a
        server that refuses listings). No directory is ever listed.
      * ``delay``: seconds to sleep before answering every request.
    Counters: ``total_gets``, ``total_heads``, ``get_counts[path]``, ``log``,
    ``max_in_flight`` (most requests being answered at once).
    ``reset()`` clears counters and fault settings.
    """

    backlog = 1024

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.fail_paths: set[str] = set()
        self.directory_status: int = 404
        self.flaky: dict[str, int] = {}
        self.delay: float = 0.0
        self.log: list[RequestRecord] = []
        self.get_counts: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()

    # -- test helpers
    def reset(self) -> None:
        """Clear counters, request log and all fault injection."""
        with self._lock:
            self.log.clear()
            self.directory_status = 404
            self.get_counts.clear()
            self.fail_paths.clear()
            self.flaky.clear()
            self.delay = 0.0
            self.max_in_flight = 0

    @property
    def total_gets(self) -> int:
        """Number of GET requests since the last reset."""
        return sum(1 for r in self.log if r.method == "GET")

    @property
    def total_heads(self) -> int:
        """Number of HEAD requests since the last reset."""
        return sum(1 for r in self.log if r.method == "HEAD")

    def path_of(self, url_or_path: str) -> str:
        """Normalise a full URL or a path to the URL path used as counter key."""
        if url_or_path.startswith(self.url):
            url_or_path = url_or_path[len(self.url) :]
        return "/" + url_or_path.lstrip("/")

    def gets(self, url_or_path: str) -> int:
        """GET count for one file (full URL or URL path)."""
        return self.get_counts[self.path_of(url_or_path)]

    def fail(self, url_or_path: str) -> None:
        """Make a path answer 500 until reset."""
        self.fail_paths.add(self.path_of(url_or_path))

    def make_flaky(self, url_or_path: str, n: int) -> None:
        """Make the next ``n`` requests to a path answer 503."""
        self.flaky[self.path_of(url_or_path)] = n

    def serve(self, src: str | os.PathLike[str], prefix: str) -> str:
        """Copy a file or directory under ``root/prefix``; return its base URL.

        For a directory the URL of the directory is returned (files keep their
        relative paths); for a single file the URL of that file.
        """
        src = Path(src)
        dest = self.root / prefix
        for local, key in _iter_files(src):
            target = dest / key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, target)
        base = f"{self.url}/{prefix.strip('/')}"
        return f"{base}/{src.name}" if src.is_file() else base

    # -- request handling
    def _record(self, req: web.Request, path: str, status: int) -> None:
        with self._lock:
            self.log.append(RequestRecord(req.method, path, req.headers.get("Range"), status))
            if req.method == "GET":
                self.get_counts[path] += 1

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        path = "/" + unquote(req.match_info["tail"])
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            resp = self._respond(req, path)
            self._record(req, path, resp.status)
            if self.delay:
                await asyncio.sleep(self.delay)
            return resp
        finally:
            with self._lock:
                self.in_flight -= 1

    def _respond(self, req: web.Request, path: str) -> web.Response:
        if req.method not in ("GET", "HEAD"):
            return web.Response(status=405)
        if path in self.fail_paths:
            return web.Response(status=500, text="injected failure")
        with self._lock:
            left = self.flaky.get(path, 0)
            if left > 0:
                self.flaky[path] = left - 1
        if left > 0:
            return web.Response(status=503, text="injected flakiness")
        local = (self.root / path.lstrip("/")).resolve()
        if local != self.root and self.root not in local.parents:
            return web.Response(status=403, text="path traversal refused")
        if local.is_dir():
            return web.Response(status=self.directory_status, text="directory listing refused")
        if not local.is_file():
            return web.Response(status=404, text="not found")
        size = local.stat().st_size
        base = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if req.method == "HEAD":
            return web.Response(status=200, headers={**base, "Content-Length": str(size)})
        rng = req.headers.get("Range")
        span = parse_range(rng, size) if rng else None
        if span == "invalid":
            return web.Response(status=416, headers={**base, "Content-Range": f"bytes */{size}"})
        with open(local, "rb") as f:
            if span is None:
                return web.Response(status=200, body=f.read(), headers=base)
            start, end = span
            f.seek(start)
            body = f.read(end - start + 1)
        headers = {**base, "Content-Range": f"bytes {start}-{end}/{size}"}
        return web.Response(status=206, body=body, headers=headers)


def parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """Parse a single ``bytes=`` range into inclusive ``(start, end)``.

    Returns ``None`` when the header should be ignored (not ``bytes=`` or a
    multi-range: the server then answers 200 with the whole body, as RFC 9110
    allows) and ``"invalid"`` when it is unsatisfiable (416).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return "invalid"
    try:
        if first == "":
            n = int(last)
            if n <= 0 or size == 0:
                return "invalid"
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return "invalid"
    if start < 0 or start >= size or end < start:
        return "invalid"
    return start, min(end, size - 1)


# --------------------------------------------------------------------------- S3


class S3Server:
    """moto ``ThreadedMotoServer`` plus upload helpers (boto3)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
        self.endpoint_url = ""
        self._buckets: set[str] = set()
        self._client: Any = None

    def start(self) -> S3Server:
        """Start moto and create a boto3 client for uploads."""
        import boto3

        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        self._client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        return self

    def stop(self) -> None:
        """Stop moto."""
        self._server.stop()

    @property
    def storage_options(self) -> dict[str, Any]:
        """Options for ``s3fs.S3FileSystem(**storage_options)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "key": "testing",
            "secret": "testing",
            "anon": False,
        }

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` once."""
        if bucket not in self._buckets:
            self._client.create_bucket(Bucket=bucket)
            self._buckets.add(bucket)

    def put_bytes(self, bucket: str, key: str, data: bytes, public: bool = False) -> str:
        """Store one object (*public*: readable anonymously); return ``s3://bucket/key``."""
        self.ensure_bucket(bucket)
        self._client.put_object(Bucket=bucket, Key=key, Body=data, **({"ACL": "public-read"} if public else {}))
        return f"s3://{bucket}/{key}"

    def upload(self, src: str | os.PathLike[str], bucket: str, prefix: str) -> str:
        """Upload a file/directory under ``prefix``; return its ``s3://`` URL."""
        src = Path(src)
        self.ensure_bucket(bucket)
        prefix = prefix.strip("/")
        for local, key in _iter_files(src):
            self._client.upload_file(str(local), bucket, f"{prefix}/{key}")
        base = f"s3://{bucket}/{prefix}"
        return f"{base}/{src.name}" if src.is_file() else base


# --------------------------------------------------------------------------- GCS


class _ThreadingHTTPServer(ThreadingHTTPServer):
    # The stock emulator uses a single-threaded HTTPServer with a listen
    # backlog of 5: 100+ concurrent connections then stall on SYN retries
    # (200 concurrent range reads took 16 s instead of 0.2 s).
    daemon_threads = True
    request_queue_size = 1024


class GCSServer:
    """gcp-storage-emulator (in-memory) served by a threading HTTP server."""

    def __init__(self) -> None:
        from gcp_storage_emulator.server import RequestHandler
        from gcp_storage_emulator.storage import Storage

        logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
        self.storage = Storage(use_memory_fs=True)
        self._httpd = _ThreadingHTTPServer((HOST, 0), partial(RequestHandler, self.storage))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self.endpoint_url = f"http://{HOST}:{self._httpd.server_address[1]}"
        self._buckets: set[str] = set()

    def start(self) -> GCSServer:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut down the HTTP server."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    @property
    def storage_options(self) -> dict[str, Any]:
        """Options for ``gcsfs.GCSFileSystem(**storage_options)``."""
        return {"endpoint_url": self.endpoint_url, "token": "anon", "project": "test"}

    def _fs(self) -> Any:
        import gcsfs

        return gcsfs.GCSFileSystem(skip_instance_cache=True, **self.storage_options)

    def ensure_bucket(self, bucket: str) -> None:
        """Create ``bucket`` once (directly in the emulator's storage)."""
        if bucket not in self._buckets:
            from gcp_storage_emulator.handlers import buckets

            buckets.create_bucket(bucket, self.storage)
            self._buckets.add(bucket)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> str:
        """Store one object; return ``gs://bucket/key``."""
        self.ensure_bucket(bucket)
        self._fs().pipe_file(f"{bucket}/{key}", data)
        return f"gs://{bucket}/{key}"

    def upload(self, src: str | os.PathLike[str], bucket: str, prefix: str) -> str:
        """Upload a file/directory under ``prefix``; return its ``gs://`` URL."""
        src = Path(src)
        self.ensure_bucket(bucket)
        prefix = prefix.strip("/")
        fs = self._fs()
        fs.pipe({f"{bucket}/{prefix}/{key}": local.read_bytes() for local, key in _iter_files(src)})
        base = f"gs://{bucket}/{prefix}"
        return f"{base}/{src.name}" if src.is_file() else base

