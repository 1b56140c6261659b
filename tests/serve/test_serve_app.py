"""``refstore.serve.app`` under real uvicorn on loopback, read by zarr-python (FsspecStore over
HTTP) and xarray in both zarr formats and compared with h5py's and netCDF4's own reads; plus
the HTTP answers themselves: HEAD, ranges, 404/416/502/504 as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zarr
from _datasets import kerchunk_refs, make_hdf5, make_netcdf, read_hdf5

import refstore
from refstore.serve import app
from refstore.serve._cli import add_serve_parser, config_from_args
from refstore.serve._config import load_config


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


@pytest.fixture
def h5(tmp_path: Path) -> tuple[Path, Path]:
    path = make_hdf5(tmp_path / "data.h5")
    manifest = tmp_path / "data.json"
    manifest.write_text(json.dumps(kerchunk_refs(path, str(path))))
    return path, manifest


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("kind", ["json", "parquet"])
def test_zarr_reads_hdf5_manifest_as_h5py_does(serve, h5, tmp_path, zarr_format, kind) -> None:
    path, manifest = h5
    if kind == "parquet":
        refstore.Manifest.open(str(manifest)).save(str(tmp_path / "data.parq"))
        manifest = tmp_path / "data.parq"
    server = serve(app({"h5": str(manifest)}))
    group = zarr.open_group(f"{server.url}/h5", mode="r", zarr_format=zarr_format)
    assert group.metadata.zarr_format == zarr_format
    assert group.attrs["title"] == "refstore test file"
    for name, expected in read_hdf5(path).items():
        np.testing.assert_array_equal(group[name][...], expected, err_msg=f"{name}, zarr_format={zarr_format}")
    assert group["grp/sub"].attrs["desc"] == "nested group"


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_xarray_reads_netcdf_manifest_as_netcdf4_does(serve, tmp_path, zarr_format) -> None:
    import netCDF4
    import xarray as xr

    nc = make_netcdf(tmp_path / "t.nc")
    (tmp_path / "t.json").write_text(json.dumps(kerchunk_refs(nc, str(nc))))
    server = serve(app({"nc": str(tmp_path / "t.json")}))
    ds = xr.open_zarr(f"{server.url}/nc", zarr_format=zarr_format)
    raw = xr.open_zarr(f"{server.url}/nc", zarr_format=zarr_format, mask_and_scale=False)
    with netCDF4.Dataset(nc) as src:
        src.set_auto_maskandscale(False)
        np.testing.assert_array_equal(raw["tas"].values, src["tas"][:])
        np.testing.assert_array_equal(raw["pr"].values, src["pr"][:])
        src.set_auto_maskandscale(True)
        expected = src["tas"][:]
        np.testing.assert_allclose(ds["tas"].values, expected.filled(np.nan), rtol=0, atol=5e-5)  # float32 vs float64 unpacking
        assert int(np.isnan(ds["tas"].values).sum()) == int(expected.mask.sum()) == 5
        np.testing.assert_array_equal(ds["lat"].values, src["lat"][:])
    assert ds.attrs["title"] == "refstore netcdf test"
    assert ds["time"].values[0] == np.datetime64("2000-01-01")


def test_many_datasets_each_under_its_path(serve, h5, tmp_path) -> None:
    path, manifest = h5
    nc = make_netcdf(tmp_path / "t.nc")
    (tmp_path / "t.json").write_text(json.dumps(kerchunk_refs(nc, str(nc))))
    server = serve(app({"a": str(manifest), "b": str(tmp_path / "t.json")}))
    assert json.loads(_get(server.url + "/")[2]) == {"datasets": ["a", "b"]}
    np.testing.assert_array_equal(zarr.open_array(f"{server.url}/a/contig", mode="r", zarr_format=3)[:], read_hdf5(path)["contig"])
    assert zarr.open_group(f"{server.url}/b", mode="r", zarr_format=2).attrs["title"] == "refstore netcdf test"
    status, _, body = _get(server.url + "/c/x")
    assert status == 404 and "no dataset 'c'" in json.loads(body)["error"]


def test_get_head_range_and_errors(serve, h5) -> None:
    path, manifest = h5
    server = serve(app({"h5": str(manifest)}))
    raw = np.fromfile(path, dtype="u1")
    entry = refstore.Manifest.open(str(manifest))["contig/0"]
    whole = raw[entry.offset:entry.offset + entry.length].tobytes()
    url = f"{server.url}/h5/contig/0"
    status, headers, body = _get(url)
    assert status == 200 and body == whole and headers["accept-ranges"] == "bytes"
    status, headers, body = _get(url, method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) == len(whole)
    status, headers, body = _get(url, {"Range": "bytes=10-19"})
    assert status == 206 and body == whole[10:20] and headers["content-range"] == f"bytes 10-19/{len(whole)}"
    status, headers, body = _get(url, {"Range": "bytes=-5"})
    assert status == 206 and body == whole[-5:]
    status, headers, body = _get(url, {"Range": f"bytes={len(whole)}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(whole)}"
    assert json.loads(body)["key"] == "contig/0"
    # a transcoded chunk takes ranges too
    full = _get(f"{server.url}/h5/gz3d/0.0.0")[2]
    status, headers, body = _get(f"{server.url}/h5/gz3d/0.0.0", {"Range": "bytes=3-"})
    assert status == 206 and body == full[3:]
    status, _, body = _get(f"{server.url}/h5/gz3d/9.0.0")  # past the grid
    assert status == 404 and json.loads(body) == {"error": "no such key", "status": 404, "dataset": "h5", "key": "gz3d/9.0.0"}
    status, _, body = _get(f"{server.url}/h5/fill/3.3")  # inside the grid, never written: reads as fill
    assert status == 404 and json.loads(body)["key"] == "fill/3.3"
    status, headers, body = _get(f"{server.url}/h5/contig/0", method="PUT")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, _, body = _get(f"{server.url}/h5/.zgroup", method="DELETE")
    assert status == 405
    assert zarr.open_group(f"{server.url}/h5", mode="r", zarr_format=2)["contig"][:].tobytes() == whole


def test_unreachable_source_is_502_naming_key_with_url_redacted(serve, h5) -> None:
    path, manifest = h5
    server = serve(app({"h5": str(manifest)}))
    shown = serve(app({"h5": str(manifest)}, redact_urls=False))
    _get(f"{server.url}/h5/.zgroup")  # loaded before the source goes
    _get(f"{shown.url}/h5/.zgroup")
    os.rename(path, str(path) + ".gone")
    status, _, body = _get(f"{server.url}/h5/contig/0")
    err = json.loads(body)
    assert status == 502 and err["error"] == "source unreachable" and err["key"] == "contig/0"
    assert str(path) not in err["cause"] and "<source>" in err["cause"] and "contig/0" in err["cause"]
    status, _, body = _get(f"{shown.url}/h5/contig/0")
    assert status == 502 and str(path) in json.loads(body)["cause"]


def test_slow_source_is_504(serve, h5, http) -> None:
    path, _ = h5
    url = http.serve(path, "slow")
    refs = kerchunk_refs(path, url)
    http.delay = 3.0
    (h5[1].parent / "slow.json").write_text(json.dumps(refs))
    server = serve(app({"h5": {"source": str(h5[1].parent / "slow.json"),
                               "options": {"deadlines": {"total": 0.5, "attempts": 1}}}}))
    status, _, body = _get(f"{server.url}/h5/contig/0")
    err = json.loads(body)
    assert status == 504 and err["error"] == "source too slow" and err["key"] == "contig/0"
    assert url not in err["cause"] and "0.5" in err["cause"]


def test_toml_config_and_cli_arguments(tmp_path, h5) -> None:
    import argparse

    _, manifest = h5
    (tmp_path / "serve.toml").write_text(f"""
