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

    from refstore.build._combine_cli import add_combine_arguments, run_combine

    p = sub.add_parser("combine", help="join datasets along a dimension into one manifest, as xr.open_mfdataset would")
    p.add_argument("inputs", nargs="+",
                   help="datasets with the same variables: reference manifests (kerchunk JSON or parquet), "
                        "zarr stores (v2 or v3), or netCDF/HDF5 files (scanned with kerchunk); a glob or a "
                        "folder/prefix ending in / names its netCDF/HDF5/TIFF files")
    add_combine_arguments(p)
    p.set_defaults(func=run_combine)

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
