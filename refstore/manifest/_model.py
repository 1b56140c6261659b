"""The in-memory manifest: a map from zarr key to inline bytes or a byte range of a URL.

Storage is compact: a URL table, per-array integer columns over the chunk grid
(:mod:`._table`), a dict for inline data and metadata, and a small dict for
references that fit no grid. This module knows nothing of fetching.
"""

from __future__ import annotations

import bisect
import math
import threading
import uuid
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np
import ujson

from refstore.errors import KeyNotInManifest, ManifestError
from refstore.manifest._keys import check_key
from refstore.manifest._sources import SourceIdentity
from refstore.manifest._table import _SUFFIX_CHARS as SUFFIX_CHARS
from refstore.manifest._table import (
    WHOLE,
    ChunkTable,
    KeyLayout,
    keys_may_overlap,
    layout_from_metadata,
)
from refstore.manifest._urls import UrlTable, as_table

if TYPE_CHECKING:
    from refstore.manifest._lazy import LazyChunkTable

_StrSet = set[str]  # ``set`` is a method name inside Manifest
METADATA_NAMES = (".zarray", ".zgroup", ".zattrs", ".zmetadata", "zarr.json")


class Reference(NamedTuple):
    """A reference to bytes of a target.

    Attributes
    ----------
    url
        The target URL, or None for "the default target" (kerchunk's null URL).
    offset
        First byte.
    length
        Number of bytes, or None for the whole object.
    """

    url: str | None
    offset: int
    length: int | None


def is_metadata_key(key: str) -> bool:
    """True if *key* names a zarr metadata document."""
    return key.rpartition("/")[2] in METADATA_NAMES


def check_metadata(key: str, data: bytes) -> bytes:
    """*data*, if *key* is not a metadata document or if *data* is a JSON object, as zarr requires.

    The readers of manifests apply it; edits (a store's ``set``) may write any bytes.

    Raises
    ------
    ManifestError
        Naming the key, for a metadata document that is not a JSON object
        (zarr would fail on it later with a bare ``TypeError``).
    """
    if key.rpartition("/")[2] not in METADATA_NAMES:
        return data
    try:
        doc = ujson.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(f"key {key!r}: a metadata document must be a JSON object ({exc})") from None
    if not isinstance(doc, dict):
        raise ManifestError(f"key {key!r}: a metadata document must be a JSON object, got {type(doc).__name__}")
    return data


#: Offsets and lengths are int64 columns: the largest value a reference may give, plus one.
INT64_END = 1 << 63
#: Chunk-grid cells (20 bytes each) the dense columns of a manifest may hold regardless of its size.
CELL_FLOOR = 1 << 20


def as_int(n: Any) -> Any:
    """*n* as a Python int if it is a numpy integer (as kerchunk's scanners may write), else as is."""
    return int(n) if isinstance(n, np.integer) else n


def check_span(key: str, offset: object, length: object) -> None:
    """Raise :class:`ManifestError` naming *key* unless *offset* and *length* fit the columns.

    *length* may be None (a whole object).
    """
    if type(offset) is int and 0 <= offset < INT64_END and (  # the common case, in one test
        length is None or (type(length) is int and 0 <= length < INT64_END)
    ):
        return
    for name, n in (("offset", offset), ("length", length)):
        if n is None and name == "length":
            continue
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < INT64_END:
            raise ManifestError(f"key {key!r}: {name} must be an integer >= 0 and < 2**63, got {n!r}")


