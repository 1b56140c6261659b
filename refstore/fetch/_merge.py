"""Coalescing byte ranges of one URL into fewer reads, and cutting the results apart again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class Span:
    """One read of a target: ``[start, end)``, or to the end of the object when ``end`` is None.

    ``members`` are the indices of the requests this read serves.
    """

    start: int
    end: int | None
    members: list[int]


def merge_ranges(
    ranges: Sequence[tuple[int, int | None]], max_gap: int, max_block: int
) -> list[Span]:
    """Group ranges of one object into spans.

    Parameters
    ----------
    ranges
        ``(start, end)`` pairs, end-exclusive; ``end=None`` reads to the end of the object.
    max_gap
        Largest hole (in bytes) that may be read and thrown away to join two
        ranges; a negative value disables merging (identical ranges are still
        read once).
    max_block
        Largest span a merge may produce; a single range larger than this is
        still read whole.

    Returns
    -------
    list of Span
        Every request index appears in exactly one span, and each span covers
        all of its members' bytes.
    """
    order = sorted(range(len(ranges)), key=lambda i: (ranges[i][0], _end_key(ranges[i][1])))
    spans: list[Span] = []
    for i in order:
        start, end = ranges[i]
        if spans:
            cur = spans[-1]  # sorted by start, so start >= cur.start
            if cur.end is None:
                cur.members.append(i)  # an open-ended read covers everything after its start
                continue
            if end is not None:
                inside = end <= cur.end
                near = max_gap >= 0 and start - cur.end <= max_gap
                if inside or (near and max(end, cur.end) - cur.start <= max_block):
                    cur.end = max(cur.end, end)
                    cur.members.append(i)
                    continue
        spans.append(Span(start, end, [i]))
    return spans


def _end_key(end: int | None) -> float:
    return float("inf") if end is None else end


def cut(data: bytes, span_start: int, start: int, end: int | None) -> bytes:
    """Return the bytes of ``[start, end)`` out of *data*, which begins at *span_start*."""
    lo = start - span_start
    return data[lo:] if end is None else data[lo : end - span_start]
