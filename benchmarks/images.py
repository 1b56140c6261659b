"""Scenarios ``images_png`` and ``images_jpeg``: decode N image tiles through zarr.

``n_side x n_side`` RGB tiles of 256 x 256 pixels (32 x 32 = 1024 tiles, 8 x 8
with ``--quick``) are written once as PNG (lossless) and JPEG (quality 90)
files into the cache directory, together with the mosaic they tile.  Every
implementation reads the whole ``(n_side * 256, n_side * 256, 3)`` uint8 mosaic;
the result is compared pixel for pixel with the generated image (PNG) or with
imagecodecs' own decode of every tile (JPEG).  Timed: building the store, opening
the array and reading it all (the manifest is built once, untimed, as a user
would build it once and save it).

Implementations (see ``benchmarks/README.md`` for what each one exercises):

* the limit: read each file and decode it with ``imagecodecs.png_decode`` /
  ``jpeg_decode`` in a ``ThreadPoolExecutor`` of 2 workers (2 cores), copying
  each tile into the output;
* zarr ``MemoryStore`` holding the same files as chunks of the same
  ``refstore.image`` array: zarr's own floor for this codec and chunk count;
* ``refstore.ReferenceStore`` over the ``refstore.build.images`` mosaic manifest
  (zarr v3, ``refstore.image`` codec), with zarr's default settings and with
  ``refstore.pipeline.ThreadedCodecPipeline`` (zarr's ``FusedCodecPipeline``
  where zarr has it); there also a ``MemoryStore`` under ``FusedCodecPipeline``,
  zarr's floor for that pipeline;
* ``refstore.ReferenceStore`` over a kerchunk zarr v2 manifest whose compressor
  is imagecodecs' numcodecs codec (``imagecodecs_png`` / ``imagecodecs_jpeg``);
* fsspec's own ``ReferenceFileSystem`` (asynchronous) + zarr ``FsspecStore``
  over that same v2 manifest (imagecodecs' numcodecs codecs are numcodecs, i.e.
  zarr format 2 only: zarr 3 refuses them in v3 metadata with
  ``UnknownCodecError``);
* ``tifffile.FileSequence(imagecodecs.imread, files, pattern=...).aszarr(
  axestiled={0: 0, 1: 1})`` with its default ``ioworkers=1`` (decode on zarr's
  event loop) and ``ioworkers=2`` (decode in ``asyncio.to_thread``).

Besides the median wall time, every implementation's median process CPU time is
recorded (all threads): ``cpu s / s`` above 1 means more than one core worked.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._common import (
    Config,
    CpuTimed,
    Job,
    Row,
    Timing,
    array_checker,
    cpu_summary,
    format_cpu_summary,
    fsspec_reader,
    import_refstore,
    main,
    median_cpu,
    refstore_reader,
    run_interleaved,
)

TILE = 256
PATTERN = r"tile_(?P<row>\d+)_(?P<col>\d+)\.(png|jpg)"
JPEG_QUALITY = 90
FORMATS = {"images_png": "png", "images_jpeg": "jpeg"}
_EXT = {"png": "png", "jpeg": "jpg"}

LIMIT = "imagecodecs, 2 threads"
MEMORY = "zarr MemoryStore"
MEMORY_FUSED = "zarr MemoryStore, FusedCodecPipeline"
REF = "refstore.ReferenceStore"
REF_THREADED = "refstore.ReferenceStore, ThreadedCodecPipeline"
REF_V2 = "refstore.ReferenceStore, v2 + imagecodecs_{fmt}"
FSSPEC = "fsspec RFS + FsspecStore, v2 + imagecodecs_{fmt}"
TIFF1 = "other: tifffile FileSequence.aszarr (ioworkers=1)"
TIFF2 = "other: tifffile FileSequence.aszarr (ioworkers=2)"
FUSED_PATH = "zarr.core.codec_pipeline.FusedCodecPipeline"
THREADED_PATH = "refstore.pipeline.ThreadedCodecPipeline"


# ------------------------------------------------------------------------ data
def _tile_pixels(row: int, col: int) -> np.ndarray:
    """Deterministic RGB content of one tile: smooth waves plus seeded noise."""
    y = (np.arange(TILE, dtype=np.float32) + row * TILE)[:, None]
    x = (np.arange(TILE, dtype=np.float32) + col * TILE)[None, :]
    rng = np.random.default_rng((20240601, row, col))
    out = np.empty((TILE, TILE, 3), np.uint8)
    for c, (fy, fx) in enumerate(((0.013, 0.007), (0.005, 0.011), (0.002, 0.003))):
        wave = 127.5 + 90 * np.sin(y * fy + x * fx * (1 + c)) * np.cos(x * fx - y * fy * 0.5)
        noise = rng.normal(0.0, 6.0, (TILE, TILE)).astype(np.float32)
        out[..., c] = np.clip(wave + noise, 0, 255).astype(np.uint8)
    return out


@dataclass
class TileSet:
    """The tile files of one format, their grid positions and the expected mosaic."""

    fmt: str
    folder: Path
    files: list[str]
    positions: list[tuple[int, int]]
    n_side: int
    truth_path: Path

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_side * TILE, self.n_side * TILE, 3)

    @property
    def glob(self) -> str:
        return str(self.folder / f"tile_*.{_EXT[self.fmt]}")

    def truth(self) -> np.ndarray:
        return np.load(self.truth_path)


def _position(path: str) -> tuple[int, int]:
    """(row, col) of a tile from its file name ``tile_RR_CC.ext``."""
    stem = os.path.basename(path).split(".")[0]
    _, r, c = stem.split("_")
    return int(r), int(c)


def tile_set(cache_dir: Path, n_side: int, fmt: str) -> TileSet:
    """Write (once) ``n_side**2`` tiles of format ``fmt`` and the expected mosaic."""
    import imagecodecs

    folder = cache_dir / f"tiles_{n_side}x{n_side}_{TILE}" / fmt
    truth_path = folder.parent / f"truth_{fmt}.npy"
    marker = folder / ".complete"
    if not marker.exists():
        folder.mkdir(parents=True, exist_ok=True)
        mosaic = np.empty((n_side * TILE, n_side * TILE, 3), np.uint8)
        for r in range(n_side):
            for c in range(n_side):
                pixels = _tile_pixels(r, c)
                if fmt == "png":
                    data = bytes(imagecodecs.png_encode(pixels))
                    decoded = pixels  # lossless: the truth is what was encoded
                else:
                    data = bytes(imagecodecs.jpeg8_encode(pixels, level=JPEG_QUALITY))
                    decoded = imagecodecs.jpeg_decode(data)  # the truth is the reference decode
                (folder / f"tile_{r:02d}_{c:02d}.{_EXT[fmt]}").write_bytes(data)
                mosaic[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = decoded
        tmp = truth_path.with_name(truth_path.name + f".tmp{os.getpid()}.npy")
        np.save(tmp, mosaic)
        os.replace(tmp, truth_path)
        marker.write_text("ok")
    files = sorted(glob.glob(str(folder / f"tile_*.{_EXT[fmt]}")))
    if len(files) != n_side * n_side:
        raise RuntimeError(f"{folder}: {len(files)} tiles, expected {n_side * n_side}; delete the folder")
    return TileSet(fmt, folder, files, [_position(f) for f in files], n_side, truth_path)


def v2_refs(ts: TileSet) -> dict[str, Any]:
    """kerchunk v1 references: a zarr v2 array whose compressor is imagecodecs' numcodecs codec."""
    zarray = {
        "zarr_format": 2,
        "shape": list(ts.shape),
        "chunks": [TILE, TILE, 3],
        "dtype": "|u1",
        "compressor": {"id": f"imagecodecs_{ts.fmt}"},
        "filters": None,
        "fill_value": 0,
        "order": "C",
        "dimension_separator": ".",
    }
    refs: dict[str, Any] = {".zarray": json.dumps(zarray), ".zattrs": "{}"}
    for path, (r, c) in zip(ts.files, ts.positions):
        refs[f"{r}.{c}.0"] = [path]
    return {"version": 1, "refs": refs}


