"""Issue 13, deadlines and retries on S3 and GCS: one retry policy, refstore's, not three stacked.

The endpoint is the hostile loopback server (``tests/_hostile.py``): alone it
answers 503 or nothing at all; in front of moto or the GCS emulator it is a
proxy that fails the first requests and then forwards the rest. Before,
s3fs (5 tries) x botocore (5 tries) sent 25 requests over 43 s for a
persistent 503, and gcsfs 6 over 33 s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from _hostile import GCS_UNAVAILABLE, S3_SLOW_DOWN, failing, proxy, silent, trickle

from refstore import DeadlineExceeded, Deadlines, ReferenceFileSystem, ReferenceNotReachable
from refstore.fetch._targets import FsspecTarget

DATA = np.random.default_rng(31).bytes(5_000)
FAST = Deadlines(connect=1.0, first_byte=0.5, total=1.0, attempts=2, backoff=0.05, backoff_max=0.2)
SLACK = 3.0
ERROR_BODY = {"s3": (S3_SLOW_DOWN, "application/xml"), "gs": (GCS_UNAVAILABLE, "application/json")}


def _options(protocol: str, endpoint: str) -> dict[str, Any]:
    if protocol == "s3":
        return {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    return {"endpoint_url": endpoint, "token": "anon", "project": "test"}


def _fs(protocol: str, endpoint: str, deadlines: Deadlines, path: str = "bucket/obj") -> ReferenceFileSystem:
    return ReferenceFileSystem(
        {"k": [f"{protocol}://{path}", 10, 100]},
        remote_options=_options(protocol, endpoint),
        deadlines=deadlines,
    )


def _timed(fn):
    start = time.perf_counter()
    try:
        return fn(), time.perf_counter() - start
    except Exception as exc:  # returned for the assertions
        return exc, time.perf_counter() - start


@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_a_persistent_503_is_tried_as_often_as_the_deadlines_say(hostile, protocol):
    body, content_type = ERROR_BODY[protocol]
    hostile.fallback = failing(None, -1, 503, body=body, content_type=content_type)
    fs = _fs(protocol, hostile.url, Deadlines(attempts=3, backoff=0.05, backoff_max=0.1))
    err, took = _timed(lambda: fs.cat("k"))
    assert isinstance(err, ReferenceNotReachable) and not isinstance(err, TimeoutError), err
    assert "503" in str(err) and "gave up after 3 attempts" in str(err), err
    assert len(hostile.log) == 3, hostile.log  # not 25 (s3fs x botocore) nor 6 (gcsfs)
    assert took < 2 * 0.1 + SLACK, took


@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_an_endpoint_that_never_answers_fails_within_the_deadline(hostile, protocol):
    hostile.fallback = silent()
    fs = _fs(protocol, hostile.url, FAST)
    err, took = _timed(lambda: fs.cat("k"))
    assert isinstance(err, DeadlineExceeded) and isinstance(err, TimeoutError), err
    assert '"k"' in str(err) and f"{protocol}://bucket/obj" in str(err) and "gave up after 2 attempts" in str(err)
    assert "no byte for 0.5 s (the first_byte deadline)" in str(err), err
    assert len(hostile.log) == 2, hostile.log
    assert 2 * 0.5 <= took <= FAST.bound + SLACK, took  # type: ignore[operator]


@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_an_endpoint_that_trickles_fails_at_the_total_deadline(hostile, protocol):
    hostile.fallback = trickle(DATA, every=0.2)  # never silent for 0.5 s: only the total (1 s) ends it
    fs = _fs(protocol, hostile.url, FAST)
    err, took = _timed(lambda: fs.cat("k"))
    assert isinstance(err, DeadlineExceeded), err
    assert "deadline 1 s exceeded; gave up after 2 attempts" in str(err), err
    assert len(hostile.log) == 2, hostile.log
    assert 2 * 1.0 <= took <= FAST.bound + SLACK, took  # type: ignore[operator]


def test_s3_503_burst_then_success_through_a_proxy_to_moto(hostile, s3_server):
    s3_server.put_bytes("deadlines", "obj", DATA)
    hostile.fallback = failing(proxy(s3_server.endpoint_url), 2, 503, body=S3_SLOW_DOWN, content_type="application/xml")
    fs = _fs("s3", hostile.url, Deadlines(attempts=3, backoff=0.05), path="deadlines/obj")
    assert fs.cat("k") == DATA[10:110]
    assert len(hostile.log) == 3


def test_s3_retry_after_is_honoured(hostile, s3_server):
    s3_server.put_bytes("deadlines", "later", DATA)
    hostile.fallback = failing(
        proxy(s3_server.endpoint_url), 1, 503, headers={"Retry-After": "1"}, body=S3_SLOW_DOWN,
        content_type="application/xml",
    )
    fs = _fs("s3", hostile.url, Deadlines(backoff=0.01, backoff_max=2), path="deadlines/later")
    assert fs.cat("k") == DATA[10:110]
    first, second = (seen.at for seen in hostile.log)
    assert 1.0 <= second - first <= 1.0 + SLACK, second - first


def test_gcs_503_burst_then_success_through_a_proxy_to_the_emulator(hostile, gcs_server):
    gcs_server.put_bytes("deadlines", "obj", DATA)
    hostile.fallback = failing(proxy(gcs_server.endpoint_url), 2, 503, body=GCS_UNAVAILABLE,
                               content_type="application/json")
    fs = _fs("gs", hostile.url, Deadlines(attempts=3, backoff=0.05), path="deadlines/obj")
    assert fs.cat("k") == DATA[10:110]
    assert len(hostile.log) == 3


def test_what_no_retry_cures_is_tried_once(hostile, s3_server):
    hostile.fallback = proxy(s3_server.endpoint_url)
    s3_server.ensure_bucket("deadlines")
    fs = _fs("s3", hostile.url, Deadlines(attempts=3), path="deadlines/missing")
    with pytest.raises(ReferenceNotReachable) as info:
        fs.cat("k")
    assert isinstance(info.value.__cause__, FileNotFoundError), info.value.__cause__
    assert len(hostile.log) == 1, hostile.log
    hostile.log.clear()
    denied = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    hostile.fallback = failing(None, -1, 403, body=denied, content_type="application/xml")
    with pytest.raises(ReferenceNotReachable) as info:
        _fs("s3", hostile.url, Deadlines(attempts=3)).cat("k")
    assert isinstance(info.value.__cause__, PermissionError), info.value.__cause__
    assert len(hostile.log) == 1, hostile.log


def test_the_filesystems_refstore_builds_try_each_call_once():
    async def built(protocol: str, options: dict[str, Any]) -> Any:
        target = FsspecTarget(protocol, options, deadlines=Deadlines(connect=3, first_byte=7))
        fs = await target._ensure()
        try:
            if protocol == "s3":
                client = await fs.get_s3()
                return fs.retries, client.meta.config.retries, client.meta.config.connect_timeout, \
                    client.meta.config.read_timeout
            return fs._request.__func__ is type(fs)._request.__wrapped__, fs.requests_timeout
        finally:
            await target.close()

    s3 = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s"}
    retries, config, connect, read = asyncio.run(built("s3", s3))
    assert retries == 1 and config["total_max_attempts"] == 1 and (connect, read) == (3, 7)
    # what the caller configured is kept
    mine = {**s3, "config_kwargs": {"retries": {"total_max_attempts": 4}, "read_timeout": 60}}
    _, config, _, read = asyncio.run(built("s3", mine))
    assert config["total_max_attempts"] == 4 and read == 60
    unwrapped, timeout = asyncio.run(built("gs", {"endpoint_url": "http://127.0.0.1:9", "token": "anon"}))
    assert unwrapped and (timeout.sock_connect, timeout.sock_read, timeout.total) == (3, 7, None)
