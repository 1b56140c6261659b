"""Combine many inputs in parallel: per-input scans and a tree-reduced ``combine`` on a process
pool or a dask cluster, with every failed input collected and reported.

The work runs in three steps:

1. **scan**, one task per input: a netCDF/HDF5 file is scanned (kerchunk or VirtualiZarr),
   a TIFF with refstore's own builder; every input is opened as zarr and, when inputs are
   ordered by coordinate, its ``concat_dim`` coordinate is read and checked monotonic.
   The task keeps the compact kerchunk references in the worker and sends back only the
   coordinate's first and last values. A failed input is recorded with its cause.
2. **order**: this process orders the inputs by those values and checks that none overlap,
   with the same rules and messages as :func:`refstore.combine`.
3. **reduce**: runs of ``fan_in`` consecutive inputs are combined into one manifest per
   run in the workers (kerchunk references, the concatenated coordinate inlined, as
   ``combine`` writes them), then runs of those, until at most ``fan_in`` remain; this
   process combines the last ones with the caller's options and writes the result. No
   task holds more than ``fan_in`` inputs' references. When a run cannot be written as
   plain references (chunks that do not fall on input boundaries), or the options do not
   compose run by run (``layout="virtual"``, ``combine_attrs="drop_conflicts"``), every
   input is combined at once in this process instead, as :func:`refstore.combine` would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refstore.build._executors import make_executor
from refstore.build._scan import ProgressBar, ProgressMode
from refstore.errors import CombineError, InputsFailed, NotRepresentable

#: Signatures of the TIFF files scanned with refstore's own builder (classic and BigTIFF).
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
TIFF_SUFFIXES = (".tif", ".tiff")
#: The default number of inputs (or partial results) each reduction task combines.
DEFAULT_FAN_IN = 32


@dataclass(frozen=True)
class Failure:
    """An input that could not be scanned or opened: its label and the cause (``Type: message``)."""

    label: str
    cause: str


@dataclass
class BuildReport:
    """What :func:`combine_parallel` built.

    Attributes
    ----------
    manifest
        The combined :class:`refstore.Manifest` (already written if ``out`` was given).
    layouts
        How each variable was written (:class:`refstore.virtual._layout.ArrayLayout`).
    failures
        The inputs left out, each with its cause (only with ``on_error="continue"``).
    inputs
        How many inputs were given (after expanding patterns and prefixes).
    tree
        Whether the combine ran as a tree in the workers; else ``why_not_tree`` says why.
    seconds
        Wall time.
    """

    manifest: Any
    layouts: list[Any]
    failures: list[Failure] = field(default_factory=list)
    inputs: int = 0
    tree: bool = True
    why_not_tree: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class _Spec:
    """What every task needs to know (pickled into each)."""

    concat_dim: str
    ordered: bool
    new_dim: bool
    combine_attrs: str
    inline_limit: int
    storage_options: Mapping[str, Any] | None
    scanner: str | None
    options: Mapping[str, Any]


@dataclass
class _Part:
    """Scanned input(s) as one combine input: references (or the input as given), the labels of
    its first and last input, and its coordinate's first and last values."""

    refs: Any
    first: str
    last: str
    coord: np.ndarray | None = None
    #: why it could not be written as plain references (then ``refs`` is None)
    unflat: str = ""

    @property
    def label(self) -> str:
        return self.first if self.first == self.last else f"{self.first} .. {self.last}"


def kind_of(fo: Any) -> str:
    """:func:`refstore.virtual._inputs.kind_of`, and ``"tiff"`` for TIFF files (by signature, or by
    suffix for URLs)."""
    from refstore.virtual._inputs import kind_of as combine_kind_of

    if isinstance(fo, (str, os.PathLike)):
        path = os.fspath(fo)
        if "://" in path and not path.startswith("file://"):
            if path.split("?", 1)[0].lower().endswith(TIFF_SUFFIXES):
                return "tiff"
        elif os.path.isfile(path.removeprefix("file://")):
            with open(path.removeprefix("file://"), "rb") as f:
                if f.read(4) in _TIFF_MAGIC:
                    return "tiff"
    return combine_kind_of(fo)


