"""A loopback HTTP server that serves real files with faults injected at random, by seed (issue 13).

:class:`FaultyServer` answers ``GET``/``HEAD`` for the files it was given.
Each request draws its fate from a ``random.Random`` seeded with the server's
seed and the request's number, so a run is repeatable: honest, slow, stalled
past the client's deadline, reset mid-body, a short body, a lying
``Content-Range``, a burst of 5xx/429 (with ``Retry-After``), or the whole
body for a ranged request. Every fault is counted by kind. The server never
sends wrong bytes under honest headers (no client could tell): each fault is
one a careful client can detect. Nothing here imports refstore.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from urllib.parse import unquote

from _hostile import parse_range
from _servers import LoopbackServer
from aiohttp import web

#: Fault kinds and their weights (``honest`` is no fault).
FAULTS: dict[str, int] = {
    "honest": 150,
    "delay": 10,  # a short wait (well inside the deadlines), then the right answer
    "stall": 3,  # no answer past the client's first-byte deadline
    "reset": 8,  # the connection is dropped mid-body
    "short": 6,  # a 206 with the right Content-Range over fewer bytes (and a matching Content-Length)
    "shifted": 5,  # a 206 for another range, with that range's honest Content-Range
    "no_range": 3,  # a 206 without Content-Range
    "burst_503": 6,  # this request and the next ones to this path: 503 with Retry-After
    "burst_429": 4,  # the same with 429
    "error_500": 5,  # one 500
    "ignore_range": 10,  # 200 with the whole body
}


class FaultyServer(LoopbackServer):
    """Serve *files* (URL path -> bytes) with random faults (see the module docstring).

    Parameters
    ----------
    files
        The bytes served at each URL path (``"/data.nc"``).
    seed
        Seeds each request's draw (with the request's number).
    stall
        Seconds a stalled answer waits before giving up (longer than the client's deadlines).
    lie
        Also send wrong bytes under honest headers, at random (to test the checks of a soak).
    """

    backlog = 1024

    def __init__(self, files: dict[str, bytes], seed: int, stall: float = 3.0, lie: bool = False) -> None:
        super().__init__()
        self.files = files
        self.seed = seed
        self.stall = stall
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self.enabled = True
        self._bursts: dict[str, int] = {}
        self._lock = threading.Lock()
        # "lie": wrong bytes under honest headers, which no client can detect: only for
        # showing that the soak's checks see wrong bytes
        faults = {**FAULTS, "lie": 20} if lie else FAULTS
        self._kinds = list(faults)
        self._weights = list(faults.values())

    @property
    def injected(self) -> int:
        """Requests answered with a fault (anything but ``honest``)."""
        return sum(n for kind, n in self.faults.items() if kind != "honest")

    def _draw(self, path: str) -> tuple[str, random.Random]:
        with self._lock:
            self.requests += 1
            rng = random.Random(self.seed * 1_000_003 + self.requests)
            if not self.enabled:
                kind = "honest"
            elif self._bursts.get(path, 0) > 0:
                self._bursts[path] -= 1
                kind = "burst"
            else:
                kind = rng.choices(self._kinds, self._weights)[0]
                if kind.startswith("burst"):
                    self._bursts[path] = rng.randint(0, 2)  # the next 0-2 requests fail too
            self.faults[kind] += 1
        return kind, rng

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = "/" + unquote(request.match_info["tail"])
        data = self.files.get(path)
        if data is None or request.method not in ("GET", "HEAD"):
            return web.Response(status=404 if data is None else 405)
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data)), "Accept-Ranges": "bytes"})
        kind, rng = self._draw(path)
        span = parse_range(request.headers.get("Range"), len(data))
        first, last = span if span is not None else (0, len(data) - 1)
        if kind in ("burst", "burst_503", "burst_429"):
            status = 429 if kind == "burst_429" or (kind == "burst" and rng.random() < 0.4) else 503
            return web.Response(status=status, headers={"Retry-After": str(rng.choice([0, 0, 1]))}, text="busy")
        if kind == "error_500":
            return web.Response(status=500, text="injected")
        if kind == "delay":
            await asyncio.sleep(rng.uniform(0.01, 0.15))
        if kind == "stall":
            await asyncio.sleep(self.stall)
            return web.Response(status=500, text="stalled")
        if kind == "ignore_range" or span is None:
            return web.Response(body=data)
        body = data[first : last + 1]
        headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}"}
        if kind == "short" and len(body) > 1:
            return web.Response(status=206, body=body[: rng.randrange(len(body))], headers=headers)
        if kind == "shifted":
            at = (first + rng.randint(1, 64)) % max(1, len(data) - len(body))
            at = at if at != first else first + 1
            moved = data[at : at + len(body)]
            headers = {"Content-Range": f"bytes {at}-{at + len(moved) - 1}/{len(data)}"}
            return web.Response(status=206, body=moved, headers=headers)
        if kind == "lie":
            return web.Response(status=206, body=bytes(b ^ 1 for b in body), headers=headers)
        if kind == "no_range":
            return web.Response(status=206, body=body)
        if kind == "reset":
            return await self._reset(request, body, headers, rng)
        return web.Response(status=206, body=body, headers=headers)

    @staticmethod
    async def _reset(
        request: web.Request, body: bytes, headers: dict[str, str], rng: random.Random
    ) -> web.StreamResponse:
        """Promise the whole body, send part of it, then drop the connection."""
        resp = web.StreamResponse(status=206, headers={**headers, "Content-Length": str(len(body))})
        await resp.prepare(request)
        try:
            await resp.write(body[: rng.randrange(max(1, len(body)))])
            await asyncio.sleep(0.01)
        except ConnectionError:
            pass
        if request.transport is not None:
            request.transport.abort()
        return resp
