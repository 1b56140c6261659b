"""Size and open time of combined manifests against the number of inputs (``python -m benchmarks.virtual_size``).

N small netCDF4 files (one year each of a ``noleap`` calendar, 365 days; ``time``,
``time_bnds``, ``lat``, ``lon``, and ``tas``/``pr`` of 6 x 8 points, zlib, one chunk
per variable per file: what real climate files look like, shrunk) are scanned once
with kerchunk's ``SingleHdf5ToZarr`` and joined along ``time``:

* ``refstore combine --layout virtual``: every concatenated variable a virtual array
  (what ``combine`` writes wherever chunks do not align, e.g. years of 365 and 366
  days; equal years are used here so that MZZ can join them too);
* ``refstore combine`` (the default layout: here every chunk aligns, so the output is
  flat references, as MZZ's, with ``time`` inlined);
* kerchunk's ``MultiZarrToZarr`` (MZZ), opened with fsspec's own
  ``ReferenceFileSystem``: the floor a flat manifest of the same references sets
  (MZZ refuses inputs whose chunk lengths differ).

Per manifest: its bytes (and bytes per input), then in fresh processes (median of
``--repeat``): *open* (the store, ``zarr.open_group`` and every array's metadata, as
``group.members()`` gives them), *xr open* (``xr.open_zarr``, which also reads the
``time`` coordinate; ``decode_times=False``: cftime's decoding of a noleap calendar would dominate) and *first read* (``tas[0]`` after the open, one chunk). The
refstore reads are checked against h5py.

``--n 100,1000,10000`` picks the sizes (default all three); ``--repeat`` the fresh
processes per measurement (default 3). Inputs and manifests are cached under
``$REFSTORE_BENCH_CACHE/virtual_size`` (made once; manifests per ``--label``, e.g. the
refstore version that built them; ``--rebuild`` remakes them); ``--kinds`` picks the
manifests (``virtual,combined,mzz``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ._common import default_cache_dir

LAT, LON = 6, 8
COMBINED = "refstore combine"
VIRTUAL = "refstore combine --layout virtual"
MZZ = "kerchunk MZZ (fsspec RFS)"
KINDS = (VIRTUAL, COMBINED, MZZ)
FILES = {COMBINED: "combined.json", VIRTUAL: "virtual.json", MZZ: "mzz.json"}


def _days(i: int) -> int:
    return 365  # a noleap calendar, as many climate models have: MZZ needs equal chunk lengths


def _make_one(args: tuple[Path, int, int]) -> None:
    """Write input ``i`` (of days starting at day ``start``) and its kerchunk scan, unless present."""
    import netCDF4
    from kerchunk.hdf import SingleHdf5ToZarr

    folder, i, start = args
    path, refs = folder / f"f{i:05d}.nc", folder / f"f{i:05d}.json"
    if refs.exists():
        return
    days = _days(i)
    rng = np.random.default_rng(i)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
        ds.title = "virtual_size benchmark input"
        ds.createDimension("time", days)
        ds.createDimension("bnds", 2)
        ds.createDimension("lat", LAT)
        ds.createDimension("lon", LON)
        for dim, values in (("lat", np.linspace(-60, 60, LAT)), ("lon", np.linspace(0, 90, LON))):
            ds.createVariable(dim, "f8", (dim,))[:] = values
        t = ds.createVariable("time", "f8", ("time",))
        t.units, t.calendar, t.bounds = "days since 1001-01-01", "noleap", "time_bnds"
        t[:] = start + np.arange(days) + 0.5
        b = ds.createVariable("time_bnds", "f8", ("time", "bnds"), zlib=True, chunksizes=(days, 2))
        b[:] = np.stack([start + np.arange(days), start + np.arange(days) + 1], axis=1)
        for name, units in (("tas", "K"), ("pr", "kg m-2 s-1")):
            v = ds.createVariable(name, "f4", ("time", "lat", "lon"), zlib=True, complevel=4,
                                  chunksizes=(days, LAT, LON))
            v.units = units
            v[:] = np.round(rng.normal(280.0, 5.0, (days, LAT, LON)), 1).astype("f4")
    os.replace(tmp, path)
    with open(path, "rb") as f:
        scanned = SingleHdf5ToZarr(f, url=str(path), inline_threshold=0).translate()
    tmp_refs = refs.with_name(refs.name + f".tmp{os.getpid()}")
    tmp_refs.write_text(json.dumps(scanned))
    os.replace(tmp_refs, refs)


def make_inputs(root: Path, n: int) -> list[Path]:
    """The kerchunk scans (JSON) of the N inputs (files made once, in a pool of 2 processes)."""
    folder = root / f"n{n}"
    folder.mkdir(parents=True, exist_ok=True)
    starts = np.concatenate([[0], np.cumsum([_days(i) for i in range(n)])[:-1]])
    todo = [(folder, i, int(starts[i])) for i in range(n) if not (folder / f"f{i:05d}.json").exists()]
    if todo:
        print(f"  writing and scanning {len(todo)} inputs in {folder}", flush=True)
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_make_one, todo, chunksize=16))
    return [folder / f"f{i:05d}.json" for i in range(n)]


def build(root: Path, n: int, rebuild: bool, label: str, kinds: tuple[str, ...]) -> dict[str, tuple[Path, float]]:
    """``{kind: (manifest path, seconds to build it)}`` for the N inputs (built once per ``label``)."""
    refs = make_inputs(root, n)
    folder = refs[0].parent / label
    folder.mkdir(exist_ok=True)
    built: dict[str, tuple[Path, float]] = {}
    times_file = folder / "build_times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() and not rebuild else {}
    for kind in kinds:
        out = folder / FILES[kind]
        if rebuild or not out.exists() or kind not in times:
            print(f"  building {kind}", flush=True)
            # in a fresh process: what one build leaves open (combine keeps every input's store, and
            # its files, open) does not count against the next
            times[kind] = _spawn("--build", kind, str(out), str(n))["s"]
            times_file.write_text(json.dumps(times))
        built[kind] = (out, times[kind])
    return built


def build_one(kind: str, out: str, n: int) -> dict[str, float]:
    """Build the manifest ``kind`` of the N inputs at ``out``; its time."""
    refs = [Path(out).parent.parent / f"f{i:05d}.json" for i in range(n)]
    t0 = time.perf_counter()
    if kind == MZZ:
        from kerchunk.combine import MultiZarrToZarr

        loaded = [json.loads(p.read_text()) for p in refs]
        mzz = MultiZarrToZarr(loaded, concat_dims=["time"], identical_dims=["lat", "lon"]).translate()
        Path(out).write_text(json.dumps(mzz))
    else:
        from refstore.virtual._combine import combine

        combine([str(p) for p in refs], "time", out, layout="virtual" if kind == VIRTUAL else "auto", progress=False)
    return {"s": time.perf_counter() - t0}


# ------------------------------------------------------------------ measured in a fresh process
def _store(kind: str, path: str) -> Any:
    if kind == MZZ:
        from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS
        from zarr.storage import FsspecStore

        fs = FsspecRFS(fo=path, remote_protocol="file", remote_options={"asynchronous": True}, asynchronous=True)
        return FsspecStore(fs, read_only=True)
    import refstore

    return refstore.ReferenceStore(path)


def worker(kind: str, action: str, path: str, check: str) -> dict[str, float]:
    """Time ``action`` (``open``, ``xr`` or ``read``) of the manifest at ``path`` in this fresh process."""
    import warnings

    import fsspec.implementations.reference  # noqa: F401 - imports before the clock
    import zarr

    import refstore  # noqa: F401

    warnings.filterwarnings("ignore")
    if action == "xr":
        import xarray as xr

        t0 = time.perf_counter()
        ds = xr.open_zarr(_store(kind, path), consolidated=False, decode_times=False)
        return {"s": time.perf_counter() - t0, "ntime": float(ds.sizes["time"])}
    t0 = time.perf_counter()
    group = zarr.open_group(_store(kind, path), mode="r")
    members = dict(group.members())
    opened = time.perf_counter() - t0
    if action == "open":
        return {"s": opened, "arrays": float(len(members))}
    t0 = time.perf_counter()
    first = np.asarray(members["tas"][0])
    read = time.perf_counter() - t0
    if check:
        import h5py

        with h5py.File(check, "r") as f:
            if not np.array_equal(first, f["tas"][0]):
                raise AssertionError(f"{kind}: tas[0] differs from h5py's")
    return {"s": read, "open": opened}


def _spawn(*args: str) -> dict[str, float]:
    """``python -m benchmarks.virtual_size ARGS`` in a fresh process; its RESULT line."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.virtual_size", *args],
                          capture_output=True, text=True, cwd=root, env=env, timeout=3600, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise RuntimeError(f"{args}: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")


