"""Builders for tile pyramids and TIFF files, checked pixel for pixel against real tools."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr

import refstore
from refstore.build import dzi, tiff, xyz
from refstore.build._cli import add_build_parser
from refstore.multiscale import levels, pick_level

vips = pytest.mark.skipif(shutil.which("vips") is None, reason="needs libvips-tools (vips dzsave)")


def _source(path: Path, h: int = 200, w: int = 300) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    data = np.stack([x % 256, y % 256, (x * y) % 251], -1).astype("u1")
    path.write_bytes(imagecodecs.png_encode(data))
    return data


def _open(manifest: refstore.Manifest, path: Path) -> zarr.Group:
    manifest.save(str(path))
    return zarr.open_group(refstore.ReferenceStore(str(path)), mode="r")


def _assemble(folder: Path, name: str, rows: int, cols: int) -> np.ndarray:
    """Join vips' own tiles of one level into one image (tile files named by ``name``)."""
    return np.concatenate(
        [np.concatenate([imagecodecs.imread(folder / name.format(r=r, c=c)) for c in range(cols)], 1) for r in range(rows)]
    )


@vips
@pytest.mark.parametrize("channel_last", [False, True])
def test_dzi_matches_source_and_vips_levels(tmp_path: Path, channel_last: bool) -> None:
    src = _source(tmp_path / "src.png")
    subprocess.run(["vips", "dzsave", str(tmp_path / "src.png"), str(tmp_path / "dz"),
                    "--tile-size", "64", "--overlap", "0", "--suffix", ".png"], check=True)
    group = _open(dzi(str(tmp_path / "dz.dzi"), channel_last=channel_last), tmp_path / "dz.json")
    top = math.ceil(math.log2(300))
    assert sorted(group.array_keys(), key=int) == [str(i) for i in range(top + 1)]
    for k in range(top + 1):
        arr = group[str(k)]
        h, w = math.ceil(200 / 2**k), math.ceil(300 / 2**k)
        got = arr[:]
        if not channel_last:  # the default since issue 15: OME-NGFF (c, y, x)
            assert arr.metadata.dimension_names == ("c", "y", "x")
            got = got.transpose(1, 2, 0)
        else:
            assert arr.metadata.dimension_names == ("y", "x", "c")
        assert got.shape == (h, w, 3)
        expected = _assemble(tmp_path / "dz_files" / str(top - k), "{c}_{r}.png", math.ceil(h / 64), math.ceil(w / 64))
        np.testing.assert_array_equal(got, expected)
        if k == 0:
            np.testing.assert_array_equal(got, src)
    lv = levels(group)
    assert [int(f) for f in lv[2].factor[:2]] == [4, 4] if channel_last else [int(f) for f in lv[2].factor[1:]] == [4, 4]
    assert pick_level(group, 4.0).path == "2"
    assert lv[3].array.shape == group["3"].shape  # the level's own array, opened through the same store
    wanted = (20, 30, 3) if channel_last else (20, 30)  # the trailing axes
    np.testing.assert_array_equal(pick_level(lv, shape=wanted).array[:], group["3"][:])


@vips
def test_dzi_over_http(tmp_path: Path, http_server_dir=None) -> None:
    import functools
    import http.server
    import threading

    src = _source(tmp_path / "src.png")
    subprocess.run(["vips", "dzsave", str(tmp_path / "src.png"), str(tmp_path / "dz"),
                    "--tile-size", "64", "--overlap", "0", "--suffix", ".png"], check=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dz.dzi"
        manifest = dzi(url)
        assert all(ref.url.startswith("http://") for key, ref in manifest.items() if isinstance(ref, refstore.Reference))
        group = _open(manifest, tmp_path / "remote.json")
        np.testing.assert_array_equal(np.moveaxis(group["0"][:], 0, -1), src)  # (c, y, x) by default
    finally:
        server.shutdown()
        server.server_close()


@vips
def test_xyz_google_layout(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.png")
    subprocess.run(["vips", "dzsave", str(tmp_path / "src.png"), str(tmp_path / "gg"),
                    "--layout", "google", "--tile-size", "64", "--suffix", ".png"], check=True)
    group = _open(xyz(str(tmp_path / "gg")), tmp_path / "xyz.json")
    zooms = sorted(int(p.name) for p in (tmp_path / "gg").iterdir() if p.name.isdigit())
    assert sorted(group.array_keys(), key=int) == [str(i) for i in range(len(zooms))]
    channel_last = np.moveaxis(group["0"][:, :200, :300], 0, -1)  # (c, y, x) by default
    np.testing.assert_array_equal(channel_last, src)
    for k, z in enumerate(reversed(zooms)):
        folder = tmp_path / "gg" / str(z)
        rows = len(list(folder.iterdir()))
        cols = len(list((folder / "0").iterdir()))
        expected = _assemble(folder, "{r}/{c}.png", rows, cols)
        np.testing.assert_array_equal(np.moveaxis(group[str(k)][:, : rows * 64, : cols * 64], 0, -1), expected)


@pytest.mark.parametrize("compression", [None, "zlib", "lzw"])
def test_tiff_pyramid_levels_match_tifffile(tmp_path: Path, compression: str | None) -> None:
    data = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype="u1")
    path = tmp_path / "p.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        opts = {"tile": (64, 64), "compression": compression, "photometric": "rgb"}
        tif.write(data, subifds=2, **opts)
        tif.write(data[::2, ::2], subfiletype=1, **opts)
        tif.write(data[::4, ::4], subfiletype=1, **opts)
    group = _open(tiff(str(path)), tmp_path / "t.json")
    with tifffile.TiffFile(path) as tif:
        expected = [level.asarray() for level in tif.series[0].levels]
    assert len(expected) == 3
    for i, want in enumerate(expected):
        # RGB pyramids are OME-NGFF (c, y, x) by default (issue 15); chunky TIFF tiles are transposed on read
        np.testing.assert_array_equal(np.moveaxis(group[str(i)][:], 0, -1), want)
    assert [lv.path for lv in levels(group)] == ["0", "1", "2"]
    assert pick_level(group, (3, 100, 60)).path == "1"
    assert pick_level(group, (3, 160, 60)).path == "0"
    last = _open(tiff(str(path), channel_last=True), tmp_path / "last.json")
    np.testing.assert_array_equal(last["1"][:], expected[1])


def test_tiff_gray_writes_ngff_04(tmp_path: Path) -> None:
    data = np.arange(128 * 96, dtype="u2").reshape(128, 96)
    path = tmp_path / "g.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(data, subifds=1, tile=(32, 32), compression="zlib")
        tif.write(data[::2, ::2], subfiletype=1, tile=(32, 32), compression="zlib")
    group = _open(tiff(str(path)), tmp_path / "g.json")
    ms = group.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [2.0, 2.0]
    np.testing.assert_array_equal(group["1"][:], data[::2, ::2])


def test_cli_build_tiff(tmp_path: Path) -> None:
    import argparse

    data = np.arange(64 * 64, dtype="u1").reshape(64, 64)
    tifffile.imwrite(tmp_path / "a.tif", data, tile=(32, 32))
    parser = argparse.ArgumentParser()
    add_build_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build", "tiff", str(tmp_path / "a.tif"), "-o", str(tmp_path / "a.json")])
    assert args.func(args) == 0
    group = zarr.open_group(refstore.ReferenceStore(str(tmp_path / "a.json")), mode="r")
    np.testing.assert_array_equal(group["0"][:], data)
