"""Small HDF5 and zarr inputs for the virtual-array tests, and helpers to open them as zarr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

#: name -> (shape, chunks, compression) of the "var" dataset in each HDF5 file.
TIME_FILES: dict[str, tuple[tuple[int, ...], tuple[int, ...] | None, str | None]] = {
    "y2001_gz": ((365, 6, 8), (73, 6, 8), "gzip"),
    "y2002_gz": ((365, 6, 8), (73, 6, 8), "gzip"),
    "y2004_raw": ((366, 6, 8), (61, 3, 8), None),
}


def write_h5(path: Path, data: np.ndarray, chunks: Any, compression: str | None, **attrs: Any) -> Path:
    """Write ``data`` as dataset ``var`` of a new HDF5 file."""
    import h5py

    with h5py.File(path, "w") as f:
        d = f.create_dataset("var", data=data, chunks=chunks, compression=compression)
        for k, v in attrs.items():
            d.attrs[k] = v
    return path


def read_h5(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return f["var"][()]


def time_data(name: str) -> np.ndarray:
    shape = TIME_FILES[name][0]
    seed = sum(map(ord, name))
    return np.random.default_rng(seed).standard_normal(shape).astype("f4")


def make_time_files(root: Path) -> dict[str, Path]:
    """The files of :data:`TIME_FILES` under ``root``."""
    out = {}
    for name, (_, chunks, comp) in TIME_FILES.items():
        out[name] = write_h5(root / f"{name}.h5", time_data(name), chunks, comp)
    return out


def open_h5_var(path: Path, remote: Any = None) -> Any:
    """Dataset ``var`` of an HDF5 file as a zarr array: kerchunk refs read through ReferenceStore.

    With ``remote`` the file is uploaded first and the refs point at its URL.
    """
    from _datasets import kerchunk_refs

    import refstore

    if remote is None:
        url, options = str(path), {}
    else:
        url, options = remote.upload(path), remote.storage_options
    refs = kerchunk_refs(path, url)
    return zarr.open_array(refstore.ReferenceStore(refs, remote_options=options), mode="r", path="var")
