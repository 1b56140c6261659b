"""Scenario ``parquet``: a kerchunk parquet manifest of 100M references (1M with ``--quick``).

The manifest is generated once into the cache directory, partition by
partition with pyarrow (kerchunk's own writer would take hours at this size),
in kerchunk's layout and encoding: one zarr v2 array ``data`` of ``uint16``
chunks of 2x2 (8 bytes), a chunk grid of ``n_refs / 10,000`` x 10,000,
``record_size`` 100,000, columns ``path`` (dictionary), ``offset``, ``size``,
``raw`` (all null), zstd, statistics only for ``offset`` and ``size``
(without them fastparquet reads those columns as floats). Chunk ``i`` points into one of 256
small target files (``(i // 1000) % 256``, so neighbouring chunks share a
file, as in real data) at a pseudo-random offset (a multiplicative hash of
``i``, so the offsets do not compress away). A sample of it is checked with
fsspec's ``LazyReferenceMapper`` when it is made.

Each measurement runs in a fresh subprocess (isolating peak memory): import
everything, record the RSS baseline, then time opening the manifest, reading
one chunk's bytes, and looking up the references of 1,000 random chunks and
of 1,000 consecutive chunks; every answer is checked (untimed) against the
generator's formula. A second worker kind pickles the opened object and times
unpickling plus one lookup.

Run a worker directly as ``python -m benchmarks.parquet IMPL ACTION PATH N_REFS``;
it prints ``RESULT {json}``.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import shutil
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ._common import Config, Row, import_refstore, measure_in_workers, reset_caches, worker_main

FSSPEC = "fsspec"
MANIFEST = "refstore.Manifest"
REF_RFS = "refstore.ReferenceFileSystem"
LIMIT = "pyarrow"
IMPLS = (FSSPEC, MANIFEST, REF_RFS, LIMIT)
MIB = 1024 * 1024

COLS = 10_000
"""Chunk grid columns (rows = n_refs // COLS)."""
RECORD_SIZE = 100_000
"""References per partition file (kerchunk's ``refs_to_dataframe`` default)."""
N_TARGETS = 256
TARGET_BYTES = 1 << 17
CHUNK_BYTES = 8
LOOKUPS = 1000
CACHE_SIZE = 128
"""Partitions kept in memory by both implementations (both default to 128)."""
_HASH = 0x9E3779B97F4A7C15


# --------------------------------------------------------------------- the data
def _offsets(flat: np.ndarray) -> np.ndarray:
    """Pseudo-random, 8-aligned offsets into a target file (vectorised)."""
    with np.errstate(over="ignore"):
        h = flat.astype(np.uint64) * np.uint64(_HASH)
    return ((h >> np.uint64(50)) * np.uint64(CHUNK_BYTES)).astype(np.int64) % (TARGET_BYTES - CHUNK_BYTES)


def _target(cache_dir: Path, k: int) -> str:
    return str(cache_dir / "parquet_targets" / f"target_{k:03d}.bin")


def expected(cache_dir: Path, flat: int) -> tuple[str, int, int]:
    """``(url, offset, size)`` of chunk ``flat``, by the generator's formula."""
    return _target(cache_dir, (flat // 1000) % N_TARGETS), int(_offsets(np.array([flat]))[0]), CHUNK_BYTES


def key_of(flat: int) -> str:
    """The zarr v2 key of chunk ``flat``."""
    return f"data/{flat // COLS}.{flat % COLS}"


def _targets(cache_dir: Path) -> None:
    folder = cache_dir / "parquet_targets"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for k in range(N_TARGETS):
        path = Path(_target(cache_dir, k))
        if not path.exists() or path.stat().st_size != TARGET_BYTES:
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_bytes(rng.bytes(TARGET_BYTES))
            os.replace(tmp, path)


def big_parquet(cache_dir: Path, n_refs: int, verbose: bool = True) -> Path:
    """Path of the parquet manifest with ``n_refs`` references (made once, then reused)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if n_refs % COLS:
        raise ValueError(f"n_refs must be a multiple of {COLS}, got {n_refs}")
    _targets(cache_dir)
    root = cache_dir / f"parquet_{n_refs}.parq"
    if (root / ".zmetadata").exists():
        return root
    tmp = cache_dir / f"parquet_{n_refs}.parq.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    rows = n_refs // COLS
    dictionary = pa.array([_target(cache_dir, k) for k in range(N_TARGETS)], type=pa.string())
    # as in kerchunk's files, offset and size are not nullable; with their statistics written,
    # fastparquet (fsspec's default engine) reads them as integers, not floats
    schema = pa.schema([pa.field("path", pa.dictionary(pa.int32(), pa.string())),
                        pa.field("offset", pa.int64(), nullable=False), pa.field("size", pa.int64(), nullable=False),
                        pa.field("raw", pa.binary())])
    t0 = time.perf_counter()
    n_files = -(-n_refs // RECORD_SIZE)
    for record in range(n_files):
        flat = np.arange(record * RECORD_SIZE, min((record + 1) * RECORD_SIZE, n_refs), dtype=np.int64)
        n = len(flat)
        table = pa.table([
            pa.DictionaryArray.from_arrays(pa.array(((flat // 1000) % N_TARGETS).astype(np.int32)), dictionary),
            pa.array(_offsets(flat)),
            pa.array(np.full(n, CHUNK_BYTES, dtype=np.int64)),
            pa.nulls(n, type=pa.binary()),
        ], schema=schema)
        pq.write_table(table, tmp / "data" / f"refs.{record}.parq", compression="zstd",
                       write_statistics=["offset", "size"])
        if verbose and record and record % 100 == 0:
            print(f"    wrote {record}/{n_files} partitions ({time.perf_counter() - t0:.0f} s)", flush=True)
    zarray = {"zarr_format": 2, "shape": [rows * 2, COLS * 2], "chunks": [2, 2], "dtype": "<u2",
              "compressor": None, "filters": None, "fill_value": 0, "order": "C"}
    meta = {"metadata": {".zgroup": {"zarr_format": 2}, "data/.zarray": zarray,
                         "data/.zattrs": {"_ARRAY_DIMENSIONS": ["y", "x"]}},
            "record_size": RECORD_SIZE}
    (tmp / ".zmetadata").write_text(json.dumps(meta))
    _verify_with_fsspec(tmp, cache_dir, n_refs)
    os.replace(tmp, root)
    if verbose:
        size = sum(p.stat().st_size for p in root.rglob("*"))
        print(f"    generated {root} ({n_refs:,} refs, {size / MIB:.0f} MiB) in {time.perf_counter() - t0:.0f} s",
              flush=True)
    return root


def _verify_with_fsspec(root: Path, cache_dir: Path, n_refs: int) -> None:
    """fsspec's own LazyReferenceMapper must read a sample as the generator meant it."""
    from fsspec.implementations.reference import LazyReferenceMapper

    mapper = LazyReferenceMapper(str(root), engine="pyarrow", cache_size=4)
    rng = np.random.default_rng(1)
    sample = sorted({0, n_refs - 1, RECORD_SIZE - 1, *rng.integers(0, n_refs, 50).tolist()})
    for flat in sample:
        got = list(mapper[key_of(flat)])
        if [got[0], int(got[1]), int(got[2])] != list(expected(cache_dir, flat)):
            raise AssertionError(f"generated manifest: fsspec reads {key_of(flat)} as {got}")


# --------------------------------------------------------------------- worker
def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_peak() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class _PyarrowFloor:
    """The limit: parse ``.zmetadata`` and index pyarrow tables of the partitions (same LRU size)."""

    def __init__(self, root: str) -> None:
        with open(f"{root}/.zmetadata", "rb") as f:
            self.meta = json.loads(f.read())
        self.root = root
        self.record_size = self.meta["record_size"]
        self.cache: OrderedDict[int, Any] = OrderedDict()

    def get(self, key: str) -> tuple[str, int, int]:
        import pyarrow.parquet as pq

        i, j = key.rsplit("/", 1)[1].split(".")
        flat = int(i) * COLS + int(j)
        record, row = divmod(flat, self.record_size)
        table = self.cache.get(record)
        if table is None:
            table = pq.read_table(f"{self.root}/data/refs.{record}.parq", columns=["path", "offset", "size"])
            self.cache[record] = table
            if len(self.cache) > CACHE_SIZE:
                self.cache.popitem(last=False)
        else:
            self.cache.move_to_end(record)
        return (table.column("path")[row].as_py(), table.column("offset")[row].as_py(),
                table.column("size")[row].as_py())


def _impl(impl: str, path: str) -> tuple[Any, Any, Any]:
    """(open, one-chunk read, reference lookup) functions of one implementation; imports now."""
    import importlib
    import pkgutil

    import fastparquet  # noqa: F401 - fsspec's default engine; imported by every worker so baselines match
    import pandas  # noqa: F401
    import pyarrow.compute
    import pyarrow.parquet  # noqa: F401
    from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS

    import refstore
    import refstore.manifest

    # refstore imports some modules on first use; that is library loading, not opening
    for mod in pkgutil.iter_modules(refstore.manifest.__path__):
        try:
            importlib.import_module(f"refstore.manifest.{mod.name}")
        except ImportError:
            pass

    def pread(url: str, offset: int, size: int) -> bytes:
        with open(url, "rb") as f:
            f.seek(offset)
            return f.read(size)

    if impl == FSSPEC:
        def ref(o: Any, k: str) -> tuple[str, int, int]:
            v = o.references[k]
            return v[0], int(v[1]), int(v[2])

        return (lambda: FsspecRFS(fo=path, remote_protocol="file", cache_size=CACHE_SIZE),
                lambda o, k: o.cat(k), ref)
    if impl == MANIFEST:
        def mref(o: Any, k: str) -> tuple[str, int, int]:
            r = o.get(k)
            return r.url, r.offset, r.length

        return (lambda: refstore.Manifest.open(path, cache_size=CACHE_SIZE),
                lambda o, k: pread(*mref(o, k)), mref)
    if impl == REF_RFS:
        def rref(o: Any, k: str) -> tuple[str, int, int]:
            r = o.manifest.get(k)
            return r.url, r.offset, r.length

        return (lambda: refstore.ReferenceFileSystem(fo=path, remote_protocol="file", cache_size=CACHE_SIZE),
                lambda o, k: o.cat(k), rref)
    if impl == LIMIT:
        return (lambda: _PyarrowFloor(path), lambda o, k: pread(*o.get(k)), lambda o, k: o.get(k))
    raise SystemExit(f"unknown implementation {impl!r}")


def worker(impl: str, action: str, path: str, n_refs: int) -> dict[str, Any]:
    """Measure one open + reads (or one pickle round trip) in this process."""
    cache_dir = Path(path).parent
    open_fn, read_chunk, lookup = _impl(impl, path)
    rng = np.random.default_rng(2024)
    randoms = [int(f) for f in rng.integers(0, n_refs, LOOKUPS)]
    start = int(rng.integers(0, n_refs - LOOKUPS))
    consecutive = list(range(start, start + LOOKUPS))
    first = (n_refs // 2 + 12345) % n_refs
    base = _rss_now()
    c0 = time.process_time()
    t0 = time.perf_counter()
    obj = open_fn()
    t1 = time.perf_counter()
    c1 = time.process_time()
    chunk = read_chunk(obj, key_of(first))
    t2 = time.perf_counter()
    # the lookups take milliseconds: one full garbage collection landing inside them (where,
    # depends on how many objects each implementation made before) would be what they measure
    gc.collect()
    gc.disable()
    lookups_from = time.perf_counter()
    c2 = time.process_time()
    got_random = [lookup(obj, key_of(f)) for f in randoms]
    t3 = time.perf_counter()
    c3 = time.process_time()
    got_consecutive = [lookup(obj, key_of(f)) for f in consecutive]
    t4 = time.perf_counter()
    gc.enable()
    peak, kept = _rss_peak(), _rss_now()
    url, offset, size = expected(cache_dir, first)
    with open(url, "rb") as f:
        f.seek(offset)
        if chunk != f.read(size):
            raise AssertionError(f"{impl}: wrong bytes for {key_of(first)}")
    for flats, got in ((randoms, got_random), (consecutive, got_consecutive)):
        for flat, ref in zip(flats, got):
            if tuple(ref) != expected(cache_dir, flat):
                raise AssertionError(f"{impl}: {key_of(flat)} gave {ref}, expected {expected(cache_dir, flat)}")
    out: dict[str, Any] = {
        "open_s": t1 - t0,
        "chunk_s": t2 - t1,
        "random_s": t3 - lookups_from,
        "consecutive_s": t4 - t3,
        "total_s": (t2 - t0) + (t3 - lookups_from),
        "open_cpu_s": c1 - c0,
        "random_cpu_s": c3 - c2,
        "baseline_rss": base,
        "peak_delta": max(0, peak - base),
        "kept_delta": max(0, kept - base),
    }
    if action == "pickle":
        t0 = time.perf_counter()
        blob = pickle.dumps(obj)
        t1 = time.perf_counter()
        del obj
        reset_caches()
        t2 = time.perf_counter()
        obj = pickle.loads(blob)
        ref = lookup(obj, key_of(randoms[0]))
        t3 = time.perf_counter()
        if tuple(ref) != expected(cache_dir, randoms[0]):
            raise AssertionError(f"{impl}: lookup after unpickling gave {ref}")
        out.update(pickle_bytes=len(blob), dumps_s=t1 - t0, loads_lookup_s=t3 - t2)
    return out


# --------------------------------------------------------------------- parent
def _describe(res: dict[str, Any]) -> str:
    extra = f", pickle {res['pickle_bytes']:,} B" if "pickle_bytes" in res else ""
    return (f"open {res['open_s']:.3f} s, chunk {res['chunk_s']:.3f} s, {LOOKUPS} random {res['random_s']:.2f} s, "
            f"peak +{res['peak_delta'] / MIB:.0f} MiB{extra}")


def _measure(impl: str, action: str, path: Path, n_refs: int, repeat: int, verbose: bool) -> dict[str, Any]:
    """Run ``repeat`` fresh workers; medians of every numeric field plus the raw runs."""
    return measure_in_workers("benchmarks.parquet", impl, action, path, n_refs, repeat, describe=_describe,
                              verbose=verbose, timeout=3600, env={"PYTHONWARNINGS": "ignore"})


def _get(m: dict[str, Any] | None, field: str, scale: float = 1.0) -> float | None:
    if not m or "median" not in m or field not in m["median"]:
        return None
    return m["median"][field] / scale


def run(cfg: Config) -> list[Row]:
    """Run the parquet scenario and return table rows."""
    n = 1_000_000 if cfg.quick else 100_000_000
    path = big_parquet(cfg.cache_dir, n, cfg.verbose)
    rs = import_refstore()
    impls = [FSSPEC, LIMIT] + ([MANIFEST, REF_RFS] if rs is not None else [])
    reps = max(1, min(cfg.repeat, 3))
    opened = {impl: _measure(impl, "open", path, n, reps, cfg.verbose) for impl in impls}
    pickled = {i: _measure(i, "pickle", path, n, 1, cfg.verbose) for i in impls if i != LIMIT}
    raw = {"path": str(path), "n_refs": n, "record_size": RECORD_SIZE, "cache_size": CACHE_SIZE,
           "bytes_on_disk": sum(p.stat().st_size for p in path.rglob("*")), "open": opened, "pickle": pickled}
    metrics: list[tuple[str, str, str, float, bool]] = [
        ("parquet open", "s", "open_s", 1.0, True),
        ("parquet open CPU", "s", "open_cpu_s", 1.0, True),
        ("parquet read 1 chunk", "s", "chunk_s", 1.0, True),
        (f"parquet {LOOKUPS} random refs", "s", "random_s", 1.0, True),
        (f"parquet {LOOKUPS} random refs CPU", "s", "random_cpu_s", 1.0, True),
        (f"parquet {LOOKUPS} consecutive refs", "s", "consecutive_s", 1.0, True),
        ("parquet open+chunk+random", "s", "total_s", 1.0, True),
        ("parquet peak", "MiB", "peak_delta", MIB, True),
        ("parquet kept", "MiB", "kept_delta", MIB, True),
        ("parquet pickle size", "bytes", "pickle_bytes", 1.0, False),
        ("parquet unpickle+lookup", "s", "loads_lookup_s", 1.0, False),
    ]
    rows: list[Row] = []
    for scen, unit, field, scale, has_limit in metrics:
        source = opened if has_limit else pickled
        for variant in (MANIFEST, REF_RFS):
            rows.append(Row(scen, variant, unit, _get(source.get(variant), field, scale),
                            _get(source.get(FSSPEC), field, scale),
                            _get(opened.get(LIMIT), field, scale) if has_limit else None,
                            LIMIT if has_limit else "", group="parquet"))
    rows[0].raw = raw
    rows[0].note = "; ".join(f"{k}: {m['error']}" for d in (opened, pickled) for k, m in d.items() if "error" in m)
    return rows


if __name__ == "__main__":
    worker_main(worker)
