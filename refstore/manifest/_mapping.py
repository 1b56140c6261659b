"""A manifest seen as kerchunk's reference dict: the live ``references`` of the filesystem face.

fsspec's ``ReferenceFileSystem.references`` is the dict it reads from, and kerchunk reads
and writes through it (``fs.references.update(refs)`` in ``HDF4ToZarr``,
``out=fs.references`` in ``MultiZarrToZarr.append``, ``copy.deepcopy`` in ``subchunk``).
Two shapes are given, as fsspec gives them:

* :class:`ReferenceDict`, a real ``dict`` (kerchunk tests ``isinstance(out, dict)``) whose
  edits also go into the manifest, for manifests from a dict or a JSON file;
* :class:`ReferenceMapping`, a mapping that also writes into an fsspec
  ``LazyReferenceMapper`` (the caller's own, or one over the parquet directory the manifest
  was opened from), so that mapper's ``flush()`` writes the parquet files.

Either way an edit is seen by the next read through every face.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import ujson

from refstore.errors import KeyNotInManifest
from refstore.manifest._kerchunk import _place, decode_value, encode_inline
from refstore.manifest._model import Manifest, Reference


def kerchunk_value(entry: bytes | Reference) -> Any:
    """An entry as a kerchunk JSON file holds it: text for UTF-8 inline data, ``"base64:..."``
    for other data, ``[url]`` or ``[url, offset, length]`` for a reference."""
    if isinstance(entry, bytes):
        return encode_inline(entry)
    return [entry.url] if entry.length is None else [entry.url, entry.offset, entry.length]


def _no_templates(url: str, key: str) -> str:
    return url


def put(manifest: Manifest, key: str, value: Any) -> None:
    """Set *key* to any kerchunk value (text, ``base64:``, bytes, a zarr ``Buffer``, a JSON
    object, ``[url]`` or ``[url, offset, length]``), in the manifest and its mirror.

    Raises
    ------
    ManifestError
        For a malformed key or value.
    """
    _place(manifest, key, decode_value(key, value, _no_templates))
    mirror = writer(manifest)
    if mirror is not None:
        mirror[key] = value


def remove(manifest: Manifest, key: str) -> None:
    """Delete *key* from the manifest and its mirror.

    Raises
    ------
    KeyError
        If the manifest has no such key.
    """
    try:
        manifest.delete(key)
    except KeyNotInManifest:
        raise KeyError(key) from None
    mirror = writer(manifest)
    if mirror is not None and key in mirror:
        del mirror[key]


def writer(manifest: Manifest) -> MutableMapping[str, Any] | None:
    """The mapping that also receives the manifest's edits: its ``mirror``; for a manifest
    read lazily from a parquet directory, fsspec's ``LazyReferenceMapper`` over that
    directory (made on first use), whose ``flush()`` writes the edits there."""
    if manifest.mirror is None:
        source = getattr(manifest, "_parquet", None)
        if source is not None:
            from fsspec.implementations.reference import LazyReferenceMapper

            manifest.mirror = LazyReferenceMapper(source.root, fs=source.fs)
    return manifest.mirror


def fsspec_form(value: Any) -> Any:
    """A value as fsspec's class keeps it after opening: JSON objects as JSON text."""
    return ujson.dumps(value) if isinstance(value, dict) else value


