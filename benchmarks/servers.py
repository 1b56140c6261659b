"""Loopback servers that count requests: an aiohttp static server and moto S3.

Both can run in a separate process (default: the server then does not share
the GIL with the client being measured) or in a background thread of the
benchmark process (``--servers-in-process``).  Each exposes
``GET /__bench_stats__`` (request counters as JSON) and
``GET /__bench_reset__``; those two are not counted.

Run as ``python -m benchmarks.servers http ROOT`` or
``python -m benchmarks.servers s3``: prints ``PORT <n>`` and serves forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

STATS_PATH = "/__bench_stats__"
RESET_PATH = "/__bench_reset__"
S3_OPTIONS_BASE: dict[str, Any] = {"key": "testing", "secret": "testing"}


class Counter:
    """Thread-safe request counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero all counters."""
        with self._lock:
            self.data: dict[str, int] = {"requests": 0, "ranged": 0, "gets": 0, "other": 0}

    def add(self, method: str, ranged: bool) -> None:
        """Count one request."""
        with self._lock:
            self.data["requests"] += 1
            self.data["ranged"] += int(ranged)
            self.data["gets" if method == "GET" else "other"] += 1

    def snapshot(self) -> dict[str, int]:
        """Copy of the counters."""
        with self._lock:
            return dict(self.data)


# ----------------------------------------------------------------- HTTP server
def _http_app(root: Path, counter: Counter) -> Any:
    """aiohttp application serving ``root``; FileResponse handles Range (206)."""
    from aiohttp import web

    @web.middleware
    async def count(request: web.Request, handler: Callable[..., Any]) -> Any:
        if request.path == STATS_PATH:
            return web.json_response(counter.snapshot())
        if request.path == RESET_PATH:
            counter.reset()
            return web.json_response({})
        counter.add(request.method, "Range" in request.headers)
        return await handler(request)

    async def serve_file(request: web.Request) -> web.StreamResponse:
        rel = request.match_info["name"]
        path = (root / rel).resolve()
        if root.resolve() not in path.parents or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    app = web.Application(middlewares=[count])
    app.router.add_route("GET", "/{name:.+}", serve_file)
    app.router.add_route("HEAD", "/{name:.+}", serve_file)
    return app


def _run_http(root: Path, on_port: Callable[[int], None], stop: threading.Event | None) -> None:
    """Serve ``root`` on 127.0.0.1 (free port) until ``stop`` is set (or forever)."""
    serve_app(_http_app(root, Counter()), on_port, stop)


def serve_app(app: Any, on_port: Callable[[int], None], stop: threading.Event | None, backlog: int = 128) -> None:
    """Serve the aiohttp *app* on 127.0.0.1 (free port, passed to *on_port*) until *stop* is set (or forever)."""
    from aiohttp import web

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=backlog)
        await site.start()
        on_port(runner.addresses[0][1])
        while stop is None or not stop.is_set():
            await asyncio.sleep(0.05)
        await runner.cleanup()

    asyncio.run(main())


# ------------------------------------------------------------------- S3 (moto)
def _moto_app(counter: Counter) -> Callable[..., Iterable[bytes]]:
    """moto's WSGI application wrapped with request counting."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    inner = DomainDispatcherApplication(create_backend_app)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in (STATS_PATH, RESET_PATH):
            if path == RESET_PATH:
                counter.reset()
            body = json.dumps(counter.snapshot()).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if not path.startswith("/moto-api"):
            counter.add(environ.get("REQUEST_METHOD", ""), "HTTP_RANGE" in environ)

        def start(status: str, headers: list[tuple[str, str]], *exc: Any) -> Any:
            # moto sets "Server" and werkzeug adds another; strict clients
            # (aiohttp in debug mode) reject the duplicate.
            headers = [(k, v) for k, v in headers if k.lower() != "server"]
            return start_response(status, headers, *exc)

        return inner(environ, start)

    return app


def _make_s3_server() -> Any:
    """A threaded werkzeug server running counted moto on a free port."""
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    return make_server("127.0.0.1", 0, _moto_app(Counter()), threaded=True)


# ------------------------------------------------------------------ front end
class Server:
    """A running counted server; ``url`` is its base URL."""

    def __init__(self, kind: str, root: Path | None = None, in_process: bool = False) -> None:
        self.kind = kind
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wsgi: Any = None
        port = self._start_thread(root) if in_process else self._start_process(root)
        self.url = f"http://127.0.0.1:{port}"

    # -- what a subclass may change: the server's command line, HTTP loop and S3 app

    def _server_args(self, root: Path | None) -> list[str]:
        """Arguments after ``python -m`` that serve this kind in a subprocess (it prints ``PORT n``)."""
        return ["benchmarks.servers", self.kind, *([str(root)] if root is not None else [])]

    def _http_runner(self, root: Path, on_port: Callable[[int], None]) -> Callable[[], None]:
        """The body of the thread that serves *root* over HTTP, calling *on_port* once listening."""
        return lambda: _run_http(root, on_port, self._stop)

    def _make_s3(self) -> Any:
        """A werkzeug server (not yet serving) of the counted moto app."""
        return _make_s3_server()

    # -- starting

    def _start_process(self, root: Path | None) -> int:
        """Start the server subprocess and read its port."""
        cmd = [sys.executable, "-m", *self._server_args(root)]
        root_dir = Path(__file__).resolve().parent.parent  # so "-m benchmarks..." imports
        path = os.pathsep.join(p for p in (str(root_dir), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root_dir
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("PORT "):
            self.close()
            raise RuntimeError(f"{self.kind} server failed to start: {line!r}")
        return int(line.split()[1])

    def _start_thread(self, root: Path | None) -> int:
        """Start the server in a daemon thread of this process; return its port."""
        ready = threading.Event()
        ports: list[int] = []

        def on_port(port: int) -> None:
            ports.append(port)
            ready.set()

        if self.kind == "http":
            assert root is not None
            target = self._http_runner(root, on_port)
        else:
            self._wsgi = self._make_s3()
            on_port(self._wsgi.server_port)
            target = self._wsgi.serve_forever
        self._thread = threading.Thread(target=target, daemon=True, name=f"bench-{self.kind}")
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError(f"{self.kind} server thread did not start")
        return ports[0]

    def _get(self, path: str) -> dict[str, int]:
        """GET one of the uncounted control endpoints."""
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, int]:
        """Counters since the last :meth:`reset`."""
        return self._get(STATS_PATH)

    def reset(self) -> None:
        """Zero the counters."""
        self._get(RESET_PATH)

    def close(self) -> None:
        """Stop the server (process or thread)."""
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._wsgi is not None:
            self._wsgi.shutdown()
            self._wsgi = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def s3_options(url: str) -> dict[str, Any]:
    """s3fs storage options for the moto server at ``url``."""
    return {**S3_OPTIONS_BASE, "client_kwargs": {"endpoint_url": url}}


def set_dummy_aws_env() -> None:
    """Dummy credentials so botocore never looks for real ones."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)


def _exit_with_parent() -> None:
    """Exit as soon as stdin (a pipe from the parent) closes: no orphan servers."""

    def watch() -> None:
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _main(argv: list[str]) -> None:
    """Subprocess entry point: serve and print ``PORT <n>``."""
    _exit_with_parent()
    kind = argv[0]
    if kind == "http":
        _run_http(Path(argv[1]), lambda p: print(f"PORT {p}", flush=True), None)
    elif kind == "s3":
        srv = _make_s3_server()
        print(f"PORT {srv.server_port}", flush=True)
        srv.serve_forever()
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


if __name__ == "__main__":
    _main(sys.argv[1:])
