"""``refstore combine`` writes flat kerchunk output wherever it is representable.

Aligned inputs (three non-leap years, 73-day chunks: every input starts on a chunk
boundary) give a plain kerchunk manifest, the same references kerchunk's
``MultiZarrToZarr`` writes, with the ``time`` coordinate inlined as MZZ inlines it;
fsspec's own ``ReferenceFileSystem`` (the class, not the ``reference://`` protocol,
which refstore replaces) reads it, JSON and parquet, and so does refstore, and both
equal ``xr.open_mfdataset``. Misaligned inputs (30-day chunks across 365/366-day
years) give mixed output: references and inlined coordinates where possible, virtual
arrays for the variables that need them, read right by refstore. Kerchunk-only output
refuses the latter, naming the variable and why.
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

from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS  # noqa: E402
from test_combine_xarray import YEARS, assert_same_as_xarray, scan, write_year  # noqa: E402

import refstore  # noqa: E402
from refstore.cli import main  # noqa: E402
from refstore.errors import CombineError, NotRepresentable  # noqa: E402
from refstore.virtual._combine import combine_with_layout  # noqa: E402

ALIGNED_YEARS = (2005, 2006, 2007)  # 365 days each: chunks of 73 fall on every input boundary
DATA_VARS = ("cnt", "pr", "tas", "ts")


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    root = tmp_path_factory.mktemp("aligned")
    files = [write_year(root / f"a{y}.nc", y, chunk=73) for y in ALIGNED_YEARS]
    return [str(f) for f in files], [scan(f) for f in files]


@pytest.fixture(scope="module")
def misaligned(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    root = tmp_path_factory.mktemp("misaligned")
    files = [write_year(root / f"m{y}.nc", y, chunk=30) for y in YEARS]
    return [str(f) for f in files], [scan(f) for f in files]


def open_with_fsspec(out: str) -> Any:
    """xarray over fsspec's own ReferenceFileSystem (no refstore involved in reading)."""
    fs = FsspecRFS(out)
    assert type(fs).__module__ == "fsspec.implementations.reference"
    return xr.open_dataset(fs.get_mapper(""), engine="zarr", consolidated=False, chunks={})


def open_with_refstore(out: str) -> Any:
    return xr.open_zarr(refstore.ReferenceStore(out), consolidated=False)


def refs_of(path: str) -> dict[str, Any]:
    d = json.loads(Path(path).read_text())
    return d.get("refs", d)


@pytest.mark.parametrize("suffix", [".json", ".parq"])
def test_aligned_inputs_give_plain_kerchunk(tmp_path: Path, aligned: Any, suffix: str) -> None:
    files, manifests = aligned
    out = str(tmp_path / f"flat{suffix}")
    manifest, layouts = combine_with_layout(manifests[::-1], "time", out)
    how = {a.name: a.how for a in layouts}
    assert how == {**dict.fromkeys(DATA_VARS, "references"), "lat": "references", "lon": "references",
                   "time": "inlined"}
    assert not [k for k in manifest.keys() if "refstore.virtual" in k or ".sources" in k]
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        assert_same_as_xarray(open_with_fsspec(out), expected)
        assert_same_as_xarray(open_with_refstore(out), expected)


def test_same_references_as_multizarrtozarr(tmp_path: Path, aligned: Any) -> None:
    """Every chunk key and reference MZZ writes, refstore writes; the inlined time holds the same values."""
    from kerchunk.combine import MultiZarrToZarr

    _, manifests = aligned
    mzz = MultiZarrToZarr(manifests, concat_dims=["time"], identical_dims=["lat", "lon"]).translate()
    theirs = refstore.Manifest.from_dict(mzz)
    ours = refstore.combine(manifests, "time", str(tmp_path / "ours.json"))
    chunk_keys = {k for k in theirs.keys() if not k.rsplit("/", 1)[-1].startswith(".z") and not k.startswith("time/")}
    assert chunk_keys == {k for k in ours.keys() if not k.rsplit("/", 1)[-1].startswith(".z")
                          and not k.startswith("time/")}
    assert len(chunk_keys) > 5 * len(DATA_VARS)
    for key in chunk_keys:
        assert ours.get(key) == theirs.get(key), key
    for name in DATA_VARS:
        a, b = json.loads(ours.get(f"{name}/.zarray")), json.loads(theirs.get(f"{name}/.zarray"))
        for field in ("shape", "chunks", "dtype", "compressor", "filters", "order"):
            assert a[field] == b[field], (name, field)
    g_ours = zarr.open_group(refstore.ReferenceStore(ours.to_dict()), mode="r")
    g_theirs = zarr.open_group(refstore.ReferenceStore(mzz), mode="r")
    np.testing.assert_array_equal(g_ours["time"][:], g_theirs["time"][:])
    assert g_ours["time"].chunks == g_theirs["time"].chunks == (3 * 365,)  # one inlined chunk, as MZZ writes
    assert isinstance(ours.get("time/0"), bytes)


@pytest.mark.parametrize("suffix", [".json", ".parq"])
def test_misaligned_inputs_give_mixed_output(tmp_path: Path, misaligned: Any, suffix: str) -> None:
    files, manifests = misaligned
    out = str(tmp_path / f"mixed{suffix}")
    manifest, layouts = combine_with_layout(manifests, "time", out)
    how = {a.name: a.how for a in layouts}
    assert how == {**dict.fromkeys(DATA_VARS, "virtual"), "lat": "references", "lon": "references",
                   "time": "inlined"}
    reasons = {a.name: a.reason for a in layouts}
    assert "chunk 12 of 'time' (360:390) spans two inputs, which meet at index 365" in reasons["tas"]
    assert {k for k in manifest.keys() if k.endswith("refstore.virtual.json")} == {
        f"{v}/refstore.virtual.json" for v in DATA_VARS}
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        assert_same_as_xarray(open_with_refstore(out), expected)


