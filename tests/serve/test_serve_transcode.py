"""Transcoding: tile pyramids (PNG/JPEG tiles, Deep Zoom with overlap, i.e. virtual arrays) and
TIFFs with ``imagecodecs_*`` compressors, served with standard codecs only and read by plain
zarr; compared pixel for pixel with imagecodecs' and tifffile's own reads."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import urllib.request
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr

import refstore
from refstore.build import tiff
from refstore.serve import app

vips = pytest.mark.skipif(shutil.which("vips") is None, reason="needs libvips-tools (vips dzsave)")
STANDARD_V3 = {"bytes", "gzip", "zstd", "blosc", "transpose"}
STANDARD_V2 = {None, "gzip", "zstd", "blosc"}


def _image(path: Path, h: int = 200, w: int = 300) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    data = np.stack([x % 256, y % 256, (x * y) % 251], -1).astype("u1")
    path.write_bytes(imagecodecs.png_encode(data))
    return data


def _dzsave(tmp: Path, tile: int = 64, overlap: int = 0, suffix: str = ".png") -> Path:
    subprocess.run(["vips", "dzsave", str(tmp / "src.png"), str(tmp / "dz"), "--tile-size", str(tile),
                    "--overlap", str(overlap), "--suffix", suffix], check=True)
    return tmp / "dz.dzi"


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _served_codecs(base: str, listing: dict) -> tuple[set, set]:
    """Every codec the served metadata names, v3 and v2, over all arrays."""
    v3, v2 = set(), set()
    for node in listing["nodes"]:
        if node["node_type"] != "array":
            continue
        path = f"{base}/{node['path']}" if node["path"] else base
        v3 |= {c["name"] for c in _json(f"{path}/zarr.json")["codecs"]}
        zarray = _json(f"{path}/.zarray")
        v2 |= {None if zarray["compressor"] is None else zarray["compressor"]["id"]}
        assert zarray["filters"] is None
    return v3, v2


@vips
@pytest.mark.parametrize(("overlap", "channel_first"), [(0, True), (2, True), (2, False)])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_dzi_png_pyramid_read_by_plain_zarr(serve, tmp_path, overlap, channel_first, zarr_format) -> None:
    src = _image(tmp_path / "src.png")
    if channel_first:
        src = src.transpose(2, 0, 1)
    server = serve(app({"slide": {"source": str(_dzsave(tmp_path, overlap=overlap)), "build": {"channel_first": channel_first}}}))
    base = f"{server.url}/slide"
    listing = _json(base + "/?format=json")
    arrays = [n for n in listing["nodes"] if n["node_type"] == "array"]
    # PNG tiles are decoded and gzipped; virtual levels (overlap) are assembled raw, and gzipped
    assert arrays and all(n["transcoded"] and n["served_codecs"] == ["gzip"] for n in arrays)
    v3, v2 = _served_codecs(base, listing)
    assert v3 <= STANDARD_V3 and v2 <= STANDARD_V2 and "gzip" in v3 and "gzip" in v2
    group = zarr.open_group(base, mode="r", zarr_format=zarr_format)
    np.testing.assert_array_equal(group["0"][:], src)
    top = math.ceil(math.log2(300))
    assert sorted(group.array_keys(), key=int) == [str(i) for i in range(top + 1)]
    level = group["2"][:]
    assert level.shape == ((3, 50, 75) if channel_first else (50, 75, 3))
    if not channel_first:
        return  # NGFF has no channel-last axis order: refstore:levels only
    ngff = group.attrs["multiscales"][0] if zarr_format == 2 else group.attrs["ome"]["multiscales"][0]
    assert ngff["datasets"][2]["path"] == "2"
    assert (ngff.get("version"), group.attrs.get("ome", {}).get("version")) == (("0.4", None) if zarr_format == 2 else (None, "0.5"))


@vips
def test_jpeg_tiles_decode_as_imagecodecs_does(serve, tmp_path) -> None:
    _image(tmp_path / "src.png")
    server = serve(app({"slide": {"source": str(_dzsave(tmp_path, suffix=".jpg")), "build": {"channel_first": False}}}))
    got = zarr.open_group(f"{server.url}/slide", mode="r", zarr_format=3)["0"][:]
    top = math.ceil(math.log2(300))
    folder = tmp_path / "dz_files" / str(top)
    expected = np.concatenate([np.concatenate([imagecodecs.imread(folder / f"{c}_{r}.jpg") for c in range(5)], 1)
                               for r in range(4)])
    np.testing.assert_array_equal(got, expected[:200, :300])


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd", "blosc"])
@pytest.mark.parametrize("made_by", ["tifffile", "refstore"])
def test_tiff_with_codecs_only_python_knows_transcoded(serve, tmp_path, codec, made_by) -> None:
    """A tiled LZW TIFF: tifffile's own manifest names ``imagecodecs_lzw``; refstore's builder
    names whatever codec it reads TIFF tiles with. Either is served with standard codecs only."""
    from _datasets import make_tiff, tiff_refs

    make_tiff(tmp_path / "t.tif", "lzw", shape=(100, 90), tile=(32, 32))
    if made_by == "tifffile":
        refs = tiff_refs(tmp_path / "t.tif", str(tmp_path / "t.tif"))
        assert "imagecodecs_lzw" in json.dumps(refs)
        (tmp_path / "t.json").write_text(json.dumps(refs))
    else:
        tiff(str(tmp_path / "t.tif")).save(str(tmp_path / "t.json"))
    server = serve(app({"t": {"source": str(tmp_path / "t.json"), "transcode": codec}}))
    listing = _json(f"{server.url}/t/?format=json")
    (array,) = [n for n in listing["nodes"] if n["node_type"] == "array"]
    assert array["transcoded"] and array["served_codecs"] == ([] if codec == "none" else [codec])
    v3, v2 = _served_codecs(f"{server.url}/t", listing)
    assert v3 <= STANDARD_V3 and v2 <= STANDARD_V2
    for fmt in (2, 3):
        path = f"{server.url}/t/{array['path']}" if array["path"] else f"{server.url}/t"
        got = zarr.open_array(path, mode="r", zarr_format=fmt)[:]
        np.testing.assert_array_equal(got, tifffile.imread(tmp_path / "t.tif"))


def test_standard_chunks_pass_through_byte_identical_and_hot_chunks_are_cached(serve, tmp_path) -> None:
    store = zarr.storage.LocalStore(tmp_path / "z")
    a = zarr.create_array(store, name="gz", shape=(40, 30), chunks=(16, 16), dtype="<i4",
                          compressors=zarr.codecs.GzipCodec(level=5))
    a[:] = np.arange(1200).reshape(40, 30)
    img = zarr.create_array(store, name="png", shape=(40, 30, 3), chunks=(16, 16, 3), dtype="u1",
                            serializer=refstore.codecs.ImageCodec(format="png"), compressors=None)
    pixels = np.random.default_rng(1).integers(0, 255, (40, 30, 3), dtype="u1")
    img[:] = pixels
    application = app({"z": str(tmp_path / "z")})
    server = serve(application)
    for key, src_key in [("gz/0/1", "gz/c/0/1"), ("gz/2/1", "gz/c/2/1")]:
        with urllib.request.urlopen(f"{server.url}/z/{key}") as resp:
            assert resp.read() == (tmp_path / "z" / src_key).read_bytes()
    cache = application.state.refstore.datasets["z"].cache
    assert (cache.misses, cache.hits, len(cache)) == (2, 0, 2)  # whole pass-through chunks are kept too
    g = zarr.open_group(f"{server.url}/z", mode="r", zarr_format=2)
    np.testing.assert_array_equal(g["gz"][:], np.arange(1200).reshape(40, 30))
    assert (cache.misses, cache.hits, len(cache)) == (6, 2, 6)
    np.testing.assert_array_equal(g["png"][:], pixels)
    assert (cache.misses, cache.hits, len(cache)) == (12, 2, 12)  # 3 x 2 chunks, each transcoded once
    np.testing.assert_array_equal(zarr.open_group(f"{server.url}/z", mode="r", zarr_format=3)["png"][:], pixels)
    assert (cache.misses, cache.hits) == (12, 8)


def test_zlib_chunks_are_rewrapped_as_gzip_without_recompressing(serve, tmp_path) -> None:
    import gzip
    import zlib

    from _datasets import kerchunk_refs, make_hdf5

    from refstore.serve._transcode import zlib_to_gzip

    h5 = make_hdf5(tmp_path / "d.h5")
    (tmp_path / "d.json").write_text(json.dumps(kerchunk_refs(h5, str(h5))))
    server = serve(app({"h5": str(tmp_path / "d.json")}))
    nodes = {n["path"]: n for n in _json(f"{server.url}/h5/?format=json")["nodes"]}
    assert nodes["gz3d"]["rewrapped"] and nodes["gz3d"]["served_codecs"] == ["gzip"]
    assert not nodes["shuf"]["rewrapped"] and nodes["shuf"]["transcoded"]  # shuffle + zlib: decoded and encoded
    entry = refstore.Manifest.open(str(tmp_path / "d.json"))["gz3d/1.2.3"]
    stored = h5.read_bytes()[entry.offset:entry.offset + entry.length]
    with urllib.request.urlopen(f"{server.url}/h5/gz3d/1.2.3") as resp:
        served = resp.read()
    assert served[10:-8] == stored[2:-4]  # the very deflate data of the file, in gzip's frame
    assert gzip.decompress(served) == zlib.decompress(stored)
    data = bytes(range(256)) * 40
    assert gzip.decompress(zlib_to_gzip(zlib.compress(data, 9))) == data
    for bad in (b"not zlib at all", zlib.compress(data)[:-3], zlib.compress(data) + b"tail"):
        with pytest.raises((ValueError, zlib.error)):
            zlib_to_gzip(bad)
