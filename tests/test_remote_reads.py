"""Real manifests (kerchunk on h5py/netCDF4 files, tifffile) read from local, HTTP, S3 and GCS,
by every route users take, compared with the source library's own read."""

from __future__ import annotations

import gzip
import json

import fsspec
import numpy as np
import pytest
import zarr
from _datasets import (
    HDF5_DATASETS,
    kerchunk_refs,
    make_contiguous_chunks,
    make_tiff,
    read_hdf5,
    register_imagecodecs,
    tiff_refs,
)
from zarr.storage import FsspecStore

import refstore
from refstore import ReferenceFileSystem, ReferenceNotReachable, ReferenceStore, URLNotAllowed


def _routes(refs, remote):
    opts = dict(remote.storage_options)
    yield "store", lambda: zarr.open_group(ReferenceStore(refs, remote_options=opts), mode="r")
    yield "url", lambda: zarr.open_group(
        "reference://", storage_options={"fo": refs, "remote_protocol": remote.protocol, "remote_options": opts},
        mode="r")
    yield "mapper", lambda: zarr.open_group(
        fsspec.filesystem("reference", fo=refs, remote_options=opts).get_mapper(""), mode="r")
    yield "fsspecstore-async", lambda: zarr.open_group(
        FsspecStore(ReferenceFileSystem(refs, remote_options=opts, asynchronous=True), read_only=True, path=""),
        mode="r")


def test_kerchunk_hdf5_every_route(remote, hdf5_path):
    url = remote.upload(hdf5_path)
    refs = kerchunk_refs(hdf5_path, url)
    truth = read_hdf5(hdf5_path)
    for route, open_group in _routes(refs, remote):
        group = open_group()
        assert group.attrs["title"] == "refstore test file"
        for name in HDF5_DATASETS:
            got = group[name][...]
            np.testing.assert_array_equal(got, truth[name], err_msg=f"{remote.kind}/{route}/{name}")


def test_kerchunk_netcdf_with_xarray(remote, netcdf_path):
    xr = pytest.importorskip("xarray")
    url = remote.upload(netcdf_path)
    refs = kerchunk_refs(netcdf_path, url)
    # packed values compared raw: the two backends decode scale_factor at different precisions
    ours = xr.open_zarr(ReferenceStore(refs, remote_options=remote.storage_options), consolidated=False,
                        mask_and_scale=False)
    with xr.open_dataset(netcdf_path, engine="netcdf4", mask_and_scale=False) as theirs:
        for name in ("tas", "pr", "lat", "lon"):
            np.testing.assert_array_equal(ours[name].values, theirs[name].values, err_msg=name)
        assert ours["tas"].attrs["units"] == "K" and ours["tas"].attrs["scale_factor"] == pytest.approx(0.01)


@pytest.mark.parametrize("variant", ["none", "zlib", "lzw", "zstd"])
def test_tifffile_manifest(remote, tmp_path, variant):
    tifffile = pytest.importorskip("tifffile")
    register_imagecodecs()
    path = tmp_path / f"img_{variant}.tif"
    data = make_tiff(path, variant)
    url = remote.upload(path)
    refs = tiff_refs(path, url, version=1)
    arr = zarr.open_array(ReferenceStore(refs, remote_options=remote.storage_options), mode="r")
    np.testing.assert_array_equal(arr[:], tifffile.imread(path))
    np.testing.assert_array_equal(arr[:], data)


def test_contiguous_chunks_merge_into_few_requests(http, tmp_path):
    chunks = make_contiguous_chunks(tmp_path, n_chunks=512, chunk_bytes=4096)
    url = http.serve(chunks.path, "contig")
    refs = chunks.refs_v3(url)
    arr = zarr.open_array(ReferenceStore(refs), mode="r")
    http.reset()
    np.testing.assert_array_equal(arr[:], chunks.expected())
    assert 0 < http.total_gets < 512 // 4, http.total_gets
    # merging off: one request per chunk, same bytes
    arr = zarr.open_array(ReferenceStore(refs, max_gap=-1), mode="r")
    http.reset()
    np.testing.assert_array_equal(arr[:], chunks.expected())
    assert http.total_gets == 512


