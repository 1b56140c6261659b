"""Pickling manifests in O(1): content-addressed snapshots, one reopen per process (and host).

What a pickle carries, by manifest:

* **with a source, fewer than** :data:`SMALL` **entries**: the source and how
  to open it (a few hundred bytes). Unpickling opens it again, once per
  process: later unpickles of the same source share the first one's columns
  (copy-on-write, :meth:`ChunkTable.shared`) while the source still looks the
  same (size, ETag or mtime from ``info()``).
* **with a source, larger**: also the SHA-256 of its snapshot, a file holding
  the manifest's columns (:mod:`._snapshot_file`) written once per content
  into the snapshot directory (:mod:`._snapshot_store`). Unpickling maps the
  snapshot (milliseconds, verified once per process), downloading it once
  per host from a shared ``REFSTORE_SNAPSHOT_DIR`` URL if needed; without
  one, it opens the source again, once per host (other processes wait, then
  map the snapshot the first one wrote). A corrupt snapshot is removed, with
  a warning, and the source opened instead.
* **without a source** (given as a dict, or edited since it was opened),
  **larger**: the SHA-256 of its snapshot only. Unpickling where no snapshot
  directory has it raises :class:`~refstore.errors.SnapshotUnavailable`
  naming the hash, the directories and the writing host; it never gives an
  empty or partial store. This is the dask trade-off: a ``LocalCluster``
  (one host) maps the snapshot for free, and a multi-host cluster needs
  ``REFSTORE_SNAPSHOT_DIR`` set to shared storage in the client and the
  workers (or the manifest saved and opened from a file), instead of every
  task graph carrying 20 MB per million references to every worker.
* **without a source, smaller**: its state (nowhere else to come from; at
  most about 20 bytes per reference).

Equal manifests (three opens of one file, a worker re-pickling what it
unpickled) share one snapshot, and nothing is written again. Snapshots
outlive the processes that use them, under the lifetime policy of
:mod:`._snapshot_store` (leases while in use, then least recently used out
beyond a size bound). Loading one never runs code: JSON and plain integer
columns, checked against its name (SHA-256) before use.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import warnings
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from refstore.errors import RefstoreWarning, SnapshotUnavailable
from refstore.manifest._snapshot_file import CorruptSnapshot, encode, read
from refstore.manifest._snapshot_store import (
    _HOST,
    Place,
    discard,
    find,
    hold,
    host_lock,
    place,
    publish,
    published,
    touch,
)
from refstore.manifest._sources import SourceIdentity, identity_from_info

if TYPE_CHECKING:
    from refstore.manifest._model import Manifest

#: Manifests with fewer entries than this write no snapshot (reopened from their source, or
#: pickled whole when they have none).
SMALL = 20_000
#: Manifests reopened from their source, and snapshots mapped, kept per process for later unpickles.
REOPENED_KEPT = 8
_reopened: OrderedDict[tuple[str, str], tuple[SourceIdentity, Manifest]] = OrderedDict()
_mapped: OrderedDict[str, Manifest] = OrderedDict()
_held: weakref.WeakKeyDictionary[Manifest, set[tuple[str, str]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def reduce_manifest(manifest: Manifest) -> tuple[Any, ...]:
    """The ``__reduce__`` value of *manifest* (see the module docstring)."""
    reopenable = _reopenable(manifest)
    if len(manifest._loose) + sum(t.count for t in manifest._tables.values()) < SMALL:
        if reopenable:
            return (reopen, (manifest._open_source, manifest._open_args))
        return (_from_state, (manifest.__getstate__(),))
    try:
        digest = write_snapshot(manifest)
    except OSError:  # no usable snapshot directory: the state travels instead
        return (_from_state, (manifest.__getstate__(),))
    if reopenable:
        return (_unpickle, (digest, manifest._open_source, manifest._open_args, _HOST))
    return (_unpickle, (digest, None, None, _HOST))


def _reopenable(manifest: Manifest) -> bool:
    return bool(manifest._open_source) and manifest._opened_generation == manifest._generation


def write_snapshot(manifest: Manifest) -> str:
    """Make sure the snapshot of *manifest* as it is now exists; return its SHA-256.

    Hashing costs about 1 ms per 50,000 references, once per manifest version;
    the file is written only if no equal manifest wrote it before. The
    manifest holds a lease on it while it lives.

    Raises
    ------
    OSError
        If the snapshot directory cannot be used (then the pickle carries the state).
    """
    where = place()
    known = manifest._digest
    if known is not None and known[0] == manifest._generation:
        digest = known[1]
        if published(where, digest):
            _hold(where, digest, manifest)
            touch(where.path(digest))
            return digest
    reopenable = _reopenable(manifest)
    enc = encode(manifest, manifest._open_args if reopenable else None,
                 manifest._open_source if reopenable else None)
    _hold(where, enc.digest, manifest)  # before publishing: a sweep in between must not remove it
    publish(where, enc)
    manifest._digest = (manifest._generation, enc.digest)
    return enc.digest


def _hold(where: Place, digest: str, manifest: Manifest) -> None:
    with _lock:
        held = _held.setdefault(manifest, set())
        if (where.local, digest) in held:
            return
        held.add((where.local, digest))
    hold(where.local, digest, manifest)


def _unpickle(digest: str, source: str | None, open_args: dict[str, Any] | None, host: str) -> Manifest:
    """Unpickle a large manifest: map its snapshot, else reopen its source (see the module docstring).

    A manifest without a source whose snapshot is unavailable unpickles as one whose first read
    raises :class:`~refstore.errors.SnapshotUnavailable` (see :func:`_unavailable`).

    Raises
    ------
    FileNotFoundError, ManifestError
        If the source must be opened again and cannot be (as :func:`reopen`).
    """
    problem: str | None = None
    corrupt = False
    try:
        where: Place | None = place()
    except (OSError, ValueError) as exc:  # (ValueError: REFSTORE_SNAPSHOT_OPTIONS is not JSON)
        where, problem = None, f"the snapshot directory cannot be used ({exc})"
    if where is not None:
        try:
            manifest = _map(where, digest)
            if manifest is not None:
                return manifest
            problem = f"it is not in {where.describe()}"
        except CorruptSnapshot as exc:
            discard(where.path(digest))
            problem, corrupt = f"the copy found is corrupt ({exc})", True
        except Exception as exc:  # noqa: BLE001 - a shared directory's client may raise anything
            problem = f"it cannot be read from {where.describe()} ({type(exc).__name__}: {exc})"
    if source is None or open_args is None:
        message = (
            f"cannot read a manifest without a source (given as a dict, or edited in memory): its "
            f"snapshot {digest} (written on host {host!r}) is unavailable: {problem}. Snapshots are "
            "shared by the processes of one host; between hosts set REFSTORE_SNAPSHOT_DIR to storage "
            "every process can read (e.g. s3://bucket/refstore-snapshots) in the client and the workers, "
            "or save the manifest and open it from its path"
        )
        return _unavailable(message, (digest, source, open_args, host))
    if corrupt:
        warnings.warn(f"manifest snapshot {digest}: {problem}; opening {source!r} again instead",
                      RefstoreWarning, stacklevel=2)
    if where is None:
        return reopen(source, open_args)
    with host_lock(where.local, digest):  # one process per host reopens; the others then map
        if os.path.exists(where.path(digest)):
            try:
                mapped = _map(where, digest)
                if mapped is not None:
                    return mapped
            except (CorruptSnapshot, OSError):
                discard(where.path(digest))
        manifest = reopen(source, open_args)
        with contextlib.suppress(OSError):
            write_snapshot(manifest)  # an unchanged source gives the same snapshot: the host's others map it
        return manifest


class _Poison:
    """Stands in for each column and dict of a manifest whose snapshot is unavailable: any use raises."""

    def __init__(self, message: str) -> None:
        self.message = message

    def _raise(self, *args: Any, **kwargs: Any) -> Any:
        raise SnapshotUnavailable(self.message)  # a new one each time: tracebacks do not pile up

    __iter__ = __len__ = __contains__ = __getitem__ = __setitem__ = __delitem__ = _raise
    get = pop = items = values = keys = setdefault = update = copy = _raise
    protocols = schemes = id_of = extend = extend_packed = contains = _raise  # (the URL table's)
    packed = property(_raise)


def _unavailable(message: str, args: tuple[Any, ...]) -> Manifest:
    """A manifest whose every read or edit raises :class:`SnapshotUnavailable` with *message*, and that pickles as *args* again.

    Unpickling does not raise: dask unpickles a task's arguments in the worker's connection to
    the scheduler, where an exception is only logged and the task never ends. The task's first
    read raises instead, and dask reports that to the client.
    """
    from refstore.manifest._model import Manifest

    class UnavailableManifest(Manifest):
        def __reduce__(self) -> tuple[Any, ...]:
            return (_unpickle, args)

        def __repr__(self) -> str:
            return f"<Manifest: unavailable snapshot {args[0]}>"

    manifest = UnavailableManifest()
    poison: Any = _Poison(message)
    manifest._url_table = manifest._inline = manifest._loose = manifest._tables = manifest._heads = poison
    return manifest


def _map(where: Place, digest: str) -> Manifest | None:
    """A copy of *digest*'s snapshot, mapped (and verified) once per process; None if not found."""
    with _lock:
        base = _mapped.get(digest)
        if base is not None:
            _mapped.move_to_end(digest)
    if base is None:
        path = find(where, digest)
        if path is None:
            return None
        base, open_args, open_source = read(path, digest)
        if open_args is not None:
            mark_opened(base, open_args, open_source)
        base._digest = (base._generation, digest)
        with _lock:
            _mapped[digest] = base
            while len(_mapped) > REOPENED_KEPT:
                _mapped.popitem(last=False)
    else:
        touch(where.path(digest))
    copy = share(base)
    _hold(where, digest, copy)
    return copy


