"""Where snapshot files live: a local directory per host, optionally a shared fsspec URL.

``REFSTORE_SNAPSHOT_DIR`` picks the place, read at each pickle and unpickle:

* unset: ``<tempdir>/refstore-snapshots-<uid>``, private to the user (mode 0700,
  and refused if another user owns it);
* a path or ``file://`` URL: that directory;
* any other fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``memory://...``):
  snapshots are uploaded there and downloaded, verified, into a local cache
  (``REFSTORE_SNAPSHOT_CACHE``, default as unset) where they are memory-mapped.
  ``REFSTORE_SNAPSHOT_OPTIONS`` (JSON) gives its storage options; fsspec's own
  ``FSSPEC_<PROTOCOL>_<OPTION>`` variables work too.

A local directory holds ``<sha256>.rsnap`` files (:mod:`._snapshot_file`),
published atomically (written under a temporary name, then renamed: readers
never see part of one), and ``leases/<sha256>/<pid>@<host>``: a process holds a
lease on each snapshot that one of its manifests wrote or maps, and drops it
when the manifest is garbage collected or the process exits.

Lifetime: a snapshot outlives the processes that use it (another process, or
the next run, maps it instead of parsing again), and :func:`sweep` removes it
once no live process holds a lease on it and it is either unused (by mtime,
refreshed on every use) for ``REFSTORE_SNAPSHOT_MAX_AGE`` seconds (default 7
days) or among the least recently used beyond ``REFSTORE_SNAPSHOT_MAX_BYTES``
in total (default 4 GiB). Leased snapshots are never removed, so the total may
exceed the bound while they are in use. A killed process's leases and
temporary files are removed by the next sweep (on this host, by its process id;
another host's leases after a day). Every process sweeps a directory when it
first uses it and after each snapshot it adds. Unlinking a snapshot that some
process has mapped is safe on POSIX: the mapping keeps the data until it ends.

A shared URL is never swept: its objects are named by their content, written
once, and verified when downloaded; expire them with the bucket's lifecycle rules.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from refstore.manifest._snapshot_file import SUFFIX, CorruptSnapshot, Encoded, file_digest, write

#: Default bound on the total size of a local snapshot directory (``REFSTORE_SNAPSHOT_MAX_BYTES``).
MAX_BYTES = 4 << 30
#: Default age after which an unused, unleased snapshot is removed (``REFSTORE_SNAPSHOT_MAX_AGE``).
MAX_AGE = 7 * 24 * 3600.0
#: Another host's leases and temporary files are taken as stale after this many seconds.
FOREIGN_TTL = 24 * 3600.0
#: Lock files (only ever locked, never written) are removed after this many seconds.
LOCK_TTL = 3600.0

_HOST = socket.gethostname().replace("/", "_").replace("@", "_")
_lock = threading.Lock()
_swept: set[str] = set()
_uploaded: set[str] = set()
_leases: dict[tuple[str, str], int] = {}  # (root, digest) -> holders in this process


@dataclass(frozen=True)
class Place:
    """The snapshot directories of this process (see the module docstring)."""

    local: str
    remote: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def path(self, digest: str) -> str:
        """The local path of *digest*'s snapshot."""
        return os.path.join(self.local, digest + SUFFIX)

    def url(self, digest: str) -> str | None:
        """The shared URL of *digest*'s snapshot, if there is a shared directory."""
        return None if self.remote is None else self.remote.rstrip("/") + "/" + digest + SUFFIX

    def describe(self) -> str:
        return self.local if self.remote is None else f"{self.remote} (cached in {self.local})"


def _default_root() -> str:
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"refstore-snapshots-{user}")


