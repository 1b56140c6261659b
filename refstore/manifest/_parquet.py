"""Kerchunk's parquet reference layout (what fsspec's LazyReferenceMapper reads and writes).

``root/.zmetadata`` holds ``{"metadata": {key: json}, "record_size": N}``; the
chunk references of the array at path ``var`` live in ``root/var/refs.<k>.parq``
with columns ``path``, ``offset``, ``size`` and ``raw``. Row ``r`` of file
``k`` is the chunk whose index, ravelled in C order over the chunk grid, is
``k * N + r``. A null ``path`` and ``raw`` means "no chunk"; ``offset == size
== 0`` with a path means the whole object. Both zarr v2 keys (``0.1``) and v3
keys (``c/0/1``) are supported, since the grid comes from the metadata.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import ujson

from refstore.errors import ManifestError
from refstore.manifest._table import ABSENT, WHOLE, ChunkTable

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from refstore.manifest._model import Manifest


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("parquet manifests need pyarrow: pip install 'refstore[parquet]'") from None
    return pyarrow


def read_parquet(fs: AbstractFileSystem, root: str, *, cache_size: int = 128) -> Manifest:
    """Read a parquet reference directory into a :class:`Manifest`.

    Raises
    ------
    FileNotFoundError
        If ``root/.zmetadata`` is missing.
    ManifestError
        If ``.zmetadata`` or a partition is malformed.
    """
    from refstore.manifest._model import Manifest

    pa = _pyarrow()
    try:
        meta = ujson.loads(fs.cat_file(f"{root}/.zmetadata"))
        record_size = int(meta["record_size"])
        documents = meta["metadata"]
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ManifestError(f"parquet manifest {root!r}: malformed .zmetadata ({exc})") from None

    manifest = Manifest()
    for key, doc in documents.items():
        manifest.set(key, doc.encode() if isinstance(doc, str) else ujson.dumps(doc).encode())
        layout = manifest._layout_for(key, manifest._inline[key])
        if layout is not None:
            manifest._add_table(layout)  # every array of a parquet manifest has its table
    for prefix, table in list(manifest._tables.items()):
        for record in range(math.ceil(table.layout.size / record_size)):
            fn = f"{root}/{prefix}/refs.{record}.parq" if prefix else f"{root}/refs.{record}.parq"
            try:
                data = fs.cat_file(fn)
            except FileNotFoundError:
                continue  # a partition that was never written holds no chunks
            try:
                columns = pa.parquet.read_table(io.BytesIO(data)).to_pydict()
            except Exception as exc:  # pyarrow raises several unrelated types
                raise ManifestError(f"parquet manifest: cannot read {fn!r} ({exc})") from None
            base = record * record_size
            paths = columns.get("path") or [None] * len(columns.get("raw", []))
            offsets = columns.get("offset") or [0] * len(paths)
            sizes = columns.get("size") or [0] * len(paths)
            raws = columns.get("raw") or [None] * len(paths)
            for row, (url, off, size, raw) in enumerate(zip(paths, offsets, sizes, raws)):
                flat = base + row
                if flat >= table.layout.size:
                    break
                if raw is not None:
                    manifest._inline[table.layout.head + table.layout.suffix(flat)] = bytes(raw)
                elif url is not None:
                    length = WHOLE if (off == 0 and size == 0) else int(size)
                    table.assign(flat, manifest.url_id(url), int(off), length)
    return manifest


def write_parquet(manifest: Manifest, fs: AbstractFileSystem, root: str, *, record_size: int) -> None:
    """Write *manifest* as a parquet reference directory at *root*.

    Raises
    ------
    ManifestError
        If the manifest holds entries the layout cannot express: references
        or non-JSON inline data outside any array's chunk grid.
    """
    pa = _pyarrow()
    documents: dict[str, Any] = {}
    chunk_inline: dict[str, dict[int, bytes]] = {}
    for key, data in manifest._inline.items():
        found = manifest._locate(key)
        if found is not None:
            chunk_inline.setdefault(found[0].layout.prefix, {})[found[1]] = data
            continue
        try:
            documents[key] = ujson.loads(data)
        except ValueError:
            raise ManifestError(
                f"key {key!r}: the parquet layout stores inline data only for metadata (JSON) "
                "and for chunks of arrays; save as JSON instead"
            ) from None
    if manifest._loose:
        key = next(iter(manifest._loose))
        raise ManifestError(
            f"key {key!r}: the parquet layout stores references only for chunks of arrays with "
            "regular-grid metadata; save as JSON instead"
        )
    fs.makedirs(root, exist_ok=True)
    urls = manifest._urls
    for prefix, table in manifest._tables.items():
        inline = chunk_inline.get(prefix, {})
        folder = f"{root}/{prefix}" if prefix else root
        fs.makedirs(folder, exist_ok=True)
        for record in range(math.ceil(table.layout.size / record_size)):
            lo, hi = record * record_size, min((record + 1) * record_size, table.layout.size)
            uid = table.url_id[lo:hi]
            if (uid == ABSENT).all() and not any(lo <= f < hi for f in inline):
                continue
            present = uid != ABSENT
            path = [urls[u] if ok else None for u, ok in zip(uid.tolist(), present.tolist())]
            length = table.length[lo:hi]
            whole = length == WHOLE
            offset = np.where(present & ~whole, table.offset[lo:hi], 0)
            size = np.where(present & ~whole, length, 0)
            raw: list[bytes | None] = [inline.get(f) for f in range(lo, hi)]
            if any(r is not None for r in raw):
                path = [None if r is not None else p for p, r in zip(path, raw)]
            arrays = {
                "path": pa.array(path, type=pa.string()).dictionary_encode(),
                "offset": pa.array(offset, type=pa.int64()),
                "size": pa.array(size, type=pa.int64()),
                "raw": pa.array(raw, type=pa.binary()),
            }
            buf = io.BytesIO()
            pa.parquet.write_table(pa.table(arrays), buf, compression="zstd", write_statistics=False)
            fs.pipe_file(f"{folder}/refs.{record}.parq", buf.getvalue())
    meta = {"metadata": documents, "record_size": record_size}
    fs.pipe_file(f"{root}/.zmetadata", ujson.dumps(meta, escape_forward_slashes=False).encode())
