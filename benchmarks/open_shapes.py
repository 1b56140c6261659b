"""Scenario ``open_shapes``: opening the same references written in the shapes real tools write.

The ``open_json`` file is one shape (compact, one URL template). Real manifests
come as ``json.dump``'s default spacing, ``indent=2``, ujson's output (``\\/``
escapes), orjson's, kerchunk's own writer (``MultiZarrToZarr.translate``:
ujson, URLs spelled out), version 0 (no templates), null URLs read with a
``target``, keys in any order, and with one distinct URL per chunk (image
tiles, one file per chunk); and each of these compressed with gzip and zstd.
Each shape holds the ``open_json`` references (1M; 100k with ``--quick``) and
is opened by fsspec's ``ReferenceFileSystem`` and by ``refstore.Manifest.open``
in fresh processes (``open_json``'s worker), which check a lookup. Rows: time
and peak bytes per reference, refstore against fsspec.

``REFSTORE_BENCH_SHAPES`` (comma-separated substrings of the shape names)
runs a part of the family.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import open_json
from ._common import Config, Row, import_refstore
from .data import TEMPLATE_URL, big_json

#: The text of a shape, from the references dict of ``big_json``.
Writer = Callable[[dict[str, Any]], bytes]

#: The file a ``null`` URL stands for, given to the openers as ``target`` (a sidecar file says so).
NULL_TARGET = f"{TEMPLATE_URL}/file_0.bin"


def _dump(**kwargs: Any) -> Writer:
    return lambda refs: json.dumps(refs, **kwargs).encode()


def _ujson(refs: dict[str, Any]) -> bytes:
    import ujson

    return ujson.dumps(refs).encode()  # escapes "/" as "\/" by default


def _orjson(refs: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(refs)


def _kerchunk(refs: dict[str, Any]) -> bytes:
    """What ``MultiZarrToZarr.translate(filename)`` writes: ``consolidate`` of the references
    (URLs spelled out: kerchunk writes no templates), by ``ujson.dump``."""
    import ujson
    from kerchunk.utils import consolidate

    return ujson.dumps(consolidate(_expanded(refs)["refs"])).encode()


def _v0(refs: dict[str, Any]) -> bytes:
    return json.dumps(_expanded(refs)["refs"]).encode()


def _null_urls(refs: dict[str, Any]) -> bytes:
    out = {k: [None, v[1], v[2]] if isinstance(v, list) else v for k, v in refs["refs"].items()}
    return json.dumps({"version": 1, "refs": out}).encode()


def _shuffled(refs: dict[str, Any]) -> bytes:
    items = list(refs["refs"].items())
    random.Random(7).shuffle(items)
    return json.dumps({**refs, "refs": dict(items)}).encode()


def _one_url_per_chunk(refs: dict[str, Any]) -> bytes:
    """Every chunk its own object, about 70 characters each, spelled out (no template)."""
    out = {}
    for key, value in refs["refs"].items():
        if isinstance(value, list):
            row, col = key.rpartition("/")[2].split(".")
            value = [f"s3://bench-bucket/tiles/level-0/row-{row:0>5}/tile-{row:0>5}-{col:0>4}.bin", 0, value[2]]
        out[key] = value
    return json.dumps({"version": 1, "refs": out}).encode()


#: name -> (file stem, writer)
BASE: dict[str, tuple[str, Writer]] = {
    "compact, template": ("compact", _dump(separators=(",", ":"))),
    "json.dump defaults": ("dump", _dump()),
    "indent=2": ("indent2", _dump(indent=2)),
    "ujson.dump": ("ujson", _ujson),
    "orjson.dumps": ("orjson", _orjson),
    "kerchunk's writer": ("kerchunk", _kerchunk),
    "version 0, URLs spelled out": ("v0", _v0),
    "null URLs, a target": ("null", _null_urls),
    "keys in random order": ("shuffled", _shuffled),
    "one URL per chunk": ("oneurl", _one_url_per_chunk),
}


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(data)


#: compression -> (suffix, compressor)
COMPRESSIONS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "": (".json", lambda data: data),
    "gzip": (".json.gz", _gzip),
    "zstd": (".json.zst", _zstd),
}


def shape_names() -> list[str]:
    """Every shape of the family: each base shape, plain and compressed."""
    return [f"{base}, {comp}" if comp else base for comp in COMPRESSIONS for base in BASE]


def _split(name: str) -> tuple[str, str]:
    for comp in COMPRESSIONS:
        if comp and name.endswith(f", {comp}"):
            return name[: -len(comp) - 2], comp
    return name, ""


def _expanded(refs: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(refs["refs"]).replace("{{u}}", TEMPLATE_URL)
    return {"version": 1, "refs": json.loads(text)}


def write_shape(refs: dict[str, Any], name: str, folder: Path) -> Path:
    """Write shape *name* of *refs* (the ``big_json`` references dict) into *folder*, once."""
    base, comp = _split(name)
    stem, write = BASE[base]
    suffix, compress = COMPRESSIONS[comp]
    path = folder / f"{stem}{suffix}"
    if not path.exists():
        tmp = path.with_name(f"tmp{os.getpid()}-{path.name}")
        tmp.write_bytes(compress(write(refs)))
        tmp.replace(path)
    if base == "null URLs, a target":
        path.with_name(path.name + ".target").write_text(NULL_TARGET)
    return path


def shape_files(cache_dir: Path | str, n_refs: int, names: list[str] | None = None) -> dict[str, Path]:
    """Each shape's file (written once into *cache_dir*)."""
    cache_dir = Path(cache_dir)
    source = big_json(cache_dir, n_refs)
    folder = cache_dir / f"shapes2_{n_refs}"
    folder.mkdir(exist_ok=True)
    refs: dict[str, Any] | None = None
    paths = {}
    for name in names or shape_names():
        base, comp = _split(name)
        if refs is None and not (folder / f"{BASE[base][0]}{COMPRESSIONS[comp][0]}").exists():
            refs = json.loads(source.read_text())
        paths[name] = write_shape(refs or {}, name, folder)
    return paths


