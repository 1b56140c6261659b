"""Limits that keep the server's memory and fairness bounded: back-pressure (bounded requests in
flight, ``503`` past a queue) and a per-client request rate (``429``)."""

from __future__ import annotations

import asyncio
import math
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from refstore.serve._http import error_response

__all__ = ["BackPressure", "RateLimit"]


class BackPressure:
    """At most *max_in_flight* requests at once; up to *queue_limit* wait; the rest get ``503``.

    Parameters
    ----------
    app
        The ASGI application behind.
    max_in_flight, queue_limit
        Requests answered at once, and allowed to wait.
    retry_after
        Seconds the ``Retry-After`` header of a ``503`` asks for.
    """

    def __init__(self, app: ASGIApp, max_in_flight: int, queue_limit: int, retry_after: int) -> None:
        self.app = app
        self.queue_limit = queue_limit
        self.retry_after = retry_after
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.waiting = 0
        self._sem: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_in_flight)
        sem = self._sem
        if sem.locked() and self.waiting >= self.queue_limit:
            response = error_response(503, "server busy: too many requests waiting", headers={
                "Retry-After": str(self.retry_after)})
            await response(scope, receive, send)
            return
        self.waiting += 1
        try:
            await sem.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            sem.release()


class RateLimit:
    """At most *rate* requests a second per client address, in bursts of up to *burst*; past it, ``429``.

    A token bucket per client (the peer address uvicorn reports; behind a proxy, configure
    uvicorn's ``--forwarded-allow-ips`` so that it is the real client's). Buckets idle long
    enough to be full again are forgotten, so memory stays bounded by the active clients.
    """

    def __init__(self, app: ASGIApp, rate: float, burst: int) -> None:
        self.app = app
        self.rate = float(rate)
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._swept = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        now = time.monotonic()
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self.rate)
            response = error_response(429, f"too many requests: at most {self.rate:g} a second per client",
                                      headers={"Retry-After": str(wait)})
            await response(scope, receive, send)
            return
        self._buckets[client] = (tokens - 1, now)
        if now - self._swept > self.burst / self.rate + 60:
            self._sweep(now)
        await self.app(scope, receive, send)

    def _sweep(self, now: float) -> None:
        full = self.burst / self.rate
        self._buckets = {c: (t, last) for c, (t, last) in self._buckets.items() if now - last < full}
        self._swept = now
