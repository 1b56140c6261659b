"""What each source looked like when the manifest was made (size, ETag, modification time, SHA-256).

A manifest keeps one :class:`SourceIdentity` per target URL in
:attr:`~refstore.manifest.Manifest.sources`. Kerchunk JSON (version 1) carries
them in a top-level ``"refstore:sources"`` object, and a parquet manifest in
the same key of its ``.zmetadata``; fsspec's reader ignores both places
(``spec/manifest.md``). The readers verify them (:mod:`refstore.fetch._identity`); the identity
type itself lives in the leaf module :mod:`refstore._source_identity`, which both layers import.
This module knows nothing of fetching.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from refstore._source_identity import (
    SOURCES_KEY,
    SourceIdentity,
    etags_match,
    format_mtime,
    identity_from_info,
    local_identity,
    mtime_from_ns,
    parse_mtime,
    same_mtime,
)
from refstore.errors import ManifestError

if TYPE_CHECKING:
    from refstore.manifest._model import Manifest

__all__ = [
    "SOURCES_KEY",
    "SourceIdentity",
    "etags_match",
    "format_mtime",
    "identity_from_info",
    "local_identity",
    "mtime_from_ns",
    "parse_mtime",
    "parse_sources",
    "record_sources",
    "same_mtime",
    "sources_to_json",
]

def parse_sources(value: Any, where: str) -> dict[str, SourceIdentity]:
    """The identities of a ``"refstore:sources"`` object read from *where* (a manifest's name).

    Raises
    ------
    ManifestError
        If it is not an object of URL -> identity, naming *where*, the URL and the field.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ManifestError(f"manifest {where}: {SOURCES_KEY!r} must be an object of url -> identity, "
                            f"got {type(value).__name__}")
    out: dict[str, SourceIdentity] = {}
    for url, ident in value.items():
        if not isinstance(url, str):
            raise ManifestError(f"manifest {where}: {SOURCES_KEY!r} keys must be URLs (text), got {url!r}")
        try:
            out[url] = SourceIdentity.from_json(url, ident)
        except ManifestError as exc:
            raise ManifestError(f"manifest {where}: {exc}") from None
    return out


def sources_to_json(sources: Mapping[str | None, SourceIdentity], urls: Iterable[str | None]) -> dict[str, Any]:
    """The ``"refstore:sources"`` object for the identities of *urls* (those recorded)."""
    out: dict[str, Any] = {}
    for url in urls:
        ident = sources.get(url)
        if url is not None and ident:
            out[url] = ident.to_json()
    return out


def record_sources(
    manifest: Manifest,
    identities: Mapping[str, SourceIdentity] | None = None,
    *,
    local: bool = True,
    checksum: bool = False,
) -> None:
    """Record what the manifest's sources look like now, in :attr:`Manifest.sources`.

    Parameters
    ----------
    identities
        Identities the caller already has (e.g. from the ``info`` of files it
        opened), by URL as the manifest writes it.
    local
        Also stat every local file the manifest names (cheap: no read).
    checksum
        With *local*, also hash each local file (reads it whole once).

    Files that cannot be stat'ed are left without an identity.
    """
    for given, ident in (identities or {}).items():
        if ident:
            manifest.sources[given] = ident
    if not local:
        return
    for url in manifest.urls:
        if url is None or url in manifest.sources:
            continue
        path = url[len("file://"):] if url.startswith("file://") else url
        if "://" in path or "::" in path:
            continue
        try:
            manifest.sources[url] = local_identity(path, checksum)
        except OSError:
            continue
