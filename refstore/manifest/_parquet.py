"""Kerchunk's parquet reference layout (what fsspec's LazyReferenceMapper reads and writes).

``root/.zmetadata`` holds ``{"metadata": {key: json}, "record_size": N}``; the
chunk references of the array at path ``var`` live in ``root/var/refs.<k>.parq``
with columns ``path``, ``offset``, ``size`` and ``raw``. Row ``r`` of file
``k`` is the chunk whose index, ravelled in C order over the chunk grid, is
``k * N + r``. A null ``path`` and ``raw`` means "no chunk"; ``offset == size
== 0`` with a path means the whole object. Both zarr v2 keys (``0.1``) and v3
keys (``c/0/1``) are supported, since the grid comes from the metadata.

This module turns one partition file into compact columns (:class:`Partition`)
and writes manifests in the layout; :mod:`._lazy` decides when partitions are
read.
"""

from __future__ import annotations

import bisect
import io
import math
import posixpath
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import ujson

from refstore.errors import ManifestError
from refstore.manifest._model import Reference
from refstore.manifest._sources import SOURCES_KEY, SourceIdentity, parse_sources, sources_to_json
from refstore.manifest._table import ABSENT, WHOLE, KeyLayout, keys_may_overlap

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from refstore.manifest._model import Manifest

COLUMNS = ("path", "offset", "size", "raw")
"""The columns of a partition file, in kerchunk's order."""


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("parquet manifests need pyarrow: pip install 'refstore[parquet]'") from None
    return pyarrow


def partition_path(root: str, prefix: str, record: int) -> str:
    """The file holding partition *record* of the array at *prefix*."""
    return f"{root}/{prefix}/refs.{record}.parq" if prefix else f"{root}/refs.{record}.parq"


