"""Limits that keep the server's memory and fairness bounded: back-pressure (bounded requests in
flight, ``503`` past a queue) and a per-client request rate (``429``)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from refstore.serve._http import error_response

__all__ = ["BackPressure", "RateLimit"]


class BackPressure:
    """At most *max_in_flight* requests at once; up to *queue_limit* wait; the rest get ``503``.

    Usable as ASGI middleware (around *app*) and by hand: :meth:`try_enter` (no await) or
    :meth:`enter`, then :meth:`leave`; both ways count against the same limits.

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
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._waiters)

    def try_enter(self) -> bool:
        """Take a slot if one is free and nobody waits for it (True), without waiting."""
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return True
        return False

    async def enter(self) -> bool:
        """Take a slot, waiting in the queue if need be; False (take none) if the queue is full."""
        if self.try_enter():
            return True
        if len(self._waiters) >= self.queue_limit:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # leave() hands its slot over: in_flight already counts this request
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a slot, but cancelled before using it
            else:
                self._waiters.remove(waiter)
            raise
        return True

    def leave(self) -> None:
        """Give the slot back (to the longest waiting request, if any)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1

    def busy(self) -> Response:
        """The ``503`` answer for a request refused a slot."""
        return error_response(503, "server busy: too many requests waiting", headers={
            "Retry-After": str(self.retry_after)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not await self.enter():
            await self.busy()(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.leave()


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
        refused = self.refuse(scope)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refuse(self, scope: Scope) -> Response | None:
        """Count a request of *scope*'s client: None if it may go on, else the ``429`` answer."""
        client = (scope.get("client") or ("?", 0))[0]
        now = time.monotonic()
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / self.rate)
            return error_response(429, f"too many requests: at most {self.rate:g} a second per client",
                                  headers={"Retry-After": str(wait)})
        self._buckets[client] = (tokens - 1, now)
        if now - self._swept > self.burst / self.rate + 60:
            self._sweep(now)
        return None

    def _sweep(self, now: float) -> None:
        full = self.burst / self.rate
        self._buckets = {c: (t, last) for c, (t, last) in self._buckets.items() if now - last < full}
        self._swept = now
