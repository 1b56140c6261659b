"""Scans: the progress bar on stderr, the bounded concurrent map, and the CLI's --progress / -q."""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import threading
import time
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import zarr
from _servers import RangeHTTPServer

import refstore
from refstore.build._cli import add_build_parser
from refstore.build._scan import ProgressBar, progress, scan


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_draws_on_a_terminal_or_when_forced_only() -> None:
    for stream, mode, drawn in [(_Terminal(), True, True), (io.StringIO(), True, False),
                                (io.StringIO(), "always", True), (_Terminal(), False, False)]:
        bar = ProgressBar(5, "scan x", mode, stream)
        for _ in range(5):
            bar.advance()
        bar.close()
        text = stream.getvalue()
        assert ("scan x: [" in text and "5/5" in text and text.endswith("/s\n")) == drawn, (mode, text)
    many = io.StringIO()
    bar = ProgressBar(1000, "big", True, many)  # a long scan draws even into a log file
    bar.advance(1000)
    assert "1000/1000" in many.getvalue()


def test_progress_stopped_early_ends_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    for n, _ in enumerate(progress(list(range(10)), "half", "always")):
        if n == 4:
            break
    err = capsys.readouterr().err
    assert "4/10" in err and err.endswith("\n")  # four items were done when the loop stopped


def test_scan_is_bounded_ordered_and_raises_the_first_error() -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def work(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return i * i

    assert scan(work, list(range(40)), label="sq", show_progress=False, concurrency=4) == [i * i for i in range(40)]
    assert 2 <= peak <= 4

    def fail(i: int) -> int:
        if i == 7:
            raise FileNotFoundError(f"tile {i}")
        return i

    with pytest.raises(FileNotFoundError, match="tile 7"):
        scan(fail, list(range(20)), label="f", show_progress=False, concurrency=3)


@pytest.mark.skipif(shutil.which("vips") is None, reason="needs libvips-tools (vips dzsave)")
def test_cli_dzi_over_http_without_listing_shows_progress(
    tmp_path: Path, http: RangeHTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: ``refstore build dzi http://host/slide.dzi`` where folders answer 403."""
    y, x = np.mgrid[0:150, 0:200]
    image = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype("u1")
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(image))
    subprocess.run(["vips", "dzsave", "src.png", "slide", "--tile-size", "64", "--suffix", ".png"], cwd=tmp_path,
                   check=True)
    (tmp_path / "src.png").unlink()
    http.directory_status = 403
    url = http.serve(tmp_path, "cli-dzi") + "/slide.dzi"
    parser = argparse.ArgumentParser()
    add_build_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "slide.json"
    for extra, bar in [(["--check-tiles", "probe", "--progress"], True), (["-q"], False), ([], False)]:
        args = parser.parse_args(["build", "dzi", url, "-o", str(out), *extra])
        assert args.func(args) == 0
        err = capsys.readouterr().err
        assert ("probing: [" in err and "/s" in err) == bar, err
    assert not [r for r in http.log if r.status == 403]
    group = zarr.open_group(refstore.ReferenceStore(str(out)), mode="r")
    np.testing.assert_array_equal(np.moveaxis(group["0"][:], 0, -1), image)
