"""Manifests in the version 1 virtual format (before runs), kept to check that they still read.

``data/virtual_v1_zarr2.json`` and ``data/virtual_v1_zarr3.json`` were written by refstore at
commit f4ecf31 (before runs) with :func:`write_fixtures`; their sources are in-memory zarr arrays,
so every chunk is inline and the files are self-contained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

DATA = Path(__file__).resolve().parent / "data"
FIXTURES = {2: DATA / "virtual_v1_zarr2.json", 3: DATA / "virtual_v1_zarr3.json"}


def _parts(zarr_format: int) -> list[tuple[np.ndarray, tuple[int, ...], str | None]]:
    """``(values, chunks, compressor)`` of the inputs: lengths, chunking and codecs differ (misaligned)."""
    rng = np.random.default_rng(zarr_format)
    out = []
    for n, chunk, comp in ((5, 2, "zlib"), (7, 3, None), (4, 2, "zlib")):
        values = np.round(rng.normal(280, 5, (n, 3)), 1).astype("f4")
        values[0] = 0.0  # real zeros: a zarr 2 null fill value must not mask them
        out.append((values, (chunk, 3), comp))
    return out


def expected(zarr_format: int) -> dict[str, np.ndarray]:
    """The values every reading of the fixture of ``zarr_format`` must give."""
    parts = _parts(zarr_format)
    return {"tas": np.concatenate([p[0] for p in parts]), "stacked": np.stack([parts[0][0][:4], parts[2][0]])}


def memory_array(values: np.ndarray, chunks: tuple[int, ...], comp: str | None, zarr_format: int) -> Any:
    store = zarr.storage.MemoryStore()
    if zarr_format == 2:
        import numcodecs

        arr = zarr.create_array(store, shape=values.shape, chunks=chunks, dtype=values.dtype, zarr_format=2,
                                fill_value=None, compressors=numcodecs.Zlib(level=1) if comp else None,
                                attributes={"_ARRAY_DIMENSIONS": ["time", "x"], "units": "K"})
    else:
        from zarr.codecs import GzipCodec

        arr = zarr.create_array(store, shape=values.shape, chunks=chunks, dtype=values.dtype, zarr_format=3,
                                fill_value=np.nan, compressors=GzipCodec(level=1) if comp else None,
                                dimension_names=["time", "x"], attributes={"units": "K"})
    arr[...] = values
    return arr


def sources(zarr_format: int) -> list[Any]:
    return [memory_array(v, c, comp, zarr_format) for v, c, comp in _parts(zarr_format)]


def write_fixtures(folder: Path) -> None:
    """Write the two fixtures with the refstore on the path (run once, with the old writer)."""
    from refstore.virtual import concat, save_virtual, stack

    for fmt, path in FIXTURES.items():
        srcs = sources(fmt)
        firsts = srcs[0][:4]  # a zarr array: its first 4 rows, as a plain in-memory copy
        head = memory_array(np.asarray(firsts), (2, 3), "zlib", fmt)
        save_virtual({"tas": concat(srcs), "stacked": stack([head, srcs[2]], dimension_name="member")}, str(folder / path.name),
                     zarr_format=fmt)