def place() -> Place:
    """This process's snapshot directories, the local one made (and swept once per process).

    Raises
    ------
    OSError
        If the local directory cannot be made or belongs to another user.
    """
    setting = os.environ.get("REFSTORE_SNAPSHOT_DIR") or ""
    remote = None
    options: dict[str, Any] = {}
    if "://" in setting and not setting.startswith("file://"):
        remote = setting
        local = os.environ.get("REFSTORE_SNAPSHOT_CACHE") or _default_root()
        text = os.environ.get("REFSTORE_SNAPSHOT_OPTIONS")
        options = json.loads(text) if text else {}
    else:
        local = setting.removeprefix("file://") or _default_root()
    local = os.path.abspath(os.path.expanduser(local))
    os.makedirs(local, mode=0o700, exist_ok=True)
    if hasattr(os, "getuid") and os.stat(local).st_uid != os.getuid():
        raise PermissionError(f"snapshot directory {local} belongs to another user")
    if local not in _swept:
        _swept.add(local)
        sweep(local)
    return Place(local, remote, options)


# -- publishing and finding --------------------------------------------------------------------


def publish(where: Place, enc: Encoded) -> str:
    """Make sure *enc*'s snapshot is in the local directory (and the shared one); return its path.

    A file of the right size already there is reused (its mtime refreshed), not written again.
    """
    path = where.path(enc.digest)
    try:
        fresh = os.path.getsize(path) != enc.size
    except FileNotFoundError:
        fresh = True
    if fresh:
        tmp = _temp_name(where.local)
        try:
            write(enc, tmp)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        sweep(where.local)
    else:
        touch(path)
    url = where.url(enc.digest)
    if url is not None and url not in _uploaded:
        fs, rpath = _remote(where, url)
        if not fs.exists(rpath):
            # object stores publish a PUT whole; elsewhere a partial upload fails its digest check
            fs.put_file(path, rpath)
        _uploaded.add(url)
    return path


def published(where: Place, digest: str) -> bool:
    """True if *digest*'s snapshot is in the local directory and, if there is a shared one, was
    uploaded there by this process."""
    url = where.url(digest)
    return os.path.exists(where.path(digest)) and (url is None or url in _uploaded)


def find(where: Place, digest: str) -> str | None:
    """The local path of *digest*'s snapshot, downloaded (once per host) from the shared
    directory if needed; None if neither has it.

    Raises
    ------
    CorruptSnapshot
        If the shared copy is not *digest*'s (it is not kept).
    OSError
        If the shared directory cannot be read.
    """
    path = where.path(digest)
    if os.path.exists(path):
        touch(path)
        return path
    url = where.url(digest)
    if url is None:
        return None
    with host_lock(where.local, digest):
        if os.path.exists(path):  # another process downloaded it while this one waited
            return path
        fs, rpath = _remote(where, url)
        tmp = _temp_name(where.local)
        try:
            try:
                fs.get_file(rpath, tmp)
            except FileNotFoundError:
                return None
            if file_digest(tmp) != digest:
                raise CorruptSnapshot(f"the copy at {url} is not {digest}'s (its SHA-256 differs)")
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    sweep(where.local)
    return path


def _remote(where: Place, url: str) -> tuple[Any, str]:
    import fsspec

    fs, rpath = fsspec.core.url_to_fs(url, **where.options)
    return fs, rpath


def _temp_name(root: str) -> str:
    return os.path.join(root, f".tmp-{os.getpid()}@{_HOST}@{uuid.uuid4().hex[:12]}.part")


