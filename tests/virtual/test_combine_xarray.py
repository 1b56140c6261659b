"""``refstore.combine`` of kerchunk scans of netCDF files equals ``xr.open_mfdataset`` of the files.

Three yearly netCDF4 files (2004 is a leap year; 30-day chunks, so every year after the
first starts mid-chunk), zlib, CF time, ``_FillValue`` 1e20 with NaNs, a packed
``scale_factor``/``add_offset`` variable, a variable that is mostly missing values, an
integer variable with real zeros and no fill value (zarr 2 ``null``), and global and
variable attributes that differ between files. Each file is scanned with kerchunk's
``SingleHdf5ToZarr``, combined with refstore, and read with xarray through
``ReferenceStore`` and through ``reference://``; xarray's own ``open_mfdataset`` of the
files is the reference. Then the inputs refstore refuses, each naming file, variable
and field, with nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

pytest.importorskip("kerchunk.hdf")
pytest.importorskip("dask")
xr = pytest.importorskip("xarray")

import refstore  # noqa: E402
from refstore.cli import main  # noqa: E402
from refstore.errors import (  # noqa: E402
    CombineError,
    CoordinateOrderError,
    InputsDiffer,
    UnknownDimension,
)

YEARS = (2003, 2004, 2005)
#: The encoding fields compared with the netCDF files' (values decode with them).
ENCODING_FIELDS = ("dtype", "_FillValue", "missing_value", "scale_factor", "add_offset", "units", "calendar")


def _days_before(year: int) -> int:
    return sum(366 if y % 4 == 0 else 365 for y in range(2000, year))


def write_year(path: Path, year: int, *, seed: int | None = None, time_units: str = "days since 2000-01-01",
               calendar: str = "standard", chunk: int = 30, tas_dtype: str = "f4", tas_units: str = "K",
               tas_fill: float = 1e20, scale_factor: float = 0.01, time: np.ndarray | None = None,
               crs: bool = False) -> Path:
    """One year of daily data as netCDF4 (see the module docstring); returns the path."""
    rng = np.random.default_rng(year if seed is None else seed)
    days = 366 if year % 4 == 0 else 365
    if time is None:
        time = np.arange(days) + _days_before(year)
    days = len(time)
    tas = (rng.standard_normal((days, 3, 4)) + 280).astype(tas_dtype)
    tas[rng.random(tas.shape) < 0.02] = np.nan
    pr = rng.random((days, 3, 4))
    pr[rng.random(pr.shape) < 0.8] = np.nan  # mostly missing
    ts = rng.random((days, 3, 4)) * 40 + 250
    ts[rng.random(ts.shape) < 0.05] = np.nan
    cnt = rng.integers(0, 3, (days, 3, 4)).astype("i4")  # a third are real zeros
    dims = ("time", "lat", "lon")
    ds = xr.Dataset(
        {
            "tas": (dims, tas, {"units": tas_units, "long_name": "air temperature", "comment": f"year {year}"}),
            "pr": (dims, pr, {"units": "kg m-2 s-1", "long_name": "precipitation"}),
            "ts": (dims, ts, {"units": "K", "long_name": "surface temperature"}),
            "cnt": (dims, cnt, {"units": "1", "long_name": "count"}),
        },
        coords={
            "time": ("time", time.astype("i8"), {"standard_name": "time", "units": time_units, "calendar": calendar}),
            "lat": ("lat", np.array([-10.0, 0.0, 10.0]), {"units": "degrees_north", "standard_name": "latitude"}),
            "lon": ("lon", np.array([0.0, 90.0, 180.0, 270.0]), {"units": "degrees_east"}),
        },
        attrs={"Conventions": "CF-1.8", "title": f"test data {year}", "history": f"written for {year}",
               "institution": "refstore tests"},
    )
    if crs:
        ds["crs"] = ((), np.int32(0), {"grid_mapping_name": "latitude_longitude"})
    ds = xr.decode_cf(ds)
    chunks = (chunk, 3, 4)
    encoding: dict[str, Any] = {
        "tas": {"_FillValue": tas_fill, "zlib": True, "chunksizes": chunks},
        "pr": {"_FillValue": 1e20, "missing_value": 1e20, "zlib": True, "chunksizes": chunks},
        "ts": {"dtype": "i2", "scale_factor": scale_factor, "add_offset": 270.0, "_FillValue": -32767,
               "zlib": True, "chunksizes": chunks},
        "cnt": {"_FillValue": None, "zlib": True, "chunksizes": chunks},
        "time": {"_FillValue": None, "units": time_units, "calendar": calendar, "dtype": "i8"},
        "lat": {"_FillValue": None},
        "lon": {"_FillValue": None},
    }
    ds.to_netcdf(path, format="NETCDF4", encoding=encoding)
    return path


def scan(nc: Path) -> str:
    """kerchunk's references for ``nc``, saved next to it as JSON; returns the JSON path."""
    from kerchunk.hdf import SingleHdf5ToZarr

    scanner = SingleHdf5ToZarr(str(nc), str(nc))
    try:
        refs = scanner.translate()
    finally:
        scanner.close()  # not left to the garbage collector, which may free it on zarr's thread (deadlock)
    out = nc.with_suffix(".json")
    out.write_text(json.dumps(refs))
    return str(out)


