"""One manifest, one answer, on every route: virtual arrays (a misaligned concat written by
``save_virtual``, a Deep Zoom pyramid with overlap) read the same through every face.

Until the engine stood under both faces, ``reference://`` read virtual arrays as fill
values, silently. Each route here is compared with the source library's own read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import fsspec
import imagecodecs
import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore

import refstore
from refstore.virtual import concat, save_virtual

sys.path.insert(0, str(Path(__file__).resolve().parent / "virtual"))
from _vdata import open_h5_var, read_h5, write_h5

ROUTES = ("store", "store-threaded", "mapper-sync", "fsspecstore-async", "url-subprocess", "xarray")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, np.ndarray]]:
    """name -> (manifest path, array path, truth)."""
    root = tmp_path_factory.mktemp("routes")
    rng = np.random.default_rng(5)
    paths, parts = [], []
    for i, days in enumerate((365, 366, 365)):  # chunk 30 along time: years 2 and 3 start mid-chunk
        data = rng.standard_normal((days, 3, 4)).astype("f4")
        paths.append(write_h5(root / f"y{i}.h5", data, (30, 3, 4), "gzip"))
        parts.append(read_h5(paths[-1]))
    combined = root / "combined.json"
    save_virtual({"t": concat([open_h5_var(p) for p in paths])}).save(str(combined))
    out = {"concat": (combined, "t", np.concatenate(parts))}
    if shutil.which("vips") is not None:
        yy, xx = np.mgrid[0:150, 0:230]
        image = np.stack([xx % 256, yy % 256, (xx + 2 * yy) % 256], axis=-1).astype("u1")
        (root / "slide.png").write_bytes(imagecodecs.png_encode(image))
        subprocess.run(["vips", "dzsave", "slide.png", "dz", "--tile-size", "64", "--overlap", "2",
                        "--suffix", ".png"], cwd=root, check=True)
        dzi = root / "dzi.json"
        refstore.build.dzi(str(root / "dz.dzi"), show_progress=False).save(str(dzi))
        out["dzi-overlap"] = (dzi, "0", image)
    return out


def _read(route: str, manifest: Path, path: str) -> np.ndarray:
    fo = str(manifest)
    if route == "store":
        return zarr.open_array(refstore.ReferenceStore(fo), path=path, mode="r")[:]
    if route == "store-threaded":
        with zarr.config.set({"codec_pipeline.path": "refstore.pipeline.ThreadedCodecPipeline"}):
            return zarr.open_array(refstore.ReferenceStore(fo), path=path, mode="r")[:]
    if route == "mapper-sync":
        fs = fsspec.filesystem("reference", fo=fo, skip_instance_cache=True)
        return zarr.open_group(fs.get_mapper(""), mode="r")[path][:]
    if route == "fsspecstore-async":
        fs = fsspec.filesystem("reference", fo=fo, asynchronous=True, skip_instance_cache=True)
        return zarr.open_array(FsspecStore(fs, read_only=True), path=path, mode="r")[:]
    if route == "url-subprocess":  # a fresh interpreter that never imports refstore itself
        code = textwrap.dedent(f"""
            import io, sys, numpy as np, zarr
            arr = zarr.open_group("reference://", mode="r", storage_options={{"fo": {fo!r}}})[{path!r}]
            buf = io.BytesIO()
            np.save(buf, np.asarray(arr[:]))
            sys.stdout.buffer.write(buf.getvalue())
        """)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=240, check=False)
        assert done.returncode == 0, done.stderr.decode()
        import io

        return np.load(io.BytesIO(done.stdout))
    if route == "xarray":
        import xarray as xr

        ds = xr.open_dataset("reference://", engine="zarr", mask_and_scale=False, backend_kwargs={
            "storage_options": {"fo": fo}, "consolidated": False})
        return ds[path].values
    raise ValueError(route)


# xarray opens only arrays with dimension names, which a DZI level has not
CASES = [(name, route) for name in ("concat", "dzi-overlap") for route in ROUTES
         if (name, route) != ("dzi-overlap", "xarray")]


@pytest.mark.parametrize(("name", "route"), CASES)
def test_virtual_arrays_read_the_same_on_every_route(datasets: dict[str, Any], name: str, route: str) -> None:
    if name not in datasets:
        pytest.skip("needs libvips-tools (vips dzsave); .ci/run installs it")
    manifest, path, truth = datasets[name]
    got = _read(route, manifest, path)
    assert got.shape == truth.shape
    np.testing.assert_array_equal(got, truth)


def test_listing_a_virtual_array_through_the_filesystem(datasets: dict[str, Any]) -> None:
    """ls/find/info/cat of virtual chunk keys through ``reference://``, as zarr's own listing shows them."""
    manifest, path, truth = datasets["concat"]
    fs = fsspec.filesystem("reference", fo=str(manifest), skip_instance_cache=True)
    store = refstore.ReferenceStore(str(manifest))
    keys = sorted(zarr.core.sync.sync(_collect(store.list_prefix(f"{path}/"))))
    chunk_keys = [k for k in keys if "/.sources/" not in k and k.rsplit("/", 1)[-1][0].isdigit()]
    assert chunk_keys, keys
    assert set(chunk_keys) <= set(fs.find(path))
    first = chunk_keys[0]
    assert fs.info(first)["type"] == "file" and fs.info(first)["size"] == len(fs.cat_file(first)) > 0
    assert fs.cat_file(first) == store.get_sync(first).to_bytes()
    assert first.rsplit("/", 1)[-1] in [p.rsplit("/", 1)[-1] for p in fs.ls(first.rsplit("/", 1)[0], detail=False)]
    meta = json.loads(fs.cat_file(f"{path}/.zarray") if fs.exists(f"{path}/.zarray") else fs.cat_file(f"{path}/zarr.json"))
    assert meta["shape"][0] == truth.shape[0]


async def _collect(it: Any) -> list[str]:
    return [k async for k in it]
