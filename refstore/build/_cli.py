"""The ``refstore build`` subcommands: images, tiff, dzi and xyz."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _save(manifest: Any, out: str) -> int:
    manifest.save(out)
    print(f"wrote {out} ({len(manifest)} keys)")
    return 0


def _progress(args: argparse.Namespace) -> bool | str:
    """``-q``: no bar; ``--progress``: a bar whatever stderr is; else a bar on a terminal."""
    return False if args.quiet else "always" if args.progress else True


def _say_channel_last(args: argparse.Namespace) -> None:
    """Tell on stderr that a channel-last pyramid carries no OME-NGFF metadata."""
    if args.channel_last:
        print(
            "note: --channel-last: RGB levels are (y, x, c), which OME-NGFF cannot express; the group carries "
            "only refstore:levels, so OME-NGFF readers (napari-ome-zarr, ngff-zarr, vizarr) see no pyramid",
            file=sys.stderr,
        )


def _images(args: argparse.Namespace) -> int:
    from refstore.build import images

    files = args.files[0] if len(args.files) == 1 else args.files
    manifest = images(
        files,
        args.pattern,
        mosaic=args.mosaic,
        channel_first=args.channel_first,
        on_size_mismatch=args.on_size_mismatch,
        show_progress=_progress(args),  # type: ignore[arg-type]
        concurrency=args.concurrency,
    )
    return _save(manifest, args.out)


def _tiff(args: argparse.Namespace) -> int:
    from refstore.build import tiff

    _say_channel_last(args)
    manifest = tiff(
        args.file, series=args.series, channel_last=args.channel_last, url=args.url, zarr_format=args.zarr_format
    )
    return _save(manifest, args.out)


def _dzi(args: argparse.Namespace) -> int:
    from refstore.build import dzi

    _say_channel_last(args)
    check = {"list": True, "probe": "probe", "none": False}[args.check_tiles]
    manifest = dzi(
        args.file,
        channel_last=args.channel_last,
        check_tiles=check,  # type: ignore[arg-type]
        show_progress=_progress(args),  # type: ignore[arg-type]
        concurrency=args.concurrency,
    )
    return _save(manifest, args.out)


def _xyz(args: argparse.Namespace) -> int:
    from refstore.build import xyz

    _say_channel_last(args)
    manifest = xyz(
        args.dir,
        channel_last=args.channel_last,
        tile_size=args.tile_size,
        show_progress=_progress(args),  # type: ignore[arg-type]
        zooms=tuple(args.zooms) if args.zooms else None,  # type: ignore[arg-type]
        bounds=tuple(args.bounds) if args.bounds else None,  # type: ignore[arg-type]
        probe=args.probe,
        suffix=args.suffix,
        concurrency=args.concurrency,
    )
    return _save(manifest, args.out)


def add_build_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``build`` and its subcommands to the ``refstore`` argparse *subparsers*.

    Each subcommand sets ``func`` (taking the parsed namespace, returning an exit
    status), as the other ``refstore`` subcommands do.
    """
    build = subparsers.add_parser("build", help="build a manifest from images, a TIFF, a DZI or an XYZ tile folder")
    sub = build.add_subparsers(dest="builder", required=True)

    def common(p: argparse.ArgumentParser, remote: bool = True) -> None:
        p.add_argument("-o", "--out", required=True, help="manifest to write (.json, .json.gz, .parq)")
        shown = p.add_mutually_exclusive_group()
        shown.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        shown.add_argument("--progress", action="store_true", help="a progress bar on stderr even if not a terminal")
        if remote:
            p.add_argument("--concurrency", type=int, default=32, help="remote files probed at once (default 32)")

    def pyramid(p: argparse.ArgumentParser, remote: bool = True) -> None:
        common(p, remote)
        order = p.add_mutually_exclusive_group()
        order.add_argument("--channel-last", action="store_true",
                           help="RGB(A) levels as (y, x, c); not OME-NGFF, so only refstore's own level metadata")
        order.add_argument("--channel-first", action="store_true", help="RGB(A) levels as (c, y, x): the default")

    p = sub.add_parser("images", help="image files named by a regex as one N-d array (one file per chunk)")
    p.add_argument("files", nargs="+", help="a glob (quote it), a folder or S3 prefix, or a list of files or URLs")
    p.add_argument("--pattern", required=True, help="regex with named groups; each group becomes an axis")
    p.add_argument("--mosaic", action="store_true", help="groups 'row' and 'col' place tiles in one image")
    p.add_argument("--on-size-mismatch", choices=("pad", "error"), default="pad")
    p.add_argument("--channel-first", action="store_true", help="RGB(A) arrays as (c, y, x) instead of (y, x, c)")
    common(p)
    p.set_defaults(func=_images)

    p = sub.add_parser("tiff", help="every tile of every level of a (pyramidal, OME-) TIFF or COG, local or URL")
    p.add_argument("file")
    p.add_argument("--series", type=int, default=0)
    p.add_argument("--url", default=None, help="URL to write into references instead of the file's path")
    p.add_argument("--zarr-format", type=int, choices=(2, 3), default=2, help="2: NGFF 0.4 (default), 3: NGFF 0.5")
    pyramid(p, remote=False)
    p.set_defaults(func=_tiff)

    p = sub.add_parser("dzi", help="a Deep Zoom image (.dzi + _files/), local or any fsspec URL")
    p.add_argument("file")
    p.add_argument("--check-tiles", choices=("list", "probe", "none"), default="list",
                   help="list: list level folders where the storage lists (not HTTP); probe: ask for every tile "
                        "(HEAD); none: assume every tile present")
    pyramid(p)
    p.set_defaults(func=_dzi)

    from refstore.build._combine_cli import add_combine_arguments, run_combine

    p = sub.add_parser("netcdf", help="scan netCDF/HDF5/TIFF files in parallel (a local pool or --scheduler) and "
                                      "combine them along a dimension, as refstore combine")
    p.add_argument("inputs", nargs="+",
                   help="a glob (quote it), a folder or S3/GCS prefix ending in /, or a list of files or URLs")
    add_combine_arguments(p)
    p.set_defaults(func=run_combine, parallel=True)

    p = sub.add_parser("xyz", help="an XYZ tile set <z>/<y>/<x>.<fmt>: a listable folder, or zooms and bounds")
    p.add_argument("dir")
    p.add_argument("--tile-size", type=int, default=None)
    p.add_argument("--zooms", type=int, nargs=2, metavar=("MIN", "MAX"), help="zoom range (needed without listing)")
    p.add_argument("--bounds", type=int, nargs=4, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                   help="tile columns and rows at the highest zoom, inclusive")
    p.add_argument("--probe", action="store_true", help="ask for each tile (HEAD), or discover the tiles from MIN up")
    p.add_argument("--suffix", default=None, help="tile file suffix (png, jpg, ...), needed without listing")
    pyramid(p)
    p.set_defaults(func=_xyz)
    return build
