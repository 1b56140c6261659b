"""``build.tiff`` on every TIFF compression, layout and pyramid kind, compared with tifffile's own read.

Files come from tifffile, libvips (``vips tiffsave``) and GDAL's COG driver. Each
level read through zarr (formats 2 and 3) must equal ``tifffile.imread(level=i)``,
channel axis moved where refstore puts it. One test opens every manifest in a
fresh interpreter that imports nothing but zarr and refstore's store, so the
``refstore.tiff_segment`` codec must come from the entry points.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr
from _entry_points import fresh_env, probe_site

import refstore
from refstore.build import tiff
from refstore.codecs import ImageCodecError, TiffSegmentCodec, TiffSegmentNumcodec

# tifffile compression name -> the imagecodecs library that must be present to write it
COMPRESSIONS: dict[str, str | None] = {
    "none": None,
    "zlib": "ZLIB",
    "deflate": "DEFLATE",
    "lzw": "LZW",
    "jpeg": "JPEG8",
    "jpeg2000": "JPEG2K",
    "jpegxl": "JPEGXL",
    "webp": "WEBP",
    "zstd": "ZSTD",
    "packbits": "PACKBITS",
    "lzma": "LZMA",
    "png": "PNG",
    "jpegxr": "JPEGXR",
    "lerc": "LERC",
}


def _available(name: str) -> bool:
    lib = COMPRESSIONS[name]
    return lib is None or bool(getattr(imagecodecs, lib).available)


def _rgb(h: int, w: int, dtype: str = "u1", seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    data = np.stack([x * 3 + y, y * 5 + x // 2, (x * y) % 251], -1)
    data = data + np.random.default_rng(seed).integers(0, 4, data.shape)
    return (data % 250).astype(dtype)


def _levels_equal(path: Path, manifest: refstore.Manifest, out: Path, channel_last: bool = False) -> int:
    """Assert every level of *manifest* equals tifffile's read of *path*; return the level count."""
    manifest.save(str(out))
    group = zarr.open_group(refstore.ReferenceStore(str(out)), mode="r")
    with tifffile.TiffFile(path) as tif:
        nlevels, axes = len(tif.series[0].levels), tif.series[0].axes
    assert sorted(group.array_keys(), key=int) == [str(i) for i in range(nlevels)]
    for i in range(nlevels):
        want = tifffile.imread(path, level=i)
        got = group[str(i)][:]
        if axes.endswith("S") and not channel_last:
            got = np.moveaxis(got, len(axes) - 3, -1)  # refstore's NGFF order puts c before y, x
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want, err_msg=f"{path.name} level {i}")
    return nlevels


def _write(path: Path, data: np.ndarray, compression: str, **kwargs: Any) -> None:
    tifffile.imwrite(path, data, compression=None if compression == "none" else compression, **kwargs)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("layout", ["tiled", "stripped", "planar-tiled", "planar-stripped"])
@pytest.mark.parametrize("compression", list(COMPRESSIONS))
def test_every_compression_and_layout(tmp_path: Path, compression: str, layout: str, zarr_format: int) -> None:
    if not _available(compression):
        pytest.skip(f"imagecodecs has no {COMPRESSIONS[compression]} encoder to write the file")
    data = _rgb(150, 110)
    kwargs: dict[str, Any] = {"photometric": "rgb"}
    if layout.startswith("planar"):
        if compression == "webp":
            pytest.skip("tifffile writes no planar WebP")
        data = np.moveaxis(data, -1, 0).copy()
        kwargs["planarconfig"] = "separate"
    kwargs.update({"tile": (64, 48)} if layout.endswith("tiled") else {"rowsperstrip": 40})  # 150 % 40: a short last strip
    path = tmp_path / "a.tif"
    _write(path, data, compression, **kwargs)
    assert _levels_equal(path, tiff(str(path), zarr_format=zarr_format), tmp_path / "a.json") == 1


