"""The manifest's URL table: ids for target URLs, packed into buffers when there are many.

Most manifests name a few thousand files at most, and their URLs are held as
Python strings with a dict from URL to id, so that every reference to a file
shares one id. Some name a file per chunk (image tiles, one object per chunk): a
million URLs as strings and dict entries cost about 200 bytes each beyond their
text. Once more than :data:`PACK_AFTER` URLs are added, all of them, the first
ones too, are held packed: the UTF-8 text of a run of URLs end to end in one
``bytes`` (a chunk, written once and never grown, so no buffer is copied and
left behind in the heap as a manifest grows) with an array of 4-byte end
offsets, about 4 bytes each beyond their text, decoded when asked for.

Packed URLs are not looked up by text: a URL added again gets a new id. Ids only
need to name the right URL (reads merge requests by URL text), so this costs
memory only when a manifest of many URLs names one file from many places in
different blocks, which such manifests rarely do.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from operator import methodcaller
from typing import Any, overload

import numpy as np

#: Distinct URLs held as strings (looked up by text) before all are packed.
PACK_AFTER = 1 << 16
#: URLs per packed chunk at most (and a chunk's text stays under 4 GiB, its ends being 4 bytes).
_CHUNK_URLS = 1 << 16
_CHUNK_BYTES = (1 << 32) - 1


class UrlTable(Sequence["str | None"]):
    """URL id -> URL (None: "the default target"); ids are positions, in the order added."""

    __slots__ = ("_chunks", "_count", "_ends", "_firsts", "_ids", "_nulls", "_protocols", "_strs")

    def __init__(self, urls: Iterable[str | None] = ()) -> None:
        self._strs: list[str | None] = []  # while not packing: every URL, id = position
        self._ids: dict[str | None, int] = {}  # text -> first id, for the strings only
        self._chunks: list[bytes] = []  # packing: UTF-8 text of consecutive ids, end to end
        self._ends: list[array[int]] = []  # end offset in its chunk of each id ("I": 4 bytes)
        self._firsts: list[int] = []  # the first id of each chunk
        self._count = 0  # ids packed
        self._nulls: set[int] = set()  # packed ids that are None
        self._protocols: set[str | None] = set()  # see schemes()
        self._append(list(urls))

    # -- reading --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._strs) + self._count

    @overload
    def __getitem__(self, uid: int) -> str | None: ...

    @overload
    def __getitem__(self, uid: slice) -> list[str | None]: ...

    def __getitem__(self, uid: int | slice) -> str | list[str | None] | None:
        if isinstance(uid, slice):
            return [self[i] for i in range(*uid.indices(len(self)))]
        if uid < 0:
            uid += len(self)
        if not self._count:
            if 0 <= uid < len(self._strs):
                return self._strs[uid]
        elif 0 <= uid < self._count:
            if uid in self._nulls:
                return None
            j = bisect_right(self._firsts, uid) - 1
            ends, at = self._ends[j], uid - self._firsts[j]
            return self._chunks[j][ends[at - 1] if at else 0 : ends[at]].decode("utf-8", "surrogatepass")
        raise IndexError(f"URL id {uid} is not in the table ({len(self)} URLs)")

    def __iter__(self) -> Iterator[str | None]:
        yield from self._strs
        for first, text, ends in zip(self._firsts, self._chunks, self._ends):
            start = 0
            for at, end in enumerate(ends):
                yield None if (first + at) in self._nulls else text[start:end].decode("utf-8", "surrogatepass")
                start = end

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (UrlTable, list)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<UrlTable: {len(self)} URLs, {self._count} packed>"

    @property
    def packed(self) -> int:
        """How many URLs are held packed."""
        return self._count

    def protocols(self) -> set[str]:
        """The protocols the URLs name (the text before ``://``; URLs without one are left out)."""
        return {p for p in self._protocols if p}

    def schemes(self) -> set[str | None]:
        """:meth:`protocols`, with ``""`` if some URL names none and None if some URL is None."""
        return set(self._protocols)

    def copy(self) -> UrlTable:
        """An independent table with the same ids (packed chunks are immutable, so shared)."""
        return _restore(*self.__reduce__()[1])

    def nbytes(self) -> int:
        """Approximate memory of the packed part (the strings are Python objects)."""
        return sum(map(len, self._chunks)) + 4 * self._count

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
        if self._count:  # packing: no lookup by text, only within *urls*
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
        if not self._count and len(self._strs) + len(urls) <= PACK_AFTER:
            for url in urls:
                self._ids.setdefault(url, len(self._strs))
                self._strs.append(url)
            self._protocols |= _protocols_of(urls)
            return
        if self._strs:  # packing begins: the strings so far become the first packed ids
            strs, self._strs, self._ids = self._strs, [], {}
            self._pack(strs)
        self._pack(urls)

    def extend_packed(self, urls: list[bytes]) -> np.ndarray:
        """Add the distinct UTF-8 *urls* as new packed entries (only once packing has begun, see
        :attr:`packed`); return their ids."""
        if not self._count:
            raise ValueError("the URL table is not packing yet")
        base = len(self)
        self._protocols |= _protocols_of_bytes(urls)
        self._pack_bytes(urls)
        return np.arange(base, base + len(urls), dtype=np.int32)

    def _pack(self, urls: list[str | None]) -> None:
        base = self._count
        self._protocols |= _protocols_of(urls)
        if None in urls:
            self._nulls.update(base + j for j, u in enumerate(urls) if u is None)
            urls = ["" if u is None else u for u in urls]
        for i in range(0, len(urls), _CHUNK_URLS):
            part: list[str] = urls[i : i + _CHUNK_URLS]  # type: ignore[assignment]
            text = "".join(part)
            if text.isascii():  # a character per byte: the lengths are the byte lengths
                self._add_chunk(text.encode("ascii"), np.fromiter(map(len, part), dtype=np.int64, count=len(part)))
            else:
                self._pack_bytes([u.encode("utf-8", "surrogatepass") for u in part])

    def _pack_bytes(self, texts: list[bytes]) -> None:
        for i in range(0, len(texts), _CHUNK_URLS):
            part = texts[i : i + _CHUNK_URLS]
            self._add_chunk(b"".join(part), np.fromiter(map(len, part), dtype=np.int64, count=len(part)))

    def _add_chunk(self, text: bytes, lengths: np.ndarray) -> None:
        """Append the URLs of *text*, whose byte lengths are *lengths*, as the next ids."""
        if len(text) > _CHUNK_BYTES and len(lengths) > 1:  # (URLs of over 64 KiB each): halve
            cut = len(lengths) // 2
            head = int(lengths[:cut].sum())
            self._add_chunk(text[:head], lengths[:cut])
            self._add_chunk(text[head:], lengths[cut:])
            return
        if len(text) >> 32:
            raise ValueError(f"a URL of {len(text)} bytes is too long to hold")
        ends = array("I")
        ends.frombytes(np.cumsum(lengths).astype(np.uint32).tobytes())
        self._firsts.append(self._count)
        self._chunks.append(text)
        self._ends.append(ends)
        self._count += len(lengths)

    def contains(self, text: str) -> bool:
        """Whether some URL contains *text* (a fragment that cannot span two packed URLs' joint
        is not guaranteed: callers ask for ``{{``, which a URL ends with only if malformed)."""
        raw = text.encode("utf-8")
        return any(text in u for u in self._strs if u) or any(raw in chunk for chunk in self._chunks)

    # -- pickling ---------------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        ends = [e.tobytes() for e in self._ends]
        return (_restore, (list(self._strs), list(self._chunks), ends, sorted(self._nulls)))


def _restore(strs: list[str | None], chunks: list[bytes], ends: list[bytes], nulls: list[int]) -> UrlTable:
    table = UrlTable()
    table._strs = list(strs)
    for uid, url in enumerate(table._strs):
        table._ids.setdefault(url, uid)
    for text, raw in zip(chunks, ends):
        chunk_ends = array("I")
        chunk_ends.frombytes(raw)
        table._firsts.append(table._count)
        table._chunks.append(text)
        table._ends.append(chunk_ends)
        table._count += len(chunk_ends)
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
