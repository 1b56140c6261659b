"""Every kind of manifest refstore reads, each with the truth from its source library.

A :class:`Kind` holds kerchunk-style references (a JSON-able dict) whose URLs are local
paths under one root directory, the writer of its manifest format, and the arrays a
reader must get (read by h5py/netCDF4, tifffile, imagecodecs, or the source image
itself). :meth:`Kind.write` rewrites the references to where the root is served
(``http://``, ``s3://``, ``gs://``) before writing, so every kind runs on every target.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np

import refstore

_VIRTUAL = str(Path(__file__).resolve().parent / "virtual")  # _vdata's folder
if _VIRTUAL not in sys.path:
    sys.path.insert(0, _VIRTUAL)

#: The kinds, in the order the matrix lists them.
KIND_NAMES = (
    "json-v0", "json-v1", "parquet-v2", "parquet-v3", "combine", "views",
    "dzi-overlap", "png-tiles", "jpeg-tiles", "ome-tiff",
)

Writer = Callable[[dict[str, Any], Path], Path]


@dataclass(frozen=True)
class Kind:
    """One manifest kind.

    ``refs`` point under ``root``; ``truth`` maps array paths to their values;
    ``xarray`` names the root variables ``xr.open_dataset`` is compared on, or is None
    when xarray cannot open the group as one dataset (it must then raise).
    """

    name: str
    root: Path
    refs: dict[str, Any]
    writer: Writer
    truth: dict[str, np.ndarray]
    xarray: tuple[str, ...] | None

    def write(self, dest: Path, base_url: str | None = None) -> Path:
        """Write the manifest under ``dest``, its references moved from ``root`` to ``base_url``."""
        refs = self.refs
        if base_url is not None:
            # copies served elsewhere are other objects: the identity recorded of the local
            # files (refstore:sources, verified on read) does not describe them
            refs = {k: v for k, v in refs.items() if k != "refstore:sources"}
            text = json.dumps(refs)
            assert str(self.root) in text, f"{self.name}: no reference under {self.root}"
            refs = json.loads(text.replace(str(self.root), base_url))
        dest.mkdir(parents=True, exist_ok=True)
        return self.writer(refs, dest / self.name)


def _write_json(refs: dict[str, Any], stem: Path) -> Path:
    out = stem.with_suffix(".json")
    out.write_text(json.dumps(refs))
    return out


def _write_refstore_parquet(refs: dict[str, Any], stem: Path) -> Path:
    out = stem.with_suffix(".parq")
    refstore.Manifest.from_dict(refs).save(str(out), record_size=3)
    return out


def _write_kerchunk_parquet(refs: dict[str, Any], stem: Path) -> Path:
    from kerchunk.df import refs_to_dataframe

    out = stem.with_suffix(".parq")
    refs_to_dataframe(refs, str(out), record_size=3)
    return out


def _manifest_refs(manifest: refstore.Manifest) -> dict[str, Any]:
    refs: dict[str, Any] = manifest.to_dict()
    return refs


# --------------------------------------------------------------------------- HDF5 / netCDF


def _hdf5_v0(root: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from _datasets import kerchunk_refs, make_hdf5, read_hdf5

    h5 = make_hdf5(root / "data.h5")
    refs = kerchunk_refs(h5, str(h5))["refs"]  # version 0: the flat dict
    return refs, read_hdf5(h5)


def json_v0(root: Path) -> Kind:
    """kerchunk's scan of an HDF5 file (nested group, 0-d, fill-only chunks, text-inlined scalar), version 0."""
    refs, truth = _hdf5_v0(root)
    inline = [v for v in refs.values() if isinstance(v, str) and not v.lstrip().startswith("{")]
    assert any(not v.startswith("base64:") for v in inline), "no text-inlined chunk"
    return Kind("json-v0", root, refs, _write_json, truth, None)


def parquet_v2(root: Path) -> Kind:
    """The same scan in kerchunk's parquet layout (zarr 2 keys), written by kerchunk itself."""
    refs, truth = _hdf5_v0(root)
    return Kind("parquet-v2", root, refs, _write_kerchunk_parquet, truth, None)