[server]
port = 8123
cors_origins = ["https://viewer.example"]
max_in_flight = 8

[datasets.era5]
source = "{manifest}"
transcode = "zstd"
cache_bytes = 1000
token = "s3cret"
options = {{ max_gap = 0, deadlines = {{ total = 60 }} }}

[datasets.rel]
source = "data.json"
""")
    (tmp_path / "data.json").write_text("{}")
    cfg = load_config(tmp_path / "serve.toml")
    assert cfg.port == 8123 and cfg.cors_origins == ("https://viewer.example",) and cfg.max_in_flight == 8
    era5, rel = cfg.datasets
    assert (era5.name, era5.transcode, era5.cache_bytes, era5.token) == ("era5", "zstd", 1000, "s3cret")
    assert era5.options == {"max_gap": 0, "deadlines": {"total": 60}}
    assert rel.source == str(tmp_path / "data.json")  # relative to the file
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--config", str(tmp_path / "serve.toml"), "x=other.json", "--port", "9000"])
    cfg = config_from_args(args)
    assert [d.name for d in cfg.datasets] == ["era5", "rel", "x"] and cfg.port == 9000
    bad = tmp_path / "bad.toml"
    bad.write_text('[datasets.a]\nsource = "x.json"\ncache = 3\n')
    with pytest.raises(ValueError, match=r"bad.toml.*dataset 'a' has unknown field\(s\) \['cache'\]"):
        load_config(bad)
    bad.write_text('[datasets.a]\nsource = "x.json"\ntranscode = "lz4"\n')
    with pytest.raises(ValueError, match="transcode 'lz4' is none of"):
        load_config(bad)
    bad.write_text('[datasets.a]\nsource = "x.json"\noptions = {max_gapp = 1}\n')
    with pytest.raises(TypeError, match="max_gapp"):
        load_config(bad)


def test_refstore_serve_command(tmp_path, h5) -> None:
    """The command as a user runs it: serves, then drains and exits on SIGTERM."""
    import socket

    path, manifest = h5
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(refstore.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from refstore.cli import main; sys.exit(main())",
                             "serve", f"h5={manifest}", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                group = zarr.open_group(f"http://127.0.0.1:{port}/h5", mode="r", zarr_format=3)
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        np.testing.assert_array_equal(group["shuf"][:], read_hdf5(path)["shuf"])
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught (newer releases)
    assert proc.returncode in (0, -15) and "Traceback" not in err, err
    assert f"h5 at http://127.0.0.1:{port}/" in out


def test_workers_share_etags(tmp_path, h5) -> None:
    """uvicorn --factory ... --workers 2 (spec/serve.md, scaling out): both processes answer alike."""
    import socket

    path, manifest = h5
    (tmp_path / "serve.toml").write_text(f'[datasets.h5]\nsource = "{manifest}"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "REFSTORE_SERVE_CONFIG": str(tmp_path / "serve.toml"),
           "PYTHONPATH": os.pathsep.join([str(Path(refstore.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "refstore.serve._cli:app_from_env",
                             "--workers", "2", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, headers, _ = _get(f"http://127.0.0.1:{port}/h5/gz3d/1.1.1")
            except OSError:  # not listening yet
                status = 0
            if status == 200:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no server: {status}")
            time.sleep(0.2)
        tags = {_get(f"http://127.0.0.1:{port}/h5/gz3d/1.1.1")[1]["etag"] for _ in range(20)}
        assert tags == {headers["etag"]}
        group = zarr.open_group(f"http://127.0.0.1:{port}/h5", mode="r", zarr_format=2)
        np.testing.assert_array_equal(group["gz3d"][:], read_hdf5(path)["gz3d"])
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_sigterm_drains_requests_in_flight(tmp_path, h5, http) -> None:
    """A request in flight when the server is told to stop is answered in full (--graceful)."""
    import socket
    import threading

    path, _ = h5
    (tmp_path / "slow.json").write_text(json.dumps(kerchunk_refs(path, http.serve(path, "drain"))))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(refstore.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from refstore.cli import main; sys.exit(main())",
                             "serve", f"h5={tmp_path / 'slow.json'}", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(f"http://127.0.0.1:{port}/h5/.zgroup")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("no server")
            time.sleep(0.2)
        http.delay = 1.5
        got: list[tuple[int, dict[str, str], bytes]] = []
        reader = threading.Thread(target=lambda: got.append(_get(f"http://127.0.0.1:{port}/h5/contig/0")))
        reader.start()
        time.sleep(0.5)  # in flight, waiting for the slow source
        proc.terminate()
        reader.join(30)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    raw = path.read_bytes()
    entry = refstore.Manifest.open(str(tmp_path / "slow.json"))["contig/0"]
    assert got and got[0][0] == 200 and got[0][2] == raw[entry.offset:entry.offset + entry.length]


def test_a_dataset_that_does_not_open_is_named_at_start(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        app({"gone": str(tmp_path / "missing.json")})
    assert "while opening dataset 'gone'" in "\n".join(info.value.__notes__)
    with pytest.raises(ValueError, match="no datasets to serve"):
        app({})


def test_manifests_on_every_backend(serve, remote, hdf5_path) -> None:
    """A kerchunk manifest on local disk, HTTP, S3 or GCS, its chunks there too, served and read
    by zarr over HTTP in both formats."""
    url = remote.upload(hdf5_path)
    manifest_url = remote.upload_bytes("refs.json", json.dumps(kerchunk_refs(hdf5_path, url)).encode())
    options = {"remote_options": dict(remote.storage_options), "target_options": dict(remote.storage_options)}
    server = serve(app({"d": {"source": manifest_url, "options": options}}))
    truth = read_hdf5(hdf5_path)
    for fmt in (2, 3):
        group = zarr.open_group(f"{server.url}/d", mode="r", zarr_format=fmt)
        for name in ("gz3d", "shuf", "fill", "grp/sub/nested"):
            np.testing.assert_array_equal(group[name][...], truth[name], err_msg=f"{remote.kind} {fmt} {name}")
