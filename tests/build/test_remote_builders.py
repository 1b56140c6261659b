"""Builders over HTTP servers that refuse directory listings, and over S3 (moto).

DZI levels come from the descriptor alone; XYZ sets from a zoom range and bounds,
or from concurrent probes; TIFF headers are read by range; images from a list of
URLs or an S3 prefix. Every result is read back and compared with a local build
or with the source library.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr
from conftest import Remote, make_remote

import refstore
from refstore.build import dzi, images, tiff, xyz

vips = pytest.mark.skipif(shutil.which("vips") is None, reason="needs libvips-tools (vips dzsave)")


@pytest.fixture(params=["http", "s3"])
def served(request: pytest.FixtureRequest) -> Remote:
    """An HTTP server that answers 403 to directories (no listings), or moto S3."""
    remote = make_remote(request.param, request)
    if remote.kind == "http":
        remote.server.directory_status = 403
    return remote


def _rgb(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, (x * y) % 251], -1).astype("u1")


def _open(manifest: refstore.Manifest, path: Path, remote: Remote | None = None) -> zarr.Group:
    manifest.save(str(path))
    options = {} if remote is None else {"remote_options": dict(remote.storage_options)}
    return zarr.open_group(refstore.ReferenceStore(str(path), **options), mode="r")


def _no_directory_requests(remote: Remote) -> None:
    if remote.kind == "http":
        assert not [r for r in remote.server.log if r.status == 403], "a directory was asked for"


@vips
@pytest.mark.parametrize("overlap", [0, 1])
def test_dzi_from_the_descriptor_alone(tmp_path: Path, served: Remote, overlap: int) -> None:
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(_rgb(150, 230)))
    subprocess.run(["vips", "dzsave", "src.png", "slide", "--tile-size", "64", "--overlap", str(overlap),
                    "--suffix", ".png"], cwd=tmp_path, check=True)
    folder = tmp_path / "site"
    folder.mkdir()
    shutil.move(tmp_path / "slide.dzi", folder)
    shutil.move(tmp_path / "slide_files", folder)
    url = served.upload(folder) + "/slide.dzi"
    manifest = dzi(url, storage_options=dict(served.storage_options), show_progress=False)
    if served.kind == "http":
        tiles = [r for r in served.server.log if r.path.endswith(".png")]
        assert len(tiles) == 1  # the sample tile only: no listing, no tile probes
    _no_directory_requests(served)
    remote_group = _open(manifest, tmp_path / "r.json", served)
    local_group = _open(dzi(str(folder / "slide.dzi"), show_progress=False), tmp_path / "l.json")
    top = math.ceil(math.log2(230))
    assert sorted(remote_group.array_keys(), key=int) == [str(i) for i in range(top + 1)]
    for k in range(top + 1):
        np.testing.assert_array_equal(remote_group[str(k)][:], local_group[str(k)][:])
    np.testing.assert_array_equal(np.moveaxis(remote_group["0"][:], 0, -1), _rgb(150, 230))


@vips
def test_dzi_probe_and_listing_leave_out_missing_tiles(tmp_path: Path, served: Remote) -> None:
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(_rgb(130, 130)))
    subprocess.run(["vips", "dzsave", "src.png", "slide", "--tile-size", "64", "--overlap", "0", "--suffix", ".png"],
                   cwd=tmp_path, check=True)
    top = math.ceil(math.log2(130))
    (tmp_path / "slide_files" / str(top) / "1_1.png").unlink()
    (tmp_path / "src.png").unlink()
    url = served.upload(tmp_path) + "/slide.dzi"
    options = dict(served.storage_options)
    ntiles = sum(len(list(p.iterdir())) for p in (tmp_path / "slide_files").iterdir() if p.is_dir())
    for check in ("probe", True):
        if served.kind == "http":
            served.server.reset()
            served.server.directory_status = 403
        manifest = dzi(url, check_tiles=check, storage_options=options, show_progress=False, concurrency=8)
        assumed = served.kind == "http" and check is True  # HTTP has no listing: every tile is assumed
        assert (manifest.get("0/c/0/1/1") is not None) == assumed and manifest.get("0/c/0/0/1") is not None
        if served.kind == "http":
            heads = sum(1 for r in served.server.log if r.method == "HEAD" and r.path.endswith(".png"))
            assert heads >= ntiles if check == "probe" else heads == 0, (check, heads, ntiles)
        _no_directory_requests(served)
        if check == "probe" or served.kind == "s3":
            got = np.moveaxis(_open(manifest, tmp_path / "m.json", served)["0"][:], 0, -1)
            assert not got[64:128, 64:128].any() and got[:64, :64].any()


@vips
def test_xyz_by_zoom_range_probing_and_bounds(tmp_path: Path, served: Remote) -> None:
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(_rgb(200, 300)))
    subprocess.run(["vips", "dzsave", "src.png", "tiles", "--layout", "google", "--tile-size", "64",
                    "--suffix", ".png"], cwd=tmp_path, check=True)
    zooms = sorted(int(p.name) for p in (tmp_path / "tiles").iterdir() if p.name.isdigit())
    local = _open(xyz(str(tmp_path / "tiles"), show_progress=False), tmp_path / "local.json")
    url = served.upload(tmp_path / "tiles")
    options = dict(served.storage_options)
    with pytest.raises(ValueError, match="zooms"):
        xyz(url, probe=True, storage_options=options)
    probed = xyz(url, zooms=(zooms[0], zooms[-1]), probe=True, suffix="png", storage_options=options,
                 show_progress=False, concurrency=4)
    _no_directory_requests(served)
    group = _open(probed, tmp_path / "probed.json", served)
    for k in range(len(zooms)):
        got, want = group[str(k)][:], local[str(k)][:]
        np.testing.assert_array_equal(got, want[:, : got.shape[1], : got.shape[2]])
    # a window of the highest zoom: tile columns 1-2, rows 1-2, read without any probe
    top = zooms[-1]
    window = xyz(url, zooms=(top - 1, top), bounds=(1, 1, 2, 2), suffix="png", storage_options=options,
                 show_progress=False)
    wgroup = _open(window, tmp_path / "window.json", served)
    np.testing.assert_array_equal(wgroup["0"][:], local["0"][:, 64:192, 64:192])
    np.testing.assert_array_equal(wgroup["1"][:], local["1"][:, 0:128, 0:128])  # their parents, one zoom down
    offsets = wgroup.attrs["refstore:levels"][1]["offset"]
    assert offsets == [0, "-127/2", "-127/2"]  # that tile starts 64 level-0 pixels before the window
    ngff_zarr = pytest.importorskip("ngff_zarr")
    for g in (group, wgroup):
        ngff_zarr.validate(dict(g.attrs), version="0.5", strict=True)


def test_tiff_reads_only_headers_remotely(tmp_path: Path, served: Remote) -> None:
    data = np.random.default_rng(3).integers(0, 255, (1024, 768, 3), dtype="u1")
    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(data, subifds=1, tile=(64, 64), compression="jpeg", photometric="rgb")
        tif.write(data[::2, ::2], subfiletype=1, tile=(64, 64), compression="jpeg", photometric="rgb")
    url = served.upload(path)
    for fmt in (2, 3):
        if served.kind == "http":
            served.server.reset()
        manifest = tiff(url, zarr_format=fmt, storage_options=dict(served.storage_options))
        if served.kind == "http":
            spans = [r.range.split("=")[1].split("-") for r in served.server.log if r.method == "GET"]
            fetched = sum(int(b) - int(a) + 1 for a, b in spans)
            assert fetched < path.stat().st_size / 4  # the header pages (64 KiB blocks), not the tiles
        group = _open(manifest, tmp_path / f"t{fmt}.json", served)
        for i in range(2):
            np.testing.assert_array_equal(np.moveaxis(group[str(i)][:], 0, -1), tifffile.imread(path, level=i))
        assert all(ref.url == url for _, ref in manifest.items() if isinstance(ref, refstore.Reference))


def test_images_from_urls_or_a_prefix(tmp_path: Path, served: Remote) -> None:
    image = _rgb(90, 100)
    folder = tmp_path / "plates"
    folder.mkdir()
    for r in range(3):
        for c in range(4):
            tile = image[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32]
            (folder / f"p_{r}_{c}.png").write_bytes(imagecodecs.png_encode(np.ascontiguousarray(tile)))
    base = served.upload(folder)
    urls = [f"{base}/p_{r}_{c}.png" for r in range(3) for c in range(4)]
    options: dict[str, Any] = dict(served.storage_options)
    sources: list[str | list[str]] = [urls] if served.kind == "http" else [urls, base]
    for files in sources:
        manifest = images(files, r"p_(?P<row>\d+)_(?P<col>\d+)\.png", mosaic=True, storage_options=options,
                          show_progress=False, concurrency=6)
        _no_directory_requests(served)
        group = _open(manifest, tmp_path / "i.json", served)
        np.testing.assert_array_equal(group["image"][:], image)


@vips
def test_cli_xyz_over_http_by_zooms_and_probes(tmp_path: Path, http: Any) -> None:
    import argparse

    from refstore.build._cli import add_build_parser

    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(_rgb(130, 190)))
    subprocess.run(["vips", "dzsave", "src.png", "tiles", "--layout", "google", "--tile-size", "64",
                    "--suffix", ".png"], cwd=tmp_path, check=True)
    top = max(int(p.name) for p in (tmp_path / "tiles").iterdir() if p.name.isdigit())
    http.directory_status = 403
    url = http.serve(tmp_path / "tiles", "cli-xyz")
    parser = argparse.ArgumentParser()
    add_build_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "x.json"
    for extra in (["--probe"], ["--bounds", "0", "0", "2", "2"]):
        args = parser.parse_args(["build", "xyz", url, "--zooms", "0", str(top), "--suffix", "png", "-q",
                                  "--concurrency", "4", "-o", str(out), *extra])
        assert args.func(args) == 0
        group = zarr.open_group(refstore.ReferenceStore(str(out)), mode="r")
        np.testing.assert_array_equal(np.moveaxis(group["0"][:, :130, :190], 0, -1), _rgb(130, 190))
    assert not [r for r in http.log if r.status == 403]
    with pytest.raises(ValueError, match="zooms"):
        args = parser.parse_args(["build", "xyz", url, "-q", "-o", str(out)])
        args.func(args)
