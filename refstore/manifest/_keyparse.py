"""Parsing many chunk keys at once: the ravelled chunk index of each, at C speed.

:meth:`KeyLayout.parse` reads one key in about a microsecond of Python. A manifest
whose keys arrive out of grid order (shuffled, or before their array's metadata)
needs a million of those. Here the keys are joined into one text and checked as
a whole with bytes methods and numpy: the head, only digits and separators,
exactly one separator fewer than the grid has dimensions on every line, no empty
index, no leading zero; then every index is read by one ``numpy.fromstring`` and
checked against the grid. Every key gets the answer :meth:`KeyLayout.parse` gives.
A text failing a check goes key by key through :meth:`KeyLayout.parse` itself.

Also here: :func:`run_length` (how many keys of a block follow the grid in order) and
:class:`Scattered` (short runs gathered per table), which the streaming reader uses.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from refstore.manifest._table import KeyLayout

#: Largest grid extent read here: its indices are parsed exactly as int64.
_MAX_EXTENT = 10**15


def parse_keys(layout: KeyLayout, keys: list[str] | None, text: str | None = None) -> np.ndarray:
    """The ravelled chunk index of each key in *layout*'s grid, or -1 where it is none.

    Parameters
    ----------
    keys
        The keys; may be None if *text* is given.
    text
        The keys joined by newlines, if the caller has that text (no key may hold a newline).

    Returns
    -------
    numpy.ndarray
        int64, one per key: ``layout.parse(key[len(layout.head):])`` for a key
        starting with ``layout.head``, and -1 for any other key.
    """
    if text is None:
        if keys is None:
            raise TypeError("parse_keys needs the keys or their text")
        n = len(keys)
        text = "\n".join(keys)
        if n and text.count("\n") != n - 1:  # a key holding a newline
            return _one_by_one(layout, keys)
    else:
        n = text.count("\n") + 1
    if not n:
        return np.empty(0, dtype=np.int64)
    if not layout.grid or max(layout.grid) >= _MAX_EXTENT:
        return _one_by_one(layout, keys if keys is not None else text.split("\n"))
    lead = layout.head + ("c." if (layout.v3 and layout.sep == ".") else "")
    if text.startswith(lead) and text.count("\n" + lead) == n - 1:
        body = text[len(lead) :].replace("\n" + lead, "\n") if lead else text
        out = _parse_suffixes(layout, body, n)
        return out if out is not None else _one_by_one(layout, keys if keys is not None else text.split("\n"))
    # keys of several arrays: parse those with this array's head
    if keys is None:
        keys = text.split("\n")
    picked = [i for i, key in enumerate(keys) if key.startswith(lead)]
    out = np.full(n, -1, dtype=np.int64)
    if picked:
        out[picked] = parse_keys(layout, [keys[i] for i in picked])
    return out


def _one_by_one(layout: KeyLayout, keys: list[str]) -> np.ndarray:
    head, cut = layout.head, len(layout.head)
    return np.array([layout.parse(k[cut:]) if k.startswith(head) else -1 for k in keys], dtype=np.int64)


def _parse_suffixes(layout: KeyLayout, body: str, n: int) -> np.ndarray | None:
    """Chunk indices of the *n* newline-separated key suffixes in *body*; None unless every
    line is canonical (only digits, ``ndim - 1`` separators, no empty index, no leading zero)."""
    try:
        data = body.encode("ascii")
    except UnicodeEncodeError:
        return None
    grid = np.array(layout.grid, dtype=np.int64)
    ndim = len(grid)
    sep = layout.sep.encode("ascii")
    if data.translate(None, b"0123456789\n" + sep):
        return None
    lines = data.replace(sep, b"\n")  # one index per line
    if not lines or lines[:1] == b"\n" or lines[-1:] == b"\n" or b"\n\n" in lines:
        return None  # an empty index
    if ndim > 1:  # the separators and newlines in order: (ndim - 1) separators, then a newline
        raw = np.frombuffer(data + b"\n", dtype=np.uint8)
        delims = raw[(raw == sep[0]) | (raw == 10)]
        if len(delims) != n * ndim:
            return None
        pattern = np.full(ndim, sep[0], dtype=np.uint8)
        pattern[-1] = 10
        if not (delims.reshape(n, ndim) == pattern).all():
            return None
    elif sep in data:
        return None
    index = np.frombuffer(lines + b"\n", dtype=np.uint8)
    ends = np.flatnonzero(index == 10)
    starts = np.empty(len(ends), dtype=np.int64)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    if int(np.max(ends - starts)) > len(str(max(layout.grid))):
        return None  # an index too long for the grid (and for int64)
    if ((index[starts] == 48) & (ends - starts > 1)).any():
        return None  # a leading zero
    values = np.fromstring(lines, dtype=np.int64, sep="\n")  # text mode: not deprecated
    if len(values) != n * ndim:
        return None
    idx = values.reshape(n, ndim)
    strides = np.ones(ndim, dtype=np.int64)
    strides[:-1] = np.cumprod(grid[::-1])[::-1][1:]
    return np.where((idx < grid).all(axis=1), idx @ strides, -1)


#: Runs of keys in grid order shorter than this are gathered and put per table at once.
SHORT_RUN = 16


class Scattered:
    """Short runs of chunk keys waiting to be put, per table, with the cells and key positions.

    Keys written out of grid order (shuffled, or sorted as text: ``10`` before ``2``)
    arrive a few at a time; putting each run on its own costs a table write per key.
    A table's waiting cells are put before a longer run writes to that table, so a
    key given twice keeps its last value.
    """

    def __init__(self) -> None:
        self.tables: dict[int, tuple[Any, list[int], list[int]]] = {}

    def add(self, table: Any, flat: int, i: int, run: int) -> None:
        """Cells ``flat ...`` hold the values of keys ``i ...`` (*run* of them)."""
        _, flats, at = self.tables.setdefault(id(table), (table, [], []))
        flats.extend(range(flat, flat + run))
        at.extend(range(i, i + run))

    def flush(self, table: Any, put: Any) -> None:
        """``put(table, flats, positions)`` what waits for *table* (every table if None)."""
        for key in [id(table)] if table is not None else list(self.tables):
            waiting = self.tables.pop(key, None)
            if waiting is not None:
                put(*waiting)


def run_length(keys: list[str], i: int, layout: Any, flat: int) -> int:
    """How many of ``keys[i:]`` are the chunk keys of *layout* from *flat* on, in order."""
    n = min(len(keys) - i, layout.size - flat)
    if n < 2 or keys[i + 1] != layout.head + layout.suffix(flat + 1):
        return 1  # keys out of grid order: one generated key each, not a block of them
    run, step = 2, 8
    while run < n:
        m = min(run + step, n)
        expected = list(layout.iter_keys(flat + run, flat + m))
        got = keys[i + run : i + m]
        if got == expected:
            run = m
            step *= 2
            continue
        # the first mismatch: bisect with slice comparisons (each runs in C)
        lo, hi = 0, len(got)
        while lo < hi:
            mid = (lo + hi) // 2
            if got[: mid + 1] == expected[: mid + 1]:
                lo = mid + 1
            else:
                hi = mid
        return run + lo
    return run