@pytest.fixture(scope="module")
def years(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    """(netCDF files, their kerchunk manifests), in time order."""
    root = tmp_path_factory.mktemp("years")
    files = [write_year(root / f"y{year}.nc", year) for year in YEARS]
    return [str(f) for f in files], [scan(f) for f in files]


def open_combined(out: str, route: str) -> Any:
    if route == "store":
        return xr.open_zarr(refstore.ReferenceStore(out), consolidated=False)
    assert route == "reference://"
    return xr.open_dataset("reference://", engine="zarr", chunks={},
                           backend_kwargs={"storage_options": {"fo": out}, "consolidated": False})


def assert_same_as_xarray(got: Any, expected: Any) -> None:
    """Values, masks, dtypes, coordinates, attributes (global and per variable), dims and decoding encodings."""
    got, expected = got.load(), expected.load()
    xr.testing.assert_identical(got, expected)
    for name, var in expected.variables.items():
        assert "_ARRAY_DIMENSIONS" not in got[name].attrs
        if not var.encoding:  # xarray's merge of a variable (a scalar crs) keeps no encoding to compare with
            continue
        for field in ENCODING_FIELDS:
            ours, theirs = got[name].encoding.get(field), var.encoding.get(field)
            if field == "dtype":
                assert np.dtype(ours) == np.dtype(theirs), (name, field, ours, theirs)
            else:
                assert ours == theirs or (ours is not None and np.isnan(ours) and np.isnan(theirs)), (
                    name, field, ours, theirs)


@pytest.mark.parametrize("route", ["store", "reference://"])
@pytest.mark.parametrize("order", ["given", "reversed", "shuffled"])
def test_combine_equals_open_mfdataset(tmp_path: Path, years: Any, route: str, order: str) -> None:
    files, manifests = years
    inputs = {"given": manifests, "reversed": manifests[::-1], "shuffled": [manifests[1], manifests[2], manifests[0]]}[order]
    out = str(tmp_path / "combined.json")
    refstore.combine(inputs, "time", out)
    got = open_combined(out, route)
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        assert_same_as_xarray(got, expected)
        # the symptoms issue 14 and 18 reported, spelled out
        assert int(got.tas.isnull().sum()) == int(expected.tas.isnull().sum()) > 0
        assert float(got.tas.max()) < 1e3  # no unmasked 1e20
        assert float(got.pr.isnull().mean()) > 0.7  # the mostly-missing variable stays mostly missing
        assert got.cnt.dtype == np.int32 and int((got.cnt == 0).sum()) == int((expected.cnt == 0).sum()) > 0
        assert got.attrs["title"] == "test data 2003"  # the first in time, whatever the input order
        assert got.sizes["time"] == 365 + 366 + 365
        assert got.time.encoding["units"] == "days since 2000-01-01" and got.time.encoding["calendar"] == "standard"


def test_result_keeps_zarr_2_metadata(tmp_path: Path, years: Any) -> None:
    """kerchunk's scans are zarr 2, and so is the result: fill_value (null included) means the same to
    every reader, and dimension names are in _ARRAY_DIMENSIONS only."""
    _, manifests = years
    m = refstore.combine(manifests, "time", None)
    g = zarr.open_group(refstore.ReferenceStore(m.to_dict()), mode="r")
    assert g.metadata.zarr_format == 2
    assert g.attrs["Conventions"] == "CF-1.8"
    assert g["cnt"].metadata.fill_value is None
    assert g["tas"].metadata.fill_value == np.float32(1e20)
    assert g["tas"].attrs["_ARRAY_DIMENSIONS"] == ["time", "lat", "lon"]
    assert json.loads(m.get("cnt/.zarray"))["fill_value"] is None
    np.testing.assert_array_equal(g["lat"][:], [-10.0, 0.0, 10.0])


def test_zarr_3_result_equals_open_mfdataset_too(tmp_path: Path, years: Any) -> None:
    """Asked for zarr 3, the result carries _FillValue as xarray writes it, and fill 0 without _FillValue
    where the inputs said null; no _ARRAY_DIMENSIONS."""
    files, manifests = years
    out = str(tmp_path / "v3.json")
    refstore.combine(manifests[::-1], "time", out, zarr_format=3)
    g = zarr.open_group(refstore.ReferenceStore(out), mode="r")
    assert g.metadata.zarr_format == 3
    assert g["tas"].metadata.dimension_names == ("time", "lat", "lon")
    assert "_ARRAY_DIMENSIONS" not in g["tas"].attrs and "_FillValue" not in g["cnt"].attrs
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        got = open_combined(out, "store")
        xr.testing.assert_identical(got.load(), expected.load())


def test_cli_combine_equals_open_mfdataset(tmp_path: Path, years: Any, capsys: pytest.CaptureFixture[str]) -> None:
    files, manifests = years
    out = str(tmp_path / "cli.json")
    assert main(["combine", *manifests[::-1], "--concat-dim", "time", "-o", out]) == 0
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        assert_same_as_xarray(open_combined(out, "reference://"), expected)


def test_keep_order_equals_nested(tmp_path: Path, years: Any) -> None:
    files, manifests = years
    order = [1, 0, 2]
    out = str(tmp_path / "nested.json")
    refstore.combine([manifests[k] for k in order], "time", out, keep_order=True)
    with xr.open_mfdataset([files[k] for k in order], combine="nested", concat_dim="time") as expected:
        got = open_combined(out, "store")
        assert_same_as_xarray(got, expected)
        assert got.attrs["title"] == "test data 2004"


@pytest.mark.parametrize("combine_attrs", ["drop_conflicts", "drop", "no_conflicts", "identical"])
def test_combine_attrs_as_xarray(tmp_path: Path, years: Any, combine_attrs: str) -> None:
    files, manifests = years
    out = str(tmp_path / "attrs.json")
    try:
        with xr.open_mfdataset(files, combine="by_coords", combine_attrs=combine_attrs) as ds:
            expected = ds.load()
    except ValueError:  # xarray refuses the differing title and history: so does refstore
        with pytest.raises(InputsDiffer, match=r"attribute '(title|history|comment)'"):
            refstore.combine(manifests, "time", out, combine_attrs=combine_attrs)
        assert not Path(out).exists()
        return
    refstore.combine(manifests, "time", out, combine_attrs=combine_attrs)
    got = open_combined(out, "store")
    assert_same_as_xarray(got, expected)
    if combine_attrs == "drop_conflicts":
        assert "title" not in got.attrs and got.attrs["institution"] == "refstore tests"
        assert "comment" not in got.tas.attrs and got.tas.attrs["units"] == "K"


def test_combining_combined_results(tmp_path: Path, years: Any) -> None:
    """A tree reduction: (2003 + 2004) + 2005. The combined input's virtual arrays are joined layer by layer
    (their sources embedded again), not read through the view; this crashed before."""
    files, manifests = years
    first = str(tmp_path / "first.json")
    refstore.combine(manifests[:2], "time", first)
    out = str(tmp_path / "tree.json")
    refstore.combine([manifests[2], first], "time", out)
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        assert_same_as_xarray(open_combined(out, "reference://"), expected)
    refs = json.loads(Path(out).read_text())
    refs = refs.get("refs", refs)
    # the three years' sources, each embedded once, are one run of the definition
    tas = json.loads(refs["tas/refstore.virtual.json"])
    assert [list(layer) for layer in tas["layers"]] == [["run"]]
    assert tas["layers"][0]["run"]["lengths"] == [365, 366, 365]
    assert {k.split("/")[2] for k in refs if k.startswith("tas/.sources/")} == {"0", "1", "2"}


def test_misaligned_and_differently_chunked_inputs(tmp_path: Path) -> None:
    """2004 chunked by 20 days, the others by 30 (and by 365 for time): chunks are assembled where
    they do not align, and xarray sees the same."""
    files = [write_year(tmp_path / f"c{y}.nc", y, chunk=20 if y == 2004 else 30) for y in YEARS]
    manifests = [scan(f) for f in files]
    out = str(tmp_path / "mixed.json")
    refstore.combine(manifests, "time", out)
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        assert_same_as_xarray(open_combined(out, "reference://"), expected)


def test_scalar_variables_are_copied(tmp_path: Path) -> None:
    """A 0-d grid-mapping variable (identical in every file) is copied from the first input, as xarray
    merges it (xarray's new default data_vars=None; the deprecated "all" would broadcast it along time)."""
    files = [write_year(tmp_path / f"s{y}.nc", y, crs=True) for y in YEARS]
    manifests = [scan(f) for f in files]
    out = str(tmp_path / "crs.json")
    refstore.combine(manifests, "time", out)
    with xr.open_mfdataset(files, combine="by_coords", data_vars="minimal",
                           compat="no_conflicts") as expected:
        got = open_combined(out, "store")
        assert_same_as_xarray(got, expected)
        assert got.crs.dims == () and got.crs.attrs["grid_mapping_name"] == "latitude_longitude"


@pytest.mark.parametrize(("flatten", "layout"), [(False, "auto"), (False, "virtual"), (True, "auto")])
def test_real_zeros_are_not_masked(tmp_path: Path, flatten: bool, layout: str) -> None:
    """Issue 18's data loss: two files with pr = [0, 1] (no fill value) read [0, 1, 0, 1], lat = 0 stays 0
    and time[0] (0 days since) stays a date, virtual (a run of the two sources) and flattened alike."""
    files = []
    for k in range(2):
        ds = xr.Dataset(
            {"pr": (("time", "lat"), np.array([[0.0], [1.0]]))},
            coords={"time": ("time", np.array([0, 1]) + 2 * k, {"units": "days since 2000-01-01"}),
                    "lat": ("lat", [0.0])},
        )
        path = tmp_path / f"z{k}.nc"
        ds.to_netcdf(path, encoding={v: {"_FillValue": None} for v in ("pr", "time", "lat")})
        files.append(path)
    manifests = [scan(f) for f in files]
    out = str(tmp_path / "zeros.json")
    refstore.combine(manifests, "time", out, flatten=flatten, layout=layout)
    if layout == "virtual":
        definition = json.loads(json.loads(Path(out).read_text())["refs"]["pr/refstore.virtual.json"])
        run = definition["layers"][0]["run"]
        assert run["lengths"] == [2, 2] and run["metadata"][0][".zarray"]["fill_value"] is None
    got = open_combined(out, "reference://").load()
    np.testing.assert_array_equal(got.pr.values[:, 0], [0.0, 1.0, 0.0, 1.0])
    assert got.lat.values.tolist() == [0.0]
    assert str(got.time.values[0])[:10] == "2000-01-01"
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        assert_same_as_xarray(got, expected)


# -- refused inputs: each error names the input file, the variable and the field; nothing is written


def _refused(tmp_path: Path, manifests: list[str], error: type[Exception], match: str, **kwargs: Any) -> None:
    out = tmp_path / "refused.json"
    with pytest.raises(error, match=match):
        refstore.combine(manifests, kwargs.pop("concat_dim", "time"), str(out), **kwargs)
    assert not out.exists()


def test_unknown_concat_dim_lists_the_dimensions(tmp_path: Path, years: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, manifests = years
    _refused(tmp_path, manifests, UnknownDimension,
             r"'tim' is not a dimension of the inputs; their dimensions are \['lat', 'lon', 'time'\]", concat_dim="tim")
    assert main(["combine", *manifests, "--concat-dim", "tim", "-o", str(tmp_path / "c.json")]) == 1
    assert "['lat', 'lon', 'time']" in capsys.readouterr().err
    _refused(tmp_path, manifests, UnknownDimension, r"'time' is already a dimension", new_dim=True)
    assert issubclass(UnknownDimension, ValueError)


def test_overlapping_and_duplicated_inputs(tmp_path: Path, years: Any) -> None:
    _, manifests = years
    _refused(tmp_path, [manifests[0], manifests[1], manifests[0]], CoordinateOrderError,
             r"overlap along 'time': the coordinate of '.*y2003.json' starts at 1096, before '.*y2003.json' ends \(at 1460\)")
    shifted = scan(write_year(tmp_path / "shifted.nc", 2004, time=np.arange(366) + _days_before(2004) - 10))
    _refused(tmp_path, [shifted, manifests[0]], CoordinateOrderError,
             r"'.*shifted.json' starts at 1451, before '.*y2003.json' ends \(at 1460\)")
    touching = scan(write_year(tmp_path / "touching.nc", 2004, time=np.arange(366) + _days_before(2004) - 1))
    _refused(tmp_path, [manifests[0], touching], CoordinateOrderError,
             r"the coordinate of '.*touching.json' repeats 1460, the last value of '.*y2003.json'")


def test_non_monotonic_input_is_refused_unless_order_is_kept(tmp_path: Path, years: Any) -> None:
    files, manifests = years
    time = np.arange(365) + _days_before(2005)
    time[[10, 11]] = time[[11, 10]]
    bad = write_year(tmp_path / "swapped.nc", 2005, time=time)
    inputs = [manifests[0], manifests[1], scan(bad)]
    _refused(tmp_path, inputs, CoordinateOrderError,
             r"'time' coordinate of '.*swapped.json' is not strictly monotonic: 1838 at index 10 is followed by 1837")
    out = str(tmp_path / "kept.json")
    refstore.combine(inputs, "time", out, keep_order=True)
    with xr.open_mfdataset([files[0], files[1], str(bad)], combine="nested", concat_dim="time") as expected:
        assert_same_as_xarray(open_combined(out, "store"), expected)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"tas_dtype": "f8"}, r"variable 'tas' of '.*odd.json' differs from '.*y2003.json' in dtype: 'float64' in"),
        ({"tas_units": "degC"}, r"variable 'tas' of '.*odd.json' differs .* in attribute 'units': 'degC' in"),
        ({"time_units": "days since 2005-01-01"}, r"variable 'time' of '.*odd.json' .* in attribute 'units'"),
        ({"calendar": "noleap"}, r"variable 'time' of '.*odd.json' .* in attribute 'calendar': 'noleap' in"),
        ({"scale_factor": 0.02}, r"variable 'ts' of '.*odd.json' .* in attribute 'scale_factor': 0.02 in"),
        ({"tas_fill": -999.0}, r"variable 'tas' of '.*odd.json' .* in fill_value \(xarray's _FillValue\): "),
    ],
)
def test_differing_variables_are_refused(tmp_path: Path, years: Any, change: dict[str, Any], match: str) -> None:
    _, manifests = years
    if "time_units" in change:  # the same dates in other units
        change["time"] = np.arange(365) + _days_before(2005) - _days_before(2005)
    odd = scan(write_year(tmp_path / "odd.nc", 2005, **change))
    _refused(tmp_path, [manifests[0], manifests[1], odd], InputsDiffer, match)


