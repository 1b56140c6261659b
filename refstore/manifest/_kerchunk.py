"""Kerchunk reference dicts (spec versions 0 and 1) to and from :class:`Manifest`.

Reading is columnar: for each array described by metadata in the reference
set, the expected chunk keys are generated in blocks, looked up in the dict,
and whole blocks of ``[url, offset, length]`` lists are turned into integer
columns at C speed. Entries that fit no array grid are kept individually.
"""

from __future__ import annotations

import base64
import binascii
import operator
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import ujson

from refstore.errors import ManifestError
from refstore.manifest._keys import check_key
from refstore.manifest._model import CELL_FLOOR, as_int, check_metadata, check_span
from refstore.manifest._sources import SOURCES_KEY, parse_sources
from refstore.manifest._table import WHOLE, ChunkTable
from refstore.manifest._templates import expand_gen, render, resolve_templates

if TYPE_CHECKING:
    from refstore.manifest._model import Manifest

_BLOCK = 1 << 16
_FIRST, _SECOND, _THIRD = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)
#: Key endings of metadata documents, which are always inline JSON.
META_SUFFIXES = (".zarray", ".zgroup", ".zattrs", ".zmetadata", "zarr.json")
_is_meta = operator.methodcaller("endswith", META_SUFFIXES)  # filter() with it runs in C


#: Values a JSON document can hold; only other objects may be buffers (``int`` has a ``to_bytes`` too).
_JSON_TYPES = (str, bytes, bytearray, int, float, list, tuple, dict, type(None))