@pytest.mark.parametrize(
    ("dtype", "compression", "predictor", "byteorder"),
    [
        ("u2", "zlib", "horizontal", "<"),
        ("u2", "zlib", "horizontal", ">"),
        ("u2", "lzw", "horizontal", ">"),
        ("i2", "zstd", "horizontal", "<"),
        ("f4", "zlib", "floatingpoint", "<"),
        ("f4", "lzw", "floatingpoint", ">"),
        ("f8", "none", None, ">"),
        ("u1", "zlib", "horizontal", "<"),
    ],
)
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_predictors_dtypes_and_byte_order(
    tmp_path: Path, dtype: str, compression: str, predictor: str | None, byteorder: str, zarr_format: int
) -> None:
    gray = _rgb(130, 90, dtype)[..., 0]
    rgb = _rgb(130, 90, dtype)
    for name, data, kwargs in [("gray", gray, {}), ("rgb", rgb, {"photometric": "rgb"})]:
        path = tmp_path / f"{name}.tif"
        for layout in ({"tile": (32, 32)}, {"rowsperstrip": 50}):
            _write(path, data, compression, predictor=predictor, byteorder=byteorder, **kwargs, **layout)
            _levels_equal(path, tiff(str(path), zarr_format=zarr_format), tmp_path / f"{name}.json")


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("compression", ["none", "zlib", "jpeg", "lzw", "webp", "jpeg2000"])
def test_pyramids_subifds_and_series_levels(tmp_path: Path, compression: str, zarr_format: int) -> None:
    if not _available(compression):
        pytest.skip(f"imagecodecs has no {COMPRESSIONS[compression]} encoder")
    data = _rgb(256, 192)
    opts = {"tile": (64, 64), "photometric": "rgb", "compression": None if compression == "none" else compression}
    sub = tmp_path / "subifds.ome.tif"  # OME-TIFF, levels in SubIFDs
    with tifffile.TiffWriter(sub, ome=True) as tif:
        tif.write(data, subifds=2, **opts)
        tif.write(data[::2, ::2], subfiletype=1, **opts)
        tif.write(data[::4, ::4], subfiletype=1, **opts)
    pages = tmp_path / "pages.tif"  # plain TIFF, levels as reduced-resolution pages
    with tifffile.TiffWriter(pages) as tif:
        tif.write(data, **opts)
        tif.write(data[::2, ::2], subfiletype=1, **opts)
        tif.write(data[::4, ::4], subfiletype=1, **opts)
    for path in (sub, pages):
        manifest = tiff(str(path), zarr_format=zarr_format)
        assert _levels_equal(path, manifest, tmp_path / "p.json") == 3


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_tiff_channels_and_z_planes(tmp_path: Path, zarr_format: int) -> None:
    data = np.random.default_rng(2).integers(0, 4000, (3, 5, 96, 80), dtype="u2")  # c, z, y, x as pages
    path = tmp_path / "czyx.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(data, tile=(32, 32), compression="zlib", predictor=True, metadata={"axes": "CZYX"},
                  subifds=1)
        tif.write(data[..., ::2, ::2], tile=(32, 32), compression="zlib", predictor=True, subfiletype=1)
    manifest = tiff(str(path), zarr_format=zarr_format)
    assert _levels_equal(path, manifest, tmp_path / "o.json") == 2
    group = zarr.open_group(refstore.ReferenceStore(str(tmp_path / "o.json")), mode="r")
    ms = group.attrs["multiscales"][0] if zarr_format == 2 else group.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 2.0, 2.0]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_channel_last_keeps_the_stored_order(tmp_path: Path, zarr_format: int) -> None:
    path = tmp_path / "c.tif"
    _write(path, _rgb(100, 70), "jpeg", tile=(32, 32), photometric="rgb")
    manifest = tiff(str(path), channel_last=True, zarr_format=zarr_format)
    _levels_equal(path, manifest, tmp_path / "c.json", channel_last=True)
    group = zarr.open_group(refstore.ReferenceStore(str(tmp_path / "c.json")), mode="r")
    assert "multiscales" not in group.attrs and "ome" not in group.attrs
    assert group["0"].shape == (100, 70, 3)


vips = pytest.mark.skipif(shutil.which("vips") is None, reason="needs libvips-tools (vips tiffsave)")
gdal = pytest.mark.skipif(shutil.which("gdal_translate") is None, reason="needs gdal-bin (gdal_translate)")


@vips
@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize(
    "options",
    [
        ["--compression", "jpeg"],  # YCbCr, subsampled, shared JPEGTables
        ["--compression", "jpeg", "--Q", "95", "--bigtiff"],
        ["--compression", "deflate", "--predictor", "horizontal"],
        ["--compression", "lzw", "--predictor", "horizontal"],
        ["--compression", "webp"],
        ["--compression", "zstd"],
        ["--compression", "none"],
    ],
)
def test_vips_pyramids(tmp_path: Path, options: list[str], zarr_format: int) -> None:
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(_rgb(300, 200)))
    path = tmp_path / "v.tif"
    subprocess.run(["vips", "tiffsave", str(tmp_path / "src.png"), str(path), "--tile", "--tile-width", "64",
                    "--tile-height", "64", "--pyramid", *options], check=True)
    if options[1] == "jpeg":
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].jpegtables is not None  # abbreviated tiles: the tables are shared
    assert _levels_equal(path, tiff(str(path), zarr_format=zarr_format), tmp_path / "v.json") >= 3


