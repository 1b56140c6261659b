"""Scenario ``open_json``: open a kerchunk JSON with ~1M references.

Each measurement runs in a fresh subprocess so that peak memory is isolated:
the worker imports everything, records its resident size as the baseline,
opens the references, and reports the wall time and ``ru_maxrss - baseline``.
A second worker kind pickles the opened object and times the unpickling
(after clearing fsspec's instance cache, which would otherwise hand back the
same object).

Run a worker directly as
``python -m benchmarks.open_json IMPL ACTION PATH N_REFS`` with IMPL one of
:data:`IMPLS` and ACTION ``open`` or ``pickle``; it prints ``RESULT {json}``.
"""

from __future__ import annotations

import os
import pickle
import resource
import sys
import time
from pathlib import Path
from typing import Any

from . import peers
from ._common import Config, Row, import_refstore, measure_in_workers, reset_caches, worker_main
from .data import GRID_COLS, N_TARGET_FILES, TEMPLATE_URL, big_json, big_key

FSSPEC = "fsspec"
MANIFEST = "refstore.Manifest"
REF_RFS = "refstore.ReferenceFileSystem"
LIMIT = "ujson.load"
VZ = "virtualizarr"
IC = "icechunk"
IMPLS = (FSSPEC, MANIFEST, REF_RFS, LIMIT, VZ, IC)
PEER_OF = {VZ: peers.VZ, IC: peers.IC}
REMOTE = {"remote_protocol": "s3", "remote_options": {"anon": True}}
MIB = 1024 * 1024


