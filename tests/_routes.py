"""The routes by which a reference manifest reaches zarr, each reading named arrays to numpy.

One function per family of route: :func:`read_arrays` (in this process: the native store,
with and without the threaded pipeline, ``reference://`` as a mapper, sync and async, and
as an ``FsspecStore``), :func:`read_xarray` (``xr.open_dataset("reference://")``),
:func:`read_dask` (a dask computation in worker processes) and :func:`read_in_subprocess`
(``zarr.open_group("reference://")`` in a fresh interpreter that never imports refstore).
Shared by ``test_routes.py`` and ``test_route_matrix.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import zarr
from zarr.storage import FsspecStore

import refstore

#: Routes read in this process by :func:`read_arrays`.
ZARR_ROUTES = ("store", "store-threaded", "mapper-sync", "mapper-async", "fsspecstore-async")
#: Every route: those of :func:`read_arrays`, then the subprocess, xarray and dask ones.
ROUTES = (*ZARR_ROUTES, "url-subprocess", "xarray", "dask-processes")

THREADED = {"codec_pipeline.path": "refstore.pipeline.ThreadedCodecPipeline"}

#: Suffix of the result key of each array's :func:`window` read.
WINDOW = "@window"


def window(shape: Sequence[int]) -> tuple[slice, ...]:
    """The middle third of every axis (at least one element): a read that starts and ends mid-chunk."""
    return tuple(slice(n // 3, max(n // 3 + 1, 2 * n // 3)) for n in shape)


def with_windows(whole: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``whole`` and, for each array ``p`` of at least one dimension, ``p@window``: its window."""
    out = {p: np.asarray(a) for p, a in whole.items()}
    out.update({p + WINDOW: np.asarray(a[window(a.shape)]) for p, a in whole.items() if np.ndim(a)})
    return out


