"""Parallel builds (``refstore.build.combine_parallel``, ``refstore build netcdf``, ``refstore combine
--scheduler/--workers``) on a dask ``LocalCluster`` with two worker processes and on a local process
pool: the result equals ``xr.open_mfdataset`` of the netCDF4 files, every failed input is reported
by name and cause, and real zeros stay zeros (issue 18's fill-value data loss)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("kerchunk.hdf")
xr = pytest.importorskip("xarray")
distributed = pytest.importorskip("distributed")

import refstore  # noqa: E402
from refstore.build import combine_parallel  # noqa: E402
from refstore.cli import main  # noqa: E402
from refstore.errors import CoordinateOrderError, InputsDiffer, InputsFailed  # noqa: E402

NFILES = 8
STEPS = 4
LON = 64


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """Two worker processes of one thread each, shared by the module's tests, closed after them."""
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=":0",
                                  death_timeout=120) as cluster, distributed.Client(cluster, timeout=120) as c:
        yield c


def write(path: Path, k: int, *, steps: int = STEPS, start: int | None = None, units: str = "K") -> str:
    """A small netCDF4 file (xarray with netCDF4): ``tas`` with NaNs and a _FillValue, ``pr`` with real
    zeros and no fill value (zarr 2 ``null`` once scanned), ``time`` and ``lat`` (with a 0) coordinates."""
    rng = np.random.default_rng(k)
    start = k * STEPS if start is None else start
    # chunks of a few KB: larger than what kerchunk inlines, so the result references the files
    tas = (rng.standard_normal((steps, 3, LON)) + 280).astype("f4")
    tas[0, 1, :5] = np.nan
    dims = ("time", "lat", "lon")
    ds = xr.Dataset(
        {"tas": (dims, tas, {"units": units}),
         "pr": (dims, np.tile((np.arange(steps) % 2).astype("f8")[:, None, None], (1, 3, LON)))},
        coords={"time": ("time", np.arange(start, start + steps), {"units": "days since 2000-01-01"}),
                "lat": ("lat", [-10.0, 0.0, 10.0]), "lon": ("lon", np.arange(LON, dtype="f8"))},
        attrs={"title": f"file {k}"},
    )
    ds.to_netcdf(path, engine="netcdf4", encoding={"pr": {"_FillValue": None}, "lat": {"_FillValue": None}, "lon": {"_FillValue": None},
                                                   "time": {"_FillValue": None}, "tas": {"zlib": True}})
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("parallel")
    return [write(root / f"f{k:02d}.nc", k) for k in range(NFILES)]


def open_ref(out: str, **kwargs: Any) -> Any:
    return xr.open_zarr(refstore.ReferenceStore(out, **kwargs), consolidated=False)


def assert_same(out: str, files: list[str], **kwargs: Any) -> None:
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        xr.testing.assert_identical(open_ref(out, **kwargs).load(), expected.load())


