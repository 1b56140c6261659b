"""Both zarr formats at one URL: consolidated metadata, F order and big-endian arrays, zarr 3
sources read as zarr 2 and back, and virtual arrays (misaligned concat, pad, views) from a
saved definition, compared with h5py's read of the sources."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zarr
from _vdata import (  # tests/virtual, put on the path by conftest
    make_time_files,
    open_h5_var,
    read_h5,
)

import refstore
from refstore.serve import app


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_virtual_arrays_from_a_saved_definition(serve, tmp_path, zarr_format) -> None:
    files = make_time_files(tmp_path)
    names = ["y2001_gz", "y2004_raw", "y2002_gz"]  # 2004 is chunked differently: misaligned
    arrays = [open_h5_var(files[n]) for n in names]
    expected = np.concatenate([read_h5(files[n]) for n in names])
    v = refstore.concat(arrays)
    refstore.save_virtual({"tas": v, "grp/padded": refstore.pad(arrays[0], ((0, 1), (0, 0), (2, 0)), fill_value=np.nan),
                           "view": v[100:900:3, ::2]}, str(tmp_path / "v.json"))
    server = serve(app({"v": str(tmp_path / "v.json")}))
    group = zarr.open_group(f"{server.url}/v", mode="r", zarr_format=zarr_format)
    np.testing.assert_array_equal(group["tas"][:], expected)
    np.testing.assert_array_equal(group["view"][:], expected[100:900:3, ::2])
    a = read_h5(files["y2001_gz"])
    np.testing.assert_array_equal(group["grp/padded"][:], np.pad(a, ((0, 1), (0, 0), (2, 0)), constant_values=np.nan))
    listing = _json(f"{server.url}/v/?format=json")
    assert not any(".sources" in n["path"] for n in listing["nodes"])  # embedded sources stay private
    assert {n["path"] for n in listing["nodes"] if n["node_type"] == "array"} == {"tas", "grp/padded", "view"}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_virtual_manifest_of_the_version_1_format(serve, zarr_format) -> None:
    """A manifest written before definitions had runs (a layer and metadata per input) serves the same values."""
    from _v1_fixtures import FIXTURES, expected

    server = serve(app({"v": str(FIXTURES[zarr_format])}))
    group = zarr.open_group(f"{server.url}/v", mode="r", zarr_format=zarr_format)
    for name, values in expected(zarr_format).items():
        np.testing.assert_array_equal(group[name][:], values)
        np.testing.assert_array_equal(group[name][3:9], values[3:9])


@pytest.mark.parametrize("layout", ["auto", "virtual"])
def test_combined_years_read_alike_on_every_face(serve, tmp_path, layout) -> None:
    """``refstore combine`` of three netCDF years (365/366 days in 30-day chunks: misaligned, so virtual
    arrays whose sources are runs) equals ``xr.open_mfdataset`` through the store, the threaded codec
    pipeline, ``reference://`` and the HTTP server face."""
    import xarray as xr
    from test_combine_xarray import YEARS, scan, write_year  # tests/virtual

    files = [str(write_year(tmp_path / f"y{year}.nc", year)) for year in YEARS]
    out = str(tmp_path / "combined.json")
    refstore.combine([scan(Path(f)) for f in files], "time", out, layout=layout)
    assert "run" in json.loads(json.loads(Path(out).read_text())["refs"]["tas/refstore.virtual.json"])["layers"][0]
    server = serve(app({"c": out}))
    faces = {
        "store": lambda: xr.open_zarr(refstore.ReferenceStore(out), consolidated=False),
        "reference://": lambda: xr.open_dataset("reference://", engine="zarr", chunks={}, backend_kwargs={
            "storage_options": {"fo": out}, "consolidated": False}),
        "refstore serve": lambda: xr.open_zarr(f"{server.url}/c", consolidated=True, zarr_format=2),
    }
    with xr.open_mfdataset(files, combine="by_coords") as expected:
        expected = expected.load()
        for face, open_ in faces.items():
            for threaded in (False, True):
                cfg = {"codec_pipeline.path": "refstore.pipeline.ThreadedCodecPipeline"} if threaded else {}
                with zarr.config.set(cfg):
                    got = open_().load()
                xr.testing.assert_identical(got, expected)
                assert int(got.cnt.isin([0]).sum()) > 0, face  # real zeros (fill value null) stay zeros


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_consolidated_metadata_lists_every_node(serve, tmp_path, zarr_format) -> None:
    store = zarr.storage.LocalStore(tmp_path / "z")
    root = zarr.open_group(store, mode="w", zarr_format=3, attributes={"title": "t"})
    root.create_array("a/b/x", shape=(5,), dtype="i2", chunks=(2,))[:] = np.arange(5)
    root.create_group("g", attributes={"k": 1})
    server = serve(app({"z": str(tmp_path / "z")}))
    zmeta = _json(f"{server.url}/z/.zmetadata")["metadata"]
    assert {".zgroup", ".zattrs", "a/.zgroup", "a/b/.zgroup", "a/b/x/.zarray", "g/.zgroup"} <= set(zmeta)
    inline = _json(f"{server.url}/z/zarr.json")["consolidated_metadata"]["metadata"]
    assert set(inline) == {"a", "a/b", "a/b/x", "g"}
    group = zarr.open_consolidated(f"{server.url}/z", zarr_format=zarr_format)
    assert group.attrs["title"] == "t" and group["g"].attrs["k"] == 1
    np.testing.assert_array_equal(group["a/b/x"][:], np.arange(5))


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_f_order_big_endian_and_zarr3_default_keys(serve, tmp_path, zarr_format) -> None:
    store = zarr.storage.LocalStore(tmp_path / "z")
    data = np.arange(600, dtype=">i4").reshape(20, 30)
    f = zarr.create_array(store, name="f", shape=(20, 30), chunks=(8, 8), dtype=">i4", order="F", zarr_format=2,
                          compressors=None)
    f[:] = data
    v3 = zarr.create_array(store, name="v3", shape=(20, 30), chunks=(8, 8), dtype="<f8",
                           compressors=zarr.codecs.ZstdCodec(level=3))
    v3[:] = data / 7
    server = serve(app({"z": str(tmp_path / "z")}))
    meta = _json(f"{server.url}/z/f/zarr.json")
    assert meta["codecs"][0] == {"name": "transpose", "configuration": {"order": [1, 0]}}
    assert meta["codecs"][1] == {"name": "bytes", "configuration": {"endian": "big"}}
    assert _json(f"{server.url}/z/v3/.zarray")["compressor"]["id"] == "zstd"
    group = zarr.open_group(f"{server.url}/z", mode="r", zarr_format=zarr_format)
    np.testing.assert_array_equal(group["f"][:], data)
    np.testing.assert_array_equal(group["v3"][:], data / 7)
    listing = {n["path"]: n for n in _json(f"{server.url}/z/?format=json")["nodes"]}
    assert not listing["f"]["transcoded"] and not listing["v3"]["transcoded"]
    with urllib.request.urlopen(f"{server.url}/z/v3/1/2") as resp:  # zarr 2 keys for the zarr 3 array ...
        assert resp.read() == (tmp_path / "z" / "v3" / "c" / "1" / "2").read_bytes()  # ... its own bytes
