"""The inputs of ``combine``: reference manifests, zarr stores (v2 or v3), and netCDF/HDF5 files scanned
with kerchunk (or VirtualiZarr)."""

from __future__ import annotations

import gc
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from refstore.errors import CombineError

#: Suffixes of files that are scanned (netCDF4/HDF5, netCDF3) rather than read as manifests.
SCANNED_SUFFIXES = (".nc", ".nc4", ".nc3", ".netcdf", ".h5", ".hdf5", ".he5", ".hdf")
#: Suffixes of zarr stores given by URL (a local directory is recognized by its contents).
ZARR_SUFFIXES = (".zarr", ".zarr/")

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NETCDF3_MAGIC = (b"CDF\x01", b"CDF\x02")


@dataclass
class Input:
    """One input, opened: a label for messages, its zarr group, and how sources name its arrays."""

    label: str
    group: Any
    #: per array name, the source reference a saved definition uses (zarr stores); empty otherwise
    refs: dict[str, dict[str, Any]] = field(default_factory=dict)


def label_of(fo: Any, index: int) -> str:
    """How messages name input ``fo``: its path or URL, quoted, else its position."""
    if isinstance(fo, (str, os.PathLike)):
        return repr(os.fspath(fo))
    return f"input {index}"


def kind_of(fo: Any) -> str:
    """``"manifest"``, ``"zarr"``, ``"hdf5"`` or ``"netcdf3"``: how input ``fo`` is read.

    Dicts and :class:`refstore.Manifest` objects are manifests. A local directory is a
    zarr store if it holds ``zarr.json``, ``.zgroup`` or a ``.zmetadata`` of zarr's (a
    kerchunk parquet manifest's ``.zmetadata`` names a ``record_size``); a local file is
    scanned if it starts with the HDF5 or netCDF3 signature. URLs go by suffix:
    :data:`SCANNED_SUFFIXES` are scanned, :data:`ZARR_SUFFIXES` (or a trailing ``/``)
    are zarr stores, anything else is a manifest.
    """
    if not isinstance(fo, (str, os.PathLike)):
        return "manifest"
    path = os.fspath(fo)
    if "://" in path and not path.startswith("file://"):
        bare = path.split("?", 1)[0].lower()
        if bare.endswith(SCANNED_SUFFIXES):
            return "netcdf3" if bare.endswith(".nc3") else "hdf5"
        if bare.endswith(ZARR_SUFFIXES) or bare.endswith("/"):
            return "zarr"
        return "manifest"
    local = path.removeprefix("file://")
    if os.path.isdir(local):
        if any(os.path.exists(os.path.join(local, name)) for name in ("zarr.json", ".zgroup", ".zarray")):
            return "zarr"
        meta = os.path.join(local, ".zmetadata")
        if os.path.exists(meta):
            try:
                with open(meta, "rb") as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                return "manifest"
            return "manifest" if isinstance(doc, dict) and "record_size" in doc else "zarr"
        return "manifest"
    if os.path.isfile(local):
        with open(local, "rb") as f:
            head = f.read(8)
        if head == _HDF5_MAGIC:
            return "hdf5"
        if head[:4] in _NETCDF3_MAGIC:
            return "netcdf3"
    return "manifest"


