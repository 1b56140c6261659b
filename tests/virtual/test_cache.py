"""The decoded-chunk cache of assembled virtual chunks: each source chunk fetched and decoded once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import zarr
from _vdata import open_h5_var, read_h5, write_h5
from zarr.core.sync import sync

import refstore
from refstore.virtual import concat, save_virtual
from refstore.virtual._cache import DecodedChunkCache

DAYS = (365, 366, 365)


class CountingStore(refstore.ReferenceStore):
    """A ReferenceStore that counts the reads of each key in its engine (the sources' chunks are keys of it)."""

    def __init__(self, *args, **kwargs) -> None:
        self.gets: Counter[str] = Counter()
        super().__init__(*args, **kwargs)
        engine_get = self.engine.get

        async def counted(key, start=None, end=None):
            self.gets[key] += 1
            return await engine_get(key, start, end)

        self.engine.get = counted  # every face and the virtual arrays' sources read through it


@pytest.fixture(scope="module")
def years(tmp_path_factory: pytest.TempPathFactory) -> tuple[refstore.Manifest, np.ndarray]:
    """Years of 365, 366 and 365 days (chunk 10 along time, zlib): virtual chunk 10 is misaligned."""
    root = tmp_path_factory.mktemp("vcache")
    rng = np.random.default_rng(11)
    paths = []
    for i, days in enumerate(DAYS):
        data = rng.standard_normal((days, 4, 6)).astype("f4")
        paths.append(write_h5(root / f"y{i}.h5", data, (10, 4, 6), "gzip"))
    expected = np.concatenate([read_h5(p) for p in paths])
    return save_virtual({"t": concat([open_h5_var(p) for p in paths])}), expected


def _source_chunk_keys(store: CountingStore) -> dict[int, list[str]]:
    keys = [k for k in store.manifest.keys() if "/.sources/" in k and k[-1].isdigit()]
    return {i: sorted(k for k in keys if k.startswith(f"t/.sources/{i}/")) for i in range(len(DAYS))}


def test_whole_misaligned_read_fetches_each_source_chunk_once(years) -> None:
    manifest, expected = years
    store = CountingStore(manifest)
    np.testing.assert_array_equal(zarr.open_array(store, path="t", mode="r")[:], expected)
    per_source = _source_chunk_keys(store)
    assert [len(v) for v in per_source.values()] == [37, 37, 37]
    for keys in per_source.values():
        assert {k: store.gets[k] for k in keys} == dict.fromkeys(keys, 1)
    cache = store.engine.virtual.cache
    # sources 1 and 2 start mid-chunk (at 365 and 731), so their chunks are read in two parts, via
    # the cache: all 37 of source 1, and 36 of source 2 (its last, [1091, 1096), lies in one virtual chunk)
    assert cache.misses == 37 + 36 and cache.hits == 37 + 36
    assert 0 < cache.nbytes <= cache.max_bytes


def test_without_cache_neighbours_decode_again(years) -> None:
    manifest, expected = years
    store = CountingStore(manifest, decoded_cache_bytes=0)
    arr = zarr.open_array(store, path="t", mode="r")
    for start in range(0, arr.shape[0], 10):  # one virtual chunk at a time: nothing in flight to share
        np.testing.assert_array_equal(arr[start : start + 10], expected[start : start + 10])
    counts = [store.gets[k] for k in _source_chunk_keys(store)[1]]
    assert counts == [2] * 37
    assert len(store.engine.virtual.cache) == 0


def test_concurrent_requests_share_one_decode(years) -> None:
    manifest, expected = years
    store = CountingStore(manifest, decoded_cache_bytes=0)  # nothing kept: only the load in flight is shared
    arr = zarr.open_array(store, path="t", mode="r")
    keys = [f"t/{arr.metadata.encode_chunk_key((c, 0, 0))}" for c in (36, 37)]

    async def both() -> list[bytes | None]:
        return await asyncio.gather(*(store.engine.virtual.get_chunk(k) for k in keys))

    first, second = sync(both())
    assert first is not None and second is not None
    assert store.gets["t/.sources/1/0.0.0"] == 1
    np.testing.assert_array_equal(arr[360:380], expected[360:380])


def test_lru_by_bytes_and_errors() -> None:
    cache = DecodedChunkCache(max_bytes=100)
    loads: Counter[str] = Counter()

    def loader(key: str, nbytes: int):
        async def load() -> np.ndarray:
            loads[key] += 1
            await asyncio.sleep(0)
            return np.zeros(nbytes, "u1")

        return load

    async def scenario() -> None:
        for key in "abc":
            await cache.get(key, loader(key, 40))  # c evicts a (80 + 40 > 100)
        assert cache.nbytes == 80 and len(cache) == 2
        await cache.get("b", loader("b", 40))  # hit: b becomes most recent
        await cache.get("d", loader("d", 40))  # evicts c, the least recently used
        await cache.get("b", loader("b", 40))
        await cache.get("c", loader("c", 40))
        big = await cache.get("big", loader("big", 500))  # larger than the budget: returned, not kept
        assert big.nbytes == 500 and "big" not in cache._chunks
        assert not big.flags.writeable

        async def failing() -> np.ndarray:
            loads["bad"] += 1
            await asyncio.sleep(0)
            raise OSError("disk on fire")

        results = await asyncio.gather(*(cache.get("bad", failing) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, OSError) for r in results) and loads["bad"] == 1
        with pytest.raises(OSError):
            await cache.get("bad", failing)  # a failure is not cached: tried again
        assert loads["bad"] == 2

        # a waiter cancelled while the load runs does not cancel it for the others
        gate = asyncio.Event()

        async def slow() -> np.ndarray:
            await gate.wait()
            return np.ones(8, "u1")

        w1 = asyncio.ensure_future(cache.get("slow", slow))
        w2 = asyncio.ensure_future(cache.get("slow", slow))
        await asyncio.sleep(0)
        w1.cancel()
        gate.set()
        assert (await w2).sum() == 8

    asyncio.run(scenario())
    assert loads == Counter({"a": 1, "b": 1, "c": 2, "d": 1, "big": 1, "bad": 2})
    with pytest.raises(ValueError, match="max_bytes"):
        DecodedChunkCache(-1)


def test_resolver_pickles_and_reads(years, tmp_path: Path) -> None:
    import pickle

    manifest, expected = years
    store = refstore.ReferenceStore(manifest)
    arr = zarr.open_array(store, path="t", mode="r")
    np.testing.assert_array_equal(arr[355:375], expected[355:375])
    copy = pickle.loads(pickle.dumps(store))
    assert len(copy.engine.virtual.cache) == 0 and copy.engine.virtual.cache.max_bytes == store.engine.virtual.cache.max_bytes
    np.testing.assert_array_equal(zarr.open_array(copy, path="t", mode="r")[700:760], expected[700:760])
