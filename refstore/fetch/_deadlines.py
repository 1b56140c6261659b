"""Deadlines and retries: how long one remote request may take, and how a failed one is tried again.

:class:`Deadlines` holds the numbers, :func:`backoff_delay` is the wait between
attempts (capped exponential, with jitter), :func:`retry_after` reads a
``Retry-After`` header, and :func:`call_with_retries` runs one request under
them. Targets say what a retry may cure by raising :class:`TransientError`.
:func:`run_sync` is fsspec's ``sync`` that lets these timeouts through with
their messages.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, fields, replace
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import fsspec.asyn
from fsspec.exceptions import FSTimeoutError

from refstore.errors import RefstoreError

T = TypeVar("T")
_JSON_TAG = "refstore_deadlines"


class TransientError(OSError):
    """A failure a retry may cure (HTTP 5xx/429, a dropped connection, a timeout).

    Attributes
    ----------
    retry_after : float or None
        Seconds the server asked to wait before the next attempt (``Retry-After``), if it said.
    """

    def __init__(self, *args: Any, retry_after: float | None = None) -> None:
        super().__init__(*args)
        self.retry_after = retry_after

    def __reduce__(self) -> Any:  # keep retry_after through pickling
        return (_rebuild, (type(self), self.args, self.retry_after))


def _rebuild(cls: type[TransientError], args: tuple[Any, ...], retry_after: float | None) -> TransientError:
    return cls(*args, retry_after=retry_after)


class FetchTimeout(TransientError, TimeoutError):
    """A request ran past one of its :class:`Deadlines` (connect, first byte or total)."""


class SlowAnswer(FetchTimeout):
    """The answer did not all arrive within the total deadline: the server answers, slowly.

    A smaller read of the same server may still succeed, so a request waiting
    on a failed read-ahead block reads its own range after this failure (and
    not after the others).
    """


@dataclass(frozen=True)
class Deadlines(Mapping[str, Any]):
    """How long one remote request may take, and how often a failed one is tried.

    Applies to every remote read and size query alike: HTTP(S), S3 and GCS
    (whose own retries refstore turns off, so they do not stack), and any other
    fsspec filesystem (``total`` only). Local files have no deadline. Pass it
    as ``deadlines=`` to :class:`refstore.ReferenceStore` or
    :class:`refstore.ReferenceFileSystem`, as a ``Deadlines`` or a dict of the
    fields to change (``deadlines={"total": 120}``).

    Parameters
    ----------
    connect : float or None, default 10
        Seconds to open a connection (TCP and TLS).
    first_byte : float or None, default 20
        Seconds from sending a request to the first byte of the answer; also
        the longest silence while the body arrives.
    total : float or None, default 25
        Seconds for one whole attempt, from the request to the last byte of
        the body (redirects included). A merged read is at most ``max_block``
        (8 MiB) bytes, so the default asks for about 0.35 MB/s per read in
        flight; raise it on slow links (None: no limit).
    attempts : int, default 3
        Tries of one request in all (1: no retry). Only what a retry may cure
        is retried: timeouts, dropped connections, HTTP 408, 425, 429, 500,
        502, 503 and 504 (and their S3 and GCS forms).
    backoff : float, default 0.2
        Seconds of the wait after the first failed attempt; each next wait
        doubles, and each is drawn at random between half and all of that
        (jitter), so clients that failed together do not retry together.
    backoff_max : float, default 5
        The longest wait between two attempts. A server's ``Retry-After`` (on
        429 or 503) is honoured when it asks for at most this long; asking for
        longer ends the retries at once, with the wait it asked for in the error.

    Notes
    -----
    With the defaults a read ends within :attr:`bound`, 85 s (3 x 25 s plus at
    most two waits of 5 s): about 61 s for a server that never answers
    (3 x 20 s), about 76 s for one that trickles its bytes (3 x 25 s). Time
    spent waiting for a free slot among ``max_concurrency`` reads in flight
    is not counted. A read that fails on time raises
    :class:`refstore.errors.DeadlineExceeded` (a ``TimeoutError``).

    A ``Deadlines`` is also a read-only mapping of its JSON description
    (:meth:`to_dict`), so it pickles and goes through fsspec's ``to_json``.
    """

    connect: float | None = 10.0
    first_byte: float | None = 20.0
    total: float | None = 25.0
    attempts: int = 3
    backoff: float = 0.2
    backoff_max: float = 5.0

    def __post_init__(self) -> None:
        for name in ("connect", "first_byte", "total"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value < math.inf):
                raise ValueError(f"Deadlines.{name} must be a positive number of seconds or None, not {value!r}")
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"Deadlines.attempts must be an integer of at least 1, not {self.attempts!r}")
        for name in ("backoff", "backoff_max"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
                raise ValueError(f"Deadlines.{name} must be a number of seconds, at least 0, not {value!r}")

    @property
    def bound(self) -> float | None:
        """The longest a read can take: ``attempts x total + (attempts - 1) x backoff_max`` (None without a total)."""
        if self.total is None:
            return None
        return self.attempts * self.total + (self.attempts - 1) * self.backoff_max

    def with_retries(self, retries: int | None) -> Deadlines:
        """These deadlines with ``attempts = retries + 1`` (the older ``retries=`` keyword); None changes nothing."""
        return self if retries is None else replace(self, attempts=int(retries) + 1)

    # -- JSON ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description; :meth:`from_dict` builds the same deadlines from it."""
        return {_JSON_TAG: 1, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_dict(cls, description: Mapping[str, Any]) -> Deadlines:
        """The deadlines a :meth:`to_dict` description stands for, or a dict of fields to change.

        Raises
        ------
        ValueError
            For an unknown field or a value out of range.
        """
        if isinstance(description, Deadlines):
            return description
        if not isinstance(description, Mapping):
            raise ValueError(f"not a Deadlines description: {description!r}")
        names = {f.name for f in fields(cls)}
        unknown = set(description) - names - {_JSON_TAG}
        if unknown:
            raise ValueError(f"Deadlines has no fields {sorted(unknown)}; it has {sorted(names)}")
        return cls(**{k: v for k, v in description.items() if k in names})

    @classmethod
    def coerce(cls, deadlines: Deadlines | Mapping[str, Any] | None) -> Deadlines:
        """*deadlines* as a :class:`Deadlines`: None gives the defaults."""
        return cls() if deadlines is None else cls.from_dict(deadlines)

    def __getitem__(self, name: str) -> Any:
        return self.to_dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(fields(self)) + 1


def backoff_delay(failed: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the *failed*-th failed attempt (1 for the first).

    ``min(cap, base x 2 ** (failed - 1))`` scaled by a random factor in
    ``[0.5, 1]`` ("equal jitter"): never more than *cap*, never less than half
    the exponential step, and different for clients that failed together.
    """
    step = min(cap, base * 2.0 ** min(max(failed - 1, 0), 60))
    return step * (0.5 + 0.5 * rand())


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), or None if unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    deadlines: Deadlines,
    slot: AbstractAsyncContextManager[Any] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """Await ``call()`` under ``deadlines.total``, retrying what :class:`TransientError` (or a
    timeout, or a dropped connection) says a retry may cure.

    Parameters
    ----------
    slot
        Entered around each attempt, outside its deadline (a semaphore bounding
        reads in flight), and left during the waits.

    Raises
    ------
    FetchTimeout
        If the last attempt ran out of time (the message counts the attempts).
    TransientError
        If the last attempt failed otherwise, or the server asked to wait
        longer than ``backoff_max`` (the message says so).
    Exception
        Anything else ``call()`` raises, at once (a missing object, a wrong answer).
    """
    attempts = deadlines.attempts
    for attempt in range(1, attempts + 1):
        deadline: asyncio.Timeout | None = None
        try:
            async with slot if slot is not None else nullcontext():
                # made once the slot is held: asyncio.timeout() fixes its deadline when called
                deadline = asyncio.timeout(deadlines.total)
                async with deadline:
                    return await call()
        except TransientError as exc:
            failure: TransientError = exc
        except (TimeoutError, ConnectionError) as exc:
            if deadline is not None and deadline.expired():
                failure = SlowAnswer(f"deadline {deadlines.total:g} s exceeded")
            elif isinstance(exc, TimeoutError):
                failure = FetchTimeout(f"{type(exc).__name__}: {exc}")
            else:
                failure = TransientError(f"{type(exc).__name__}: {exc}")
            failure.__cause__ = exc
        if attempt == attempts:
            raise _gave_up(failure, f"gave up after {attempts} attempt{'s' if attempts > 1 else ''}")
        wait = backoff_delay(attempt, deadlines.backoff, deadlines.backoff_max)
        asked = failure.retry_after
        if asked is not None:
            if asked > deadlines.backoff_max:
                raise _gave_up(
                    failure,
                    f"the server asked to retry after {asked:g} s, longer than Deadlines.backoff_max "
                    f"({deadlines.backoff_max:g} s); gave up after {attempt} attempt{'s' if attempt > 1 else ''}",
                )
            wait = max(wait, asked)
        await sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _gave_up(failure: TransientError, why: str) -> TransientError:
    """The error that ends the retries: of the kind of the last *failure*, saying *why*."""
    cls = type(failure) if isinstance(failure, FetchTimeout) else (
        FetchTimeout if isinstance(failure, TimeoutError) else TransientError
    )
    err = cls(f"{failure}; {why}", retry_after=failure.retry_after)
    err.__cause__ = failure
    return err


def run_sync(loop: asyncio.AbstractEventLoop, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """``fsspec.asyn.sync(loop, func, *args, **kwargs)``, raising refstore's timeouts as themselves.

    fsspec's ``sync`` replaces every ``TimeoutError`` by a bare
    ``FSTimeoutError``; a :class:`FetchTimeout` or a
    :class:`refstore.errors.DeadlineExceeded` (both ``TimeoutError``) would
    lose the key, URL and deadline they name.
    """
    try:
        return fsspec.asyn.sync(loop, func, *args, **kwargs)
    except FSTimeoutError as exc:
        cause = exc.__cause__
        if isinstance(cause, (TransientError, RefstoreError)):
            raise cause from cause.__cause__
        raise
