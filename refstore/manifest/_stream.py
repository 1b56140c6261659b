"""Streaming kerchunk JSON reader: parses ``refs`` block by block straight into chunk tables.

A kerchunk JSON of a million references parsed whole becomes a million Python
lists before a single column is filled; that costs hundreds of bytes per
reference. Here the file is read in blocks of about :data:`BLOCK` bytes. Each
block is cut at a separator between two ``refs`` entries, parsed with ujson as
a small object, and its entries are moved into the manifest's integer columns
(runs of keys in chunk order go in whole, at C speed) before the next block is
read. Peak memory is the columns plus one block's objects.

A cut is only ever accepted if ujson parses the text before it as a complete
object, so a separator-like byte sequence inside a string can never split an
entry: the parse fails and an earlier separator is tried. Anything this reader
does not expect (a ``refs`` that is not an object, no ``version``, malformed
JSON) falls back to parsing the whole document, which reports errors by key.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import ujson

from refstore.errors import ManifestError
from refstore.manifest._flat import FlatBlock, read_flat, read_pieces, without_blanks
from refstore.manifest._kerchunk import (
    META_SUFFIXES,
    _columns,
    _is_meta,
    _make_expander,
    _place,
    decode_value,
    fill_block,
    fill_cells,
    url_ids,
)
from refstore.manifest._keyparse import SHORT_RUN, Scattered, parse_keys, run_length
from refstore.manifest._keys import check_key
from refstore.manifest._model import CELL_FLOOR, check_metadata
from refstore.manifest._orphans import Orphans
from refstore.manifest._sources import SOURCES_KEY, parse_sources
from refstore.manifest._table import WHOLE
from refstore.manifest._templates import expand_gen, generated_count, render, resolve_templates

if TYPE_CHECKING:
    from refstore.manifest._model import Manifest

#: Bytes of JSON text parsed at a time.
BLOCK = 1 << 20
_WS = b" \t\r\n"
_V1_KEYS = ("version", "templates", "gen", "refs", SOURCES_KEY)
_SEPARATOR = re.compile(rb",[ \t\r\n]*\"")
_MAX_TRIES = 64
#: A metadata key's end as the flat text shows it (no backslash there, so none is escaped).
_META_ENDS = tuple(suffix.encode() + b'"' for suffix in META_SUFFIXES)


class _Fallback(Exception):
    """The document is not in the shape this reader handles; parse it whole instead."""


class _Text:
    """A window on a binary stream: ``buf[pos:]`` is the unread text."""

    def __init__(self, f: IO[bytes], block: int) -> None:
        self.f, self.block = f, block
        self.buf, self.pos, self.eof = b"", 0, False
        self.dropped = 0  # bytes of the stream before buf[0]

    def mark(self) -> int:
        """The stream offset of the unread text, for :meth:`reset` (``pos`` moves when a block is read)."""
        return self.dropped + self.pos

    def reset(self, mark: int) -> None:
        """Go back to *mark*, which must not be before the unread text of the last :meth:`more`."""
        self.pos = mark - self.dropped

    def more(self, need: int | None = None) -> bool:
        """Read another block (or at least *need* unread bytes); False at the end of the stream."""
        if self.eof:
            return False
        chunk = self.f.read(max(self.block, need or 0))
        if not chunk:
            self.eof = True
            return False
        self.dropped += self.pos
        self.buf = self.buf[self.pos :] + chunk
        self.pos = 0
        return True

    def skip_ws(self) -> None:
        while True:
            n = len(self.buf)
            if self.pos < n and self.buf[self.pos] in _WS:  # runs of blanks are skipped at C speed
                self.pos = n - len(self.buf[self.pos :].lstrip(_WS))
            if self.pos < n or not self.more():
                return

    def char(self) -> bytes:
        """The next non-blank byte (not consumed); ``b""`` at the end."""
        self.skip_ws()
        return self.buf[self.pos : self.pos + 1]

    def expect(self, ch: bytes) -> None:
        if self.char() != ch:
            raise _Fallback(f"expected {ch!r}")
        self.pos += 1

    def value(self) -> Any:
        """Parse one JSON value (a small one: ``version``, ``templates``, ``gen``, a key)."""
        self.skip_ws()
        decoder = json.JSONDecoder()
        while True:
            text = self.buf[self.pos :].decode("utf-8", "ignore")
            try:
                value, end = decoder.raw_decode(text)
            except RecursionError:  # nested too deep: the whole-document parser refuses it by name
                raise _Fallback("value nested too deep") from None
            except ValueError:
                if self.more(2 * len(self.buf)):
                    continue
                raise _Fallback("malformed value") from None
            if end < len(text) or self.eof:
                self.pos += len(text[:end].encode("utf-8"))
                return value
            if not self.more():  # a number may continue in the next block
                self.pos += len(text[:end].encode("utf-8"))
                return value


def load_json_stream(
    manifest: Manifest,
    f: IO[bytes],
    *,
    size_hint: int | None = None,
    template_overrides: Mapping[str, str] | None = None,
    block: int = BLOCK,
) -> bool:
    """Fill the empty *manifest* from the kerchunk JSON in binary stream *f*.

    Parameters
    ----------
    size_hint
        Size of the JSON text if known; bounds the chunk grids given dense columns.

    Returns
    -------
    bool
        False if the document needs the whole-document reader; *manifest* and
        *f* are then partly consumed and must be discarded.

    Raises
    ------
    ManifestError
        For a malformed entry (naming the key) or template.
    """
    text = _Text(f, block)
    try:
        text.expect(b"{")
        first = text.char()
        if first == b"}":
            return False
        save = text.mark()  # (reading the key may read another block, moving text.pos)
        key = text.value()
        if key not in _V1_KEYS:
            text.reset(save)  # version 0: the top-level object is the refs
            refs = _Refs(manifest, {}, size_hint, template_overrides, deferred=False)
            refs.read(text)
            refs.orphans.flush()
            return True
        found: dict[str, Any] = {}
        refs_reader = None
        while True:
            if key in found:
                raise _Fallback("a repeated top-level key")
            text.expect(b":")
            if key == "refs" and text.char() == b"{":
                text.pos += 1
                templates = found.get("templates")
                try:
                    refs_reader = _Refs(
                        manifest, templates, size_hint, template_overrides, deferred=templates is None
                    )
                    refs_reader.read(text)
                except ManifestError:
                    if found.get("version") != 1:  # without "version": 1 this "refs" is a version 0 key
                        raise _Fallback("refs of an unknown version") from None
                    raise
                found[key] = True
            else:
                found[key] = text.value()
            sep = text.char()
            text.pos += 1
            if sep == b"}":
                break
            if sep != b",":
                raise _Fallback("expected , or }")
            key = text.value()
            if not isinstance(key, str):
                raise _Fallback("a non-text key")
    except _Fallback:
        return False
    if found.get("version") != 1 or refs_reader is None:
        return False
    refs_reader.finish(found.get("templates") or {}, found.get("gen") or [])
    manifest.sources.update(parse_sources(found.get(SOURCES_KEY), "references"))
    return True


class _Refs:
    """Moves the entries of one ``refs`` object into a manifest, block by block."""

    def __init__(
        self,
        manifest: Manifest,
        templates: Any,
        size_hint: int | None,
        overrides: Mapping[str, str] | None,
        deferred: bool,
    ) -> None:
        if not isinstance(templates, Mapping) and templates is not None:
            raise ManifestError("version 1 references need 'templates' to be an object")
        self.manifest = manifest
        self.overrides = overrides
        self.deferred = deferred  # templates come after refs: expand URLs at the end
        self.expand = _make_expander(None if deferred else resolve_templates(templates or {}, overrides))
        # the dense cells of all arrays together: about four per possible reference
        estimate = (size_hint // 16) if size_hint else (1 << 22)
        self.limit = 4 * estimate + CELL_FLOOR
        self.orphans = Orphans(manifest)  # references read before their array's metadata
        self.seq = 0  # blocks ingested so far
        self.known_urls: dict[bytes, int] = {}  # URL as written -> id, while the table is not packing

    def read(self, text: _Text) -> None:
        """Consume entries up to and including the closing ``}`` of the object."""
        if text.char() == b"}":
            text.pos += 1
            return
        while True:
            if not text.eof and len(text.buf) - text.pos < text.block:
                text.more()
            window = memoryview(text.buf)[text.pos :]
            cut = self._parse_until_separator(window)
            if cut is not None:
                text.pos += cut + 1
                continue
            if not text.eof and text.more(2 * len(window)):
                continue
            end = self._parse_until_close(window)
            text.pos += end + 1
            return

    def _parse_until_separator(self, window: memoryview) -> int | None:
        """Parse the entries before the last separator that gives a complete object; its offset."""
        raw = bytes(window)
        cands: list[int] = []
        for tail in (1 << 12, 1 << 16, len(raw)):  # most blocks find one in the last 4 KiB
            cands = [m.start() for m in _SEPARATOR.finditer(raw, max(0, len(raw) - tail))]
            if cands or tail >= len(raw):
                break
        for cut in reversed(cands[-_MAX_TRIES:]):
            if self._ingest_flat(raw[:cut]) or self._ingest_pieces(raw[:cut]):
                return cut
            try:
                entries = ujson.loads(b"{" + raw[:cut] + b"}")
            except ValueError:
                continue
            self._ingest(entries)
            return cut
        return None

    def _parse_until_close(self, window: memoryview) -> int:
        """Parse the last entries, up to the ``}`` closing refs; return that brace's offset."""
        raw = bytes(window)
        start = 0
        for _ in range(_MAX_TRIES):
            end = raw.find(b"}", start)
            if end < 0:
                break
            try:
                entries = ujson.loads(b"{" + raw[:end] + b"}")
            except ValueError:
                start = end + 1
                continue
            self._ingest(entries)
            return end
        raise _Fallback("no end of refs")

    # -- moving entries into the manifest ---------------------------------------------------

    def _ingest_flat(self, text: bytes) -> bool:
        """Ingest *text* if it is nothing but ``"key":["url",offset,length]`` entries.

        Blanks between tokens (``json.dump``'s defaults, ``indent=2``) are removed
        first, when no string holds one.

        Such text is parsed as one flat list (``key, url, offset, length, ...``),
        which costs ujson less than a dict of lists and gives columns by slicing.
        Without a backslash a ``"`` always delimits a string, so ``":["`` occurs
        only between a key and its list, and ``],"`` only between two entries
        unless some string ends in ``],``; the counts below catch that case.

        Returns
        -------
        bool
            False (nothing ingested) if *text* has any other shape.
        """
        block = read_flat(text)
        if block is not None:
            return self._put_flat(block)
        if b"\\" in text:
            return False
        if text.count(b'":["') != text.count(b'"') // 4:  # blanks between tokens (json.dump, indent=...)
            compact = without_blanks(text)
            if compact is None:
                return False
            text = compact
        if b'":"' in text or not text.endswith(b"]"):
            return False
        n = text.count(b'":["')
        if not n or text.count(b'],"') != n - 1:
            return False
        flat_text = text.replace(b'":["', b'","').replace(b'],"', b',"')
        try:
            flat = ujson.loads(b"[" + flat_text[:-1] + b"]")
        except ValueError:
            return False
        if len(flat) != 4 * n:
            return False
        keys, urls, offs, lens = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
        if (
            set(map(type, keys)) != {str}
            or not set(map(type, urls)) <= {str, type(None)}
            or not set(map(type, offs)) | set(map(type, lens)) <= {int}
            or (any(m in text for m in _META_ENDS) and any(filter(_is_meta, keys)))
        ):
            return False  # the dict path raises for what is malformed, naming the key
        try:
            off = np.array(offs, dtype=np.int64)
            ln = np.array(lens, dtype=np.int64)
        except OverflowError:  # an offset past int64: the dict path refuses it, naming the key
            return False
        if (off < 0).any() or (ln < 0).any():
            return False
        ids = url_ids(self.manifest, self.expand, urls)
        if ids is None:
            return False
        self._put_columns(keys, ids, off, ln)
        return True

    def _ingest_pieces(self, text: bytes) -> bool:
        """Ingest a large block of flat entries with a few others among them (metadata or data
        given inline) piece by piece (see :func:`read_pieces`); False, with nothing ingested,
        if it is not such a block."""
        if len(text) < _PIECES_FROM:
            return False
        pieces = read_pieces(text)
        if pieces is None or len(pieces) < 2:
            return False
        if any(isinstance(piece, FlatBlock) and _holds_meta(piece) for piece in pieces):
            return False  # (a metadata key given as a reference: the dict path reads it)
        for piece in pieces:
            if isinstance(piece, dict):
                self._ingest(piece)
            elif not self._put_flat(piece):
                # a URL that does not expand: the whole block goes to the checked path, which raises
                # naming the key (what was put again is the same entries, in the same order)
                return False
        return True

    def _put_flat(self, block: FlatBlock) -> bool:
        """Put the entries :func:`read_flat` read; False if some key is a metadata key."""
        keys = block.keys
        if _holds_meta(block):
            return False  # (the dict path reads metadata)
        manifest, n = self.manifest, len(block.offsets)
        if block.urls is None:  # every URL null: the target
            null = url_ids(manifest, self.expand, [None])
            ids = None if null is None else np.full(n, null[0], dtype=np.int32)
        else:
            ids = self._url_ids_of(block.urls)
        if ids is None:
            return False
        cut = keys.find("\n")
        found = manifest._locate(keys if cut < 0 else keys[:cut])
        if found is not None:  # the whole block one run of the grid, compared as one text
            table, start = found
            if start + n <= table.layout.size and keys == table.layout.key_text(start, start + n):
                self.seq += 1
                table.put(start, ids, block.offsets, block.lengths)
                if self.orphans.inline_seq:
                    self.orphans.superseded(block.key_list())
                return True
        if found is None or cut < 0 or not _next_key_follows(keys, cut, *found):
            # no run of the grid at the block's start (keys in any order): parsed as one text
            self.seq += 1
            self._put_any_order(None, ids, block.offsets, block.lengths, text=keys)
            return True
        self._put_columns(block.key_list(), ids, block.offsets, block.lengths)
        return True

    def _url_ids_of(self, urls: list[bytes]) -> np.ndarray | None:
        """Manifest URL ids of UTF-8 *urls* (None: one fails to expand; the checked path raises)."""
        table, known = self.manifest._urls, self.known_urls
        if known and not table.packed:  # the URLs of earlier blocks, by their text as written
            ids = np.fromiter(map(known.get, urls, itertools.repeat(-1)), dtype=np.int32, count=len(urls))
            missing = np.flatnonzero(ids < 0)
            if not len(missing):
                return ids
            if len(missing) < len(urls):
                new_ids = self._new_url_ids([urls[i] for i in missing.tolist()])
                if new_ids is None:
                    return None
                ids[missing] = new_ids
                return ids
        return self._new_url_ids(urls)

    def _new_url_ids(self, urls: list[bytes]) -> np.ndarray | None:
        """:meth:`_url_ids_of` for URLs not looked up yet."""
        table = self.manifest._urls
        # one dict pass: each URL -> the position it first appears at, in order of appearance
        first: dict[bytes, int] = {}
        where = np.fromiter(map(first.setdefault, urls, itertools.count()), dtype=np.int64, count=len(urls))
        unique = list(first)
        if table.packed and b"{{" not in b"".join(unique):  # many URLs, no template: packed as read
            ids = table.extend_packed(unique)
        else:
            found_ids = url_ids(self.manifest, self.expand, [u.decode("utf-8") for u in unique])
            if found_ids is None:
                return None
            ids = found_ids
        if not table.packed and len(self.known_urls) + len(unique) <= _KNOWN_URLS:
            self.known_urls.update(zip(unique, ids.tolist()))
        if len(unique) == len(urls):
            return ids
        # the k-th distinct URL first appears at the k-th smallest first position
        return ids[np.searchsorted(np.fromiter(first.values(), dtype=np.int64, count=len(first)), where)]

    def _put_columns(self, keys: list[str], ids: np.ndarray, off: np.ndarray, ln: np.ndarray) -> None:
        """Put the references ``keys[j] -> (ids[j], off[j], ln[j])`` of one block."""
        self.seq += 1
        manifest = self.manifest
        i, n = 0, len(keys)
        while i < n:  # runs of keys in grid order go in whole
            found = manifest._locate(keys[i])
            if found is None:
                break
            table, start = found
            run = run_length(keys, i, table.layout, start)
            if run < SHORT_RUN:
                break
            table.put(start, ids[i : i + run], off[i : i + run], ln[i : i + run])
            if self.orphans.inline_seq:
                self.orphans.superseded(keys[i : i + run])
            i += run
        if i < n:  # the rest, in any order, parsed together
            self._put_any_order(keys[i:], ids[i:], off[i:], ln[i:])

    def _put_any_order(
        self, keys: list[str] | None, ids: np.ndarray, off: np.ndarray, ln: np.ndarray, text: str | None = None
    ) -> None:
        """Put references whose keys come in any order: each table takes its chunk keys (found
        in all of *keys* at once), and the rest wait for their array's metadata. *keys* may be
        None if *text*, the keys joined by newlines, is given (split only if some key is left)."""
        tables = [t for t in self.manifest._tables.values() if not t.lazy]
        if len(tables) > _FEW_TABLES:  # one parse per table would cost more than one per key
            self._put_one_by_one(keys if keys is not None else str(text).split("\n"), ids, off, ln)
            return
        for table in tables:
            flats = parse_keys(table.layout, keys, text)
            taken = flats >= 0
            if not taken.any():
                continue
            table.put_at(flats[taken], ids[taken], off[taken], ln[taken])
            if keys is None:
                keys, text = str(text).split("\n"), None
            if self.orphans.inline_seq:
                self.orphans.superseded([k for k, t in zip(keys, taken.tolist()) if t])
            if taken.all():
                return
            left = ~taken
            keys = [k for k, keep in zip(keys, left.tolist()) if keep]
            ids, off, ln = ids[left], off[left], ln[left]
        self.orphans.add(keys, ids, off, ln, self.seq, text=text)

    def _put_one_by_one(self, keys: list[str], ids: np.ndarray, off: np.ndarray, ln: np.ndarray) -> None:
        manifest = self.manifest
        scattered = Scattered()
        waiting: list[int] = []
        for j, key in enumerate(keys):
            found = manifest._locate(key)
            if found is None:
                waiting.append(j)
            else:
                scattered.add(found[0], found[1], j, 1)
        scattered.flush(None, lambda t, flats, at: t.put_at(np.array(flats), ids[at], off[at], ln[at]))
        if self.orphans.inline_seq:
            skip = set(waiting)
            self.orphans.superseded([k for j, k in enumerate(keys) if j not in skip])
        self.orphans.add([keys[j] for j in waiting], ids[waiting], off[waiting], ln[waiting], self.seq)

    def _ingest(self, entries: dict[str, Any]) -> None:
        self.seq += 1
        manifest = self.manifest
        keys = list(entries)
        vals = list(entries.values())
        ordered = list(filter(_is_meta, keys))  # in document order: a set's order varies by process
        metas = set(ordered)
        for key in ordered:
            check_key(key)
            value = decode_value(key, entries[key], self.expand)
            if not isinstance(value, bytes):  # a metadata document given as a reference
                _place(manifest, key, value)
                continue
            manifest._inline.pop(key, None)
            manifest._inline[key] = check_metadata(key, value)
            layout = manifest._layout_for(key, value)
            if layout is not None:
                manifest._adopt(layout, self.limit)
                table = manifest._tables.get(layout.prefix)
                if table is not None and table.layout == layout and self.orphans:
                    self.orphans.adopt(table)
        # the other entries, if all are [url, offset, length]: as columns
        rest = [k for k in keys if k not in metas] if metas else keys
        if rest:
            columns = _columns(manifest, [entries[k] for k in rest], self.expand)
            if columns is not None:
                self._put_columns(rest, *columns)
                return

        def fill_scattered(table: Any, flats: list[int], at: list[int]) -> None:
            fill_cells(manifest, table, flats, [keys[j] for j in at], [vals[j] for j in at], self.expand)

        scattered = Scattered()  # short runs (keys out of grid order), filled together per table
        waiting: tuple[list[str], list[int], list[int], list[int]] = ([], [], [], [])
        i, n = 0, len(keys)
        while i < n:
            key = keys[i]
            if key in metas:
                i += 1
                continue
            found = manifest._locate(key)
            if found is None:  # no table for it (yet): a reference waits, inline bytes go in now
                check_key(key)
                value = decode_value(key, vals[i], self.expand)
                if isinstance(value, bytes):
                    _place(manifest, key, value)
                else:
                    for column, item in zip(waiting, (key, manifest.url_id(value[0]), value[1], value[2])):
                        column.append(item)  # type: ignore[attr-defined]
                i += 1
                continue
            table, flat = found
            run = run_length(keys, i, table.layout, flat)
            block_vals = vals[i : i + run]
            if None in block_vals:  # null is no kerchunk value: raise, naming the key
                j = block_vals.index(None)
                decode_value(keys[i + j], None, self.expand)
            if run < SHORT_RUN:
                scattered.add(table, flat, i, run)
            else:
                scattered.flush(table, fill_scattered)
                fill_block(manifest, table, flat, keys[i : i + run], block_vals, self.expand)
            i += run
        scattered.flush(None, fill_scattered)
        self._note_inline(keys, vals, metas.union(waiting[0]))
        if waiting[0]:
            uids, offsets, lengths = (np.array(c, dtype=np.int64) for c in waiting[1:])
            self.orphans.add(waiting[0], uids, offsets, lengths, self.seq)

    def _note_inline(self, keys: list[str], vals: list[Any], skip: set[str]) -> None:
        """After a block went in by the checked path: which keys got inline values, and which
        references put in tables replaced inline values given in earlier blocks (*skip*:
        metadata keys, and references still waiting for their table)."""
        located: list[str] = []
        for key, value in zip(keys, vals):
            if key in skip:
                continue
            if isinstance(value, str):
                self.orphans.inline_placed(key, self.seq)
            elif self.orphans.inline_seq.get(key, self.seq) < self.seq:
                located.append(key)
        if located:
            self.orphans.superseded(located)

    def finish(self, templates: Any, gens: Any) -> None:
        """Expand deferred templates and ``gen`` once the whole document is read."""
        if not isinstance(templates, Mapping):
            raise ManifestError("version 1 references need 'templates' to be an object")
        if not isinstance(gens, list):
            raise ManifestError("'gen' must be a list of generator entries")
        self.orphans.flush()
        resolved = resolve_templates(templates, self.overrides)
        manifest = self.manifest
        if self.deferred and manifest._urls.contains("{{"):
            manifest._urls = [
                render(u, resolved, "a reference URL", expressions=False) if u and "{{" in u else u
                for u in manifest._urls
            ]
        generated = generated_count(gens)
        if generated:
            self._adopt_for(generated)
            batch: list[tuple[str, str, int | None, int | None]] = []
            for entry in expand_gen(gens, resolved):
                batch.append(entry)
                if len(batch) == _GEN_BATCH:
                    self._put_generated(batch)
                    batch = []
            self._put_generated(batch)
            self.orphans.flush()

    def _adopt_for(self, generated: int) -> None:
        """Start the tables that the dense-cell budget refused before the *generated* references of
        ``gen`` were counted (the budget follows the document's size, which ``gen`` belies)."""
        manifest = self.manifest
        for key, value in list(manifest._inline.items()):
            layout = manifest._layout_for(key, value)
            if layout is not None and layout.prefix not in manifest._tables:
                manifest._adopt(layout, self.limit + 4 * generated)

    def _put_generated(self, batch: list[tuple[str, str, int | None, int | None]]) -> None:
        """Put generated references as columns (one by one if some value is out of range, which
        then raises naming its key)."""
        if not batch:
            return
        keys, urls, offsets, lengths = (list(c) for c in zip(*batch))
        try:
            off = np.array([0 if o is None else o for o in offsets], dtype=np.int64)
            ln = np.array([WHOLE if n is None else n for n in lengths], dtype=np.int64)
            valid = not ((off < 0).any() or (ln < WHOLE).any() or ((ln == WHOLE) & (off != 0)).any())
        except (OverflowError, TypeError, ValueError):
            valid = False
        if not valid:
            self.orphans.flush()  # (what waits came earlier)
            for key, url, offset, length in batch:
                _place(self.manifest, key, (url, 0 if offset is None else offset, WHOLE if length is None else length))
            return
        self._put_columns(keys, self.manifest._urls.extend(urls), off, ln)


#: Generated references put into the tables at a time.
_GEN_BATCH = 1 << 16
#: Past this many tables, keys out of grid order are located one by one instead of per table.
_FEW_TABLES = 8
def _next_key_follows(keys: str, cut: int, table: Any, start: int) -> bool:
    """Whether the second of the newline-joined *keys* (the first ends at *cut*) is the grid key
    after the first one's (cell *start* of *table*)."""
    end = keys.find("\n", cut + 1)
    second = keys[cut + 1 : end] if end >= 0 else keys[cut + 1 :]
    layout = table.layout
    return start + 1 < layout.size and second == layout.head + layout.suffix(start + 1)


#: Blocks this large that are not flat throughout are tried piece by piece before a JSON parse.
_PIECES_FROM = 1 << 16


def _holds_meta(block: FlatBlock) -> bool:
    """Whether some key of *block* is a metadata key."""
    return any(m in block.keys for m in META_SUFFIXES) and any(filter(_is_meta, block.key_list()))

#: URLs remembered by their text as written (the table's own limit on strings: see ._urls).
_KNOWN_URLS = 1 << 16