class ReferenceDict(dict[str, Any]):
    """The manifest as a plain ``dict`` of kerchunk values whose edits also reach the manifest.

    Parameters
    ----------
    manifest
        The manifest.
    given
        The reference dict the manifest was opened from, if it has not been edited since:
        its keys, order and inline values are kept as given (fsspec keeps them), with
        JSON objects as text and template URLs expanded.

    Notes
    -----
    Reads are plain dict reads. Writes through the dict's methods (``[k] = v``, ``update``,
    ``del``, ``pop``, ``setdefault``, ``clear``) go into the manifest too. Copies
    (``copy``, ``copy.copy``, ``copy.deepcopy``, pickling) are plain dicts.
    """

    def __init__(self, manifest: Manifest, given: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.manifest = manifest
        body = given.get("refs", {}) if given is not None and given.get("version") == 1 else given
        fill = super().__setitem__
        if isinstance(body, Mapping):
            for key, raw in body.items():
                entry = manifest.get(key)
                if entry is None:
                    continue
                if isinstance(entry, bytes) and isinstance(raw, (str, bytes, dict)):
                    fill(key, fsspec_form(raw))
                else:
                    fill(key, kerchunk_value(entry))
        for key, entry in manifest.items():  # all of it, or what gen added to the given dict
            if not super().__contains__(key):
                fill(key, kerchunk_value(entry))
        self.generation = manifest._generation

    def __setitem__(self, key: str, value: Any) -> None:
        put(self.manifest, key, value)
        super().__setitem__(key, value)
        self.generation = self.manifest._generation

    def __delitem__(self, key: str) -> None:
        remove(self.manifest, key)
        super().pop(key, None)
        self.generation = self.manifest._generation

    def update(self, other: Any = (), /, **kwargs: Any) -> None:  # type: ignore[override]
        items: Iterable[tuple[str, Any]] = other.items() if isinstance(other, Mapping) else other
        for key, value in items:
            self[key] = value
        for key, value in kwargs.items():
            self[key] = value

    def __ior__(self, other: Any) -> ReferenceDict:  # type: ignore[override,misc]
        self.update(other)
        return self

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        if key in self:
            value = self[key]
            del self[key]
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def popitem(self) -> tuple[str, Any]:
        key = next(reversed(self))
        return key, self.pop(key)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def clear(self) -> None:
        for key in list(self):
            del self[key]

    def copy(self) -> dict[str, Any]:
        """A plain dict with the same items."""
        return dict(self)

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        import copy

        return copy.deepcopy(dict(self), memo)

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class ReferenceMapping(MutableMapping[str, Any]):
    """The manifest as a mapping of kerchunk values, writing through to its :func:`writer`
    (an fsspec ``LazyReferenceMapper``); the writer's own methods (``flush``, ``write``,
    ...) are reachable here, as on fsspec's ``references``."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    def __getitem__(self, key: str) -> Any:
        entry = self.manifest.get(key) if isinstance(key, str) else None
        if entry is None:
            raise KeyError(key)
        return kerchunk_value(entry)

    def __setitem__(self, key: str, value: Any) -> None:
        put(self.manifest, key, value)

    def __delitem__(self, key: str) -> None:
        remove(self.manifest, key)

    def __contains__(self, key: object) -> bool:
        return key in self.manifest

    def __iter__(self) -> Iterator[str]:
        return self.manifest.keys()

    def __len__(self) -> int:
        return len(self.manifest)

    def copy(self) -> dict[str, Any]:
        """A plain dict of every key and value."""
        return dict(self.items())

    def __getattr__(self, name: str) -> Any:
        manifest = self.__dict__.get("manifest")
        mirror = None if manifest is None or name.startswith("__") else writer(manifest)
        if mirror is None:
            raise AttributeError(name)
        return getattr(mirror, name)

    def __repr__(self) -> str:
        return f"<ReferenceMapping of {self.manifest!r}>"


def references_of(manifest: Manifest, given: Mapping[str, Any] | None, cached: Any) -> Any:
    """What ``fs.references`` is for *manifest*: a :class:`ReferenceMapping` if edits also go to
    a ``LazyReferenceMapper``, else a :class:`ReferenceDict` (*cached* while the manifest has not
    been edited past it; *given*, the dict the manifest came from, while it is unedited)."""
    if manifest.mirror is not None or getattr(manifest, "_parquet", None) is not None:
        return ReferenceMapping(manifest)
    if isinstance(cached, ReferenceDict) and cached.generation == manifest._generation:
        return cached
    return ReferenceDict(manifest, given)
