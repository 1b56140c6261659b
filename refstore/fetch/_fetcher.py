"""The fetcher: batches byte-range requests, merges them per URL, bounds concurrency, retries.

Requests made with :meth:`Fetcher.get` in the same event-loop tick are
collected into one batch; requests for one URL are merged into spans
(:func:`merge_ranges`), spans are read through the target for the URL's
protocol, and every request gets exactly its own bytes back. Each remote
read is held to its :class:`~refstore.fetch.Deadlines` and retried by them
(:func:`~refstore.fetch._deadlines.call_with_retries`).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import dataclasses
import threading
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec.asyn

from refstore._source_identity import SourceIdentity
from refstore.fetch._deadlines import (
    Deadlines,
    SlowAnswer,
    TransientError,
    call_with_retries,
    run_sync,
)
from refstore.fetch._identity import DEFAULT_VERIFY, Verifier, check_once, hash_object
from refstore.fetch._merge import Span, cut, merge_ranges
from refstore.fetch._policy import split_url
from refstore.fetch._readahead import Block, ReadAhead
from refstore.fetch._registry import TargetContext, make_target
from refstore.fetch._targets import LocalTarget

#: Default largest hole read through to join two ranges of one URL (bytes). Measured in
#: ``benchmarks/scattered.py``: wider gaps never made zarr reads faster and raise the extra
#: bytes read (1.05x at 64 kB, 1.5-1.8x at 256 kB, up to 7.6x at 1 MiB).
DEFAULT_MAX_GAP = 16 * 1024
#: Default largest merged read (bytes): small blocks go out in parallel over slow links,
#: big ones save per-request costs; 8 MiB balances the two in the same measurements.
DEFAULT_MAX_BLOCK = 8 * 1024 * 1024
#: Default largest read-ahead window (bytes) for sequential reads of remote objects.
DEFAULT_READ_AHEAD = 8 * 1024 * 1024

Request = tuple[str, int, int | None]
"""``(url, start, end)``: end-exclusive; ``end=None`` reads to the end of the object."""

#: Fetchers alive, so sessions still open at interpreter exit are closed politely.
_LIVE: weakref.WeakSet[Fetcher] = weakref.WeakSet()


#: Closings that dropped fetchers scheduled in other threads' loops, awaited at exit.
_CLOSING: set[concurrent.futures.Future[None]] = set()


def _close_live() -> None:
    """At interpreter exit: close the live fetchers' sessions and finish the closings under way."""
    for fetcher in list(_LIVE):
        try:
            fetcher.close_all(timeout=10.0)  # generous: a loaded machine is slow, not hung
        except Exception:  # noqa: BLE001 - never fail interpreter exit
            pass
    concurrent.futures.wait(list(_CLOSING), timeout=10.0)


atexit.register(_close_live)

#: Fetchers of this process by token: unpickling a fetcher that is alive here returns it, so
#: the copies dask makes of a store (one per task) share its sessions instead of each
#: building a client (an S3 client costs ~0.2 s; the read it serves, milliseconds).
_BY_TOKEN: weakref.WeakValueDictionary[str, Fetcher] = weakref.WeakValueDictionary()
#: The last fetchers made by unpickling, kept alive: a worker drops each task's copy of a
#: store when the task ends, and the next task's copy should find the same sessions.
_REVIVED: OrderedDict[str, Fetcher] = OrderedDict()
_REVIVED_KEEP = 16
_BY_TOKEN_LOCK = threading.Lock()


def _revive(state: dict[str, Any]) -> Fetcher:
    """The fetcher a pickle describes: the live one of the same token, else a new one."""
    token = state["_token"]
    with _BY_TOKEN_LOCK:
        fetcher = _BY_TOKEN.get(token)
        if fetcher is None:
            fetcher = Fetcher.__new__(Fetcher)
            fetcher.__setstate__(state)
            _BY_TOKEN[token] = fetcher
        _REVIVED[token] = fetcher
        _REVIVED.move_to_end(token)
        while len(_REVIVED) > _REVIVED_KEEP:
            _REVIVED.popitem(last=False)
        return fetcher


