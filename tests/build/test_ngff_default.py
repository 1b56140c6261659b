"""Every pyramid refstore builds is valid OME-NGFF by default (0.4 for zarr 2, 0.5 for zarr 3).

Checked with ngff-zarr's validator (OME-NGFF's own JSON schemas, strict variant), and
by ngff-zarr's reader where it can read refstore's codecs. ``channel_last`` output
is not NGFF, carries only ``refstore:levels``, and the CLI says so.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr

import refstore
from refstore.build import dzi, tiff, xyz
from refstore.build._cli import add_build_parser
from refstore.multiscale import LEVELS_KEY

ngff_zarr = pytest.importorskip("ngff_zarr")  # in the test extra
vips = pytest.mark.skipif(shutil.which("vips") is None, reason="needs libvips-tools (vips dzsave)")


def _image(h: int, w: int, gray: bool) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x % 256, y % 256, (x * y) % 251], -1).astype("u1")
    return rgb[..., 0].copy() if gray else rgb


def _group(manifest: refstore.Manifest, path: Path) -> zarr.Group:
    manifest.save(str(path))
    return zarr.open_group(refstore.ReferenceStore(str(path)), mode="r")


def _assert_ngff(group: zarr.Group, zarr_format: int) -> dict[str, Any]:
    """Validate the group's attributes against the strict NGFF schema; return its multiscale."""
    attrs = dict(group.attrs)
    ngff_zarr.validate(attrs, version="0.4" if zarr_format == 2 else "0.5", strict=True)
    ms: dict[str, Any] = attrs["multiscales"][0] if zarr_format == 2 else attrs["ome"]["multiscales"][0]
    names = [a["name"] for a in ms["axes"]]
    for ds in ms["datasets"]:
        arr = group[ds["path"]]
        assert len(arr.shape) == len(names)
        if zarr_format == 3:  # NGFF 0.5: dimension_names must be the axes' names
            assert list(arr.metadata.dimension_names) == names
    assert len(attrs[LEVELS_KEY]) == len(ms["datasets"])  # exact factors stay recorded
    return ms


@vips
@pytest.mark.parametrize(("overlap", "gray"), [(0, False), (1, False), (2, True)])
def test_dzi_and_xyz_default_to_ngff_05(tmp_path: Path, overlap: int, gray: bool) -> None:
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(_image(150, 230, gray)))
    subprocess.run(["vips", "dzsave", "src.png", "dz", "--tile-size", "64", "--overlap", str(overlap),
                    "--suffix", ".png"], cwd=tmp_path, check=True)
    subprocess.run(["vips", "dzsave", "src.png", "gg", "--layout", "google", "--tile-size", "64",
                    "--suffix", ".png"], cwd=tmp_path, check=True)
    for manifest, name in [(dzi(str(tmp_path / "dz.dzi"), show_progress=False), "dz"),
                           (xyz(str(tmp_path / "gg"), show_progress=False), "gg")]:
        ms = _assert_ngff(_group(manifest, tmp_path / f"{name}.json"), 3)
        assert [a["name"] for a in ms["axes"]] == (["y", "x"] if gray else ["c", "y", "x"])
        assert ms["datasets"][1]["coordinateTransformations"][1]["translation"][-2:] == [0.5, 0.5]


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("kind", ["rgb", "gray", "planar", "czyx"])
def test_tiff_defaults_to_ngff(tmp_path: Path, kind: str, zarr_format: int) -> None:
    path = tmp_path / "p.ome.tif"
    opts: dict[str, Any] = {"tile": (32, 32), "compression": "zlib"}
    data: np.ndarray
    if kind == "czyx":
        data = np.random.default_rng(0).integers(0, 999, (2, 3, 96, 64), dtype="u2")
        opts["metadata"] = {"axes": "CZYX"}
    elif kind == "planar":
        data = np.moveaxis(_image(96, 64, False), -1, 0).copy()
        opts.update(photometric="rgb", planarconfig="separate")
    else:
        data = _image(96, 64, kind == "gray")
        opts["photometric"] = "rgb" if kind == "rgb" else "minisblack"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(data, subifds=1, **opts)
        tif.write(data[..., ::2, ::2] if kind != "rgb" else data[::2, ::2], subfiletype=1,
                  **{k: v for k, v in opts.items() if k != "metadata"})
    ms = _assert_ngff(_group(tiff(str(path), zarr_format=zarr_format), tmp_path / "t.json"), zarr_format)
    expected = {"rgb": ["c", "y", "x"], "gray": ["y", "x"], "planar": ["c", "y", "x"], "czyx": ["c", "z", "y", "x"]}
    assert [a["name"] for a in ms["axes"]] == expected[kind]
    if zarr_format == 2:
        # ngff-zarr's own reader (it reads zarr 3 arrays only with the plain 'bytes' codec)
        read = ngff_zarr.from_ngff_zarr(refstore.ReferenceFileSystem(str(tmp_path / "t.json")).get_mapper())
        assert list(read.images[0].dims) == expected[kind]
        assert read.images[1].scale["x"] == 2.0
        for i, image in enumerate(read.images):
            want = tifffile.imread(path, level=i)
            np.testing.assert_array_equal(np.asarray(image.data), np.moveaxis(want, -1, 0) if kind == "rgb" else want)


@vips
def test_channel_last_is_not_ngff_and_the_cli_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(_image(100, 120, False)))
    subprocess.run(["vips", "dzsave", "src.png", "dz", "--tile-size", "64", "--suffix", ".png"], cwd=tmp_path,
                   check=True)
    tifffile.imwrite(tmp_path / "t.tif", _image(100, 120, False), tile=(32, 32), photometric="rgb")
    parser = argparse.ArgumentParser()
    add_build_parser(parser.add_subparsers(dest="command"))
    for sub, src in [("dzi", "dz.dzi"), ("tiff", "t.tif")]:
        out = tmp_path / f"{sub}.json"
        args = parser.parse_args(["build", sub, str(tmp_path / src), "-o", str(out), "-q", "--channel-last"])
        assert args.func(args) == 0
        assert "OME-NGFF cannot express" in capsys.readouterr().err
        group = zarr.open_group(refstore.ReferenceStore(str(out)), mode="r")
        assert "ome" not in group.attrs and "multiscales" not in group.attrs and LEVELS_KEY in group.attrs
        assert group["0"].shape == (100, 120, 3)
        args = parser.parse_args(["build", sub, str(tmp_path / src), "-o", str(out), "-q"])
        assert args.func(args) == 0
        assert "OME-NGFF" not in capsys.readouterr().err
        assert zarr.open_group(refstore.ReferenceStore(str(out)), mode="r")["0"].shape == (3, 100, 120)
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "dzi", "x.dzi", "-o", "o.json", "--channel-last", "--channel-first"])
    with pytest.raises(ValueError, match="contradict"):
        dzi(str(tmp_path / "dz.dzi"), channel_last=True, channel_first=True)
