"""Scenarios ``virtual_aligned`` and ``virtual_misaligned``: ``refstore combine`` of many netCDF4 files.

Each input is a netCDF4 file (written by netCDF4-python: ``tas(time, lat, lon)``
float32, zlib, chunked along time) described by kerchunk references. They are joined
along ``time`` three ways: ``refstore combine`` as it writes by default (flat kerchunk
references where chunks align, virtual arrays only where needed), ``refstore combine
--layout virtual`` (every concatenated variable a virtual array, chunks passed through
or assembled when read), and kerchunk's ``MultiZarrToZarr`` (MZZ). Each is read whole
(``tas``) through zarr, timed two ways: *open+read* (a fresh store, open the array,
read it) and *read* (the store and array opened untimed, then the read). Every read is
compared with the files' values read by h5py.

* ``virtual_aligned``: N files of 365 days, chunk 5 along time: every chunk is one
  source chunk, so the default output is flat (the same references as MZZ). Goal:
  each combined result within 1.1x of the MZZ manifest read by refstore; also read by
  fsspec's own ReferenceFileSystem.
* ``virtual_misaligned``: years of 365 and 366 days, chunk 10 along time: every chunk
  after the first leap year straddles files, so ``tas`` is a virtual array (assembled
  chunks). MZZ's manifest places such chunks wrongly (its read fails the check and is
  listed as an error); the limit is h5py plus ``numpy.concatenate``.
"""

from __future__ import annotations

import itertools
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
    import_refstore,
    median_cpu,
    run_interleaved,
)

COMBINED = "refstore combine"
VIRTUAL = "refstore combine --layout virtual"
MZZ_REF = "kerchunk MZZ via refstore"
MZZ_FSSPEC = "kerchunk MZZ via fsspec RFS"
H5PY = "h5py + np.concatenate"
MODES = ("open+read", "read")


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


def manifests(paths: list[Path]) -> dict[str, tuple[Path, str]]:
    """``{label: (manifest path, how tas is written)}`` of the files combined along ``time`` (made once)."""
    import json

    refstore = import_refstore()
    assert refstore is not None
    from refstore.virtual._combine import combine_with_layout

    folder = paths[0].parent
    out = {COMBINED: folder / "combined_v2.json", VIRTUAL: folder / "virtual_v2.json", MZZ_REF: folder / "mzz.json"}
    layouts = folder / "layouts_v2.json"
    if not layouts.exists():
        refs = [_kerchunk(p) for p in paths]
        _, auto = combine_with_layout(refs, "time", str(out[COMBINED]))
        combine_with_layout(refs, "time", str(out[VIRTUAL]), layout="virtual")
        from kerchunk.combine import MultiZarrToZarr

        mzz = MultiZarrToZarr(refs, concat_dims=["time"], identical_dims=["lat", "lon"]).translate()
        out[MZZ_REF].write_text(json.dumps(mzz))
        layouts.write_text(json.dumps({a.name: a.how for a in auto}))
    how = json.loads(layouts.read_text())["tas"]
    return {COMBINED: (out[COMBINED], f"tas: {how}"), VIRTUAL: (out[VIRTUAL], "tas: virtual"),
            MZZ_REF: (out[MZZ_REF], "tas: references"), MZZ_FSSPEC: (out[MZZ_REF], "tas: references")}


def _read_h5(paths: list[Path]) -> np.ndarray:
    import h5py

    parts = []
    for p in paths:
        with h5py.File(p, "r") as f:
            parts.append(f["tas"][()])
    return np.concatenate(parts)


def _opener(label: str, path: Path) -> Any:
    """A function opening ``tas`` of the manifest at ``path`` with a fresh store (refstore's or fsspec's)."""
    import zarr

    if label == MZZ_FSSPEC:
        from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS
        from zarr.storage import FsspecStore

        def open_fsspec() -> Any:
            fs = FsspecRFS(fo=str(path), remote_protocol="file", remote_options={"asynchronous": True},
                           asynchronous=True)
            return zarr.open_array(store=FsspecStore(fs, read_only=True), path="tas", mode="r")

        return open_fsspec
    refstore = import_refstore()
    assert refstore is not None

    def open_refstore() -> Any:
        return zarr.open_array(store=refstore.ReferenceStore(str(path)), path="tas", mode="r")

    return open_refstore


