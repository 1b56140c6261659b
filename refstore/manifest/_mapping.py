"""A manifest seen as kerchunk's reference dict: the live ``references`` mapping.

fsspec's ``ReferenceFileSystem.references`` is the dict it reads from, and kerchunk
writes through it (``fs.references.update(refs)``, ``out=fs.references``). This view
gives the same over a :class:`Manifest`: reads return kerchunk values, writes and
deletes go into the manifest and are seen by the next read. When the manifest was
opened from a mapping that is not a plain dict (fsspec's ``LazyReferenceMapper``
writing parquet), writes also go to that mapping, so its ``flush()`` keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from refstore.errors import KeyNotInManifest
from refstore.manifest._kerchunk import _place, decode_value
from refstore.manifest._model import Manifest, Reference, is_metadata_key


def kerchunk_value(key: str, entry: bytes | Reference) -> Any:
    """An entry as kerchunk holds it: a metadata document as JSON text, other inline data
    as bytes, a reference as ``[url]`` or ``[url, offset, length]``."""
    if isinstance(entry, bytes):
        return entry.decode("utf-8", "replace") if is_metadata_key(key) else entry
    return [entry.url] if entry.length is None else [entry.url, entry.offset, entry.length]


def _no_templates(url: str, key: str) -> str:
    return url


class ReferenceMapping(MutableMapping[str, Any]):
    """The live kerchunk ``refs`` dict of a manifest.

    Parameters
    ----------
    manifest
        The manifest read and written. If it has a ``mirror`` (the caller's own
        ``LazyReferenceMapper``), every write and delete also goes there, and the
        mirror's other attributes (``flush``, ``write``, ...) are reachable here.

    Notes
    -----
    Values are read back in kerchunk's normal form (templates expanded, metadata
    as JSON text), as fsspec's class gives them after opening a version 1 file.
    Keys come metadata and inline data first, then references, array by array.
    """

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    @property
    def mirror(self) -> MutableMapping[str, Any] | None:
        """The caller's mapping that also receives every edit (``manifest.mirror``)."""
        return self.manifest.mirror

    def __getitem__(self, key: str) -> Any:
        entry = self.manifest.get(key) if isinstance(key, str) else None
        if entry is None:
            raise KeyError(key)
        return kerchunk_value(key, entry)

    def __setitem__(self, key: str, value: Any) -> None:
        """Add or replace *key*; *value* is any kerchunk value (text, ``base64:``, bytes, a
        zarr ``Buffer``, a JSON object, ``[url]`` or ``[url, offset, length]``).

        Raises
        ------
        ManifestError
            For a malformed key or value.
        """
        _place(self.manifest, key, decode_value(key, value, _no_templates))
        if self.manifest.mirror is not None:
            self.manifest.mirror[key] = value

    def __delitem__(self, key: str) -> None:
        try:
            self.manifest.delete(key)
        except KeyNotInManifest:
            raise KeyError(key) from None
        mirror = self.manifest.mirror
        if mirror is not None and key in mirror:
            del mirror[key]

    def __contains__(self, key: object) -> bool:
        return key in self.manifest

    def __iter__(self) -> Iterator[str]:
        return self.manifest.keys()

    def __len__(self) -> int:
        return len(self.manifest)

    def copy(self) -> dict[str, Any]:
        """A plain dict of every key and value (what ``dict.copy`` gives for fsspec's dict)."""
        return dict(self.items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ReferenceMapping) and other.manifest is self.manifest:
            return True
        return isinstance(other, dict) and self.copy() == other

    __hash__ = None  # type: ignore[assignment]  # mutable, like a dict

    def __getattr__(self, name: str) -> Any:
        manifest = self.__dict__.get("manifest")
        mirror = None if manifest is None else manifest.mirror
        if mirror is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(mirror, name)

    def __repr__(self) -> str:
        return f"<ReferenceMapping of {self.manifest!r}>"