def parse_zmetadata(data: bytes, fn: str) -> tuple[dict[str, Any], int, dict[str, SourceIdentity]]:
    """Return ``(documents, record_size, sources)`` from the bytes of a ``.zmetadata`` file.

    Raises
    ------
    ManifestError
        Naming *fn* and the field, if the JSON, ``metadata``, ``record_size`` or
        ``refstore:sources`` is malformed.
    """
    try:
        meta = ujson.loads(data)
    except ValueError as exc:
        raise ManifestError(f"parquet manifest {fn!r} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ManifestError(f"parquet manifest {fn!r}: expected a JSON object, got {type(meta).__name__}")
    documents = meta.get("metadata")
    record_size = meta.get("record_size")
    if not isinstance(documents, dict):
        raise ManifestError(f"parquet manifest {fn!r}: field 'metadata' must be an object of documents")
    if not isinstance(record_size, int) or isinstance(record_size, bool) or record_size < 1:
        raise ManifestError(f"parquet manifest {fn!r}: field 'record_size' must be an integer >= 1, got {record_size!r}")
    return documents, record_size, parse_sources(meta.get(SOURCES_KEY), repr(fn))


_NARROW = [(np.dtype(t), int(np.iinfo(t).min), int(np.iinfo(t).max)) for t in (np.int8, np.int16, np.int32)]


def _narrow(values: np.ndarray) -> np.ndarray:
    """*values* in the smallest signed integer type that holds them (memory of cached partitions)."""
    if values.size == 0:
        return values.astype(np.int8)
    lo, hi = int(values.min()), int(values.max())
    for dtype, tmin, tmax in _NARROW:
        if tmin <= lo and hi <= tmax:
            return values.astype(dtype, copy=values.dtype != dtype or not values.flags.owndata)
    return values.astype(np.int64, copy=False)


class Partition:
    """The references of one partition file, as compact columns.

    Attributes
    ----------
    urls
        The distinct URLs of the partition (its own table, so a partition's
        memory does not outlive it).
    url_id
        Per row, an index into :attr:`urls`, or ``-1`` where the row has no
        reference (a missing chunk, or inline data in :attr:`raw`). The
        integer type is the narrowest that fits.
    offset, length
        Per row; ``length`` is ``WHOLE`` for a whole-object reference.
    raw
        Row -> inline bytes, for the rows with inline data.
    """

    __slots__ = ("length", "nbytes", "offset", "raw", "url_id", "urls")

    def __init__(
        self,
        urls: list[str],
        url_id: np.ndarray,
        offset: np.ndarray,
        length: np.ndarray,
        raw: dict[int, bytes],
    ) -> None:
        self.urls = urls
        self.url_id = url_id
        self.offset = offset
        self.length = length
        self.raw = raw
        self.nbytes = (
            url_id.nbytes + offset.nbytes + length.nbytes
            + sum(map(len, raw.values())) + sum(len(u) + 49 for u in urls)
        )

    def __len__(self) -> int:
        return len(self.url_id)

    def entry(self, row: int) -> bytes | Reference | None:
        """The entry of *row*: inline bytes, a :class:`Reference`, or None for no chunk."""
        if row >= len(self.url_id):
            return None
        uid = int(self.url_id[row])
        if uid < 0:
            return self.raw.get(row) if self.raw else None
        length = int(self.length[row])
        return Reference(self.urls[uid], int(self.offset[row]), None if length == WHOLE else length)

    def has(self, row: int) -> bool:
        """True if *row* holds a reference or inline data."""
        return row < len(self.url_id) and (int(self.url_id[row]) >= 0 or row in self.raw)

    def present_rows(self) -> np.ndarray:
        """The rows holding a reference or inline data, ascending."""
        rows = np.flatnonzero(self.url_id >= 0)
        if self.raw:
            rows = np.union1d(rows, np.fromiter(self.raw, dtype=np.int64, count=len(self.raw)))
        return rows


def decode_partition(data: bytes, fn: str, layout: KeyLayout, record: int, record_size: int) -> Partition:
    """Read the bytes of partition file *fn* (number *record* of the array *layout*).

    Corrupt files pyarrow reads without complaint (text that is not UTF-8,
    dictionary indices past the dictionary) raise too; see :func:`_decode`.

    Raises
    ------
    ManifestError
        As :func:`_decode`, or naming *fn*, for a column pyarrow cannot convert.
    """
    pa = _pyarrow()
    try:
        return _decode(data, fn, layout, record, record_size)
    except (UnicodeDecodeError, pa.lib.ArrowException) as exc:  # pyarrow decodes lazily: columns fail late
        raise ManifestError(
            f"parquet manifest: cannot read partition {fn!r} ({type(exc).__name__}: {exc})"
        ) from None


def _decode(data: bytes, fn: str, layout: KeyLayout, record: int, record_size: int) -> Partition:
    """Read the bytes of partition file *fn* (number *record* of the array *layout*).

    Only the four columns of the layout are decoded; ``path`` is read as a
    dictionary, so each row costs an index rather than a string. Rows past the
    end of the chunk grid (the padding of the last file) are dropped.

    Raises
    ------
    ManifestError
        Naming *fn* (and the key, for a bad row), if the file is not parquet,
        has more rows than ``record_size``, lacks a needed column, has a
        column of the wrong type, or holds a negative offset or size.
    """
    pa = _pyarrow()
    pc = pa.compute
    try:
        pf = pa.parquet.ParquetFile(pa.BufferReader(data), read_dictionary=["path"])
        names = pf.schema_arrow.names
        table = pf.read(columns=[c for c in COLUMNS if c in names], use_threads=False)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several unrelated types
        raise ManifestError(f"parquet manifest: cannot read partition {fn!r} ({exc})") from None
    n = table.num_rows
    if n > record_size:
        raise ManifestError(f"parquet manifest: partition {fn!r} has {n} rows, more than record_size {record_size}")
    n = max(0, min(n, layout.size - record * record_size))
    table = table.slice(0, n)
    base = record * record_size
    if "path" not in names and "raw" not in names:
        raise ManifestError(f"parquet manifest: partition {fn!r} has neither a 'path' nor a 'raw' column")

    urls: list[str] = []
    ids: np.ndarray = np.full(n, ABSENT, dtype=np.int8)
    if "path" in names and n:
        col = table.column("path")
        if pa.types.is_dictionary(col.type):
            if col.num_chunks > 1:
                col = table.unify_dictionaries().column("path")
            arr = col.combine_chunks()
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            arr = pc.dictionary_encode(col.combine_chunks())
        elif pa.types.is_null(col.type):
            arr = None
        else:
            raise ManifestError(f"parquet manifest: partition {fn!r}: column 'path' must hold text, got {col.type}")
        if arr is not None:
            values = arr.dictionary.to_pylist()
            if not all(isinstance(v, str) or v is None for v in values):
                raise ManifestError(
                    f"parquet manifest: partition {fn!r}: column 'path' must hold text, got {arr.dictionary.type}"
                )
            indices = arr.indices
            if pa.types.is_unsigned_integer(indices.type):
                indices = indices.cast(pa.int64())
            if indices.null_count:
                indices = pc.fill_null(indices, ABSENT)
            ids = indices.to_numpy(zero_copy_only=False)  # read-only, in the index type (int8 for few URLs)
            if None in values:  # a null inside the dictionary
                ids = ids.copy()
                for j, value in enumerate(values):
                    if value is None:
                        ids[ids == j] = ABSENT
            urls = [v if v is not None else "" for v in values]
            beyond = np.flatnonzero(ids >= len(urls))
            if beyond.size:  # (a corrupt file: pyarrow does not check its indices)
                row = int(beyond[0])
                raise ManifestError(
                    f"key {layout.head + layout.suffix(base + row)!r}: partition {fn!r}, row {row}: "
                    f"its path is entry {int(ids[row])} of a dictionary of {len(urls)}; the file is corrupt"
                )
    offset, size = (_int_column(table, name, names, fn, n, urls) for name in ("offset", "size"))

    raw: dict[int, bytes] = {}
    if "raw" in names and n:
        col = table.column("raw")
        kind = col.type
        if not (pa.types.is_null(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
                or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ManifestError(f"parquet manifest: partition {fn!r}: column 'raw' must hold bytes, got {kind}")
        if not pa.types.is_null(kind) and col.null_count < n:
            rows = np.flatnonzero(col.is_valid().to_numpy(zero_copy_only=False))
            values = col.take(pa.array(rows)).to_pylist()
            raw = {int(r): v.encode() if isinstance(v, str) else v for r, v in zip(rows, values)}
            ids = ids.copy()
            ids[rows] = ABSENT  # inline data wins over a path, as in fsspec

    # Rows without a path (ids < 0) are never read for offset and length, so only
    # the rows with one are checked; the common case (no negatives) costs two min().
    lo_off = int(offset.min()) if n else 0
    lo_size = int(size.min()) if n else 0
    if lo_off < 0 or lo_size < 0:
        bad = np.flatnonzero((ids >= 0) & ((offset < 0) | (size < 0)))
        if bad.size:
            row = int(bad[0])
            raise ManifestError(
                f"key {layout.head + layout.suffix(base + row)!r}: negative offset or size "
                f"({int(offset[row])}, {int(size[row])}) in partition {fn!r}, row {row}"
            )
    length = size
    if lo_size <= 0:
        whole = (size == 0) & (offset == 0)
        if whole.any():
            length = np.where(whole, WHOLE, size)
    return Partition(urls, _narrow(ids), _narrow(offset), _narrow(length), raw)


def _int_column(table: Any, name: str, names: list[str], fn: str, n: int, urls: list[str]) -> np.ndarray:
    """Column *name* as int64 (nulls as 0); a missing column is zeros unless paths need it."""
    pa = _pyarrow()
    if name not in names:
        if urls:
            raise ManifestError(f"parquet manifest: partition {fn!r} has paths but no {name!r} column")
        return np.zeros(n, dtype=np.int64)
    col = table.column(name)
    if not (pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
        raise ManifestError(f"parquet manifest: partition {fn!r}: column {name!r} must hold integers, got {col.type}")
    if pa.types.is_null(col.type) or not n:
        return np.zeros(n, dtype=np.int64)
    if col.null_count:
        col = pa.compute.fill_null(col, 0)
    return col.to_numpy().astype(np.int64, copy=False)


def check_one_grid(layouts: Mapping[str, KeyLayout], key: str, layout: KeyLayout, where: str) -> None:
    """Refuse the metadata *key* (of *layout*) if another array's keys may be chunk keys of it too.

    The rows of a partition are the chunks of one grid: an array described twice
    (``.zarray`` and ``zarr.json``), or lying among another's chunk keys, would give
    a key two rows, or a row two keys. *layouts* maps the metadata keys seen so far.

    Raises
    ------
    ManifestError
        Naming *where*, *key* and the other array.
    """
    for other_key, other in layouts.items():
        if other.prefix == layout.prefix or keys_may_overlap(other, layout):
            raise ManifestError(
                f"{where}: key {key!r}: its chunk keys may also be chunk keys of the array that "
                f"{other_key!r} describes; the parquet layout holds one description per array, "
                "and no array among another's chunks (save as JSON instead)"
            )


# -- reading ---------------------------------------------------------------------------------


def read_parquet(fs: AbstractFileSystem, root: str, *, cache_size: int | None = 128) -> Manifest:
    """Open a parquet reference directory lazily: only ``root/.zmetadata`` is read now.

    See :func:`refstore.manifest._lazy.open_parquet`.

    Raises
    ------
    FileNotFoundError
        If ``root/.zmetadata`` is missing.
    ManifestError
        If ``.zmetadata`` is malformed or names an invalid key.
    """
    from refstore.manifest._lazy import open_parquet

    return open_parquet(fs, root, cache_size=cache_size)


# -- writing ---------------------------------------------------------------------------------


class Block(NamedTuple):
    """The references of rows ``[lo, hi)`` of one array, ready to encode.

    ``ids`` index ``urls`` (``-1``: no reference); ``length`` is ``WHOLE`` for
    a whole object; ``raw`` maps a row (relative to ``lo``) to inline bytes.
    """

    urls: Sequence[str | None]
    ids: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    raw: dict[int, bytes]


def _block(manifest: Manifest, table: Any, lo: int, hi: int) -> Block:
    if table.lazy:
        return table.block(lo, hi, manifest)
    return Block(
        manifest._urls,
        table.url_id[lo:hi].astype(np.int64),
        table.offset[lo:hi].copy(),
        table.length[lo:hi].copy(),
        {},
    )


def _encode(block: Block, layout: KeyLayout, lo: int) -> Any:
    """The pyarrow table of one partition file."""
    pa = _pyarrow()
    ids, n = block.ids, len(block.ids)
    present = ids >= 0
    used, inverse = np.unique(ids[present], return_inverse=True)
    dictionary = [block.urls[int(u)] for u in used]
    if None in dictionary:
        row = int(np.flatnonzero(present & (ids == int(used[dictionary.index(None)])))[0])
        raise ManifestError(
            f"key {layout.head + layout.suffix(lo + row)!r}: a reference without a URL (the default "
            "target) cannot be stored in the parquet layout, where a null path means no chunk; "
            "save as JSON instead"
        )
    index = np.zeros(n, dtype=np.int32)
    index[present] = inverse
    path = pa.DictionaryArray.from_arrays(pa.array(index, mask=~present), pa.array(dictionary, type=pa.string()))
    whole = present & (block.length == WHOLE)
    offset = np.where(present & ~whole, block.offset, 0)
    size = np.where(present & ~whole, block.length, 0)
    if block.raw:
        values: list[bytes | None] = [None] * n
        for row, data in block.raw.items():
            values[row] = data
        raw = pa.array(values, type=pa.binary())
    else:
        raw = pa.nulls(n, type=pa.binary())
    # offset and size are non-null, as in kerchunk's files; with _STATS, fastparquet (fsspec's
    # default engine) then reads them as integers rather than floats it cannot fetch with
    return pa.table(
        [path, pa.array(offset, type=pa.int64()), pa.array(size, type=pa.int64()), raw], schema=_schema()
    )


_STATS = ["offset", "size"]
"""Columns written with statistics: fastparquet takes an integer column without them for nullable."""


def _schema() -> Any:
    pa = _pyarrow()
    return pa.schema([
        pa.field("path", pa.dictionary(pa.int32(), pa.string())),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("raw", pa.binary()),
    ])


def _same_place(fs_a: Any, root_a: str, fs_b: Any, root_b: str) -> bool:
    if type(fs_a) is not type(fs_b):
        return False
    a, b = root_a.rstrip("/"), root_b.rstrip("/")
    if getattr(fs_a, "protocol", None) in ("file", ("file", "local"), ("file",)):
        import os

        a, b = os.path.realpath(a), os.path.realpath(b)
    return posixpath.normpath(a) == posixpath.normpath(b)


def write_parquet(manifest: Manifest, fs: AbstractFileSystem, root: str, *, record_size: int) -> None:
    """Write *manifest* as a parquet reference directory at *root*.

    A lazily opened parquet manifest is streamed: one source partition is in
    memory at a time (besides its cache). Files ``refs.<k>.parq`` left in an
    array's folder by an earlier write, that this write does not produce, are
    removed so that they cannot be read as chunks.

    Raises
    ------
    ManifestError
        If the manifest holds entries the layout cannot express (references
        or non-JSON inline data outside any array's chunk grid, references
        without a URL), or if *root* is the directory a lazy manifest is
        reading from.
    ValueError
        If *record_size* is not a positive integer.
    """
    pa = _pyarrow()
    if not isinstance(record_size, int) or record_size < 1:
        raise ValueError(f"record_size must be an integer >= 1, got {record_size!r}")
    source = getattr(manifest, "_parquet", None)
    if source is not None and _same_place(fs, root, source.fs, source.root):
        raise ManifestError(
            f"parquet manifest {root!r}: cannot overwrite the directory this manifest is lazily "
            "reading from; save to another path (or save manifest.load())"
        )
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
    layouts: dict[str, KeyLayout] = {}
    for key, data in manifest._inline.items():
        layout = manifest._layout_for(key, data)
        if layout is not None:
            check_one_grid(layouts, key, layout, f"parquet manifest {root!r}")
            layouts[key] = layout
    if manifest._loose:
        key = next(iter(manifest._loose))
        raise ManifestError(
            f"key {key!r}: the parquet layout stores references only for chunks of arrays with "
            "regular-grid metadata; save as JSON instead"
        )
    fs.makedirs(root, exist_ok=True)
    for prefix, table in list(manifest._tables.items()):
        layout = table.layout
        inline: Mapping[int, bytes] = chunk_inline.get(prefix, {})
        inline_flats = sorted(inline)
        folder = f"{root}/{prefix}" if prefix else root
        fs.makedirs(folder, exist_ok=True)
        try:
            stale = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.glob(f"{folder}/refs.*.parq")}
        except FileNotFoundError:
            stale = set()
        for record in range(math.ceil(layout.size / record_size)):
            lo, hi = record * record_size, min((record + 1) * record_size, layout.size)
            block = _block(manifest, table, lo, hi)
            for flat in inline_flats[bisect.bisect_left(inline_flats, lo) : bisect.bisect_left(inline_flats, hi)]:
                block.raw[flat - lo] = inline[flat]
                block.ids[flat - lo] = ABSENT
            if not block.raw and not (block.ids >= 0).any():
                continue
            buf = io.BytesIO()
            pa.parquet.write_table(_encode(block, layout, lo), buf, compression="zstd", write_statistics=_STATS)
            name = f"refs.{record}.parq"
            fs.pipe_file(f"{folder}/{name}", buf.getvalue())
            stale.discard(name)
        for name in sorted(stale):
            fs.rm_file(f"{folder}/{name}")
    meta: dict[str, Any] = {"metadata": documents, "record_size": record_size}
    if manifest.sources:  # every identity: a lazy manifest's URL table is only a sample
        meta[SOURCES_KEY] = sources_to_json(manifest.sources, list(manifest.sources))
    fs.pipe_file(f"{root}/.zmetadata", ujson.dumps(meta, escape_forward_slashes=False).encode())
