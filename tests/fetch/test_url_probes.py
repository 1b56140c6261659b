"""Issue 13, URL policy probes: encoded dots, whitespace, symlinks, redirects (GET and HEAD), protocols, JSON.

Each probe is a real request path: a reference is read through the faces from a
loopback server (``tests/_hostile.py``) that resolves ``%2e%2e`` and ``..`` the
way many servers do, and the test asserts both the error and that the private
path was never requested.
"""

from __future__ import annotations

import json
import os

import fsspec
import pytest
import zarr
from _hostile import honest, redirect

from refstore import (
    ReferenceFileSystem,
    ReferenceNotReachable,
    ReferenceStore,
    URLNotAllowed,
    URLPolicy,
)
from refstore.fetch._policy import DEFAULT_PROTOCOLS
from refstore.fetch._urls import canonical_http

PUBLIC = b"public-bytes"
SECRET = b"TOP-SECRET-BYTES"
PRIVATE = "/ok/private/secret.bin"

ESCAPES = [
    "%2e%2e/", ".%2e/", "%2e./", "%2E%2E/", "\t../", "..\t/", "\n../", "..%2f", "%2e%2e%2f", "..%2F",
    "..%5c", "%252e%252e/", "%252e%252e%252f", "x/../../", "./../", "x/%2e%2e/%2e%2e/",
]


@pytest.fixture
def site(hostile):
    hostile.route("/ok/pub/data.bin", honest(PUBLIC))
    hostile.route("/ok/pub/a b.bin", honest(PUBLIC))
    hostile.route(PRIVATE, honest(SECRET))
    return hostile


def _fs(refs, policy, **kwargs):
    return ReferenceFileSystem(refs, url_policy=policy, retries=0, **kwargs)


@pytest.mark.parametrize("escape", ESCAPES)
def test_encoded_dots_and_whitespace_cannot_leave_an_allowed_prefix(site, escape):
    policy = URLPolicy.allow(f"{site.url}/ok/pub/")
    evil = f"{site.url}/ok/pub/{escape}private/secret.bin"
    fs = _fs({"good": [f"{site.url}/ok/pub/data.bin", 0, 6], "evil": [evil, 0, 6]}, policy)
    assert fs.cat("good") == PUBLIC[:6]
    with pytest.raises(URLNotAllowed) as info:
        fs.cat("evil")
    assert isinstance(info.value, PermissionError) and "evil" in str(info.value)
    store = ReferenceStore({"evil": [evil, 0, 6]}, url_policy=policy, retries=0)
    with pytest.raises(URLNotAllowed):
        store.get_sync("evil")
    assert not site.reached(PRIVATE)


def test_what_is_checked_is_what_is_sent(site):
    policy = URLPolicy.allow(f"HTTP://127.0.0.1:{site.port}/ok/pub/")
    base = f"http://127.0.0.1:{site.port}/ok/pub"
    refs = {
        "dots": [f"{base}/sub/../data.bin", 0, 4],
        "escaped": [f"{base}/%64ata.bin", 0, 4],  # %64 is "d", an unreserved character
        "space": [f"{base}/a%20b.bin", 0, 4],
        "raw_space": [f"{base}/a b.bin", 0, 4],
        "host_case": [f"http://127.0.0.1:{site.port}/ok/pub/data.bin#frag", 0, 4],
    }
    fs = _fs(refs, policy)
    for key in refs:
        assert fs.cat(key) == PUBLIC[:4], key
    assert {seen.raw_path for seen in site.log} == {"/ok/pub/data.bin", "/ok/pub/a%20b.bin"}
    for url, _, _ in refs.values():
        canon = canonical_http(url)
        assert canonical_http(canon) == canon


def test_a_prefix_without_a_slash_is_segment_bounded(site):
    site.route("/ok/pub-private/x.bin", honest(SECRET))
    policy = URLPolicy.allow(f"{site.url}/ok/pub")
    fs = _fs({"k": [f"{site.url}/ok/pub-private/x.bin", 0, 4], "ok": [f"{site.url}/ok/pub/data.bin", 0, 4]}, policy)
    assert fs.cat("ok") == PUBLIC[:4]
    with pytest.raises(URLNotAllowed):
        fs.cat("k")
    assert not site.reached("/ok/pub-private/x.bin")