def test_cat_merges_and_slices_exactly(http, tmp_path):
    blob = np.random.default_rng(5).bytes(200_000)
    (tmp_path / "b.bin").write_bytes(blob)
    url = http.serve(tmp_path / "b.bin", "cat")
    refs = {f"k{i}": [url, i * 1000 + (i % 7), 900] for i in range(150)}
    fs = ReferenceFileSystem(refs)
    http.reset()
    out = fs.cat(list(refs))
    assert http.total_gets == 1
    for i in range(150):
        start = i * 1000 + (i % 7)
        assert out[f"k{i}"] == blob[start:start + 900]


def test_http_errors_keep_their_cause(http, tmp_path):
    (tmp_path / "f.bin").write_bytes(b"x" * 100)
    url = http.serve(tmp_path / "f.bin", "err")
    refs = {"ok": [url, 0, 10], "missing": [url + ".nope", 0, 10], "broken": [url, 10, 10]}
    http.fail(url)
    fs = ReferenceFileSystem(refs, retries=1)
    with pytest.raises(ReferenceNotReachable, match=r'"broken".*HTTP 500') as info:
        fs.cat("broken")
    assert "err/f.bin" in str(info.value)
    with pytest.raises(ReferenceNotReachable) as info:
        fs.cat("missing")
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_http_transient_failures_are_retried(http, tmp_path):
    (tmp_path / "f.bin").write_bytes(bytes(range(100)))
    url = http.serve(tmp_path / "f.bin", "flaky")
    http.make_flaky(url, 2)
    fs = ReferenceFileSystem({"k": [url, 5, 10]}, retries=3)
    assert fs.cat("k") == bytes(range(5, 15))
    assert http.gets(url) == 3


def test_remote_manifest_cannot_read_local_files(network_remote, tmp_path):
    remote = network_remote
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret")
    refs = {"ok": "inline", "steal": [str(secret), 0, 10], "steal2": ["file://" + str(secret)]}
    url = remote.upload_bytes("refs.json.gz", gzip.compress(json.dumps(refs).encode()))
    fs = ReferenceFileSystem(url, target_options=remote.storage_options)
    assert fs.cat("ok") == b"inline"
    for key in ("steal", "steal2"):
        with pytest.raises(URLNotAllowed, match=key) as info:
            fs.cat(key)
        assert isinstance(info.value, PermissionError)
    store = ReferenceStore(url, target_options=remote.storage_options)
    with pytest.raises(PermissionError):
        zarr.core.sync.sync(store.get("steal", zarr.core.buffer.default_buffer_prototype()))


def test_policy_limits_prefixes(remote, tmp_path):
    (tmp_path / "a.bin").write_bytes(b"a" * 10)
    url = remote.upload(tmp_path / "a.bin")
    allowed = url.rsplit("/", 1)[0]
    fs = ReferenceFileSystem({"k": [url, 0, 4]}, remote_options=remote.storage_options,
                             url_policy=refstore.URLPolicy.allow(allowed))
    assert fs.cat("k") == b"aaaa"
    fs = ReferenceFileSystem({"k": [url, 0, 4]}, remote_options=remote.storage_options,
                             url_policy=refstore.URLPolicy.allow(allowed + "-other"))
    with pytest.raises(URLNotAllowed):
        fs.cat("k")


def test_user_filesystem_instances_and_protocol_aliases(remote, tmp_path):
    """fs= may be a sync instance of any filesystem; it works under zarr's own event loop too."""
    blob = np.random.default_rng(9).bytes(5000)
    (tmp_path / "u.bin").write_bytes(blob)
    url = remote.upload(tmp_path / "u.bin")
    refs = {"k": [url, 100, 200]}
    inst = remote.fs()
    fs = ReferenceFileSystem(refs, fs=inst)
    assert fs.cat("k") == blob[100:300]
    store = ReferenceStore(refs, fs={remote.protocol: inst})
    got = zarr.core.sync.sync(store.get("k", zarr.core.buffer.default_buffer_prototype()))
    assert got.to_bytes() == blob[100:300]
    if remote.protocol == "gs":
        bare = url.split("://", 1)[1]
        fs = ReferenceFileSystem({"k": [bare, 0, 10]}, remote_protocol="gcs", remote_options=remote.storage_options)
        assert fs.cat("k") == blob[:10]