def mark_opened(manifest: Manifest, open_args: dict[str, Any], source: str | None = None) -> None:
    """Record that *manifest*, as it is now, can be opened again from *source* (default: its
    ``.source``, a relative local path made absolute now, so another directory finds it too)
    with *open_args*."""
    manifest._open_args = open_args
    manifest._opened_generation = manifest._generation
    if source is None and manifest.source is not None:
        source = manifest.source
        local = "://" not in source and open_args.get("target_protocol") in (None, "file")
        if local and not os.path.isabs(source):
            source = os.path.abspath(source)
    manifest._open_source = source


def _from_state(state: dict[str, Any]) -> Manifest:
    from refstore.manifest._model import Manifest

    manifest = Manifest.__new__(Manifest)
    manifest.__setstate__(state)
    return manifest


def reopen(source: str, open_args: dict[str, Any]) -> Manifest:
    """*source* opened again, or a copy-on-write share of this process's last opening of it if
    the source still looks the same (size, ETag or mtime); see the module docstring.

    Raises
    ------
    FileNotFoundError, ManifestError
        As :func:`refstore.manifest.open_manifest`.
    """
    from refstore.manifest._io import open_manifest
    from refstore.manifest._model import Manifest

    stamp = _stamp(source, open_args)
    key = (source, json.dumps(open_args, sort_keys=True, default=str))
    if stamp is not None:
        with _lock:
            hit = _reopened.get(key)
            if hit is not None and hit[0] == stamp:
                _reopened.move_to_end(key)
                return share(hit[1])
    manifest = open_manifest(source, **open_args)
    if stamp is None or type(manifest) is not Manifest:  # lazy parquet manifests reopen cheaply
        return manifest
    with _lock:
        _reopened[key] = (stamp, manifest)
        _reopened.move_to_end(key)
        while len(_reopened) > REOPENED_KEPT:
            _reopened.popitem(last=False)
    return share(manifest)


