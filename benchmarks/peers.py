"""The peers of refstore in the benchmark: VirtualiZarr's ``ManifestStore`` and Icechunk's virtual chunks.

Both are given the chunks of the same kerchunk references a scenario hands to
refstore and fsspec (:func:`arrays_from_refs` expands templates and collects
each array's ``(url, offset, length)`` in chunk-grid order):

* **VirtualiZarr** ``ManifestStore``: a ``ManifestGroup`` of ``ManifestArray``
  objects (``ChunkManifest.from_arrays``, what VirtualiZarr's parsers build),
  reading through an ``ObjectStoreRegistry`` of obstore stores (``LocalStore``,
  ``HTTPStore``, ``S3Store``);
* **Icechunk**: a repository on local disk whose arrays hold the same chunks as
  virtual references, with a virtual chunk container per backend
  (``local_filesystem_store``, ``http_store``, ``s3_store``); it is written
  once per scenario (untimed), and opened read-only for the timed reads.

Neither package is required: :func:`missing` says why a peer cannot run, and
the rows then say so.  A root array (the contiguous scenarios) becomes the array
``data`` of a group, since a ``ManifestStore`` holds a group.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._common import Row, Timing

VZ = "VirtualiZarr ManifestStore (obstore)"
IC = "Icechunk virtual chunks"
PEERS = (VZ, IC)
SHORT = {VZ: "VirtualiZarr", IC: "Icechunk"}
ROOT_ARRAY = "data"
_TEMPLATE = re.compile(r"{{\s*(\w+)\s*}}")
_S3_KEYS = ("testing", "testing")


# ----------------------------------------------------------------- availability
def missing(peer: str) -> str | None:
    """Why *peer* cannot run here (``"not installed: ..."``), or None."""
    modules = ("virtualizarr", "obstore", "obspec_utils") if peer == VZ else ("icechunk",)
    for name in modules:
        try:
            __import__(name)
        except Exception as exc:  # an ImportError, or a broken install
            return f"not installed ({name}: {type(exc).__name__}: {exc})"
    return None


def version(peer: str) -> str:
    """The installed version of *peer*'s package, or ``"-"``."""
    try:
        mod = __import__("virtualizarr" if peer == VZ else "icechunk")
        return str(getattr(mod, "__version__", "?"))
    except Exception:
        return "-"


# -------------------------------------------------------- chunks of the references
@dataclass
class ArraySpec:
    """One array of the references: its metadata and chunks (C order over the chunk grid)."""

    path: str
    metadata: dict[str, Any]
    grid: tuple[int, ...]
    urls: list[str]
    offsets: np.ndarray
    lengths: np.ndarray

    @property
    def name(self) -> str:
        """Path of the array in the peer's group (a root array becomes ``data``)."""
        return self.path or ROOT_ARRAY


def arrays_from_refs(refs: dict[str, Any]) -> list[ArraySpec]:
    """The zarr v3 arrays of kerchunk references (v0 or v1 with templates), default chunk keys.

    Local paths become ``file://`` URLs.

    Raises
    ------
    ValueError
        For a chunk key encoding other than ``default`` with ``/``, or inline chunk data.
    """
    body = refs.get("refs", refs) if refs.get("version") == 1 else refs
    templates = refs.get("templates", {}) if refs.get("version") == 1 else {}
    out = []
    for key, value in body.items():
        if not (key == "zarr.json" or key.endswith("/zarr.json")):
            continue
        meta = json.loads(value) if isinstance(value, (str, bytes)) else value
        if meta.get("node_type") != "array":
            continue
        enc = meta.get("chunk_key_encoding", {})
        if enc.get("name") != "default" or enc.get("configuration", {}).get("separator", "/") != "/":
            raise ValueError(f"{key}: the peers are given default chunk keys with '/' only, not {enc}")
        prefix = key[: -len("zarr.json")]
        shape = meta["shape"]
        chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
        grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunks))
        n = int(np.prod(grid))
        urls = [""] * n
        offsets = np.zeros(n, dtype=np.uint64)
        lengths = np.zeros(n, dtype=np.uint64)
        start = prefix + "c/"
        for k, ref in body.items():
            if not k.startswith(start):
                continue
            if not isinstance(ref, list):
                raise ValueError(f"{k}: inline chunk data is not given to the peers")
            idx = int(np.ravel_multi_index(tuple(int(x) for x in k[len(start):].split("/")), grid))
            url = _TEMPLATE.sub(lambda m: templates[m.group(1)], ref[0])
            urls[idx] = url if "://" in url else "file://" + str(Path(url).resolve())
            offsets[idx], lengths[idx] = ref[1], ref[2]
        out.append(ArraySpec(prefix.rstrip("/"), meta, grid, urls, offsets, lengths))
    return out


