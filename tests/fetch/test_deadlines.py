"""Issue 13, deadlines and retries: servers that never answer, trickle, fail in bursts or ask to wait.

Every case runs against a real loopback server that misbehaves on purpose
(``tests/_hostile.py``), with small deadlines so a case takes a second or two;
each asserts the read failed (or succeeded) within ``attempts x total`` plus
the waits, and counts the requests the server saw.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from email.utils import formatdate

import numpy as np
import pytest
import zarr
from _hostile import failing, honest, silent, trickle

import refstore
from refstore import (
    DeadlineExceeded,
    Deadlines,
    ReferenceFileSystem,
    ReferenceNotReachable,
    ReferenceStore,
)
from refstore.fetch import Fetcher, FetchTimeout, TransientError
from refstore.fetch._deadlines import backoff_delay, call_with_retries, retry_after

DATA = np.random.default_rng(13).bytes(10_000)
#: Small deadlines for the hostile cases: a silent server costs 2 x 0.5 s.
FAST = Deadlines(connect=1.0, first_byte=0.5, total=1.0, attempts=2, backoff=0.05, backoff_max=0.2)
#: Slack for a loaded machine (two shared cores).
SLACK = 3.0


def _timed(fn):
    start = time.perf_counter()
    try:
        return fn(), time.perf_counter() - start
    except Exception as exc:  # returned for the assertions
        return exc, time.perf_counter() - start


# -- the policy itself --------------------------------------------------------------------------


def test_defaults_bound_a_read_under_90_seconds():
    d = Deadlines()
    assert (d.connect, d.first_byte, d.total, d.attempts, d.backoff, d.backoff_max) == (10, 20, 25, 3, 0.2, 5)
    assert d.bound == 3 * 25 + 2 * 5 == 85 < 90
    # a silent server: first_byte per attempt; a trickling one: total per attempt
    assert d.attempts * d.first_byte + (d.attempts - 1) * d.backoff_max < 90
    assert Deadlines(total=None).bound is None


def test_backoff_is_capped_exponential_with_jitter():
    # equal jitter: between half and all of min(cap, base * 2**(n-1))
    assert [backoff_delay(n, 0.2, 5, rand=lambda: 1.0) for n in range(1, 8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5, 5]
    assert [backoff_delay(n, 0.2, 5, rand=lambda: 0.0) for n in range(1, 8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.5, 2.5]
    assert backoff_delay(10_000, 0.2, 5) <= 5  # no overflow far along the schedule
    draws = [backoff_delay(3, 0.2, 5) for _ in range(200)]
    assert all(0.4 <= w <= 0.8 for w in draws)
    assert len(set(draws)) > 150  # clients that failed together wait differently
    assert backoff_delay(1, 0.0, 5) == 0.0


def test_retry_after_reads_seconds_and_dates():
    assert retry_after("3") == 3.0
    assert retry_after(" 120 ") == 120.0
    now = time.time()
    assert 9 <= retry_after(formatdate(now + 10, usegmt=True), now=now) <= 10  # type: ignore[operator]
    assert retry_after(formatdate(now - 100, usegmt=True), now=now) == 0.0
    assert retry_after("soon") is None and retry_after(None) is None and retry_after("-1") is None


def test_deadlines_validate_and_round_trip():
    with pytest.raises(ValueError, match="attempts"):
        Deadlines(attempts=0)
    with pytest.raises(ValueError, match="total"):
        Deadlines(total=-1)
    with pytest.raises(ValueError, match="total"):
        Deadlines(total=float("inf"))
    with pytest.raises(ValueError, match="no fields"):
        Deadlines.from_dict({"timeout": 3})
    d = Deadlines(total=60, attempts=5, connect=None)
    assert Deadlines.from_dict(json.loads(json.dumps(d.to_dict()))) == d
    assert Deadlines.from_dict(dict(d)) == d  # it is a mapping of its description
    assert pickle.loads(pickle.dumps(d)) == d
    assert Deadlines.coerce({"total": 60}) == Deadlines(total=60)
    assert Deadlines.coerce(None) == Deadlines()
    assert d.with_retries(0).attempts == 1 and d.with_retries(None) is d


def test_call_with_retries_counts_and_gives_up():
    calls = []
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    async def always_503() -> bytes:
        calls.append(1)
        raise TransientError("HTTP 503 for u")

    async def go() -> BaseException:
        try:
            await call_with_retries(always_503, Deadlines(attempts=5, backoff=1, backoff_max=3), sleep=fake_sleep)
        except TransientError as exc:
            return exc
        raise AssertionError("no error")

    err = asyncio.run(go())
    assert len(calls) == 5 and "HTTP 503 for u; gave up after 5 attempts" in str(err)
    assert not isinstance(err, TimeoutError)
    assert len(waits) == 4 and all(w <= 3 for w in waits) and 0.5 <= waits[0] <= 1 and waits[3] >= 1.5


def test_the_wait_for_a_slot_is_not_counted_in_the_deadline():
    async def go() -> bytes:
        slot = asyncio.Semaphore(1)
        await slot.acquire()  # another read holds the only slot for 0.3 s
        asyncio.get_running_loop().call_later(0.3, slot.release)

        async def quick() -> bytes:
            await asyncio.sleep(0.05)
            return b"ok"

        return await call_with_retries(quick, Deadlines(total=0.2, attempts=1), slot=slot)

    assert asyncio.run(go()) == b"ok"


# -- HTTP: a server that never answers, or trickles ---------------------------------------------


def test_a_server_that_never_answers_fails_within_the_deadline(hostile):
    url = hostile.route("/silent.bin", silent())
    fs = ReferenceFileSystem({"k": [url, 0, 100]}, deadlines=FAST)
    err, took = _timed(lambda: fs.cat("k"))
    assert isinstance(err, DeadlineExceeded) and isinstance(err, TimeoutError), err
    assert isinstance(err, ReferenceNotReachable)  # what fsspec-era code catches
    message = str(err)
    assert '"k"' in message and url in message
    assert "first_byte" in message and "gave up after 2 attempts" in message, message
    assert hostile.count("/silent.bin") == 2
    assert 2 * 0.5 <= took <= FAST.bound + SLACK, took


def test_the_total_deadline_alone_ends_a_silent_read(hostile):
    url = hostile.route("/silent2.bin", silent())
    d = Deadlines(first_byte=None, total=0.5, attempts=3, backoff=0.05, backoff_max=0.1)
    fs = ReferenceFileSystem({"k": [url, 0, 100]}, deadlines=d)
    err, took = _timed(lambda: fs.cat("k"))
    assert isinstance(err, DeadlineExceeded), err
    assert "deadline 0.5 s exceeded; gave up after 3 attempts" in str(err), err
    assert hostile.count("/silent2.bin") == 3
    assert 3 * 0.5 <= took <= d.bound + SLACK  # type: ignore[operator]


def test_a_trickling_server_fails_at_the_total_deadline(hostile):
    # a byte every 0.2 s never trips first_byte (0.5 s), only the total (1 s)
    url = hostile.route("/trickle.bin", trickle(DATA, every=0.2))
    fs = ReferenceFileSystem({"k": [url, 0, 1000]}, deadlines=FAST)
    err, took = _timed(lambda: fs.cat("k"))
    assert isinstance(err, DeadlineExceeded), err
    assert "deadline 1 s exceeded; gave up after 2 attempts" in str(err), err
    assert hostile.count("/trickle.bin") == 2
    assert 2 * 1.0 <= took <= FAST.bound + SLACK, took  # type: ignore[operator]


def test_a_slow_but_steady_answer_within_the_deadline_still_reads(hostile):
    url = hostile.route("/slow.bin", trickle(DATA, every=0.05))
    fs = ReferenceFileSystem({"k": [url, 10, 8]}, deadlines=FAST)
    assert fs.cat("k") == DATA[10:18]
    assert hostile.count("/slow.bin") == 1


def test_zarr_reads_of_a_silent_server_raise_timeout_error(hostile):
    url = hostile.route("/zarr-silent.bin", silent())
    refs = {
        "a/.zarray": json.dumps({"zarr_format": 2, "shape": [4], "chunks": [2], "dtype": "|u1", "compressor": None,
                                 "filters": None, "fill_value": 0, "order": "C"}),
        "a/0": [url, 0, 2], "a/1": [url, 2, 2],
    }
    arr = zarr.open_array(ReferenceStore(refs, deadlines=FAST), mode="r", path="a")
    err, took = _timed(lambda: arr[:])
    assert isinstance(err, TimeoutError) and isinstance(err, DeadlineExceeded), err
    assert took <= FAST.bound + SLACK, took  # type: ignore[operator]


def test_size_of_a_whole_object_reference_has_the_deadline_too(hostile):
    url = hostile.route("/silent-head.bin", silent())
    fs = ReferenceFileSystem({"w": [url]}, deadlines=FAST)
    err, took = _timed(lambda: fs.info("w"))
    assert isinstance(err, DeadlineExceeded) and "gave up after 2 attempts" in str(err), err
    assert hostile.count("/silent-head.bin", "HEAD") == 2
    assert took <= FAST.bound + SLACK  # type: ignore[operator]


def test_requests_waiting_on_a_read_ahead_block_of_a_silent_server_fail_with_it(hostile):
    """A scan whose read-ahead block meets a server gone silent: the requests waiting on the
    block get its failure, rather than a second round of attempts of their own."""
    big = np.random.default_rng(7).bytes(4 << 20)
    answered = [0]

    async def goes_silent(request):
        if answered[0] < 3:  # two direct reads and the first read-ahead block, then nothing
            answered[0] += 1
            return await honest(big)(request)
        return await silent()(request)

    url = hostile.route("/scan.bin", goes_silent)

    async def scan() -> tuple[list[object], float]:
        fetcher = Fetcher(deadlines=FAST, read_ahead=1 << 20)
        out: list[object] = []
        start = time.perf_counter()
        try:
            for offset in range(0, 2 << 20, 64 << 10):
                try:
                    out.append(await fetcher.get(url, offset, offset + (64 << 10), exact=True))
                except Exception as exc:  # kept for the assertions
                    out.append(exc)
                    break
        finally:
            await fetcher.close()
        return out, time.perf_counter() - start

    out, took = asyncio.run(scan())
    assert all(piece == big[i * (64 << 10) : (i + 1) * (64 << 10)] for i, piece in enumerate(out[:-1]))
    assert isinstance(out[-1], FetchTimeout) and "gave up after 2 attempts" in str(out[-1]), out[-1]
    assert hostile.count("/scan.bin") == 3 + FAST.attempts, hostile.log  # the block's attempts only
    assert took <= FAST.bound + SLACK, took  # type: ignore[operator]


# -- HTTP: 503 bursts, 429 with Retry-After -----------------------------------------------------


def test_a_503_burst_is_retried_to_the_right_bytes(hostile):
    url = hostile.route("/burst.bin", failing(honest(DATA), 2, 503))
    fs = ReferenceFileSystem({"k": [url, 100, 50]}, deadlines=Deadlines(attempts=3, backoff=0.05))
    assert fs.cat("k") == DATA[100:150]
    assert hostile.count("/burst.bin") == 3


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(hostile, status):
    url = hostile.route("/wait.bin", failing(honest(DATA), 1, status, headers={"Retry-After": "1"}))
    fs = ReferenceFileSystem({"k": [url, 0, 10]}, deadlines=Deadlines(backoff=0.01, backoff_max=2))
    assert fs.cat("k") == DATA[:10]
    first, second = (seen.at for seen in hostile.log if seen.path == "/wait.bin")
    assert 1.0 <= second - first <= 1.0 + SLACK, second - first  # not the 5-10 ms backoff


def test_a_retry_after_longer_than_the_cap_ends_the_retries_at_once(hostile):
    url = hostile.route("/later.bin", failing(honest(DATA), -1, 503, headers={"Retry-After": "3600"}))
    fs = ReferenceFileSystem({"k": [url, 0, 10]})
    err, took = _timed(lambda: fs.cat("k"))
    assert isinstance(err, ReferenceNotReachable) and not isinstance(err, TimeoutError), err
    assert "asked to retry after 3600 s" in str(err) and "backoff_max" in str(err), err
    assert hostile.count("/later.bin") == 1 and took < SLACK


def test_a_persistent_503_gives_up_after_the_attempts(hostile):
    url = hostile.route("/down.bin", failing(honest(DATA), -1, 503))
    d = Deadlines(attempts=4, backoff=0.05, backoff_max=0.1)
    fs = ReferenceFileSystem({"k": [url, 0, 10]}, deadlines=d)
    err, took = _timed(lambda: fs.cat("k"))
    assert isinstance(err, ReferenceNotReachable) and not isinstance(err, TimeoutError), err
    assert "HTTP 503" in str(err) and "gave up after 4 attempts" in str(err) and url in str(err)
    assert isinstance(err.__cause__, TransientError)
    assert hostile.count("/down.bin") == 4
    assert took <= 3 * 0.1 + SLACK


def test_the_retries_keyword_still_counts_attempts_after_the_first(hostile):
    url = hostile.route("/down2.bin", failing(honest(DATA), -1, 500))
    for retries, seen in ((0, 1), (2, 3)):
        hostile.log.clear()
        fs = ReferenceFileSystem({"k": [url, 0, 10]}, retries=retries, deadlines={"backoff": 0.01})
        with pytest.raises(ReferenceNotReachable, match=f"gave up after {seen} attempt"):
            fs.cat("k")
        assert hostile.count("/down2.bin") == seen
    assert ReferenceStore({"k": [url, 0, 10]}, retries=5).engine.reader.fetcher.deadlines.attempts == 6


def test_errors_that_no_retry_cures_are_not_retried(hostile):
    url = hostile.route("/gone.bin", failing(honest(DATA), -1, 403))
    fs = ReferenceFileSystem({"k": [url, 0, 10]})
    with pytest.raises(ReferenceNotReachable, match="HTTP 403"):
        fs.cat("k")
    assert hostile.count("/gone.bin") == 1


# -- the option travels: pickles, fsspec JSON, both faces -----------------------------------------


def test_deadlines_travel_with_pickles_and_json(hostile):
    url = hostile.route("/p.bin", honest(DATA))
    d = Deadlines(total=7, attempts=2)
    fs = ReferenceFileSystem({"k": [url, 0, 10]}, deadlines=d)
    assert pickle.loads(pickle.dumps(fs))._engine.reader.fetcher.deadlines == d
    again = ReferenceFileSystem.from_json(fs.to_json())
    assert again._engine.reader.fetcher.deadlines == d and again.cat("k") == DATA[:10]
    store = ReferenceStore({"k": [url, 0, 10]}, deadlines={"total": 7, "attempts": 2})
    assert pickle.loads(pickle.dumps(store)).engine.reader.fetcher.deadlines == d
    assert refstore.Deadlines is Deadlines


def test_fetch_timeouts_are_transient_timeout_errors():
    err = FetchTimeout("deadline 1 s exceeded", retry_after=None)
    assert isinstance(err, TransientError) and isinstance(err, TimeoutError) and isinstance(err, OSError)
    back = pickle.loads(pickle.dumps(TransientError("HTTP 429", retry_after=2.0)))
    assert back.retry_after == 2.0 and str(back) == "HTTP 429"
    boxed = DeadlineExceeded("k", "http://h/x", err)
    assert str(pickle.loads(pickle.dumps(boxed))) == str(boxed)
