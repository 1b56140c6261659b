"""The inputs users have: netCDF files scanned directly (kerchunk or VirtualiZarr), VirtualiZarr's kerchunk
output (JSON and parquet), and zarr v2/v3 stores, local and over HTTP and S3; each combined result equals
``xr.open_mfdataset`` of the same data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

pytest.importorskip("kerchunk.hdf")
pytest.importorskip("dask")
pytest.importorskip("virtualizarr")
xr = pytest.importorskip("xarray")

from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS  # noqa: E402
from test_combine_xarray import YEARS, assert_same_as_xarray, write_year  # noqa: E402

import refstore  # noqa: E402
from refstore.cli import main  # noqa: E402
from refstore.errors import CombineError  # noqa: E402
from refstore.virtual._combine import combine_with_layout  # noqa: E402
from refstore.virtual._inputs import _kerchunk_drops_fill_values, kind_of, public_options, scan_file  # noqa: E402

ALIGNED_YEARS = (2005, 2006, 2007)


@pytest.fixture(autouse=True)
def _collect_h5py_garbage() -> Any:
    """Free h5py objects that scanners leave in reference cycles now, on this thread: collected later on
    zarr's thread while a kerchunk scan holds h5py's lock, they deadlock (seen in test_readme's setup)."""
    import gc

    yield
    gc.collect()


@pytest.fixture(scope="module")
def ncfiles(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("nc")
    return [str(write_year(root / f"y{y}.nc", y)) for y in YEARS]


def open_ref(out: str, **kwargs: Any) -> Any:
    return xr.open_zarr(refstore.ReferenceStore(out, **kwargs), consolidated=False)


def test_netcdf_files_are_scanned_with_kerchunk(tmp_path: Path, ncfiles: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`refstore combine --concat-dim time -o OUT.json c.nc a.nc b.nc`: scanned (variables with a _FillValue
    included, which kerchunk 0.2.9 dropped under numpy >= 2.4), ordered by time, equal to open_mfdataset."""
    import kerchunk

    assert not _kerchunk_drops_fill_values(kerchunk.__version__), "the installed kerchunk drops _FillValue variables"
    out = str(tmp_path / "nc.json")
    assert main(["combine", "--concat-dim", "time", "-o", out, *ncfiles[::-1]]) == 0
    captured = capsys.readouterr()
    assert "scanning" not in captured.err  # no progress line when stderr is not a terminal
    with xr.open_mfdataset(ncfiles, combine="by_coords") as expected:
        got = open_ref(out)
        assert_same_as_xarray(got, expected)
        assert {"tas", "pr", "ts"} <= set(got.data_vars)
        assert got.tas.encoding["_FillValue"] == np.float32(1e20) and int(got.tas.isnull().sum()) > 0
    assert main(["combine", "--concat-dim", "time", "-o", out, "--progress", *ncfiles]) == 0
    assert "combine: scanning files: 3/3" in capsys.readouterr().err


def test_a_pattern_names_the_inputs(tmp_path: Path, ncfiles: list[str]) -> None:
    out = str(tmp_path / "glob.json")
    refstore.combine(str(Path(ncfiles[0]).parent / "y*.nc"), "time", out)
    with xr.open_mfdataset(ncfiles, combine="by_coords") as expected:
        assert_same_as_xarray(open_ref(out), expected)
    with pytest.raises(CombineError, match=r"nothing matches '.*nope\*.nc'"):
        refstore.combine(str(tmp_path / "nope*.nc"), "time", out)


def test_progress_line_is_drawn_on_a_terminal(tmp_path: Path, ncfiles: list[str]) -> None:
    """Without --progress, the scanning line appears when stderr is a terminal (a pseudo-terminal here)."""
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    code = "import sys; from refstore.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "combine", "--concat-dim", "time", "-o",
                           str(tmp_path / "tty.json"), *ncfiles], stderr=follower, stdout=subprocess.PIPE,
                          timeout=120, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    os.close(follower)
    drawn = b""
    while True:
        try:
            part = os.read(leader, 65536)
        except OSError:
            break
        if not part:
            break
        drawn += part
    os.close(leader)
    assert done.returncode == 0
    assert b"combine: scanning files: 3/3" in drawn


def test_kerchunk_versions_known_to_drop_fill_values() -> None:
    newer_numpy = tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4)
    assert _kerchunk_drops_fill_values("0.2.9") is newer_numpy
    assert not _kerchunk_drops_fill_values("0.2.10")
    assert not _kerchunk_drops_fill_values("0.3.0.dev1")


def test_netcdf_files_are_scanned_with_virtualizarr(tmp_path: Path, ncfiles: list[str]) -> None:
    """VirtualiZarr's parser gives the same values and masks (it records the netCDF default fill of the
    integer variable, where kerchunk records none; that is its scan, not the combination)."""
    out = str(tmp_path / "vz.json")
    refstore.combine(ncfiles[::-1], "time", out, scanner="virtualizarr")
    with xr.open_mfdataset(ncfiles, combine="by_coords") as expected:
        got = open_ref(out).load()
        xr.testing.assert_identical(got, expected.load())
        for name in ("tas", "pr", "ts"):
            assert got[name].encoding["_FillValue"] == expected[name].encoding["_FillValue"]
            assert got[name].encoding["dtype"] == expected[name].encoding["dtype"]


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_virtualizarr_kerchunk_output(tmp_path: Path, ncfiles: list[str], fmt: str) -> None:
    from obstore.store import LocalStore
    from virtualizarr import open_virtual_dataset
    from virtualizarr.parsers import HDFParser

    try:
        from obspec_utils.registry import ObjectStoreRegistry
    except ImportError:  # VirtualiZarr before 2.6
        from virtualizarr.registry import ObjectStoreRegistry

    manifests = []
    for k, f in enumerate(ncfiles):
        registry = ObjectStoreRegistry({"file://": LocalStore()})
        with open_virtual_dataset("file://" + f, registry=registry, parser=HDFParser()) as vds:
            path = tmp_path / (f"vz{k}.json" if fmt == "json" else f"vz{k}.parq")
            vds.vz.to_kerchunk(str(path), format=fmt)
        manifests.append(str(path))
    out = str(tmp_path / "combined.json")
    _, layouts = combine_with_layout(manifests, "time", out)
    assert {a.name: a.how for a in layouts}["time"] == "inlined"
    with xr.open_mfdataset(ncfiles, combine="by_coords") as expected:
        xr.testing.assert_identical(open_ref(out).load(), expected.load())


def _zarr_stores(root: Path, ncfiles: list[str], zarr_format: int, chunk: int | None) -> list[str]:
    stores = []
    for f in ncfiles:
        with xr.open_dataset(f) as ds:
            path = root / (Path(f).stem + f".v{zarr_format}.zarr")
            enc = {v: {"chunks": (chunk, 3, 4)} for v in ("tas", "pr", "ts", "cnt")} if chunk else None
            ds.to_zarr(path, zarr_format=zarr_format, mode="w", encoding=enc)
        stores.append(str(path))
    return stores


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_stores(tmp_path: Path, zarr_format: int) -> None:
    """Aligned zarr stores give plain references to their chunk files (fsspec's own ReferenceFileSystem reads
    them); misaligned ones virtual arrays that name the stores ({"zarr": path}) rather than copy them."""
    aligned = [str(write_year(tmp_path / f"a{y}.nc", y)) for y in ALIGNED_YEARS]
    stores = _zarr_stores(tmp_path / "aligned", aligned, zarr_format, chunk=73)
    out = str(tmp_path / "flat.json")
    _, layouts = combine_with_layout(stores[::-1], "time", out)
    assert {a.name for a in layouts if a.how == "virtual"} == set()
    refs = json.loads(Path(out).read_text())["refs"]
    assert not any(".sources" in k for k in refs)
    with xr.open_mfdataset(stores, engine="zarr", combine="by_coords") as expected:
        xr.testing.assert_identical(open_ref(out).load(), expected.load())
        fs = FsspecRFS(out)
        via_fsspec = xr.open_dataset(fs.get_mapper(""), engine="zarr", consolidated=False)
        xr.testing.assert_identical(via_fsspec.load(), expected.load())
    files = [str(write_year(tmp_path / f"m{y}.nc", y)) for y in YEARS]
    mixed = _zarr_stores(tmp_path / "mixed", files, zarr_format, chunk=None)
    out = str(tmp_path / "mixed.json")
    _, layouts = combine_with_layout(mixed, "time", out)
    assert {a.name for a in layouts if a.how == "virtual"} == {"tas", "pr", "ts", "cnt"}
    definition = json.loads(refstore.Manifest.open(out).get("tas/refstore.virtual.json"))
    assert [layer["source"] for layer in definition["layers"]] == [
        {"zarr": str(Path(s).resolve()), "path": "tas"} for s in mixed]
    with xr.open_mfdataset(mixed, engine="zarr", combine="by_coords") as expected:
        xr.testing.assert_identical(open_ref(out).load(), expected.load())


@pytest.mark.parametrize("remote", ["http", "s3"], indirect=True)
def test_remote_zarr_stores(tmp_path: Path, remote: Any) -> None:
    """Zarr v2 stores by URL (HTTP cannot list: chunks are found from the grid); the result references the
    remote chunk objects."""
    aligned = [str(write_year(tmp_path / f"a{y}.nc", y)) for y in ALIGNED_YEARS]
    stores = _zarr_stores(tmp_path / "z", aligned, 2, chunk=73)
    urls = [remote.upload(s) for s in stores]
    out = str(tmp_path / "remote.json")
    _, layouts = combine_with_layout(urls, "time", out, storage_options=remote.storage_options)
    assert {a.name for a in layouts if a.how == "virtual"} == set()
    refs = json.loads(Path(out).read_text())["refs"]
    assert refs["tas/0.0.0"] == [f"{urls[0]}/tas/0.0.0"]
    with xr.open_mfdataset(stores, engine="zarr", combine="by_coords") as expected:
        got = open_ref(out, remote_options=remote.storage_options)
        xr.testing.assert_identical(got.load(), expected.load())
    # misaligned (whole-year chunks): virtual arrays naming the remote stores, read back through them
    files = [str(write_year(tmp_path / f"m{y}.nc", y)) for y in YEARS]
    mixed = [remote.upload(s) for s in _zarr_stores(tmp_path / "m", files, 2, chunk=None)]
    out = str(tmp_path / "remote_mixed.json")
    _, layouts = combine_with_layout(mixed, "time", out, storage_options=remote.storage_options)
    assert {a.name for a in layouts if a.how == "virtual"} == {"tas", "pr", "ts", "cnt"}
    definition = json.loads(refstore.Manifest.open(out).get("tas/refstore.virtual.json"))
    assert [layer["source"]["zarr"] for layer in definition["layers"]] == mixed
    assert "secret" not in json.dumps(definition)
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        got = open_ref(out, remote_options=remote.storage_options)
        xr.testing.assert_identical(got.load(), expected.load())


def test_netcdf_files_over_http(tmp_path: Path, ncfiles: list[str], http: Any) -> None:
    """netCDF files given by URL are scanned over HTTP; the result references the URLs."""
    urls = []
    for f in ncfiles:
        shutil.copy(f, http.root / Path(f).name)
        urls.append(f"{http.url}/{Path(f).name}")
    out = str(tmp_path / "http.json")
    refstore.combine(urls[::-1], "time", out)
    assert {ref.url for ref in refstore.Manifest.open(out).values() if isinstance(ref, refstore.Reference)} == set(urls)
    with xr.open_mfdataset(ncfiles, combine="by_coords") as expected:
        assert_same_as_xarray(open_ref(out), expected)


def test_credentials_are_not_written_into_definitions() -> None:
    opts = {"key": "AKIA", "secret": "s", "anon": False, "client_kwargs": {"endpoint_url": "http://x",
                                                                          "aws_session_token": "t"}}
    assert public_options(opts) == {"anon": False, "client_kwargs": {"endpoint_url": "http://x"}}


def test_kinds_of_input(tmp_path: Path, ncfiles: list[str]) -> None:
    nameless = tmp_path / "data"  # a netCDF4 file without a suffix: recognized by its signature
    shutil.copy(ncfiles[0], nameless)
    assert kind_of(str(nameless)) == "hdf5"
    assert kind_of(ncfiles[0]) == "hdf5"
    stores = _zarr_stores(tmp_path, ncfiles[:1], 2, chunk=None)
    assert kind_of(stores[0]) == "zarr"  # consolidated zarr 2
    m = scan_file(ncfiles[0], "hdf5")
    refstore.Manifest.from_dict(m).save(str(tmp_path / "m.parq"))
    assert kind_of(str(tmp_path / "m.parq")) == "manifest"  # a kerchunk parquet manifest has .zmetadata too
    assert kind_of({"version": 1, "refs": {}}) == "manifest"
    assert kind_of("https://example.org/data/tas_2003.nc") == "hdf5"
    assert kind_of("s3://bucket/tas.zarr") == "zarr"
    assert kind_of("s3://bucket/tas.json") == "manifest"


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nc"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    out = tmp_path / "out.json"
    with pytest.raises(CombineError, match=r"kerchunk could not scan '.*broken.nc'"):
        refstore.combine([str(broken), str(broken)], "time", str(out))
    assert not out.exists()


def test_sharded_zarr_3_stores(tmp_path: Path) -> None:
    stores = []
    for k in range(2):
        g = zarr.open_group(str(tmp_path / f"sh{k}.zarr"), mode="w", zarr_format=3)
        t = g.create_array("time", shape=(20,), chunks=(20,), dtype="i8", dimension_names=("time",))
        t[:] = np.arange(20) + 20 * k
        a = g.create_array("tas", shape=(20, 4), chunks=(5, 4), shards=(10, 4), dtype="f4", dimension_names=("time", "x"))
        a[:] = np.arange(80, dtype="f4").reshape(20, 4) + 100 * k
        stores.append(str(tmp_path / f"sh{k}.zarr"))
    out = str(tmp_path / "sharded.json")
    _, layouts = combine_with_layout(stores[::-1], "time", out)
    assert {a.name: a.reason for a in layouts}["tas"].startswith("an input is sharded")
    with xr.open_mfdataset(stores, engine="zarr", combine="by_coords", consolidated=False) as expected:
        xr.testing.assert_identical(open_ref(out).load(), expected.load())
