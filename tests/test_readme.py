"""The README's code runs as written, and every usage exits quietly.

Each ```python block of README.md runs in a fresh interpreter, in a folder
holding the files it names (``refs.json`` made by kerchunk from a netCDF4
file, PNG plates, a libvips Deep Zoom slide) and with ``s3://bucket/...`` on a
loopback moto server. A check written here for that block then compares what
the block produced with the source library's own read. stderr must be empty:
no warnings, pending tasks or unclosed sessions at exit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _datasets import kerchunk_refs, make_netcdf
from _servers import CLIENT_ENV, RangeHTTPServer, S3Server

README = Path(__file__).resolve().parent.parent / "README.md"

#: A check per README block, chosen by a string the block contains. Each runs after
#: the block, in its namespace, with ``truth`` (h5py's read of data.nc) and ``image``.
CHECKS: dict[str, str] = {
    'fo="s3://bucket/refs.json"': """
        assert np.array_equal(group["tas"][:], truth["tas"]) and np.array_equal(group["pr"][:], truth["pr"])
    """,
    'ReferenceStore("refs.json")    #': """
        assert np.array_equal(group["tas"][:], truth["tas"]) and np.array_equal(group["lat"][:], truth["lat"])
    """,
    "xr.open_zarr(refstore.ReferenceStore": """
        import xarray
        expected = xarray.open_dataset("data.nc")
        for d in (xr.open_zarr(refstore.ReferenceStore("refs.json"), consolidated=False), ds):
            for name in ("pr", "lat", "time"):
                np.testing.assert_array_equal(d[name].values, expected[name].values)
            # netCDF4 applies the float32 scale_factor in float32; JSON attributes make it float64
            np.testing.assert_allclose(d.tas.values, expected.tas.values, rtol=0, atol=1e-4)
            assert d.tas.attrs["units"] == "K" and int(d.tas.isnull().sum()) == 5
    """,
    "refstore.Manifest.open": """
        ref = m.get("tas/0.0.0")
        assert isinstance(ref, refstore.Reference) and ref.url.endswith("data.nc") and ref.length > 0
        again = refstore.Manifest.open("refs.parq")
        assert sorted(again.keys()) == sorted(m.keys()) and again.get("tas/0.0.0") == ref
    """,
    "refstore.build.images": """
        plates = zarr.open_group(refstore.ReferenceStore(
            refstore.build.images("plates/*.png", r"plate_(?P<row>\\d+)_(?P<col>\\d+)\\.png", mosaic=True)), mode="r")
        assert np.array_equal(plates["image"][:], image[:64, :96])
        group = zarr.open_group(refstore.ReferenceStore(m), mode="r")
        # the slide's levels are OME-NGFF (c, y, x)
        assert len(levels) > 2 and levels[0].shape == (3, *image.shape[:2])
        assert np.array_equal(np.moveaxis(group[levels[0].path][:], 0, -1), image)
    """,
    "refstore.concat(": """
        back = zarr.open_group(refstore.ReferenceStore("virtual.json"), mode="r")
        assert np.array_equal(back["tas"][:], np.concatenate([truth["tas"], truth["tas"]]))
        assert np.array_equal(window, np.concatenate([truth["tas"], truth["tas"]])[2:8, ::2])
        assert np.array_equal(back["pr"][:], np.stack([truth["pr"], truth["pr"]]))
        n, y, x = truth["pr"].shape
        assert back["padded"].shape == (n, y + 6, x) and np.array_equal(back["padded"][:, 3:-3], truth["pr"])
        assert (back["padded"][:, :3] == g["pr"].fill_value).all()
    """,
    "codec_pipeline.path": """
        import refstore
        assert zarr.config.get("codec_pipeline.path") == "refstore.pipeline.ThreadedCodecPipeline"
        group = zarr.open_group(refstore.ReferenceStore("refs.json"), mode="r")
        assert np.array_equal(group["tas"][:], truth["tas"])
    """,
}

_PRELUDE = """
import numpy as np
import h5py
with h5py.File("data.nc", "r") as _f:
    truth = {name: _f[name][:] for name in ("tas", "pr", "lat", "time")}
