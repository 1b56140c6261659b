"""Command line: ``python -m benchmarks [--quick] [--only NAME] [--repeat N] [--out PATH]``.

The peers: ``open_json``, ``contiguous_*`` and ``scattered_*`` also run
VirtualiZarr's ManifestStore and Icechunk virtual chunks (``benchmarks/peers.py``)
when installed; ``python -m benchmarks.transport`` compares obstore with
refstore's aiohttp and s3fs clients.

Scenarios:

* ``open_json`` - open a kerchunk JSON with 1M references (100k with
  ``--quick``): time, peak memory, pickle size and unpickle time;
* ``open_shapes`` - the same references in the shapes real tools write
  (``json.dump`` defaults, ``indent=2``, ujson, version 0, gzip, zstd, keys in
  random order, one URL per chunk), opened by fsspec and refstore;
* ``contiguous_local`` / ``contiguous_http`` / ``contiguous_s3`` - read an
  uncompressed zarr v3 array of 4096 contiguous 8 KiB chunks (512 with
  ``--quick``) from a local file, a loopback aiohttp server and moto S3;
* ``scattered_local`` / ``scattered_http`` / ``scattered_s3`` - read 2,000
  random chunks (200 with ``--quick``) of a gzip zarr v3 array spread over
  1,000 files (100), with requests and bytes read / bytes needed
  (``python -m benchmarks.scattered sweep`` sweeps max_gap x max_block).
* ``parquet`` - a kerchunk parquet manifest of 100M references (1M with
  ``--quick``): open, read one chunk, look up 1,000 random chunks' references;
  peak memory, pickle size (``benchmarks/parquet.py``).
* ``images_png`` / ``images_jpeg`` - decode 1,024 RGB 256x256 PNG / JPEG tile
  files (64 with ``--quick``) as one mosaic through zarr, against imagecodecs
  in 2 threads, fsspec + imagecodecs' numcodecs codec and tifffile's
  FileSequence.aszarr (``benchmarks/images.py``);
* ``decode_zstd`` / ``decode_gzip`` - read 256 compressed 1 MiB chunks (32)
  under zarr's threading/concurrency settings, with CPU time / wall time,
  against numcodecs in 2 threads (``benchmarks/decode.py``).
* ``virtual_aligned`` / ``virtual_misaligned`` - ``refstore combine`` of 20 (4)
  netCDF4 files (default layout and ``--layout virtual``) read through zarr +
  ReferenceStore, open+read and read alone: aligned against kerchunk MZZ's manifest
  of the same files (refstore and fsspec), misaligned (365/366-day years, assembled)
  against h5py + numpy.concatenate (``benchmarks/virtual.py``).

Not in the default run (minutes): ``python -m benchmarks.cluster`` builds and reduces
on a dask ``LocalCluster`` against kerchunk's ``auto_dask`` and VirtualiZarr, and
ships a large manifest to workers with and without a shared snapshot.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from ._common import Config, Row, import_refstore, refstore_error

SCENARIOS = ("open_json", "open_shapes", "contiguous_local", "contiguous_http", "contiguous_s3",
             "scattered_local", "scattered_http", "scattered_s3",
             "parquet",
             "images_png", "images_jpeg", "decode_zstd", "decode_gzip",
             "virtual_aligned", "virtual_misaligned")
DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (smoke run)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only scenarios whose name starts with NAME (repeatable, comma lists ok)")
    p.add_argument("--repeat", type=int, default=None, help="repeats per measurement (default 5, quick 3)")
    p.add_argument("--slow-repeat", type=int, default=1,
                   help="repeats for fsspec on moto S3, which is very slow (default 1)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT})")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where generated inputs are kept (default $REFSTORE_BENCH_CACHE or a temp dir)")
    p.add_argument("--servers-in-process", action="store_true",
                   help="run HTTP/S3 servers in threads of this process instead of subprocesses")
    p.add_argument("--n-refs", type=int, default=None, help="references in the open_json file")
    p.add_argument("--n-chunks", type=int, default=None, help="chunks in the contiguous scenarios")
    p.add_argument("--zarr-concurrency", type=int, default=None,
                   help="set zarr's async.concurrency (default: zarr's own, 10)")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    p.add_argument("--list", action="store_true", help="list scenario names and exit")
    return p.parse_args(argv)


def _config(a: argparse.Namespace) -> Config:
    """Build the run configuration (quick sizes first, explicit options override)."""
    cfg = Config(quick=a.quick, slow_repeat=a.slow_repeat, servers_in_process=a.servers_in_process,
                 verbose=not a.quiet)
    if a.quick:
        cfg.repeat, cfg.n_refs, cfg.n_chunks = 3, 100_000, 512
    if a.repeat is not None:
        cfg.repeat = a.repeat
    if a.n_refs is not None:
        cfg.n_refs = a.n_refs
    if a.n_chunks is not None:
        cfg.n_chunks = a.n_chunks
    if a.cache_dir is not None:
        a.cache_dir.mkdir(parents=True, exist_ok=True)
        cfg.cache_dir = a.cache_dir
    return cfg


def _select(only: list[str]) -> list[str]:
    """Scenario names selected by ``--only`` prefixes (all if none given)."""
    if not only:
        return list(SCENARIOS)
    wanted = [w.strip() for item in only for w in item.split(",") if w.strip()]
    chosen = [s for s in SCENARIOS if any(s.startswith(w) for w in wanted)]
    if not chosen:
        raise SystemExit(f"no scenario matches {wanted}; choose from {', '.join(SCENARIOS)}")
    return chosen


def _runner(name: str) -> Callable[[Config], list[Row]]:
    """The function running scenario ``name``."""
    if name.startswith("virtual"):
        from . import virtual

        return lambda cfg: virtual.run(name, cfg)
    if name == "open_json":
        from . import open_json

        return open_json.run
    if name == "open_shapes":
        from . import open_shapes

        return open_shapes.run
    if name == "parquet":
        from . import parquet

        return parquet.run
    if name.startswith("images"):
        from . import images

        return lambda cfg: images.run(name, cfg)
    if name.startswith("decode"):
        from . import decode

        return lambda cfg: decode.run(name, cfg)
    if name.startswith("scattered"):
        from . import scattered

        return lambda cfg: scattered.run(name, cfg)
    from . import contiguous

    return lambda cfg: contiguous.run(name, cfg)


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios, print the table, write the JSON."""
    from .report import format_table, write_json

    args = _parse(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    cfg = _config(args)
    if args.zarr_concurrency is not None:
        import zarr

        zarr.config.set({"async.concurrency": args.zarr_concurrency})
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if import_refstore() is None:
        print(f"note: refstore not importable ({refstore_error()}); its columns show n/a", flush=True)
    t0 = time.perf_counter()
    rows: list[Row] = []
    for name in _select(args.only):
        if cfg.verbose:
            print(f"== {name}", flush=True)
        try:
            rows.extend(_runner(name)(cfg))
        except Exception as exc:
            print(f"  scenario {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            rows.append(Row(name, "-", note=f"scenario failed: {type(exc).__name__}: {exc}"))
    elapsed = time.perf_counter() - t0
    print()
    print(format_table(rows))
    write_json(args.out, rows, cfg, elapsed)
    print(f"\nwrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