# --------------------------------------------------------------------- worker
def _rss_now() -> int:
    """Current resident set size in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the peak so far
        return _rss_peak()


def _rss_peak() -> int:
    """Peak resident set size in bytes (``ru_maxrss`` is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _opener(impl: str, path: str) -> tuple[Any, Any]:
    """(open function, lookup function) for one implementation; imports now."""
    import s3fs  # noqa: F401 - imported by every worker so baselines match
    import ujson

    sidecar = Path(path + ".target")  # the file null URLs stand for (open_shapes' "null URLs" shape)
    target = {"target": sidecar.read_text()} if sidecar.exists() else {}
    if impl == FSSPEC:
        from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS

        # fsspec opens a compressed manifest only when told to infer the compression
        compressed = {"target_options": {"compression": "infer"}} if path.endswith((".gz", ".zst")) else {}
        return (lambda: FsspecRFS(fo=path, **REMOTE, **compressed, **target)), (lambda o, k: o.info(k)["size"])
    if impl == MANIFEST:
        import refstore

        def length(o: Any, k: str) -> int:
            ref = o.get(k)
            return getattr(ref, "length", None) or ref[2]

        return (lambda: refstore.Manifest.open(path)), length
    if impl == REF_RFS:
        import refstore

        return (lambda: refstore.ReferenceFileSystem(fo=path, **REMOTE, **target)), (lambda o, k: o.info(k)["size"])
    if impl == VZ:  # path: the JSON with its template written out (VirtualiZarr expands none)
        from obspec_utils.registry import ObjectStoreRegistry
        from obstore.store import LocalStore
        from virtualizarr.parsers import KerchunkJSONParser

        registry = ObjectStoreRegistry({"file://": LocalStore()})

        def vz_length(o: Any, k: str) -> int:
            array, _, idx = k.rpartition("/")
            entry = o._group.arrays[array].manifest.get_entry(tuple(int(x) for x in idx.split(".")))
            return int(entry["length"])

        return (lambda: KerchunkJSONParser()(f"file://{Path(path).resolve()}", registry)), vz_length
    if impl == IC:  # path: an Icechunk repository holding the same references
        import asyncio

        import icechunk

        def ic_length(o: Any, k: str) -> int:
            array, _, idx = k.rpartition("/")
            return int(asyncio.run(o.getsize(f"{array}/c/{idx.replace('.', '/')}")))

        def ic_open() -> Any:
            repo = icechunk.Repository.open(icechunk.local_filesystem_storage(path))
            return repo.readonly_session("main").store

        return ic_open, ic_length
    if impl == LIMIT:

        def load() -> Any:
            with open(path, "rb") as f:
                return ujson.load(f)

        return load, (lambda o, k: o["refs"][k][2])
    raise SystemExit(f"unknown implementation {impl!r}")


def worker(impl: str, action: str, path: str, n_refs: int) -> dict[str, Any]:
    """Measure one open (or one pickle round trip) in this process."""
    open_fn, lookup = _opener(impl, path)
    key = big_key(n_refs, n_refs - 1)
    base = _rss_now()
    t0 = time.perf_counter()
    obj = open_fn()
    t1 = time.perf_counter()
    size = lookup(obj, key)
    t2 = time.perf_counter()
    peak = _rss_peak()
    kept = _rss_now()
    if size != 40000:
        raise AssertionError(f"lookup of {key} gave length {size}")
    out: dict[str, Any] = {
        "open_s": t1 - t0,
        "lookup_s": t2 - t1,
        "baseline_rss": base,
        "peak_rss": peak,
        "peak_delta": max(0, peak - base),
        "kept_delta": max(0, kept - base),
    }
    if action == "pickle":
        t0 = time.perf_counter()
        blob = pickle.dumps(obj)
        t1 = time.perf_counter()
        del obj
        reset_caches()  # else fsspec's instance cache hands back the same object
        t2 = time.perf_counter()
        obj = pickle.loads(blob)
        size = lookup(obj, key)
        t3 = time.perf_counter()
        if size != 40000:
            raise AssertionError(f"lookup after unpickling gave length {size}")
        out.update(pickle_bytes=len(blob), dumps_s=t1 - t0, loads_lookup_s=t3 - t2)
    return out


# --------------------------------------------------------------------- parent
def _describe(res: dict[str, Any]) -> str:
    extra = f", pickle {res['pickle_bytes'] / MIB:.2f} MiB" if "pickle_bytes" in res else ""
    return f"open {res['open_s']:.3f} s, peak +{res['peak_delta'] / MIB:.1f} MiB{extra}"


def _measure(impl: str, action: str, path: Path, n_refs: int, repeat: int, verbose: bool) -> dict[str, Any]:
    """Run ``repeat`` fresh workers; medians of every numeric field plus the raw runs."""
    return measure_in_workers("benchmarks.open_json", impl, action, path, n_refs, repeat,
                              describe=_describe, verbose=verbose, timeout=1800)


def _get(m: dict[str, Any] | None, field: str, scale: float = 1.0) -> float | None:
    """A median field of a measurement, scaled, or ``None``."""
    if not m or "median" not in m or field not in m["median"]:
        return None
    return m["median"][field] / scale


def run(cfg: Config) -> list[Row]:
    """Run the open_json scenario (opening and pickling) and return table rows."""
    path = big_json(cfg.cache_dir, cfg.n_refs)
    n = cfg.n_refs
    rs = import_refstore()
    impls = [FSSPEC, LIMIT]
    if rs is not None and hasattr(rs, "Manifest"):
        impls.append(MANIFEST)
    if rs is not None and hasattr(rs, "ReferenceFileSystem"):
        impls.append(REF_RFS)
    reps = max(1, min(cfg.repeat, 3))
    opened = {impl: _measure(impl, "open", path, n, reps, cfg.verbose) for impl in impls}
    reasons: dict[str, str] = {}
    for impl in (VZ, IC):
        why = peers.missing(PEER_OF[impl])
        try:
            if why is None:
                src = (peers.expanded_json(path, TEMPLATE_URL) if impl == VZ else
                       peers.icechunk_refs_repo(cfg.cache_dir, n, TEMPLATE_URL, N_TARGET_FILES, min(GRID_COLS, n)))
                opened[impl] = _measure(impl, "open", src, n, reps, cfg.verbose)
        except Exception as exc:
            why = f"cannot be set up: {type(exc).__name__}: {exc}"
        if why is not None:
            reasons[impl] = why
    pickled = {i: _measure(i, "pickle", path, n, 1, cfg.verbose) for i in impls if i != LIMIT}
    raw = {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "n_refs": n,
        "template": TEMPLATE_URL,
        "open": opened,
        "pickle": pickled,
    }
    fs_o, lim_o, fs_p = opened[FSSPEC], opened[LIMIT], pickled[FSSPEC]
    err = "; ".join(f"{k}: {m['error']}" for d in (opened, pickled) for k, m in d.items() if "error" in m)
    metrics: list[tuple[str, str, Any, str]] = [
        ("open_json", "s", lambda m: _get(m, "open_s"), LIMIT),
        ("open_json+lookup", "s", _sum, LIMIT),
        ("open_json peak", "MiB", lambda m: _get(m, "peak_delta", MIB), LIMIT),
        ("open_json peak", "B/ref", lambda m: _get(m, "peak_delta", n), LIMIT),
        ("open_json kept", "MiB", lambda m: _get(m, "kept_delta", MIB), LIMIT),
        ("pickle size", "bytes", lambda m: _get(m, "pickle_bytes"), ""),
        ("unpickle+lookup", "s", lambda m: _get(m, "loads_lookup_s"), ""),
    ]
    rows: list[Row] = []
    for scen, unit, pick, lname in metrics:
        pickle_metric = scen.startswith(("pickle", "unpickle"))
        for variant in (MANIFEST, REF_RFS):
            mine = (pickled if pickle_metric else opened).get(variant)
            base = fs_p if pickle_metric else fs_o
            lim = pick(lim_o) if lname else None
            rows.append(Row(scen, variant, unit, pick(mine), pick(base), lim, lname, group="open_json"))
    for scen, unit, pick, lname in metrics[:5]:  # the peers: opening only (no pickling measured)
        for impl in (VZ, IC):
            peer = PEER_OF[impl]
            m = opened.get(impl)
            note = reasons.get(impl) or (m or {}).get("error", "")
            rows.append(Row(scen, f"Manifest vs {peers.SHORT[peer]} {peers.version(peer)}", unit,
                            pick(opened.get(MANIFEST)), pick(m), pick(lim_o), lname, note=note, group="open_json"))
    rows[0].raw = raw
    rows[0].note = err
    return rows


def _sum(m: dict[str, Any] | None) -> float | None:
    """Median open time plus median first-lookup time."""
    a, b = _get(m, "open_s"), _get(m, "lookup_s")
    return a + b if a is not None and b is not None else None


if __name__ == "__main__":
    worker_main(worker)