def expand_pattern(pattern: str, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """The paths (or URLs) matching glob ``pattern``, sorted.

    Raises
    ------
    refstore.errors.CombineError
        If nothing matches.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(pattern, **dict(storage_options or {}))
    local = "://" not in pattern or pattern.startswith("file://")
    found = sorted(fs.glob(path))
    if not found:
        raise CombineError(f"combine: nothing matches {pattern!r}; give a list of inputs or a pattern that matches")
    return [p if local else fs.unstrip_protocol(p) for p in found]


def open_inputs(
    inputs: Sequence[Any],
    options: Mapping[str, Any],
    *,
    storage_options: Mapping[str, Any] | None = None,
    show_progress: bool | None = None,
    scanner: str | None = None,
    labels: Sequence[str] | None = None,
) -> list[Input]:
    """Open every input (see :func:`kind_of`), scanning netCDF/HDF5 files first.

    ``options`` are :class:`refstore.ReferenceStore` options for manifests (and for the
    manifests scans produce); ``storage_options`` are fsspec options for zarr stores and
    files given by URL. ``show_progress``: None draws a progress line on stderr while
    scanning when stderr is a terminal, True always, False never. ``scanner`` is that of
    :func:`scan_file`. ``labels`` name the inputs in messages (default: :func:`label_of`).
    """
    from refstore._progress import progress

    kinds = [kind_of(fo) for fo in inputs]
    scans = [k for k, kind in enumerate(kinds) if kind in ("hdf5", "netcdf3")]
    scanned: dict[int, Any] = {}
    for k in progress(scans, "combine: scanning files", show_progress is not False, always=bool(show_progress),
                      quiet_below=2**62):
        scanned[k] = scan_file(inputs[k], kinds[k], storage_options, scanner=scanner)
    opened = []
    for k, (fo, kind) in enumerate(zip(inputs, kinds)):
        label = labels[k] if labels is not None else label_of(fo, k)
        if kind == "zarr":
            opened.append(_open_zarr(fo, label, storage_options))
        else:
            opened.append(_open_manifest(scanned.get(k, fo), label, options))
    return opened


def _open_manifest(fo: Any, label: str, options: Mapping[str, Any]) -> Input:
    import zarr

    from refstore.virtual._spec import open_manifest_store

    return Input(label, zarr.open_group(open_manifest_store(fo, **options), mode="r"))


def _open_zarr(fo: Any, label: str, storage_options: Mapping[str, Any] | None) -> Input:
    """A zarr store (v2 or v3, consolidated or not), local or by URL."""
    import zarr

    url = os.fspath(fo)
    local = "://" not in url or url.startswith("file://")
    if local:
        url = os.path.abspath(url.removeprefix("file://"))
        store: Any = zarr.storage.LocalStore(url, read_only=True)
    else:
        store = zarr.storage.FsspecStore.from_url(url, storage_options=dict(storage_options or {}), read_only=True)
    try:
        group = zarr.open_group(store, mode="r")
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise CombineError(f"combine: {label} is not a zarr group that zarr can open ({exc})") from exc
    refs: dict[str, dict[str, Any]] = {}
    for name, node in group.members(max_depth=None):
        if isinstance(node, zarr.Array):
            ref: dict[str, Any] = {"zarr": url, "path": name}
            if storage_options and not local:
                ref["storage_options"] = public_options(storage_options)
            refs[name] = ref
    return Input(label, group, refs)


_SECRET = re.compile(r"key|secret|token|password|passwd|credential|session|auth", re.IGNORECASE)


def public_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without the entries that look like credentials (names with key, secret,
    token, password, credential, session or auth), at any depth: they are written into
    saved definitions, which readers are given."""
    return {
        k: public_options(v) if isinstance(v, Mapping) else v for k, v in options.items() if not _SECRET.search(str(k))
    }


def scan_file(
    fo: Any, kind: str, storage_options: Mapping[str, Any] | None = None, *, scanner: str | None = None
) -> dict[str, Any]:
    """kerchunk references of one netCDF4/HDF5 (``kind="hdf5"``) or netCDF3 file.

    With kerchunk installed, its scanners read the file, raising on anything they cannot
    translate (kerchunk's default quietly leaves such variables out); else VirtualiZarr's
    parsers, if installed. ``scanner`` (``"kerchunk"`` or ``"virtualizarr"``) picks one.

    Raises
    ------
    refstore.errors.CombineError
        Naming the file, when neither scanner is installed, kerchunk is one known to drop
        variables, or the scan fails.
    """
    path = os.fspath(fo)
    if scanner not in (None, "kerchunk", "virtualizarr"):
        raise ValueError(f"combine: scanner must be 'kerchunk' or 'virtualizarr', got {scanner!r}")
    try:
        import kerchunk
    except ImportError:
        kerchunk = None
    if scanner == "virtualizarr":
        kerchunk = None
    elif scanner == "kerchunk" and kerchunk is None:
        raise CombineError(f"combine: scanning {path!r} with kerchunk needs it installed (pip install kerchunk h5py)")
    if kerchunk is not None and not _kerchunk_drops_fill_values(kerchunk.__version__):
        return _scan_with_kerchunk(path, kind, storage_options)
    try:
        import virtualizarr  # noqa: F401
    except ImportError:
        if kerchunk is not None:
            raise CombineError(
                f"combine: cannot scan {path!r}: kerchunk {kerchunk.__version__} leaves out every variable with "
                "a _FillValue under numpy >= 2.4; install kerchunk >= 0.2.10 (or VirtualiZarr)"
            ) from None
        raise CombineError(
            f"combine: scanning {path!r} needs kerchunk or VirtualiZarr; install one (pip install kerchunk h5py), "
            "or give a manifest of the file instead"
        ) from None
    return _scan_with_virtualizarr(path, kind, storage_options)


def _kerchunk_drops_fill_values(version: str) -> bool:
    """True for kerchunk < 0.2.10 under numpy >= 2.4, whose HDF5 scanner drops variables with a _FillValue."""
    import numpy as np

    def parts(v: str) -> tuple[int, ...]:
        out = []
        for p in v.split(".")[:3]:
            digits = "".join(c for c in p if c.isdigit())
            out.append(int(digits or 0))
        return tuple(out)

    return parts(version) < (0, 2, 10) and parts(np.__version__) >= (2, 4)


def _scan_with_kerchunk(path: str, kind: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    url = path if "://" in path else os.path.abspath(path)
    try:
        if kind == "netcdf3":
            from kerchunk.netCDF3 import NetCDF3ToZarr

            refs: dict[str, Any] = NetCDF3ToZarr(url, storage_options=dict(storage_options or {})).translate()
        else:
            from kerchunk.hdf import SingleHdf5ToZarr

            gc.collect()  # cyclic h5py garbage freed on zarr's thread during translate would deadlock
            scanner = SingleHdf5ToZarr(url, url, storage_options=dict(storage_options or {}), error="raise")
            try:
                refs = scanner.translate()
            finally:
                # close the HDF5 file here: left to the garbage collector, it may be freed on zarr's
                # thread while the next scan holds h5py's lock waiting for that thread (a deadlock)
                scanner.close()
    except (OSError, ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as exc:
        raise CombineError(f"combine: kerchunk could not scan {path!r}: {type(exc).__name__}: {exc}") from exc
    return refs


def _scan_with_virtualizarr(path: str, kind: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    from obstore.store import LocalStore, from_url
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser, NetCDF3Parser

    try:
        from obspec_utils.registry import ObjectStoreRegistry
    except ImportError:  # VirtualiZarr before 2.6 has its own
        from virtualizarr.registry import ObjectStoreRegistry

    if "://" in path and not path.startswith("file://"):
        scheme, rest = path.split("://", 1)
        prefix = f"{scheme}://{rest.split('/', 1)[0]}"
        registry = ObjectStoreRegistry({prefix: from_url(prefix, **dict(storage_options or {}))})
        url = path
    else:
        url = "file://" + os.path.abspath(path.removeprefix("file://"))
        registry = ObjectStoreRegistry({"file://": LocalStore()})
    parser = NetCDF3Parser() if kind == "netcdf3" else HDFParser()
    try:
        with open_virtual_dataset(url, registry=registry, parser=parser) as vds:
            refs: dict[str, Any] = vds.vz.to_kerchunk(format="dict")
    except (OSError, ValueError, TypeError, KeyError, NotImplementedError) as exc:
        raise CombineError(f"combine: VirtualiZarr could not scan {path!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        # the parser leaves h5py objects in reference cycles: collected later on zarr's thread while
        # another scan holds h5py's lock waiting for that thread, they deadlock; collect them here
        gc.collect()
    return refs
