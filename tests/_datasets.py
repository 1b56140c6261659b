"""Real test datasets (h5py, netCDF4, tifffile) and their reference manifests.

Manifests are produced by the real tools (kerchunk, tifffile) from the *local*
file, pointing at the URL readers will use (``url=``), so a file can be
translated locally and then uploaded to HTTP/S3/GCS unchanged.

All ``*_refs`` helpers return plain JSON-able dicts; values of metadata keys
are JSON *strings*, chunk values are ``[url, offset, length]`` (or inline
strings/base64 for small chunks).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PathLike = str | os.PathLike[str]

#: Datasets written by :func:`make_hdf5` (HDF5 path -> description).
HDF5_DATASETS: dict[str, str] = {
    "gz3d": "float32 (20,30,40), chunks (5,10,10), gzip level 4",
    "shuf": "int16 (64,48), chunks (16,16), shuffle + gzip",
    "contig": "float64 (1000,), contiguous (no chunking, no filters)",
    "fill": "int32 (40,40), chunks (10,10), fillvalue -9, only 2 of 16 chunks written",
    "scalar": "float64 0-d (8 bytes -> inlined with inline_threshold >= 8)",
    "grp/sub/nested": "uint16 (20,20), chunks (10,10), uncompressed, in nested group",
}


def make_hdf5(path: PathLike, seed: int = 0) -> Path:
    """Write the HDF5 test file described by :data:`HDF5_DATASETS`."""
    import h5py

    path = Path(path)
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.attrs["title"] = "refstore test file"
        f.attrs["version"] = 3
        f.attrs["scale"] = np.array([1.5, 2.5])
        d = f.create_dataset(
            "gz3d",
            data=rng.standard_normal((20, 30, 40)).astype("f4"),
            chunks=(5, 10, 10),
            compression="gzip",
            compression_opts=4,
        )
        d.attrs["units"] = "K"
        d.attrs["long_name"] = "random normal"
        f.create_dataset(
            "shuf",
            data=rng.integers(-1000, 1000, (64, 48)).astype("i2"),
            chunks=(16, 16),
            shuffle=True,
            compression="gzip",
        )
        f.create_dataset("contig", data=np.linspace(0.0, 1.0, 1000))
        fill = f.create_dataset("fill", shape=(40, 40), dtype="i4", chunks=(10, 10), fillvalue=-9)
        fill[0:10, 0:10] = 1
        fill[30:40, 20:30] = 2
        f.create_dataset("scalar", data=np.float64(42.5))
        sub = f.create_group("grp/sub")
        sub.attrs["desc"] = "nested group"
        sub.create_dataset("nested", data=np.arange(400, dtype="u2").reshape(20, 20), chunks=(10, 10))
    return path


def read_hdf5(path: PathLike) -> dict[str, np.ndarray]:
    """All datasets of :func:`make_hdf5` as numpy arrays, read by h5py."""
    import h5py

    with h5py.File(path, "r") as f:
        return {name: np.asarray(f[name][()]) for name in HDF5_DATASETS}


def make_netcdf(path: PathLike, seed: int = 1) -> Path:
    """Write a small CF-style netCDF4 file.

    ``time`` (unlimited, 6) x ``lat`` (18) x ``lon`` (36); coordinate variables
    with CF attributes; ``tas`` int16 packed (scale_factor/add_offset,
    _FillValue -32767, zlib+shuffle, chunks (1,9,18), 5 masked points);
    ``pr`` float32 contiguous with _FillValue 1e20.
    """
    import netCDF4

    path = Path(path)
    rng = np.random.default_rng(seed)
    with netCDF4.Dataset(path, "w", format="NETCDF4") as ds:
        ds.title = "refstore netcdf test"
        ds.Conventions = "CF-1.8"
        ds.createDimension("time", None)
        ds.createDimension("lat", 18)
        ds.createDimension("lon", 36)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "days since 2000-01-01"
        t.calendar = "standard"
        t.standard_name = "time"
        lat = ds.createVariable("lat", "f4", ("lat",))
        lat.units = "degrees_north"
        lat.standard_name = "latitude"
        lat[:] = np.linspace(-85, 85, 18)
        lon = ds.createVariable("lon", "f4", ("lon",))
        lon.units = "degrees_east"
        lon.standard_name = "longitude"
        lon[:] = np.arange(0, 360, 10)
        tas = ds.createVariable(
            "tas", "i2", ("time", "lat", "lon"), zlib=True, complevel=4,
            shuffle=True, chunksizes=(1, 9, 18), fill_value=np.int16(-32767),
        )
        tas.scale_factor = np.float32(0.01)
        tas.add_offset = np.float32(273.15)
        tas.units = "K"
        tas.standard_name = "air_temperature"
        t[:] = np.arange(6)
        raw = rng.normal(0, 10, (6, 18, 36)).astype("f4")
        mask = np.zeros(raw.shape, bool)
        mask[0, 0, :5] = True
        tas[:] = np.ma.masked_array(raw, mask)
        pr = ds.createVariable("pr", "f4", ("time", "lat", "lon"), fill_value=np.float32(1e20))
        pr.units = "kg m-2 s-1"
        pr[:] = np.abs(raw)
    return path


def kerchunk_refs(h5path: PathLike, url: str, inline_threshold: int = 64) -> dict[str, Any]:
    """kerchunk ``SingleHdf5ToZarr`` refs (version 1, zarr v2 metadata) for ``url``.

    The local file is opened and passed as a file object, so kerchunk reads it
    locally but writes ``url`` into every chunk reference: translate first,
    upload later.  With the default threshold the 8-byte ``scalar`` chunk is
    inlined; everything else is a ``[url, offset, length]`` reference.
    """
    import gc

    from kerchunk.hdf import SingleHdf5ToZarr

    gc.collect()  # free cyclic h5py garbage now: freed on zarr's thread during translate, it deadlocks
    with open(h5path, "rb") as f:
        scanner = SingleHdf5ToZarr(f, url=url, inline_threshold=inline_threshold)
        try:
            return scanner.translate()
        finally:
            # closed here: an h5py file left to the garbage collector may be freed on zarr's thread
            # while a later scan holds h5py's lock waiting for that thread (a deadlock)
            scanner.close()


# --------------------------------------------------------------------------- TIFF

#: Variants for :func:`make_tiff`: name -> tifffile.imwrite kwargs.  The
#: manifest codec each produces (zarr v2 metadata): ``none`` -> compressor null;
#: ``zlib``/``deflate`` -> ``{"id": "zlib"}`` (stock numcodecs);
#: ``zlib_pred`` -> zlib + ``imagecodecs_delta`` filter; ``lzw`` ->
#: ``imagecodecs_lzw``; ``zstd`` -> ``imagecodecs_zstd``.  The ``imagecodecs_*``
#: ids need ``imagecodecs.numcodecs.register_codecs()`` before zarr reads them
#: (else ``UnknownCodecError``); with that, zarr 3.1 opens *all* of these via
#: fsspec's ReferenceFileSystem + ``FsspecStore`` (``zarr_format=2``), verified.
TIFF_VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "zlib": {"compression": "zlib"},
    "deflate": {"compression": "deflate"},
    "zlib_pred": {"compression": "zlib", "predictor": True},
    "lzw": {"compression": "lzw"},
    "zstd": {"compression": "zstd"},
}


def make_tiff(
    path: PathLike,
    variant: str = "none",
    shape: tuple[int, ...] = (100, 90),
    dtype: str = "uint16",
    tile: tuple[int, int] = (32, 32),
    seed: int = 2,
) -> np.ndarray:
    """Write a tiled TIFF (edge tiles partial) and return the array written."""
    import tifffile

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4000, shape).astype(dtype)
    tifffile.imwrite(path, data, tile=tile, **TIFF_VARIANTS[variant])
    return data


def tiff_refs(tiffpath: PathLike, url: str, version: int = 0) -> dict[str, Any]:
    """tifffile's ``aszarr().write_fsspec`` manifest with chunks pointing at ``url``.

    ``url`` is the full URL of the TIFF file (tifffile itself takes the
    *directory* URL and appends the local file name; we rewrite instead, so
    the uploaded name may differ).  ``version=0`` gives a flat dict (no
    ``"version"`` key, chunk refs ``[url, off, len]``); ``version=1`` gives
    ``{"version": 1, "templates": {"u": url}, "refs": ...}`` with chunk refs
    ``["{{u}}", off, len]``.  Metadata is zarr v2, dimension separator ".",
    ``_ARRAY_DIMENSIONS`` ``["Y", "X"]``; uncompressed tiles are always full
    tile size in the file (edge tiles padded).
    """
    import tifffile

    name = Path(tiffpath).name
    with tifffile.TiffFile(tiffpath) as tf:
        buf = io.StringIO()
        with tf.aszarr() as store:
            store.write_fsspec(buf, url="", version=version)
    refs: dict[str, Any] = json.loads(buf.getvalue())
    if version == 1:
        refs["templates"] = {k: url if v == name else v for k, v in refs["templates"].items()}
        return refs
    for val in refs.values():
        if isinstance(val, list) and val and val[0] == name:
            val[0] = url
    return refs


def register_imagecodecs() -> None:
    """Register imagecodecs' numcodecs codecs (``imagecodecs_*`` ids)."""
    import imagecodecs.numcodecs

    imagecodecs.numcodecs.register_codecs()