def test_kerchunk_only_refuses_what_kerchunk_cannot_express(tmp_path: Path, misaligned: Any, aligned: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _, manifests = misaligned
    out = tmp_path / "k.json"
    with pytest.raises(NotRepresentable, match=r"variable 'cnt' cannot be written as plain kerchunk references: "
                       r"chunk 12 of 'time' \(360:390\) spans two inputs"):
        refstore.combine(manifests, "time", str(out), layout="kerchunk")
    assert issubclass(NotRepresentable, CombineError) and issubclass(NotRepresentable, ValueError)
    with pytest.raises(NotRepresentable):
        refstore.combine(manifests, "time", str(out), flatten=True)  # the older name
    assert not out.exists()
    for flag in ("--kerchunk-only", "--flatten"):
        assert main(["combine", *manifests, "--concat-dim", "time", "-o", str(out), flag]) == 1
        assert "variable 'cnt' cannot be written as plain kerchunk references" in capsys.readouterr().err
        assert not out.exists()
    # the coordinate too is virtual once it may not be inlined: its inputs are chunked (365,) and (366,)
    _, layouts = combine_with_layout(manifests, "time", None, inline_limit=0)
    reason = {a.name: a.reason for a in layouts if a.how == "virtual"}["time"]
    assert reason.startswith("an input is chunked (366,), the result (365,)")
    files, good = aligned
    assert main(["combine", *good, "--concat-dim", "time", "-o", str(out), "--kerchunk-only"]) == 0
    printed = capsys.readouterr().out
    assert "kerchunk references: cnt, lat, lon, pr, tas, ts" in printed and "inlined values: time" in printed
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        assert_same_as_xarray(open_with_fsspec(str(out)), expected)


def test_cli_names_the_virtual_variables(tmp_path: Path, misaligned: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _, manifests = misaligned
    out = str(tmp_path / "cli.json")
    assert main(["combine", *manifests, "--concat-dim", "time", "-o", out]) == 0
    printed = capsys.readouterr().out
    assert "kerchunk references: lat, lon" in printed
    assert "inlined values: time" in printed
    assert "virtual arrays (readable with refstore only): cnt, pr, tas, ts" in printed
    assert "tas: chunk 12 of 'time' (360:390) spans two inputs" in printed
    # --format parquet writes a parquet directory
    assert main(["combine", *manifests, "--concat-dim", "time", "-o", str(tmp_path / "p"), "--format", "parquet"]) == 0
    assert (tmp_path / "p.parq" / ".zmetadata").exists()


def test_layout_virtual_keeps_every_concatenated_variable_virtual(tmp_path: Path, aligned: Any) -> None:
    files, manifests = aligned
    out = str(tmp_path / "v.json")
    _, layouts = combine_with_layout(manifests, "time", out, layout="virtual")
    assert {a.name for a in layouts if a.how == "virtual"} == {*DATA_VARS, "time"}
    assert "tas/refstore.virtual.json" in refs_of(out)
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        assert_same_as_xarray(open_with_refstore(out), expected)


def test_bounds_are_inlined_like_coordinates(tmp_path: Path) -> None:
    """A ``bounds`` variable (time_bnds, contiguous per file: chunked (365, 2) and (366, 2)) is a coordinate:
    inlined, so daily-chunked data stays plain kerchunk output."""
    files = []
    for y in YEARS:
        raw = write_year(tmp_path / f"raw{y}.nc", y, chunk=1)
        with xr.open_dataset(raw, decode_times=False) as ds:
            ds = ds.load()
        t = ds.time.values
        ds["time_bnds"] = (("time", "nv"), np.stack([t - 0.5, t + 0.5], axis=1))
        ds.time.attrs["bounds"] = "time_bnds"
        files.append(str(tmp_path / f"b{y}.nc"))
        ds.to_netcdf(files[-1])
    out = str(tmp_path / "bounds.json")
    _, layouts = combine_with_layout(files, "time", out, layout="kerchunk")
    how = {a.name: a.how for a in layouts}
    assert how["time_bnds"] == how["time"] == "inlined" and how["tas"] == "references"
    assert "an input is chunked (366, 2)" in {a.name: a.reason for a in layouts}["time_bnds"]
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        assert_same_as_xarray(open_with_fsspec(out), expected)


def test_zarr_3_result_of_zarr_2_inputs_names_why_it_is_virtual(tmp_path: Path, aligned: Any) -> None:
    files, manifests = aligned
    out = str(tmp_path / "v3.json")
    _, layouts = combine_with_layout(manifests, "time", out, zarr_format=3)
    how = {a.name: (a.how, a.reason) for a in layouts}
    assert how["tas"] == ("virtual", "its inputs are zarr 2 and the result zarr 3, so their chunks cannot be "
                                     "referenced as they are")
    assert how["lat"][0] == how["time"][0] == "inlined"
    with pytest.raises(NotRepresentable, match="variable 'cnt' .* inputs are zarr 2 and the result zarr 3"):
        refstore.combine(manifests, "time", str(tmp_path / "k.json"), zarr_format=3, layout="kerchunk")
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        assert_same_as_xarray(open_with_refstore(out), expected)
