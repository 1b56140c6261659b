"""Sequential read-ahead: fewer requests for in-order reads, exact bytes always, bounded extra bytes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import zarr
from _datasets import make_contiguous_chunks

from refstore import ReferenceStore
from refstore.fetch import Fetcher
from refstore.fetch._fetcher import ShortRead
from refstore.fetch._readahead import ReadAhead


def _bytes_sent(http, size: int) -> int:
    total = 0
    for rec in http.log:
        if rec.method != "GET" or rec.status not in (200, 206):
            continue
        if rec.range is None:
            total += size
            continue
        lo, _, hi = rec.range.removeprefix("bytes=").partition("-")
        total += min(int(hi) if hi else size - 1, size - 1) - int(lo) + 1
    return total


@pytest.fixture
def blob_url(http, tmp_path):
    blob = np.random.default_rng(11).bytes(3_000_000)
    (tmp_path / "blob.bin").write_bytes(blob)
    return blob, http.serve(tmp_path / "blob.bin", "ra")


def _pieces(total: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    out, pos = [], 0
    while pos < total:
        n = int(rng.integers(1, 20_000))
        out.append((pos, min(pos + n, total)))
        pos += n
    return out


def test_in_order_reads_need_few_requests_and_get_exact_bytes(http, blob_url):
    blob, url = blob_url
    pieces = _pieces(len(blob), 1)

    async def run() -> list[bytes]:
        f = Fetcher(read_ahead=1_000_000)
        try:
            out = []
            for i in range(0, len(pieces), 10):  # like zarr: ten requests in flight at once
                out += await asyncio.gather(*(f.get(url, s, e, exact=True) for s, e in pieces[i : i + 10]))
            return out
        finally:
            await f.close()

    http.reset()
    got = asyncio.run(run())
    assert got == [blob[s:e] for s, e in pieces]
    assert len(pieces) > 250
    assert http.total_gets < 20, http.total_gets
    # at most one window read past the end of what was asked (the end of the file here)
    assert _bytes_sent(http, len(blob)) <= len(blob)


def test_read_ahead_off_reads_each_batch(http, blob_url):
    blob, url = blob_url
    pieces = _pieces(len(blob), 2)[:50]

    async def run() -> list[bytes]:
        f = Fetcher(read_ahead=0)
        try:
            return [await f.get(url, s, e) for s, e in pieces]
        finally:
            await f.close()

    http.reset()
    assert asyncio.run(run()) == [blob[s:e] for s, e in pieces]
    assert http.total_gets == len(pieces)


def test_random_reads_fetch_no_extra_bytes(http, blob_url):
    blob, url = blob_url
    pieces = _pieces(len(blob), 3)
    order = np.random.default_rng(4).permutation(len(pieces))[:80]
    chosen = [pieces[i] for i in order]

    async def run() -> list[bytes]:
        f = Fetcher(read_ahead=1_000_000)
        try:
            return [await f.get(url, s, e) for s, e in chosen]
        finally:
            await f.close()

    http.reset()
    assert asyncio.run(run()) == [blob[s:e] for s, e in chosen]
    needed = sum(e - s for s, e in chosen)
    # one chance neighbour starts no read-ahead (it takes two continuations in a row)
    assert _bytes_sent(http, len(blob)) == needed


def test_reads_past_the_end_of_the_object(http, tmp_path):
    blob = bytes(range(256)) * 400  # 102400 bytes
    (tmp_path / "tail.bin").write_bytes(blob)
    url = http.serve(tmp_path / "tail.bin", "tail")

    async def run() -> tuple[list[bytes], BaseException | None]:
        f = Fetcher(read_ahead=1_000_000)
        try:
            got = [await f.get(url, s, s + 4096, exact=True) for s in range(0, 98304, 4096)]
            try:
                await f.get(url, 100_000, 104_096, exact=True)  # promises bytes beyond the end
            except ShortRead as exc:
                return got, exc
            return got, None
        finally:
            await f.close()

    got, err = asyncio.run(run())
    assert got == [blob[s : s + 4096] for s in range(0, 98304, 4096)]
    assert isinstance(err, ShortRead)


def test_zarr_scan_over_http_reads_ahead(http, tmp_path):
    chunks = make_contiguous_chunks(tmp_path, n_chunks=1024, chunk_bytes=4096)
    url = http.serve(chunks.path, "scan")
    arr = zarr.open_array(ReferenceStore(chunks.refs_v3(url), read_ahead=2_000_000), mode="r")
    http.reset()
    np.testing.assert_array_equal(arr[:], chunks.expected())
    assert http.total_gets <= 12, http.total_gets
    # reading a slice in the middle still returns the right values
    np.testing.assert_array_equal(arr[100_000:300_000], chunks.expected()[100_000:300_000])


def test_failed_block_falls_back_and_cache_stays_bounded():
    data = bytes(range(256)) * 4096  # 1 MiB
    calls: list[tuple[int, int]] = []

    async def reader(url: str, start: int, end: int) -> bytes:
        calls.append((start, end))
        if len(calls) == 1:
            raise OSError("boom")
        return data[start:end]

    async def run() -> None:
        ra = ReadAhead(100_000, min_ahead=50_000, max_cached=250_000)
        blk = ra.register("u", 0, 100_000)
        ra.fill("u", blk, OSError("failed read"))
        assert ra.find("u", 10, 20) is None  # a failed block is forgotten
        for start in range(0, 1_000_000, 100_000):
            b = ra.register("u", start, start + 100_000)
            ra.fill("u", b, data[start : start + 100_000])
            assert ra._cached <= 250_000
        assert ra.find("u", 950_000, 960_000) is not None
        assert ra.find("u", 0, 10) is None  # evicted, least recently used first
        # a range straddling two blocks is served by both
        assert [b.start for b in ra.find("u", 890_000, 910_000)] == [800_000, 900_000]
        # background reads that fail leave no block behind
        assert ra.extend("v", 0, 10) == 10  # first batch: nothing to continue
        assert ra.extend("v", 10, 20) == 20  # one continuation may be chance
        assert ra.extend("v", 5_000, 5_010) == 5_010  # a jump resets the streak
        assert ra.extend("v", 5_010, 5_020) == 5_020
        end = ra.extend("v", 5_020, 5_030)  # two continuations in a row: read ahead
        assert end == 5_030 + 50_000
        blk = ra.register("v", 5_020, end)
        ra.fill("v", blk, data[5_020:end])
        ra.served("v", blk, 40_000, reader)  # past the middle: the next window goes out
        await asyncio.sleep(0.01)
        assert calls == [(end, end + 100_000)]
        assert ra.find("v", end, end + 1) is None
        await ra.close()

    asyncio.run(run())


def test_store_close_closes_sessions_of_zarrs_loop(http, tmp_path):
    chunks = make_contiguous_chunks(tmp_path, n_chunks=16, chunk_bytes=1024)
    url = http.serve(chunks.path, "close")
    store = ReferenceStore(chunks.refs_v3(url))
    np.testing.assert_array_equal(zarr.open_array(store, mode="r")[:], chunks.expected())
    fetcher = store.engine.reader.fetcher
    targets = [t for state in fetcher._states.values() for t in state.targets.values()]
    assert targets and not any(t._session.closed for t in targets)
    store.close()
    assert all(t._session.closed for t in targets)
    assert not fetcher._states
    # the next read makes a new session
    np.testing.assert_array_equal(zarr.open_array(ReferenceStore(store.manifest), mode="r")[:4096], chunks.expected()[:4096])


def test_cancelling_the_request_that_leads_a_batch_spares_the_others(http, blob_url):
    blob, url = blob_url

    async def run() -> tuple[bool, bytes, bytes]:
        f = Fetcher(read_ahead=0, max_gap=-1)
        try:
            http.delay = 0.3
            lead = asyncio.ensure_future(f.get(url, 0, 100))
            other = asyncio.ensure_future(f.get(url, 5_000, 5_100))
            late = asyncio.ensure_future(f.get(url, 9_000, 9_100))
            await asyncio.sleep(0.05)  # all three are in flight in one batch led by the first
            lead.cancel()
            got = await asyncio.gather(other, late)
            try:
                await lead
            except asyncio.CancelledError:
                return True, got[0], got[1]
            return False, got[0], got[1]
        finally:
            http.delay = 0.0
            await f.close()

    cancelled, a, b = asyncio.run(run())
    assert cancelled
    assert a == blob[5_000:5_100] and b == blob[9_000:9_100]
