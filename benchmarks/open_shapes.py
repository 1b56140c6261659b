"""Scenario ``open_shapes``: opening the same references written in the shapes real tools write.

The ``open_json`` file is one shape (compact, one URL template). Real manifests
come as ``json.dump``'s default spacing, ``indent=2``, ujson's output (``\\/``
escapes), version 0 (no templates: every URL spelled out), compressed, with keys
in any order, and with one distinct URL per chunk (image tiles, one file per
chunk). Each shape holds the ``open_json`` references (1M; 100k with
``--quick``) and is opened by fsspec's ``ReferenceFileSystem`` and by
``refstore.Manifest.open`` in fresh processes (``open_json``'s worker), which
check a lookup. Rows: time and peak bytes per reference, refstore against fsspec.
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

#: name -> (file suffix, writer of the references dict to a path)
Writer = Callable[[dict[str, Any], Path], None]


def _dump(**kwargs: Any) -> Writer:
    def write(refs: dict[str, Any], path: Path) -> None:
        with open(path, "w") as f:
            json.dump(refs, f, **kwargs)

    return write


def _ujson(refs: dict[str, Any], path: Path) -> None:
    import ujson

    with open(path, "w") as f:
        ujson.dump(refs, f)  # escapes "/" as "\/" by default


def _v0(refs: dict[str, Any], path: Path) -> None:
    _dump()(_expanded(refs)["refs"], path)


def _gzip(refs: dict[str, Any], path: Path) -> None:
    with gzip.open(path, "wt", compresslevel=6) as f:
        json.dump(refs, f)


def _zstd(refs: dict[str, Any], path: Path) -> None:
    import zstandard

    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(json.dumps(refs).encode()))


def _shuffled(refs: dict[str, Any], path: Path) -> None:
    items = list(refs["refs"].items())
    random.Random(7).shuffle(items)
    _dump()({**refs, "refs": dict(items)}, path)


def _one_url_per_chunk(refs: dict[str, Any], path: Path) -> None:
    """Every chunk its own object, about 70 characters each, spelled out (no template)."""
    out = {}
    for key, value in refs["refs"].items():
        if isinstance(value, list):
            row, col = key.rpartition("/")[2].split(".")
            value = [f"s3://bench-bucket/tiles/level-0/row-{row:0>5}/tile-{row:0>5}-{col:0>4}.bin", 0, value[2]]
        out[key] = value
    _dump()({"version": 1, "refs": out}, path)


SHAPES: dict[str, tuple[str, Writer]] = {
    "compact, template": (".json", _dump(separators=(",", ":"))),
    "json.dump defaults": (".json", _dump()),
    "indent=2": (".json", _dump(indent=2)),
    "ujson.dump": (".json", _ujson),
    "version 0, URLs spelled out": (".json", _v0),
    "json.dump, gzip": (".json.gz", _gzip),
    "json.dump, zstd": (".json.zst", _zstd),
    "keys in random order": (".json", _shuffled),
    "one URL per chunk": (".json", _one_url_per_chunk),
}


def _expanded(refs: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(refs["refs"]).replace("{{u}}", TEMPLATE_URL)
    return {"version": 1, "refs": json.loads(text)}


def shape_files(cache_dir: Path | str, n_refs: int) -> dict[str, Path]:
    """Each shape's file (written once into *cache_dir*)."""
    cache_dir = Path(cache_dir)
    source = big_json(cache_dir, n_refs)
    folder = cache_dir / f"shapes_{n_refs}"
    folder.mkdir(exist_ok=True)
    refs: dict[str, Any] | None = None
    paths = {}
    for i, (name, (suffix, write)) in enumerate(SHAPES.items()):
        path = folder / f"shape{i}{suffix}"
        if not path.exists():
            refs = refs or json.loads(source.read_text())
            tmp = path.with_name(f"tmp{os.getpid()}-{path.name}")
            write(refs, tmp)
            tmp.replace(path)
        paths[name] = path
    return paths


def _shape_files_elsewhere(cache_dir: Path, n_refs: int) -> dict[str, Path]:
    """:func:`shape_files`, written by a child process: a parent that held the references
    would pass its peak resident size on to every worker it starts (Linux keeps ``ru_maxrss``
    across fork and exec), and every worker's peak would read as the parent's."""
    code = f"from benchmarks.open_shapes import shape_files; shape_files({str(cache_dir)!r}, {n_refs})"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    return shape_files(cache_dir, n_refs)


def run(cfg: Config) -> list[Row]:
    """Open every shape with fsspec and refstore (fresh processes, medians); return the rows."""
    n = cfg.n_refs
    paths = _shape_files_elsewhere(cfg.cache_dir, n)
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
