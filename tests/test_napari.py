"""The napari reader, driven headless through npe2's reader API (no napari, no window).

npe2 discovers refstore through the ``napari.manifest`` entry point that pyproject.toml
declares (conftest puts this checkout's entry points first), reads ``napari.yaml`` and
calls the reader; each test checks the layer data napari would get.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dask.array as da
import imagecodecs
import numpy as np
import pytest
import tifffile
from _servers import RangeHTTPServer

import refstore
from refstore.build import dzi

npe2 = pytest.importorskip("npe2")
vips = pytest.mark.skipif(shutil.which("vips") is None, reason="needs libvips-tools (vips dzsave)")


def _rgb(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x % 256, y % 256, (x * y) % 251], -1).astype("u1")


def _read(path: str | Path) -> tuple[Any, dict[str, Any], str]:
    pm = npe2.PluginManager.instance()
    pm.discover()
    assert pm.get_manifest("refstore").contributions.readers  # found through the entry point
    layers = npe2.read([str(path)], stack=False, plugin_name="refstore")
    assert len(layers) == 1
    return layers[0]


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    if shutil.which("vips") is None:
        pytest.skip("needs libvips-tools (vips dzsave)")
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(_rgb(150, 230)))
    subprocess.run(["vips", "dzsave", "src.png", "slide", "--tile-size", "64", "--overlap", "1", "--suffix", ".png"],
                   cwd=tmp_path, check=True)
    return tmp_path / "slide.dzi"


def _assert_rgb_pyramid(layer: tuple[Any, dict[str, Any], str], level0: np.ndarray) -> None:
    data, meta, kind = layer
    assert kind == "image" and meta["rgb"] is True and meta["multiscale"] is True
    assert all(isinstance(d, da.Array) for d in data)  # lazy: nothing read until napari draws
    assert [d.shape[-1] for d in data] == [3] * len(data)
    assert all(a.shape[0] >= b.shape[0] for a, b in itertools.pairwise(data))
    np.testing.assert_array_equal(data[0].compute(), level0)


def test_deep_zoom_image_and_its_manifest(slide: Path) -> None:
    _assert_rgb_pyramid(_read(slide), _rgb(150, 230))
    manifest = slide.parent / "slide.json"
    dzi(str(slide), show_progress=False).save(str(manifest))
    _assert_rgb_pyramid(_read(manifest), _rgb(150, 230))


@vips
def test_xyz_folder(tmp_path: Path) -> None:
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(_rgb(200, 300)))
    subprocess.run(["vips", "dzsave", "src.png", "tiles", "--layout", "google", "--tile-size", "64",
                    "--suffix", ".png"], cwd=tmp_path, check=True)
    data, meta, _ = _read(tmp_path / "tiles")
    assert meta["rgb"] and meta["multiscale"]
    np.testing.assert_array_equal(data[0][:200, :300].compute(), _rgb(200, 300))


def test_ome_tiffs_rgb_and_channels(tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.ome.tif"
    with tifffile.TiffWriter(rgb, ome=True) as tif:
        tif.write(_rgb(256, 192), subifds=1, tile=(64, 64), compression="jpeg", photometric="rgb")
        tif.write(_rgb(256, 192)[::2, ::2], subfiletype=1, tile=(64, 64), compression="jpeg", photometric="rgb")
    _assert_rgb_pyramid(_read(rgb), tifffile.imread(rgb, level=0))
    stack = np.random.default_rng(1).integers(0, 4000, (2, 96, 64), dtype="u2")
    gray = tmp_path / "channels.ome.tif"
    tifffile.imwrite(gray, stack, tile=(32, 32), compression="zlib", metadata={"axes": "CYX"})
    data, meta, _ = _read(gray)
    assert meta["channel_axis"] == 0 and meta["multiscale"] is False and "rgb" not in meta
    np.testing.assert_array_equal(data.compute(), stack)


@vips
def test_remote_slide_reads_nothing_until_drawn(tmp_path: Path, slide: Path, http: RangeHTTPServer) -> None:
    http.directory_status = 403
    url = http.serve(slide.parent, "napari") + "/slide.dzi"
    data, _, _ = _read(url)
    tiles = [r for r in http.log if r.path.endswith(".png")]
    assert len(tiles) == 1  # the sample tile; the levels are not read yet
    np.testing.assert_array_equal(np.asarray(data[-2].compute()), np.asarray(data[-2]))
    assert len([r for r in http.log if r.path.endswith(".png")]) > 1


def test_reader_declines_what_it_cannot_open(tmp_path: Path) -> None:
    from refstore._napari import get_reader

    (tmp_path / "notes.txt").write_text("hi")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without zoom-level subfolders
    assert get_reader([str(tmp_path / "a.dzi"), str(tmp_path / "b.dzi")]) is None
    assert callable(get_reader(str(tmp_path / "slide.dzi")))
    assert refstore.__name__ == "refstore"
