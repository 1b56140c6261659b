"""The reader both faces share: manifest lookups joined to the fetcher, with URL resolution,
the URL policy and the mapping of failures to refstore's errors."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec.asyn

from refstore._options import Options
from refstore.errors import (
    DeadlineExceeded,
    KeyNotInManifest,
    ManifestError,
    ReferenceNotReachable,
    RefstoreWarning,
    SourceChanged,
    URLNotAllowed,
)
from refstore.fetch import Deadlines, Fetcher, URLPolicy, split_url
from refstore.fetch._deadlines import run_sync
from refstore.fetch._identity import SourceMismatch
from refstore.manifest import Manifest, Reference, open_manifest
from refstore.manifest._lazy import LazyParquetManifest
from refstore.manifest._model import check_metadata, is_metadata_key

#: Whole-key plans of local references remembered by :meth:`Reader.read_sync` (oldest forgotten first).
LOCAL_PLANS_KEPT = 100_000
_FS_CONTROL_OPTIONS = ("asynchronous", "loop", "skip_instance_cache", "use_listings_cache")

KeyRange = tuple[str, int | None, int | None]
"""``(key, start, end)`` relative to the key's bytes, as fsspec's ``cat_file`` takes them:
None means the start/end of the entry, negative values count from its end."""


def _clean(options: Any, name: str = "remote_options") -> dict[str, Any]:
    """Storage options without the filesystem-control ones; anything but a mapping (fsspec's own
    tests pass ``remote_options="memory"``, which fsspec never reads) is ignored with a warning."""
    if options is not None and not isinstance(options, Mapping):
        warnings.warn(f"{name}={options!r} is not a dict of storage options; ignored", RefstoreWarning, stacklevel=4)
        return {}
    return {k: v for k, v in (options or {}).items() if k not in _FS_CONTROL_OPTIONS}


def _protocols_of(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


class Reader:
    """Reads the bytes of manifest keys.

    Parameters
    ----------
    fo
        The manifest (see :class:`refstore.ReferenceFileSystem`).
    options
        How to open and read it (:class:`refstore._options.Options`).
    """

    def __init__(self, fo: Any, options: Options | None = None) -> None:
        opts = options or Options()
        self.manifest: Manifest = open_manifest(
            fo,
            target_protocol=opts.target_protocol,
            target_options=opts.target_options,
            template_overrides=opts.template_overrides,
            cache_size=opts.cache_size,
        )
        self.target = opts.target
        remote_protocol, fs = opts.remote_protocol, opts.fs
        remote_opts = _clean(opts.remote_options)
        if fs is not None and not isinstance(fs, Mapping) and not remote_protocol:
            # like fsspec: a single filesystem instance also reads URLs that name no protocol
            remote_protocol = _protocols_of(fs)[0]
        options_by_protocol: dict[str, dict[str, Any]] = {}
        filesystems: dict[str, Any] = {}
        if remote_protocol:
            options_by_protocol[split_url(remote_protocol + "://")[0]] = remote_opts
        else:
            # like fsspec: without a remote_protocol every inferred protocol gets remote_options
            for proto in self._protocols_in_manifest() - {"file"}:
                options_by_protocol[proto] = remote_opts
        if isinstance(fs, Mapping):
            for proto, value in fs.items():
                proto = split_url((proto or self._default_protocol(remote_protocol)) + "://")[0]
                if isinstance(value, Mapping):
                    options_by_protocol[proto] = _clean(value)
                elif value is not None:
                    filesystems[proto] = value
        elif fs is not None:
            for proto in _protocols_of(fs):
                filesystems[split_url(proto + "://")[0]] = fs
        self.remote_protocol = remote_protocol
        self._default = self._default_protocol(remote_protocol)
        self.policy = URLPolicy.coerce(opts.url_policy) or _default_policy(
            self.manifest.source_is_remote,
            # protocols the caller names (not the manifest) are the caller's choice, as in fsspec
            _named_protocols(remote_protocol, fs, self._default),
        )
        self.fetcher = Fetcher(
            options=options_by_protocol,
            filesystems=filesystems,
            max_gap=opts.max_gap,
            max_block=opts.max_block,
            max_concurrency=opts.max_concurrency,
            read_ahead=opts.read_ahead,
            deadlines=Deadlines.coerce(opts.deadlines).with_retries(opts.retries),
            check_url=self.policy.check,
            verify=opts.verify,
        )
        self._resolved: dict[str | None, str] = {}
        self._in_thread: tuple[int, bool] | None = None  # (manifest generation, answer)
        # whole-key reads of local files: key -> (url, path, lo, hi, exact), for one manifest generation
        self._local_plans: dict[str, tuple[str, str, int, int | None, bool]] = {}
        self._local_plans_generation: int | None = None

    def _protocols_in_manifest(self) -> set[str]:
        return {split_url(p + "://")[0] for p in self.manifest.protocols()}

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
        if start is None and end is None and not is_metadata_key(key):
            data = self._read_local_whole(key)
            if data is not None:
                return data
        plan = self._plan(key, start, end)
        if plan is None:  # a suffix of an object of unknown size: ask for the size first
            return run_sync(fsspec.asyn.get_loop(), self.read, key, start, end)
        if isinstance(plan, bytes):
            return plan
        url, lo, hi, exact = plan
        try:
            data = self.fetcher.get_sync(url, lo, hi, exact)
        except Exception as exc:
            err = _wrap(exc, key, url)
            if err is exc or not isinstance(err, BaseException):
                raise
            raise err from exc
        checked = _wrap(data, key, url, whole=start is None and end is None)
        if isinstance(checked, BaseException):
            raise checked
        return data

    def _read_local_whole(self, key: str) -> bytes | None:
        """All of *key* if it references a plain local file, its plan (entry, resolved and
        policy-checked URL, span) remembered for the next read of the key (the last
        :data:`LOCAL_PLANS_KEPT`, for one manifest generation); None: read it the general way.
        The read itself is the fetcher's (source identity checked), and raises as :meth:`read`."""
        generation = getattr(self.manifest, "generation", None)
        if generation is None:
            return None
        plans = self._local_plans
        if generation != self._local_plans_generation:
            plans.clear()
            self._local_plans_generation = generation
        found = plans.get(key)
        if found is None:
            plan = self._plan(key, None, None)
            if not isinstance(plan, tuple):
                return None
            url, lo, hi, exact = plan
            path = self.fetcher.local_path(url)
            if path is None:
                return None
            if len(plans) >= LOCAL_PLANS_KEPT:
                plans.pop(next(iter(plans)))
            plans[key] = found = (url, path, lo, hi, exact)
        url, path, lo, hi, exact = found
        try:
            return self.fetcher.read_local(url, path, lo, hi, exact)
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
        if self._in_thread is None or self._in_thread[0] != manifest.generation:
            # (whether a URL is read in this thread depends on its protocol only)
            schemes = manifest._urls.schemes()
            urls = {f"{p}://" for p in schemes if p} | {"" for p in schemes if p == ""}
            if None in schemes:
                urls.add(self.target or "")
            # a URL naming no protocol gets the default one (see resolve_url)
            local = all(self.fetcher.reads_in_thread(u if "://" in u else f"{self._default}://") for u in urls)
            self._in_thread = (manifest.generation, local)
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
                results[i] = _wrap(res, key, url, whole=requests[i][1] is None and requests[i][2] is None)
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


def _wrap(res: bytes | BaseException, key: str, url: str, whole: bool = False) -> bytes | BaseException:
    """*res*, or the failure as the :class:`ReferenceNotReachable` (:class:`DeadlineExceeded`
    for a timeout, :class:`SourceChanged` for a source that is not what the manifest recorded)
    naming *key* and *url*, with the failure as its cause.

    A metadata document read *whole* from a reference must be a JSON object (zarr would
    otherwise fail with a bare ``JSONDecodeError``): else a ManifestError naming key and URL.
    """
    if whole and isinstance(res, bytes) and is_metadata_key(key):
        try:
            check_metadata(key, res)
        except ManifestError as exc:
            return ManifestError(f"{exc} (read from {url})")
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