# --------------------------------------------------------------------------- synthetic


@dataclass(frozen=True)
class ContiguousChunks:
    """One raw file cut into equal uint8 chunks laid out back to back."""

    path: Path
    n_chunks: int
    chunk_bytes: int

    @property
    def shape(self) -> tuple[int]:
        """Array shape (file size,)."""
        return (self.n_chunks * self.chunk_bytes,)

    def expected(self) -> np.ndarray:
        """The array a reader must return (= the file's bytes)."""
        return np.frombuffer(self.path.read_bytes(), dtype="u1")

    def refs_v3(self, url: str) -> dict[str, Any]:
        """Version-1 refs with zarr v3 root-array metadata; keys ``c/<i>``."""
        meta = {
            "shape": list(self.shape),
            "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [self.chunk_bytes]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [{"name": "bytes"}],
            "attributes": {"source": "make_contiguous_chunks"},
            "zarr_format": 3,
            "node_type": "array",
        }
        refs: dict[str, Any] = {"zarr.json": json.dumps(meta)}
        for i in range(self.n_chunks):
            refs[f"c/{i}"] = [url, i * self.chunk_bytes, self.chunk_bytes]
        return {"version": 1, "refs": refs}

    def refs_v2(self, url: str) -> dict[str, Any]:
        """Version-1 refs with zarr v2 root-array metadata; keys ``<i>``."""
        zarray = {
            "shape": list(self.shape),
            "chunks": [self.chunk_bytes],
            "dtype": "|u1",
            "fill_value": 0,
            "order": "C",
            "filters": None,
            "compressor": None,
            "dimension_separator": ".",
            "zarr_format": 2,
        }
        refs: dict[str, Any] = {
            ".zarray": json.dumps(zarray),
            ".zattrs": json.dumps({"source": "make_contiguous_chunks"}),
        }
        for i in range(self.n_chunks):
            refs[str(i)] = [url, i * self.chunk_bytes, self.chunk_bytes]
        return {"version": 1, "refs": refs}