@pytest.mark.parametrize("location", [
    PRIVATE, "/ok/pub/%2e%2e/private/secret.bin", "/ok/pub/..%2fprivate/secret.bin", "../private/secret.bin",
    "file:///etc/passwd", "//127.0.0.2/ok/pub/data.bin", "/ok/pub/\t../private/secret.bin",
])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_every_redirect_hop_is_checked(site, location, method):
    site.route("/ok/pub/jump.bin", redirect(location))
    policy = URLPolicy.allow(f"{site.url}/ok/pub/")
    url = f"{site.url}/ok/pub/jump.bin"
    fs = _fs({"range": [url, 0, 4], "whole": [url]}, policy)
    with pytest.raises((URLNotAllowed, ReferenceNotReachable)) as info:
        if method == "GET":
            fs.cat("range")
        else:
            fs.info("whole")  # the size of a whole-object reference comes from a HEAD
    refused = info.value if isinstance(info.value, URLNotAllowed) else info.value.__cause__
    assert isinstance(refused, URLNotAllowed), info.value
    assert not site.reached(PRIVATE)
    assert [seen.method for seen in site.log] == [method]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_inside_the_policy_are_followed(site, status):
    site.route("/ok/pub/jump.bin", redirect("data.bin", status))
    policy = URLPolicy.allow(f"{site.url}/ok/pub/")
    url = f"{site.url}/ok/pub/jump.bin"
    fs = _fs({"range": [url, 2, 4], "whole": [url]}, policy)
    assert fs.cat("range") == PUBLIC[2:6]
    assert fs.info("whole")["size"] == len(PUBLIC)
    assert fs.cat("whole") == PUBLIC


def test_redirect_loops_end(site):
    site.route("/ok/pub/loop.bin", redirect("/ok/pub/loop.bin"))
    fs = _fs({"k": [f"{site.url}/ok/pub/loop.bin", 0, 4]}, None)
    with pytest.raises(ReferenceNotReachable, match="too many redirects"):
        fs.cat("k")
    assert site.count("/ok/pub/loop.bin") == 6


def test_symlinks_cannot_lead_out_of_an_allowed_directory(tmp_path):
    root, outside = tmp_path / "allowed", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.bin").write_bytes(SECRET)
    (root / "ok.bin").write_bytes(PUBLIC)
    (root / "link.bin").symlink_to(outside / "secret.bin")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    refs = {
        "ok": [str(root / "ok.bin"), 0, 4],
        "file_link": [str(root / "link.bin"), 0, 4],
        "dir_link": [str(root / "dirlink" / "secret.bin"), 0, 4],
        "file_url": ["file://" + str(root / "link.bin"), 0, 4],
        "link_then_dots": ["file://" + str(root / "dirlink") + "/../outside/secret.bin", 0, 4],
    }
    policy = URLPolicy.allow(str(root))
    fs = _fs(refs, policy)
    store = ReferenceStore(refs, url_policy=policy)
    assert fs.cat("ok") == PUBLIC[:4] and store.get_sync("ok").to_bytes() == PUBLIC[:4]
    for key in refs.keys() - {"ok"}:
        with pytest.raises(URLNotAllowed):
            fs.cat(key)
        with pytest.raises(URLNotAllowed):
            store.get_sync(key)
    # a bare path is made absolute lexically before the check, and that is the path opened
    lexical = _fs({"k": [str(root / "dirlink") + "/../outside/secret.bin", 0, 4]}, policy)
    with pytest.raises(ReferenceNotReachable) as info:
        lexical.cat("k")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    # an allowed directory named through a link of its own still works, by either name
    alias = tmp_path / "alias"
    alias.symlink_to(root, target_is_directory=True)
    fs = _fs({"a": [str(alias / "ok.bin"), 0, 4], "b": [str(root / "ok.bin"), 0, 4]}, URLPolicy.allow(str(alias)))
    assert fs.cat("a") == fs.cat("b") == PUBLIC[:4]


