"""Deep Zoom tile sets with Overlap > 0 (vips dzsave --overlap N), read as virtual levels."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import zarr

import refstore
from refstore.build import dzi
from refstore.build._cli import add_build_parser
from refstore.multiscale import levels, pick_level

pytestmark = pytest.mark.skipif(shutil.which("vips") is None, reason="needs libvips-tools (vips dzsave)")


def _source(path: Path, h: int, w: int, gray: bool = False) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    data = np.stack([x % 256, y % 256, (x * y) % 251], -1).astype("u1")
    if gray:
        data = ((x * 7 + y * 3) % 256).astype("u1")
    path.write_bytes(imagecodecs.png_encode(data))
    return data


def _dzsave(tmp: Path, src: Path, tile: int, overlap: int, suffix: str) -> Path:
    subprocess.run(["vips", "dzsave", str(src), str(tmp / "dz"), "--tile-size", str(tile),
                    "--overlap", str(overlap), "--suffix", suffix], check=True)
    return tmp / "dz.dzi"


def _cropped_tiles(
    folder: Path, h: int, w: int, tile: int, overlap: int, ext: str
) -> np.ndarray:
    """One level of ``h`` x ``w`` from imagecodecs' decodes of vips' tiles, each cropped by its position."""
    out = []
    for r in range(math.ceil(h / tile)):
        row = []
        for c in range(math.ceil(w / tile)):
            t = imagecodecs.imread(folder / f"{c}_{r}.{ext}")
            top, left = (overlap if r else 0), (overlap if c else 0)
            # the Deep Zoom geometry: [r*tile - top, min((r+1)*tile + overlap, h)), likewise columns
            assert t.shape[:2] == (min((r + 1) * tile + overlap, h) - r * tile + top,
                                   min((c + 1) * tile + overlap, w) - c * tile + left)
            row.append(t[top : top + tile, left : left + tile])
        out.append(np.concatenate(row, 1))
    return np.concatenate(out)


def _open(path: Path, manifest: refstore.Manifest) -> zarr.Group:
    manifest.save(str(path))
    return zarr.open_group(refstore.ReferenceStore(str(path)), mode="r")


CASES = [
    # (overlap, tile, height, width, suffix, gray, channel_first)
    (1, 64, 200, 300, ".png", False, False),
    (2, 63, 201, 299, ".png", False, True),
    (3, 17, 45, 77, ".png", True, False),
    (1, 31, 97, 130, ".jpg[Q=90]", False, False),
    (2, 63, 201, 299, ".jpg[Q=85]", True, False),
]


@pytest.mark.parametrize(("overlap", "tile", "h", "w", "suffix", "gray", "channel_first"), CASES)
def test_overlap_levels_match_cropped_tiles(
    tmp_path: Path, overlap: int, tile: int, h: int, w: int, suffix: str, gray: bool, channel_first: bool
) -> None:
    src = _source(tmp_path / "src.png", h, w, gray)
    ext = suffix[1:].split("[")[0]
    group = _open(tmp_path / "dz.json", dzi(str(_dzsave(tmp_path, tmp_path / "src.png", tile, overlap, suffix)),
                                             channel_last=not channel_first))
    top = math.ceil(math.log2(max(h, w)))
    assert sorted(group.array_keys(), key=int) == [str(i) for i in range(top + 1)]
    for k in range(top + 1):
        lh, lw = math.ceil(h / 2**k), math.ceil(w / 2**k)
        arr = group[str(k)]
        got = arr[:]
        if channel_first and not gray:
            assert arr.metadata.dimension_names == ("c", "y", "x")
            got = got.transpose(1, 2, 0)
        assert got.shape == ((lh, lw) if gray else (lh, lw, 3))
        expected = _cropped_tiles(tmp_path / "dz_files" / str(top - k), lh, lw, tile, overlap, ext)
        np.testing.assert_array_equal(got, expected)
        if k == 0 and ext == "png":
            np.testing.assert_array_equal(got, src)  # lossless: pixel for pixel
    assert [lv.path for lv in levels(group)] == [str(i) for i in range(top + 1)]
    assert pick_level(group, 2.0).path == "1"


def test_overlap_definition_is_compact_and_partial_reads(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.png", 300, 410)
    manifest = dzi(str(_dzsave(tmp_path, tmp_path / "src.png", 50, 2, ".png")))
    definition = json.loads(manifest.get("0/refstore.virtual.json"))
    # one layer per level, whatever the number of tiles (here 6 x 9); (c, y, x) by default since issue 15
    assert len(definition["layers"]) == 1 and definition["chunks"] == [3, 50, 50]
    y_map = definition["layers"][0]["map"][1]
    assert y_map == {"dim": 1, "start": 0, "step": 1, "block": 50, "stride": 54, "offsets": [0, 2]}
    assert sum(1 for k in manifest.keys() if k.startswith("0/.sources/0/c/")) == 6 * 9
    # a single-tile level stays a plain array of whole-file references
    last = str(math.ceil(math.log2(410)))
    assert manifest.get(f"{last}/refstore.virtual.json") is None
    group = _open(tmp_path / "dz.json", manifest)
    level0, src_c = group["0"], np.moveaxis(src, -1, 0)
    for sel in [np.s_[:, 37:151, 61:203], np.s_[:, 49:51, 99:101], np.s_[1, ::7, 5::11], np.s_[2, 299, :]]:
        np.testing.assert_array_equal(level0[sel], src_c[sel])


def test_overlap_missing_tile_reads_as_fill(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.png", 130, 130)
    path = _dzsave(tmp_path, tmp_path / "src.png", 64, 1, ".png")
    top = math.ceil(math.log2(130))
    (tmp_path / "dz_files" / str(top) / "1_1.png").unlink()
    group = _open(tmp_path / "dz.json", dzi(str(path)))
    got = np.moveaxis(group["0"][:], 0, -1)
    expected = src.copy()
    expected[64:128, 64:128] = 0  # the missing tile's own block; its overlap pixels come from neighbours
    np.testing.assert_array_equal(got, expected)


def test_cli_build_dzi_with_overlap(tmp_path: Path) -> None:
    src = _source(tmp_path / "src.png", 120, 200)
    path = _dzsave(tmp_path, tmp_path / "src.png", 32, 1, ".png")
    parser = argparse.ArgumentParser()
    add_build_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build", "dzi", str(path), "-o", str(tmp_path / "out.json"), "-q"])
    assert args.func(args) == 0
    group = zarr.open_group(refstore.ReferenceStore(str(tmp_path / "out.json")), mode="r")
    np.testing.assert_array_equal(np.moveaxis(group["0"][:], 0, -1), src)
    assert group["1"].shape == (3, 60, 100)
