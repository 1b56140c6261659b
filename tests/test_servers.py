"""Self-tests of the test infrastructure, using plain fsspec/s3fs/gcsfs/aiohttp.

Nothing here imports refstore: these check that the servers, the ``remote``
fixture and the datasets behave, so refstore failures can be trusted.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import numpy as np
import pytest
import zarr
from _datasets import (
    TIFF_VARIANTS,
    fsspec_reference_store,
    kerchunk_refs,
    make_contiguous_chunks,
    make_tiff,
    read_hdf5,
    register_imagecodecs,
    tiff_refs,
)
from _servers import RangeHTTPServer, parse_range

if TYPE_CHECKING:
    from conftest import Remote

DATA = np.random.default_rng(42).bytes(100_000)


# --------------------------------------------------------------------------- all backends


def test_range_reads(remote: Remote) -> None:
    url = remote.upload_bytes("blob.bin", DATA)
    fs = remote.fs()
    assert fs.info(url)["size"] == len(DATA)
    assert fs.cat_file(url) == DATA
    assert fs.cat_file(url, start=10, end=20) == DATA[10:20]
    assert fs.cat_file(url, start=99_990) == DATA[99_990:]
    assert fs.cat_file(url, start=0, end=1) == DATA[:1]
    # Large range near the end, clipped by servers at EOF.
    assert fs.cat_file(url, start=50_000, end=200_000) == DATA[50_000:]


def test_upload_directory(remote: Remote, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"A" * 10)
    (src / "sub" / "b.bin").write_bytes(b"B" * 20)
    base = remote.upload(src)
    assert base.rstrip("/").endswith("tree")
    fs = remote.fs()
    assert fs.cat_file(f"{base}/a.bin") == b"A" * 10
    assert fs.cat_file(f"{base}/sub/b.bin", start=5, end=7) == b"BB"
    single = remote.upload(src / "a.bin")
    assert single.endswith("a.bin") and fs.cat_file(single) == b"A" * 10


async def test_async_concurrent_reads(remote: Remote) -> None:
    """The storage_options work for the async instances refstore will create."""
    url = remote.upload_bytes("conc.bin", DATA)
    if remote.kind == "local":
        pytest.skip("LocalFileSystem is sync")
    fs = remote.fs(asynchronous=True)
    session = await fs.set_session() if hasattr(fs, "set_session") else await fs._set_session()
    try:
        parts = await asyncio.gather(
            *[fs._cat_file(url, start=i * 100, end=i * 100 + 50) for i in range(150)]
        )
    finally:
        await session.close()
    assert parts == [DATA[i * 100 : i * 100 + 50] for i in range(150)]


def test_uniqueness_of_prefix(remote: Remote) -> None:
    assert remote.prefix.startswith("test_uniqueness_of_prefix")
    assert remote.kind in remote.prefix


# --------------------------------------------------------------------------- HTTP specifics


def test_parse_range() -> None:
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=-500", 100) == (0, 99)
    assert parse_range("bytes=95-500", 100) == (95, 99)
    assert parse_range("bytes=100-", 100) == "invalid"
    assert parse_range("bytes=5-2", 100) == "invalid"
    assert parse_range("bytes=-0", 100) == "invalid"
    assert parse_range("bytes=0-1,5-6", 100) is None
    assert parse_range("items=0-1", 100) is None


async def test_http_status_codes(http: RangeHTTPServer) -> None:
    url = http.serve(_write(http.root.parent / "src" / "f.bin", DATA), "status")
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 200 and await r.read() == DATA
        async with s.get(url, headers={"Range": "bytes=5-14"}) as r:
            assert r.status == 206 and await r.read() == DATA[5:15]
            assert r.headers["Content-Range"] == f"bytes 5-14/{len(DATA)}"
        async with s.get(url, headers={"Range": "bytes=99990-"}) as r:
            assert r.status == 206 and await r.read() == DATA[99_990:]
        async with s.get(url, headers={"Range": "bytes=-7"}) as r:
            assert r.status == 206 and await r.read() == DATA[-7:]
        async with s.get(url, headers={"Range": "bytes=200000-"}) as r:
            assert r.status == 416 and r.headers["Content-Range"] == f"bytes */{len(DATA)}"
        async with s.get(url, headers={"Range": "bytes=0-1,4-5"}) as r:
            assert r.status == 200 and await r.read() == DATA
        async with s.head(url) as r:
            assert r.status == 200 and int(r.headers["Content-Length"]) == len(DATA)
        async with s.get(url + ".missing") as r:
            assert r.status == 404
        async with s.post(url) as r:
            assert r.status == 405
    assert http.total_gets == 7 and http.total_heads == 1
    assert http.gets(url) == 6 and http.gets(url + ".missing") == 1


def test_http_refuses_path_traversal(http: RangeHTTPServer) -> None:
    secret = http.root.parent / "secret.txt"
    secret.write_text("top secret")
    for raw in (f"/../{secret.name}", f"/%2e%2e/{secret.name}", f"/..%2f{secret.name}"):
        with socket.create_connection(("127.0.0.1", http.port)) as sock:
            sock.sendall(f"GET {raw} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            reply = b"".join(iter(lambda: sock.recv(65536), b""))
        status = int(reply.split(b" ", 2)[1])
        assert status in (403, 404), raw
        assert b"top secret" not in reply


def test_http_request_counter(http: RangeHTTPServer) -> None:
    import fsspec

    url = http.serve(_write(http.root.parent / "src" / "c.bin", DATA), "count")
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    for i in range(5):
        fs.cat_file(url, start=i, end=i + 3)
    assert http.gets(url) == 5
    assert http.total_gets == 5
    assert [r.range for r in http.log if r.method == "GET"] == [
        f"bytes={i}-{i + 2}" for i in range(5)
    ]
    http.reset()
    assert http.total_gets == 0 and http.gets(url) == 0


def test_http_failures_and_flakiness(http: RangeHTTPServer) -> None:
    import fsspec

    url = http.serve(_write(http.root.parent / "src" / "e.bin", DATA), "fail")
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    http.fail(url)
    with pytest.raises(Exception) as exc:
        fs.cat_file(url, start=0, end=10)
    assert "500" in str(exc.value) or getattr(exc.value, "status", None) == 500
    assert http.log[-1].status == 500
    http.fail_paths.clear()
    http.make_flaky(url, 2)
    statuses = []
    for _ in range(3):
        try:
            fs.cat_file(url, start=0, end=10)
            statuses.append(200)
        except Exception:
            statuses.append(503)
    assert statuses == [503, 503, 200]
    assert [r.status for r in http.log[-3:]] == [503, 503, 206]


# --------------------------------------------------------------------------- datasets through fsspec


def test_kerchunk_hdf5_matches_h5py(remote: Remote, hdf5_path: Path) -> None:
    url = remote.upload(hdf5_path)
    refs = kerchunk_refs(hdf5_path, url)
    assert isinstance(refs["refs"]["scalar/0"], str)  # inlined
    assert refs["refs"]["gz3d/0.0.0"][0] == url
    store = fsspec_reference_store(refs, remote.protocol, remote.storage_options)
    group = zarr.open_group(store, mode="r", zarr_format=2)
    for name, expected in read_hdf5(hdf5_path).items():
        got = group[name][...]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    assert group.attrs["title"] == "refstore test file"
    assert group["gz3d"].attrs["units"] == "K"
    assert group["fill"].fill_value == -9


def test_kerchunk_netcdf(tmp_path: Path, netcdf_path: Path) -> None:
    import netCDF4

    refs = kerchunk_refs(netcdf_path, str(netcdf_path))
    group = zarr.open_group(fsspec_reference_store(refs), mode="r", zarr_format=2)
    with netCDF4.Dataset(netcdf_path) as ds:
        ds.set_auto_maskandscale(False)
        for name in ("time", "lat", "lon", "tas", "pr"):
            np.testing.assert_array_equal(group[name][...], ds[name][...], err_msg=name)
    tas = group["tas"]
    assert tas.attrs["_ARRAY_DIMENSIONS"] == ["time", "lat", "lon"]
    assert tas.fill_value == -32767 and tas.attrs["scale_factor"] == pytest.approx(0.01)


@pytest.mark.parametrize("variant", sorted(TIFF_VARIANTS))
@pytest.mark.parametrize("version", [0, 1])
def test_tiff_refs(tmp_path: Path, variant: str, version: int) -> None:
    register_imagecodecs()
    path = tmp_path / f"img_{variant}.tif"
    expected = make_tiff(path, variant)
    url = str(tmp_path / "renamed.tif")  # name differs from the translated file
    shutil.copyfile(path, url)
    refs = tiff_refs(path, url, version=version)
    path.unlink()
    arr = zarr.open_array(fsspec_reference_store(refs), mode="r", zarr_format=2)
    np.testing.assert_array_equal(arr[...], expected)


def test_tiff_refs_remote(remote: Remote, tmp_path: Path) -> None:
    path = tmp_path / "img.tif"
    expected = make_tiff(path, "zlib")
    url = remote.upload(path)
    refs = tiff_refs(path, url)
    store = fsspec_reference_store(refs, remote.protocol, remote.storage_options)
    np.testing.assert_array_equal(zarr.open_array(store, mode="r", zarr_format=2)[...], expected)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_contiguous_chunks(remote: Remote, tmp_path: Path, zarr_format: int) -> None:
    cc = make_contiguous_chunks(tmp_path, n_chunks=64, chunk_bytes=512)
    url = remote.upload(cc.path)
    refs = cc.refs_v3(url) if zarr_format == 3 else cc.refs_v2(url)
    assert len(refs["refs"]) == 64 + (1 if zarr_format == 3 else 2)
    store = fsspec_reference_store(refs, remote.protocol, remote.storage_options)
    arr = zarr.open_array(store, mode="r", zarr_format=zarr_format)
    assert arr.shape == cc.shape and arr.chunks == (512,)
    np.testing.assert_array_equal(arr[...], cc.expected())
    np.testing.assert_array_equal(arr[1000:3000], cc.expected()[1000:3000])
    if remote.kind == "http":
        assert remote.server.gets(url) >= 64  # fsspec baseline: one GET per chunk


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_http_delay(http: RangeHTTPServer) -> None:
    import time

    import fsspec

    url = http.serve(_write(http.root.parent / "src" / "d.bin", DATA), "delay")
    http.delay = 0.2
    t0 = time.monotonic()
    assert fsspec.filesystem("http", skip_instance_cache=True).cat_file(url, start=0, end=4) == DATA[:4]
    assert time.monotonic() - t0 >= 0.2