def test_a_remote_manifest_may_name_only_the_default_protocols(hostile, tmp_path):
    """A manifest read from a remote URL is a stranger's: ``memory://`` (this process's memory)
    and other unknown protocols are refused unless allowed. The caller's own manifest (a dict,
    a local file) names what it likes, as with fsspec's class (issue 12)."""
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/refstore-issue13/data.bin", PUBLIC)
    refs = {"k": ["memory://refstore-issue13/data.bin", 0, 6]}
    hostile.route("/refs.json", honest(json.dumps(refs).encode()))
    remote = f"{hostile.url}/refs.json"
    try:
        with pytest.raises(URLNotAllowed, match="protocol 'memory'"):
            ReferenceFileSystem(remote).cat("k")
        with pytest.raises(URLNotAllowed, match="protocol 'memory'"):
            ReferenceStore(remote).get_sync("k")
        for policy in (
            URLPolicy(protocols=DEFAULT_PROTOCOLS | {"memory"}, allow_local=False),
            URLPolicy.allow("memory://refstore-issue13/"),
            URLPolicy(protocols=None),
        ):
            assert ReferenceFileSystem(remote, url_policy=policy).cat("k") == PUBLIC[:6]
        (tmp_path / "refs.json").write_text(json.dumps(refs))
        for own in (refs, str(tmp_path / "refs.json")):
            assert ReferenceFileSystem(own).cat("k") == PUBLIC[:6]
            assert ReferenceStore(own).get_sync("k").to_bytes() == PUBLIC[:6]
        assert "memory" not in DEFAULT_PROTOCOLS and {"file", "https", "s3", "gs"} <= DEFAULT_PROTOCOLS
    finally:
        mem.rm_file("/refstore-issue13/data.bin")


def test_the_policy_round_trips_through_json(site, tmp_path):
    policy = URLPolicy.allow(f"{site.url}/ok/pub/", "s3://bucket/data/", protocols=["http", "s3"], allow_local=False)
    description = json.loads(json.dumps(policy.to_dict()))
    assert URLPolicy.from_dict(description) == policy
    assert dict(policy) == policy.to_dict() and URLPolicy.coerce(policy) is policy
    for default in (URLPolicy(), URLPolicy(protocols=None), URLPolicy.for_manifest(True)):
        assert URLPolicy.from_dict(json.loads(json.dumps(default.to_dict()))) == default
    with pytest.raises(ValueError):
        URLPolicy.from_dict({"protocols": ["http"]})
    for loose in (URLPolicy(protocols=frozenset({"http"})), URLPolicy(protocols=None)):  # None fields
        assert json.loads(ReferenceFileSystem({}, url_policy=loose).to_json())["url_policy"] == loose.to_dict()
    refs = {"good": [f"{site.url}/ok/pub/data.bin", 0, 4], "evil": [f"{site.url}/ok/pub/%2e%2e/private/secret.bin", 0, 4]}
    fs = ReferenceFileSystem(refs, url_policy=policy, retries=0)
    text = fs.to_json()
    assert json.loads(text)["url_policy"] == policy.to_dict()
    back = fsspec.AbstractFileSystem.from_json(text)
    assert back.cat("good") == PUBLIC[:4]
    with pytest.raises(URLNotAllowed):
        back.cat("evil")
    # zarr re-creates filesystems from their JSON; a policy must survive that too
    group = zarr.open_group("reference://", mode="r", storage_options={
        "fo": {".zgroup": '{"zarr_format": 2}'}, "url_policy": policy})
    assert dict(group.attrs) == {}
    assert not site.reached(PRIVATE)


def test_bad_prefixes_are_refused_when_the_policy_is_made():
    with pytest.raises(ValueError, match="prefix"):
        URLPolicy.allow("http://h/ok/\tpub/")


def test_local_prefixes_compare_resolved_paths(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    (target / "f.bin").write_bytes(PUBLIC)
    policy = URLPolicy.allow(str(tmp_path / "real") + "/")
    policy.check(str(target / "f.bin"))
    policy.check(os.path.join(str(tmp_path), "x", "..", "real", "f.bin"))
    with pytest.raises(URLNotAllowed):
        policy.check(str(tmp_path / "real-other" / "f.bin"))


@pytest.mark.parametrize("location", ["file:///etc/passwd", "memory://x/y", "ftp://127.0.0.1/x"])
def test_redirects_never_leave_http_even_without_prefixes(site, location):
    site.route("/ok/pub/jump.bin", redirect(location))
    fs = _fs({"k": [f"{site.url}/ok/pub/jump.bin", 0, 4]}, URLPolicy(protocols=None))  # anything allowed
    with pytest.raises(URLNotAllowed, match="http"):
        fs.cat("k")
