"""Scanning many sources: a progress bar on stderr, and a bounded concurrent map for remote ones."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import IO, Any, Literal, TypeVar

__all__ = ["ProgressBar", "ProgressMode", "exists_all", "progress", "scan"]

T = TypeVar("T")
R = TypeVar("R")

ProgressMode = bool | Literal["always"]
"""``True``: draw when stderr is a terminal (or the scan has 1000 items or more);
``"always"``: draw whatever stderr is (CLI ``--progress``); ``False``: never."""

_WIDTH = 24


class ProgressBar:
    """A ``label: [#####.....] n/total rate/s`` line on stderr, redrawn at most 10 times a second.

    Parameters
    ----------
    total
        How many items the scan has.
    label
        What is scanned (a path or URL and a verb).
    mode
        See `ProgressMode`.
    stream
        Where to draw; default ``sys.stderr``.
    """

    def __init__(self, total: int, label: str, mode: ProgressMode = True, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.label, self.done = total, label, 0
        isatty = getattr(self.stream, "isatty", lambda: False)()
        self.enabled = mode == "always" or (mode is True and (isatty or total >= 1000))
        self.start = self._last = time.monotonic()

    @property
    def rate(self) -> float:
        """Items per second so far."""
        return self.done / max(time.monotonic() - self.start, 1e-9)

    def advance(self, n: int = 1) -> None:
        """Count *n* more items done, and redraw if due."""
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        filled = _WIDTH * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (_WIDTH - filled)
        self.stream.write(f"\r{self.label}: [{bar}] {self.done}/{self.total} {self.rate:,.0f}/s")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw where a scan that stopped early got to, and end the line."""
        if self.enabled and 0 < self.done < self.total:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


def progress(items: Sequence[T], label: str, enabled: ProgressMode = True) -> Iterator[T]:
    """Yield *items*, drawing a progress bar on stderr (see `ProgressBar`)."""
    bar = ProgressBar(len(items), label, enabled)
    try:
        for item in items:
            yield item
            bar.advance()
    finally:
        bar.close()


def scan(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    label: str,
    show_progress: ProgressMode = True,
    concurrency: int = 1,
) -> list[R]:
    """Return ``[fn(item) for item in items]``, running at most *concurrency* calls at once.

    Calls run in threads (fsspec's remote filesystems serve each from their own
    event loop, so threads overlap their waits). The first exception raised by a
    call is raised here, after the calls not yet started are cancelled.
    """
    bar = ProgressBar(len(items), label, show_progress)
    try:
        if concurrency <= 1 or len(items) <= 1:
            results = []
            for item in items:
                results.append(fn(item))
                bar.advance()
            return results
        with ThreadPoolExecutor(max_workers=min(concurrency, len(items)), thread_name_prefix="refstore-scan") as pool:
            futures: list[Future[R]] = [pool.submit(fn, item) for item in items]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_EXCEPTION)
                bar.advance(len(done))
                failed = next((f for f in done if f.exception() is not None), None)
                if failed is not None:
                    for f in pending:
                        f.cancel()
                    failed.result()
            return [f.result() for f in futures]
    finally:
        bar.close()


def exists_all(
    fs: Any, paths: Sequence[str], *, label: str, show_progress: ProgressMode = True, concurrency: int = 32
) -> list[bool]:
    """Return whether each of *paths* exists on *fs* (a HEAD each over HTTP), *concurrency* at a time.

    A path whose check fails with ``FileNotFoundError`` or a refusal (403) counts as
    absent; other errors (a server down, a timeout) are raised, naming the path.
    """

    def check(path: str) -> bool:
        try:
            fs.info(path)  # a HEAD over HTTP and S3 (fsspec's exists() GETs HTTP files whole)
        except FileNotFoundError:
            return False
        except Exception as exc:  # fsspec backends raise their own types
            if getattr(exc, "status", None) in (403, 404):  # aiohttp's answer to a refused or missing file
                return False
            raise OSError(f"{path}: cannot tell whether it exists ({exc})") from exc
        return True

    return scan(check, paths, label=label, show_progress=show_progress, concurrency=concurrency)