def expand_inputs(inputs: Any, storage_options: Mapping[str, Any] | None = None) -> list[Any]:
    """The inputs ``inputs`` names, in order: each glob pattern (``"data/*.nc"``,
    ``"s3://bucket/run/*.nc"``) by its sorted matches, each folder or prefix that is no zarr
    store nor parquet manifest (``"s3://bucket/run/"``) by the netCDF/HDF5/TIFF files under
    it, sorted; anything else as it is.

    Raises
    ------
    refstore.errors.CombineError
        If a pattern or prefix names no file.
    """
    from refstore.virtual._inputs import SCANNED_SUFFIXES, expand_pattern

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    out: list[Any] = []
    for fo in inputs:
        if not isinstance(fo, (str, os.PathLike)):
            out.append(fo)
            continue
        path = os.fspath(fo)
        if any(c in path for c in "*?["):
            out += expand_pattern(path, storage_options)
            continue
        listed = _files_under(path, storage_options, (*SCANNED_SUFFIXES, *TIFF_SUFFIXES))
        out += [path] if listed is None else listed
    return out


def _files_under(path: str, storage_options: Mapping[str, Any] | None, suffixes: tuple[str, ...]) -> list[str] | None:
    """The files with ``suffixes`` under folder or prefix ``path``, or None if ``path`` is no such
    folder (a file, a zarr store, a parquet manifest)."""
    import fsspec

    remote = "://" in path and not path.startswith("file://")
    if not remote and not os.path.isdir(path.removeprefix("file://")):
        return None
    if remote and not path.endswith("/"):
        return None
    fs, root = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
    if any(fs.exists(f"{root.rstrip('/')}/{m}") for m in ("zarr.json", ".zgroup", ".zarray", ".zmetadata")):
        return None
    found = sorted(p for p in fs.find(root) if p.lower().endswith(suffixes))
    if not found:
        raise CombineError(f"combine: no netCDF, HDF5 or TIFF file under {path!r}")
    return [fs.unstrip_protocol(p) if remote else p for p in found]


def _label(fo: Any, index: int) -> str:
    from refstore.virtual._inputs import label_of

    return label_of(fo, index)


_frozen = False


def _freeze_heap() -> None:
    """Move what this process holds so far (imported modules, mostly) out of the collector's sight.

    Each kerchunk scan runs a full ``gc.collect()`` first (h5py garbage freed on zarr's
    thread would deadlock); in a worker that has imported xarray, dask and zarr that is
    0.1-0.4 s per file, longer than the scan. Frozen once after the first scan's imports,
    later collections look only at what scans make.
    """
    import gc

    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


def _scan(fo: Any, label: str, spec: _Spec) -> _Part:
    """Task: scan one input, open it, read its coordinate (see the module docstring)."""
    from refstore.virtual._combine import coordinate_of
    from refstore.virtual._inputs import open_inputs, scan_file

    _freeze_heap()

    kind = kind_of(fo)
    refs: Any = fo
    if kind in ("hdf5", "netcdf3"):
        refs = scan_file(fo, kind, spec.storage_options, scanner=spec.scanner)
    elif kind == "tiff":
        from refstore.build._tiff import tiff

        path = os.fspath(fo)
        local = "://" not in path or path.startswith("file://")
        refs = tiff(os.path.abspath(path.removeprefix("file://")) if local else path,
                    storage_options=dict(spec.storage_options or {})).to_dict()
    (inp,) = open_inputs([refs], spec.options, storage_options=spec.storage_options, show_progress=False,
                         labels=[label])
    coord = None
    if spec.ordered:
        values = coordinate_of(inp.group, label, spec.concat_dim)
        coord = values[[0, -1]] if len(values) > 1 else values
    return _Part(refs, label, label, coord)


def _coord_of(part: _Part) -> np.ndarray | None:
    """Task: the little a scan sends back to the client."""
    return part.coord


def _unflat_of(part: _Part) -> str:
    return part.unflat


def _reduce(parts: list[_Part], spec: _Spec, first_level: bool) -> _Part:
    """Task: combine ``parts`` (in order) into one, as plain kerchunk references."""
    from refstore.virtual._combine import combine_with_layout

    labels = [p.label for p in parts]
    try:
        manifest, _ = combine_with_layout(
            [p.refs for p in parts], spec.concat_dim, None, new_dim=spec.new_dim and first_level, keep_order=True,
            combine_attrs=spec.combine_attrs, layout="kerchunk", inline_limit=spec.inline_limit,
            storage_options=spec.storage_options, progress=False, scanner=spec.scanner, labels=labels,
            **spec.options,
        )
    except NotRepresentable as exc:
        return _Part(None, parts[0].first, parts[-1].last, unflat=str(exc))
    coord = None
    head, tail = parts[0].coord, parts[-1].coord
    if head is not None and tail is not None:
        coord = np.concatenate([head[:1], tail[-1:]])
    return _Part(manifest.to_dict(), parts[0].first, parts[-1].last, coord)


