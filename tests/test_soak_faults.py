"""Soak: a netCDF4/HDF5 file read again and again through a server that injects faults (issue 13).

The server (:mod:`_faults`) answers each request honestly or with a fault
drawn by seed: delays, stalls past the deadline, connections reset mid-body,
short bodies, lying ``Content-Range``, 5xx/429 bursts with ``Retry-After``,
ignored ``Range``. Each round opens the kerchunk manifest of the file through
``ReferenceStore`` or ``reference://`` (``fsspec.get_mapper``), reads every
variable through zarr and a sample of raw chunks, and compares them with the
source. Every read must give exactly the right values, or raise refstore's
error (``ReferenceNotReachable``, ``DeadlineExceeded``, ``BadResponse``)
within the deadlines: never wrong bytes, never a hang.

CI runs for :data:`SECONDS`; ``REFSTORE_SOAK_SECONDS=600`` soaks by hand.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr
from _datasets import HDF5_DATASETS, kerchunk_refs, read_hdf5
from _faults import FaultyServer

import refstore
from refstore import DeadlineExceeded, Deadlines, ReferenceNotReachable
from refstore.errors import BadResponse

SECONDS = float(os.environ.get("REFSTORE_SOAK_SECONDS", "25"))
SEED = int(os.environ.get("REFSTORE_SOAK_SEED", "13"))
#: Short deadlines: a stalled answer costs half a second, a failing read a few.
FAST = Deadlines(connect=1.0, first_byte=0.5, total=1.0, attempts=3, backoff=0.02, backoff_max=0.1)
#: The longest a read may take: every attempt to its total deadline, the waits, and slack
#: for a loaded machine (two shared cores).
BOUND = FAST.attempts * (FAST.total or 0) + FAST.attempts * FAST.backoff_max + 4.0
ERRORS = (ReferenceNotReachable, DeadlineExceeded, BadResponse)


@pytest.fixture(scope="module")
def soak(hdf5_path: Path) -> Iterator[tuple[FaultyServer, dict[str, Any], bytes]]:
    source = hdf5_path.read_bytes()
    server = FaultyServer({"/data.h5": source}, seed=SEED).start()
    try:
        refs = kerchunk_refs(hdf5_path, server.url + "/data.h5")
        yield server, refs, source
    finally:
        server.stop()


def _chunk_refs(refs: dict[str, Any]) -> list[tuple[str, int, int]]:
    body = refs.get("refs", refs)
    return [(k, v[1], v[2]) for k, v in body.items() if isinstance(v, list) and len(v) == 3]


class Tally:
    """What the soak saw."""

    def __init__(self) -> None:
        self.reads = Counter[str]()
        self.wrong = 0
        self.slowest = 0.0

    def read(self, what: str, fn: Callable[[], Any], check: Callable[[Any], bool]) -> None:
        """Run one read: right values, or one of refstore's errors, within :data:`BOUND`."""
        start = time.monotonic()
        try:
            got = fn()
        except ERRORS as exc:
            self.reads[f"error:{type(exc).__name__}"] += 1
        except Exception as exc:  # e.g. a codec failing on wrong bytes: counted as wrong
            self.wrong += 1
            self.reads[f"WRONG:{what}:{type(exc).__name__}"] += 1
        else:
            if check(got):
                self.reads["right"] += 1
            else:
                self.wrong += 1
                self.reads[f"WRONG:{what}"] += 1
        finally:
            took = time.monotonic() - start
            self.slowest = max(self.slowest, took)
            assert took < BOUND, f"{what}: a read took {took:.1f} s, past the deadlines ({BOUND:.1f} s)"


def _open(face: str, refs: dict[str, Any]) -> tuple[Any, Callable[[str], bytes | None]]:
    """A zarr group over the manifest through *face*, and a raw getter of chunk bytes."""
    if face == "store":
        store = refstore.ReferenceStore(refs, deadlines=FAST)

        def raw(key: str) -> bytes | None:
            buf = store.get_sync(key)
            return None if buf is None else buf.to_bytes()

        return zarr.open_group(store, mode="r"), raw
    mapper = fsspec.get_mapper("reference://", fo=refs, deadlines=FAST, skip_instance_cache=True)
    return zarr.open_group(mapper, mode="r"), mapper.__getitem__


def soak_rounds(server: FaultyServer, refs: dict[str, Any], source: bytes, seconds: float) -> tuple[Tally, int]:
    """Read the dataset in rounds for *seconds*; return what was seen and the number of rounds."""
    expected = read_hdf5_cached(source)
    chunks = _chunk_refs(refs)
    rng = random.Random(SEED)
    tally = Tally()
    rounds = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        rounds += 1
        face = rng.choice(["store", "reference://"])
        group, raw = _open(face, refs)
        for name in HDF5_DATASETS:
            tally.read(f"{face} {name}", lambda name=name, group=group: group[name][...],
                       lambda got, name=name: np.array_equal(got, expected[name]) and got.dtype == expected[name].dtype)
        for key, offset, length in rng.sample(chunks, min(8, len(chunks))):
            tally.read(f"{face} {key}", lambda key=key, raw=raw: raw(key),
                       lambda got, o=offset, n=length: got == source[o : o + n])
    return tally, rounds


@pytest.mark.filterwarnings("ignore::refstore.errors.RefstoreWarning")  # (servers ignoring Range)
def test_every_read_is_right_or_a_refstore_error(soak):
    server, refs, source = soak
    tally, rounds = soak_rounds(server, refs, source, SECONDS)
    print(f"\nsoak: {rounds} rounds in {SECONDS:.0f} s, {server.requests} requests, {server.injected} faults "
          f"injected {dict(server.faults)}, reads {dict(tally.reads)}, slowest read {tally.slowest:.2f} s")
    assert tally.wrong == 0, f"wrong bytes or values: {dict(tally.reads)}"
    assert server.injected > 20, "the soak injected too few faults to mean anything"
    assert tally.reads["right"] > 20, f"almost nothing read right: {dict(tally.reads)}"
    # every kind of fault came up
    assert set(server.faults) >= {"delay", "stall", "reset", "short", "shifted", "no_range", "burst_503",
                                  "burst_429", "error_500", "ignore_range"}, dict(server.faults)


@pytest.mark.filterwarnings("ignore::refstore.errors.RefstoreWarning")
def test_the_soak_sees_wrong_bytes(hdf5_path):
    """The checks are not vacuous: a server sending wrong bytes under honest headers is caught."""
    source = hdf5_path.read_bytes()
    server = FaultyServer({"/data.h5": source}, seed=SEED, lie=True).start()
    try:
        refs = kerchunk_refs(hdf5_path, server.url + "/data.h5")
        tally, _ = soak_rounds(server, refs, source, 3.0)
    finally:
        server.stop()
    assert server.faults["lie"] > 0
    assert tally.wrong > 0


_EXPECTED: dict[int, dict[str, np.ndarray]] = {}


def read_hdf5_cached(source: bytes) -> dict[str, np.ndarray]:
    """The datasets of the source file, as h5py reads them (once)."""
    key = hash(source)
    if key not in _EXPECTED:
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".h5") as f:
            f.write(source)
            f.flush()
            _EXPECTED[key] = read_hdf5(f.name)
    return _EXPECTED[key]
