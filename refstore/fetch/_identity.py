"""Verifying sources against the identity the manifest recorded: the ``verify`` policy and the checks.

- ``"off"``: nothing is checked (and a local file is read from the descriptor it was opened with).
- ``"cheap"`` (the default): what costs no extra request per chunk. Local files:
  size and mtime when the descriptor is opened, and after each read a ``stat``
  of the path, so a file replaced or rewritten since is opened again (and checked
  again). HTTP: ``If-Match`` (strong ETag) or ``If-Unmodified-Since`` on every
  GET, and the ``ETag``, ``Last-Modified`` and size of each answer. S3 (s3fs)
  with an ETag: ``IfMatch`` on every GET and the answer's ETag and size. Other
  filesystems (GCS, ...): their ``info`` once per URL per open.
- ``"full"``: also the SHA-256 of the whole object, once per URL per open (it is read whole).

A mismatch raises :class:`SourceMismatch`, which the reader turns into
:class:`refstore.errors.SourceChanged` naming the key. URLs without a recorded
identity are read as they are (local files still follow replacements).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from email.utils import format_datetime
from typing import Any

from refstore._source_identity import (
    SourceIdentity,
    etags_match,
    mtime_from_ns,
    parse_mtime,
    same_mtime,
)
from refstore.fetch._policy import split_url

__all__ = [
    "DEFAULT_VERIFY",
    "HASH_BLOCK",
    "VERIFY_POLICIES",
    "SourceMismatch",
    "Verifier",
    "check_headers",
    "check_once",
    "check_policy",
    "compare",
    "conditional_headers",
    "hash_object",
    "precondition_failed",
]

#: The ``verify`` policies, cheapest first.
VERIFY_POLICIES = ("off", "cheap", "full")
#: The default policy: checks that add no request per chunk.
DEFAULT_VERIFY = "cheap"
#: Bytes read at a time when hashing a whole remote object (``verify="full"``).
HASH_BLOCK = 8 << 20


class SourceMismatch(OSError):
    """A source differs from its recorded identity (internal: the reader raises ``SourceChanged``).

    Attributes
    ----------
    url, field, expected, found
        The URL, the field (``size``, ``etag``, ``mtime``, ``sha256``) and both values
        (``found`` is None when the source no longer says).
    """

    def __init__(self, url: str, field: str, expected: object, found: object) -> None:
        self.url, self.field, self.expected, self.found = url, field, expected, found
        super().__init__(f"{url}: {field} is {found!r}, the manifest recorded {expected!r}")

    def __reduce__(self):  # keep the four-argument constructor picklable
        return (type(self), (self.url, self.field, self.expected, self.found))


def check_policy(verify: str) -> str:
    """*verify* if it is one of :data:`VERIFY_POLICIES`.

    Raises
    ------
    ValueError
        Naming the value and the choices.
    """
    if verify not in VERIFY_POLICIES:
        raise ValueError(f"verify={verify!r} is not a verify policy; use one of {', '.join(VERIFY_POLICIES)}")
    return verify


class Verifier:
    """The policy and the identities expected per URL, shared by a fetcher's targets (any thread).

    Parameters
    ----------
    policy
        One of :data:`VERIFY_POLICIES`.
    """

    def __init__(self, policy: str = DEFAULT_VERIFY) -> None:
        self.policy = check_policy(policy)
        self._expected: dict[str, SourceIdentity] = {}
        self._passed: set[str] = set()
        self._lock = threading.Lock()

    @staticmethod
    def _key(url: str) -> str:
        protocol, rest = split_url(url)
        return rest if protocol == "file" else url

    @property
    def active(self) -> bool:
        """False for ``verify="off"``."""
        return self.policy != "off"

    @property
    def full(self) -> bool:
        """True for ``verify="full"`` (SHA-256 of whole objects)."""
        return self.policy == "full"

    def expect(self, url: str, identity: SourceIdentity) -> None:
        """Record that *url* (a local path or a URL, as read) must match *identity*."""
        if identity and self.active:
            with self._lock:
                self._expected[self._key(url)] = identity

    def expected(self, url: str) -> SourceIdentity | None:
        """The identity *url* must match, or None (none recorded, or ``verify="off"``)."""
        return self._expected.get(self._key(url)) if self._expected else None

    def passed(self, url: str, what: str) -> bool:
        """Whether the once-per-URL check *what* (``"info"``, ``"sha256"``) has passed for *url*."""
        return f"{what} {url}" in self._passed

    def mark(self, url: str, what: str) -> None:
        """Record that the once-per-URL check *what* passed for *url*."""
        with self._lock:
            self._passed.add(f"{what} {url}")

    def __getstate__(self) -> dict[str, Any]:
        return {"policy": self.policy, "expected": dict(self._expected)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["policy"])  # type: ignore[misc]
        self._expected = state["expected"]


def compare(
    url: str,
    identity: SourceIdentity,
    *,
    size: int | None = None,
    etag: str | None = None,
    mtime: datetime | str | None = None,
    sha256: str | None = None,
) -> None:
    """Compare what a source says now with *identity*; what it does not say (None) is not compared.

    Raises
    ------
    SourceMismatch
        For the first field that differs (size, etag, mtime, sha256).
    """
    if identity.size is not None and size is not None and size != identity.size:
        raise SourceMismatch(url, "size", identity.size, size)
    if identity.etag is not None and etag is not None and not etags_match(identity.etag, etag):
        raise SourceMismatch(url, "etag", identity.etag, etag)
    if identity.mtime is not None and mtime is not None and not same_mtime(identity.mtime, mtime):
        shown = mtime if isinstance(mtime, str) else mtime.isoformat()
        raise SourceMismatch(url, "mtime", identity.mtime, shown)
    if identity.sha256 is not None and sha256 is not None and sha256 != identity.sha256:
        raise SourceMismatch(url, "sha256", identity.sha256, sha256)


def compare_stat(path: str, identity: SourceIdentity, size: int, mtime_ns: int) -> None:
    """:func:`compare` for a local file's ``stat``; raises :class:`SourceMismatch`."""
    compare(path, identity, size=size, mtime=mtime_from_ns(mtime_ns) if identity.mtime is not None else None)