def test_cluster_build_is_a_tree_and_equals_open_mfdataset(tmp_path: Path, client: Any, files: list[str]) -> None:
    """Inputs given out of order; fan_in=3 makes two levels of combining tasks in the workers."""
    out = str(tmp_path / "tree.json")
    report = combine_parallel(files[::-1], "time", out, client=client, fan_in=3, show_progress=False)
    assert report.tree and report.failures == [] and report.inputs == NFILES
    assert {a.name: a.how for a in report.layouts} == {
        "tas": "references", "pr": "references", "lat": "references", "lon": "references", "time": "inlined"}
    assert_same(out, files)
    assert {r.url for r in refstore.Manifest.open(out).values() if isinstance(r, refstore.Reference)} == set(files)
    got = open_ref(out)
    np.testing.assert_array_equal(got.pr.values[:, 1, 0], np.tile([0.0, 1.0], NFILES * STEPS // 2))
    assert got.lat.values.tolist() == [-10.0, 0.0, 10.0]
    # the first input in time order gives the global attributes (combine_attrs="override"), as in xarray
    assert got.attrs["title"] == "file 0"


def test_real_zeros_are_not_masked_on_the_cluster(tmp_path: Path, client: Any) -> None:
    """Issue 18: files with pr = [0, 1] and no fill value read [0, 1, 0, 1, ...], not NaN, through the
    tree (4 files, fan_in=2) and without it (2 files)."""
    paths = [write(tmp_path / f"z{k}.nc", k, steps=2, start=2 * k) for k in range(4)]
    for some, fan_in in ((paths[:2], 32), (paths, 2)):
        out = str(tmp_path / f"zeros{len(some)}.json")
        report = combine_parallel(some, "time", out, client=client, fan_in=fan_in, show_progress=False)
        assert report.tree
        refs = json.loads(Path(out).read_text())["refs"]
        assert json.loads(refs["pr/.zarray"])["fill_value"] is None
        got = open_ref(out).load()
        np.testing.assert_array_equal(got.pr.values[:, 0, 0], [0.0, 1.0] * len(some))
        assert str(got.time.values[0])[:10] == "2000-01-01"
        assert_same(out, some)


def test_process_pool_from_the_command_line(tmp_path: Path, files: list[str], capsys: Any) -> None:
    """``refstore build netcdf 'GLOB' --workers 2``: a local process pool, written as parquet."""
    out = str(tmp_path / "pool.parq")
    pattern = str(Path(files[0]).parent / "f*.nc")
    assert main(["build", "netcdf", pattern, "--concat-dim", "time", "-o", out, "--workers", "2",
                 "--fan-in", "3", "--scanner", "kerchunk"]) == 0
    said = capsys.readouterr().out
    assert f"wrote {out} from {NFILES} inputs" in said and "local process pool" in said
    assert "combined as a tree" in said
    assert_same(out, files)


def test_every_failed_input_is_named_with_its_cause(tmp_path: Path, client: Any, files: list[str],
                                                    capsys: Any) -> None:
    """A corrupt HDF5 file and a missing one: the build fails listing both, with causes, and writes
    nothing; asked to continue, it combines the rest and the report still lists them."""
    corrupt = tmp_path / "corrupt.nc"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    missing = str(tmp_path / "missing.nc")
    inputs = [*files[:4], str(corrupt), missing]
    out = tmp_path / "failed.json"
    with pytest.raises(InputsFailed) as info:
        combine_parallel(inputs, "time", str(out), client=client, show_progress=False)
    message = str(info.value)
    assert "2 of 6 inputs could not be scanned or opened" in message
    assert f"{str(corrupt)!r}: " in message and f"{missing!r}: " in message
    assert sorted(label for label, _ in info.value.failures) == sorted([repr(str(corrupt)), repr(missing)])
    causes = dict(info.value.failures)
    assert "kerchunk could not scan" in causes[repr(str(corrupt))]
    assert "missing.nc" in causes[repr(missing)]
    assert not out.exists()
    report = combine_parallel(inputs, "time", str(out), client=client, on_error="continue", show_progress=False)
    assert [f.label for f in report.failures] == [repr(str(corrupt)), repr(missing)]
    assert_same(str(out), files[:4])
    # the command line: failing lists them on stderr, exit 1; --keep-going writes and still lists them
    cli_out = str(tmp_path / "cli.json")
    assert main(["combine", *inputs, "--concat-dim", "time", "-o", cli_out, "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "corrupt.nc" in err and "missing.nc" in err and not Path(cli_out).exists()
    assert main(["combine", *inputs, "--concat-dim", "time", "-o", cli_out, "--workers", "2", "--keep-going"]) == 0
    captured = capsys.readouterr()
    assert "corrupt.nc" in captured.err and "missing.nc" in captured.err and "(left out: --keep-going)" in captured.err
    assert_same(cli_out, files[:4])


def test_inputs_that_differ_or_overlap_are_refused_by_name(tmp_path: Path, client: Any, files: list[str]) -> None:
    """Errors raised inside a combining task reach the caller with the files named; overlap between
    inputs in different runs is found from the coordinates' ends alone."""
    other = write(tmp_path / "kelvin.nc", NFILES, units="degC")
    with pytest.raises(InputsDiffer, match=r"'tas' of '.*kelvin.nc' differs .* in attribute 'units'"):
        combine_parallel([*files, other], "time", None, client=client, fan_in=3, show_progress=False)
    overlap = write(tmp_path / "overlap.nc", 0, start=STEPS * 2 + 1)
    with pytest.raises(CoordinateOrderError, match=r"overlap along 'time'.*overlap.nc"):
        combine_parallel([*files, overlap], "time", None, client=client, fan_in=3, show_progress=False)


def test_misaligned_inputs_fall_back_to_one_combine(tmp_path: Path, client: Any) -> None:
    """Inputs of different lengths with whole-file chunks cannot be plain references run by run: the
    builder says so and combines every input at once (virtual arrays), still equal to xarray."""
    paths = []
    start = 0
    for k, steps in enumerate((3, 4, 3, 5)):
        paths.append(write(tmp_path / f"m{k}.nc", k, steps=steps, start=start))
        start += steps
    out = str(tmp_path / "misaligned.json")
    report = combine_parallel(paths, "time", out, client=client, fan_in=2, show_progress=False)
    assert not report.tree and "cannot be written as plain references" in report.why_not_tree
    assert {a.name for a in report.layouts if a.how == "virtual"} >= {"tas"}
    assert_same(out, paths)


def test_s3_prefix_over_moto(tmp_path: Path, client: Any, files: list[str], s3_server: Any) -> None:
    """An S3 prefix ending in / names the netCDF files under it; workers scan them over moto."""
    for f in files[:6]:
        s3_server.upload(f, "parallel", "run")
    report = combine_parallel("s3://parallel/run/", "time", str(tmp_path / "s3.json"), client=client, fan_in=4,
                              storage_options=s3_server.storage_options, show_progress=False)
    assert report.inputs == 6 and report.tree
    urls = {r.url for r in refstore.Manifest.open(str(tmp_path / "s3.json")).values()
            if isinstance(r, refstore.Reference)}
    assert urls == {f"s3://parallel/run/{Path(f).name}" for f in files[:6]}
    assert_same(str(tmp_path / "s3.json"), files[:6], remote_options=s3_server.storage_options)
