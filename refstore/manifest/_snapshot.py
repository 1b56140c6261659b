"""Pickling manifests cheaply: O(1) pickles, snapshots on local disk, one reopen per process.

* A manifest that can be opened again from its source (a path or URL, unedited
  since it was opened) pickles as that source and how to open it, whatever its
  size. A large one also writes its columns as ``.npy`` files (plus a small
  JSON document) under a per-user directory (``REFSTORE_SNAPSHOT_DIR``), and
  unpickling on the same machine memory-maps them (copy-on-write), which takes
  milliseconds whatever the size.
* Where there is no snapshot (another machine, or a small manifest), the
  source is opened again, once per process: later unpickles of the same source
  share the first one's columns (copy-on-write, :meth:`ChunkTable.shared`) as
  long as the source still looks the same (size, ETag or mtime from ``info()``).
  So many tasks unpickling one store in a worker parse its manifest once.
* A manifest without a source, or edited since it was opened, also carries its
  full state (it has nowhere else to come from).

Snapshots hold only JSON and ``.npy`` arrays read with ``allow_pickle=False``:
loading one never runs code. They are removed when the process that wrote
them exits, and snapshots left by a process that was killed are removed by the
next process that writes one.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from refstore.manifest._sources import SourceIdentity, identity_from_info, parse_sources
from refstore.manifest._table import ChunkTable, KeyLayout

if TYPE_CHECKING:
    from refstore.manifest._model import Manifest

#: Manifests with fewer entries than this write no snapshot (reopened from their source, or
#: pickled whole when they have none).
SMALL = 20_000
#: Manifests reopened from their source kept per process, so that unpickling shares them.
REOPENED_KEPT = 8
_written: dict[str, str] = {}
_reopened: OrderedDict[tuple[str, str], tuple[SourceIdentity, Manifest]] = OrderedDict()
_reopened_lock = threading.Lock()
_swept = False


def _root() -> str:
    global _swept
    base = os.environ.get("REFSTORE_SNAPSHOT_DIR") or os.path.join(
        tempfile.gettempdir(), f"refstore-snapshots-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    )
    os.makedirs(base, mode=0o700, exist_ok=True)
    if hasattr(os, "getuid") and os.stat(base).st_uid != os.getuid():
        raise OSError(f"snapshot directory {base} belongs to another user")  # pickles carry state instead
    if not _swept:
        _swept = True
        sweep_stale(base)
    return base


def sweep_stale(base: str) -> list[str]:
    """Remove the snapshots under *base* whose writing process has ended (killed: no ``atexit``).

    A snapshot's name starts with its writer's process id; one whose process no
    longer exists is left over. Returns the names removed.
    """
    removed = []
    for name in os.listdir(base):
        pid = name.partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def _cleanup() -> None:
    for path in _written.values():
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_cleanup)


def reduce_manifest(manifest: Manifest) -> tuple[Any, ...]:
    """The ``__reduce__`` value of *manifest* (see the module docstring)."""
    reopenable = _reopenable(manifest)
    if len(manifest._loose) + sum(t.count for t in manifest._tables.values()) < SMALL:
        if reopenable:
            return (_restore, (None, None, manifest._open_source, manifest._open_args, None))
        return (_from_state, (manifest.__getstate__(),))
    state = None if reopenable else manifest.__getstate__()
    try:
        path, token = write_snapshot(manifest)
    except OSError:
        return (_from_state, (manifest.__getstate__(),))
    return (_restore, (path, token, manifest._open_source, manifest._open_args, state))


def _reopenable(manifest: Manifest) -> bool:
    return bool(manifest._open_source) and manifest._opened_generation == manifest._generation


def write_snapshot(manifest: Manifest) -> tuple[str, str]:
    """Write (once per manifest version) the snapshot of *manifest*; return its path and token."""
    token = f"{os.getpid()}-{manifest._uid}-{manifest._generation}"
    path = _written.get(token)
    if path is not None and os.path.isdir(path):
        return path, token
    path = os.path.join(_root(), token)
    tmp = path + ".tmp-" + uuid.uuid4().hex[:8]
    os.makedirs(tmp, mode=0o700)
    tables = []
    for i, table in enumerate(manifest._tables.values()):
        lay = table.layout
        for col in ("url_id", "offset", "length"):
            np.save(os.path.join(tmp, f"t{i}.{col}.npy"), getattr(table, col), allow_pickle=False)
        tables.append({"prefix": lay.prefix, "grid": list(lay.grid), "v3": lay.v3, "sep": lay.sep, "count": table.count})
    doc = {
        "token": token,
        "urls": list(manifest._urls),
        "inline": {k: base64.b64encode(v).decode("ascii") for k, v in manifest._inline.items()},
        "loose": [[k, *v] for k, v in manifest._loose.items()],
        "tables": tables,
        "source": manifest.source,
        "source_is_remote": manifest.source_is_remote,
        "sources": {u: i.to_json() for u, i in manifest.sources.items() if u is not None},
        "open_args": manifest._open_args if _reopenable(manifest) else None,
        "open_source": manifest._open_source,
    }
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(doc, f)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    _written[token] = path
    return path, token


def read_snapshot(path: str, token: str) -> Manifest | None:
    """The manifest in the snapshot at *path*, or None if it is missing or not *token*'s."""
    from refstore.manifest._model import Manifest

    try:
        with open(os.path.join(path, "manifest.json")) as f:
            doc = json.load(f)
        if doc.get("token") != token:
            return None
        manifest = Manifest()
        manifest._urls = doc["urls"]
        manifest._inline = {k: base64.b64decode(v) for k, v in doc["inline"].items()}
        manifest._loose = {k: (uid, off, ln) for k, uid, off, ln in doc["loose"]}
        manifest.sources.update(parse_sources(doc.get("sources"), path))
        for i, t in enumerate(doc["tables"]):
            table = ChunkTable.__new__(ChunkTable)
            table.layout = KeyLayout(t["prefix"], tuple(t["grid"]), t["v3"], t["sep"])
            for col in ("url_id", "offset", "length"):
                arr = np.load(os.path.join(path, f"t{i}.{col}.npy"), mmap_mode="c", allow_pickle=False)
                setattr(table, col, arr)
            table.count = t["count"]
            manifest._tables[table.layout.prefix] = table
    except (OSError, ValueError, KeyError, TypeError):  # (ManifestError is a ValueError)
        return None
    manifest._reindex()
    manifest.source, manifest.source_is_remote = doc["source"], doc["source_is_remote"]
    if doc.get("open_args") is not None:
        mark_opened(manifest, doc["open_args"], doc.get("open_source"))
    return manifest


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


def _restore(
    path: str | None, token: str | None, source: str | None, open_args: dict[str, Any], state: Any
) -> Manifest:
    if path is not None and token is not None:
        manifest = read_snapshot(path, token)
        if manifest is not None:
            return manifest
    if state is not None:
        return _from_state(state)
    assert source is not None
    return reopen(source, open_args)


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
        with _reopened_lock:
            hit = _reopened.get(key)
            if hit is not None and hit[0] == stamp:
                _reopened.move_to_end(key)
                return share(hit[1])
    manifest = open_manifest(source, **open_args)
    if stamp is None or type(manifest) is not Manifest:  # lazy parquet manifests reopen cheaply
        return manifest
    with _reopened_lock:
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
    mark_opened(copy, manifest._open_args, manifest._open_source)
    return copy
