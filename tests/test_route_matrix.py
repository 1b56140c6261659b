"""One manifest, one answer, on every route: every kind of manifest read by every route
equals what its source library reads (h5py/netCDF4, tifffile, imagecodecs, the image).

Kinds (``_route_kinds.py``): kerchunk JSON v0 (HDF5) and v1 (netCDF; templates, ``gen``,
inline text and base64), parquet written by kerchunk (zarr 2 keys) and by refstore (zarr 3
keys), a ``refstore.combine`` of yearly netCDF scans (a leap year; misaligned chunks),
``save_virtual`` of stack/pad/crop views, a Deep Zoom pyramid with overlap, PNG and JPEG
tile mosaics (``build.images``) and a pyramidal OME-TIFF (``build.tiff``).

Routes (``_routes.py``): ``ReferenceStore``, the same with ``ThreadedCodecPipeline``,
``reference://`` as a sync and an async mapper, ``FsspecStore`` over an async
``reference://``, ``zarr.open_group("reference://")`` in a fresh interpreter, xarray, and
a dask computation in worker processes (one pool for the module).

Targets: the references point at local files, or (rewritten) at the same files served by
loopback HTTP, moto S3 and a GCS emulator. Every kind and route runs locally; the remote
targets run the routes of :data:`REMOTE_ROUTES`. Until the engine stood under every face,
``reference://`` read virtual arrays as fill values, silently: a route that cannot serve a
kind must raise, which is asserted where that happens (xarray of a pyramid).
"""

from __future__ import annotations

import json
import multiprocessing
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr
from _route_kinds import KIND_NAMES, Kind, build_all
from _routes import (
    ROUTES,
    ZARR_ROUTES,
    Source,
    open_xarray,
    read_arrays,
    read_dask,
    read_in_subprocess,
    read_xarray,
    with_windows,
)

import refstore

BUCKET = "refstore-test"  # the bucket of tests/conftest.py (whose name another conftest shadows)

#: Routes each remote target runs (local runs all of :data:`ROUTES`): the store and the
#: sync and async reference:// faces on every target; the slower routes (a fresh
#: interpreter, xarray, worker processes) on HTTP and S3; GCS only the three in-process faces.
REMOTE_ROUTES: dict[str, tuple[str, ...]] = {
    "http": ("store", "store-threaded", "mapper-sync", "fsspecstore-async", "url-subprocess", "xarray",
             "dask-processes"),
    "s3": ("store", "mapper-async", "fsspecstore-async", "url-subprocess", "xarray", "dask-processes"),
    "gcs": ("store", "mapper-sync", "fsspecstore-async"),
}
TARGETS = ("local", *REMOTE_ROUTES)

CASES = [
    pytest.param(kind, route, target, id=f"{kind}-{route}-{target}")
    for target in TARGETS
    for kind in KIND_NAMES
    for route in (ROUTES if target == "local" else REMOTE_ROUTES[target])
]


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kind]:
    return build_all(tmp_path_factory.mktemp("kinds"))


class Served:
    """The kinds' manifests on one target, and (computed once) what a fresh interpreter read."""

    def __init__(self, sources: dict[str, Source]) -> None:
        self.sources = sources
        self._subprocess: dict[str, dict[str, np.ndarray] | str] | None = None

    def subprocess_read(self, kinds: dict[str, Kind]) -> dict[str, dict[str, np.ndarray] | str]:
        if self._subprocess is None:
            self._subprocess = read_in_subprocess(
                {name: (self.sources[name], list(kind.truth)) for name, kind in kinds.items()}
            )
        return self._subprocess


def _serve(kinds: dict[str, Kind], dest: Path, base: str | None, options: dict[str, Any]) -> Served:
    return Served({
        name: Source(str(kind.write(dest, None if base is None else f"{base}/{name}")), options)
        for name, kind in kinds.items()
    })


def _root(kinds: dict[str, Kind]) -> Path:
    (root,) = {kind.root.parent for kind in kinds.values()}
    return root


@pytest.fixture(scope="module")
def local_target(kinds: dict[str, Kind], tmp_path_factory: pytest.TempPathFactory) -> Served:
    return _serve(kinds, tmp_path_factory.mktemp("local"), None, {})


