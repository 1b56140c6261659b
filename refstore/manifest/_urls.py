"""The manifest's URL table: ids for target URLs, packed into one buffer when there are many.

Most manifests name a few thousand files at most, and their URLs are held as
Python strings with a dict from URL to id, so that every reference to a file
shares one id. Some name a file per chunk (image tiles, one object per chunk): a
million URLs as strings and dict entries cost about 200 bytes each beyond their
text. Past :data:`PACK_AFTER` URLs, new ones are appended as UTF-8 to one
buffer with an array of end offsets, about 8 bytes each beyond their text, and
decoded when asked for.

Packed URLs are not looked up by text: a URL added again after that point gets a
new id. Ids only need to name the right URL (reads merge requests by URL text),
so this costs memory only when a manifest names one file from many places after
its first :data:`PACK_AFTER` distinct URLs, which manifests with many URLs
rarely do.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from operator import methodcaller
from typing import Any, overload

import numpy as np

#: Distinct URLs held as strings (looked up by text) before new ones are packed.
PACK_AFTER = 1 << 16


class UrlTable(Sequence["str | None"]):
    """URL id -> URL (None: "the default target"); ids are positions, in the order added."""

    __slots__ = ("_blob", "_ends", "_ids", "_nulls", "_protocols", "_strs")

    def __init__(self, urls: Iterable[str | None] = ()) -> None:
        self._strs: list[str | None] = []  # ids [0, len(_strs))
        self._ids: dict[str | None, int] = {}  # text -> first id, for the strings only
        self._blob = bytearray()  # ids from len(_strs) on: UTF-8 text, end to end
        self._ends = array("q")  # end offset in _blob of each packed URL
        self._nulls: set[int] = set()  # packed ids that are None
        self._protocols: set[str | None] = set()  # see schemes()
        self._append(list(urls))

    # -- reading --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._strs) + len(self._ends)

    @overload
    def __getitem__(self, uid: int) -> str | None: ...

    @overload
    def __getitem__(self, uid: slice) -> list[str | None]: ...

    def __getitem__(self, uid: int | slice) -> str | list[str | None] | None:
        if isinstance(uid, slice):
            return [self[i] for i in range(*uid.indices(len(self)))]
        n = len(self._strs)
        if uid < 0:
            uid += len(self)
        if 0 <= uid < n:
            return self._strs[uid]
        j = uid - n
        if not 0 <= j < len(self._ends):
            raise IndexError(f"URL id {uid} is not in the table ({len(self)} URLs)")
        if uid in self._nulls:
            return None
        return self._blob[self._ends[j - 1] if j else 0 : self._ends[j]].decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str | None]:
        yield from self._strs
        n = len(self._strs)
        start = 0
        for j, end in enumerate(self._ends):
            yield None if (n + j) in self._nulls else self._blob[start:end].decode("utf-8", "surrogatepass")
            start = end

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (UrlTable, list)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<UrlTable: {len(self)} URLs, {len(self._ends)} packed>"

    @property
    def packed(self) -> int:
        """How many URLs are held packed."""
        return len(self._ends)

    def protocols(self) -> set[str]:
        """The protocols the URLs name (the text before ``://``; URLs without one are left out)."""
        return {p for p in self._protocols if p}

    def schemes(self) -> set[str | None]:
        """:meth:`protocols`, with ``""`` if some URL names none and None if some URL is None."""
        return set(self._protocols)

    def copy(self) -> UrlTable:
        """An independent table with the same ids."""
        return _restore(self._strs, bytes(self._blob), self._ends.tobytes(), sorted(self._nulls))

    def nbytes(self) -> int:
        """Approximate memory of the packed part (the strings are Python objects)."""
        return len(self._blob) + self._ends.itemsize * len(self._ends)

    # -- adding ---------------------------------------------------------------------------

    def id_of(self, url: str | None) -> int:
        """The id of *url*, adding it if it is new (or packed: see the module's docstring)."""
        uid = self._ids.get(url)
        if uid is not None:
            return uid
        return int(self.extend([url])[0])

    def extend(self, urls: list[str | None]) -> np.ndarray:
        """Add *urls* in order, each as a new entry unless it is held as a string already; return
        the id of each (int32; a URL given twice in *urls* gets one id)."""
        ids = np.empty(len(urls), dtype=np.int32)
        if not urls:
            return ids
        base = len(self)
        if self._ends:  # packing: no lookup by text, only within *urls*
            new = list(dict.fromkeys(urls))
            if len(new) == len(urls):
                ids[:] = np.arange(base, base + len(urls))
            else:
                fresh = dict(zip(new, range(base, base + len(new))))
                ids[:] = np.fromiter(map(fresh.__getitem__, urls), dtype=np.int64, count=len(urls))
        else:
            known = self._ids
            new = [url for url in dict.fromkeys(urls) if url not in known]
            fresh = dict(zip(new, range(base, base + len(new))))
            ids[:] = np.fromiter(map(fresh.get, urls, map(known.get, urls)), dtype=np.int64, count=len(urls))
        self._append(new)
        return ids

    def _append(self, urls: list[str | None]) -> None:
        """Add *urls* in order, one entry each (ids: the next positions)."""
        room = max(0, PACK_AFTER - len(self._strs)) if not self._ends else 0
        for url in urls[:room]:
            self._ids.setdefault(url, len(self._strs))
            self._strs.append(url)
        self._protocols |= _protocols_of(urls[:room])
        if len(urls) > room:
            self._pack(urls[room:])

    def extend_packed(self, urls: list[bytes]) -> np.ndarray:
        """Add the distinct UTF-8 *urls* as new packed entries (only once packing has begun, see
        :attr:`packed`); return their ids."""
        if not self._ends:
            raise ValueError("the URL table is not packing yet")
        base = len(self)
        self._protocols |= _protocols_of_bytes(urls)
        self._pack_bytes(urls)
        return np.arange(base, base + len(urls), dtype=np.int32)

    def _pack(self, urls: list[str | None]) -> None:
        base = len(self)
        self._protocols |= _protocols_of(urls)
        nulls = [j for j, u in enumerate(urls) if u is None] if None in urls else []
        if nulls:
            self._nulls.update(base + j for j in nulls)
            urls = ["" if u is None else u for u in urls]
        text = "".join(urls)  # type: ignore[arg-type]
        if text.isascii():  # a character per byte: the lengths are the byte lengths
            start = len(self._blob)
            self._blob += text.encode("ascii")
            lengths = np.fromiter(map(len, urls), dtype=np.int64, count=len(urls))  # type: ignore[arg-type]
            self._ends.frombytes((np.cumsum(lengths) + start).tobytes())
        else:
            self._pack_bytes([u.encode("utf-8", "surrogatepass") for u in urls])  # type: ignore[union-attr]

    def _pack_bytes(self, texts: list[bytes]) -> None:
        start = len(self._blob)
        self._blob += b"".join(texts)
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        self._ends.frombytes((np.cumsum(lengths) + start).tobytes())

    def contains(self, text: str) -> bool:
        """Whether some URL contains *text* (a fragment that cannot span two packed URLs' joint
        is not guaranteed: callers ask for ``{{``, which a URL ends with only if malformed)."""
        return any(text in u for u in self._strs if u) or text.encode("utf-8") in self._blob

    # -- pickling ---------------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self._strs, bytes(self._blob), self._ends.tobytes(), sorted(self._nulls)))


def _restore(strs: list[str | None], blob: bytes, ends: bytes, nulls: list[int]) -> UrlTable:
    table = UrlTable()
    table._strs = list(strs)
    for uid, url in enumerate(table._strs):
        table._ids.setdefault(url, uid)
    table._blob = bytearray(blob)
    table._ends.frombytes(ends)
    table._nulls = set(nulls)
    table._protocols = _protocols_of(table)
    return table


def _protocols_of(urls: Iterable[str | None]) -> set[str | None]:
    """The text before ``://`` of each URL, ``""`` for one naming no protocol, None for None (at
    C speed when all share one protocol)."""
    texts = list(urls)
    found: set[str | None] = set()
    if None in texts:
        found.add(None)
        texts = [u for u in texts if u is not None]
    if not texts:
        return found
    head, sep, _ = texts[0].partition("://")  # type: ignore[union-attr]
    if sep and all(map(str.startswith, texts, repeat(head + sep))):  # type: ignore[arg-type]
        return found | {head}
    return found | {head if sep else "" for head, sep, _ in map(methodcaller("partition", "://"), texts)}


def _protocols_of_bytes(urls: list[bytes]) -> set[str | None]:
    head, sep, _ = urls[0].partition(b"://") if urls else (b"", b"", b"")
    if sep:  # all of one protocol? (counted in one joined text: no URL holds a newline)
        lead = b"\n" + head + sep
        text = b"\n".join([b"", *urls])
        if text.count(lead) == len(urls) and text.count(b"\n") == len(urls):
            return {head.decode("utf-8")}
    return _protocols_of(u.decode("utf-8", "surrogatepass") for u in urls)


def as_table(urls: Sequence[str | None] | UrlTable) -> UrlTable:
    """*urls* as a :class:`UrlTable` (a table is returned as is)."""
    return urls if isinstance(urls, UrlTable) else UrlTable(urls)