# ------------------------------------------------------------- implementations
def _limit(ts: TileSet, pool: ThreadPoolExecutor) -> Callable[[], np.ndarray]:
    """Read every file and decode it with imagecodecs in the 2-thread pool."""
    import imagecodecs

    decode = imagecodecs.png_decode if ts.fmt == "png" else imagecodecs.jpeg_decode
    items = list(zip(ts.files, ts.positions))

    def run() -> np.ndarray:
        out = np.empty(ts.shape, np.uint8)

        def one(item: tuple[str, tuple[int, int]]) -> None:
            path, (r, c) = item
            with open(path, "rb") as f:
                data = f.read()
            out[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE] = decode(data)

        for _ in pool.map(one, items):
            pass
        return out

    return run


def _memory_store(ts: TileSet, manifest: Any, config: dict[str, Any] | None = None) -> Callable[[], np.ndarray]:
    """The same files as chunks of the same ``refstore.image`` array in a zarr MemoryStore,
    optionally under a zarr config."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    buf = default_buffer_prototype().buffer
    data = {k: buf.from_bytes(manifest.get(k)) for k in ("zarr.json", "image/zarr.json")}
    for path, (r, c) in zip(ts.files, ts.positions):
        with open(path, "rb") as f:
            data[f"image/c/{r}/{c}/0"] = buf.from_bytes(f.read())
    store = MemoryStore(data, read_only=True)

    def run() -> np.ndarray:
        with zarr.config.set(config or {}):
            return zarr.open_array(store=store, path="image", mode="r")[:]

    return run


def _refstore(manifest: Any, config: dict[str, Any] | None = None) -> Callable[[], np.ndarray]:
    """``ReferenceStore`` over the builder's manifest, optionally under a zarr config."""
    import zarr

    refstore = import_refstore()
    assert refstore is not None

    def run() -> np.ndarray:
        store = refstore.ReferenceStore(manifest)
        try:
            with zarr.config.set(config or {}):
                return zarr.open_array(store=store, path="image", mode="r")[:]
        finally:
            store.close()

    return run