@pytest.fixture(scope="module")
def http_target(kinds: dict[str, Kind], http_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Served:
    base = http_server.serve(_root(kinds), f"matrix-{uuid.uuid4().hex[:8]}")
    return _serve(kinds, tmp_path_factory.mktemp("http"), base, {})


@pytest.fixture(scope="module")
def s3_target(kinds: dict[str, Kind], s3_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Served:
    base = s3_server.upload(_root(kinds), BUCKET, f"matrix-{uuid.uuid4().hex[:8]}")
    return _serve(kinds, tmp_path_factory.mktemp("s3"), base, s3_server.storage_options)


@pytest.fixture(scope="module")
def gcs_target(kinds: dict[str, Kind], gcs_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Served:
    base = gcs_server.upload(_root(kinds), BUCKET, f"matrix-{uuid.uuid4().hex[:8]}")
    return _serve(kinds, tmp_path_factory.mktemp("gcs"), base, gcs_server.storage_options)


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    """Two worker processes (spawned: nothing inherited but what a pickle carries), for the module."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


def _read(route: str, kind: Kind, served: Served, kinds: dict[str, Kind], request: pytest.FixtureRequest) -> dict[str, np.ndarray]:
    source = served.sources[kind.name]
    paths = list(kind.truth)
    if route in ZARR_ROUTES:
        return read_arrays(route, source, paths)
    if route == "url-subprocess":
        got = served.subprocess_read(kinds)[kind.name]
        assert not isinstance(got, str), got
        return got
    if route == "xarray":
        assert kind.xarray is not None
        return read_xarray(source, kind.xarray)
    if route == "dask-processes":
        xarray = kind.xarray is not None
        return read_dask(source, list(kind.xarray or paths), request.getfixturevalue("pool"), xarray=xarray)
    raise ValueError(route)


@pytest.mark.parametrize(("kind_name", "route", "target"), CASES)
def test_every_route_reads_the_truth(
    kinds: dict[str, Kind], kind_name: str, route: str, target: str, request: pytest.FixtureRequest
) -> None:
    if kind_name not in kinds:
        pytest.skip("needs libvips-tools (vips dzsave); .ci/run installs it")
    kind = kinds[kind_name]
    served: Served = request.getfixturevalue(f"{target}_target")
    if route == "xarray" and kind.xarray is None:
        # a pyramid's levels (or HDF5 phony dimensions) share names with different sizes:
        # xarray must refuse the group, not return fill
        with pytest.raises(ValueError, match="conflicting sizes for dimension"):
            open_xarray(served.sources[kind_name]).load()
        return
    got = _read(route, kind, served, kinds, request)
    names = kind.xarray if route in ("xarray", "dask-processes") and kind.xarray else kind.truth
    want = with_windows({p: kind.truth[p] for p in names})
    assert set(got) == set(want)
    for path, truth in want.items():
        assert got[path].shape == truth.shape, path
        assert got[path].dtype == truth.dtype, path
        np.testing.assert_array_equal(got[path], truth, err_msg=f"{kind_name} {path} via {route} on {target}")


# --------------------------------------------------------------------------- unreachable targets

#: (target, route) pairs of the unreachable-target test: every route locally, the faces
#: and the out-of-process routes over HTTP (a 404).
BROKEN_CASES = [
    pytest.param(kind, route, target, id=f"{kind}-{route}-{target}")
    for target, routes in (("local", ROUTES), ("http", ("store", "mapper-sync", "fsspecstore-async",
                                                         "url-subprocess", "xarray", "dask-processes")))
    for kind in KIND_NAMES
    for route in routes
]


@pytest.fixture(scope="module")
def broken_local(kinds: dict[str, Kind], tmp_path_factory: pytest.TempPathFactory) -> Served:
    """Every kind with its references moved to a folder that does not exist."""
    gone = tmp_path_factory.mktemp("broken") / "gone"
    return _serve(kinds, tmp_path_factory.mktemp("broken-local"), str(gone), {})


@pytest.fixture(scope="module")
def broken_http(kinds: dict[str, Kind], http_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Served:
    """Every kind with its references moved to URLs the server answers with 404."""
    base = f"{http_server.url}/gone-{uuid.uuid4().hex[:8]}"
    return _serve(kinds, tmp_path_factory.mktemp("broken-http"), base, {})


def _unreachable(exc: BaseException | None) -> bool:
    """True if ``exc`` or an exception it was raised from is refstore's ``ReferenceNotReachable``."""
    while exc is not None:
        if isinstance(exc, refstore.ReferenceNotReachable):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@pytest.mark.parametrize(("kind_name", "route", "target"), BROKEN_CASES)
def test_every_route_raises_when_targets_are_gone(
    kinds: dict[str, Kind], kind_name: str, route: str, target: str, request: pytest.FixtureRequest
) -> None:
    """No route reads a missing file (or a 404) as fill values: each raises ReferenceNotReachable."""
    if kind_name not in kinds:
        pytest.skip("needs libvips-tools (vips dzsave); .ci/run installs it")
    kind = kinds[kind_name]
    if route == "xarray" and kind.xarray is None:
        pytest.skip("xarray refuses the group before reading (see test_every_route_reads_the_truth)")
    served: Served = request.getfixturevalue(f"broken_{target}")
    if route == "url-subprocess":
        error = served.subprocess_read(kinds)[kind_name]
        assert isinstance(error, str), f"{kind_name} read through a missing target"
        assert "refstore.errors.ReferenceNotReachable" in error, error
        return
    with pytest.raises(Exception) as info:  # the type is checked along the chain below
        _read(route, kind, served, kinds, request)
    assert _unreachable(info.value), repr(info.value)


# --------------------------------------------------------------------------- listing


def test_listing_a_virtual_array_through_the_filesystem(kinds: dict[str, Kind], local_target: Served) -> None:
    """ls/find/info/cat of virtual chunk keys through ``reference://``, as zarr's own listing shows them."""
    source, (path, truth) = local_target.sources["views"], ("crop", kinds["views"].truth["crop"])
    fs = fsspec.filesystem("reference", fo=source.fo, skip_instance_cache=True)
    store = refstore.ReferenceStore(source.fo)
    keys = sorted(zarr.core.sync.sync(_collect(store.list_prefix(f"{path}/"))))
    chunk_keys = [k for k in keys if "/.sources/" not in k and k.rsplit("/", 1)[-1][0].isdigit()]
    assert chunk_keys, keys
    assert set(chunk_keys) <= set(fs.find(path))
    first = chunk_keys[0]
    assert fs.info(first)["type"] == "file" and fs.info(first)["size"] == len(fs.cat_file(first)) > 0
    assert fs.cat_file(first) == store.get_sync(first).to_bytes()
    assert first.rsplit("/", 1)[-1] in [p.rsplit("/", 1)[-1] for p in fs.ls(first.rsplit("/", 1)[0], detail=False)]
    meta = json.loads(fs.cat_file(f"{path}/.zarray") if fs.exists(f"{path}/.zarray") else fs.cat_file(f"{path}/zarr.json"))
    assert meta["shape"][0] == truth.shape[0]


async def _collect(it: Any) -> list[str]:
    return [k async for k in it]
