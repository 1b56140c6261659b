"""References read before their array's metadata, held as columns until a table can take them.

A kerchunk JSON with its keys in any order (shuffled, or written by a tool that
puts metadata last) gives chunk references before the ``.zarray``/``zarr.json``
that describes their grid. Placing each as a loose entry costs microseconds and
hundreds of bytes, and moving it into a table later costs as much again. The
streaming reader hands such references here instead: each block's keys as one
text (about a byte per character) with integer columns. When an array's metadata
arrives, its references are found in every waiting block at once
(:func:`~refstore.manifest._keyparse.parse_keys`) and put into its table; what no
table takes is placed one by one at the end of the document.

Later entries win, as when a JSON object is read whole: waiting blocks are
applied in the order they were read, and an inline value read for the same key
(which does not wait here) counts by the number of the block it came in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from refstore.manifest._kerchunk import _place
from refstore.manifest._keyparse import parse_keys
from refstore.manifest._table import ChunkTable

if TYPE_CHECKING:
    from refstore.manifest._model import Manifest


@dataclass
class _Batch:
    """References of one block that no table took: keys joined by newlines, and columns."""

    keys: str
    ids: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    seq: int


class Orphans:
    """The references waiting for their array's table, in the order they were read."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.batches: list[_Batch] = []
        #: the block number of each inline value placed for a key that is not metadata
        self.inline_seq: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.batches)

    def add(
        self, keys: list[str] | None, ids: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, seq: int,
        text: str | None = None,
    ) -> None:
        """Keep the references ``keys[j] -> (ids[j], offsets[j], lengths[j])`` read in block *seq*
        (*keys* may be None if *text*, the keys joined by newlines, is given)."""
        if len(ids):
            joined = text if keys is None else "\n".join(keys)
            self.batches.append(_Batch(str(joined), ids.astype(np.int32), offsets, lengths, seq))

    def inline_placed(self, key: str, seq: int) -> None:
        """Note that an inline value for *key* (not a metadata key) was placed in block *seq*."""
        self.inline_seq[key] = seq

    def superseded(self, keys: list[str]) -> None:
        """References for *keys* were just put in a table: inline values given before them go."""
        for key in self.inline_seq.keys() & keys:
            del self.inline_seq[key]
            self.manifest._inline.pop(key, None)

    def adopt(self, table: ChunkTable) -> None:
        """Move every waiting reference that is a chunk key of *table* into it."""
        lead = table.layout.head
        kept: list[_Batch] = []
        for batch in self.batches:
            if lead and not (batch.keys.startswith(lead) or ("\n" + lead) in batch.keys):
                kept.append(batch)
                continue
            flats = parse_keys(table.layout, None, batch.keys)
            taken = flats >= 0
            if self.inline_seq:
                self._settle_inline(batch.keys.split("\n"), taken, batch.seq)
            if taken.any():
                table.put_at(flats[taken], batch.ids[taken], batch.offsets[taken], batch.lengths[taken])
            if taken.all():
                continue
            left = ~taken
            rest = [k for k, keep in zip(batch.keys.split("\n"), left.tolist()) if keep]
            kept.append(_Batch("\n".join(rest), batch.ids[left], batch.offsets[left], batch.lengths[left], batch.seq))
        self.batches = kept

    def _settle_inline(self, keys: list[str], taken: np.ndarray, seq: int) -> None:
        """Of the *taken* keys also given inline: keep the later of the two."""
        inline = self.manifest._inline
        for j in np.flatnonzero(taken).tolist():
            placed = self.inline_seq.get(keys[j])
            if placed is None:
                continue
            if placed > seq:
                taken[j] = False  # the inline value came later
            else:
                del self.inline_seq[keys[j]]
                inline.pop(keys[j], None)

    def flush(self) -> None:
        """Place every reference still waiting as a loose entry, in the order read."""
        manifest = self.manifest
        urls = manifest._urls
        for batch in self.batches:
            for key, uid, offset, length in zip(
                batch.keys.split("\n"), batch.ids.tolist(), batch.offsets.tolist(), batch.lengths.tolist()
            ):
                placed = self.inline_seq.get(key)
                if placed is not None and placed > batch.seq:
                    continue  # an inline value for the key came later
                _place(manifest, key, (urls[uid], offset, length))
        self.batches = []

