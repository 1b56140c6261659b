"""Scenarios ``virtual_aligned`` and ``virtual_misaligned``: virtual arrays over many netCDF4 files.

Each input is a netCDF4 file (written by netCDF4-python: ``tas(time, lat, lon)``
float32, zlib, chunked along time) described by kerchunk references; ``refstore
combine`` joins the files along ``time`` into one virtual manifest. Every
implementation opens its store, then the array ``tas`` through zarr, and reads it
whole; the result is compared with the files' values read by h5py.

* ``virtual_aligned``: N files of 365 days, chunk 5 along time, so every virtual
  chunk is one source chunk (passed through as stored bytes). Compared with one flat
  kerchunk manifest of the same chunks read by refstore (the goal: the virtual
  manifest costs at most 1.1x) and by fsspec's own ReferenceFileSystem; limit: h5py
  reading every file plus ``numpy.concatenate``.
* ``virtual_misaligned``: years of 365 and 366 days, chunk 10 along time: every
  chunk after the first year straddles source chunks and is assembled (decoded,
  cropped, re-encoded). fsspec cannot read it (n/a). Limit: h5py plus
  ``numpy.concatenate``.
"""

from __future__ import annotations

import os
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
    fsspec_reader,
    import_refstore,
    refstore_reader,
    run_interleaved,
)

FSSPEC = "fsspec RFS + FsspecStore (flat)"
REF_VIRTUAL = "refstore.ReferenceStore (virtual)"
REF_FLAT = "refstore.ReferenceStore (flat)"
H5PY = "h5py + np.concatenate"


@dataclass(frozen=True)
class Sizes:
    """The inputs of one scenario: days per file, grid, time chunk."""

    days: tuple[int, ...]
    lat: int
    lon: int
    chunk: int

    @property
    def tag(self) -> str:
        """A folder name that changes whenever the inputs would."""
        years = "-".join(f"{d}x{n}" for d, n in sorted({d: self.days.count(d) for d in self.days}.items()))
        return f"v1_{years}_{len(self.days)}f_{self.lat}x{self.lon}_c{self.chunk}"


def sizes(name: str, quick: bool) -> Sizes:
    """The sizes of scenario ``name`` (small with ``--quick``)."""
    if name == "virtual_aligned":
        n = 4 if quick else 20
        return Sizes((365,) * n, 20 if quick else 50, 30 if quick else 60, 5)
    n = 4 if quick else 10
    days = tuple(366 if (2001 + i) % 4 == 0 else 365 for i in range(n))  # 2004 and 2008 are leap years
    return Sizes(days, 20 if quick else 50, 30 if quick else 60, 10)


def _values(i: int, days: int, lat: int, lon: int) -> np.ndarray:
    """Smooth values plus a little noise (compressible, like a real field)."""
    t = np.arange(days, dtype="f8")[:, None, None]
    y = np.arange(lat, dtype="f8")[None, :, None]
    x = np.arange(lon, dtype="f8")[None, None, :]
    noise = np.random.default_rng(i).standard_normal((days, lat, lon)) * 0.05
    return (280 + 10 * np.sin(t / 58 + i) + 0.1 * y - 0.05 * x + noise).astype("f4")


def make_files(cache_dir: Path, s: Sizes) -> list[Path]:
    """The netCDF4 files of ``s`` (made once, then reused)."""
    import netCDF4

    folder = cache_dir / "virtual" / s.tag
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, days in enumerate(s.days):
        path = folder / f"tas_{2001 + i}.nc"
        if not path.exists():
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            with netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
                ds.createDimension("time", days)
                ds.createDimension("lat", s.lat)
                ds.createDimension("lon", s.lon)
                for dim, values in (("lat", np.linspace(-60, 60, s.lat)), ("lon", np.linspace(0, 90, s.lon))):
                    ds.createVariable(dim, "f8", (dim,))[:] = values
                time = ds.createVariable("time", "f8", ("time",))
                time[:] = np.arange(days) + 365.25 * i
                time.units = "days since 2001-01-01"
                tas = ds.createVariable("tas", "f4", ("time", "lat", "lon"), zlib=True, complevel=4,
                                        chunksizes=(s.chunk, s.lat, s.lon))
                tas.units = "K"
                tas[:] = _values(i, days, s.lat, s.lon)
            os.replace(tmp, path)
        paths.append(path)
    return paths