def _stamp(source: str, open_args: dict[str, Any]) -> SourceIdentity | None:
    """What *source* looks like now (size, ETag, mtime), or None if ``info()`` cannot tell."""
    from refstore.manifest._io import _fs_for

    try:
        fs, path, _ = _fs_for(source, open_args.get("target_protocol"), open_args.get("target_options"))
        stamp = identity_from_info(fs.info(path))
    except Exception:  # noqa: BLE001 - no stamp: open it again rather than share a stale copy
        return None
    return stamp if stamp.etag is not None or stamp.mtime is not None else None


def share(manifest: Manifest) -> Manifest:
    """A manifest equal to *manifest* that shares its columns until either is edited (copy-on-write)."""
    from refstore.manifest._model import Manifest

    copy = Manifest()
    copy._urls = manifest._urls.copy()
    copy._inline = dict(manifest._inline)
    copy._loose = dict(manifest._loose)
    copy._tables = {prefix: table.shared() for prefix, table in manifest._tables.items()}
    copy.sources = dict(manifest.sources)
    copy.source, copy.source_is_remote = manifest.source, manifest.source_is_remote
    copy._reindex()
    if _reopenable(manifest):
        mark_opened(copy, manifest._open_args, manifest._open_source)
    known = manifest._digest
    if known is not None and known[0] == manifest._generation:
        copy._digest = (copy._generation, known[1])
    return copy