# ----------------------------------------------------------------- VirtualiZarr
def _obstore_registry(backend: Any) -> Any:
    """An ``ObjectStoreRegistry`` reaching *backend* (a :class:`benchmarks.contiguous.Backend`)."""
    from obspec_utils.registry import ObjectStoreRegistry
    from obstore.store import HTTPStore, LocalStore, S3Store

    if backend.protocol == "file":
        return ObjectStoreRegistry({"file://": LocalStore()})
    if backend.protocol == "http":
        base = backend.server.url
        return ObjectStoreRegistry({base: HTTPStore.from_url(base, client_options={"allow_http": True})})
    if backend.protocol == "s3":
        bucket = backend.url.split("://", 1)[1].split("/", 1)[0]
        endpoint = backend.options["client_kwargs"]["endpoint_url"]
        store = S3Store(bucket, endpoint=endpoint, access_key_id=_S3_KEYS[0], secret_access_key=_S3_KEYS[1],
                        region="us-east-1", virtual_hosted_style_request=False,
                        client_options={"allow_http": True})
        return ObjectStoreRegistry({f"s3://{bucket}": store})
    raise ValueError(f"no obstore store for protocol {backend.protocol!r}")


def virtualizarr_maker(specs: list[ArraySpec], backend: Any) -> Callable[[], Any]:
    """A maker of ``ManifestStore`` objects over *specs* (building one is what is timed)."""
    from virtualizarr.manifests import ChunkManifest, ManifestArray, ManifestGroup, ManifestStore
    from zarr.core.metadata import ArrayV3Metadata

    metas = [ArrayV3Metadata.from_dict(dict(s.metadata)) for s in specs]
    registry = _obstore_registry(backend)

    def make() -> Any:
        arrays = {}
        for s, meta in zip(specs, metas):
            paths = np.array(s.urls, dtype=np.dtypes.StringDType()).reshape(s.grid)
            manifest = ChunkManifest.from_arrays(paths=paths, offsets=s.offsets.reshape(s.grid),
                                                 lengths=s.lengths.reshape(s.grid), validate_paths=False)
            arrays[s.name] = ManifestArray(metadata=meta, chunkmanifest=manifest)
        return ManifestStore(ManifestGroup(arrays=arrays, attributes={}), registry=registry)

    return make


# ----------------------------------------------------------------------- Icechunk
def _quiet_icechunk() -> Any:
    import icechunk

    setter = getattr(icechunk, "set_logs_filter", None)
    if setter is not None:
        setter("error")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="icechunk")
    return icechunk


def _container(backend: Any) -> tuple[str, Any, Any]:
    """``(url prefix, object store config, credential)`` of the virtual chunk container for *backend*."""
    ic = _quiet_icechunk()
    if backend.protocol == "file":
        root = str(Path(backend.url).resolve().parent if Path(backend.url).is_file() else Path(backend.url).resolve())
        cred = getattr(getattr(ic, "credentials", None), "LocalFileSystemAccess", None)
        return f"file://{root.rstrip('/')}/", ic.local_filesystem_store(root), cred
    if backend.protocol == "http":
        cred = getattr(getattr(ic, "credentials", None), "HttpAccess", None)
        return f"{backend.server.url}/", ic.http_store({"allow_http": "true"}), cred
    if backend.protocol == "s3":
        bucket = backend.url.split("://", 1)[1].split("/", 1)[0]
        endpoint = backend.options["client_kwargs"]["endpoint_url"]
        store = ic.s3_store(region="us-east-1", endpoint_url=endpoint, allow_http=True, s3_compatible=True,
                            force_path_style=True)
        cred = ic.s3_credentials(access_key_id=_S3_KEYS[0], secret_access_key=_S3_KEYS[1])
        return f"s3://{bucket}/", store, ic.containers_credentials({"x": cred})["x"]
    raise ValueError(f"Icechunk has no virtual chunk container for protocol {backend.protocol!r}")


