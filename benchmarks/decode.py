"""Scenarios ``decode_zstd`` and ``decode_gzip``: does decoding through zarr use both cores?

One file holds ``n`` compressed chunks (256, 32 with ``--quick``) of a 1-D
uint16 zarr v3 array, each chunk 1 MiB before compression (codecs ``bytes`` +
``zstd`` level 1, or ``bytes`` + ``gzip`` level 1, i.e. zlib).  The references
describe it as an array read through ``refstore.ReferenceStore`` under several
zarr settings; each read is compared with the uncompressed data.

The zarr settings that decide how many threads decode are read when zarr's
event loop and executor are created (``threading.max_workers``) or per read
(``async.concurrency``, ``codec_pipeline.*``), so before every timed read the
setting is applied and zarr's loop and executor are torn down
(``zarr.core.sync.cleanup_resources``), as if the process had just started.

Limits: the same chunk bytes read with ``os.pread`` and decoded with numcodecs
(``Zstd`` / ``GZip``, the codecs zarr's ``zstd`` and ``gzip`` wrap) into the
output array by a ``ThreadPoolExecutor`` of 2 workers, and of 1 worker (what
one core does).  Every implementation also records its process CPU time: CPU
time / wall time above 1 means more than one core was decoding.
"""

from __future__ import annotations

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
    median_cores,
    refstore_reader,
    run_interleaved,
)

CHUNK_BYTES = 1 << 20
DTYPE = np.dtype("<u2")
CHUNK_LEN = CHUNK_BYTES // DTYPE.itemsize
CODECS = {"decode_zstd": "zstd", "decode_gzip": "gzip"}

LIMIT2 = "numcodecs, 2 threads"
LIMIT1 = "numcodecs, 1 thread"
FSSPEC = "fsspec RFS + FsspecStore"
THREADED_PATH = "refstore.pipeline.ThreadedCodecPipeline"
BATCHED_PATH = "zarr.core.codec_pipeline.BatchedCodecPipeline"


# ------------------------------------------------------------------------ data
def _numcodec(codec: str) -> Any:
    """The numcodecs codec zarr's v3 ``zstd`` / ``gzip`` codec uses for these settings."""
    from numcodecs import GZip, Zstd

    return Zstd(level=1) if codec == "zstd" else GZip(level=1)


def _zarr_codec(codec: str) -> dict[str, Any]:
    if codec == "zstd":
        return {"name": "zstd", "configuration": {"level": 1, "checksum": False}}
    return {"name": "gzip", "configuration": {"level": 1}}


def _chunk_values(i: int) -> np.ndarray:
    """Deterministic, moderately compressible content of chunk ``i`` (a noisy slow wave)."""
    idx = np.arange(CHUNK_LEN, dtype=np.float64) + i * CHUNK_LEN
    rng = np.random.default_rng((4242, i))
    wave = 20000 + 300 * np.sin(idx / 9973.0) * np.cos(idx / 611.0)
    return (wave.astype(np.uint16) + rng.integers(0, 2, CHUNK_LEN, dtype=np.uint16)).astype(DTYPE)


@dataclass
class Compressed:
    """One file of compressed chunks: where each chunk is, and the raw data file."""

    codec: str
    path: Path
    offsets: list[int]
    lengths: list[int]
    raw_path: Path

    @property
    def n_chunks(self) -> int:
        return len(self.offsets)

    def refs(self) -> dict[str, Any]:
        """kerchunk v1 references of the zarr v3 array (chunk ``c/i`` -> its byte range)."""
        meta = {
            "zarr_format": 3,
            "node_type": "array",
            "shape": [self.n_chunks * CHUNK_LEN],
            "data_type": "uint16",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [CHUNK_LEN]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0,
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, _zarr_codec(self.codec)],
            "attributes": {},
            "dimension_names": None,
            "storage_transformers": [],
        }
        refs: dict[str, Any] = {"zarr.json": json.dumps(meta)}
        for i, (off, n) in enumerate(zip(self.offsets, self.lengths)):
            refs[f"c/{i}"] = [str(self.path), off, n]
        return {"version": 1, "refs": refs}


