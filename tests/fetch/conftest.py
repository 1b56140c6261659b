"""Fixtures of the fetch tests: a loopback server that misbehaves on purpose (``tests/_hostile.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from _hostile import ScriptedServer


@pytest.fixture(scope="session")
def hostile_server() -> Iterator[ScriptedServer]:
    """The session's scripted server; prefer ``hostile``."""
    server = ScriptedServer().start()
    yield server
    server.stop()


@pytest.fixture
def hostile(hostile_server: ScriptedServer) -> Iterator[ScriptedServer]:
    """The scripted server with no routes and an empty log, before and after the test."""
    hostile_server.routes.clear()
    hostile_server.fallback = None
    hostile_server.log.clear()
    hostile_server.sent.clear()
    yield hostile_server
    hostile_server.routes.clear()
    hostile_server.fallback = None
    hostile_server.log.clear()
