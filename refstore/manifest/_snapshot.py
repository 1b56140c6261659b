"""Pickling manifests cheaply: a snapshot on local disk, memory-mapped back on unpickling.

A pickle of a large manifest does not carry its columns. The first pickle
writes the columns as ``.npy`` files (plus a small JSON document) under a
per-user temporary directory and the pickle names that snapshot; unpickling in
any process on the same machine memory-maps the files (copy-on-write), which
takes milliseconds whatever the size. Where the snapshot is missing (another
machine), the manifest is opened again from its source, the way fsspec does
it; a manifest edited since it was opened has no source to go back to, so its
pickle also carries the full state.

Snapshots hold only JSON and ``.npy`` arrays read with ``allow_pickle=False``:
loading one never runs code. They are removed when the process that wrote
them exits.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import tempfile
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from refstore.manifest._sources import parse_sources
from refstore.manifest._table import ChunkTable, KeyLayout

if TYPE_CHECKING:
    from refstore.manifest._model import Manifest

#: Manifests with fewer entries than this pickle their state directly.
SMALL = 20_000
_written: dict[str, str] = {}


def _root() -> str:
    base = os.environ.get("REFSTORE_SNAPSHOT_DIR") or os.path.join(
        tempfile.gettempdir(), f"refstore-snapshots-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    )
    os.makedirs(base, mode=0o700, exist_ok=True)
    if hasattr(os, "getuid") and os.stat(base).st_uid != os.getuid():
        raise OSError(f"snapshot directory {base} belongs to another user")  # pickles carry state instead
    return base


def _cleanup() -> None:
    for path in _written.values():
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_cleanup)


def reduce_manifest(manifest: Manifest) -> tuple[Any, ...]:
    """The ``__reduce__`` value of *manifest* (see the module docstring)."""
    if len(manifest._loose) + sum(t.count for t in manifest._tables.values()) < SMALL:
        return (_from_state, (manifest.__getstate__(),))
    state = None if _reopenable(manifest) else manifest.__getstate__()
    try:
        path, token = write_snapshot(manifest)
    except OSError:
        return (_from_state, (manifest.__getstate__(),))
    return (_restore, (path, token, manifest.source, manifest._open_args, state))


def _reopenable(manifest: Manifest) -> bool:
    return bool(manifest.source) and manifest._opened_generation == manifest._generation


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
        "urls": manifest._urls,
        "inline": {k: base64.b64encode(v).decode("ascii") for k, v in manifest._inline.items()},
        "loose": [[k, *v] for k, v in manifest._loose.items()],
        "tables": tables,
        "source": manifest.source,
        "source_is_remote": manifest.source_is_remote,
        "sources": {u: i.to_json() for u, i in manifest.sources.items() if u is not None},
        "open_args": manifest._open_args if _reopenable(manifest) else None,
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
        manifest._url_ids = {u: i for i, u in enumerate(manifest._urls)}
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
        mark_opened(manifest, doc["open_args"])
    return manifest


def mark_opened(manifest: Manifest, open_args: dict[str, Any]) -> None:
    """Record that *manifest*, as it is now, can be opened again from its source with *open_args*."""
    manifest._open_args = open_args
    manifest._opened_generation = manifest._generation


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
    from refstore.manifest._io import open_manifest

    assert source is not None
    return open_manifest(source, **open_args)