def chosen_shapes() -> list[str]:
    """The shapes ``REFSTORE_BENCH_SHAPES`` picks (all by default)."""
    wanted = [w.strip() for w in os.environ.get("REFSTORE_BENCH_SHAPES", "").split(",") if w.strip()]
    return [n for n in shape_names() if not wanted or any(w in n for w in wanted)]


def _shape_files_elsewhere(cache_dir: Path, n_refs: int, names: list[str]) -> dict[str, Path]:
    """:func:`shape_files`, written by a child process: a parent that held the references
    would pass its peak resident size on to every worker it starts (Linux keeps ``ru_maxrss``
    across fork and exec), and every worker's peak would read as the parent's."""
    code = f"from benchmarks.open_shapes import shape_files; shape_files({str(cache_dir)!r}, {n_refs}, {names!r})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    return shape_files(cache_dir, n_refs, names)


def run(cfg: Config) -> list[Row]:
    """Open every shape with fsspec and refstore (fresh processes, medians); return the rows."""
    n = cfg.n_refs
    paths = _shape_files_elsewhere(cfg.cache_dir, n, chosen_shapes())
    reps = max(1, min(cfg.repeat, 3))
    has_refstore = import_refstore() is not None
    rows: list[Row] = []
    for name, path in paths.items():
        fs = open_json._measure(open_json.FSSPEC, "open", path, n, reps, cfg.verbose)
        mine = open_json._measure(open_json.MANIFEST, "open", path, n, reps, cfg.verbose) if has_refstore else None
        note = "; ".join(m["error"] for m in (fs, mine) if m and "error" in m)
        size = f"{path.stat().st_size / 2**20:.0f} MiB file"
        for unit, field, scale in (("s", "open_s", 1.0), ("B/ref", "peak_delta", float(n))):
            rows.append(Row(f"open_shapes {unit}", name, unit, open_json._get(mine, field, scale),
                            open_json._get(fs, field, scale), None, size, note=note, group="open_shapes"))
    return rows
