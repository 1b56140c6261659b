"""Builder scan rates: files (or tiles) per second probed by ``build.images`` and ``build.dzi``.

``python -m benchmarks.build_scan [--files N] [--repeat R]`` writes N small PNG files
and a Deep Zoom tile set, serves them from a local folder, a loopback aiohttp server
(a subprocess) and moto S3 (a subprocess), and times:

* ``images``: ``build.images`` over the files (a list of URLs over HTTP, a prefix on S3),
  with ``concurrency=1`` (one file after another) and the default 32;
* ``dzi probe``: ``build.dzi(check_tiles="probe")``, one HEAD per tile, 1 and 32 at a time.

It prints the median files/second of R runs per row; every build is checked to hold one
reference per file.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .servers import Server, s3_options, set_dummy_aws_env


def _write_files(root: Path, n: int) -> list[str]:
    import imagecodecs

    root.mkdir(parents=True, exist_ok=True)
    side = int(np.ceil(np.sqrt(n)))
    names = []
    rng = np.random.default_rng(0)
    for i in range(n):
        tile = rng.integers(0, 255, (32, 32, 3), dtype="u1")
        name = f"p_{i // side}_{i % side}.png"
        (root / name).write_bytes(imagecodecs.png_encode(tile))
        names.append(name)
    return names


def _write_dzi(root: Path, tiles: int) -> int:
    """A vips Deep Zoom set with about *tiles* tiles at the top level; returns its tile count."""
    import imagecodecs

    side = int(np.ceil(np.sqrt(tiles))) * 64
    root.mkdir(parents=True, exist_ok=True)
    (root / "src.png").write_bytes(imagecodecs.png_encode(np.zeros((side, side, 3), "u1")))
    subprocess.run(["vips", "dzsave", "src.png", "slide", "--tile-size", "64", "--overlap", "0", "--suffix", ".png"],
                   cwd=root, check=True)
    (root / "src.png").unlink()
    return sum(1 for p in (root / "slide_files").rglob("*.png"))


def _median_rate(run: Callable[[], int], count: int, repeat: int) -> float:
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        got = run()
        rates.append(count / (time.perf_counter() - start))
        assert got >= count, f"built {got} references for {count} files"
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> None:
    """Run the scans and print the table."""
    import fsspec

    from refstore.build import dzi, images

    p = argparse.ArgumentParser(prog="python -m benchmarks.build_scan", description=__doc__)
    p.add_argument("--files", type=int, default=400)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    set_dummy_aws_env()
    rows: list[tuple[str, str, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="refstore-scan-") as tmp:
        root = Path(tmp)
        names = _write_files(root / "files", a.files)
        ntiles = _write_dzi(root / "dz", a.files)
        pattern = r"p_(?P<row>\d+)_(?P<col>\d+)\.png"
        with Server("http", root) as http, Server("s3") as s3:
            opts = s3_options(s3.url)
            fs = fsspec.filesystem("s3", skip_instance_cache=True, **opts)
            fs.mkdir("bench")
            fs.put(str(root / "files"), "bench/files", recursive=True)
            fs.put(str(root / "dz"), "bench/dz", recursive=True)
            sources: dict[str, tuple[Any, str, dict[str, Any]]] = {
                "local": (str(root / "files" / "*.png"), str(root / "dz" / "slide.dzi"), {}),
                "http": ([f"{http.url}/files/{n}" for n in names], f"{http.url}/dz/slide.dzi", {}),
                "s3": ("s3://bench/files/", "s3://bench/dz/slide.dzi", opts),
            }
            for kind, (files, slide, options) in sources.items():
                for conc in (1, 32) if kind != "local" else (1,):
                    def build(files: Any = files, options: dict[str, Any] = options, conc: int = conc) -> int:
                        m = images(files, pattern, mosaic=True, storage_options=options, show_progress=False,
                                   concurrency=conc)
                        return sum(1 for k in m.keys() if "/c/" in k)

                    rows.append((kind, "images", conc, _median_rate(build, len(names), a.repeat)))
                for conc in (1, 32):
                    def probe(slide: str = slide, options: dict[str, Any] = options, conc: int = conc) -> int:
                        m = dzi(slide, check_tiles="probe", storage_options=options, show_progress=False,
                                concurrency=conc)
                        return sum(1 for k in m.keys() if "/c/" in k)

                    rows.append((kind, "dzi probe (HEAD per tile)", conc, _median_rate(probe, ntiles, a.repeat)))
    print(f"files: {a.files} PNG files of 32x32; DZI tiles: {ntiles}; median of {a.repeat}")
    print("| source | scan | concurrency | files/s |")
    print("|---|---|---|---|")
    for kind, what, conc, rate in rows:
        print(f"| {kind} | {what} | {conc} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
