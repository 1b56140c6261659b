"""Argument parsing and the small subcommands: ``demo``, ``inspect``, ``convert``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _inspect(args: argparse.Namespace) -> int:
    from refstore.manifest import Manifest, Reference

    manifest = Manifest.open(args.manifest)
    refs = inline = 0
    for entry in manifest.values():
        if isinstance(entry, Reference):
            refs += 1
        else:
            inline += 1
    print(f"{args.manifest}: {len(manifest)} keys ({refs} references, {inline} inline)")
    print(f"  {len(manifest.urls)} distinct target URLs, {len(manifest.tabulated())} arrays held as columns "
          f"({manifest.nbytes() / 2**20:.1f} MiB)")
    for url in manifest.urls[: args.urls]:
        print(f"  {url}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from refstore.manifest import Manifest

    Manifest.open(args.source).save(args.dest)
    print(f"wrote {args.dest}")
    return 0


def _combine(args: argparse.Namespace) -> int:
    from refstore.virtual._combine import combine_with_layout

    layout = "kerchunk" if args.kerchunk_only or args.flatten else args.layout
    out = args.output
    parquet = out.rstrip("/").endswith((".parq", ".parquet"))
    if args.format == "json" and parquet:
        raise ValueError(f"-o {out!r} names a parquet directory (.parq/.parquet) but --format json was given")
    if args.format == "parquet" and not parquet:
        out = out.rstrip("/") + ".parq"
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


def _demo(args: argparse.Namespace) -> int:
    from refstore.cli._demo import run_demo

    return run_demo(args.dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``refstore`` command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="refstore", description="Read existing files as zarr through reference manifests.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="build a small dataset and its manifest, and read it through zarr")
    p.add_argument("--dir", default=None, help="where to write the sample files (default: a temporary folder)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("inspect", help="summarise a manifest")
    p.add_argument("manifest")
    p.add_argument("--urls", type=int, default=5, help="how many target URLs to list")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("convert", help="rewrite a manifest as JSON (.json/.json.gz/.json.zst) or parquet (.parq)")
    p.add_argument("source")
    p.add_argument("dest")
    p.set_defaults(func=_convert)

    from refstore.virtual._combine import COMBINE_ATTRS
    from refstore.virtual._layout import DEFAULT_INLINE_LIMIT

    p = sub.add_parser("combine", help="join datasets along a dimension into one manifest, as xr.open_mfdataset would")
    p.add_argument("inputs", nargs="+",
                   help="datasets with the same variables: reference manifests (kerchunk JSON or parquet), "
                        "zarr stores (v2 or v3), or netCDF/HDF5 files (scanned with kerchunk)")
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
    p.set_defaults(func=_combine)

    from refstore.build._cli import add_build_parser

    add_build_parser(sub)

    from refstore.serve._cli import add_serve_parser

    add_serve_parser(sub)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (OSError, ValueError) as exc:
        print(f"refstore {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