def _kerchunk(path: Path) -> dict[str, Any]:
    from kerchunk.hdf import SingleHdf5ToZarr

    with open(path, "rb") as f:
        return SingleHdf5ToZarr(f, url=str(path), inline_threshold=0).translate()


def manifests(paths: list[Path], s: Sizes) -> tuple[Path, Path | None]:
    """The virtual manifest of the files combined along ``time``, and the flat one if every chunk aligns."""
    refstore = import_refstore()
    assert refstore is not None
    from refstore.virtual._combine import combine

    folder = paths[0].parent
    virtual, flat = folder / "virtual.json", folder / "flat.json"
    if not virtual.exists():
        refs = [_kerchunk(p) for p in paths]
        combine(refs, "time", str(virtual))
        if all(d % s.chunk == 0 for d in s.days[:-1]):
            combine(refs, "time", str(flat), flatten=True)
    return virtual, (flat if flat.exists() else None)


def _read_h5(paths: list[Path]) -> np.ndarray:
    import h5py

    parts = []
    for p in paths:
        with h5py.File(p, "r") as f:
            parts.append(f["tas"][()])
    return np.concatenate(parts)


def run(name: str, cfg: Config) -> list[Row]:
    """Run scenario ``name`` (``virtual_aligned`` or ``virtual_misaligned``) and return its rows."""
    s = sizes(name, cfg.quick)
    paths = make_files(cfg.cache_dir, s)
    expected = _read_h5(paths)
    check = array_checker(expected)
    fns = {H5PY: CpuTimed(lambda: _read_h5(paths))}
    if import_refstore() is not None:
        virtual, flat = manifests(paths, s)
        fns[REF_VIRTUAL] = CpuTimed(refstore_reader(str(virtual), "tas"))
        if flat is not None:
            fns[REF_FLAT] = CpuTimed(refstore_reader(str(flat), "tas"))
            fns[FSSPEC] = CpuTimed(fsspec_reader(str(flat), "tas"))
    for fn in fns.values():  # warm up: imports, zarr's loop, the OS page cache; untimed
        check(fn())
    results = run_interleaved([Job(label, fn, check, cfg.repeat) for label, fn in fns.items()], cfg.verbose)
    for label, fn in fns.items():
        results[label].extra["cpu_times"] = fn.times[1:]
    return _rows(name, s, results, {label: fn.median for label, fn in fns.items()})


def _rows(name: str, s: Sizes, results: dict[str, Timing], cpu: dict[str, float | None]) -> list[Row]:
    """Table rows, wall time then CPU time: the virtual read against the flat manifest
    (aligned only) and against h5py."""
    notes = [f"{label}: {t.error}" for label, t in results.items() if t.error]
    if FSSPEC not in results:
        notes.append("fsspec cannot read a virtual manifest (no flat one exists when chunks straddle files)")
    variant = f"{REF_VIRTUAL}, {'pass-through' if REF_FLAT in results else 'assembled'}"
    rows = []
    for unit, values in (("s", {k: t.median for k, t in results.items()}), ("cpu s", cpu)):
        common = {"unit": unit, "refstore": values.get(REF_VIRTUAL), "fsspec": values.get(FSSPEC)}
        if REF_FLAT in results:
            rows.append(Row(name, variant, limit=values[REF_FLAT], limit_name="refstore, flat manifest (goal <= 1.1x)",
                            **common))
        rows.append(Row(name, variant, limit=values[H5PY], limit_name=H5PY, **common))
    rows[0].note = "; ".join(notes)
    rows[0].raw = {
        "files": len(s.days), "days": list(s.days), "grid": [s.lat, s.lon], "time_chunk": s.chunk,
        "virtual_chunks": -(-sum(s.days) // s.chunk), "source_chunks": sum(-(-d // s.chunk) for d in s.days),
        "timings": {k: v.to_json() for k, v in results.items()},
    }
    return rows
