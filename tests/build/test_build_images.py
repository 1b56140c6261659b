"""The images builder: PNG sequences and mosaics, compared pixel for pixel."""

from __future__ import annotations

import argparse
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import zarr

import refstore
from refstore.build import images
from refstore.build._cli import add_build_parser

PATTERN = r"plant_(?P<barcode>\w+)_d(?P<day>\d+)_(?P<frame>\d+)\.png"


def _write(path: Path, data: np.ndarray) -> None:
    path.write_bytes(imagecodecs.png_encode(data))


def _open(manifest: refstore.Manifest, path: Path) -> zarr.Array:
    manifest.save(str(path))
    return zarr.open_group(refstore.ReferenceStore(str(path)), mode="r")["image"]


@pytest.fixture
def plants(tmp_path: Path) -> dict[tuple[str, int, int], np.ndarray]:
    rng = np.random.default_rng(1)
    data = {}
    for barcode in ("B2", "A1"):
        for day in (10, 2):
            for frame in (0, 1):
                if (barcode, day, frame) == ("B2", 10, 1):
                    continue  # missing file: reads as fill
                data[barcode, day, frame] = a = rng.integers(0, 255, (30, 40, 3), dtype="u1")
                _write(tmp_path / f"plant_{barcode}_d{day}_{frame}.png", a)
    return data


@pytest.mark.parametrize("channel_first", [False, True])
def test_sequence_axes_values_and_pixels(tmp_path: Path, plants: dict, channel_first: bool) -> None:
    arr = _open(images(str(tmp_path / "*.png"), PATTERN, channel_first=channel_first), tmp_path / "i.json")
    names = ("barcode", "day", "frame") + (("c", "y", "x") if channel_first else ("y", "x", "c"))
    assert arr.metadata.dimension_names == names
    coords = arr.attrs["refstore:coordinates"]
    assert coords == {"barcode": ["A1", "B2"], "day": [2, 10], "frame": [0, 1]}  # numeric sort: 2 < 10
    got = arr[:]
    if channel_first:
        got = np.moveaxis(got, 3, -1)
    for (barcode, day, frame), want in plants.items():
        i, j, k = coords["barcode"].index(barcode), coords["day"].index(day), coords["frame"].index(frame)
        np.testing.assert_array_equal(got[i, j, k], want)
    assert not got[1, 1, 1].any()


def test_size_mismatch_pad_or_error(tmp_path: Path) -> None:
    big = np.full((20, 30), 7, "u1")
    small = np.full((10, 12), 9, "u1")
    _write(tmp_path / "f_0.png", big)
    _write(tmp_path / "f_1.png", small)
    pattern = r"f_(?P<t>\d+)\.png"
    with pytest.raises(ValueError, match="10x12"):
        images(str(tmp_path / "*.png"), pattern, on_size_mismatch="error")
    arr = _open(images(str(tmp_path / "*.png"), pattern), tmp_path / "p.json")
    assert arr.shape == (2, 20, 30) and arr.metadata.dimension_names == ("t", "y", "x")
    np.testing.assert_array_equal(arr[0], big)
    np.testing.assert_array_equal(arr[1, :10, :12], small)
    assert not arr[1, 10:].any() and not arr[1, :, 12:].any()


def test_mosaic_with_partial_edge_tiles(tmp_path: Path) -> None:
    y, x = np.mgrid[0:70, 0:90]
    full = np.stack([x, y, x + y], -1).astype("u1")
    for r, y0 in enumerate(range(0, 70, 32)):
        for c, x0 in enumerate(range(0, 90, 32)):
            _write(tmp_path / f"tile_r{r}_c{c}.png", full[y0 : y0 + 32, x0 : x0 + 32])
    manifest = images(sorted(str(p) for p in tmp_path.glob("*.png")), r"r(?P<row>\d+)_c(?P<col>\d+)", mosaic=True)
    arr = _open(manifest, tmp_path / "m.json")
    assert arr.shape == (70, 90, 3) and arr.chunks == (32, 32, 3)
    np.testing.assert_array_equal(arr[:], full)


def test_duplicate_chunk_and_no_match_refused(tmp_path: Path) -> None:
    _write(tmp_path / "a_1.png", np.zeros((4, 4), "u1"))
    _write(tmp_path / "a_01.png", np.zeros((4, 4), "u1"))
    with pytest.raises(ValueError, match="same chunk"):
        images(str(tmp_path / "*.png"), r"a_(?P<t>\d+)\.png")
    with pytest.raises(ValueError, match="matches none"):
        images(str(tmp_path / "*.png"), r"b_(?P<t>\d+)\.png")


def test_cli_images(tmp_path: Path, plants: dict) -> None:
    parser = argparse.ArgumentParser()
    add_build_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli.json"
    args = parser.parse_args(["build", "images", str(tmp_path / "*.png"), "--pattern", PATTERN, "-q", "-o", str(out)])
    assert args.func(args) == 0
    arr = zarr.open_group(refstore.ReferenceStore(str(out)), mode="r")["image"]
    np.testing.assert_array_equal(arr[0, 0, 0], plants["A1", 2, 0])