def decode_value(key: str, value: Any, expand: Any) -> bytes | tuple[str | None, int, int]:
    """Interpret one kerchunk value.

    Returns
    -------
    bytes or tuple
        Inline bytes, or ``(url, offset, length)`` with ``length == WHOLE`` for
        a whole-object reference.

    Raises
    ------
    ManifestError
        Naming *key*, when the value has an unsupported shape or type.
    """
    if not isinstance(value, _JSON_TYPES) and callable(getattr(value, "to_bytes", None)):
        value = value.to_bytes()  # a zarr Buffer, as zarr writes through a mapper (an int is no Buffer)
    if isinstance(value, (str, bytes, bytearray)):
        # kerchunk's inline form: text, or "base64:..." as str or bytes (do_inline writes bytes)
        prefix = "base64:" if isinstance(value, str) else b"base64:"
        if value.startswith(prefix):  # type: ignore[arg-type]
            try:
                return base64.b64decode(value[7:], validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ManifestError(f"key {key!r}: invalid base64 data ({exc})") from None
        return value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if isinstance(value, dict):
        try:
            return ujson.dumps(value).encode()
        except (OverflowError, RecursionError, TypeError, ValueError) as exc:  # too deep, or not JSON
            raise ManifestError(f"key {key!r}: the metadata object cannot be written as JSON ({exc})") from None
    if isinstance(value, (list, tuple)):
        if len(value) not in (1, 3):
            raise ManifestError(
                f"key {key!r}: a reference is [url] or [url, offset, length], got {len(value)} items"
            )
        url = value[0]
        if url is not None and not isinstance(url, str):
            raise ManifestError(f"key {key!r}: url must be text or null, got {type(url).__name__}")
        if url is not None:
            url = expand(url, key)
        if len(value) == 1:
            return (url, 0, WHOLE)
        offset, length = as_int(value[1]), as_int(value[2])
        check_span(key, offset, length)
        return (url, offset, length)
    raise ManifestError(
        f"key {key!r}: unsupported value of type {type(value).__name__}; expected text, "
        "base64:, a JSON object, [url] or [url, offset, length]"
    )


#: Raw URLs whose expansion (and id) is remembered while reading a manifest.
_CACHED_URLS = 1 << 16


class _Expander:
    """Expands v1 templates in reference URLs (``expand(url, key)``).

    ``ids`` remembers the manifest URL id of each raw URL seen, so a block of
    references to known files needs no expansion at all.
    """

    def __init__(self, templates: Mapping[str, str] | None) -> None:
        self.templates = templates
        self.cache: dict[str, str] = {}
        self.ids: dict[str | None, int] = {}

    def __call__(self, url: str, key: str) -> str:
        if self.templates is None or "{{" not in url:
            return url
        out = self.cache.get(url)
        if out is None:
            out = render(url, self.templates, f"key {key!r}", expressions=False)
            if len(self.cache) < _CACHED_URLS:  # (a URL per chunk would fill it with every URL)
                self.cache[url] = out
        return out


    def many(self, urls: list[str | None]) -> list[str | None]:
        """``expand`` of each URL (None stays None)."""
        if self.templates is None or "{{" not in "\n".join(filter(None, urls)):
            return urls
        return [None if url is None else self(url, "?") for url in urls]


def _make_expander(templates: Mapping[str, str] | None) -> _Expander:
    """An expander for *templates*; None leaves URLs as written (templates resolved later)."""
    return _Expander(templates)


def ingest(
    manifest: Manifest, refs: Mapping[str, Any], template_overrides: Mapping[str, str] | None
) -> None:
    """Load a kerchunk reference dict into an empty *manifest*.

    Raises
    ------
    ManifestError
        For an unknown version or a malformed entry (the message names the key).
    """
    if not isinstance(refs, Mapping):
        raise ManifestError(f"references must be a mapping, got {type(refs).__name__}")
    version = refs.get("version")
    if version is None:
        body: Mapping[str, Any] = refs
        templates: dict[str, str] = resolve_templates({}, template_overrides)
        gens: list[Any] = []
    elif version == 1:
        body = refs.get("refs") or {}
        raw_templates = refs.get("templates") or {}
        if not isinstance(body, Mapping) or not isinstance(raw_templates, Mapping):
            raise ManifestError("version 1 references need 'refs' and 'templates' to be objects")
        templates = resolve_templates(raw_templates, template_overrides)
        gens = refs.get("gen") or []
        if not isinstance(gens, list):
            raise ManifestError("'gen' must be a list of generator entries")
    else:
        raise ManifestError(f"unknown reference spec version {version!r}; refstore reads 0 and 1")

    expand = _make_expander(templates)
    for key in body:
        if not isinstance(key, str):
            check_key(key)  # raises, naming it
    meta_keys = list(filter(_is_meta, body))
    for key in meta_keys:
        # a metadata document given as a reference (kerchunk's single_zarr writes them) is read
        # like any other reference; its array's chunk keys are then kept individually
        _place(manifest, key, _checked_meta(key, decode_value(key, body[key], expand)))

    placed = len(meta_keys)
    # tabulate the described arrays unless their columns together would dwarf the references
    limit = 4 * len(body) + CELL_FLOOR
    for key in meta_keys:
        if key not in manifest._inline:
            continue
        layout = manifest._layout_for(key, manifest._inline[key])
        if (
            layout is not None
            and layout.prefix not in manifest._tables
            and manifest._room_for(layout, limit)
            and not manifest._clashes(layout)  # two tables holding one key would count it twice
        ):
            manifest._add_table(layout)
    for table in list(manifest._tables.values()):
        placed += _fill_table(manifest, table, body, expand)

    if placed < len(body):
        meta = set(meta_keys)
        for key, value in body.items():
            if key in meta:
                continue
            if not isinstance(key, str):
                raise ManifestError(f"manifest key {key!r} is not text")
            if manifest._locate(key) is not None and key in manifest:
                continue
            _place(manifest, key, decode_value(key, value, expand))

    for key, url, offset, length in expand_gen(gens, templates):
        _place(manifest, key, (url, offset if offset is not None else 0, WHOLE if length is None else length))
    if version == 1:
        manifest.sources.update(parse_sources(refs.get(SOURCES_KEY), "references"))


def _checked_meta(key: str, entry: bytes | tuple[str | None, int, int]) -> bytes | tuple[str | None, int, int]:
    """A metadata entry: inline bytes must be a JSON object; a reference is taken as is."""
    return check_metadata(key, entry) if isinstance(entry, bytes) else entry


def _place(manifest: Manifest, key: str, entry: bytes | tuple[str | None, int, int]) -> None:
    from refstore.manifest._model import Reference

    if isinstance(entry, bytes):
        manifest.set(key, entry)
    else:
        url, offset, length = entry
        manifest.set(key, Reference(url, offset, None if length == WHOLE else length))


def _fill_table(manifest: Manifest, table: ChunkTable, body: Mapping[str, Any], expand: Any) -> int:
    """Move every reference of *table*'s grid from *body* into the table; return how many."""
    layout = table.layout
    placed = 0
    get = body.get
    for start in range(0, layout.size, _BLOCK):
        keys = list(layout.iter_keys(start, start + _BLOCK))
        placed += fill_block(manifest, table, start, keys, list(map(get, keys)), expand)
    return placed


def fill_block(
    manifest: Manifest, table: ChunkTable, start: int, keys: list[str], vals: list[Any], expand: Any
) -> int:
    """Put the values of consecutive grid cells ``start, start + 1, ...`` into *table*.

    ``vals[j]`` is the kerchunk value of ``keys[j]`` (None: absent). Inline
    values go to the manifest's inline entries. Returns how many were placed.

    Raises
    ------
    ManifestError
        Naming the key, for a malformed value.
    """
    columns = _columns(manifest, vals, expand)
    if columns is not None:
        table.put(start, *columns)
        return len(vals)
    return _fill_checked(manifest, table, range(start, start + len(vals)), keys, vals, expand)


def fill_cells(
    manifest: Manifest, table: ChunkTable, flats: list[int], keys: list[str], vals: list[Any], expand: Any
) -> int:
    """:func:`fill_block` for cells in any order: ``vals[j]`` is the value of cell ``flats[j]``."""
    columns = _columns(manifest, vals, expand)
    if columns is not None:
        table.put_at(np.array(flats, dtype=np.int64), *columns)
        return len(vals)
    return _fill_checked(manifest, table, flats, keys, vals, expand)


def _fill_checked(
    manifest: Manifest, table: ChunkTable, flats: Sequence[int], keys: list[str], vals: list[Any], expand: Any
) -> int:
    placed = 0
    for j, value in enumerate(vals):
        if value is None:
            continue
        entry = decode_value(keys[j], value, expand)
        if isinstance(entry, bytes):
            manifest._inline[keys[j]] = entry
            table.remove(flats[j])  # a reference given earlier for the key
        else:
            table.assign(flats[j], manifest.url_id(entry[0]), entry[1], entry[2])
        placed += 1
    return placed


def url_ids(manifest: Manifest, expand: Any, urls: list[Any]) -> np.ndarray | None:
    """Manifest URL ids (int32) for raw reference *urls*, expanding each new one once.

    The ids of raw URLs are remembered on *expand* (an :class:`_Expander`).
    Returns None if a URL is not text or null, or fails to expand; the checked
    path then raises, naming the key.
    """
    if manifest._urls.packed and isinstance(expand, _Expander):  # many URLs (see ._urls)
        if not set(map(type, urls)) <= {str, type(None)}:
            return None
        try:
            return manifest._urls.extend(expand.many(urls))
        except ManifestError:
            return None
    known: dict[str | None, int] | None = getattr(expand, "ids", None)
    if known is None:
        known = {}
    try:
        # not ``keys() - known.keys()``: that walks all of *known* (every URL so far) per block
        new = [url for url in dict.fromkeys(urls) if url not in known]
    except TypeError:  # an unhashable URL
        return None
    if not set(map(type, new)) <= {str, type(None)}:
        return None
    try:
        expanded = expand.many(new) if isinstance(expand, _Expander) else [
            None if url is None else expand(url, "?") for url in new
        ]
    except ManifestError:
        return None
    known.update(zip(new, manifest._urls.extend(expanded).tolist()))
    ids = np.fromiter(map(known.__getitem__, urls), dtype=np.int32, count=len(urls))
    if manifest._urls.packed:
        known.clear()  # packing: from now on URLs are not looked up by text (see ._urls), so let go
    return ids


def _columns(manifest: Manifest, vals: list[Any], expand: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """URL ids, offsets and lengths of values that are all ``[url, offset, length]`` lists;
    None sends them to the checked path (which raises, naming the key, for what is malformed)."""
    if set(map(type, vals)) != {list} or set(map(len, vals)) != {3}:
        return None
    n = len(vals)
    urls = list(map(_FIRST, vals))
    uid = url_ids(manifest, expand, urls)
    if uid is None:
        return None
    try:
        off = np.fromiter(map(_SECOND, vals), dtype=np.int64, count=n)
        ln = np.fromiter(map(_THIRD, vals), dtype=np.int64, count=n)
    except (TypeError, ValueError, OverflowError):
        return None
    if (off < 0).any() or (ln < 0).any():
        return None
    # fromiter also accepts floats and bools; let the checked path refuse them
    if not (set(map(type, map(_SECOND, vals))) | set(map(type, map(_THIRD, vals)))) <= {int}:
        return None
    return uid, off, ln


def encode_inline(data: bytes) -> str:
    """Kerchunk's text form of inline bytes: UTF-8 text where possible, else ``base64:``."""
    if not data.startswith(b"base64:"):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return "base64:" + base64.b64encode(data).decode("ascii")


def to_refs(manifest: Manifest) -> dict[str, Any]:
    """Return the manifest's entries as a kerchunk ``refs`` dict."""
    out: dict[str, Any] = {key: encode_inline(v) for key, v in manifest._inline.items()}
    urls = manifest._urls
    for key, (uid, offset, length) in manifest._loose.items():
        out[key] = [urls[uid]] if length == WHOLE else [urls[uid], offset, length]
    for table in manifest._tables.values():
        present = table.present()
        uids = table.url_id[present].tolist()
        offs = table.offset[present].tolist()
        lens = table.length[present].tolist()
        head, suffix = table.layout.head, table.layout.suffix
        for flat, uid, off, ln in zip(present.tolist(), uids, offs, lens):
            out[head + suffix(flat)] = [urls[uid]] if ln == WHOLE else [urls[uid], off, ln]
    return out