class Manifest:
    """A kerchunk-compatible reference set held in compact form.

    Build one with :meth:`open` (a dict, a local path or any fsspec URL of
    JSON or parquet references) or :meth:`from_dict`. Look keys up with
    :meth:`get`; edit with :meth:`set` and :meth:`delete`; write with
    :meth:`save` or :meth:`to_dict`.

    Entries are either ``bytes`` (inline data, including metadata documents)
    or a :class:`Reference`.
    """

    def __init__(self) -> None:
        self._urls = UrlTable()
        self._inline: dict[str, bytes] = {}
        self._loose: dict[str, tuple[int, int, int]] = {}
        self._tables: dict[str, ChunkTable] = {}
        self._heads: dict[tuple[str, int], ChunkTable] = {}
        self._slash_counts: tuple[int, ...] = ()
        self._by_head: dict[str, list[ChunkTable]] = {}
        self._sorted_heads: list[str] = []
        self._dense_cells = 0
        self._lock = threading.Lock()
        self.source: str | None = None
        """Where the manifest was read from (a URL or path), if anywhere."""
        self.source_is_remote = False
        """True if it was read from a remote URL (the default URL policy then refuses local files)."""
        self.sources: dict[str | None, SourceIdentity] = {}
        """What each target URL looked like when the manifest was made (:mod:`._sources`), by URL as
        written; verified by the readers. Builders fill it; kerchunk JSON and parquet carry it."""
        self.mirror: MutableMapping[str, Any] | None = None
        """A mapping of the caller's that also receives the edits made through
        :class:`~refstore.manifest._mapping.ReferenceMapping` (fsspec's ``LazyReferenceMapper``)."""
        self._uid = uuid.uuid4().hex
        self._generation = 0  # bumped by every edit (see ._snapshot)
        self._open_args: dict[str, Any] = {}  # how to open it again from .source (see ._snapshot)
        self._opened_generation: int | None = None  # ._generation when it matched its source
        self._open_source: str | None = None  # .source resolved when opened (a relative path made absolute)
        self._digest: tuple[int, str] | None = None  # (._generation, SHA-256 of its snapshot), see ._snapshot

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls,
        refs: Mapping[str, Any],
        *,
        template_overrides: Mapping[str, str] | None = None,
    ) -> Manifest:
        """Build a manifest from a kerchunk reference dict (version 0 or 1).

        Raises
        ------
        ManifestError
            Naming the key and the problem, for any malformed entry.
        """
        from refstore.manifest._kerchunk import ingest

        manifest = cls()
        ingest(manifest, refs, template_overrides)
        return manifest

    @classmethod
    def open(cls, fo: Any, **kwargs: Any) -> Manifest:
        """Open a manifest from a dict, a :class:`Manifest`, a local path or an fsspec URL.

        See :func:`refstore.manifest.open_manifest` for the keyword arguments.
        """
        from refstore.manifest._io import open_manifest

        return open_manifest(fo, **kwargs)

    def save(self, path: str, **kwargs: Any) -> None:
        """Write the manifest as kerchunk JSON (``.json``, ``.json.gz``, ``.json.zst``)
        or as a parquet reference directory (``.parq``/``.parquet`` or ``format="parquet"``).

        See :func:`refstore.manifest.save_manifest` for the keyword arguments.
        """
        from refstore.manifest._io import save_manifest

        save_manifest(self, path, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as a kerchunk version 1 reference dict."""
        from refstore.manifest._kerchunk import to_refs
        from refstore.manifest._sources import SOURCES_KEY, sources_to_json

        out: dict[str, Any] = {"version": 1}
        sources = sources_to_json(self.sources, self._urls) if self.sources else {}
        if sources:
            # before refs: the streaming reader then ends its last block of refs at the closing
            # brace, instead of retrying whole-block parses that fail on what follows (10x slower)
            out[SOURCES_KEY] = sources
        out["refs"] = to_refs(self)
        return out

    # -- the URL table ------------------------------------------------------------------

    @property
    def _urls(self) -> UrlTable:
        return self._url_table

    @_urls.setter
    def _urls(self, value: Sequence[str | None]) -> None:
        self._url_table = as_table(value)

    def url_id(self, url: str | None) -> int:
        """Return the id of *url* in the URL table, adding it if new."""
        return self._urls.id_of(url)

    @property
    def urls(self) -> list[str | None]:
        """The target URLs, in first-seen order (None is "the default target"); distinct but
        for manifests naming more than :data:`~refstore.manifest._urls.PACK_AFTER` URLs."""
        return list(self._urls)

    def protocols(self) -> set[str]:
        """The protocols the target URLs name (``s3``, ``https``, ...; not for URLs naming none)."""
        return self._urls.protocols()

    # -- what the faces may ask -----------------------------------------------------------

    @property
    def uid(self) -> str:
        """An identifier unique to this manifest object (not kept by copies or pickles)."""
        return self._uid

    @property
    def generation(self) -> int:
        """A counter bumped by every edit: a value cached with it is stale once it differs."""
        return self._generation

    def inline_keys(self) -> Iterator[str]:
        """The keys held as inline bytes (metadata documents first among them), in order."""
        yield from list(self._inline)

    def tabulated(self) -> list[str]:
        """The paths of the arrays whose chunk references are held as columns (dense or parquet)."""
        return list(self._tables)

    # -- tables -------------------------------------------------------------------------

    def _add_table(self, layout: KeyLayout) -> ChunkTable:
        """Return the table for *layout*, starting one if the array has none or another layout.

        A table made for an earlier layout of the same array (its metadata was
        replaced, e.g. the shape grew on append) hands its entries over first:
        they stay under their own keys, so no reference is dropped (also for an array
        given as both ``.zarray`` and ``zarr.json``).
        """
        table = self._tables.get(layout.prefix)
        if table is not None and table.layout == layout:
            return table
        if table is not None:
            self._evict(table)
        table = ChunkTable(layout)
        self._tables[layout.prefix] = table
        self._index_table(table)
        return table

    def _evict(self, table: ChunkTable) -> None:
        """Remove *table*, keeping each of its entries as a loose reference (or inline bytes)."""
        entries: list[tuple[str, bytes | Reference | tuple[int, int, int] | None]]
        if table.lazy:  # a parquet table: its entries come from its partitions
            entries = [(key, self.get(key)) for key in table.iter_keys()]
        else:
            entries = [(key, table.lookup(int(flat))) for key, flat in zip(table.iter_keys(), table.present())]
        del self._tables[table.layout.prefix]
        self._reindex()
        for key, entry in entries:
            if isinstance(entry, Reference):
                length = WHOLE if entry.length is None else entry.length
                self._loose[key] = (self.url_id(entry.url), entry.offset, length)
            elif isinstance(entry, tuple):
                self._loose[key] = entry
            elif entry is not None:
                self._inline.setdefault(key, entry)

    def _clashes(self, layout: KeyLayout) -> bool:
        """True if the chunk keys of *layout* may also be chunk keys of another array's table.

        Such an array (one lying among another's chunk keys) is not
        tabulated: its keys are kept individually, so that every key is held once.
        """
        # found through the index of heads, not by comparing with every table: a manifest of
        # many arrays (a virtual manifest's embedded sources) would otherwise load in quadratic time
        head, by_head = layout.head, self._by_head

        def clash(tables: list[ChunkTable]) -> bool:
            return any(t.layout.prefix != layout.prefix and keys_may_overlap(t.layout, layout) for t in tables)

        cut = len(head)  # heads that are head or a prefix of it, followed by chunk-key text
        while True:
            if clash(by_head.get(head[:cut], [])):
                return True
            if cut == 0 or head[cut - 1] not in SUFFIX_CHARS:
                break
            cut -= 1
        heads = self._sorted_heads  # longer heads that start with head
        for i in range(bisect.bisect_right(heads, head), len(heads)):
            if not heads[i].startswith(head):
                break
            if clash(by_head[heads[i]]):
                return True
        return False

    def _room_for(self, layout: KeyLayout, budget: int) -> bool:
        """True if dense columns for *layout* keep all the manifest's dense cells within *budget*.

        The budget is for all arrays together: metadata describing many large
        grids must not allocate columns far beyond the references it holds
        (the keys of an array left out are kept individually instead).
        """
        cells = self._dense_cells
        old = self._tables.get(layout.prefix)
        if old is not None and not old.lazy:
            cells -= old.layout.size
        return cells + layout.size <= budget

    def _reindex(self) -> None:
        """Rebuild the key-head index after the set of tables changed."""
        self._heads = {(t.layout.head, t.layout.slashes): t for t in self._tables.values()}
        self._slash_counts = tuple(sorted({s for _, s in self._heads}))
        self._by_head = {}
        for t in self._tables.values():
            self._by_head.setdefault(t.layout.head, []).append(t)
        self._sorted_heads = sorted(self._by_head)
        self._dense_cells = sum(t.layout.size for t in self._tables.values() if not t.lazy)

    def _index_table(self, table: ChunkTable) -> None:
        """Add a new table (of a prefix that had none) to the indexes :meth:`_reindex` builds."""
        head, slashes = table.layout.head, table.layout.slashes
        self._heads[(head, slashes)] = table
        if slashes not in self._slash_counts:
            self._slash_counts = tuple(sorted({*self._slash_counts, slashes}))
        if head not in self._by_head:
            bisect.insort(self._sorted_heads, head)
        self._by_head.setdefault(head, []).append(table)
        if not table.lazy:
            self._dense_cells += table.layout.size

    def _layout_for(self, key: str, value: bytes) -> KeyLayout | None:
        prefix, _, name = key.rpartition("/")
        if name not in (".zarray", "zarr.json"):
            return None
        try:
            meta = ujson.loads(value)
        except ValueError:
            return None
        return layout_from_metadata(prefix, name, meta) if isinstance(meta, dict) else None

    def _locate(self, key: str) -> tuple[ChunkTable, int] | None:
        for slashes in self._slash_counts:
            parts = key.rsplit("/", slashes + 1)
            if len(parts) == slashes + 2:
                head, suffix = parts[0] + "/", key[len(parts[0]) + 1 :]
            elif len(parts) == slashes + 1:
                head, suffix = "", key  # an array at the root
            else:
                continue
            table = self._heads.get((head, slashes))
            if table is not None:
                flat = table.layout.parse(suffix)
                if flat >= 0:
                    return table, flat
        return None

    # -- lookup -------------------------------------------------------------------------

    def get(self, key: str) -> bytes | Reference | None:
        """Return the entry for *key*: inline ``bytes``, a :class:`Reference`, or None if absent."""
        data = self._inline.get(key)
        if data is not None:
            return data
        ref = self._loose.get(key)
        if ref is None:
            found = self._locate(key)
            if found is None:
                return None
            table, flat = found
            if table.lazy:  # a parquet partition table builds the entry itself (see ._lazy)
                return cast("LazyChunkTable", table).entry(flat, self)
            ref = table.lookup(flat)
            if ref is None:
                return None
        uid, offset, length = ref
        return Reference(self._urls[uid], offset, None if length == WHOLE else length)

    def __getitem__(self, key: str) -> bytes | Reference:
        entry = self.get(key)
        if entry is None:
            raise KeyNotInManifest(f"key {key!r} is not in the manifest")
        return entry

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        return len(self._inline) + len(self._loose) + sum(t.count for t in self._tables.values())

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def keys(self) -> Iterator[str]:
        """Every key, metadata and inline entries first, then chunk references."""
        yield from list(self._inline)
        yield from list(self._loose)
        for table in list(self._tables.values()):
            yield from table.iter_keys()

    def items(self) -> Iterator[tuple[str, bytes | Reference]]:
        """Every ``(key, entry)`` pair, in :meth:`keys` order."""
        for key in self.keys():
            entry = self.get(key)
            if entry is not None:
                yield key, entry

    def values(self) -> Iterator[bytes | Reference]:
        """Every entry (inline bytes or :class:`Reference`), in :meth:`keys` order."""
        for key in self.keys():
            entry = self.get(key)
            if entry is not None:
                yield entry

    def nbytes(self) -> int:
        """Approximate memory held by the reference columns (not counting metadata)."""
        return sum(t.nbytes() for t in self._tables.values())

    def load(self) -> Manifest:
        """Return a manifest holding every entry in memory.

        This one is in memory already and is returned as is; a lazily opened
        parquet manifest returns an in-memory copy, reading every partition.
        """
        return self

    # -- edits --------------------------------------------------------------------------

    def set(self, key: str, value: bytes | Reference) -> None:
        """Add or replace one entry.

        Parameters
        ----------
        key
            A relative zarr key.
        value
            Inline bytes, or a :class:`Reference`.

        Raises
        ------
        ManifestError
            If the key or the reference is malformed.
        """
        check_key(key)
        with self._lock:
            self._generation += 1
            self._discard(key)
            if isinstance(value, Reference):
                value = Reference(value.url, as_int(value.offset), as_int(value.length))
                check_span(key, value.offset, value.length)
                uid = self.url_id(value.url)
                length = WHOLE if value.length is None else value.length
                found = self._locate(key)
                if found is not None:
                    found[0].assign(found[1], uid, value.offset, length)
                else:
                    self._loose[key] = (uid, value.offset, length)
                return
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ManifestError(f"key {key!r}: value must be bytes or a Reference, got {type(value).__name__}")
            self._inline[key] = bytes(value)
            layout = self._layout_for(key, self._inline[key])
            if layout is not None:
                self._adopt(layout)

    def _adopt(self, layout: KeyLayout, budget: int | None = None) -> None:
        """Start a table for a newly described array, moving matching loose references into it.

        *budget* bounds the dense cells of all tables together (default: four
        per loose reference plus a floor); past it the array's keys stay loose.
        """
        if budget is None:
            old = self._tables.get(layout.prefix)
            moving = old.count if old is not None and old.layout != layout else 0
            budget = 4 * (len(self._loose) + moving) + CELL_FLOOR
        if not self._room_for(layout, budget) or self._clashes(layout):
            return  # a sparse grid (or one inside another's keys): keep its keys individually
        table = self._add_table(layout)
        for key in [k for k in self._loose if k.startswith(layout.head)]:
            flat = layout.parse(key[len(layout.head) :])
            if flat >= 0:
                table.assign(flat, *self._loose.pop(key))

    def _discard(self, key: str) -> bool:
        removed = self._inline.pop(key, None) is not None
        removed = (self._loose.pop(key, None) is not None) or removed
        found = self._locate(key)
        if found is not None:
            removed = found[0].remove(found[1]) or removed
        return removed

    def delete(self, key: str) -> None:
        """Remove *key*.

        Raises
        ------
        KeyNotInManifest
            If the manifest has no such key.
        """
        with self._lock:
            self._generation += 1
            if not self._discard(key):
                raise KeyNotInManifest(f"key {key!r} is not in the manifest")

    # -- listing ------------------------------------------------------------------------

    def is_dir(self, path: str) -> bool:
        """True if some key lies below *path* (``""`` is the root, which always is one).

        Unlike ``list_dir(path) != ([], [])`` this stops at the first key found,
        so for an array it reads no parquet partition when the array's metadata
        is below *path*, and at most the partitions up to the first chunk otherwise.
        """
        path = path.strip("/")
        if not path:
            return True
        base = path + "/"
        if any(k.startswith(base) for k in list(self._inline) + list(self._loose)):
            return True
        for table in list(self._tables.values()):
            head = table.layout.head
            if head.startswith(base) and (table.lazy or table.count):
                return True
            if base.startswith(head):
                files: set[str] = set()
                dirs: set[str] = set()
                self._table_children(table, base[len(head) :], files, dirs, first_only=True)
                if files or dirs:
                    return True
        return False

    def list_dir(self, path: str) -> tuple[list[str], list[str]]:
        """Return ``(files, dirs)``: the names directly under *path* (``""`` is the root).

        Both lists are sorted and hold names without the *path* prefix.
        """
        path = path.strip("/")
        base = f"{path}/" if path else ""
        files: set[str] = set()
        dirs: set[str] = set()

        def place(rest: str) -> None:
            name, slash, _ = rest.partition("/")
            (dirs if slash else files).add(name)

        for key in list(self._inline) + list(self._loose):
            if key.startswith(base):
                place(key[len(base) :])
        for table in list(self._tables.values()):
            if not table.lazy and table.count == 0:
                continue  # (a lazy table is not counted here: that would read every partition)
            head = table.layout.head
            if head.startswith(base):
                # the whole table lies below path
                rest = head[len(base) :]
                if rest:
                    place(rest + "x")
                else:
                    self._table_children(table, "", files, dirs)
            elif base.startswith(head):
                self._table_children(table, base[len(head) :], files, dirs)
        return sorted(files), sorted(dirs)

    @staticmethod
    def _table_children(
        table: ChunkTable, inner: str, files: _StrSet, dirs: _StrSet, first_only: bool = False
    ) -> None:
        """Children of ``head + inner`` inside a table's chunk keys (``inner`` ends with ``/`` or is empty).

        With *first_only*, stop after the first block that has any.
        """
        layout = table.layout
        if layout.slashes == 0:
            if inner == "":
                for block in table.present_blocks():
                    files.update(layout.suffix(int(f)) for f in block)
                    if first_only:
                        return
            return
        parts = inner.rstrip("/").split("/") if inner else []
        depth = len(parts)
        if depth > layout.slashes:
            return
        # the keys below a prefix of leading indices are one contiguous range in C order
        lead = []
        for part, n in zip(parts, layout.grid):
            if not part.isdigit() or (part[0] == "0" and len(part) > 1) or int(part) >= n:
                return
            lead.append(int(part))
        span = math.prod(layout.grid[depth:])
        lo = int(np.ravel_multi_index(lead, layout.grid[:depth])) * span if depth else 0
        names: set[int] = set()
        for block in table.present_blocks(lo, lo + span):
            names.update(np.unique(np.unravel_index(block, layout.grid)[depth]).tolist())
            if first_only:
                break
        (files if depth == layout.slashes else dirs).update(map(str, names))

    def __repr__(self) -> str:
        src = f" from {self.source!r}" if self.source else ""
        return f"<Manifest{src}: {len(self)} keys, {len(self._urls)} urls, {len(self._tables)} arrays>"

    def __reduce__(self) -> tuple[Any, ...]:
        from refstore.manifest._snapshot import reduce_manifest

        return reduce_manifest(self)

    def __getstate__(self) -> dict[str, Any]:
        state = {k: getattr(self, k) for k in ("_urls", "_inline", "_loose", "_tables", "source", "source_is_remote")}
        if self.sources:
            state["sources"] = self.sources
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self._urls = state["_urls"]
        self._inline = state["_inline"]
        self._loose = state["_loose"]
        self.source = state["source"]
        self.source_is_remote = state["source_is_remote"]
        self.sources = dict(state.get("sources") or {})
        self._tables = dict(state["_tables"])
        self._reindex()
