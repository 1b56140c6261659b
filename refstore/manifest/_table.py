"""Compact storage of one array's chunk references: integer columns over the chunk grid.

A chunk key such as ``temp/c/0/1/2`` or ``temp/0.1.2`` is not stored as a
string: it is the table's *head* (``temp/c/``) plus a chunk index, ravelled
over the array's chunk grid. Each chunk then costs 20 bytes (url id, offset,
length) instead of several hundred bytes of Python objects.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from refstore.errors import ManifestError

ABSENT = -1
"""``url_id`` of a chunk the table does not hold."""
WHOLE = -1
"""``length`` of a reference to a whole object."""


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """How an array spells its chunk keys.

    Attributes
    ----------
    prefix
        The array's path in the hierarchy (``""`` for a root array).
    grid
        Number of chunks along each dimension.
    v3
        True for zarr v3 default keys (``c/0/1``), False for zarr v2 keys (``0.1``).
    sep
        The dimension separator, ``"."`` or ``"/"``.
    """

    prefix: str
    grid: tuple[int, ...]
    v3: bool
    sep: str

    @property
    def size(self) -> int:
        return math.prod(self.grid)

    @property
    def head(self) -> str:
        """The fixed text before the part of a key that :meth:`parse` reads."""
        base = f"{self.prefix}/" if self.prefix else ""
        if self.v3 and self.sep == "/" and self.grid:
            return base + "c/"
        return base

    @property
    def slashes(self) -> int:
        """How many ``/`` the parsed part of a key contains."""
        return len(self.grid) - 1 if (self.sep == "/" and self.grid) else 0

    def parse(self, suffix: str) -> int:
        """Return the ravelled chunk index of *suffix*, or -1 if it is not a canonical key."""
        if not self.grid:
            return 0 if suffix == ("c" if self.v3 else "0") else -1
        if self.v3 and self.sep == ".":
            if not suffix.startswith("c."):
                return -1
            suffix = suffix[2:]
        parts = suffix.split(self.sep)
        if len(parts) != len(self.grid):
            return -1
        flat = 0
        for part, n in zip(parts, self.grid):
            if not part.isdigit() or (part[0] == "0" and len(part) > 1) or not part.isascii():
                return -1
            i = int(part)
            if i >= n:
                return -1
            flat = flat * n + i
        return flat

    def suffix(self, flat: int) -> str:
        """The key text after :attr:`head` for a ravelled chunk index."""
        if not self.grid:
            return "c" if self.v3 else "0"
        idx = []
        for n in reversed(self.grid):  # np.unravel_index, without its per-call cost
            flat, i = divmod(flat, n)
            idx.append(str(i))
        text = self.sep.join(reversed(idx))
        return "c." + text if (self.v3 and self.sep == ".") else text

    def iter_keys(self, start: int = 0, stop: int | None = None) -> Iterator[str]:
        """Every key of the grid in ravelled order, from *start* to *stop* (built at C speed).

        Starting in the middle costs nothing extra: the iteration begins at
        *start*'s chunk index instead of skipping to it.
        """
        if not self.grid:
            return iter([self.head + self.suffix(0)][start:stop])
        size = self.size
        stop = size if stop is None else min(stop, size)
        if start >= stop:
            return iter(())
        lead = "c." if (self.v3 and self.sep == ".") else ""
        parts = [_numbers(n) for n in self.grid]
        idx = [int(i) for i in np.unravel_index(start, self.grid)]
        keys = _keys_from(parts, idx, self.sep)
        return map((self.head + lead).__add__, itertools.islice(keys, stop - start))

    def key_text(self, start: int, stop: int) -> str:
        """``"\\n".join(self.iter_keys(start, stop))``, made without a string per key where the
        last dimension has many chunks (each run along it is one join of cached numbers)."""
        last = self.grid[-1] if self.grid else 0
        if last < 16 or not 0 <= start < stop <= self.size:
            return "\n".join(self.iter_keys(start, stop))
        lead = self.head + ("c." if (self.v3 and self.sep == ".") else "")
        cols = _numbers(last) if last <= 1 << 16 else None
        pieces = []
        flat = start
        while flat < stop:
            row, first = divmod(flat, last)
            end = min(last, first + stop - flat)
            prefix = lead
            if len(self.grid) > 1:
                outer = []
                for n in reversed(self.grid[:-1]):
                    row, i = divmod(row, n)
                    outer.append(str(i))
                prefix += self.sep.join(reversed(outer)) + self.sep
            numbers = cols[first:end] if cols is not None else map(str, range(first, end))
            pieces.append(prefix + ("\n" + prefix).join(numbers))
            flat += end - first
        return "\n".join(pieces)


#: Every character a chunk-key suffix can hold (digits, both separators, v3's ``c``).
_SUFFIX_CHARS = frozenset("0123456789./c")


def keys_may_overlap(a: KeyLayout, b: KeyLayout) -> bool:
    """True if some key could be a chunk key of both *a* and *b* (arrays at different paths).

    That happens only when one array lies among the chunk keys of the other
    (``a/.zarray`` with ``/`` separators and ``a/0/.zarray``), which no valid
    hierarchy has; such a manifest keeps the second array's keys individually,
    so that no key is held twice. The test is conservative: it may say True
    for layouts whose keys never actually meet.
    """
    short, long = (a, b) if len(a.head) <= len(b.head) else (b, a)
    if not long.head.startswith(short.head):
        return False
    return set(long.head[len(short.head) :]) <= _SUFFIX_CHARS


@functools.lru_cache(maxsize=64)
def _numbers(n: int) -> list[str]:
    """``["0", "1", ..., str(n - 1)]``, shared by the key generators (never mutated)."""
    return [str(i) for i in range(n)]


def _keys_from(parts: list[list[str]], idx: list[int], sep: str) -> Iterator[str]:
    """Key suffixes in C order from chunk index *idx* on, chained from C-level iterators."""
    if len(parts) == 1:
        return iter(parts[0][idx[0] :])
    head = parts[0][idx[0]] + sep
    return itertools.chain(
        map(head.__add__, _keys_from(parts[1:], idx[1:], sep)),
        map(sep.join, itertools.product(parts[0][idx[0] + 1 :], *parts[1:])),
    )


def layout_from_metadata(prefix: str, name: str, meta: Mapping[str, Any]) -> KeyLayout | None:
    """Derive the key layout of an array from its metadata document.

    Parameters
    ----------
    prefix
        The array's path.
    name
        ``".zarray"`` or ``"zarr.json"``.
    meta
        The parsed metadata.

    Returns
    -------
    KeyLayout or None
        None when the document is not a regular-grid array (a group, or a grid
        refstore does not tabulate); such arrays' keys are kept individually.

    Raises
    ------
    ManifestError
        Naming the key, for a negative shape (no array has one) or a chunk
        grid of 2**63 cells or more (chunk indices are int64).
    """
    try:
        shape = [int(s) for s in meta["shape"]]
        if name == ".zarray":
            chunks = [int(c) for c in meta["chunks"]]
            sep = meta.get("dimension_separator") or "."
            v3 = False
        else:
            if meta.get("node_type") != "array":
                return None
            grid = meta["chunk_grid"]
            if grid.get("name") != "regular":
                return None
            chunks = [int(c) for c in grid["configuration"]["chunk_shape"]]
            enc = meta.get("chunk_key_encoding") or {"name": "default"}
            v3 = enc.get("name", "default") == "default"
            sep = (enc.get("configuration") or {}).get("separator", "/" if v3 else ".")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):  # (a shape of Infinity)
        return None
    if any(n < 0 for n in shape):
        key = f"{prefix}/{name}" if prefix else name
        raise ManifestError(f"key {key!r}: an array shape cannot be negative, got {shape}")
    if len(chunks) != len(shape) or sep not in ("/", ".") or any(c <= 0 for c in chunks):
        return None
    grid_shape = tuple(-(-s // c) for s, c in zip(shape, chunks))
    if math.prod(grid_shape) >= 1 << 63:
        key = f"{prefix}/{name}" if prefix else name
        raise ManifestError(f"key {key!r}: a chunk grid of {grid_shape} has 2**63 cells or more")
    return KeyLayout(prefix, grid_shape, v3, sep)


class ChunkTable:
    """Reference columns for every chunk of one array.

    Columns are dense over the chunk grid: ``url_id`` (int32, ``ABSENT`` where
    there is no reference), ``offset`` (int64) and ``length`` (int64,
    ``WHOLE`` for a whole-object reference).
    """

    __slots__ = ("count", "layout", "length", "offset", "url_id")

    lazy: ClassVar[bool] = False
    """False: the columns are in memory (a lazy parquet table, :mod:`._lazy`, says True)."""

    def __init__(self, layout: KeyLayout) -> None:
        self.layout = layout
        n = layout.size
        self.url_id = np.full(n, ABSENT, dtype=np.int32)
        self.offset = np.zeros(n, dtype=np.int64)
        self.length = np.full(n, WHOLE, dtype=np.int64)
        self.count = 0

    def lookup(self, flat: int) -> tuple[int, int, int] | None:
        """Return ``(url_id, offset, length)`` for a chunk, or None if absent."""
        uid = int(self.url_id[flat])
        if uid == ABSENT:
            return None
        return uid, int(self.offset[flat]), int(self.length[flat])

    def shared(self) -> ChunkTable:
        """A table over the same columns, read-only until its first edit copies them (copy-on-write)."""
        table = ChunkTable.__new__(ChunkTable)
        table.layout, table.count = self.layout, self.count
        for col in ("url_id", "offset", "length"):
            view = getattr(self, col).view()
            view.flags.writeable = False
            setattr(table, col, view)
        return table

    def _own(self) -> None:
        """Copy shared columns (see :meth:`shared`) before writing to them."""
        if not self.url_id.flags.writeable:
            self.url_id, self.offset, self.length = self.url_id.copy(), self.offset.copy(), self.length.copy()

    def assign(self, flat: int, uid: int, offset: int, length: int) -> None:
        self._own()
        if self.url_id[flat] == ABSENT:
            self.count += 1
        self.url_id[flat] = uid
        self.offset[flat] = offset
        self.length[flat] = length

    def put(self, start: int, url_id: np.ndarray, offset: np.ndarray, length: np.ndarray) -> None:
        """Set the cells ``start, start + 1, ...`` from whole columns at once."""
        self._own()
        sl = slice(start, start + len(url_id))
        self.count += len(url_id) - int((self.url_id[sl] != ABSENT).sum())
        self.url_id[sl] = url_id
        self.offset[sl] = offset
        self.length[sl] = length

    def put_at(self, flats: np.ndarray, url_id: np.ndarray, offset: np.ndarray, length: np.ndarray) -> None:
        """Set the cells *flats* (in any order); a cell given twice keeps its last value, as
        assigning them one by one would."""
        if not len(flats):
            return
        self._own()
        _, first_from_end = np.unique(flats[::-1], return_index=True)
        last = len(flats) - 1 - first_from_end
        cells = flats[last]
        self.count += int((self.url_id[cells] == ABSENT).sum())
        self.url_id[cells] = url_id[last]
        self.offset[cells] = offset[last]
        self.length[cells] = length[last]

    def remove(self, flat: int) -> bool:
        if self.url_id[flat] == ABSENT:
            return False
        self._own()
        self.url_id[flat] = ABSENT
        self.count -= 1
        return True

    def present(self) -> np.ndarray:
        """Ravelled indices of the chunks that have a reference, ascending."""
        return np.flatnonzero(self.url_id != ABSENT)

    def present_blocks(self, lo: int = 0, hi: int | None = None) -> Iterator[np.ndarray]:
        """Ravelled indices in ``[lo, hi)`` that have a reference, ascending, as arrays.

        One array here; a lazy table yields one per partition, so a caller
        that consumes block by block holds one block at a time.
        """
        hi = self.layout.size if hi is None else min(hi, self.layout.size)
        if lo < hi:
            yield np.flatnonzero(self.url_id[lo:hi] != ABSENT) + lo

    def iter_keys(self) -> Iterator[str]:
        head = self.layout.head
        for flat in self.present():
            yield head + self.layout.suffix(int(flat))

    def nbytes(self) -> int:
        return self.url_id.nbytes + self.offset.nbytes + self.length.nbytes