def test_missing_variable_and_differing_coordinates_are_refused(tmp_path: Path, years: Any) -> None:
    _, manifests = years
    refs = json.loads(Path(manifests[2]).read_text())
    refs["refs"] = {k: v for k, v in refs["refs"].items() if not k.startswith("pr/")}
    no_pr = tmp_path / "no_pr.json"
    no_pr.write_text(json.dumps(refs))
    _refused(tmp_path, [manifests[0], str(no_pr)], CombineError, r"variable 'pr' of '.*y2003.json' is missing from '.*no_pr.json'")
    refs = json.loads(Path(manifests[2]).read_text())
    refs["refs"]["lat/0"] = "base64:" + __import__("base64").b64encode(np.array([-5.0, 0, 5]).tobytes()).decode()
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps(refs))
    _refused(tmp_path, [manifests[0], str(moved)], InputsDiffer,
             r"variable 'lat' has no 'time' dimension, so it must be identical in every input, but its values in '.*moved.json' differ")


def test_save_virtual_takes_plain_zarr_arrays(tmp_path: Path, years: Any) -> None:
    """Issue 14: save_virtual({"lat": zarr_array}) raised AttributeError 'encoding_docs'."""
    _, manifests = years
    g = zarr.open_group(refstore.ReferenceStore(manifests[0]), mode="r")
    m = refstore.save_virtual({"lat": g["lat"], "tas": g["tas"]}, attrs={"title": "x"})
    back = zarr.open_group(refstore.ReferenceStore(m.to_dict()), mode="r")
    np.testing.assert_array_equal(back["lat"][:], g["lat"][:])
    np.testing.assert_array_equal(back["tas"][:], g["tas"][:])
    assert back.attrs["title"] == "x" and back["tas"].attrs["units"] == "K"
    assert m.get("tas/refstore.virtual.json") is None  # saved as itself, not as a virtual array
    v3 = zarr.open_group(refstore.ReferenceStore(refstore.save_virtual({"lat": g["lat"]}, zarr_format=3).to_dict()), mode="r")
    assert v3.metadata.zarr_format == 3 and v3["lat"].metadata.dimension_names == ("lat",)
    np.testing.assert_array_equal(v3["lat"][:], g["lat"][:])
    # an array its store serves as a virtual array is saved by its layers (sources embedded again)
    combined = zarr.open_group(refstore.open_virtual(refstore.combine(manifests, "time").to_dict()), mode="r")
    again = zarr.open_group(refstore.ReferenceStore(refstore.save_virtual({"t": combined["tas"]}).to_dict()), mode="r")
    np.testing.assert_array_equal(again["t"][:], combined["tas"][:])