class _ReadAlone:
    """Times only the read: the array is opened (untimed) in ``before``."""

    def __init__(self, opener: Any) -> None:
        self.opener = opener
        self.array: Any = None

    def before(self) -> None:
        self.array = self.opener()

    def __call__(self) -> Any:
        return self.array[:]


def run(name: str, cfg: Config) -> list[Row]:
    """Run scenario ``name`` (``virtual_aligned`` or ``virtual_misaligned``) and return its rows."""
    s = sizes(name, cfg.quick)
    paths = make_files(cfg.cache_dir, s)
    expected = _read_h5(paths)
    check = array_checker(expected)
    h5 = CpuTimed(lambda: _read_h5(paths))
    jobs = [Job(H5PY, h5, check, cfg.repeat, after=h5.after)]
    written: dict[str, str] = {}
    if import_refstore() is not None:
        for label, (path, how) in manifests(paths).items():
            written[label] = how
            opener = _opener(label, path)
            alone = _ReadAlone(opener)
            both = CpuTimed(lambda opener=opener: opener()[:])
            read = CpuTimed(alone)
            jobs.append(Job(f"{label} | open+read", both, check, cfg.repeat, after=both.after))
            jobs.append(Job(f"{label} | read", read, check, cfg.repeat, before=alone.before, after=read.after))
    failed: dict[str, str] = {}
    for job in jobs:  # warm up: imports, zarr's loop, the OS page cache; untimed
        try:
            if job.before is not None:
                job.before()
            check(job.fn())
        except Exception as exc:  # MZZ's misplaced chunks: listed, not timed
            failed[job.label] = f"{type(exc).__name__}: {exc}"
    results = run_interleaved([j for j in jobs if j.label not in failed], cfg.verbose)
    for label, error in failed.items():
        results[label] = Timing(error=error)
    return _rows(name, s, results, written)


def _rows(name: str, s: Sizes, results: dict[str, Timing], written: dict[str, str]) -> list[Row]:
    """Table rows per mode: each combined result against MZZ read by refstore (the flat manifest of the
    same chunks; goal <= 1.1x) when MZZ reads right, else against h5py."""
    notes = [f"{label}: {t.error}" for label, t in results.items() if t.error]
    rows = []
    for unit, mode in itertools.product(("s", "cpu s"), MODES):
        def med(label: str, mode: str = mode, unit: str = unit) -> float | None:
            t = results.get(label if label == H5PY else f"{label} | {mode}")
            if t is None:
                return None
            return t.median if unit == "s" else median_cpu(t)

        flat = med(MZZ_REF)
        for label in (COMBINED, VIRTUAL, MZZ_REF):
            if label not in written:
                continue
            variant = f"{label} ({written[label]}), {mode}"
            group = f"{name} {unit} {mode}"
            if flat is not None and label != MZZ_REF:
                rows.append(Row(name, variant, unit, refstore=med(label), fsspec=med(MZZ_FSSPEC), limit=flat,
                                limit_name="kerchunk MZZ via refstore (goal <= 1.1x)", group=group))
            else:
                rows.append(Row(name, variant, unit, refstore=med(label), fsspec=med(MZZ_FSSPEC), limit=med(H5PY),
                                limit_name=H5PY, group=group))
    if rows:
        rows[0].note = "; ".join(notes)
        rows[0].raw = {
            "files": len(s.days), "days": list(s.days), "grid": [s.lat, s.lon], "time_chunk": s.chunk,
            "virtual_chunks": -(-sum(s.days) // s.chunk), "source_chunks": sum(-(-d // s.chunk) for d in s.days),
            "written": written, "timings": {k: v.to_json() for k, v in results.items()},
        }
    return rows