class ShortRead(OSError):
    """The target returned fewer bytes than a reference promised."""


@dataclass
class _LoopState:
    targets: dict[str, Any] = field(default_factory=dict)
    semaphore: asyncio.Semaphore | None = None
    pending: list[tuple[Request, bool, asyncio.Future[bytes]]] = field(default_factory=list)
    scheduled: bool = False
    readahead: ReadAhead | None = None
    closed: bool = False
    hashing: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    """SHA-256 checks of whole objects under way (``verify="full"``), by URL."""
    keeper: AsyncGenerator[None, None] | None = None
    """Closes the sessions when the loop shuts down (see :func:`_close_at_shutdown`)."""


@dataclass
class _Batch:
    """The requests of one :meth:`Fetcher.get_many` call and their results, filled as reads finish."""

    requests: Sequence[Request]
    exact: list[bool]
    results: list[bytes | BaseException]
    futures: list[asyncio.Future[bytes]] | None = None
    """If given, each request's future is resolved as soon as its bytes are in."""

    def set(self, i: int, result: bytes | BaseException) -> None:
        self.results[i] = result
        if self.futures is not None:
            fut = self.futures[i]
            if not fut.done():
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    def deliver(self, url: str, data_start: int, data: bytes, i: int) -> None:
        """Cut request *i* out of *data* (which begins at *data_start*); check its length if exact."""
        _, s, e = self.requests[i]
        piece = cut(data, data_start, s, e)
        self.set(i, _checked(url, piece, s, e) if self.exact[i] else piece)


def _checked(url: str, data: bytes, start: int, end: int | None) -> bytes | ShortRead:
    """*data* if it has the ``end - start`` bytes a reference promised, else a `ShortRead`."""
    if end is not None and len(data) != end - start:
        return ShortRead(f"{url} has {len(data)} bytes at offset {start}, the reference needs {end - start}")
    return data


