"""Range merging and the URL policy, as pure functions."""

from __future__ import annotations

import random

import pytest

from refstore import URLNotAllowed, URLPolicy
from refstore.fetch import merge_ranges, normalize
from refstore.fetch._merge import cut


def test_merge_respects_gap_and_block():
    spans = merge_ranges([(0, 10), (10, 20), (30, 40), (100, 110)], max_gap=10, max_block=1000)
    assert [(s.start, s.end) for s in spans] == [(0, 40), (100, 110)]
    spans = merge_ranges([(0, 10), (10, 20), (20, 30)], max_gap=0, max_block=20)
    assert [(s.start, s.end) for s in spans] == [(0, 20), (20, 30)]
    spans = merge_ranges([(0, 10), (10, 20), (0, 10)], max_gap=-1, max_block=1000)
    assert [(s.start, s.end, sorted(s.members)) for s in spans] == [(0, 10, [0, 2]), (10, 20, [1])]


def test_merged_reads_never_return_another_ranges_bytes():
    rng = random.Random(1)
    blob = bytes(rng.getrandbits(8) for _ in range(100_000))
    for _ in range(200):
        ranges = []
        for _ in range(rng.randint(1, 40)):
            start = rng.randint(0, 99_000)
            ranges.append((start, None if rng.random() < 0.05 else start + rng.randint(0, 900)))
        spans = merge_ranges(ranges, max_gap=rng.choice([-1, 0, 100, 10_000]), max_block=rng.choice([50, 5000, 10**9]))
        seen = sorted(m for s in spans for m in s.members)
        assert seen == list(range(len(ranges)))
        for span in spans:
            data = blob[span.start:] if span.end is None else blob[span.start:span.end]
            for m in span.members:
                s, e = ranges[m]
                assert cut(data, span.start, s, e) == (blob[s:] if e is None else blob[s:e])


def test_normalize_resolves_dots_and_aliases():
    assert normalize("s3://Bucket/a/../b/") == "s3://bucket/b/"
    assert normalize("gcs://b/x") == "gs://b/x"
    assert normalize("/tmp/a/../b").startswith("file:///tmp/b")
    assert normalize("local:///tmp/x") == "file:///tmp/x"


def test_policy_prefixes_are_segment_bounded_and_traversal_proof(tmp_path):
    policy = URLPolicy.allow("s3://bucket/data", str(tmp_path))
    policy.check("s3://bucket/data/f.nc")
    policy.check(str(tmp_path / "x.bin"))
    for bad in ("s3://bucket/data2/f.nc", "s3://bucket/data/../secret", "s3://other/data/f",
                str(tmp_path) + "/../x", "http://bucket/data/f"):
        with pytest.raises(URLNotAllowed) as info:
            policy.check(bad, key="k/0")
        assert isinstance(info.value, PermissionError)
        assert "k/0" in str(info.value) and bad in str(info.value)


def test_policy_protocols_and_remote_default():
    URLPolicy(protocols=frozenset({"s3"})).check("s3a://b/k")
    with pytest.raises(URLNotAllowed, match="protocol 'http'"):
        URLPolicy(protocols=frozenset({"s3"})).check("http://h/x")
    remote = URLPolicy.for_manifest(source_is_remote=True)
    remote.check("https://host/f")
    for local in ("/etc/passwd", "file:///etc/passwd", "local:///etc/passwd", "relative/path"):
        with pytest.raises(URLNotAllowed, match="may not read local files"):
            remote.check(local)
    URLPolicy.for_manifest(source_is_remote=False).check("/etc/hostname")
