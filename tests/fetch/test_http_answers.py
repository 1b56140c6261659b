"""Issue 13, HTTP answer probes: a 206 of another range, a 200 to a range request, bodies past the range.

The server (``tests/_hostile.py``) lies on purpose; a key must get exactly its
own bytes or an error naming the URL and the cause, and a body is never
buffered past what was asked for.
"""

from __future__ import annotations

import asyncio
import time
import warnings

import numpy as np
import pytest
import zarr
from _hostile import flood, honest, ignores_range, wrong_range

from refstore import ReferenceFileSystem, ReferenceNotReachable, ReferenceStore
from refstore.errors import BadResponse, RefstoreWarning
from refstore.fetch._http import HTTPTarget

DATA = np.random.default_rng(13).bytes(300_000)


@pytest.mark.parametrize("kind", ["from0", "whole", "none"])
def test_a_206_of_another_range_is_refused(hostile, kind):
    url = hostile.route(f"/lie/{kind}.bin", wrong_range(DATA, kind))
    refs = {"k": [url, 1000, 500], "tail": [url, 299_000, 1000]}
    fs = ReferenceFileSystem(refs, retries=0, max_gap=-1)
    for key in refs:
        with pytest.raises(ReferenceNotReachable) as info:
            fs.cat(key)
        assert isinstance(info.value.__cause__, BadResponse), info.value.__cause__
        assert url in str(info.value) and key in str(info.value) and "Content-Range" in str(info.value)
    store = ReferenceStore(refs, retries=0)
    with pytest.raises(ReferenceNotReachable) as info:
        store.get_sync("k")
    assert isinstance(info.value.__cause__, BadResponse)


def test_honest_206_answers_still_read_exactly(hostile):
    url = hostile.route("/honest/a.bin", honest(DATA))
    refs = {f"c{i}": [url, i * 997, 997] for i in range(300)}
    refs["past_end"] = [url, 299_900, 100]
    fs = ReferenceFileSystem(refs)
    out = fs.cat(list(refs))
    for key, (_, off, n) in refs.items():
        assert out[key] == DATA[off : off + n]


def test_a_server_ignoring_range_is_read_once_per_url(hostile):
    url = hostile.route("/norange/a.bin", ignores_range(DATA))
    refs = {f"c{i}": [url, i * 1000, 1000] for i in range(300)}
    fs = ReferenceFileSystem(refs, max_gap=-1, read_ahead=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(0, 300, 7):
            assert fs.cat(f"c{i}") == DATA[i * 1000 : i * 1000 + 1000]
        out = fs.cat(list(refs))
    assert all(out[f"c{i}"] == DATA[i * 1000 : i * 1000 + 1000] for i in range(300))
    assert hostile.count("/norange/a.bin") == 1
    ours = [w for w in caught if issubclass(w.category, RefstoreWarning)]
    assert len(ours) == 1 and "ignores Range" in str(ours[0].message) and url in str(ours[0].message)


def test_a_server_ignoring_range_under_concurrent_reads(hostile):
    url = hostile.route("/norange/b.bin", ignores_range(DATA, declare_length=False))
    refs = {f"c{i}": [url, i * 1000, 1000] for i in range(300)}
    refs[".zarray"] = ('{"zarr_format": 2, "shape": [300000], "chunks": [1000], "dtype": "|u1", '
                       '"compressor": null, "filters": null, "fill_value": 0, "order": "C"}')
    refs = {(f"a/{k[1:]}" if k.startswith("c") else f"a/{k}"): v for k, v in refs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RefstoreWarning)
        arr = zarr.open_array(ReferenceStore(refs, max_gap=-1), mode="r", path="a")
        np.testing.assert_array_equal(arr[:], np.frombuffer(DATA, dtype="u1"))
        first = hostile.count("/norange/b.bin")
        np.testing.assert_array_equal(arr[:], np.frombuffer(DATA, dtype="u1"))
    assert hostile.count("/norange/b.bin") == first  # kept after the first whole read


@pytest.mark.parametrize("declare_length", [True, False])
def test_objects_too_large_to_keep_are_streamed_per_range(hostile, declare_length):
    url = hostile.route(f"/norange/big{declare_length}.bin", ignores_range(DATA, declare_length))

    async def go() -> list[bytes]:
        target = HTTPTarget({}, lambda u: None, whole_cache_bytes=10_000)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RefstoreWarning)
                return await target.read(url, [(1000, 2000), (250_000, 250_100), (299_990, None)])
        finally:
            await target.close()

    assert asyncio.run(go()) == [DATA[1000:2000], DATA[250_000:250_100], DATA[299_990:]]


@pytest.mark.parametrize("status", [206, 200])
def test_a_body_longer_than_the_range_is_not_buffered(hostile, status):
    path = f"/flood/{status}.bin"
    total = 600 << 20
    url = hostile.route(path, flood(hostile, path, total, status=status))
    fs = ReferenceFileSystem({"k": [url, 0, 100]}, retries=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RefstoreWarning)
        if status == 206:
            with pytest.raises(ReferenceNotReachable) as info:
                fs.cat("k")
            assert isinstance(info.value.__cause__, BadResponse) and "100 bytes" in str(info.value)
        else:  # a server ignoring Range: the range is cut out of the stream, and the stream dropped
            assert fs.cat("k") == b"z" * 100
    assert time.perf_counter() - start < 20
    time.sleep(0.3)  # let the server notice that the client hung up
    assert hostile.sent.get(path, 0) < 96 << 20, hostile.sent


def test_whole_object_size_without_head(hostile):
    async def no_head(request):
        if request.method == "HEAD":
            from aiohttp import web

            return web.Response(status=405)
        return await honest(DATA)(request)

    url = hostile.route("/nohead/a.bin", no_head)
    fs = ReferenceFileSystem({"w": [url]})
    assert fs.info("w")["size"] == len(DATA)
    assert [seen.range for seen in hostile.log if seen.method == "GET"] == ["bytes=0-0"]