class Fetcher:
    """Reads byte ranges of URLs.

    Parameters
    ----------
    options
        Storage options per protocol, e.g. ``{"s3": {"endpoint_url": ...}}``.
    filesystems
        fsspec filesystem instances to use per protocol instead of building them.
    max_gap, max_block
        Range merging (see :func:`merge_ranges`).
    max_concurrency
        Reads in flight at once, per event loop.
    read_ahead
        Largest read-ahead window for sequential reads of remote objects, in
        bytes; 0 (or a negative ``max_gap``) disables it (see
        :mod:`refstore.fetch._readahead`).
    deadlines
        Deadlines and retries of each remote read (:class:`~refstore.fetch.Deadlines`,
        or a dict of its fields); the defaults when None.
    retries, backoff
        Override ``deadlines.attempts`` (``retries + 1``) and ``deadlines.backoff``.
    check_url
        Called with every redirect target (the URL policy).
    verify
        How reads are held to the identities recorded with :meth:`expect`:
        ``"off"``, ``"cheap"`` (default) or ``"full"`` (see :mod:`refstore.fetch._identity`).
    """

    def __init__(
        self,
        *,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        filesystems: Mapping[str, Any] | None = None,
        max_gap: int = DEFAULT_MAX_GAP,
        max_block: int = DEFAULT_MAX_BLOCK,
        max_concurrency: int = 64,
        read_ahead: int = DEFAULT_READ_AHEAD,
        retries: int | None = None,
        backoff: float | None = None,
        deadlines: Deadlines | Mapping[str, Any] | None = None,
        check_url: Any = None,
        verify: str = DEFAULT_VERIFY,
    ) -> None:
        self.options = {k: dict(v) for k, v in (options or {}).items()}
        self.filesystems = dict(filesystems or {})
        self.max_gap = max_gap
        self.max_block = max_block
        self.max_concurrency = max_concurrency
        self.read_ahead = read_ahead
        chosen = Deadlines.coerce(deadlines).with_retries(retries)
        self.deadlines = chosen if backoff is None else dataclasses.replace(chosen, backoff=backoff)
        self.check_url = check_url or (lambda url: None)
        self.verifier = Verifier(verify)
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        # one LocalTarget for every loop and thread: descriptors are not tied to a loop
        self._local: LocalTarget | None = None
        self._local_lock = threading.Lock()
        self._token = uuid.uuid4().hex
        with _BY_TOKEN_LOCK:
            _BY_TOKEN[self._token] = self
        self._watch()

    def _watch(self) -> None:
        _LIVE.add(self)
        # atexit runs last-registered first: move _close_live after the exit hooks of libraries
        # imported since (zarr's stops its loop thread), so sessions close while loops still run
        atexit.unregister(_close_live)
        atexit.register(_close_live)
        # a fetcher dropped without close() still closes its sessions in their loops; at
        # interpreter exit _close_live closes the live ones and waits, so the finalizer
        # must not also schedule a close there that no loop will run
        weakref.finalize(self, _close_soon, self._states).atexit = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_states"] = state["_local"] = state["_local_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._states = weakref.WeakKeyDictionary()
        self._local_lock = threading.Lock()
        self._watch()

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # its configuration never changes after construction, so a copy in a process that
        # holds the original (or an earlier copy) is that fetcher, sessions and all
        return (_revive, (self.__getstate__(),))

    # -- per-loop state -------------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState(
                semaphore=asyncio.Semaphore(self.max_concurrency),
                # a negative max_gap turns off every kind of coalescing, read-ahead too
                readahead=ReadAhead(self.read_ahead if self.max_gap >= 0 else 0),
            )
            state.keeper = _close_at_shutdown(state)
            try:
                state.keeper.__anext__().send(None)  # run to its yield: the loop now knows it
            except StopIteration:
                pass
        return state

    def reads_in_thread(self, url: str) -> bool:
        """Whether *url* is a plain local file, which :meth:`get_sync` reads in the calling thread.

        False when the ``file`` protocol was given options or a filesystem of its own.
        """
        protocol = split_url(url)[0]
        return protocol == "file" and not self.options.get("file") and "file" not in self.filesystems

    def _local_target(self) -> LocalTarget:
        with self._local_lock:
            if self._local is None:
                self._local = LocalTarget(verifier=self.verifier)
            return self._local

    def _target(self, protocol: str) -> Any:
        if protocol == "file" and self.reads_in_thread(protocol + "://"):
            return self._local_target()
        state = self._state()
        target = state.targets.get(protocol)
        if target is None:
            target = make_target(TargetContext(
                protocol, self.options.get(protocol, {}), self.filesystems.get(protocol), self.check_url,
                self.deadlines, self.verifier,
            ))
            state.targets[protocol] = target
        return target

    async def close(self) -> None:
        """Close the sessions opened in the running loop, and the local files."""
        self._close_local()
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await _close_state(state)

    def _close_local(self) -> None:
        with self._local_lock:
            local, self._local = self._local, None
        if local is not None:
            local.close_sync()

    def close_all(self, timeout: float = 10.0) -> None:
        """Close the sessions of every event loop this fetcher has read in, from any thread.

        A loop running in another thread (zarr's) closes them there; a stopped
        loop is run until they are closed; in the calling thread's own running
        loop the closing is scheduled. Targets are made again on the next read.
        """
        self._close_local()
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, state in list(self._states.items()):
            self._states.pop(loop, None)
            coro = _close_state(state)
            if loop.is_closed():
                coro.close()
            elif loop is current:
                loop.create_task(coro)
            elif loop.is_running():
                try:
                    asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            else:
                try:
                    loop.run_until_complete(coro)
                except Exception:  # noqa: BLE001 - e.g. a loop owned by a thread that is gone
                    coro.close()

    # -- reading --------------------------------------------------------------------------

    def get_sync(self, url: str, start: int, end: int | None, exact: bool = False) -> bytes:
        """Read ``[start, end)`` of *url* from a thread without a running event loop.

        A plain local file (:meth:`reads_in_thread`) is read in the calling
        thread. Any other URL is read by :meth:`get` on fsspec's IO loop, so it
        is batched with the other threads' requests of the same tick.

        Raises
        ------
        FileNotFoundError, ShortRead, OSError
            As :meth:`get`.
        RuntimeError
            If a remote URL is read from the thread of fsspec's IO loop.
        """
        if not self.reads_in_thread(url):
            return run_sync(fsspec.asyn.get_loop(), self.get, url, start, end, exact)
        data = self._local_target().read_sync(split_url(url)[1], [(start, end)])[0]
        if exact and not isinstance(result := _checked(url, data, start, end), bytes):
            raise result
        return data

    def local_path(self, url: str) -> str | None:
        """The path :meth:`get_sync` reads *url* at in the calling thread (:meth:`reads_in_thread`), else None."""
        return split_url(url)[1] if self.reads_in_thread(url) else None

    def read_local(self, url: str, path: str, start: int, end: int | None, exact: bool = False) -> bytes:
        """:meth:`get_sync` of *url*, a plain local file at *path* (its :meth:`local_path`), without
        deciding that again. Raises as :meth:`get_sync`."""
        data = self._local_target().read_sync(path, [(start, end)])[0]
        if exact and not isinstance(result := _checked(url, data, start, end), bytes):
            raise result
        return data

    async def get(self, url: str, start: int, end: int | None, exact: bool = False) -> bytes:
        """Read ``[start, end)`` of *url*, batched with other requests of this tick.

        Parameters
        ----------
        exact
            If True, fewer bytes than ``end - start`` raise :class:`ShortRead`
            (a reference promising bytes the target does not have).

        Raises
        ------
        FileNotFoundError
            If the object does not exist.
        OSError
            For any other failure, after retries of transient ones.
        """
        state = self._state()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        state.pending.append(((url, start, end), exact, fut))
        if state.scheduled:
            return await fut  # the first request of this tick leads the batch
        # lead: give the other requests of this tick one turn of the loop to join, then read
        # them all in this coroutine (a task of its own would cost the loop one more turn)
        state.scheduled = True
        try:
            await asyncio.sleep(0)
        except BaseException:
            pending, state.pending, state.scheduled = state.pending, [], False
            self._spawn([p for p in pending if p[2] is not fut])
            raise
        pending, state.pending, state.scheduled = state.pending, [], False
        batch = _Batch(
            [r for r, _, _ in pending], [e for _, e, _ in pending], [b""] * len(pending), [f for _, _, f in pending]
        )
        try:
            await self._run(batch)
        except BaseException:
            # the leader was cancelled or failed: the others' reads carry on without it
            self._spawn([p for p in pending if not p[2].done() and p[2] is not fut])
            raise
        for f in batch.futures or ():
            if not f.done():
                f.set_exception(RuntimeError("read batch ended without an answer"))
        return fut.result()

    def _spawn(self, pending: list[tuple[Request, bool, asyncio.Future[bytes]]]) -> None:
        """Read *pending* requests in a task of their own, answering each future."""
        if not pending:
            return
        futures = [f for _, _, f in pending]
        batch = _Batch([r for r, _, _ in pending], [e for _, e, _ in pending], [b""] * len(pending), futures)
        task = asyncio.ensure_future(self._run(batch))

        def settle(t: asyncio.Task[None]) -> None:
            exc: BaseException = asyncio.CancelledError() if t.cancelled() else (
                t.exception() or RuntimeError("read batch ended without an answer")
            )
            for f in futures:
                if not f.done():
                    f.set_exception(exc)

        task.add_done_callback(settle)

    async def get_many(
        self, requests: Sequence[Request], exact: Sequence[bool] | bool = False
    ) -> list[bytes | BaseException]:
        """Read many ranges at once; return bytes or the exception for each, in order.

        Ranges of one URL are merged into spans; each span is one read. For
        remote URLs, ranges inside a read-ahead block are answered from it.
        """
        flags = [exact] * len(requests) if isinstance(exact, bool) else list(exact)
        batch = _Batch(requests, flags, [b""] * len(requests))
        await self._run(batch)
        return batch.results

    async def _run(self, batch: _Batch) -> None:
        """Read every request of *batch*, answering each as its bytes arrive."""
        requests = batch.requests
        by_url: dict[str, list[int]] = {}
        for i, (url, _, _) in enumerate(requests):
            by_url.setdefault(url, []).append(i)
        ra = self._state().readahead
        jobs = []
        for url, idx in by_url.items():
            local = isinstance(self._target(split_url(url)[0]), LocalTarget)
            if not local and ra is not None and ra.enabled:
                misses = []
                for i in idx:
                    blocks = ra.find(url, requests[i][1], requests[i][2])
                    if blocks is None:
                        misses.append(i)
                    else:
                        jobs.append(self._from_blocks(url, blocks, i, batch))
                idx = misses
                if not idx:
                    continue
            spans = merge_ranges([requests[i][1:] for i in idx], self.max_gap, self.max_block)
            block = None
            last = spans[-1]
            if not local and ra is not None and ra.enabled and last.end is not None:
                ahead = ra.extend(url, spans[0].start, last.end)
                if ahead > last.end:
                    last.end = ahead
                    block = ra.register(url, last.start, ahead)
            # local reads of one file share a worker thread; remote spans go out concurrently
            groups = [spans] if local else [[sp] for sp in spans]
            for group in groups:
                blk = block if group[-1] is spans[-1] else None
                jobs.append(self._read_group(url, group, idx, batch, blk))
        if len(jobs) == 1:
            await jobs[0]
        else:
            await asyncio.gather(*jobs)

    async def _from_blocks(
        self,
        url: str,
        blocks: list[Block],
        i: int,
        batch: _Batch,
    ) -> None:
        """Answer request *i* from read-ahead *blocks*; read it directly if they fail or fall short."""
        _, s, e = batch.requests[i]
        assert e is not None
        pieces = []
        pos = s
        try:
            for blk in blocks:
                data = await asyncio.shield(blk.future)
                piece = cut(data, blk.start, pos, e) if blk.start <= pos else b""
                pieces.append(piece)
                pos += len(piece)
        except SlowAnswer:  # the (larger) block did not arrive in time: this range alone may
            pos = -1
        except TransientError as exc:  # no answer, or failures on every attempt: so would this range
            batch.set(i, exc)
            return
        except Exception:  # noqa: BLE001 - a block's read failed otherwise: read this range alone
            pos = -1
        if pos != e and not (pos >= 0 and len(blocks) == 1):
            # a failed block, or blocks that ended early (end of object) and left a hole
            await self._read_group(url, [Span(s, e, [0])], [i], batch)
            return
        batch.deliver(url, s, b"".join(pieces) if len(pieces) > 1 else pieces[0], i)
        ra = self._state().readahead
        assert ra is not None
        ra.served(url, blocks[-1], e, self._read_span)

    async def _read_span(self, url: str, start: int, end: int) -> bytes:
        return (await self._read_retrying(url, [(start, end)]))[0]

    async def _read_group(
        self,
        url: str,
        spans: list[Span],
        idx: list[int],
        batch: _Batch,
        block: Block | None = None,
    ) -> None:
        """Read *spans* of *url* and hand each member request its bytes (or the failure).

        *block*, if given, is the read-ahead block the last span fills.
        """
        ra = self._state().readahead
        try:
            datas = await self._read_retrying(url, [(sp.start, sp.end) for sp in spans])
        except Exception as exc:  # noqa: BLE001 - every member gets the failure
            if block is not None and ra is not None:
                ra.fill(url, block, exc)
            for sp in spans:
                for m in sp.members:
                    batch.set(idx[m], exc)
            return
        if block is not None and ra is not None:
            ra.fill(url, block, datas[-1])
        for sp, data in zip(spans, datas):
            for m in sp.members:
                batch.deliver(url, sp.start, data, idx[m])

    async def _read_retrying(self, url: str, spans: list[tuple[int, int | None]]) -> list[bytes]:
        """Read *spans* of *url*: a local file once, a remote object under the deadlines and retries."""
        protocol, rest = split_url(url)
        target = self._target(protocol)
        state = self._state()
        assert state.semaphore is not None
        if isinstance(target, LocalTarget):
            async with state.semaphore:
                return await target.read(rest, spans)
        if self.verifier.full:
            await self._hash_once(url, target, state)
        return await call_with_retries(lambda: target.read(url, spans), self.deadlines, slot=state.semaphore)

    async def _hash_once(self, url: str, target: Any, state: _LoopState) -> None:
        """With ``verify="full"``: compare the SHA-256 of the whole remote object with the recorded
        one, once per URL; raises :class:`~refstore.fetch._identity.SourceMismatch`."""
        identity = self.verifier.expected(url)
        if identity is None or identity.sha256 is None:
            return

        async def read(start: int, end: int) -> bytes:
            return (await call_with_retries(
                lambda: target.read(url, [(start, end)]), self.deadlines, slot=state.semaphore
            ))[0]

        await check_once(self.verifier, url, "sha256", state.hashing, lambda: hash_object(url, read, identity))

    def expect(self, url: str, identity: SourceIdentity) -> None:
        """Hold reads of *url* (as it will be read) to *identity*, under the ``verify`` policy."""
        self.verifier.expect(url, identity)

    async def size(self, url: str) -> int:
        """Size in bytes of the object at *url* (a remote one under the deadlines and retries)."""
        protocol, rest = split_url(url)
        target = self._target(protocol)
        if isinstance(target, LocalTarget):
            return await target.size(rest)
        return await call_with_retries(lambda: target.size(url), self.deadlines)

    @property
    def retries(self) -> int:
        """Attempts after the first (``deadlines.attempts - 1``)."""
        return self.deadlines.attempts - 1