def json_v1(root: Path) -> Kind:
    """A netCDF scan as version 1: a template for the URL, ``gen`` chunks, base64 inline data."""
    import netCDF4
    from _datasets import kerchunk_refs, make_netcdf

    nc = make_netcdf(root / "data.nc")
    scan = kerchunk_refs(nc, str(nc), inline_threshold=200)["refs"]
    refs: dict[str, Any] = {}
    for key, value in scan.items():
        if isinstance(value, list):
            assert value[0] == str(nc)
            value = ["{{u}}", *value[1:]]
        refs[key] = value
    assert any(isinstance(v, str) and v.startswith("base64:") for v in refs.values()), "nothing inlined as base64"
    # pr's chunks (one per time step, no compression) lie back to back: generate them
    pr_keys = sorted(k for k in refs if k.startswith("pr/") and not k.startswith("pr/."))
    spans = [refs.pop(k)[1:] for k in pr_keys]
    nt = len(spans)
    (offset, step) = spans[0]
    assert spans == [[offset + t * step, step] for t in range(nt)], spans
    gen = [{
        "key": "pr/{{t}}.0.0", "url": "{{u}}", "offset": f"{{{{{offset} + t * {step}}}}}",
        "length": str(step), "dimensions": {"t": {"start": 0, "stop": nt, "step": 1}},
    }]
    v1 = {"version": 1, "templates": {"u": str(nc)}, "gen": gen, "refs": refs}
    with netCDF4.Dataset(nc) as ds:
        ds.set_auto_maskandscale(False)
        truth = {name: np.asarray(ds[name][:]) for name in ("time", "lat", "lon", "tas", "pr")}
    return Kind("json-v1", root, v1, _write_json, truth, tuple(truth))


# --------------------------------------------------------------------------- combine


def _write_year(path: Path, year: int, days: int, first_day: int) -> None:
    """One year of daily data as netCDF4: ``tas`` with NaNs and a 1e20 fill, 30-day zlib chunks."""
    import xarray as xr

    rng = np.random.default_rng(year)
    tas = (rng.standard_normal((days, 3, 4)) + 280).astype("f4")
    tas[rng.random(tas.shape) < 0.05] = np.nan
    ds = xr.Dataset(
        {"tas": (("time", "lat", "lon"), tas, {"units": "K"})},
        coords={
            "time": ("time", np.arange(first_day, first_day + days, dtype="i8"),
                     {"units": "days since 2003-01-01", "calendar": "standard"}),
            "lat": ("lat", np.array([-10.0, 0.0, 10.0])),
            "lon": ("lon", np.array([0.0, 90.0, 180.0, 270.0])),
        },
    )
    ds.to_netcdf(path, format="NETCDF4", encoding={
        "tas": {"_FillValue": 1e20, "zlib": True, "chunksizes": (30, 3, 4)},
        "time": {"_FillValue": None, "dtype": "i8"}, "lat": {"_FillValue": None}, "lon": {"_FillValue": None},
    })


def combined(root: Path) -> Kind:
    """``refstore.combine`` of three yearly netCDF scans (2004 is a leap year, so years start mid-chunk)."""
    import netCDF4
    from _datasets import kerchunk_refs

    inputs, parts = [], []
    first = 0
    for year, days in ((2004, 366), (2003, 365), (2005, 365)):  # given out of order
        first = {2003: 0, 2004: 365, 2005: 731}[year]
        nc = root / f"y{year}.nc"
        _write_year(nc, year, days, first)
        inputs.append(kerchunk_refs(nc, str(nc)))
        with netCDF4.Dataset(nc) as ds:
            ds.set_auto_maskandscale(False)
            parts.append((first, {name: np.asarray(ds[name][:]) for name in ("time", "lat", "lon", "tas")}))
    parts.sort(key=lambda p: p[0])
    cols = [p[1] for p in parts]
    truth = {
        "time": np.concatenate([c["time"] for c in cols]),
        "tas": np.concatenate([c["tas"] for c in cols]),
        "lat": cols[0]["lat"], "lon": cols[0]["lon"],
    }
    manifest = refstore.combine(inputs, "time")
    return Kind("combine", root, _manifest_refs(manifest), _write_json, truth, tuple(truth))