def make_contiguous_chunks(
    directory: PathLike, n_chunks: int = 4096, chunk_bytes: int = 8192, seed: int = 3
) -> ContiguousChunks:
    """Write ``chunks.bin`` (n_chunks * chunk_bytes random bytes) into ``directory``."""
    path = Path(directory) / "chunks.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(n_chunks * chunk_bytes))
    return ContiguousChunks(path, n_chunks, chunk_bytes)


# --------------------------------------------------------------------------- reading


def fsspec_reference_store(
    refs: dict[str, Any],
    remote_protocol: str | None = None,
    remote_options: dict[str, Any] | None = None,
) -> Any:
    """A zarr ``FsspecStore`` over fsspec's *own* ReferenceFileSystem (baseline).

    The class is imported directly because refstore overrides the
    ``"reference"`` protocol registration.  ``remote_protocol`` defaults to the
    protocol of the first chunk URL found ("file" for bare paths).
    """
    from fsspec.implementations.reference import ReferenceFileSystem
    from zarr.storage import FsspecStore

    if remote_protocol is None:
        remote_protocol = _first_protocol(refs)
    opts = {**(remote_options or {}), "asynchronous": True}
    fs = ReferenceFileSystem(
        fo=refs, remote_protocol=remote_protocol, remote_options=opts, asynchronous=True
    )
    return FsspecStore(fs, read_only=True, path="")


def _first_protocol(refs: dict[str, Any]) -> str:
    """Protocol of the first ``[url, ...]`` reference (templates expanded)."""
    body = refs.get("refs", refs)
    templates = refs.get("templates", {})
    for val in body.values():
        if isinstance(val, list) and val:
            url = str(val[0])
            for k, v in templates.items():
                url = url.replace("{{" + k + "}}", v)
            return url.split("://", 1)[0] if "://" in url else "file"
    return "file"