def icechunk_maker(specs: list[ArraySpec], backend: Any, folder: Path) -> Callable[[], Any]:
    """Write an Icechunk repository in *folder* holding *specs* as virtual chunks (untimed);
    return a maker of read-only stores over it (opening the repository and a session is timed)."""
    import shutil

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    ic = _quiet_icechunk()
    prefix, store_cfg, cred = _container(backend)
    if folder.exists():
        shutil.rmtree(folder)
    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(ic.VirtualChunkContainer(prefix, store_cfg))
    auth = {prefix: cred}
    repo = ic.Repository.create(ic.local_filesystem_storage(str(folder)), config,
                                authorize_virtual_chunk_access=auth)
    session = repo.writable_session("main")
    store = session.store
    proto = default_buffer_prototype()
    group = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()
    sync(store.set("zarr.json", proto.buffer.from_bytes(group)))
    for s in specs:
        sync(store.set(f"{s.name}/zarr.json", proto.buffer.from_bytes(json.dumps(s.metadata).encode())))
        chunks = [
            ic.VirtualChunkSpec(index=[int(x) for x in np.unravel_index(i, s.grid)], location=url,
                                offset=int(s.offsets[i]), length=int(s.lengths[i]))
            for i, url in enumerate(s.urls) if url
        ]
        failed = store.set_virtual_refs(s.name, chunks, validate_containers=True)
        if failed:
            why = f"Icechunk {ic.__version__} matched no virtual chunk container ({prefix}) to {len(failed)} " \
                  f"virtual references of {s.name}, e.g. {chunks[0].location}"
            if backend.protocol == "http" and int(ic.__version__.split(".")[0]) < 2:
                why += " (Icechunk 1.x drops the port of an http:// location: it would read http://127.0.0.1/..." \
                       " without the port; 2.x keeps it)"
            raise RuntimeError(why)
    session.commit("virtual references of the benchmark")
    storage_path = str(folder)

    def make() -> Any:
        opened = ic.Repository.open(ic.local_filesystem_storage(storage_path), authorize_virtual_chunk_access=auth)
        return opened.readonly_session("main").store

    return make


def peer_makers(refs: dict[str, Any], backend: Any, icechunk_folder: Path) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """A store maker per peer that can run on *refs* over *backend*, and why the others cannot.

    The Icechunk repository is written (once) under *icechunk_folder*.
    """
    makers: dict[str, Callable[[], Any]] = {}
    reasons: dict[str, str] = {}
    specs = arrays_from_refs(refs)
    for peer in PEERS:
        why = missing(peer)
        if why is not None:
            reasons[peer] = why
            continue
        try:
            makers[peer] = (virtualizarr_maker(specs, backend) if peer == VZ
                            else icechunk_maker(specs, backend, icechunk_folder))
        except Exception as exc:
            reasons[peer] = f"cannot be set up: {type(exc).__name__}: {exc}"
    return makers, reasons


