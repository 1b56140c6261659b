"""The snapshot file: a manifest's columns and metadata in one content-addressed file.

Layout (all integers little-endian)::

    b"RSNAP001"               magic, 8 bytes
    uint64                    length of the header
    header                    JSON (UTF-8), then zero bytes up to a multiple of 64
    columns                   each column's raw bytes at a multiple of 64 from here

The header holds the URL table, inline entries (base64), loose references,
each table's layout and where its ``url_id`` (int32), ``offset`` and
``length`` (int64) columns lie, the manifest's source, how to open it again
and the file's total size. The file is deterministic for a manifest's content
(in its insertion order), and its name is the SHA-256 of its bytes
(:func:`encode`), so equal manifests share one file and a file proves what it holds.

Reading never runs code: JSON, then ``np.memmap`` of plain integer columns
whose dtypes, sizes and positions are checked against the header and the file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from refstore.manifest._sources import parse_sources
from refstore.manifest._table import ChunkTable, KeyLayout

if TYPE_CHECKING:
    from refstore.manifest._model import Manifest

MAGIC = b"RSNAP001"
SUFFIX = ".rsnap"
_ALIGN = 64
_COLUMNS = (("url_id", "<i4"), ("offset", "<i8"), ("length", "<i8"))
#: Headers beyond this many bytes are refused unread (a hostile or corrupt length field).
MAX_HEADER = 1 << 31


class CorruptSnapshot(ValueError):
    """A snapshot file that is not what its name or header says (internal: callers report it)."""


def _pad(n: int) -> int:
    return -n % _ALIGN


@dataclass
class Encoded:
    """A manifest laid out as a snapshot file, not yet written: its parts and their digest."""

    digest: str
    size: int
    head: bytes
    columns: list[np.ndarray]

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The file's bytes in order (the columns without copying them)."""
        yield self.head
        for col in self.columns:
            data = memoryview(np.ascontiguousarray(col).data).cast("B")
            yield data
            yield b"\0" * _pad(len(data))


def encode(manifest: Manifest, open_args: dict[str, Any] | None, open_source: str | None) -> Encoded:
    """Lay *manifest* out as a snapshot file and hash it (SHA-256 of the bytes, streamed).

    *open_args* and *open_source* say how to open it again from its source
    (None when it cannot be: given as a dict, or edited since).
    """
    tables: list[dict[str, Any]] = []
    columns: list[np.ndarray] = []
    at = 0
    for table in manifest._tables.values():
        lay = table.layout
        placed = []
        for name, dtype in _COLUMNS:
            col = getattr(table, name).astype(dtype, copy=False)
            columns.append(col)
            placed.append([name, dtype, at, col.nbytes])
            at += col.nbytes + _pad(col.nbytes)
        tables.append({"prefix": lay.prefix, "grid": list(lay.grid), "v3": lay.v3, "sep": lay.sep,
                       "count": table.count, "columns": placed})
    doc = {
        "urls": list(manifest._urls),
        "inline": [[k, base64.b64encode(v).decode("ascii")] for k, v in manifest._inline.items()],
        "loose": [[k, *v] for k, v in manifest._loose.items()],
        "tables": tables,
        "source": manifest.source,
        "source_is_remote": manifest.source_is_remote,
        "sources": {u: i.to_json() for u, i in manifest.sources.items() if u is not None},
        "open_args": open_args,
        "open_source": open_source,
        "data_size": at,
    }
    header = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str).encode()
    head = MAGIC + struct.pack("<Q", len(header)) + header
    head += b"\0" * _pad(len(head))
    enc = Encoded("", len(head) + at, head, columns)
    digest = hashlib.sha256()
    for part in enc.chunks():
        digest.update(part)
    enc.digest = digest.hexdigest()
    return enc


def write(enc: Encoded, path: str) -> None:
    """Write *enc* to *path* (a new file; the caller publishes it by renaming)."""
    with open(path, "xb") as f:
        for part in enc.chunks():
            f.write(part)


def file_digest(path: str, block: int = 1 << 22) -> str:
    """SHA-256 of the file at *path*, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(block):
            digest.update(data)
    return digest.hexdigest()


def read(path: str, digest: str | None = None) -> tuple[Manifest, dict[str, Any] | None, str | None]:
    """The manifest in the snapshot file at *path*, its columns memory-mapped copy-on-write, with
    how to open it again from its source (``open_args`` and ``open_source``, None if it cannot be).

    With *digest*, the file's SHA-256 is checked against it first (a full read
    of the file, from the page cache when it was just written or read).

    Raises
    ------
    CorruptSnapshot
        If the file is truncated, malformed, or not *digest*'s.
    OSError
        If it cannot be read (missing: ``FileNotFoundError``).
    """
    from refstore.errors import ManifestError
    from refstore.manifest._model import Manifest

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        lead = f.read(16)
        if len(lead) < 16 or lead[:8] != MAGIC:
            raise CorruptSnapshot("not a refstore snapshot (no magic number)")
        (n,) = struct.unpack("<Q", lead[8:])
        if n > min(size, MAX_HEADER):
            raise CorruptSnapshot(f"header of {n} bytes in a file of {size}")
        header = f.read(n)
    if digest is not None and file_digest(path) != digest:
        raise CorruptSnapshot("its SHA-256 is not its name")
    base = 16 + n + _pad(16 + n)
    try:
        doc = json.loads(header)
        if base + int(doc["data_size"]) != size:
            raise CorruptSnapshot(f"{size} bytes, the header says {base + int(doc['data_size'])}")
        manifest = Manifest()
        manifest._urls = list(doc["urls"])
        manifest._inline = {k: base64.b64decode(v) for k, v in doc["inline"]}
        manifest._loose = {k: (int(u), int(o), int(ln)) for k, u, o, ln in doc["loose"]}
        manifest.sources.update(parse_sources(doc.get("sources"), path))
        for t in doc["tables"]:
            table = ChunkTable.__new__(ChunkTable)
            table.layout = KeyLayout(str(t["prefix"]), tuple(int(g) for g in t["grid"]), bool(t["v3"]), str(t["sep"]))
            for (name, dtype), (cname, cdtype, at, nbytes) in zip(_COLUMNS, t["columns"], strict=True):
                if (cname, cdtype) != (name, dtype) or nbytes != table.layout.size * np.dtype(dtype).itemsize:
                    raise CorruptSnapshot(f"table {t['prefix']!r}: column {cname!r} does not fit its grid")
                if not 0 <= at <= at + nbytes <= size - base:
                    raise CorruptSnapshot(f"table {t['prefix']!r}: column {cname!r} lies outside the file")
                col = (np.memmap(path, dtype=dtype, mode="c", offset=base + at, shape=(table.layout.size,))
                       if nbytes else np.zeros(0, dtype=dtype))
                setattr(table, name, col)
            table.count = int(t["count"])
            manifest._tables[table.layout.prefix] = table
        manifest._reindex()
        manifest.source, manifest.source_is_remote = doc["source"], bool(doc["source_is_remote"])
    except (KeyError, TypeError, ValueError, ManifestError) as exc:  # (CorruptSnapshot is a ValueError)
        if isinstance(exc, CorruptSnapshot):
            raise
        raise CorruptSnapshot(f"malformed header ({type(exc).__name__}: {exc})") from None
    return manifest, doc.get("open_args"), doc.get("open_source")
