"""The ``refstore build`` subcommands: images, tiff, dzi and xyz."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _save(manifest: Any, out: str) -> int:
    manifest.save(out)
    print(f"wrote {out} ({len(manifest)} keys)")
    return 0


def _images(args: argparse.Namespace) -> int:
    from refstore.build import images

    files = args.files[0] if len(args.files) == 1 else args.files
    manifest = images(
        files,
        args.pattern,
        mosaic=args.mosaic,
        channel_first=args.channel_first,
        on_size_mismatch=args.on_size_mismatch,
        show_progress=not args.quiet,
    )
    return _save(manifest, args.out)


def _tiff(args: argparse.Namespace) -> int:
    from refstore.build import tiff

    _say_channel_last(args)
    manifest = tiff(
        args.file, series=args.series, channel_last=args.channel_last, url=args.url, zarr_format=args.zarr_format
    )
    return _save(manifest, args.out)


def _say_channel_last(args: argparse.Namespace) -> None:
    """Tell on stderr that a channel-last pyramid carries no OME-NGFF metadata."""
    if args.channel_last:
        print(
            "note: --channel-last: RGB levels are (y, x, c), which OME-NGFF cannot express; the group carries "
            "only refstore:levels, so OME-NGFF readers (napari-ome-zarr, ngff-zarr, vizarr) see no pyramid",
            file=sys.stderr,
        )


def _dzi(args: argparse.Namespace) -> int:
    from refstore.build import dzi

    _say_channel_last(args)
    return _save(dzi(args.file, channel_last=args.channel_last, show_progress=not args.quiet), args.out)


def _xyz(args: argparse.Namespace) -> int:
    from refstore.build import xyz

    _say_channel_last(args)
    manifest = xyz(args.dir, channel_last=args.channel_last, tile_size=args.tile_size, show_progress=not args.quiet)
    return _save(manifest, args.out)


def add_build_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``build`` and its subcommands to the ``refstore`` argparse *subparsers*.

    Each subcommand sets ``func`` (taking the parsed namespace, returning an exit
    status), as the other ``refstore`` subcommands do.
    """
    build = subparsers.add_parser("build", help="build a manifest from images, a TIFF, a DZI or an XYZ tile folder")
    sub = build.add_subparsers(dest="builder", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", "--out", required=True, help="manifest to write (.json, .json.gz, .parq)")
        p.add_argument("--channel-first", action="store_true", help="RGB(A) arrays as (c, y, x) instead of (y, x, c)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress line")

    def pyramid(p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", "--out", required=True, help="manifest to write (.json, .json.gz, .parq)")
        order = p.add_mutually_exclusive_group()
        order.add_argument("--channel-last", action="store_true",
                           help="RGB(A) levels as (y, x, c); not OME-NGFF, so only refstore's own level metadata")
        order.add_argument("--channel-first", action="store_true", help="RGB(A) levels as (c, y, x): the default")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress line")

    p = sub.add_parser("images", help="image files named by a regex as one N-d array (one file per chunk)")
    p.add_argument("files", nargs="+", help="a glob (quote it) or a list of files")
    p.add_argument("--pattern", required=True, help="regex with named groups; each group becomes an axis")
    p.add_argument("--mosaic", action="store_true", help="groups 'row' and 'col' place tiles in one image")
    p.add_argument("--on-size-mismatch", choices=("pad", "error"), default="pad")
    common(p)
    p.set_defaults(func=_images)

    p = sub.add_parser("tiff", help="every tile of every level of a (pyramidal, OME-) TIFF or COG, local or URL")
    p.add_argument("file")
    p.add_argument("--series", type=int, default=0)
    p.add_argument("--url", default=None, help="URL to write into references instead of the file's path")
    p.add_argument("--zarr-format", type=int, choices=(2, 3), default=2, help="2: NGFF 0.4 (default), 3: NGFF 0.5")
    pyramid(p)
    p.set_defaults(func=_tiff)

    p = sub.add_parser("dzi", help="a Deep Zoom image (.dzi + _files/), local or any fsspec URL")
    p.add_argument("file")
    pyramid(p)
    p.set_defaults(func=_dzi)

    p = sub.add_parser("xyz", help="an XYZ tile folder <z>/<y>/<x>.<fmt>, local or listable URL")
    p.add_argument("dir")
    p.add_argument("--tile-size", type=int, default=None)
    pyramid(p)
    p.set_defaults(func=_xyz)
    return build