def compressed_file(cache_dir: Path, n_chunks: int, codec: str) -> Compressed:
    """Write (once) the raw data and its chunks compressed with ``codec``."""
    folder = cache_dir / f"decode_{n_chunks}x1MiB"
    folder.mkdir(parents=True, exist_ok=True)
    raw_path = folder / "raw.u2"
    if not raw_path.exists() or raw_path.stat().st_size != n_chunks * CHUNK_BYTES:
        tmp = raw_path.with_name(raw_path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            for i in range(n_chunks):
                f.write(_chunk_values(i).tobytes())
        os.replace(tmp, raw_path)
    path = folder / f"data.{codec}"
    index = folder / f"data.{codec}.json"
    if not index.exists():
        enc = _numcodec(codec)
        raw = np.memmap(raw_path, dtype=np.uint8, mode="r")
        offsets, lengths, pos = [], [], 0
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            for i in range(n_chunks):
                data = bytes(enc.encode(np.ascontiguousarray(raw[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES])))
                f.write(data)
                offsets.append(pos)
                lengths.append(len(data))
                pos += len(data)
        os.replace(tmp, path)
        index.write_text(json.dumps({"offsets": offsets, "lengths": lengths}))
    doc = json.loads(index.read_text())
    return Compressed(codec, path, doc["offsets"], doc["lengths"], raw_path)


# ------------------------------------------------------------------- settings
@dataclass
class Setting:
    """A named set of zarr configuration values applied before a read."""

    label: str
    values: dict[str, Any]


def settings() -> list[Setting]:
    """The zarr settings compared; refstore's ThreadedCodecPipeline is zarr's FusedCodecPipeline
    where zarr has one, refstore's threaded reads otherwise."""
    out = [
        Setting("zarr defaults", {}),
        Setting("threading.max_workers=1", {"threading.max_workers": 1}),
        Setting("threading.max_workers=2", {"threading.max_workers": 2}),
        Setting("async.concurrency=1", {"async.concurrency": 1}),
    ]
    out += [
        Setting("ThreadedCodecPipeline", {"codec_pipeline.path": THREADED_PATH}),
        Setting(
            "ThreadedCodecPipeline, codec_pipeline.max_workers=1",
            {"codec_pipeline.path": THREADED_PATH, "codec_pipeline.max_workers": 1},
        ),
    ]
    return out


def _baseline() -> dict[str, Any]:
    """The current values of every key any setting changes (restored between reads)."""
    import zarr

    keys = {"threading.max_workers", "async.concurrency", "codec_pipeline.path", "codec_pipeline.max_workers"}
    return {k: zarr.config.get(k, None) for k in sorted(keys)}


def _apply(base: dict[str, Any], values: dict[str, Any]) -> Callable[[], None]:
    """A ``before`` hook: set ``base`` updated with ``values`` and restart zarr's loop and executor."""

    def before() -> None:
        import zarr
        from zarr.core.sync import cleanup_resources

        cleanup_resources()
        zarr.config.set({**base, **values})

    return before


# ------------------------------------------------------------- implementations
def _limit(data: Compressed, pool: ThreadPoolExecutor) -> Callable[[], np.ndarray]:
    """pread each chunk and decode it with numcodecs straight into the output, in ``pool``."""
    codec = _numcodec(data.codec)
    spans = list(enumerate(zip(data.offsets, data.lengths)))

    def run() -> np.ndarray:
        out = np.empty(data.n_chunks * CHUNK_LEN, DTYPE)
        fd = os.open(data.path, os.O_RDONLY)
        try:

            def one(item: tuple[int, tuple[int, int]]) -> None:
                i, (off, n) = item
                codec.decode(os.pread(fd, n, off), out=out[i * CHUNK_LEN : (i + 1) * CHUNK_LEN])

            for _ in pool.map(one, spans):
                pass
        finally:
            os.close(fd)
        return out

    return run


def n_chunks(cfg: Config) -> int:
    """Chunks of 1 MiB: 256, 32 with ``--quick``; ``REFSTORE_BENCH_DECODE_CHUNKS`` overrides."""
    env = os.environ.get("REFSTORE_BENCH_DECODE_CHUNKS")
    return int(env) if env else (32 if cfg.quick else 256)


def run(name: str, cfg: Config) -> list[Row]:
    """Run one decode scenario and return its table rows."""
    import zarr
    from zarr.core.sync import cleanup_resources

    codec = CODECS[name]
    data = compressed_file(cfg.cache_dir, n_chunks(cfg), codec)
    truth = np.fromfile(data.raw_path, dtype=DTYPE)
    check = array_checker(truth)
    refs = data.refs()
    base = _baseline()
    defaults = _apply(base, {})
    pools = {LIMIT2: ThreadPoolExecutor(2, thread_name_prefix="limit2"),
             LIMIT1: ThreadPoolExecutor(1, thread_name_prefix="limit1")}
    jobs: list[Job] = []

    def add(label: str, fn: Callable[[], Any], before: Callable[[], None]) -> None:
        timed = CpuTimed(fn)
        jobs.append(Job(label, timed, check, cfg.repeat, before=before, after=timed.after))

    for lname, pool in pools.items():
        add(lname, _limit(data, pool), defaults)
    if import_refstore() is not None:
        for s in settings():
            add(s.label, refstore_reader(refs), _apply(base, s.values))
    add(FSSPEC, fsspec_reader(refs), defaults)
    try:
        results = run_interleaved(jobs, cfg.verbose)
    finally:
        for pool in pools.values():
            pool.shutdown()
        cleanup_resources()
        zarr.config.set(base)
    summary = cpu_summary(results, LIMIT2)
    if cfg.verbose:
        comp = sum(data.lengths)
        print(f"  {name}: {data.n_chunks} chunks of 1 MiB, {comp / data.n_chunks / 1024:.0f} KiB compressed "
              f"on average, zarr {zarr.__version__}, {os.cpu_count()} cpus")
        print(format_cpu_summary(summary))
    return _rows(name, data, results, summary)


def _rows(name: str, data: Compressed, results: dict[str, Timing], summary: list[dict[str, Any]]) -> list[Row]:
    """Rows: each setting's wall time against the 2-thread limit, then its CPU/wall."""
    lim2, lim1, fs = results[LIMIT2], results[LIMIT1], results.get(FSSPEC)
    labels = [s.label for s in settings() if s.label in results]
    rows: list[Row] = []
    for label in labels:
        t = results[label]
        is_default = label == "zarr defaults"
        rows.append(Row(name, f"refstore, {label}", "s", t.median, fs.median if fs and is_default else None,
                        lim2.median, LIMIT2, note=t.error or "", group=name))
        if is_default:
            rows.append(Row(name, f"refstore, {label}", "s", t.median, fs.median if fs else None,
                            lim1.median, LIMIT1, note=(fs.error or "") if fs else "", group=name))
    for label in labels:
        t = results[label]
        is_default = label == "zarr defaults"
        rows.append(Row(name, f"refstore, {label}", "cpu/wall", median_cores(t),
                        median_cores(fs) if is_default else None, median_cores(lim2), LIMIT2, group=name))
    if not rows:
        rows.append(Row(name, "-", note="refstore not importable", group=name))
    rows[0].raw = {
        "n_chunks": data.n_chunks,
        "chunk_bytes": CHUNK_BYTES,
        "codec": data.codec,
        "compressed_bytes": sum(data.lengths),
        "settings": {s.label: s.values for s in settings()},
        "summary": summary,
        "timings": {k: v.to_json() for k, v in results.items()},
    }
    return rows


if __name__ == "__main__":
    main(run, CODECS)