def touch(path: str) -> None:
    """Mark *path* as just used (its mtime is what :func:`sweep` ages)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def discard(path: str) -> None:
    """Remove a corrupt snapshot (it would fail every reader; the next writer writes it again)."""
    with contextlib.suppress(OSError):
        os.unlink(path)


@contextlib.contextmanager
def host_lock(root: str, digest: str) -> Iterator[None]:
    """Hold an exclusive lock on *digest* among the processes using *root* (``flock``; none on
    systems without it). The kernel releases it if the holder dies."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, at worst two downloads
        yield
        return
    fd = os.open(os.path.join(root, f".lock-{digest}"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- leases --------------------------------------------------------------------------------------


def hold(root: str, digest: str, owner: object) -> None:
    """Lease *digest*'s snapshot in *root* for as long as *owner* lives (or this process)."""
    key = (root, digest)
    with _lock:
        count = _leases.get(key, 0)
        _leases[key] = count + 1
        if count == 0:
            folder = os.path.join(root, "leases", digest)
            for attempt in range(3):  # a sweep may remove the empty folder between the two calls
                os.makedirs(folder, mode=0o700, exist_ok=True)
                try:
                    with open(os.path.join(folder, f"{os.getpid()}@{_HOST}"), "a"):
                        break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
    weakref.finalize(owner, _release, root, digest)


def _release(root: str, digest: str) -> None:
    key = (root, digest)
    with _lock:
        count = _leases.get(key, 0) - 1
        if count > 0:
            _leases[key] = count
            return
        _leases.pop(key, None)
        _drop_lease(root, digest)


def _drop_lease(root: str, digest: str) -> None:
    folder = os.path.join(root, "leases", digest)
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(folder, f"{os.getpid()}@{_HOST}"))
    with contextlib.suppress(OSError):
        os.rmdir(folder)


@atexit.register
def _release_all() -> None:
    with _lock:
        for root, digest in list(_leases):
            _drop_lease(root, digest)
        _leases.clear()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def _stale(name: str, mtime: float, now: float) -> bool:
    """True if *name* (``<pid>@<host>[@...]``) belongs to a process that has ended (on this
    host), or is older than :data:`FOREIGN_TTL` (another host's: its pid cannot be checked)."""
    pid, _, rest = name.partition("@")
    if rest.partition("@")[0] == _HOST:
        return pid.isdigit() and not _alive(int(pid))
    return now - mtime > FOREIGN_TTL


# -- sweeping -------------------------------------------------------------------------------------


def _setting(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def sweep(root: str) -> list[str]:
    """Remove what is stale in the local directory *root* (see the module docstring); return the
    names removed (snapshots, leases as ``leases/<digest>/<name>``, temporary and lock files)."""
    max_bytes = _setting("REFSTORE_SNAPSHOT_MAX_BYTES", MAX_BYTES)
    max_age = _setting("REFSTORE_SNAPSHOT_MAX_AGE", MAX_AGE)
    now = time.time()
    removed: list[str] = []
    leased = _live_leases(root, now, removed)
    snaps: list[tuple[float, int, str]] = []
    for entry in _scan(root):
        name = entry.name
        try:
            st = entry.stat()
        except OSError:
            continue
        if name.startswith(".tmp-"):
            if _stale(name[5:], st.st_mtime, now) and _unlink(entry.path):
                removed.append(name)
        elif name.startswith(".lock-"):
            if now - st.st_mtime > LOCK_TTL and _unlink(entry.path):
                removed.append(name)
        elif name.endswith(SUFFIX):
            snaps.append((st.st_mtime, st.st_size, name))
    total = sum(size for _, size, _ in snaps)
    for mtime, size, name in sorted(snaps):  # least recently used first
        digest = name[: -len(SUFFIX)]
        if digest in leased or (now - mtime <= max_age and total <= max_bytes):
            continue
        if _leased_now(root, digest):  # leased since the scan above
            continue
        if _unlink(os.path.join(root, name)):
            removed.append(name)
            total -= size
    return removed


def _scan(root: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(root) as it:
            return list(it)
    except OSError:
        return []


def _live_leases(root: str, now: float, removed: list[str]) -> set[str]:
    """The digests leased by a live process; removes the leases of ended ones (into *removed*)."""
    live: set[str] = set()
    for folder in _scan(os.path.join(root, "leases")):
        for entry in _scan(folder.path):
            try:
                stale = _stale(entry.name, entry.stat().st_mtime, now)
            except OSError:
                continue
            if not stale:
                live.add(folder.name)
            elif _unlink(entry.path):
                removed.append(f"leases/{folder.name}/{entry.name}")
        if folder.name not in live:
            with contextlib.suppress(OSError):
                os.rmdir(folder.path)
    return live


def _leased_now(root: str, digest: str) -> bool:
    try:
        return bool(os.listdir(os.path.join(root, "leases", digest)))
    except OSError:
        return False


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except OSError:
        return False
    return True
