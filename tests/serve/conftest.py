"""Fixtures of the server tests: ``serve(app)`` runs an ASGI app under real uvicorn on loopback."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_VIRTUAL = str(Path(__file__).resolve().parent.parent / "virtual")  # _vdata: the virtual-array inputs
if _VIRTUAL not in sys.path:
    sys.path.insert(0, _VIRTUAL)


class Running:
    """A uvicorn server running *app* on 127.0.0.1 in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def serve() -> Iterator[Callable[[Any], Running]]:
    """``serve(app)`` starts uvicorn on a free loopback port; every server is stopped after the test."""
    running: list[Running] = []

    def start(app: Any) -> Running:
        r = Running(app)
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop()
