"""A progress line on stderr for long scans (builders, ``combine`` of files)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def progress(
    items: Sequence[T], label: str, enabled: bool = True, *, always: bool = False, quiet_below: int = 1000
) -> Iterator[T]:
    """Yield *items*, drawing a ``label: n/total`` line on stderr at most 10 times a second.

    Nothing is drawn when *enabled* is false; otherwise the line is drawn when *always*
    is true, stderr is a terminal, or at least *quiet_below* items are scanned.
    """
    total = len(items)
    draw = enabled and (always or sys.stderr.isatty() or total >= quiet_below)
    last = 0.0
    if draw and total:
        sys.stderr.write(f"\r{label}: 0/{total}")
        sys.stderr.flush()
    for n, item in enumerate(items, 1):
        yield item
        if draw and (time.monotonic() - last > 0.1 or n == total):
            last = time.monotonic()
            sys.stderr.write(f"\r{label}: {n}/{total}")
            if n == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