def measure(ns: list[int], repeat: int, rebuild: bool, label: str, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per (N, kind): bytes, bytes per input, build time and the medians of the fresh-process timings."""
    root = default_cache_dir() / "virtual_size"
    rows = []
    for n in ns:
        print(f"N = {n}", flush=True)
        built = build(root, n, rebuild, label, kinds)
        first_nc = str(root / f"n{n}" / "f00000.nc")
        for kind, (path, build_s) in built.items():
            timings: dict[str, list[float]] = {"open": [], "xr": [], "read": []}
            for _ in range(repeat):  # interleaved: each repeat runs every action once
                for action in timings:
                    timings[action].append(_spawn("--worker", kind, action, str(path), first_nc if kind != MZZ else "")["s"])
            size = path.stat().st_size
            row = {"N": n, "kind": kind, "label": label, "bytes": size, "bytes/input": size / n, "build s": build_s,
                   **{f"{a} s": statistics.median(v) for a, v in timings.items()},
                   "raw": timings}
            print(f"  {kind}: {size:,} B, open {row['open s']:.3f} s, xr {row['xr s']:.3f} s, "
                  f"read {row['read s']:.3f} s", flush=True)
            rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`measure`'s rows."""
    head = "| N | manifest | refstore | bytes | bytes/input | build s | open s | xr.open_zarr s | first read s |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['N']:,} | {r['kind']} | {r.get('label', '')} | {r['bytes']:,} | {r['bytes/input']:,.0f} | {r['build s']:.1f} | "
                     f"{r['open s']:.3f} | {r['xr s']:.3f} | {r['read s']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    """Command line (see the module docstring)."""
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, action, path, check = sys.argv[2:6]
        print("RESULT " + json.dumps(worker(kind, action, path, check)), flush=True)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--build":
        kind, out, n = sys.argv[2:5]
        print("RESULT " + json.dumps(build_one(kind, out, int(n))), flush=True)
        return
    p = argparse.ArgumentParser(prog="python -m benchmarks.virtual_size", description=__doc__.split("\n")[0])
    p.add_argument("--n", default="100,1000,10000", help="comma-separated numbers of inputs")
    p.add_argument("--repeat", type=int, default=3, help="fresh processes per measurement (median)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the manifests (inputs are kept)")
    p.add_argument("--out", help="also write the rows as JSON here")
    p.add_argument("--label", default="current",
                   help="manifests are kept per label (e.g. the refstore version that built them)")
    p.add_argument("--kinds", default="virtual,combined,mzz",
                   help="which manifests: any of virtual (combine --layout virtual), combined (default), mzz")
    args = p.parse_args()
    names = {"virtual": VIRTUAL, "combined": COMBINED, "mzz": MZZ}
    kinds = tuple(names[k] for k in args.kinds.split(","))
    rows = measure([int(x) for x in args.n.split(",")], args.repeat, args.rebuild, args.label, kinds)
    print(format_rows(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