def _close_soon(states: Mapping[asyncio.AbstractEventLoop, _LoopState]) -> None:
    """Schedule the closing of *states* in their loops without waiting (a finalizer may run in any thread)."""
    try:
        current = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    for loop, state in list(states.items()):
        if loop.is_closed() or not (loop is current or loop.is_running()):
            continue
        coro = _close_state(state)
        try:
            if loop is current:
                loop.create_task(coro)
            else:
                future = asyncio.run_coroutine_threadsafe(coro, loop)
                _CLOSING.add(future)
                future.add_done_callback(_CLOSING.discard)
        except RuntimeError:  # the loop shut down meanwhile
            coro.close()


async def _close_at_shutdown(state: _LoopState) -> AsyncGenerator[None, None]:
    """An async generator parked at its ``yield`` for the life of a loop's state.

    A loop that shuts down properly (``asyncio.run``, ``loop.shutdown_asyncgens()``)
    closes the async generators it has seen, which runs the ``finally`` here, in the
    loop, while it can still await: the sessions of an ``asynchronous=True``
    filesystem used inside ``asyncio.run`` are closed before the loop is.
    """
    try:
        yield
    finally:
        state.keeper = None
        await _close_state(state)


async def _close_state(state: _LoopState) -> None:
    if state.closed:
        return
    state.closed = True
    keeper, state.keeper = state.keeper, None
    if keeper is not None:  # finish it now, so it is not closed again by the loop
        try:
            keeper.aclose().send(None)
        except (StopIteration, RuntimeError):
            pass
    if state.readahead is not None:
        await state.readahead.close()
    for target in state.targets.values():
        await target.close()