# ------------------------------------------------------------------------ rows
def peer_rows(
    scenario: str,
    results: dict[str, Timing],
    versus: list[str],
    limit: str,
    reasons: dict[str, str],
    requests: Callable[[Timing | None], str] | None = None,
) -> list[Row]:
    """Rows ``<refstore impl> vs <peer>``: the peer's time in the fsspec column (``peer/refstore``).

    *versus* are the refstore implementations compared (labels in *results*);
    *reasons* says, per peer, why it did not run (then its cells are n/a).
    """
    rows = []
    lim = results.get(limit)
    for peer in PEERS:
        pt = results.get(peer)
        for label in versus:
            rt = results.get(label)
            if rt is None:
                continue
            reqs = "/".join(requests(t) for t in (rt, pt, lim)) if requests is not None else ""
            errors = [e for e in (rt.error, pt.error if pt else reasons.get(peer), lim.error if lim else None) if e]
            short = label.replace("refstore.", "").replace(", ThreadedCodecPipeline", "+Threaded")
            rows.append(Row(
                scenario=scenario,
                variant=f"{short} vs {SHORT[peer]} {version(peer)}",
                refstore=rt.median,
                fsspec=pt.median if pt else None,
                limit=lim.median if lim else None,
                limit_name=limit if lim else "",
                requests=reqs,
                note="; ".join(errors),
            ))
    return rows


# ------------------------------------------------------------------ open_json
def expanded_json(path: Path, template: str) -> Path:
    """The kerchunk JSON at *path* with its one template ``{{u}}`` written out in every URL (made once).

    VirtualiZarr's kerchunk reader does not expand templates, so it is given this
    file: the same references, each URL spelled in full (a larger file).
    """
    out = path.with_name(path.stem + "_expanded.json")
    if not out.exists():
        text = path.read_text().replace("{{u}}", template)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
    return out


def _big_v3_metadata(rows: int, cols: int) -> dict[str, Any]:
    """zarr v3 metadata equal to the big JSON's v2 ``data/.zarray`` (float32, chunks 100 x 100)."""
    return {
        "zarr_format": 3, "node_type": "array", "shape": [rows * 100, cols * 100], "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [100, 100]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": {"units": "K"}, "dimension_names": ["y", "x"], "storage_transformers": [],
    }


def icechunk_refs_repo(cache_dir: Path, n_refs: int, template: str, n_files: int, cols: int) -> Path:
    """An Icechunk repository holding the big JSON's references as virtual chunks (made once per
    Icechunk major version, whose on-disk formats differ); returns its folder.

    The array ``data`` has the big JSON's chunk grid; chunk ``i`` points into
    ``{template}/file_{i % n_files}.bin`` at ``(i // n_files) * 40000`` for 40000 bytes.
    """
    import shutil

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    ic = _quiet_icechunk()
    major = ic.__version__.split(".")[0]
    folder = cache_dir / f"icechunk{major}_refs_{n_refs}"
    if (folder / ".complete").exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    rows = n_refs // cols
    bucket = template.split("://", 1)[1].split("/", 1)[0]
    prefix = f"s3://{bucket}/"
    config = ic.RepositoryConfig.default()
    config.set_virtual_chunk_container(ic.VirtualChunkContainer(prefix, ic.s3_store(region="us-east-1",
                                                                                    anonymous=True)))
    repo = ic.Repository.create(ic.local_filesystem_storage(str(folder)), config)
    session = repo.writable_session("main")
    store = session.store
    proto = default_buffer_prototype()
    group = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()
    sync(store.set("zarr.json", proto.buffer.from_bytes(group)))
    sync(store.set("data/zarr.json", proto.buffer.from_bytes(json.dumps(_big_v3_metadata(rows, cols)).encode())))
    i = np.arange(rows * cols)
    offsets = ((i // n_files) * 40000).astype(np.uint64)
    lengths = np.full(i.size, 40000, dtype=np.uint64)
    names = [f"{template}/file_{k}.bin" for k in range(n_files)]
    locations = [names[k] for k in (i % n_files).tolist()]
    if hasattr(store, "set_virtual_refs_arr"):
        failed = store.set_virtual_refs_arr("data", (rows, cols), locations, offsets, lengths)
    else:
        specs = [ic.VirtualChunkSpec(index=[k // cols, k % cols], location=loc, offset=int(o), length=40000)
                 for k, (loc, o) in enumerate(zip(locations, offsets.tolist()))]
        failed = store.set_virtual_refs("data", specs)
    if failed:
        raise RuntimeError(f"Icechunk refused {len(failed)} virtual references")
    session.commit("the big JSON's references")
    (folder / ".complete").write_text("ok")
    return folder
