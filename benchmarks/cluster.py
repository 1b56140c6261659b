"""refstore on a dask ``LocalCluster`` (worker processes), side by side with kerchunk and VirtualiZarr.

``python -m benchmarks.cluster [--files N] [--workers W] [--refs R] [--only build,reduce,ship]``
(not part of ``python -m benchmarks``: it takes minutes). Three parts:

* ``build``: scan and combine N small netCDF4 files (default 1,000; ``--files 10000``)
  along ``time``: refstore's ``combine_parallel`` on the cluster and on a local process
  pool, kerchunk's ``auto_dask`` (``SingleHdf5ToZarr`` + ``MultiZarrToZarr``) and
  VirtualiZarr's ``open_virtual_mfdataset(parallel="dask")`` + ``to_kerchunk``. Wall time,
  peak RSS of this process (client and, in a LocalCluster, scheduler) and of the largest
  worker (sampled every 0.1 s). Every result is checked against the first file.
* ``reduce``: ``xr.open_zarr(store, chunks={}).tas.mean().compute()`` on the cluster over
  the combined dataset, its files local, on a loopback HTTP server and on moto S3 (both
  subprocesses): refstore's ``ReferenceStore`` against fsspec's ``reference://``.
* ``ship``: a templated JSON of R references (default 1M; ``--refs 10000000``) opened as a
  ``ReferenceStore`` in the client and used by 8 tasks: carried by every task, or scattered
  once to every worker as a shared dependency; with the store's snapshot left where the
  client wrote it (``shared``: workers on this host map it) or deleted before the tasks
  run (``gone``: as on another host, workers reopen the manifest). Pickle bytes, wall
  time, median per-task open (unpickle) time, peak worker RSS.

The cluster's workers are restarted between measurements so peaks do not carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .servers import Server, s3_options, set_dummy_aws_env

STEPS, NLAT, NLON = 4, 8, 16


# -------------------------------------------------------------------------------- inputs


def write_files(root: Path, n: int) -> list[str]:
    """``n`` netCDF4 files of ``STEPS`` days each (netCDF4-python), made once per size."""
    import netCDF4

    root.mkdir(parents=True, exist_ok=True)
    paths = [str(root / f"tas_{k:05d}.nc") for k in range(n)]
    if all(os.path.exists(p) for p in paths):
        return paths
    rng = np.random.default_rng(0)
    for k, path in enumerate(paths):
        with netCDF4.Dataset(path, "w") as ds:
            ds.createDimension("time", STEPS)
            ds.createDimension("lat", NLAT)
            ds.createDimension("lon", NLON)
            t = ds.createVariable("time", "i8", ("time",))
            t.units = "days since 2000-01-01"
            t[:] = np.arange(STEPS) + k * STEPS
            ds.createVariable("lat", "f8", ("lat",))[:] = np.linspace(-80, 80, NLAT)
            ds.createVariable("lon", "f8", ("lon",))[:] = np.linspace(0, 350, NLON)
            v = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, fill_value=np.float32(1e20))
            v.units = "K"
            v[:] = (rng.standard_normal((STEPS, NLAT, NLON)) + 280).astype("f4")
    return paths


# -------------------------------------------------------------------------------- memory


class Peaks:
    """Sample RSS of this process and of its child processes (workers, nannies) every 0.1 s."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self.client = self.worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.client = max(self.client, self._me.memory_info().rss)
                for child in self._me.children(recursive=True):
                    try:
                        self.worker = max(self.worker, child.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self._stop.wait(0.1)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def timed(fn: Callable[[Any], Any], workers: int) -> tuple[float, Peaks, Any]:
    """Run ``fn(client)`` on a fresh LocalCluster (restarting workers is flaky on a loaded machine);
    its wall time, the memory peaks and its result."""
    import gc

    from distributed import Client, LocalCluster

    gc.collect()
    with LocalCluster(processes=True, n_workers=workers, threads_per_worker=1, dashboard_address=":0") as cl, \
            Client(cl) as client, Peaks() as peaks:
        start = time.perf_counter()
        result = fn(client)
        wall = time.perf_counter() - start
    return wall, peaks, result


# -------------------------------------------------------------------------------- build


def check(refs_or_path: Any, files: list[str], opts: dict[str, Any] | None = None) -> None:
    """The combined dataset has every file's time steps, and its first file's tas."""
    import xarray as xr

    import refstore

    ds = xr.open_zarr(refstore.ReferenceStore(refs_or_path, **(opts or {})), consolidated=False)
    assert ds.sizes["time"] == STEPS * len(files), ds.sizes
    with xr.open_dataset(files[0]) as first:
        np.testing.assert_array_equal(ds.tas[:STEPS].values, first.tas.values)


def build_peers(files: list[str], tmp: Path, workers: int) -> dict[str, Callable[[Any], Any]]:
    from refstore.build import combine_parallel

    peers: dict[str, Callable[[Any], Any]] = {
        "refstore combine_parallel (cluster)": lambda client: combine_parallel(
            files, "time", str(tmp / "rs_cluster.json"), client=client, show_progress=False).manifest,
        "refstore combine_parallel (process pool)": lambda client: combine_parallel(
            files, "time", str(tmp / "rs_pool.json"), workers=workers, show_progress=False).manifest,
    }
    try:
        from kerchunk.combine import auto_dask
        from kerchunk.hdf import SingleHdf5ToZarr

        peers["kerchunk auto_dask"] = lambda client: auto_dask(
            files, single_driver=SingleHdf5ToZarr, single_kwargs={"inline_threshold": 0},
            mzz_kwargs={"concat_dims": ["time"], "identical_dims": ["lat", "lon"]},
            n_batches=max(1, len(files) // 100), remote_protocol="file")
    except ImportError as exc:
        print(f"kerchunk: not run ({exc})")
    try:
        from obstore.store import LocalStore
        from virtualizarr import open_virtual_mfdataset
        from virtualizarr.parsers import HDFParser

        try:
            from obspec_utils.registry import ObjectStoreRegistry
        except ImportError:
            from virtualizarr.registry import ObjectStoreRegistry

        def vz(client: Any) -> Any:
            registry = ObjectStoreRegistry({"file://": LocalStore()})
            vds = open_virtual_mfdataset([f"file://{f}" for f in files], registry=registry, parser=HDFParser(),
                                         combine="nested", concat_dim="time", coords="minimal",
                                         data_vars="minimal", compat="override", parallel="dask")
            return vds.vz.to_kerchunk(format="dict")

        peers["VirtualiZarr open_virtual_mfdataset(parallel='dask')"] = vz
    except ImportError as exc:
        print(f"VirtualiZarr: not run ({exc})")
    return peers


def run_build(files: list[str], tmp: Path, workers: int) -> list[str]:
    rows = ["| peer | files | wall s | client+scheduler peak MB | largest worker peak MB |", "|---|---|---|---|---|"]
    for name, fn in build_peers(files, tmp, workers).items():
        try:
            wall, peaks, result = timed(fn, workers)
            check(result.to_dict() if hasattr(result, "to_dict") else result, files)
        except Exception as exc:  # a peer that fails is reported, not fatal
            rows.append(f"| {name} | {len(files)} | failed: {type(exc).__name__}: {str(exc)[:120]} | | |")
            continue
        rows.append(f"| {name} | {len(files)} | {wall:.1f} | {_mb(peaks.client)} | {_mb(peaks.worker)} |")
        print(rows[-1], flush=True)
    return rows


# -------------------------------------------------------------------------------- reduce


def run_reduce(files: list[str], tmp: Path, client: Any, repeat: int) -> list[str]:
    import fsspec
    import xarray as xr

    import refstore
    from refstore.build import combine_parallel

    root = str(Path(files[0]).parent)
    refs = combine_parallel(files, "time", None, client=client, show_progress=False).manifest.to_dict()
    # the recorded sizes and mtimes are the local files'; the copies served over HTTP and S3 have others
    refs.pop("refstore:sources", None)
    text = json.dumps(refs)
    rows = ["| source | reader | median s | tas mean |", "|---|---|---|---|"]
    with Server("http", Path(root)) as http, Server("s3") as s3:
        opts = s3_options(s3.url)
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
        fs.mkdir("bench")
        fs.put(root + "/", "bench/nc/", recursive=True)
        sources = {"local": (root, {}), "http": (http.url, {}), "s3": ("s3://bench/nc", opts)}
        expected = None
        for kind, (base, opts_) in sources.items():
            path = tmp / f"reduce_{kind}.json"
            path.write_text(text.replace(json.dumps(root)[1:-1], base))

            def rs(path: Path = path, opts_: dict[str, Any] = opts_) -> float:
                store = refstore.ReferenceStore(str(path), remote_options=opts_)
                return float(xr.open_zarr(store, consolidated=False, chunks={}).tas.mean().compute())

            def ff(path: Path = path, opts_: dict[str, Any] = opts_, kind: str = kind) -> float:
                mapper = fsspec.get_mapper("reference://", fo=str(path), remote_protocol=kind if kind != "local"
                                           else "file", remote_options=opts_)
                return float(xr.open_zarr(mapper, consolidated=False, chunks={}).tas.mean().compute())

            for reader, fn in (("refstore ReferenceStore", rs), ("fsspec reference://", ff)):
                times, value = [], None
                for _ in range(repeat):
                    start = time.perf_counter()
                    value = fn()
                    times.append(time.perf_counter() - start)
                expected = value if expected is None else expected
                assert value is not None and abs(value - expected) < 1e-3, (kind, reader, value, expected)
                rows.append(f"| {kind} | {reader} | {statistics.median(times):.2f} | {value:.4f} |")
                print(rows[-1], flush=True)
    return rows


# -------------------------------------------------------------------------------- ship


def _open_in_task(blob: bytes, key: str) -> tuple[float, int]:
    """Task: unpickle the store (the open), look ``key`` up; (open seconds, worker RSS)."""
    import psutil
    from zarr.core.sync import sync

    start = time.perf_counter()
    store = pickle.loads(blob)
    assert sync(store.exists(key))
    return time.perf_counter() - start, psutil.Process().memory_info().rss


def _use_shared(store: Any, key: str) -> tuple[float, int]:
    import psutil
    from zarr.core.sync import sync

    start = time.perf_counter()
    assert sync(store.exists(key))
    return time.perf_counter() - start, psutil.Process().memory_info().rss


def run_ship(n_refs: int, cache: Path, workers: int, tasks: int = 8) -> list[str]:
    import refstore

    from .data import big_json, big_key

    path = big_json(cache, n_refs)
    rows = ["| refs | snapshot | shipped | pickle bytes per task | wall s | open s per task: median / max | "
            "largest worker peak MB |", "|---|---|---|---|---|---|---|"]
    for snapshot in ("shared", "gone"):
        for shipped in ("per task", "shared dependency"):
            snapdir = Path(tempfile.mkdtemp(prefix="refstore-snap-"))
            os.environ["REFSTORE_SNAPSHOT_DIR"] = str(snapdir)
            store = refstore.ReferenceStore(str(path))
            blob = pickle.dumps(store)
            if snapshot == "gone":
                shutil.rmtree(snapdir, ignore_errors=True)
            keys = [big_key(n_refs, (k * 7919) % n_refs) for k in range(tasks)]

            def go(client: Any, blob: bytes = blob, keys: list[str] = keys,
                   shipped: str = shipped) -> list[tuple[float, int]]:
                if shipped == "per task":
                    futures = [client.submit(_open_in_task, blob, key, pure=False) for key in keys]
                    return list(client.gather(futures))
                start = time.perf_counter()
                shared = client.submit(pickle.loads, blob, pure=False)
                opened = client.submit(_use_shared, shared, keys[0], pure=False).result()
                first = (time.perf_counter() - start, opened[1])
                futures = [client.submit(_use_shared, shared, key, pure=False) for key in keys[1:]]
                return [first, *client.gather(futures)]

            wall, peaks, results = timed(go, workers)
            nbytes = len(blob) if shipped == "per task" else len(blob) / tasks
            rows.append(f"| {n_refs:,} | {snapshot} | {shipped} | {nbytes:,.0f} | {wall:.1f} | "
                        f"{statistics.median(r[0] for r in results):.2f} / {max(r[0] for r in results):.2f} | "
                        f"{_mb(peaks.worker)} |")
            print(rows[-1], flush=True)
            del store
            shutil.rmtree(snapdir, ignore_errors=True)
    os.environ.pop("REFSTORE_SNAPSHOT_DIR", None)
    return rows


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    from distributed import Client, LocalCluster

    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=1000, help="netCDF files to build from (default 1000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2, one thread each)")
    p.add_argument("--refs", type=int, default=1_000_000, help="references of the shipped manifest (default 1M)")
    p.add_argument("--repeat", type=int, default=3, help="repeats of each reduction (default 3)")
    p.add_argument("--only", default="build,reduce,ship", help="parts to run (default build,reduce,ship)")
    p.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "refstore-bench-cluster",
                   help="where the netCDF files and the big JSON are kept between runs")
    a = p.parse_args(argv)
    parts = set(a.only.split(","))
    set_dummy_aws_env()
    a.cache_dir.mkdir(parents=True, exist_ok=True)
    files = write_files(a.cache_dir / f"nc_{a.files}", a.files) if parts & {"build", "reduce"} else []
    tables: list[str] = []
    with tempfile.TemporaryDirectory(prefix="refstore-cluster-") as tmp:
        if "build" in parts:
            tables += ["", f"build + combine of {a.files} netCDF4 files, {a.workers} worker processes", "",
                       *run_build(files, Path(tmp), a.workers)]
        if "reduce" in parts:
            with LocalCluster(processes=True, n_workers=a.workers, threads_per_worker=1,
                              dashboard_address=":0") as cl, Client(cl) as client:
                tables += ["", f"tas.mean() over the combined {a.files} files, on the cluster "
                           f"(median of {a.repeat})", "", *run_reduce(files, Path(tmp), client, a.repeat)]
        if "ship" in parts:
            tables += ["", f"a {a.refs:,}-reference manifest used by 8 tasks", "",
                       *run_ship(a.refs, a.cache_dir, a.workers)]
    print("\n".join(tables))


if __name__ == "__main__":
    main()
