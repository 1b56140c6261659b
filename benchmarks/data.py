"""Generation (cached on disk) of the benchmark inputs.

* a kerchunk version-1 JSON with many chunk references (``open_json``);
* one file of random bytes cut into equal contiguous chunks, the references
  describing it as a zarr v3 array, and the same chunks written by zarr into
  a ``LocalStore`` (``contiguous_*``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

#: URL template used by the big JSON; ``{{u}}`` is expanded by the readers.
TEMPLATE_URL = "s3://bench-bucket/some/reasonably/long/prefix/to/the/data"
#: Chunk grid columns of the big JSON (rows = n_refs // GRID_COLS).
GRID_COLS = 1000
#: Number of distinct target files referenced by the big JSON.
N_TARGET_FILES = 1000
_BIG_CHUNK = (100, 100)
_BIG_ITEMSIZE = 4


def _atomic_write(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(tmp, mode) as f:
        f.write(text)
    os.replace(tmp, path)


def big_key(n_refs: int, index: int) -> str:
    """Key of the ``index``-th chunk reference in the big JSON (row-major)."""
    cols = min(GRID_COLS, n_refs)
    return f"data/{index // cols}.{index % cols}"


def big_json(cache_dir: Path, n_refs: int) -> Path:
    """Path of a kerchunk v1 JSON with ``n_refs`` chunk references (made once).

    The array is a 2-D zarr v2 float32 array whose chunk grid is
    ``(n_refs // 1000, 1000)``; chunk ``i`` points into
    ``{{u}}/file_{i % 1000}.bin`` at offset ``(i // 1000) * 40000``.
    """
    path = cache_dir / f"refs_{n_refs}.json"
    if path.exists():
        return path
    cols = min(GRID_COLS, n_refs)
    rows = n_refs // cols
    nbytes = _BIG_CHUNK[0] * _BIG_CHUNK[1] * _BIG_ITEMSIZE
    zarray = {
        "zarr_format": 2,
        "shape": [rows * _BIG_CHUNK[0], cols * _BIG_CHUNK[1]],
        "chunks": list(_BIG_CHUNK),
        "dtype": "<f4",
        "compressor": None,
        "filters": None,
        "fill_value": 0.0,
        "order": "C",
        "dimension_separator": ".",
    }
    meta = {
        ".zgroup": json.dumps({"zarr_format": 2}),
        ".zattrs": json.dumps({"title": "refstore benchmark", "n_refs": n_refs}),
        "data/.zarray": json.dumps(zarray),
        "data/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": ["y", "x"], "units": "K"}),
    }
    parts = [
        '{"version":1,"templates":{"u":',
        json.dumps(TEMPLATE_URL),
        '},"refs":{',
        ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in meta.items()),
    ]
    body = [
        f',"data/{i // cols}.{i % cols}":["{{{{u}}}}/file_{i % N_TARGET_FILES}.bin",'
        f"{(i // N_TARGET_FILES) * nbytes},{nbytes}]"
        for i in range(rows * cols)
    ]
    parts.append("".join(body))
    parts.append("}}")
    _atomic_write(path, "".join(parts))
    return path


def contiguous_file(cache_dir: Path, n_chunks: int, chunk_size: int) -> Path:
    """One file of ``n_chunks * chunk_size`` seeded random bytes (made once)."""
    folder = cache_dir / f"contig_{n_chunks}x{chunk_size}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data.bin"
    if not path.exists() or path.stat().st_size != n_chunks * chunk_size:
        rng = np.random.default_rng(12345)
        data = rng.integers(0, 256, n_chunks * chunk_size, dtype=np.uint8)
        _atomic_write(path, data.tobytes())
    return path


def array_metadata(n_chunks: int, chunk_size: int) -> dict[str, Any]:
    """zarr v3 metadata of the uncompressed 1-D uint8 array over the file."""
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": [n_chunks * chunk_size],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk_size]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [{"name": "bytes", "configuration": {}}],
        "attributes": {},
        "dimension_names": None,
        "storage_transformers": [],
    }


def contiguous_refs(url: str, n_chunks: int, chunk_size: int) -> dict[str, Any]:
    """kerchunk v1 references mapping ``c/i`` to ``[url, i * size, size]``."""
    refs: dict[str, Any] = {"zarr.json": json.dumps(array_metadata(n_chunks, chunk_size))}
    for i in range(n_chunks):
        refs[f"c/{i}"] = [url, i * chunk_size, chunk_size]
    return {"version": 1, "refs": refs}


def localstore_copy(cache_dir: Path, data_path: Path, n_chunks: int, chunk_size: int) -> Path:
    """The same chunks written by zarr as a normal v3 array in a LocalStore."""
    import zarr
    from zarr.storage import LocalStore

    folder = cache_dir / f"contig_{n_chunks}x{chunk_size}" / "localstore.zarr"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    data = np.fromfile(data_path, dtype=np.uint8)
    arr = zarr.create_array(
        store=LocalStore(folder),
        shape=data.shape,
        chunks=(chunk_size,),
        dtype="uint8",
        compressors=None,
        filters=None,
        fill_value=0,
        overwrite=True,
    )
    arr[:] = data
    n_files = sum(1 for _ in (folder / "c").iterdir())
    if n_files != n_chunks:
        raise RuntimeError(f"LocalStore copy has {n_files} chunk files, expected {n_chunks}")
    marker.write_text("ok")
    return folder