def combine_parallel(
    inputs: Any,
    concat_dim: str,
    out: str | None = None,
    *,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    on_error: str = "raise",
    fan_in: int = DEFAULT_FAN_IN,
    new_dim: bool = False,
    keep_order: bool = False,
    combine_attrs: str = "override",
    layout: str = "auto",
    inline_limit: int | None = None,
    zarr_format: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    scanner: str | None = None,
    show_progress: ProgressMode = True,
    **options: Any,
) -> BuildReport:
    """:func:`refstore.combine` of many inputs, scanned and combined in parallel.

    The result is the one :func:`refstore.combine` gives for the inputs that opened (see
    the module docstring for how the work is split).

    Parameters
    ----------
    inputs
        A glob pattern, a folder or object-store prefix ending in ``/`` (its netCDF, HDF5
        and TIFF files), or a list of inputs (any of those, or what :func:`refstore.combine`
        takes: manifests, zarr stores, netCDF/HDF5/TIFF files, local or by URL). See
        :func:`expand_inputs`.
    concat_dim, out, new_dim, keep_order, combine_attrs, layout, inline_limit, zarr_format, storage_options, scanner
        As for :func:`refstore.combine`.
    client
        A ``distributed.Client``: tasks run on its cluster (workers need refstore, and the
        scanner, installed, and must reach the inputs).
    scheduler
        A dask scheduler address (``"tcp://10.0.0.5:8786"``) to connect a client to, used
        and closed here.
    workers
        Without ``client`` or ``scheduler``: processes in the local pool (default: one per
        core).
    on_error
        ``"raise"`` (the default): if any input cannot be scanned or opened, raise
        :class:`refstore.errors.InputsFailed` listing every such input with its cause, and
        write nothing. ``"continue"``: combine the others; the report lists the failures.
    fan_in
        Inputs (or partial results) per reduction task.
    show_progress
        Progress bars on stderr (see :data:`refstore.build._scan.ProgressMode`).
    **options
        :class:`refstore.ReferenceStore` options for reading the inputs; ``remote_options``
        defaults to ``storage_options`` (the scans' references point at the files read with them).

    Returns
    -------
    BuildReport

    Raises
    ------
    refstore.errors.InputsFailed
        Inputs failed and ``on_error="raise"``.
    refstore.errors.CombineError
        As :func:`refstore.combine` raises it (its subclasses name the inputs at fault).
    """
    from refstore.virtual._combine import COMBINE_ATTRS, order_by_coordinate
    from refstore.virtual._layout import DEFAULT_INLINE_LIMIT

    start = time.perf_counter()
    if on_error not in ("raise", "continue"):
        raise ValueError(f"on_error must be 'raise' or 'continue', got {on_error!r}")
    if combine_attrs not in COMBINE_ATTRS:
        raise ValueError(f"combine: combine_attrs must be one of {COMBINE_ATTRS}, got {combine_attrs!r}")
    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2, got {fan_in}")
    given = expand_inputs(inputs, storage_options)
    if not given:
        raise CombineError("combine: no inputs")
    labels = [_label(fo, k) for k, fo in enumerate(given)]
    if storage_options and "remote_options" not in options:
        options["remote_options"] = dict(storage_options)  # scans reference the files they were read from
    spec = _Spec(concat_dim, not (new_dim or keep_order), new_dim, combine_attrs,
                 DEFAULT_INLINE_LIMIT if inline_limit is None else inline_limit, storage_options, scanner,
                 dict(options))
    executor = make_executor(client, scheduler, workers)
    try:
        scanned, coords, failures = _scan_all(executor, given, labels, spec, show_progress)
        if failures and on_error == "raise":
            raise InputsFailed(failures, len(given))
        if not scanned:
            raise CombineError(f"combine: none of the {len(given)} inputs could be opened")
        order = list(range(len(scanned)))
        if spec.ordered:
            names = [labels[k] for k in scanned]
            order = order_by_coordinate(names, [coords[k] for k in scanned], concat_dim)
        parts = [scanned[k] for k in sorted(scanned)]
        parts = [parts[k] for k in order]
        why = ""
        if layout == "virtual":
            why = "layout='virtual' writes every input's arrays into one definition"
        elif combine_attrs == "drop_conflicts":
            why = "combine_attrs='drop_conflicts' drops an attribute if any two inputs differ"
        final, why, first_level = _reduce_all(executor, parts, spec, fan_in, why, show_progress)
        refs_and_labels = executor.gather(final)
        from refstore.virtual._combine import combine_with_layout

        manifest, layouts = combine_with_layout(
            [p.refs for p in refs_and_labels], concat_dim, out, new_dim=new_dim and first_level, keep_order=True,
            combine_attrs=combine_attrs, layout=layout, inline_limit=spec.inline_limit, zarr_format=zarr_format,
            storage_options=storage_options, progress=False, scanner=scanner,
            labels=[p.label for p in refs_and_labels], **options,
        )
    finally:
        executor.close()
    return BuildReport(manifest, layouts, list(failures), len(given), not why, why,
                       time.perf_counter() - start)