# -- HTTP -----------------------------------------------------------------------------------------


def conditional_headers(identity: SourceIdentity) -> dict[str, str]:
    """The precondition headers of a GET of a source with *identity*.

    ``If-Match`` for a strong ETag; otherwise ``If-Unmodified-Since`` for an mtime
    of whole seconds (an HTTP date cannot say more).
    """
    if identity.etag is not None and not identity.etag.strip().startswith(("W/", "w/")):
        tag = identity.etag.strip()
        return {"If-Match": tag if tag.startswith('"') else f'"{tag}"'}
    if identity.etag is None and identity.mtime is not None and "." not in identity.mtime:
        when = parse_mtime(identity.mtime)
        if when is not None:
            return {"If-Unmodified-Since": format_datetime(when, usegmt=True)}
    return {}


def check_headers(url: str, identity: SourceIdentity, headers: Mapping[str, str], size: int | None) -> None:
    """Compare an answer's ``ETag``, ``Last-Modified`` and the object's *size* with *identity*.

    Raises
    ------
    SourceMismatch
        For the first field that differs.
    """
    compare(url, identity, size=size, etag=headers.get("ETag"), mtime=headers.get("Last-Modified"))


def precondition_failed(url: str, identity: SourceIdentity, headers: Mapping[str, str]) -> SourceMismatch:
    """The mismatch a ``412 Precondition Failed`` (or S3's ``PreconditionFailed``) stands for."""
    if identity.etag is not None:
        return SourceMismatch(url, "etag", identity.etag, headers.get("ETag"))
    return SourceMismatch(url, "mtime", identity.mtime, headers.get("Last-Modified"))


# -- whole objects ------------------------------------------------------------------------------------


async def hash_object(url: str, read: Callable[[int, int], Awaitable[bytes]], identity: SourceIdentity) -> None:
    """Read *url* whole, block by block (``read(start, end)``), and compare its SHA-256 and size.

    Raises
    ------
    SourceMismatch
        If the digest or the size differs from *identity*.
    """
    digest = hashlib.sha256()
    pos = 0
    while True:
        block = await read(pos, pos + HASH_BLOCK)
        digest.update(block)
        pos += len(block)
        if len(block) < HASH_BLOCK:
            break
    compare(url, identity, size=pos, sha256=digest.hexdigest())


def hash_descriptor(path: str, fd: int, identity: SourceIdentity) -> None:
    """:func:`hash_object` for an open local file (read with ``pread``, in the calling thread)."""
    digest = hashlib.sha256()
    pos = 0
    while block := os.pread(fd, HASH_BLOCK, pos):
        digest.update(block)
        pos += len(block)
    compare(path, identity, size=pos, sha256=digest.hexdigest())


async def check_once(
    verifier: Verifier,
    url: str,
    what: str,
    pending: dict[str, asyncio.Future[None]],
    check: Callable[[], Awaitable[None]],
) -> None:
    """Run ``check()`` (the check *what* of *url*) unless it passed already; concurrent callers in
    this loop wait for the same run (*pending*: the runs under way, by URL).

    Raises
    ------
    SourceMismatch
        As ``check()`` raises it (and anything else it raises); a failed check runs again next time.
    """
    if verifier.passed(url, what):
        return
    running = pending.get(url)
    if running is not None:
        return await asyncio.shield(running)
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    pending[url] = future
    try:
        await check()
        verifier.mark(url, what)
        future.set_result(None)
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: the callers waiting on it raise it themselves
        raise
    finally:
        pending.pop(url, None)