image = np.load("image.npy")
"""


def readme_blocks() -> list[str]:
    """The ```python blocks of README.md, in order."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _check_for(block: str) -> str:
    found = [check for marker, check in CHECKS.items() if marker in block]
    assert len(found) == 1, f"README block needs exactly one check in tests/test_readme.py:\n{block}"
    return textwrap.dedent(found[0])


def run_script(code: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter (no pytest, no refstore import unless the code has one)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    full.update(env)
    full["PYTHONWARNINGS"] = "default"  # show every warning once, as a user's interpreter would not hide them
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=240, check=False)


@pytest.fixture(scope="module")
def s3(s3_server: S3Server) -> S3Server:
    """conftest's moto server, under the name the README checks use."""
    return s3_server


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, s3: S3Server) -> Path:
    """A folder with every file the README names, and ``s3://bucket/`` holding the same dataset."""
    import imagecodecs

    root = tmp_path_factory.mktemp("readme")
    nc = make_netcdf(root / "data.nc")
    (root / "refs.json").write_text(json.dumps(kerchunk_refs(nc, str(nc))))
    s3.put_bytes("bucket", "data.nc", nc.read_bytes(), public=True)
    s3.put_bytes("bucket", "refs.json", json.dumps(kerchunk_refs(nc, "s3://bucket/data.nc")).encode(), public=True)
    yy, xx = np.mgrid[0:300, 0:420]
    image = np.stack([xx % 251, yy % 241, (xx * yy) % 239], axis=-1).astype("u1")
    np.save(root / "image.npy", image)
    (root / "plates").mkdir()
    for r in range(2):
        for c in range(3):
            tile = np.ascontiguousarray(image[r * 32 : r * 32 + 32, c * 32 : c * 32 + 32])
            (root / "plates" / f"plate_{r}_{c}.png").write_bytes(imagecodecs.png_encode(tile))
    (root / "slide.png").write_bytes(imagecodecs.png_encode(image))
    if shutil.which("vips") is None:
        pytest.skip("needs libvips-tools (vips dzsave); .ci/run installs it")
    subprocess.run(["vips", "dzsave", "slide.png", "slide", "--tile-size", "128", "--overlap", "0",
                    "--suffix", ".png"], cwd=root, check=True)
    return root


def _env(s3: S3Server) -> dict[str, str]:
    return {**CLIENT_ENV, "AWS_ENDPOINT_URL": s3.endpoint_url}


def test_readme_has_the_blocks_we_check() -> None:
    blocks = readme_blocks()
    assert len(blocks) == len(CHECKS)
    for block in blocks:
        _check_for(block)


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_block_runs_as_written(index: int, site: Path, s3: S3Server) -> None:
    block = readme_blocks()[index]
    code = "\n".join([_PRELUDE, block, _check_for(block), "print('checked')"])
    done = run_script(code, site, _env(s3))
    assert done.returncode == 0 and done.stdout.strip().endswith("checked"), done.stderr
    assert done.stderr == "", f"README block {index} left this on stderr:\n{done.stderr}"


# -- quiet exit, for usages the README names in prose: sync/async, local/HTTP/S3 ----------------

_USAGES: dict[str, str] = {
    "store-sync": """
        import refstore, zarr
        print(zarr.open_group(refstore.ReferenceStore(FO, **OPTS), mode="r")["tas"][:].sum())
    """,
    "store-async": """
        import asyncio, refstore, zarr.api.asynchronous as za
        async def main():
            group = await za.open_group(store=refstore.ReferenceStore(FO, **OPTS), mode="r")
            arr = await group.getitem("tas")
            print((await arr.getitem(slice(None))).sum())
        asyncio.run(main())
    """,
    "fs-mapper": """
        import fsspec, zarr
        fs = fsspec.filesystem("reference", fo=FO, **OPTS)
        print(zarr.open_group(fs.get_mapper(""), mode="r")["tas"][:].sum())
    """,
    "fs-async": """
        import asyncio, fsspec
        async def main():
            fs = fsspec.filesystem("reference", fo=FO, asynchronous=True, **OPTS)
            data = await fs._cat_file("tas/0.0.0")
            assert len(data) > 0
            fs2 = fsspec.filesystem("reference", fo=FO, skip_instance_cache=True, **OPTS)
            import zarr
            print(zarr.open_group(fs2.get_mapper(""), mode="r")["tas"][:].sum())
        asyncio.run(main())
    """,
    "xarray-url": """
        import xarray as xr
        ds = xr.open_dataset("reference://", engine="zarr", backend_kwargs={
            "storage_options": {"fo": FO, **OPTS}, "consolidated": False}, mask_and_scale=False)
        print(ds.tas.values.sum())
    """,
}


@pytest.fixture(scope="module")
def http_site(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RangeHTTPServer(tmp_path_factory.mktemp("readme_http")).start()
    nc = site / "data.nc"
    shutil.copy(nc, server.root / "data.nc")
    (server.root / "refs.json").write_text(json.dumps(kerchunk_refs(nc, f"{server.url}/data.nc")))
    yield server.url
    server.stop()


@pytest.mark.parametrize("usage", sorted(_USAGES))
@pytest.mark.parametrize("where", ["local", "http", "s3"])
def test_usage_exits_quietly(usage: str, where: str, site: Path, s3: S3Server, http_site: str) -> None:
    fo: str = {"local": "refs.json", "http": f"{http_site}/refs.json", "s3": "s3://bucket/refs.json"}[where]
    opts: dict[str, Any] = {"remote_protocol": "s3"} if where == "s3" else {}
    code = f"FO = {fo!r}\nOPTS = {opts!r}\n" + textwrap.dedent(_USAGES[usage])
    done = run_script(code, site, _env(s3))
    assert done.returncode == 0, done.stderr
    import h5py

    with h5py.File(site / "data.nc", "r") as f:
        expected = f["tas"][:].sum()
    assert done.stdout.split()[-1] == str(expected)
    assert done.stderr == "", f"{usage} over {where} left this on stderr:\n{done.stderr}"