def _tifffile(ts: TileSet, ioworkers: int) -> Callable[[], np.ndarray]:
    """tifffile's FileSequence of the files, tiled into the mosaic, read through zarr."""
    import imagecodecs
    import tifffile
    import zarr

    def run() -> np.ndarray:
        seq = tifffile.FileSequence(imagecodecs.imread, ts.files, pattern=PATTERN)
        store = seq.aszarr(axestiled={0: 0, 1: 1}, ioworkers=ioworkers)
        try:
            return zarr.open_array(store=store, mode="r")[:]
        finally:
            store.close()

    return run


# ---------------------------------------------------------------------- timing
def _warm_up(ts: TileSet) -> None:
    """Import the codecs and start zarr's loop and threads outside any timing."""
    import imagecodecs
    import imagecodecs.numcodecs
    import zarr
    from zarr.storage import MemoryStore

    imagecodecs.numcodecs.register_codecs(["imagecodecs_png", "imagecodecs_jpeg"], verbose=False)
    with open(ts.files[0], "rb") as f:
        imagecodecs.imread(f.read())
    arr = zarr.create_array(store=MemoryStore(), shape=(16,), chunks=(8,), dtype="uint8", compressors=None)
    arr[:] = 1
    _ = arr[:]


def n_side(cfg: Config) -> int:
    """Tiles per side: 32 (1024 tiles), 8 (64) with ``--quick``; ``REFSTORE_BENCH_TILES_SIDE`` overrides."""
    env = os.environ.get("REFSTORE_BENCH_TILES_SIDE")
    return int(env) if env else (8 if cfg.quick else 32)


def _has_fused() -> bool:
    from zarr.core import codec_pipeline

    return hasattr(codec_pipeline, "FusedCodecPipeline")


