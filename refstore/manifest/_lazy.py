"""Lazily opened parquet manifests: partitions read on demand into a bounded LRU.

Opening reads ``.zmetadata`` only. A chunk key is parsed to its C-order index
over the array's chunk grid, which names partition ``index // record_size``
and row ``index % record_size``; that partition's columns are read (pyarrow,
the four layout columns only) into compact numpy columns and kept in an LRU
of ``cache_size`` partitions shared by the manifest's arrays. Edits stay in
memory, over the partitions.

Partitions are read and cached by
:class:`~refstore.manifest._partitions.ParquetSource`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

import numpy as np
import ujson

from refstore.errors import ManifestError
from refstore.manifest._keys import check_key
from refstore.manifest._model import (
    CELL_FLOOR,
    Manifest,
    Reference,
    check_metadata,
    is_metadata_key,
)
from refstore.manifest._parquet import Block, Partition, check_one_grid, parse_zmetadata
from refstore.manifest._partitions import ParquetSource
from refstore.manifest._sources import SourceIdentity
from refstore.manifest._table import ABSENT, WHOLE, ChunkTable, KeyLayout
from refstore.manifest._urls import UrlTable, as_table

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

_UNSET = object()
_SAMPLE_TABLES = 4
#: A scan over more partitions than this lists the array's folder and visits only existing files.
_SCAN_ALL = 1024
"""Arrays whose first partition may be read to sample URLs (see :meth:`LazyParquetManifest._urls`)."""


def _keys(layout: KeyLayout, flats: np.ndarray) -> Iterator[str]:
    """The keys of ravelled chunk indices, built at C speed."""
    if not layout.grid:
        return iter([layout.head + layout.suffix(0)] * len(flats))
    lead = layout.head + ("c." if (layout.v3 and layout.sep == ".") else "")
    columns = [map(str, axis.tolist()) for axis in np.unravel_index(flats, layout.grid)]
    return map(lead.__add__, map(layout.sep.join, zip(*columns)))


class LazyChunkTable:
    """The chunk references of one array of a parquet manifest, read partition by partition.

    It answers what :class:`~refstore.manifest._table.ChunkTable` answers
    (:meth:`assign`, :meth:`remove`, :attr:`count`, :meth:`present_blocks`,
    :meth:`iter_keys`, :meth:`nbytes`), but :meth:`entry` replaces
    ``lookup``: it returns the entry itself, since a partition has its own URL
    table and may hold inline data.

    Edits (:meth:`assign`, :meth:`remove`) are kept in memory over the
    partitions, by chunk index.
    """

    __slots__ = ("_count", "edits", "layout", "source")

    lazy: ClassVar[bool] = True

    def __init__(self, layout: KeyLayout, source: ParquetSource) -> None:
        self.layout = layout
        self.source = source
        self.edits: dict[int, tuple[int, int, int] | None] = {}
        """Chunk index -> ``(url_id, offset, length)`` into the manifest's URL table, or None if deleted."""
        self._count: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"layout": self.layout, "source": self.source, "edits": self.edits}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.layout = state["layout"]
        self.source = state["source"]
        self.edits = state["edits"]
        self._count = None

    def _partition(self, flat: int) -> tuple[Partition | None, int]:
        rs = self.source.record_size
        return self.source.partition(self.layout, flat // rs, flat), flat % rs

    def entry(self, flat: int, manifest: Manifest) -> bytes | Reference | None:
        """The entry of chunk *flat*: inline bytes, a :class:`Reference`, or None if there is none.

        Parameters
        ----------
        flat
            The ravelled chunk index.
        manifest
            The manifest holding this table (edits refer to its URL table,
            which is only touched when an edit is hit).

        Raises
        ------
        ManifestError
            Naming the key and the file, if the chunk's partition is corrupt.
        """
        if flat in self.edits:
            edit = self.edits[flat]
            if edit is None:
                return None
            uid, offset, length = edit
            return Reference(manifest._urls[uid], offset, None if length == WHOLE else length)
        part, row = self._partition(flat)
        return None if part is None else part.entry(row)

    def has(self, flat: int) -> bool:
        """True if chunk *flat* has an entry."""
        edit = self.edits.get(flat, _UNSET)
        if edit is not _UNSET:
            return edit is not None
        part, row = self._partition(flat)
        return part is not None and part.has(row)

    def assign(self, flat: int, uid: int, offset: int, length: int) -> None:
        """Set chunk *flat* to a reference into the manifest's URL table."""
        self.edits[flat] = (uid, offset, length)
        self._count = None

    def remove(self, flat: int) -> bool:
        """Remove chunk *flat*; return whether it had an entry."""
        existed = self.has(flat)
        self.edits[flat] = None
        self._count = None
        return existed

    @property
    def count(self) -> int:
        """Number of chunks with an entry. The first call reads every partition (not cached)."""
        if self._count is None:
            self._count = sum(len(b) for b in self.present_blocks(keep=False))
        return self._count

    def present_blocks(self, lo: int = 0, hi: int | None = None, *, keep: bool = True) -> Iterator[np.ndarray]:
        """Chunk indices in ``[lo, hi)`` with an entry, ascending, one array per partition.

        Only the partitions covering the range are read, one at a time.
        """
        size = self.layout.size
        hi = size if hi is None else min(hi, size)
        if lo >= hi:
            return
        rs = self.source.record_size
        edits = sorted(self.edits.items())  # a snapshot: edits may come from another thread
        if edits:
            edit_flats = np.array([flat for flat, _ in edits], dtype=np.int64)
            edit_set = np.array([edit is not None for _, edit in edits], dtype=bool)
        else:
            edit_flats = np.zeros(0, dtype=np.int64)
            edit_set = np.zeros(0, dtype=bool)
        for record in self._records(lo // rs, -(-hi // rs), edit_flats):
            base = record * rs
            a, b = max(lo, base), min(hi, base + rs)
            part = self.source.partition(self.layout, record, a, keep=keep)
            flats = np.zeros(0, dtype=np.int64) if part is None else part.present_rows() + base
            if len(flats) and (flats[0] < a or flats[-1] >= b):
                flats = flats[(flats >= a) & (flats < b)]
            i, j = np.searchsorted(edit_flats, [a, b])
            if i < j:
                flats = np.setdiff1d(flats, edit_flats[i:j][~edit_set[i:j]], assume_unique=True)
                flats = np.union1d(flats, edit_flats[i:j][edit_set[i:j]])
            if len(flats):
                yield flats

    def _records(self, first: int, stop: int, edit_flats: np.ndarray) -> Iterable[int]:
        """The partition numbers in ``[first, stop)`` a scan must visit: all of them, or for a
        range of more than :data:`_SCAN_ALL` partitions, those with a file or an edit."""
        if stop - first <= _SCAN_ALL:
            return range(first, stop)
        rs = self.source.record_size
        with_file = self.source.records(self.layout.prefix)
        edited = np.unique(edit_flats // rs).tolist()
        return sorted({r for r in (*with_file, *edited) if first <= r < stop})

    def present(self) -> np.ndarray:
        """Not available: the columns of a lazy table are not in memory.

        Raises
        ------
        ManifestError
            Always, naming the array; use :meth:`present_blocks`, or
            ``manifest.load()`` for an in-memory copy.
        """
        raise ManifestError(
            f"array {self.layout.prefix!r} of a lazily opened parquet manifest: its chunk columns are "
            "not in memory; iterate present_blocks(), or use manifest.load() for an in-memory copy"
        )

    def iter_keys(self) -> Iterator[str]:
        """Keys of the chunks with an entry, reading one partition at a time (through the cache)."""
        for flats in self.present_blocks():
            yield from _keys(self.layout, flats)

    def nbytes(self) -> int:
        """Memory of this array's cached partitions."""
        return self.source.nbytes(self.layout.prefix)

    def block(self, lo: int, hi: int, manifest: Manifest) -> Block:
        """Rows ``[lo, hi)`` with edits applied, for writing (partitions are not cached).

        The block's URL table starts with the manifest's (which edits refer
        to) and continues with the URLs of the partitions read.
        """
        urls = manifest._urls if self.edits else []
        n = hi - lo
        ids = np.full(n, ABSENT, dtype=np.int64)
        offset = np.zeros(n, dtype=np.int64)
        length = np.zeros(n, dtype=np.int64)
        raw: dict[int, bytes] = {}
        table: list[str | None] = list(urls)
        rs = self.source.record_size
        for record in range(lo // rs, -(-hi // rs)):
            base = record * rs
            part = self.source.partition(self.layout, record, max(lo, base), keep=False)
            if part is None:
                continue
            a, b = max(lo, base), min(hi, base + len(part))
            if a >= b:
                continue
            src, dst = slice(a - base, b - base), slice(a - lo, b - lo)
            pid = part.url_id[src].astype(np.int64)
            ids[dst] = np.where(pid >= 0, pid + len(table), ABSENT)
            table.extend(part.urls)
            offset[dst] = part.offset[src]
            length[dst] = part.length[src]
            for row, data in part.raw.items():
                if a <= base + row < b:
                    raw[base + row - lo] = data
        for flat, edit in list(self.edits.items()):
            if lo <= flat < hi:
                raw.pop(flat - lo, None)
                if edit is None:
                    ids[flat - lo] = ABSENT
                else:
                    ids[flat - lo], offset[flat - lo], length[flat - lo] = edit
        return Block(table, ids, offset, length, raw)


class LazyParquetManifest(Manifest):
    """A :class:`Manifest` over a parquet reference directory, read on demand.

    Metadata documents (from ``.zmetadata``) are in memory; chunk references
    are read a partition at a time when a key is looked up, and at most
    ``cache_size`` partitions are kept (:class:`ParquetSource`). Missing
    partition files and null rows are missing chunks.

    Costs worth knowing: ``len()`` and listing an array's chunk keys read
    every partition of it (one at a time); :meth:`load` and :meth:`to_dict`
    read everything into memory. Pickling carries the location and options
    (and any in-memory edits), never partitions.

    ``urls`` (and the protocols the readers infer from it) holds the URLs of
    edits plus a sample read on first use: one URL per protocol from the
    first partition of the first few arrays, as fsspec infers the remote
    protocol from the first reference.
    """

    def __init__(self) -> None:
        self._sampled = True
        self._parquet: ParquetSource | None = None
        self._edited = False
        super().__init__()

    # -- the URL table, sampled on first use --------------------------------------------

    @property  # type: ignore[override]
    def _urls(self) -> UrlTable:
        if not self._sampled:
            self._sample_urls()
        return self._url_table

    @_urls.setter
    def _urls(self, value: Sequence[str | None]) -> None:
        self._url_table = as_table(value)

    def _sample_urls(self) -> None:
        self._sampled = True
        source = self._parquet
        if source is None:
            return
        for table in [t for t in self._tables.values() if t.lazy][:_SAMPLE_TABLES]:
            try:
                part = source.partition(table.layout, 0, 0)
            except ManifestError:
                continue  # reading the key raises it again, naming the key
            if part is not None and part.urls:
                protocols: dict[str, str] = {}
                for url in part.urls[:4096]:
                    protocols.setdefault(url.split("://", 1)[0] if "://" in url else "", url)
                for url in protocols.values():
                    self.url_id(url)
                return

    def get(self, key: str) -> bytes | Reference | None:
        """As :meth:`Manifest.get`; also answers ``.zmetadata`` (when no entry has that key)
        with the documents as consolidated zarr 2 metadata, as fsspec's lazy mapper serves the
        directory's own ``.zmetadata``, so ``consolidated=True`` opens it. That answer is not
        one of the manifest's keys: it is not listed, saved or counted.
        """
        entry = super().get(key)
        if entry is None and key == ".zmetadata":
            documents = {k: ujson.loads(v) for k, v in self._inline.items() if is_metadata_key(k)}
            consolidated = {"metadata": documents, "zarr_consolidated_format": 1}
            return ujson.dumps(consolidated, escape_forward_slashes=False).encode()
        return entry

    # -- edits mark the manifest (pickles then carry the in-memory state) ----------------

    def set(self, key: str, value: bytes | Reference) -> None:
        super().set(key, value)
        self._edited = True

    def delete(self, key: str) -> None:
        super().delete(key)
        self._edited = True

    # -- conversion -----------------------------------------------------------------------

    def load(self) -> Manifest:
        """Read every partition and return an in-memory :class:`Manifest` with the same entries."""
        out = Manifest()
        out._urls = self._url_table.copy()  # (no sampling: every URL comes with its partition)
        out._inline = dict(self._inline)
        out._loose = dict(self._loose)
        out.source, out.source_is_remote = self.source, self.source_is_remote
        out.sources = dict(self.sources)
        for prefix, table in list(self._tables.items()):
            if not table.lazy:
                copy = ChunkTable(table.layout)
                copy.url_id[:], copy.offset[:], copy.length[:] = table.url_id, table.offset, table.length
                copy.count = table.count
                out._tables[prefix] = copy
                continue
            lazy = cast(LazyChunkTable, table)
            layout = table.layout
            rs = lazy.source.record_size
            # only the partitions with a file or an edit: the metadata may declare a grid of
            # up to 2**63 cells, which neither a loop nor dense columns could cover
            edits = np.array(sorted(lazy.edits), dtype=np.int64)
            records = list(lazy._records(0, -(-layout.size // rs), edits))
            dense = None
            if layout.size <= 4 * len(records) * rs + CELL_FLOOR:
                dense = out._tables[prefix] = ChunkTable(layout)
            for record in records:
                lo, hi = record * rs, min((record + 1) * rs, layout.size)
                block = lazy.block(lo, hi, self)
                present = block.ids >= 0
                if present.any():
                    used = np.unique(block.ids[present])
                    lut = np.full(int(used[-1]) + 1, ABSENT, dtype=np.int32)
                    lut[used] = [out.url_id(block.urls[int(u)]) for u in used]
                    if dense is not None:
                        dense.url_id[lo:hi][present] = lut[block.ids[present]]
                        dense.offset[lo:hi][present] = block.offset[present]
                        dense.length[lo:hi][present] = block.length[present]
                        dense.count += int(present.sum())
                    else:  # a sparse grid: its references are kept individually
                        for row in np.flatnonzero(present).tolist():
                            out._loose[layout.head + layout.suffix(lo + row)] = (
                                int(lut[block.ids[row]]), int(block.offset[row]), int(block.length[row])
                            )
                for row, data in block.raw.items():
                    key = layout.head + layout.suffix(lo + row)
                    out._inline.setdefault(key, data)
        out._reindex()
        return out

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a kerchunk version 1 reference dict (reads every partition)."""
        return self.load().to_dict()

    def __repr__(self) -> str:
        source = self._parquet
        cached = f"{source.cached()}/{source.cache_size} partitions cached" if source else ""
        return (
            f"<Manifest from {self.source!r}: lazy parquet, {len(self._tables)} arrays, "
            f"record_size {source.record_size if source else '?'}, {cached}>"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        if self._edited:
            state = {
                "_urls": self._url_table, "_inline": self._inline, "_loose": self._loose, "_tables": self._tables,
                "source": self.source, "source_is_remote": self.source_is_remote, "sampled": self._sampled,
                "sources": self.sources,
            }
            return (_restore_edited, (self._parquet, state))
        sample = self._url_table if self._sampled else None
        return (_reopen, (self._parquet, sample, self.source, self.source_is_remote))


def _build(source: ParquetSource, documents: dict[str, Any], fn: str) -> LazyParquetManifest:
    manifest = LazyParquetManifest()
    manifest._parquet = source
    layouts: dict[str, KeyLayout] = {}
    for key, doc in documents.items():
        try:
            check_key(key)
        except ManifestError as exc:
            raise ManifestError(f"parquet manifest {fn!r}: {exc}") from None
        try:
            data = doc.encode() if isinstance(doc, str) else ujson.dumps(doc, escape_forward_slashes=False).encode()
            manifest._inline[key] = check_metadata(key, data)
        except (ManifestError, OverflowError) as exc:  # (ujson raises OverflowError for nesting too deep)
            raise ManifestError(f"parquet manifest {fn!r}: {exc}") from None
        layout = manifest._layout_for(key, data)
        if layout is not None:
            check_one_grid(layouts, key, layout, f"parquet manifest {fn!r}")
            layouts[key] = layout
            manifest._tables[layout.prefix] = LazyChunkTable(layout, source)  # type: ignore[assignment]
    manifest._reindex()
    return manifest


def _read_documents(source: ParquetSource) -> tuple[dict[str, Any], int, str, dict[str, SourceIdentity]]:
    fn = f"{source.root}/.zmetadata"
    documents, record_size, sources = parse_zmetadata(source.read(fn), fn)
    return documents, record_size, fn, sources


def open_parquet(fs: AbstractFileSystem, root: str, *, cache_size: int | None = 128) -> LazyParquetManifest:
    """Open a parquet reference directory, reading ``root/.zmetadata`` only.

    Parameters
    ----------
    fs, root
        The filesystem and the directory.
    cache_size
        Partitions kept in memory (shared by all arrays; None: no limit).

    Returns
    -------
    LazyParquetManifest
        Every array with regular-grid metadata gets a lazy table; partitions
        are read when their keys are.

    Raises
    ------
    FileNotFoundError
        If ``root/.zmetadata`` is missing.
    ManifestError
        If ``.zmetadata`` is malformed or names an invalid key.
    ValueError
        If *cache_size* is negative.
    """
    source = ParquetSource(fs, root, 1, cache_size)
    documents, record_size, fn, sources = _read_documents(source)
    source.record_size = record_size
    manifest = _build(source, documents, fn)
    manifest.sources.update(sources)
    manifest._sampled = False
    return manifest


def _reopen(
    source: ParquetSource, sample: Sequence[str | None] | None, origin: str | None, remote: bool
) -> LazyParquetManifest:
    """Unpickle an unedited lazy manifest: read ``.zmetadata`` again, no partitions."""
    documents, record_size, fn, sources = _read_documents(source)
    source.record_size = record_size
    manifest = _build(source, documents, fn)
    manifest.sources.update(sources)
    if sample is None:
        manifest._sampled = False
    else:
        manifest._urls = sample
    manifest.source, manifest.source_is_remote = origin, remote
    return manifest


def _restore_edited(source: ParquetSource, state: dict[str, Any]) -> LazyParquetManifest:
    """Unpickle an edited lazy manifest from its in-memory state (no file is read)."""
    manifest = LazyParquetManifest.__new__(LazyParquetManifest)
    manifest.__setstate__(state)
    manifest._parquet = source
    manifest._edited = True
    manifest._sampled = state["sampled"]
    return manifest


def is_lazy(manifest: Manifest) -> bool:
    """True if *manifest* reads parquet partitions on demand."""
    return isinstance(manifest, LazyParquetManifest) and manifest._parquet is not None


__all__ = ["LazyChunkTable", "LazyParquetManifest", "ParquetSource", "is_lazy", "open_parquet"]
