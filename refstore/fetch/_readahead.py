"""Sequential read-ahead for remote targets: detect in-order reads of a URL and fetch ahead.

zarr asks for chunks a few at a time (``async.concurrency``, 10 by default), so
merging the requests of one event-loop tick joins at most that many chunks into
one read. When the requests for a URL start exactly where the previous ones
ended, twice in a row, the stream is sequential: the read is extended by a window that doubles
on every continuation (up to ``max_ahead``), the extra bytes are kept as a
block, and later requests inside a block are answered from it. Once a reader is
past the middle of the newest block, the next window is fetched in the
background, so a sequential scan overlaps transfer and decoding.

Blocks hold bytes at absolute offsets of their URL, and every answer is cut out
of a block by offset, so a block never answers with another range's bytes. The
cache is bounded by ``max_cached`` bytes (least recently used blocks go first);
a failed background read just drops its block, and the waiting requests read
directly, unless the fetcher's retries gave up on a server that does not
answer or keeps failing (then they fail the same way, rather than wait for
another round of attempts).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

#: Reads ``[start, end)`` of a URL: the fetcher's retrying read of one span.
SpanReader = Callable[[str, int, int], Awaitable[bytes]]


@dataclass(eq=False)
class Block:
    """Bytes ``[start, start + len(data))`` of one URL, possibly still in flight."""

    start: int
    end: int
    future: asyncio.Future[bytes]
    nbytes: int = 0

    def covers(self, start: int, end: int) -> bool:
        return self.start <= start and end <= self.end


@dataclass(eq=False)
class _Stream:
    last_start: int = -1
    last_end: int = -1
    run: int = 0  # continuations in a row
    window: int = 0
    ahead_end: int = -1  # end of the newest read-ahead block
    blocks: list[Block] = field(default_factory=list)


class ReadAhead:
    """Per-event-loop read-ahead state for all URLs of one fetcher.

    Parameters
    ----------
    max_ahead
        Largest window fetched beyond a sequential request (bytes); 0 disables read-ahead.
    min_ahead
        First window when a stream turns sequential.
    max_gap
        A request starting at most this far after the previous end continues the stream.
    streak
        Continuations in a row before reading ahead: one chance neighbour among
        random reads starts nothing.
    max_cached
        Bytes of blocks kept at most, over all URLs.
    max_streams
        URLs tracked at most (least recently used first out).
    """

    def __init__(
        self,
        max_ahead: int,
        *,
        min_ahead: int = 512 * 1024,
        max_gap: int = 0,
        streak: int = 2,
        max_cached: int | None = None,
        max_streams: int = 256,
    ) -> None:
        self.max_ahead = max(int(max_ahead), 0)
        self.min_ahead = min(min_ahead, self.max_ahead)
        self.max_gap = max(max_gap, 0)
        self.streak = max(streak, 1)
        self.max_cached = 4 * self.max_ahead if max_cached is None else max_cached
        self.max_streams = max_streams
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._lru: OrderedDict[Block, str] = OrderedDict()
        self._cached = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.max_ahead > 0

    def _stream(self, url: str) -> _Stream:
        stream = self._streams.get(url)
        if stream is None:
            stream = self._streams[url] = _Stream()
            while len(self._streams) > self.max_streams:
                _, old = self._streams.popitem(last=False)
                for blk in old.blocks:
                    self._forget(blk)
        else:
            self._streams.move_to_end(url)
        return stream

    # -- lookups -----------------------------------------------------------------------

    def find(self, url: str, start: int, end: int | None) -> list[Block] | None:
        """The cached or in-flight blocks that together hold ``[start, end)`` of *url*, if any.

        Usually one block; a range straddling the boundary of two adjacent
        read-ahead blocks gets both, in order.
        """
        stream = self._streams.get(url)
        if stream is None or end is None or not stream.blocks:
            return None
        found: list[Block] = []
        pos = start
        while pos < end:
            nxt = next((b for b in stream.blocks if b.start <= pos < b.end), None)
            if nxt is None:
                return None
            found.append(nxt)
            pos = nxt.end
        for blk in found:
            if blk in self._lru:
                self._lru.move_to_end(blk)
        return found or None

    def served(self, url: str, blk: Block, end: int, read: SpanReader) -> None:
        """Note a request ending at *end* answered from *blk*; fetch the next window when due."""
        stream = self._stream(url)
        stream.last_end = max(stream.last_end, end)
        newest = blk.end == stream.ahead_end
        if newest and stream.window and end >= blk.start + (blk.end - blk.start) // 2:
            stream.window = min(stream.window * 2, self.max_ahead)
            self._launch(url, stream, blk.end, blk.end + stream.window, read)

    # -- planning reads ------------------------------------------------------------------

    def extend(self, url: str, first_start: int, last_end: int) -> int:
        """How far to read past *last_end* for a batch of misses spanning ``[first_start, last_end)``.

        Returns
        -------
        int
            The new end of the batch's last read: *last_end* itself when the
            stream is not sequential.
        """
        stream = self._stream(url)
        # a batch may start before the previous end (a straggler of the previous batch), but
        # never before where the previous batch started
        sequential = 0 <= stream.last_start <= first_start <= stream.last_end + self.max_gap
        stream.last_start = first_start
        stream.last_end = max(stream.last_end, last_end) if sequential else last_end
        stream.run = stream.run + 1 if sequential else 0
        if stream.run < self.streak:
            stream.window = 0
            return last_end
        if stream.ahead_end > last_end:
            return last_end  # a read-ahead beyond this batch is already under way
        stream.window = self.min_ahead if not stream.window else min(stream.window * 2, self.max_ahead)
        stream.ahead_end = last_end + stream.window
        return stream.ahead_end

    def register(self, url: str, start: int, end: int) -> Block:
        """A block for a read of ``[start, end)`` about to start; its future gets the bytes."""
        blk = Block(start, end, asyncio.get_running_loop().create_future())
        blk.future.add_done_callback(_consume_exception)
        self._stream(url).blocks.append(blk)
        self._lru[blk] = url
        return blk

    def fill(self, url: str, blk: Block, data: bytes | BaseException) -> None:
        """Complete *blk* with the bytes read (or drop it on failure) and enforce the byte bound."""
        if blk.future.done():
            return
        if isinstance(data, BaseException):
            blk.future.set_exception(data)
            self._forget(blk, url)
            return
        blk.end = blk.start + len(data)
        blk.nbytes = len(data)
        blk.future.set_result(data)
        self._cached += len(data)
        while self._cached > self.max_cached and self._lru:
            old = next(iter(self._lru))
            if old is blk and len(self._lru) == 1:
                break
            self._forget(old)

    def _forget(self, blk: Block, url: str | None = None) -> None:
        url = self._lru.pop(blk, url)
        if url is None:
            return
        self._cached -= blk.nbytes
        stream = self._streams.get(url)
        if stream is not None and blk in stream.blocks:
            stream.blocks.remove(blk)

    def _launch(self, url: str, stream: _Stream, start: int, end: int, read: SpanReader) -> None:
        stream.ahead_end = end
        blk = self.register(url, start, end)

        async def run() -> None:
            try:
                data: bytes | BaseException = await read(url, start, end)
            except Exception as exc:  # noqa: BLE001 - waiting requests read directly instead
                data = exc
            self.fill(url, blk, data)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel background reads and drop all blocks."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._streams.clear()
        self._lru.clear()
        self._cached = 0


def _consume_exception(fut: asyncio.Future[bytes]) -> None:
    if not fut.cancelled():
        fut.exception()  # marks a failed background read as seen