def run(name: str, cfg: Config) -> list[Row]:
    """Run one image scenario and return its table rows."""
    import zarr

    fmt = FORMATS[name]
    ts = tile_set(cfg.cache_dir, n_side(cfg), fmt)
    truth = ts.truth()
    check = array_checker(truth)
    _warm_up(ts)
    refs = v2_refs(ts)
    refstore = import_refstore()
    pool = ThreadPoolExecutor(2, thread_name_prefix="limit")
    fns: dict[str, Callable[[], Any]] = {LIMIT: _limit(ts, pool)}
    if refstore is not None:
        from refstore.build import images

        manifest = images(ts.glob, PATTERN, mosaic=True, show_progress=False)
        fns[MEMORY] = _memory_store(ts, manifest)
        fns[REF] = _refstore(manifest)
        fns[REF_THREADED] = _refstore(manifest, {"codec_pipeline.path": THREADED_PATH})
        if _has_fused():
            fns[MEMORY_FUSED] = _memory_store(ts, manifest, {"codec_pipeline.path": FUSED_PATH})
        fns[REF_V2.format(fmt=fmt)] = refstore_reader(refs)
    fns[FSSPEC.format(fmt=fmt)] = fsspec_reader(refs)
    fns[TIFF1] = _tifffile(ts, 1)
    fns[TIFF2] = _tifffile(ts, 2)
    jobs = []
    for label, fn in fns.items():
        timed = CpuTimed(fn)
        jobs.append(Job(label, timed, check, cfg.repeat, after=timed.after))
    try:
        results = run_interleaved(jobs, cfg.verbose)
    finally:
        pool.shutdown()
    summary = cpu_summary(results, LIMIT)
    if cfg.verbose:
        print(f"  {name}: {len(ts.files)} tiles of {TILE}x{TILE}x3, zarr {zarr.__version__}")
        print(format_cpu_summary(summary))
    return _rows(name, fmt, cfg, ts, results, summary)


def _rows(
    name: str, fmt: str, cfg: Config, ts: TileSet, results: dict[str, Timing], summary: list[dict[str, Any]]
) -> list[Row]:
    """Table rows: refstore variants (and the other readers) against the limits, then CPU seconds."""
    fs = results.get(FSSPEC.format(fmt=fmt))
    lim = results[LIMIT]
    mem = results.get(MEMORY)

    def err(*ts_: Timing | None) -> str:
        return "; ".join(t.error for t in ts_ if t is not None and t.error)

    rows: list[Row] = []
    ref = results.get(REF)
    na = "" if ref is not None else "refstore not importable"
    rows.append(Row(name, REF, "s", ref.median if ref else None, fs.median if fs else None, lim.median, LIMIT,
                    note=err(ref, fs, lim) or na, group=name))
    if mem is not None:
        rows.append(Row(name, REF, "s", ref.median if ref else None, fs.median if fs else None, mem.median,
                        MEMORY + " (same files)", note=err(mem), group=name))
    for label in (REF_THREADED, REF_V2.format(fmt=fmt)):
        t = results.get(label)
        if t is not None:
            rows.append(Row(name, label, "s", t.median, fs.median if fs else None, lim.median, LIMIT,
                            note=err(t), group=name))
        mem_fused = results.get(MEMORY_FUSED)
        if label == REF_THREADED and t is not None and mem_fused is not None:
            rows.append(Row(name, label, "s", t.median, fs.median if fs else None, mem_fused.median,
                            MEMORY_FUSED + " (same files)", note=err(mem_fused), group=name))
    for label in (TIFF1, TIFF2):
        t = results[label]
        rows.append(Row(name, label, "s", t.median, None, lim.median, LIMIT, note=err(t), group=name))
    rows.append(Row(name, REF, "cpu s", median_cpu(ref) if ref else None, median_cpu(fs) if fs else None, median_cpu(lim), LIMIT,
                    group=name))
    rows[0].raw = {
        "tiles": len(ts.files),
        "tile": [TILE, TILE, 3],
        "format": fmt,
        "bytes": sum(os.path.getsize(f) for f in ts.files),
        "summary": summary,
        "timings": {k: v.to_json() for k, v in results.items()},
    }
    return rows


if __name__ == "__main__":
    main(run, FORMATS)