def _read_both(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Each array read whole and (when it has dimensions) by its :func:`window`, as separate reads."""
    out = {p: np.asarray(a[...]) for p, a in arrays.items()}
    out.update({p + WINDOW: np.asarray(a[window(a.shape)]) for p, a in arrays.items() if len(a.shape)})
    return out


@dataclass(frozen=True)
class Source:
    """A manifest as the routes open it: ``fo`` and the options of its references' filesystem."""

    fo: str
    remote_options: Mapping[str, Any] = field(default_factory=dict)

    def store_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``ReferenceStore`` (beyond ``fo``)."""
        return {"remote_options": dict(self.remote_options)} if self.remote_options else {}

    def storage_options(self) -> dict[str, Any]:
        """``storage_options`` of ``reference://`` (``fo`` included)."""
        return {"fo": self.fo, **self.store_kwargs()}


def _reference_fs(source: Source, asynchronous: bool) -> Any:
    return fsspec.filesystem(
        "reference", skip_instance_cache=True, asynchronous=asynchronous, **source.storage_options()
    )


def open_group(route: str, source: Source) -> zarr.Group:
    """The manifest's root group, opened by one of :data:`ZARR_ROUTES`."""
    if route in ("store", "store-threaded"):
        return zarr.open_group(refstore.ReferenceStore(source.fo, **source.store_kwargs()), mode="r")
    if route == "mapper-sync":
        return zarr.open_group(_reference_fs(source, False).get_mapper(""), mode="r")
    if route == "mapper-async":
        return zarr.open_group(_reference_fs(source, True).get_mapper(""), mode="r")
    if route == "fsspecstore-async":
        return zarr.open_group(FsspecStore(_reference_fs(source, True), read_only=True), mode="r")
    raise ValueError(f"not a zarr route: {route!r}")


def read_arrays(route: str, source: Source, paths: Sequence[str]) -> dict[str, np.ndarray]:
    """Each array at ``paths`` read by ``route`` (one of :data:`ZARR_ROUTES`): whole, and its window."""
    if route == "store-threaded":
        with zarr.config.set(THREADED):
            group = open_group(route, source)
            return _read_both({p: _array(group, p) for p in paths})
    group = open_group(route, source)
    return _read_both({p: _array(group, p) for p in paths})


def _array(group: zarr.Group, path: str) -> zarr.Array:
    node = group[path]
    assert isinstance(node, zarr.Array), f"{path!r} is a group, not an array"
    return node


def open_xarray(source: Source, chunks: Any = None) -> Any:
    """``xr.open_dataset("reference://", engine="zarr")``, values as stored (no masking, no time decoding)."""
    import xarray as xr

    return xr.open_dataset(
        "reference://", engine="zarr", chunks=chunks, mask_and_scale=False, decode_times=False,
        backend_kwargs={"storage_options": source.storage_options(), "consolidated": False},
    )


def read_xarray(source: Source, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Variables ``names`` of the root group, read by xarray through ``reference://``."""
    ds = open_xarray(source)
    return _read_both({n: _XarrayValues(ds[n]) for n in names})


class _XarrayValues:
    """A variable read through xarray's own indexing (``var[key].values``)."""

    def __init__(self, var: Any) -> None:
        self.var = var
        self.shape: tuple[int, ...] = var.shape

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.var[key].values)


def read_dask(source: Source, paths: Sequence[str], pool: Executor, *, xarray: bool) -> dict[str, np.ndarray]:
    """Arrays read by a dask computation whose tasks run in the processes of ``pool``.

    With ``xarray`` the graph is xarray's (``reference://``, ``chunks={}``): the reference
    filesystem is pickled to the workers. Otherwise it is ``dask.array.from_zarr`` over a
    ``ReferenceStore``, which is pickled.
    """
    import dask
    import dask.array as da

    if xarray:
        ds = open_xarray(source, chunks={})
        lazy = [ds[p].data for p in paths]
    else:
        group = zarr.open_group(refstore.ReferenceStore(source.fo, **source.store_kwargs()), mode="r")
        lazy = [da.from_zarr(_array(group, p)) for p in paths]
    windows = [(p, a[window(a.shape)]) for p, a in zip(paths, lazy) if a.ndim]
    computed = dask.compute(*lazy, *(w for _, w in windows), scheduler="processes", pool=pool)
    keys = [*paths, *(p + WINDOW for p, _ in windows)]
    return {k: np.asarray(v) for k, v in zip(keys, computed)}


_SUBPROCESS_READER = textwrap.dedent("""
    import json, sys, traceback
    import numpy as np, zarr
    jobs, out = json.loads(sys.stdin.read()), sys.argv[1]
    results = {}
    for job_id, (storage_options, paths) in jobs.items():
        try:
            group = zarr.open_group("reference://", mode="r", storage_options=storage_options)
            for i, path in enumerate(paths):
                arr = group[path]
                np.save(f"{out}/{job_id}-{i}.npy", np.asarray(arr[...]))
                window = tuple(slice(n // 3, max(n // 3 + 1, 2 * n // 3)) for n in arr.shape)
                np.save(f"{out}/{job_id}-{i}-window.npy", np.asarray(arr[window]))
            results[job_id] = None
        except Exception:
            results[job_id] = traceback.format_exc()
    assert "refstore" in sys.modules, "reference:// did not resolve to refstore"
    json.dump(results, open(f"{out}/results.json", "w"))
""")


def read_in_subprocess(jobs: Mapping[str, tuple[Source, Sequence[str]]], timeout: float = 240) -> dict[str, dict[str, np.ndarray] | str]:
    """Run every job in one fresh interpreter that never imports refstore itself.

    ``jobs`` maps an id to (manifest, array paths); each is opened with
    ``zarr.open_group("reference://", storage_options=...)`` (fsspec's registry finds
    refstore through its entry point). Returns per id the arrays, or the traceback of
    the error it raised.
    """
    spec = {job: [source.storage_options(), list(paths)] for job, (source, paths) in jobs.items()}
    with tempfile.TemporaryDirectory(prefix="refstore-routes-") as out:
        done = subprocess.run(
            [sys.executable, "-c", _SUBPROCESS_READER, out], input=json.dumps(spec).encode(),
            capture_output=True, timeout=timeout, check=False, cwd=out,
        )
        assert done.returncode == 0, done.stderr.decode()
        results: dict[str, str | None] = json.loads(Path(out, "results.json").read_text())
        got: dict[str, dict[str, np.ndarray] | str] = {}
        for job, (_, paths) in jobs.items():
            error = results[job]
            if error is not None:
                got[job] = error
                continue
            arrays = {p: np.load(Path(out, f"{job}-{i}.npy")) for i, p in enumerate(paths)}
            arrays.update({p + WINDOW: np.load(Path(out, f"{job}-{i}-window.npy"))
                           for i, p in enumerate(paths) if arrays[p].ndim})
            got[job] = arrays
        return got