# --------------------------------------------------------------------------- views


def views(root: Path) -> Kind:
    """``save_virtual`` of a stack, a pad and a strided crop of a misaligned concat of HDF5 arrays."""
    import zarr
    from _vdata import read_h5, write_h5

    from refstore.virtual import concat, pad, save_virtual, stack

    rng = np.random.default_rng(11)
    arrays, data = [], []
    layouts = (((365, 6, 8), (73, 6, 8), "gzip"), ((366, 6, 8), (61, 3, 8), None), ((365, 6, 8), (73, 6, 8), "gzip"))
    for i, (shape, chunks, comp) in enumerate(layouts):
        path = write_h5(root / f"v{i}.h5", rng.standard_normal(shape).astype("f4"), chunks, comp)
        data.append(read_h5(path))
        arrays.append(_h5_array(path, zarr))
    v = concat(arrays)
    whole = np.concatenate(data)
    virtuals = {
        "stacked": stack([arrays[0], arrays[2]], axis=1),
        "padded": pad(arrays[1], ((2, 3), (0, 0), (1, 0)), fill_value=np.nan),
        "crop": v[10:1000:3, 1:, ::2],
    }
    truth = {
        "stacked": np.stack([data[0], data[2]], axis=1),
        "padded": np.pad(data[1], ((2, 3), (0, 0), (1, 0)), constant_values=np.nan),
        "crop": whole[10:1000:3, 1:, ::2],
    }
    return Kind("views", root, _manifest_refs(save_virtual(virtuals)), _write_json, truth, None)


def _h5_array(path: Path, zarr: Any) -> Any:
    from _datasets import kerchunk_refs

    return zarr.open_array(refstore.ReferenceStore(kerchunk_refs(path, str(path))), mode="r", path="var")


# --------------------------------------------------------------------------- images


def _gradient(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, (xx + 2 * yy) % 256], axis=-1).astype("u1")


def dzi_overlap(root: Path) -> Kind | None:
    """``vips dzsave --overlap 2`` of a PNG: every level, truth from imagecodecs' decodes of the tiles."""
    if shutil.which("vips") is None:
        return None
    image = _gradient(150, 230)
    (root / "slide.png").write_bytes(imagecodecs.png_encode(image))
    tile, overlap = 64, 2
    subprocess.run(["vips", "dzsave", "slide.png", "dz", "--tile-size", str(tile), "--overlap", str(overlap),
                    "--suffix", ".png"], cwd=root, check=True)
    top = math.ceil(math.log2(230))
    # (c, y, x): refstore's RGB pyramids are OME-NGFF by default
    truth = {str(top - level): np.moveaxis(_assemble_dzi(root / "dz_files" / str(level), tile, overlap), -1, 0)
             for level in range(top + 1)}
    np.testing.assert_array_equal(truth["0"], np.moveaxis(image, -1, 0))
    manifest = refstore.build.dzi(str(root / "dz.dzi"), show_progress=False)
    return Kind("dzi-overlap", root, _manifest_refs(manifest), _write_json, truth, None)


def _assemble_dzi(folder: Path, tile: int, overlap: int) -> np.ndarray:
    """One DZI level from its tiles: tile (col, row) starts ``overlap`` before its block, but the first."""
    tiles = {tuple(int(n) for n in p.stem.split("_")): imagecodecs.imread(p) for p in folder.glob("*.png")}
    h = max(r * tile - (overlap if r else 0) + t.shape[0] for (_, r), t in tiles.items())
    w = max(c * tile - (overlap if c else 0) + t.shape[1] for (c, _), t in tiles.items())
    out = np.zeros((h, w, 3), "u1")
    for (c, r), t in tiles.items():
        y, x = r * tile - (overlap if r else 0), c * tile - (overlap if c else 0)
        out[y : y + t.shape[0], x : x + t.shape[1]] = t[..., :3]
    return out


