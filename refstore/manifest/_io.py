"""Opening and saving manifests: dicts, local paths and fsspec URLs; JSON (plain, gzip, zstd) or parquet."""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

import fsspec
import ujson

from refstore.errors import ManifestError
from refstore.manifest._inflate import Inflating, detect, inflate_all

if TYPE_CHECKING:
    from refstore.manifest._model import Manifest

_PARQUET_SUFFIXES = (".parq", ".parquet", ".parq/", ".parquet/")


class _Replayed:
    """A binary stream read from its start again, without seeking: *head* (already read), then *rest*."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self._pending, self._rest = head, head, rest

    def read(self, n: int = -1) -> bytes:
        if not self._pending:
            return self._rest.read(n)
        if n is None or n < 0:
            out, self._pending = self._pending + self._rest.read(), b""
            return out
        out, self._pending = self._pending[:n], self._pending[n:]
        return out


def _read_json(
    fs: Any, path: str, url: str, compression: str | None, template_overrides: Mapping[str, str] | None
) -> Manifest:
    """Read a kerchunk JSON manifest, streaming it block by block where its shape allows.

    Compressed files inflate within the budget (:mod:`._inflate`).
    """
    from refstore.manifest._model import Manifest
    from refstore.manifest._stream import load_json_stream

    with fs.open(path, "rb") as opened:
        # a file served without a length (chunked transfer encoding) opens as a stream that
        # cannot seek: the bytes read to detect the compression are read again from memory
        raw: Any = _Replayed(opened.read(4), opened)
        kind = detect(raw.head, compression, url)
        stream: Any = raw if kind is None else Inflating(raw, kind, url)
        manifest = Manifest()
        size_hint = getattr(opened, "size", None) if kind is None else None
        if load_json_stream(manifest, stream, size_hint=size_hint, template_overrides=template_overrides):
            return manifest
    data = fs.cat_file(path)
    if kind is not None:
        data = inflate_all(data, kind, url)
    try:
        refs = ujson.loads(data)
    except ValueError as exc:
        raise ManifestError(f"manifest {url!r} is not valid JSON: {exc}") from None
    del data
    return Manifest.from_dict(refs, template_overrides=template_overrides)


def _fs_for(url: str, target_protocol: str | None, target_options: Mapping[str, Any] | None):
    options = dict(target_options or {})
    compression = options.pop("compression", None)
    if target_protocol:
        fs = fsspec.filesystem(target_protocol, **options)
        path = fs._strip_protocol(url)
    else:
        fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path, compression


def is_remote(url: str, target_protocol: str | None = None) -> bool:
    """True if *url* (read with *target_protocol*) is neither a local file nor in this
    process's memory (``memory://``): the manifests the default URL policy holds to less."""
    protocol = target_protocol or (url.split("://", 1)[0] if "://" in url else "file")
    if "::" in url:
        protocol = url.split("::")[-1].split("://", 1)[0] if "://" in url.split("::")[-1] else "file"
    return protocol not in ("file", "local", "memory")


def open_manifest(
    fo: Any,
    *,
    target_protocol: str | None = None,
    target_options: Mapping[str, Any] | None = None,
    template_overrides: Mapping[str, str] | None = None,
    cache_size: int = 128,
) -> Manifest:
    """Open a manifest.

    Parameters
    ----------
    fo
        A :class:`Manifest` (returned as is), a kerchunk reference dict, or a
        path/URL of a JSON file (``.json``, ``.json.gz``, ``.json.zst``;
        compression is also detected from the bytes) or of a parquet reference
        directory.
    target_protocol, target_options
        How to read *fo* when it is a URL (as in fsspec's ReferenceFileSystem;
        ``target_options["compression"]`` may name ``gzip`` or ``zstd``).
    template_overrides
        Replace or add v1 templates.
    cache_size
        Parquet partitions kept in memory.

    Raises
    ------
    FileNotFoundError
        If *fo* names a missing file.
    ManifestError
        If the content is malformed (or is a directory where a file should
        be), or reading it would go past a budget (:mod:`._budgets`).
    """
    from refstore.manifest._model import Manifest

    if isinstance(fo, Manifest):
        return fo
    if isinstance(fo, Mapping):
        return Manifest.from_dict(fo, template_overrides=template_overrides)
    if isinstance(fo, os.PathLike):
        fo = os.fspath(fo)
    if not isinstance(fo, str):
        raise ManifestError(f"cannot open a manifest from {type(fo).__name__}; pass a dict, path or URL")
    fs, path, compression = _fs_for(fo, target_protocol, target_options)
    try:
        if path.rstrip("/").endswith(_PARQUET_SUFFIXES) or (
            not path.endswith((".json", ".gz", ".zst")) and fs.isdir(path)
        ):
            from refstore.manifest._parquet import read_parquet

            manifest = read_parquet(fs, path.rstrip("/"), cache_size=cache_size)
        else:
            manifest = _read_json(fs, path, fo, compression, template_overrides)
    except IsADirectoryError as exc:
        raise ManifestError(
            f"manifest {fo!r}: {exc.filename or path!r} is a directory, not a file (a parquet "
            "manifest is a directory holding a .zmetadata file)"
        ) from exc
    except RecursionError:
        raise ManifestError(f"manifest {fo!r} is nested too deeply to read") from None
    manifest.source = fo
    manifest.source_is_remote = is_remote(fo, target_protocol)
    from refstore.manifest._snapshot import mark_opened

    mark_opened(manifest, {
        "target_protocol": target_protocol,
        "target_options": dict(target_options) if target_options else None,
        "template_overrides": dict(template_overrides) if template_overrides else None,
    })
    return manifest


def save_manifest(
    manifest: Manifest,
    path: str,
    *,
    format: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    record_size: int = 10_000,
) -> None:
    """Write *manifest* to *path*.

    Parameters
    ----------
    path
        Local path or fsspec URL. ``.json`` writes plain JSON, ``.json.gz`` gzip,
        ``.json.zst`` zstd; a ``.parq``/``.parquet`` path writes a parquet
        reference directory (as fsspec's LazyReferenceMapper does).
    format
        ``"json"`` or ``"parquet"``, overriding the suffix.
    record_size
        References per parquet file.
    """
    fmt = format or ("parquet" if path.rstrip("/").endswith(_PARQUET_SUFFIXES) else "json")
    fs, fpath = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    if fmt == "parquet":
        from refstore.manifest._parquet import write_parquet

        write_parquet(manifest, fs, fpath.rstrip("/"), record_size=record_size)
        return
    if fmt != "json":
        raise ValueError(f"unknown manifest format {fmt!r}; use 'json' or 'parquet'")
    data = ujson.dumps(manifest.to_dict(), escape_forward_slashes=False).encode()
    if fpath.endswith(".gz"):
        data = gzip.compress(data, compresslevel=6)
    elif fpath.endswith(".zst"):
        from numcodecs import Zstd

        data = bytes(Zstd(level=3).encode(data))
    parent = os.path.dirname(fpath)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(fpath, data)
