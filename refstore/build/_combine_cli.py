"""The ``refstore combine`` and ``refstore build netcdf`` commands: their arguments and how they run."""

from __future__ import annotations

import argparse
import sys

#: ``refstore combine`` of at least this many inputs runs on a local process pool by default.
PARALLEL_FROM = 64


def run_combine(args: argparse.Namespace) -> int:
    """``refstore combine`` (and ``refstore build netcdf``, which sets ``parallel``); returns the exit status."""
    from refstore.virtual._combine import combine_with_layout

    layout = "kerchunk" if args.kerchunk_only or args.flatten else args.layout
    out = args.output
    parquet = out.rstrip("/").endswith((".parq", ".parquet"))
    if args.format == "json" and parquet:
        raise ValueError(f"-o {out!r} names a parquet directory (.parq/.parquet) but --format json was given")
    if args.format == "parquet" and not parquet:
        out = out.rstrip("/") + ".parq"
    parallel = (getattr(args, "parallel", False) or args.scheduler or args.workers or args.keep_going
                or len(args.inputs) >= PARALLEL_FROM)
    if parallel:
        from refstore.build._parallel import combine_parallel, failure_report

        report = combine_parallel(
            args.inputs, args.concat_dim, out, scheduler=args.scheduler, workers=args.workers,
            on_error="continue" if args.keep_going else "raise", fan_in=args.fan_in, new_dim=args.new_dim,
            keep_order=args.keep_order, combine_attrs=args.combine_attrs, zarr_format=args.zarr_format,
            layout=layout, inline_limit=args.inline_limit, scanner=args.scanner,
            show_progress="always" if args.progress else True,
        )
        layouts = report.layouts
        where = f"on {args.scheduler}" if args.scheduler else "on a local process pool"
        how = "combined as a tree in the workers" if report.tree else f"combined here ({report.why_not_tree})"
        print(f"wrote {out} from {report.inputs - len(report.failures)} inputs in {report.seconds:.1f} s, "
              f"scanned {where}; {how}")
        if report.failures:
            print(failure_report(report.failures, report.inputs) + "\n(left out: --keep-going)", file=sys.stderr)
    else:
        _, layouts = combine_with_layout(
            args.inputs, args.concat_dim, out, new_dim=args.new_dim, keep_order=args.keep_order,
            combine_attrs=args.combine_attrs, zarr_format=args.zarr_format, layout=layout,
            inline_limit=args.inline_limit, progress=True if args.progress else None, scanner=args.scanner,
        )
        print(f"wrote {out}")
    for how, label in (("references", "kerchunk references"), ("inlined", "inlined values"),
                       ("virtual", "virtual arrays (readable with refstore only)")):
        chosen = [a for a in layouts if a.how == how]
        if chosen:
            print(f"  {label}: {', '.join(a.name for a in chosen)}")
    for a in layouts:
        if a.how == "virtual":
            print(f"    {a.name}: {a.reason}")
    if not any(a.how == "virtual" for a in layouts):
        print("  plain kerchunk output: any kerchunk reader (fsspec's reference://) can open it")
    return 0


def add_combine_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``refstore combine`` (shared with ``refstore build netcdf``)."""
    from refstore.virtual._combine import COMBINE_ATTRS
    from refstore.virtual._layout import DEFAULT_INLINE_LIMIT

    p.add_argument("--concat-dim", required=True, help="the dimension to concatenate along (one the inputs have)")
    p.add_argument("-o", "--output", required=True,
                   help="where to write the result: .json (.json.gz, .json.zst) or a .parq directory")
    p.add_argument("--layout", choices=("auto", "kerchunk", "virtual"), default="auto",
                   help="auto (default): plain kerchunk references where chunks align, small coordinates "
                        "inlined, virtual arrays only where needed; kerchunk: refuse what kerchunk cannot "
                        "express; virtual: every concatenated variable as a virtual array")
    p.add_argument("--kerchunk-only", action="store_true",
                   help="pure kerchunk output (--layout kerchunk): refuse, naming the variable and why, "
                        "what plain references cannot express")
    p.add_argument("--flatten", action="store_true", help="the same as --kerchunk-only")
    p.add_argument("--inline-limit", type=int, default=DEFAULT_INLINE_LIMIT, metavar="BYTES",
                   help="inline coordinates up to this size (decoded) where they cannot be references "
                        f"(default {DEFAULT_INLINE_LIMIT})")
    p.add_argument("--format", choices=("json", "parquet"), default=None,
                   help="output format (default: parquet if -o ends with .parq/.parquet, else JSON); "
                        "parquet appends .parq to -o if it has no parquet suffix")
    p.add_argument("--progress", action="store_true",
                   help="draw a progress line on stderr while scanning netCDF/HDF5 files even when stderr is "
                        "not a terminal (on a terminal it is drawn anyway)")
    p.add_argument("--scanner", choices=("kerchunk", "virtualizarr"), default=None,
                   help="what scans netCDF/HDF5 inputs (default: kerchunk if installed, else VirtualiZarr)")
    p.add_argument("--new-dim", action="store_true",
                   help="--concat-dim is a new dimension: stack the inputs along it, in the order given")
    p.add_argument("--keep-order", action="store_true",
                   help="concatenate in the order given, not by the concat coordinate (xarray's combine='nested')")
    p.add_argument("--combine-attrs", choices=COMBINE_ATTRS, default="override",
                   help="global and variable attributes that differ between inputs, as xarray's combine_attrs "
                        "(default: override, the first input's)")
    p.add_argument("--zarr-format", type=int, choices=(2, 3), default=None,
                   help="metadata format of the result (default: the inputs')")
    par = p.add_argument_group("parallel", f"scans and combines in parallel: with --scheduler on a dask cluster, "
                                           f"else on a local process pool (the default from {PARALLEL_FROM} inputs)")
    par.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="dask scheduler to run on (tcp://host:8786); workers need refstore and the scanner "
                          "installed, and must reach the inputs")
    par.add_argument("--workers", type=int, default=None, help="processes in the local pool (default: one per core)")
    par.add_argument("--keep-going", action="store_true",
                     help="combine the inputs that open and list the others on stderr (default: fail, listing "
                          "every input that could not be scanned or opened, and write nothing)")
    par.add_argument("--fan-in", type=int, default=32, help="inputs each combining task joins (default 32)")