def _tile_files(root: Path, image: np.ndarray, tile: int, suffix: str, encode: Callable[[np.ndarray], bytes]) -> list[str]:
    files = []
    for r, y in enumerate(range(0, image.shape[0], tile)):
        for c, x in enumerate(range(0, image.shape[1], tile)):
            path = root / f"{suffix}_r{r}_c{c}.{suffix}"
            path.write_bytes(encode(image[y : y + tile, x : x + tile]))
            files.append(str(path))
    return files


def png_tiles(root: Path) -> Kind:
    """``refstore.build.images`` of a PNG mosaic (partial edge tiles); truth: the source image."""
    image = _gradient(90, 110)
    files = _tile_files(root, image, 32, "png", imagecodecs.png_encode)
    manifest = refstore.build.images(files, r"r(?P<row>\d+)_c(?P<col>\d+)", mosaic=True, show_progress=False)
    return Kind("png-tiles", root, _manifest_refs(manifest), _write_json, {"image": image}, ("image",))


def parquet_v3(root: Path) -> Kind:
    """A zarr 3 manifest (a PNG mosaic, keys ``image/c/0/0/0``) in the parquet layout, written by refstore."""
    kind = png_tiles(root)
    assert any(k.startswith("image/c/") for k in kind.refs["refs"])
    return Kind("parquet-v3", root, kind.refs, _write_refstore_parquet, kind.truth, kind.xarray)


def jpeg_tiles(root: Path) -> Kind:
    """A JPEG mosaic; truth: imagecodecs' own decode of each tile, joined (lossy, so not the source)."""
    image = _gradient(90, 110)
    files = _tile_files(root, image, 32, "jpg", lambda a: imagecodecs.jpeg_encode(a, level=80))
    truth = np.zeros_like(image)
    for path in files:
        r, c = (int(s[1:]) for s in Path(path).stem.split("_")[1:])
        t = imagecodecs.jpeg_decode(Path(path).read_bytes())
        truth[r * 32 : r * 32 + t.shape[0], c * 32 : c * 32 + t.shape[1]] = t
    assert np.abs(truth.astype(int) - image).mean() < 8  # a JPEG of the image, not noise
    manifest = refstore.build.images(files, r"r(?P<row>\d+)_c(?P<col>\d+)", mosaic=True, show_progress=False)
    return Kind("jpeg-tiles", root, _manifest_refs(manifest), _write_json, {"image": truth}, ("image",))


def ome_tiff(root: Path) -> Kind:
    """A pyramidal OME-TIFF (tifffile, JPEG tiles as in pathology, three levels); truth: tifffile's read of each level."""
    import tifffile

    data = _gradient(150, 100)
    path = root / "p.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        opts = {"tile": (32, 32), "compression": "jpeg", "photometric": "rgb"}
        tif.write(data, subifds=2, **opts)
        tif.write(data[::2, ::2], subfiletype=1, **opts)
        tif.write(data[::4, ::4], subfiletype=1, **opts)
    # refstore's RGB pyramids are OME-NGFF (c, y, x): the truth is tifffile's read with the samples moved first
    truth = {str(i): np.moveaxis(tifffile.imread(path, level=i), -1, 0) for i in range(3)}
    assert np.abs(truth["0"].astype(int) - np.moveaxis(data, -1, 0)).mean() < 8  # a JPEG of the image, not noise
    manifest = refstore.build.tiff(str(path))
    return Kind("ome-tiff", root, _manifest_refs(manifest), _write_json, truth, None)


BUILDERS: dict[str, Callable[[Path], Kind | None]] = {
    "json-v0": json_v0, "json-v1": json_v1, "parquet-v2": parquet_v2, "parquet-v3": parquet_v3,
    "combine": combined, "views": views, "dzi-overlap": dzi_overlap, "png-tiles": png_tiles,
    "jpeg-tiles": jpeg_tiles, "ome-tiff": ome_tiff,
}
assert tuple(BUILDERS) == KIND_NAMES


def build_all(root: Path) -> dict[str, Kind]:
    """Every kind, each in its own folder under ``root`` (kinds whose tool is missing left out)."""
    out = {}
    for name, build in BUILDERS.items():
        folder = root / name
        folder.mkdir()
        kind = build(folder)
        if kind is not None:
            out[name] = kind
    return out
