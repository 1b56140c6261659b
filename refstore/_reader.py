"""The reader both faces share: manifest lookups joined to the fetcher, with URL resolution,
the URL policy and the mapping of failures to refstore's errors."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec.asyn

from refstore.errors import (
    DeadlineExceeded,
    KeyNotInManifest,
    ManifestError,
    ReferenceNotReachable,
    SourceChanged,
    URLNotAllowed,
)
from refstore.fetch import Deadlines, Fetcher, URLPolicy, split_url
from refstore.fetch._deadlines import run_sync
from refstore.fetch._fetcher import DEFAULT_MAX_BLOCK, DEFAULT_MAX_GAP, DEFAULT_READ_AHEAD
from refstore.fetch._identity import DEFAULT_VERIFY, SourceMismatch
from refstore.manifest import Manifest, Reference, open_manifest
from refstore.manifest._lazy import LazyParquetManifest

_FS_CONTROL_OPTIONS = ("asynchronous", "loop", "skip_instance_cache", "use_listings_cache")

KeyRange = tuple[str, int | None, int | None]
"""``(key, start, end)`` relative to the key's bytes, as fsspec's ``cat_file`` takes them:
None means the start/end of the entry, negative values count from its end."""


def _clean(options: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (options or {}).items() if k not in _FS_CONTROL_OPTIONS}


def _protocols_of(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


class Reader:
    """Reads the bytes of manifest keys.

    Parameters are those of :class:`refstore.ReferenceFileSystem`; see there.
    """

    def __init__(
        self,
        fo: Any,
        *,
        target: str | None = None,
        target_protocol: str | None = None,
        target_options: Mapping[str, Any] | None = None,
        remote_protocol: str | None = None,
        remote_options: Mapping[str, Any] | None = None,
        fs: Any = None,
        template_overrides: Mapping[str, str] | None = None,
        max_gap: int = DEFAULT_MAX_GAP,
        max_block: int = DEFAULT_MAX_BLOCK,
        max_concurrency: int = 64,
        read_ahead: int = DEFAULT_READ_AHEAD,
        retries: int | None = None,
        cache_size: int = 128,
        url_policy: URLPolicy | None = None,
        deadlines: Deadlines | Mapping[str, Any] | None = None,
        verify: str = DEFAULT_VERIFY,
    ) -> None:
        self.manifest: Manifest = open_manifest(
            fo,
            target_protocol=target_protocol,
            target_options=target_options,
            template_overrides=template_overrides,
            cache_size=cache_size,
        )
        self.target = target
        remote_opts = _clean(remote_options)
        if fs is not None and not isinstance(fs, Mapping) and not remote_protocol:
            # like fsspec: a single filesystem instance also reads URLs that name no protocol
            remote_protocol = _protocols_of(fs)[0]
        options: dict[str, dict[str, Any]] = {}
        filesystems: dict[str, Any] = {}
        if remote_protocol:
            options[split_url(remote_protocol + "://")[0]] = remote_opts
        else:
            # like fsspec: without a remote_protocol every inferred protocol gets remote_options
            for proto in self._protocols_in_manifest() - {"file"}:
                options[proto] = remote_opts
        if isinstance(fs, Mapping):
            for proto, value in fs.items():
                proto = split_url((proto or self._default_protocol(remote_protocol)) + "://")[0]
                if isinstance(value, Mapping):
                    options[proto] = _clean(value)
                elif value is not None:
                    filesystems[proto] = value
        elif fs is not None:
            for proto in _protocols_of(fs):
                filesystems[split_url(proto + "://")[0]] = fs
        self.remote_protocol = remote_protocol
        self._default = self._default_protocol(remote_protocol)
        self.policy = URLPolicy.coerce(url_policy) or _default_policy(
            self.manifest.source_is_remote,
            # protocols the caller names (not the manifest) are the caller's choice, as in fsspec
            _named_protocols(remote_protocol, fs, self._default),
        )
        self.fetcher = Fetcher(
            options=options,
            filesystems=filesystems,
            max_gap=max_gap,
            max_block=max_block,
            max_concurrency=max_concurrency,
            read_ahead=read_ahead,
            deadlines=Deadlines.coerce(deadlines).with_retries(retries),
            check_url=self.policy.check,
            verify=verify,
        )
        self._resolved: dict[str | None, str] = {}
        self._in_thread: tuple[int, bool] | None = None  # (manifest generation, answer)

    def _protocols_in_manifest(self) -> set[str]:
        return {split_url(u)[0] for u in self.manifest._urls if u and "://" in u}

    def _default_protocol(self, remote_protocol: str | None) -> str:
        """The protocol for URLs that name none (fsspec's ``fss[None]``)."""
        if remote_protocol:
            return split_url(remote_protocol + "://")[0]
        found = self._protocols_in_manifest() - {"file"}
        return found.pop() if len(found) == 1 else "file"

    # -- resolution -------------------------------------------------------------------------

    def resolve_url(self, url: str | None, key: str) -> str:
        """The absolute URL a reference names, after ``target`` and the default protocol.

        Raises
        ------
        ManifestError
            For a null URL without a ``target``.
        URLNotAllowed
            If the URL policy refuses it.
        """
        out = self._resolved.get(url)
        if out is None:
            raw = url if url is not None else self.target
            if raw is None:
                raise ManifestError(f"key {key!r}: the reference has no URL and no target was given")
            if "://" in raw:
                out = raw
            elif self._default == "file":
                out = os.path.abspath(os.path.expanduser(raw))
            else:
                out = f"{self._default}://{raw}"
            self.policy.check(out, key)
            identity = self.manifest.sources.get(raw) if self.manifest.sources else None
            if identity is not None:
                self.fetcher.expect(out, identity)  # reads of out are held to it (verify policy)
            self._resolved[url] = out
        return out

    def entry(self, key: str) -> bytes | Reference:
        """The manifest entry of *key*.

        Raises
        ------
        KeyNotInManifest
            If the manifest has no such key.
        """
        entry = self.manifest.get(key)
        if entry is None:
            raise KeyNotInManifest(f"key {key!r} is not in the manifest")
        return entry

    # -- reading ------------------------------------------------------------------------------

    async def size(self, key: str) -> int:
        """Size in bytes of the entry of *key* (a whole-object reference asks the target)."""
        entry = self.entry(key)
        if isinstance(entry, bytes):
            return len(entry)
        if entry.length is not None:
            return entry.length
        url = self.resolve_url(entry.url, key)
        try:
            return max(await self.fetcher.size(url) - entry.offset, 0)
        except Exception as exc:
            err = _wrap(exc, key, url)
            if err is exc or not isinstance(err, BaseException):
                raise
            raise err from exc

    async def read(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of *key* (fsspec ``cat_file`` semantics).

        Raises
        ------
        KeyNotInManifest
            If the manifest has no such key.
        URLNotAllowed
            If the reference's URL is outside the URL policy.
        ReferenceNotReachable
            If the target cannot be read; the cause is chained.
        """
        result = (await self.read_many([(key, start, end)]))[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def read_sync(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """:meth:`read` for a thread without a running event loop.

        Local files are read in the calling thread, anything else on fsspec's IO
        loop (:meth:`Fetcher.get_sync`). Raises as :meth:`read`.
        """
        plan = self._plan(key, start, end)
        if plan is None:  # a suffix of an object of unknown size: ask for the size first
            return run_sync(fsspec.asyn.get_loop(), self.read, key, start, end)
        if isinstance(plan, bytes):
            return plan
        url, lo, hi, exact = plan
        try:
            return self.fetcher.get_sync(url, lo, hi, exact)
        except Exception as exc:
            err = _wrap(exc, key, url)
            if err is exc or not isinstance(err, BaseException):
                raise
            raise err from exc

    def reads_in_thread(self) -> bool:
        """Whether every reference targets a plain local file, so :meth:`read_sync` never hops threads.

        Decided from the manifest's URL table (again after each edit); a lazy
        parquet manifest, whose table is not all in memory, answers False.
        """
        manifest = self.manifest
        if isinstance(manifest, LazyParquetManifest):
            return False
        if self._in_thread is None or self._in_thread[0] != manifest._generation:
            urls = {self.target or "" if u is None else u for u in manifest._urls}
            # a URL naming no protocol gets the default one (see resolve_url)
            local = all(self.fetcher.reads_in_thread(u if "://" in u else f"{self._default}://") for u in urls)
            self._in_thread = (manifest._generation, local)
        return self._in_thread[1]

    def _plan(self, key: str, start: int | None, end: int | None) -> bytes | tuple[str, int, int | None, bool] | None:
        """What reading ``[start, end)`` of *key* takes: its bytes if inline, else
        ``(url, lo, hi, exact)`` for the fetcher; None if the size of the target must be
        asked first (a negative position in a whole-object reference).

        Raises
        ------
        KeyNotInManifest, URLNotAllowed, ManifestError
            As :meth:`read`.
        """
        entry = self.entry(key)
        if isinstance(entry, bytes):
            return entry[_slice(start, end, len(entry))]
        url = self.resolve_url(entry.url, key)
        if entry.length is None and ((start or 0) < 0 or (end or 0) < 0):
            return None
        return (url, *_absolute(entry, start, end), entry.length is not None)

    async def read_many(self, requests: Sequence[KeyRange]) -> list[bytes | BaseException]:
        """Read many key ranges at once (merged per URL); each result is bytes or the exception."""
        results: list[bytes | BaseException] = [b""] * len(requests)
        fetches: list[tuple[str, int, int | None]] = []
        exact: list[bool] = []
        where: list[tuple[int, str, str]] = []
        for i, (key, start, end) in enumerate(requests):
            try:
                plan = self._plan(key, start, end)
                if plan is None:
                    entry = self.entry(key)
                    assert isinstance(entry, Reference)  # _plan answers None only for whole-object references
                    ref = Reference(entry.url, entry.offset, await self.size(key))
                    plan = (self.resolve_url(entry.url, key), *_absolute(ref, start, end), True)
            except (KeyNotInManifest, URLNotAllowed, ManifestError, ReferenceNotReachable) as exc:
                results[i] = exc
                continue
            if isinstance(plan, bytes):
                results[i] = plan
                continue
            url, lo, hi, is_exact = plan
            fetches.append((url, lo, hi))
            exact.append(is_exact)
            where.append((i, key, url))
        if fetches:
            got = await self.fetcher.get_many(fetches, exact) if len(fetches) > 1 else [
                await _one(self.fetcher, fetches[0], exact[0])
            ]
            for (i, key, url), res in zip(where, got):
                results[i] = _wrap(res, key, url)
        return results

    async def close(self) -> None:
        await self.fetcher.close()


def _named_protocols(remote_protocol: str | None, fs: Any, default: str) -> set[str]:
    """The protocols the caller configured by name: ``remote_protocol`` and ``fs``."""
    named = {split_url(remote_protocol + "://")[0]} if remote_protocol else set()
    if isinstance(fs, Mapping):
        named |= {split_url((p or default) + "://")[0] for p, v in fs.items() if v is not None}
    elif fs is not None:
        named |= {split_url(p + "://")[0] for p in _protocols_of(fs)}
    return named


def _default_policy(source_is_remote: bool, named: set[str]) -> URLPolicy:
    """The default policy, also allowing the protocols given by ``remote_protocol`` or ``fs``."""
    policy = URLPolicy.for_manifest(source_is_remote)
    if policy.protocols is None or named <= policy.protocols:
        return policy
    return dataclasses.replace(policy, protocols=policy.protocols | frozenset(named))


async def _one(fetcher: Fetcher, req: tuple[str, int, int | None], exact: bool) -> bytes | BaseException:
    try:
        return await fetcher.get(*req, exact=exact)
    except Exception as exc:  # noqa: BLE001 - mapped by _wrap
        return exc


def _wrap(res: bytes | BaseException, key: str, url: str) -> bytes | BaseException:
    """*res*, or the failure as the :class:`ReferenceNotReachable` (:class:`DeadlineExceeded`
    for a timeout, :class:`SourceChanged` for a source that is not what the manifest recorded)
    naming *key* and *url*, with the failure as its cause."""
    if not isinstance(res, BaseException) or isinstance(res, (URLNotAllowed, ReferenceNotReachable)):
        return res
    if isinstance(res, SourceMismatch):
        changed = SourceChanged(key, url, res.field, res.expected, res.found)
        changed.__cause__ = res
        return changed
    err = (DeadlineExceeded if isinstance(res, TimeoutError) else ReferenceNotReachable)(key, url, res)
    err.__cause__ = res
    return err


def _slice(start: int | None, end: int | None, size: int) -> slice:
    lo, hi = _clamp(start, end, size)
    return slice(lo, hi)


def _clamp(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    lo = 0 if start is None else (start + size if start < 0 else start)
    hi = size if end is None else (end + size if end < 0 else end)
    lo = min(max(lo, 0), size)
    return lo, min(max(hi, lo), size)


def _absolute(ref: Reference, start: int | None, end: int | None) -> tuple[int, int | None]:
    """Absolute ``[lo, hi)`` in the target, never outside the referenced bytes."""
    if ref.length is None:  # whole object of unknown size, start/end are >= 0 here
        lo = ref.offset + (start or 0)
        return lo, None if end is None else max(ref.offset + end, lo)
    lo, hi = _clamp(start, end, ref.length)
    return ref.offset + lo, ref.offset + hi
