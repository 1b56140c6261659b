"""Rendering of result rows as an aligned text table and as JSON."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from ._common import Config, Row, refstore_error

HEADERS = (
    "scenario",
    "refstore impl",
    "unit",
    "refstore",
    "fsspec",
    "limit",
    "limit is",
    "fsspec/refstore",
    "refstore/limit",
    "requests r/f/l",
)
_RIGHT = {3, 4, 5, 7, 8}


def _num(value: float | None, unit: str = "") -> str:
    """Compact number, ``n/a`` for missing."""
    if value is None:
        return "n/a"
    if unit == "s" and value < 10:
        return f"{value:.4f}"
    if abs(value) >= 1000 or unit == "bytes":
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _ratio(value: float | None) -> str:
    """A ratio such as ``12.3x``."""
    return "n/a" if value is None else f"{value:.3g}x"


def row_cells(row: Row) -> list[str]:
    """The table cells of one row."""
    return [
        row.scenario,
        row.variant,
        row.unit,
        _num(row.refstore, row.unit),
        _num(row.fsspec, row.unit),
        _num(row.limit, row.unit) if row.limit_name else "",
        row.limit_name,
        _ratio(row.fsspec_over_refstore),
        _ratio(row.refstore_over_limit) if row.limit_name else "",
        row.requests,
    ]


def format_table(rows: list[Row]) -> str:
    """Aligned plain-text table with a legend."""
    cells = [list(HEADERS)] + [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]

    def line(c: list[str]) -> str:
        out = [v.rjust(w) if i in _RIGHT else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths))]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    body = [line(cells[0]), sep]
    prev = None
    for row, c in zip(rows, cells[1:]):
        group = row.group or row.scenario
        if prev is not None and group != prev:
            body.append("")
        prev = group
        body.append(line(c))
    notes = [f"  {r.scenario} / {r.variant}: {r.note}" for r in rows if r.note]
    legend = [
        "",
        "Times are medians over repeats (seconds); s = wall time of building the store/fs,",
        "opening the array and reading it all (contiguous_*), or of opening the references (open_json).",
        "fsspec/refstore > 1 means refstore is faster; refstore/limit = 1 means refstore is at the limit.",
        "requests r/f/l = HTTP requests seen by the server for refstore / fsspec / limit (last repeat).",
        "zarr MemoryStore = the same chunks read through zarr from memory: zarr's per-chunk floor.",
        "open_json limit (ujson.load of the file) is a reference point, not a hard lower bound.",
        "peak = ru_maxrss - RSS after imports (fresh process); kept = RSS still held after the open.",
        "fsspec pickles only its constructor arguments (the path): unpickling re-reads the JSON.",
    ]
    err = refstore_error()
    if err:
        legend.append(f"refstore not importable: {err}")
    if notes:
        legend += ["", "Errors:"] + sorted(set(notes))
    return "\n".join(body + legend)


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with the results."""
    import fsspec
    import numpy
    import zarr

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "zarr": zarr.__version__,
        "fsspec": fsspec.__version__,
        "numpy": numpy.__version__,
        "zarr_async_concurrency": zarr.config.get("async.concurrency"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import refstore

        info["refstore"] = getattr(refstore, "__version__", "unknown")
    except Exception as exc:
        info["refstore"] = f"not importable: {type(exc).__name__}: {exc}"
    return info


def write_json(path: Path, rows: list[Row], cfg: Config, elapsed: float) -> None:
    """Write all rows (with raw timings), the configuration and environment."""
    cfg_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}
    doc = {
        "environment": environment(),
        "config": cfg_json,
        "elapsed_s": elapsed,
        "rows": [r.to_json() for r in rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str))