@gdal
@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("creation", [["COMPRESS=JPEG"], ["COMPRESS=DEFLATE", "PREDICTOR=2"],
                                      ["COMPRESS=LZW", "PREDICTOR=2"], ["COMPRESS=WEBP"], ["COMPRESS=ZSTD"]])
def test_gdal_cogs(tmp_path: Path, creation: list[str], zarr_format: int) -> None:
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(_rgb(300, 200)))
    path = tmp_path / "cog.tif"
    options = [arg for c in ["BLOCKSIZE=128", *creation] for arg in ("-co", c)]
    subprocess.run(["gdal_translate", "-q", "-of", "COG", *options, str(tmp_path / "src.png"), str(path)], check=True)
    assert _levels_equal(path, tiff(str(path), zarr_format=zarr_format), tmp_path / "g.json") >= 2


def test_manifests_open_in_a_fresh_interpreter_with_nothing_imported(tmp_path: Path) -> None:
    """Every compression, both formats, read by a process that imports only zarr and the store."""
    data = _rgb(90, 70)
    cases = []
    for compression in COMPRESSIONS:
        if not _available(compression):
            continue
        path = tmp_path / f"{compression}.tif"
        _write(path, data, compression, tile=(32, 32), photometric="rgb")
        for fmt in (2, 3):
            out = tmp_path / f"{compression}-v{fmt}.json"
            tiff(str(path), zarr_format=fmt).save(str(out))
            expected = tmp_path / f"{compression}.npy"
            np.save(expected, np.moveaxis(tifffile.imread(path), -1, 0))
            cases.append((str(out), str(expected)))
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np, zarr
        from refstore import ReferenceStore
        results = {{}}
        for manifest, expected in {cases!r}:
            try:
                got = zarr.open_group(ReferenceStore(manifest), mode="r")["0"][:]
                results[manifest] = bool(np.array_equal(got, np.load(expected)))
            except Exception as exc:
                results[manifest] = f"{{type(exc).__name__}}: {{exc}}"
        assert "imagecodecs.numcodecs" not in sys.modules
        print(json.dumps(results))
    """)
    done = subprocess.run([sys.executable, "-c", script], env=fresh_env(probe_site(tmp_path / "site")),
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) >= 2 * 10
    assert {k: v for k, v in results.items() if v is not True} == {}


def test_codec_refuses_bad_configuration_and_writing() -> None:
    with pytest.raises(ImageCodecError, match="unknown configuration key"):
        TiffSegmentCodec(axes="yxs", segment=[1, 8, 8, 3], colour="rgb")
    with pytest.raises(ImageCodecError, match="leave out 's'"):
        TiffSegmentCodec(axes="yx", segment=[1, 8, 8, 3])
    with pytest.raises(ImageCodecError, match="chunk_shape and dtype"):
        TiffSegmentNumcodec(axes="yx", segment=[1, 8, 8, 1])
    codec = TiffSegmentNumcodec(axes="yx", segment=[1, 8, 8, 1], chunk_shape=[8, 8], dtype="|u1")
    with pytest.raises(ImageCodecError, match="cannot write"):
        codec.encode(np.zeros((8, 8), "u1"))
    with pytest.raises(ImageCodecError, match="does not decode|not whole rows"):
        TiffSegmentNumcodec(axes="yx", segment=[1, 8, 8, 1], compression=8, chunk_shape=[8, 8], dtype="|u1").decode(
            b"not zlib data"
        )
    assert TiffSegmentCodec.from_dict(TiffSegmentCodec(axes="syx", segment=[1, 8, 8, 3]).to_dict()).segment.axes == "syx"


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize(
    ("bits", "compression", "tile"),
    [(1, "zlib", None), (1, "packbits", None), (1, None, (16, 16)), (2, None, (16, 32)), (4, None, None),
     (12, None, None), (12, None, (16, 16))],
)
def test_packed_and_bilevel_samples(
    tmp_path: Path, bits: int, compression: str | None, tile: tuple[int, int] | None, zarr_format: int
) -> None:
    data = np.random.default_rng(5).integers(0, 2**bits, (37, 29)).astype("u2" if bits > 8 else "u1")
    path = tmp_path / "bits.tif"
    if bits == 1:
        tifffile.imwrite(path, data.astype(bool), compression=compression, rowsperstrip=10, tile=tile)
    else:
        tifffile.imwrite(path, data, bitspersample=bits, rowsperstrip=10, tile=tile)
    _levels_equal(path, tiff(str(path), zarr_format=zarr_format), tmp_path / "bits.json")


@vips
@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("tiled", [False, True])
def test_vips_ccitt_fax4_bilevel(tmp_path: Path, tiled: bool, zarr_format: int) -> None:
    y, x = np.mgrid[0:75, 0:90]
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode((((x // 7 + y // 5) % 2) * 255).astype("u1")))
    tiles = ["--tile", "--tile-width", "32", "--tile-height", "32"] if tiled else []
    subprocess.run(["vips", "tiffsave", str(tmp_path / "src.png"), str(tmp_path / "fax.tif"), "--compression",
                    "ccittfax4", "--bitdepth", "1", *tiles], check=True)
    with tifffile.TiffFile(tmp_path / "fax.tif") as tif:
        assert tif.pages[0].compression == 4 and tif.pages[0].bitspersample == 1
    path = tmp_path / "fax.tif"
    _levels_equal(path, tiff(str(path), zarr_format=zarr_format), tmp_path / "fax.json")
    assert tifffile.imread(path).any() and not tifffile.imread(path).all()


def test_refuses_what_it_cannot_decode(tmp_path: Path) -> None:
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.zeros((16, 16), "u1"))
    with pytest.raises(ValueError, match="series 3 requested"):
        tiff(str(path), series=3)
    with pytest.raises(ValueError, match="zarr_format=4"):
        tiff(str(path), zarr_format=4)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize(
    ("axes", "shape", "options"),
    [
        ("ZCYX", (5, 3, 50, 40), {"imagej": True}),  # contiguous ImageJ hyperstack
        ("TZCYX", (2, 3, 2, 64, 64), {"ome": True, "tile": (32, 32), "compression": "zstd"}),
        ("ZYXS", (3, 64, 48, 3), {"ome": True, "photometric": "rgb", "compression": "lzw", "predictor": True}),
    ],
)
def test_page_axes_move_to_ngff_order(
    tmp_path: Path, axes: str, shape: tuple[int, ...], options: dict[str, Any], zarr_format: int
) -> None:
    data = np.random.default_rng(4).integers(0, 200, shape, dtype="u1")
    path = tmp_path / "h.tif"
    tifffile.imwrite(path, data, metadata={"axes": axes}, **options)
    tiff(str(path), zarr_format=zarr_format).save(str(tmp_path / "h.json"))
    array = zarr.open_group(refstore.ReferenceStore(str(tmp_path / "h.json")), mode="r")["0"]
    dims = list(array.metadata.dimension_names) if zarr_format == 3 else array.attrs["_ARRAY_DIMENSIONS"]
    names = [{"S": "c"}.get(a, a.lower()) for a in axes]
    assert dims == sorted(names, key=lambda a: "tczyx".index(a))  # OME-NGFF order: t, c, z, y, x
    np.testing.assert_array_equal(array[:].transpose([dims.index(a) for a in names]), tifffile.imread(path))


def test_cli_jpeg_ome_tiff_needs_no_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: ``refstore build tiff slide.ome.tif -o out.json`` on a JPEG OME-TIFF."""
    import argparse

    from refstore.build._cli import add_build_parser

    path = tmp_path / "slide.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(_rgb(256, 192), subifds=1, tile=(64, 64), compression="jpeg", photometric="rgb")
        tif.write(_rgb(256, 192)[::2, ::2], subfiletype=1, tile=(64, 64), compression="jpeg", photometric="rgb")
    parser = argparse.ArgumentParser()
    add_build_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build", "tiff", str(path), "-o", str(tmp_path / "out.json")])
    assert args.func(args) == 0
    assert capsys.readouterr().err == ""  # no "register imagecodecs first" note any more
    _levels_equal(path, refstore.Manifest.open(str(tmp_path / "out.json")), tmp_path / "again.json")


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("nodata", ["nan", "-9999"])
def test_gdal_nodata_is_the_fill_value_in_strict_json(tmp_path: Path, nodata: str, zarr_format: int) -> None:
    data = np.random.default_rng(6).random((130, 90)).astype("f4")
    data[:20, :20] = float(nodata)
    path = tmp_path / "nodata.tif"
    tifffile.imwrite(path, data, tile=(32, 32), compression="zlib", predictor=True,
                     extratags=[(42113, "s", 0, nodata, True)])  # GDAL_NODATA
    manifest = tiff(str(path), zarr_format=zarr_format)
    doc = manifest.get("0/.zarray" if zarr_format == 2 else "0/zarr.json")

    def refuse(token: str) -> None:
        raise AssertionError(f"bare {token} in the metadata: not JSON")

    meta = json.loads(doc, parse_constant=refuse)
    assert meta["fill_value"] == ("NaN" if nodata == "nan" else -9999.0)
    manifest.save(str(tmp_path / "n.json"))
    got = zarr.open_group(refstore.ReferenceStore(str(tmp_path / "n.json")), mode="r")["0"][:]
    np.testing.assert_array_equal(got, tifffile.imread(path))
