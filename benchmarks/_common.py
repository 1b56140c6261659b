"""Shared helpers: configuration, result rows, timing and the refstore import."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


@dataclass
class Config:
    """Options shared by all scenarios (built from the command line)."""

    quick: bool = False
    repeat: int = 5
    slow_repeat: int = 1
    n_refs: int = 1_000_000
    n_chunks: int = 4096
    chunk_size: int = 8192
    cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    servers_in_process: bool = False
    verbose: bool = True


def default_cache_dir() -> Path:
    """Directory for generated inputs, reused between runs."""
    env = os.environ.get("REFSTORE_BENCH_CACHE")
    base = Path(env) if env else Path(tempfile.gettempdir()) / "refstore-bench-cache"
    base.mkdir(parents=True, exist_ok=True)
    return base


@dataclass
class Row:
    """One line of the result table; times in seconds, sizes in the named unit.

    ``refstore``/``fsspec``/``limit`` hold the median of the repeats (or a
    single measured quantity such as MiB); ``None`` means not available.
    ``raw`` holds all per-repeat measurements and any extra information.
    """

    scenario: str
    variant: str
    unit: str = "s"
    refstore: float | None = None
    fsspec: float | None = None
    limit: float | None = None
    limit_name: str = ""
    requests: str = ""
    note: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    group: str = ""

    @property
    def fsspec_over_refstore(self) -> float | None:
        """Speed-up of refstore over fsspec (higher is better for refstore)."""
        if self.refstore and self.fsspec is not None:
            return self.fsspec / self.refstore
        return None

    @property
    def refstore_over_limit(self) -> float | None:
        """How far refstore is from the limit (1.0 means at the limit)."""
        if self.refstore is not None and self.limit:
            return self.refstore / self.limit
        return None

    def to_json(self) -> dict[str, Any]:
        """Serialisable form including the derived ratios."""
        out = asdict(self)
        out["ratio_fsspec_over_refstore"] = self.fsspec_over_refstore
        out["ratio_refstore_over_limit"] = self.refstore_over_limit
        return out


_REFSTORE: ModuleType | None = None
_REFSTORE_ERROR: str | None = None
_REFSTORE_TRIED = False


def import_refstore() -> ModuleType | None:
    """Import refstore once; return ``None`` (and remember why) if it fails."""
    global _REFSTORE, _REFSTORE_ERROR, _REFSTORE_TRIED
    if not _REFSTORE_TRIED:
        _REFSTORE_TRIED = True
        try:
            import refstore

            _REFSTORE = refstore
        except Exception as exc:
            _REFSTORE_ERROR = f"{type(exc).__name__}: {exc}"
    return _REFSTORE


def refstore_error() -> str | None:
    """Why ``import refstore`` failed, if it did."""
    import_refstore()
    return _REFSTORE_ERROR


def _all_fs_classes() -> list[type]:
    """Every imported AbstractFileSystem subclass (helper for cache clearing)."""
    from fsspec.spec import AbstractFileSystem

    out: list[type] = []
    stack: list[type] = [AbstractFileSystem]
    while stack:
        cls = stack.pop()
        out.append(cls)
        stack.extend(cls.__subclasses__())
    return out


def reset_caches() -> None:
    """Clear instance caches of all fsspec filesystem classes and collect garbage."""
    for cls in _all_fs_classes():
        clear = getattr(cls, "clear_instance_cache", None)
        if clear is not None:
            try:
                clear()
            except Exception:
                pass
    gc.collect()


@dataclass
class Timing:
    """Outcome of running one implementation several times."""

    times: list[float] = field(default_factory=list)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        """Median of the recorded times, or ``None`` if none succeeded."""
        return statistics.median(self.times) if self.times else None

    def to_json(self) -> dict[str, Any]:
        """Serialisable form."""
        return {"times": self.times, "median": self.median, "error": self.error, **self.extra}


@dataclass
class Job:
    """One implementation to time: ``fn`` does the work, ``check`` verifies it.

    ``check`` is called (untimed) on every result of ``fn`` and must raise if
    it is wrong, so a fast wrong answer cannot produce a number.  ``before``
    and ``after`` run untimed around each call (e.g. to reset and read
    request counters); what ``after`` returns is stored per repeat.
    """

    label: str
    fn: Callable[[], Any]
    check: Callable[[Any], None] | None = None
    repeat: int = 1
    before: Callable[[], None] | None = None
    after: Callable[[], Any] | None = None


def run_interleaved(jobs: list[Job], verbose: bool = True) -> dict[str, Timing]:
    """Time every job ``job.repeat`` times, interleaving the jobs round by round.

    Interleaving spreads slow drifts of a noisy machine over all
    implementations.  Caches are reset before every call.  An exception ends
    that job's series (stored as its error) without stopping the others.
    """
    results = {job.label: Timing() for job in jobs}
    rounds = max((job.repeat for job in jobs), default=0)
    for r in range(rounds):
        for job in jobs:
            res = results[job.label]
            if r >= job.repeat or res.error is not None:
                continue
            reset_caches()
            try:
                if job.before is not None:
                    job.before()
                t0 = time.perf_counter()
                value = job.fn()
                dt = time.perf_counter() - t0
                if job.check is not None:
                    job.check(value)
                del value
                if job.after is not None:
                    res.extra.setdefault("after", []).append(job.after())
            except Exception as exc:
                res.error = f"{type(exc).__name__}: {exc}"
                if verbose:
                    print(f"    {job.label}: FAILED ({res.error})", flush=True)
                    if os.environ.get("REFSTORE_BENCH_TRACEBACK"):
                        traceback.print_exc()
                continue
            res.times.append(dt)
            if verbose:
                print(f"    {job.label} [{r + 1}/{job.repeat}]: {dt:.4f} s", flush=True)
    return results


def refstore_reader(refs: Any, path: str | None = None) -> Callable[[], Any]:
    """Read the array at *path* whole through zarr and a fresh ``refstore.ReferenceStore``."""
    import zarr

    refstore = import_refstore()
    assert refstore is not None

    def run() -> Any:
        store = refstore.ReferenceStore(refs)
        try:
            return zarr.open_array(store=store, path=path, mode="r")[:] if path else zarr.open_array(
                store=store, mode="r"
            )[:]
        finally:
            store.close()

    return run


def fsspec_reader(refs: Any, path: str | None = None) -> Callable[[], Any]:
    """Read it through zarr's FsspecStore over fsspec's own asynchronous ReferenceFileSystem."""
    import zarr
    from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS
    from zarr.storage import FsspecStore

    def run() -> Any:
        fs = FsspecRFS(fo=refs, remote_protocol="file", remote_options={"asynchronous": True}, asynchronous=True)
        store = FsspecStore(fs, read_only=True)
        return zarr.open_array(store=store, path=path, mode="r")[:] if path else zarr.open_array(
            store=store, mode="r"
        )[:]

    return run


class CpuTimed:
    """Wraps a job's function to record the process CPU time (all threads) of each call.

    CPU time is steadier than wall time on a shared machine, and shows work that
    threads hide (decoding runs in zarr's thread pool).
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.times: list[float] = []

    def __call__(self) -> Any:
        t0 = time.process_time()
        try:
            return self.fn()
        finally:
            self.times.append(time.process_time() - t0)

    def after(self) -> float | None:
        """CPU seconds of the last call (a ``Job`` ``after`` hook)."""
        return self.times[-1] if self.times else None

    @property
    def median(self) -> float | None:
        """Median CPU seconds of the timed calls (the warm-up call excluded)."""
        return statistics.median(self.times[1:]) if len(self.times) > 1 else None


def array_checker(expected: Any) -> Callable[[Any], None]:
    """A check that raises unless a read (an array, or bytes) equals *expected* exactly."""
    import numpy as np

    def check(value: Any) -> None:
        arr = np.frombuffer(value, dtype=np.uint8) if isinstance(value, bytes) else np.asarray(value)
        if arr.shape != expected.shape or arr.dtype != expected.dtype:
            raise AssertionError(f"read returned {arr.shape} {arr.dtype}, expected {expected.shape} {expected.dtype}")
        if not np.array_equal(arr, expected):
            bad = int(np.count_nonzero(arr != expected))
            raise AssertionError(f"read returned wrong data ({bad} of {expected.size} values differ)")

    return check


# ---------------------------------------------------------------- CPU summaries
def median_cpu(t: Timing | None) -> float | None:
    """Median process CPU seconds over the repeats of a job timed with a ``CpuTimed`` ``after`` hook."""
    vals = [v for v in (t.extra.get("after", []) if t else []) if v is not None]
    return statistics.median(vals) if vals else None


def median_cores(t: Timing | None) -> float | None:
    """Median over the repeats of CPU time / wall time (cores kept busy)."""
    if t is None:
        return None
    cpus = t.extra.get("after", [])
    vals = [c / w for c, w in zip(cpus, t.times) if c is not None and w]
    return statistics.median(vals) if vals else None


def cpu_summary(results: dict[str, Timing], limit: str) -> list[dict[str, Any]]:
    """One entry per implementation: median wall and CPU seconds, CPU/wall, and ratio to *limit*."""
    lim = results[limit].median
    return [
        {
            "impl": label,
            "wall_s": t.median,
            "cpu_s": median_cpu(t),
            "cpu_per_wall": median_cores(t),
            "over_limit": t.median / lim if t.median is not None and lim else None,
            "error": t.error,
        }
        for label, t in results.items()
    ]


def format_cpu_summary(summary: list[dict[str, Any]]) -> str:
    """Aligned lines of a :func:`cpu_summary`: implementation, s, CPU s, CPU/wall, x limit."""
    width = max(len(s["impl"]) for s in summary)
    lines = [f"  {'implementation'.ljust(width)}  {'s':>7}  {'cpu s':>7}  {'cpu/s':>5}  {'x limit':>7}"]

    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    for s in summary:
        lines.append(
            f"  {s['impl'].ljust(width)}  {num(s['wall_s'], '7.3f')}  {num(s['cpu_s'], '7.3f')}  "
            f"{num(s['cpu_per_wall'], '5.2f')}  {num(s['over_limit'], '6.2f')}x"
            + (f"  FAILED: {s['error']}" if s["error"] else "")
        )
    return "\n".join(lines)


def main(run: Callable[[str, Config], list[Row]], names: Iterable[str]) -> None:
    """``python -m benchmarks.<module> [--quick] [NAME ...]``: run a module's scenarios and print the table."""
    import sys
    import warnings

    from .report import format_table

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    quick = "--quick" in sys.argv
    cfg = Config(quick=quick, repeat=3 if quick else 5)
    chosen = [a for a in sys.argv[1:] if a in names] or list(names)
    print(format_table([r for n in chosen for r in run(n, cfg)]))


# ------------------------------------------------------------ fresh-process workers
def worker_main(worker: Callable[[str, str, str, int], dict[str, Any]]) -> None:
    """Body of a worker subprocess ``python -m benchmarks.<module> IMPL ACTION PATH N``.

    Prints ``RESULT {json}`` of ``worker(IMPL, ACTION, PATH, N)``, which
    :func:`measure_in_workers` reads back.
    """
    impl, action, path, n = sys.argv[1:5]
    print("RESULT " + json.dumps(worker(impl, action, path, int(n))), flush=True)


def _spawn_worker(module: str, args: list[str], timeout: float, env: dict[str, str] | None) -> dict[str, Any]:
    """Run one worker subprocess and parse its result, or return ``{"error": last stderr line}``."""
    root = Path(__file__).resolve().parent.parent
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), full_env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=root,
                          env=full_env, timeout=timeout, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": tail}


def measure_in_workers(
    module: str,
    impl: str,
    action: str,
    path: Path,
    n_refs: int,
    repeat: int,
    *,
    describe: Callable[[dict[str, Any]], str],
    verbose: bool,
    timeout: float,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run *repeat* fresh worker processes of *module* (see :func:`worker_main`).

    Returns
    -------
    dict
        ``{"median": {field: median}, "runs": [...]}`` over the numeric fields of
        the runs, or ``{"error": ..., "runs": [...]}`` at the first failed run.
        With *verbose*, each run is printed as ``describe(result)``.
    """
    runs: list[dict[str, Any]] = []
    for i in range(repeat):
        res = _spawn_worker(module, [impl, action, str(path), str(n_refs)], timeout, env)
        if "error" in res:
            if verbose:
                print(f"    {impl} {action}: FAILED ({res['error']})", flush=True)
            return {"error": res["error"], "runs": runs}
        runs.append(res)
        if verbose:
            print(f"    {impl} {action} [{i + 1}/{repeat}]: {describe(res)}", flush=True)
    return {"median": {k: statistics.median(r[k] for r in runs) for k in runs[0]}, "runs": runs}