def _scan_all(
    executor: Any, given: list[Any], labels: list[str], spec: _Spec, show_progress: ProgressMode
) -> tuple[dict[int, Any], dict[int, np.ndarray], list[Failure]]:
    """Submit a scan per input; wait for them all. Returns the scans' futures by input index, the
    coordinates' first and last values by index, and the failures in input order."""
    scans = {executor.submit(_scan, fo, label, spec): k for k, (fo, label) in enumerate(zip(given, labels))}
    # the coordinate summaries are what comes back here; the references stay with the scans
    summaries = {executor.then(_coord_of, f): k for f, k in scans.items()}
    futures = {k: f for f, k in scans.items()}
    coords: dict[int, np.ndarray] = {}
    failed: dict[int, Failure] = {}
    bar = ProgressBar(len(given), "combine: scanning inputs", show_progress)
    try:
        for fut in executor.as_completed(summaries):
            k = summaries[fut]
            exc = fut.exception()
            if isinstance(exc, BrokenProcessPool):  # the pool is gone: no input's own fault
                raise exc
            if exc is not None:
                failed[k] = Failure(labels[k], f"{type(exc).__name__}: {exc}")
            else:
                coords[k] = fut.result()
            bar.advance()
    finally:
        bar.close()
    executor.release(summaries)
    executor.release(futures[k] for k in failed)
    scanned = {k: futures[k] for k in sorted(futures) if k not in failed}
    return scanned, coords, [failed[k] for k in sorted(failed)]


def _reduce_all(
    executor: Any, parts: list[Any], spec: _Spec, fan_in: int, why: str, show_progress: ProgressMode
) -> tuple[list[Any], str, bool]:
    """Combine runs of ``fan_in`` parts in the workers until at most ``fan_in`` remain.

    Returns the remaining parts (futures), why the tree was given up (or ``""``), and
    whether they are still the scanned inputs themselves (no level ran).
    """
    if why or len(parts) <= fan_in:
        return parts, why, True
    levels, n = 0, len(parts)
    while n > fan_in:
        n = -(-n // fan_in)
        levels += 1
    bar = ProgressBar(sum(-(-len(parts) // fan_in**(k + 1)) for k in range(levels)), "combine: combining",
                      show_progress)
    leaves, level, first_level = parts, parts, True
    try:
        while len(level) > fan_in:
            runs = [level[i:i + fan_in] for i in range(0, len(level), fan_in)]
            reduced = [executor.submit(_reduce, run, spec, first_level) for run in runs]
            checks = {executor.then(_unflat_of, f): f for f in reduced}
            unflat = ""
            for fut in executor.as_completed(checks):
                unflat = unflat or fut.result()
                bar.advance()
            executor.release(checks)
            if not first_level:
                executor.release(level)
            if unflat:
                executor.release(reduced)
                return leaves, f"a run of inputs cannot be written as plain references: {unflat}", True
            level, first_level = reduced, False
    finally:
        bar.close()
    return level, "", first_level


def failure_report(failures: Sequence[Failure], total: int) -> str:
    """``failures`` as lines for a message: ``N of M inputs failed:`` and one line per input."""
    lines = [f"{len(failures)} of {total} inputs could not be scanned or opened:"]
    lines += [f"  {f.label}: {f.cause}" for f in failures]
    return "\n".join(lines)
