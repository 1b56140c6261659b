"""Integrity: manifests record what their sources looked like, and reads verify it (``verify=``).

Real parts only: local files, an aiohttp server on loopback whose objects carry ETags, moto S3.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr
from _servers import LoopbackServer
from aiohttp import web
from fsspec.implementations.reference import ReferenceFileSystem as FsspecReferenceFileSystem

import refstore
from refstore.errors import ManifestError, ReferenceNotReachable, SourceChanged
from refstore.manifest import Manifest, Reference, SourceIdentity, record_sources
from refstore.manifest._sources import identity_from_info

N, CHUNK = 64, 8
BUCKET = "refstore-test"  # the bucket of tests/conftest.py


def _manifest(url: str, sources: dict[str, SourceIdentity] | None = None) -> Manifest:
    """A 1-d uint8 array of N values in chunks of CHUNK, all from *url*."""
    m = Manifest()
    m.set(".zgroup", b'{"zarr_format": 2}')
    meta = {"zarr_format": 2, "shape": [N], "chunks": [CHUNK], "dtype": "|u1", "compressor": None,
            "filters": None, "fill_value": 0, "order": "C"}
    m.set("a/.zarray", json.dumps(meta).encode())
    for i in range(N // CHUNK):
        m.set(f"a/{i}", Reference(url, i * CHUNK, CHUNK))
    for u, ident in (sources or {}).items():
        m.sources[u] = ident
    return m


def _rewrite(path: Path, data: bytes) -> None:
    """Write *data* over *path* in place, with an mtime one second later (same size, other bytes)."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def local(tmp_path: Path) -> tuple[Path, str]:
    """A data file and a JSON manifest over it with its identity recorded."""
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(N)))
    m = _manifest(str(data))
    record_sources(m)
    refs = tmp_path / "refs.json"
    m.save(str(refs))
    return data, str(refs)


def _expect_changed(exc: pytest.ExceptionInfo[SourceChanged], key: str, url: str, field: str) -> None:
    err = exc.value
    assert isinstance(err, ReferenceNotReachable) and isinstance(err, RuntimeError)
    assert (err.reference, err.target, err.field) == (key, url, field)
    text = str(err)
    assert key in text and url in text and field in text and repr(err.expected) in text and repr(err.found) in text


# -- the formats ------------------------------------------------------------------------------------


def test_identity_round_trips_json_and_parquet(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(N)))
    m = _manifest(str(data))
    record_sources(m, checksum=True)
    ident = m.sources[str(data)]
    assert ident.size == N and ident.mtime and ident.sha256 == hashlib.sha256(bytes(range(N))).hexdigest()
    doc = m.to_dict()
    assert doc["refstore:sources"] == {str(data): ident.to_json()}
    # written before refs: the streaming JSON reader parsed refs followed by more keys 10x slower
    assert list(doc) == ["version", "refstore:sources", "refs"]
    for name in ("refs.json", "refs.json.gz", "refs.parq"):
        m.save(str(tmp_path / name))
        back = Manifest.open(str(tmp_path / name))
        assert back.sources == {str(data): ident}, name
    assert Manifest.from_dict(doc).sources == m.sources


def test_fsspec_own_reference_filesystem_reads_manifests_with_identity(local: tuple[Path, str], tmp_path: Path) -> None:
    """fsspec's ReferenceFileSystem ignores the 'refstore:sources' places of JSON and parquet."""
    _data, refs = local
    assert "refstore:sources" in json.loads(Path(refs).read_text())
    Manifest.open(refs).save(str(tmp_path / "refs.parq"))
    assert "refstore:sources" in json.loads((tmp_path / "refs.parq" / ".zmetadata").read_text())
    for fo in (refs, str(tmp_path / "refs.parq")):
        fs = FsspecReferenceFileSystem(fo, remote_protocol="file")
        assert fs.cat("a/1") == bytes(range(8, 16))
        assert "refstore:sources" not in fs.ls("", detail=False)
        group = zarr.open_group(fs.get_mapper(""), mode="r", zarr_format=2)
        np.testing.assert_array_equal(group["a"][:], np.arange(N, dtype="u1"))


@pytest.mark.parametrize("bad, field", [
    ({"x": {"size": -1}}, "size"),
    ({"x": {"etag": 5}}, "etag"),
    ({"x": {"mtime": "yesterday"}}, "mtime"),
    ({"x": {"sha256": "abc"}}, "sha256"),
    ({"x": {"colour": "red"}}, "colour"),
    ({"x": [1]}, "object"),
    ([1], "object"),
])
def test_malformed_identity_is_refused_naming_url_and_field(bad: Any, field: str) -> None:
    with pytest.raises(ManifestError, match=field):
        Manifest.from_dict({"version": 1, "refs": {"k": ["x", 0, 1]}, "refstore:sources": bad})


# -- local files ------------------------------------------------------------------------------------


def test_rewritten_local_file_raises_through_store_and_reference_fs(local: tuple[Path, str]) -> None:
    data, refs = local
    store = refstore.ReferenceStore(refs)
    group = zarr.open_group(store, mode="r", zarr_format=2)
    fs = fsspec.filesystem("reference", fo=refs)
    np.testing.assert_array_equal(group["a"][:], np.arange(N, dtype="u1"))
    assert fs.cat("a/1") == bytes(range(8, 16))
    _rewrite(data, bytes(range(1, N + 1)))  # same size, other bytes, later mtime

    with pytest.raises(SourceChanged) as exc:
        store.get_sync("a/2")
    _expect_changed(exc, "a/2", str(data), "mtime")
    with pytest.raises(SourceChanged) as exc:
        group["a"][:]
    assert exc.value.target == str(data) and exc.value.field == "mtime"
    with pytest.raises(SourceChanged) as exc:
        fs.cat("a/1")
    _expect_changed(exc, "a/1", str(data), "mtime")
    with pytest.raises(SourceChanged):
        zarr.open_group(fs.get_mapper(""), mode="r", zarr_format=2)["a"][:]
    # a fresh open says the same: nothing is ever read silently
    with pytest.raises(SourceChanged):
        zarr.open_group(fsspec.filesystem("reference", fo=refs).get_mapper(""), mode="r", zarr_format=2)["a"][:]
    # verify="off" reads the file as it is now
    off = zarr.open_group(refstore.ReferenceStore(refs, verify="off"), mode="r", zarr_format=2)
    np.testing.assert_array_equal(off["a"][:], np.arange(1, N + 1, dtype="u1"))
    assert fsspec.filesystem("reference", fo=refs, verify="off").cat("a/0") == bytes(range(1, 9))


def test_local_file_replaced_after_opening(local: tuple[Path, str], tmp_path: Path) -> None:
    """A file renamed over the one read (a new inode) is not served from the cached descriptor."""
    data, refs = local
    fs = fsspec.filesystem("reference", fo=refs)
    assert fs.cat("a/0") == bytes(range(8))
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(bytes(range(100, 100 + N)))
    os.replace(fresh, data)
    with pytest.raises(SourceChanged) as exc:
        fs.cat("a/0")
    assert exc.value.field in ("mtime", "size")


def test_without_identity_a_replaced_file_is_reopened(tmp_path: Path) -> None:
    """Old manifests (no identity) read as before; a replaced file is read anew, not from the old descriptor."""
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(N)))
    m = _manifest(str(data))
    assert not m.sources and "refstore:sources" not in m.to_dict()
    store = refstore.ReferenceStore(m)
    fs = fsspec.filesystem("reference", fo=m.to_dict())
    assert store.get_sync("a/0").to_bytes() == bytes(range(8))
    assert fs.cat("a/0") == bytes(range(8))
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(bytes(range(100, 100 + N)))
    os.replace(fresh, data)
    assert store.get_sync("a/0").to_bytes() == bytes(range(100, 108))
    assert fs.cat("a/0") == bytes(range(100, 108))
    # verify="off" keeps the descriptor it opened (the old file), as before
    off = refstore.ReferenceStore(m, verify="off")
    assert off.get_sync("a/0").to_bytes() == bytes(range(100, 108))


def test_full_verification_checks_the_checksum(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(N)))
    m = _manifest(str(data))
    record_sources(m, checksum=True)
    st = data.stat()
    data.write_bytes(bytes(range(1, N + 1)))  # other bytes, same size and (restored) mtime
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert refstore.ReferenceStore(m).get_sync("a/0").to_bytes() == bytes(range(1, 9))  # cheap cannot tell
    with pytest.raises(SourceChanged) as exc:
        refstore.ReferenceStore(m, verify="full").get_sync("a/0")
    _expect_changed(exc, "a/0", str(data), "sha256")
    with pytest.raises(ValueError, match="verify"):
        refstore.ReferenceStore(m, verify="paranoid")


# -- HTTP --------------------------------------------------------------------------------------------


class VersionedServer(LoopbackServer):
    """Objects with an ETag and a Last-Modified; ranges; If-Match / If-Unmodified-Since if asked to."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, tuple[bytes, str, datetime]] = {}
        self.preconditions = True
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self._lock = threading.Lock()

    def put(self, path: str, data: bytes, etag: str, when: datetime) -> str:
        self.objects[path] = (data, etag, when)
        return f"{self.url}{path}"

    async def _handle(self, req: web.Request) -> web.StreamResponse:
        path = "/" + req.match_info["tail"]
        with self._lock:
            self.log.append((req.method, path, dict(req.headers)))
        if path not in self.objects:
            return web.Response(status=404)
        data, etag, when = self.objects[path]
        headers = {"ETag": etag, "Last-Modified": format_datetime(when, usegmt=True), "Accept-Ranges": "bytes"}
        if self.preconditions:
            match = req.headers.get("If-Match")
            if match is not None and match.strip() != etag:
                return web.Response(status=412, headers=headers)
            since = req.headers.get("If-Unmodified-Since")
            if since is not None and when.replace(microsecond=0) > datetime.strptime(
                since, "%a, %d %b %Y %H:%M:%S GMT"
            ).replace(tzinfo=UTC):
                return web.Response(status=412, headers=headers)
        if req.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        rng = req.headers.get("Range")
        if rng is None:
            return web.Response(body=data, headers=headers)
        first, _, last = rng.split("=", 1)[1].partition("-")
        start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        return web.Response(status=206, body=data[start : end + 1],
                            headers={**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"})


@pytest.fixture(scope="module")
def versioned() -> Iterator[VersionedServer]:
    server = VersionedServer().start()
    yield server
    server.stop()


T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
T1 = datetime(2024, 5, 2, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("preconditions", [True, False], ids=["server-checks-If-Match", "server-ignores-it"])
def test_http_etag_change_raises(versioned: VersionedServer, preconditions: bool) -> None:
    versioned.preconditions = preconditions
    path = f"/etag-{preconditions}.bin"
    url = versioned.put(path, bytes(range(N)), '"v1"', T0)
    fs = fsspec.filesystem("http", skip_instance_cache=True)
    ident = identity_from_info(fs.info(url))  # what a builder records from the HEAD it does
    assert (ident.size, ident.etag, ident.mtime) == (N, '"v1"', "2024-05-01T12:00:00Z")
    m = _manifest(url, {url: ident})
    store = refstore.ReferenceStore(m)
    group = zarr.open_group(store, mode="r", zarr_format=2)
    versioned.log.clear()
    np.testing.assert_array_equal(group["a"][:], np.arange(N, dtype="u1"))
    methods = [method for method, p, _ in versioned.log if p == path]
    assert "HEAD" not in methods and methods  # verification added no request
    assert all(h.get("If-Match") == '"v1"' for _, p, h in versioned.log if p == path)
    versioned.put(path, bytes(range(1, N + 1)), '"v2"', T1)
    with pytest.raises(SourceChanged) as exc:
        store.get_sync("a/3")
    _expect_changed(exc, "a/3", url, "etag")
    assert (exc.value.expected, exc.value.found) == ('"v1"', '"v2"')
    rfs = fsspec.filesystem("reference", fo=m.to_dict())
    with pytest.raises(SourceChanged):
        rfs.cat("a/0")
    assert refstore.ReferenceStore(m, verify="off").get_sync("a/0").to_bytes() == bytes(range(1, 9))
    versioned.preconditions = True


def test_http_last_modified_only(versioned: VersionedServer) -> None:
    url = versioned.put("/lm.bin", bytes(range(N)), '"x"', T0)
    m = _manifest(url, {url: SourceIdentity(size=N, mtime="2024-05-01T12:00:00Z")})
    assert refstore.ReferenceStore(m).get_sync("a/0").to_bytes() == bytes(range(8))
    assert any("If-Unmodified-Since" in h for _, p, h in versioned.log if p == "/lm.bin")
    versioned.put("/lm.bin", bytes(range(1, N + 1)), '"x"', T1)
    with pytest.raises(SourceChanged) as exc:
        refstore.ReferenceStore(m).get_sync("a/0")
    _expect_changed(exc, "a/0", url, "mtime")


def test_http_size_change_is_seen_in_content_range(versioned: VersionedServer) -> None:
    versioned.preconditions = False
    url = versioned.put("/size.bin", bytes(range(N)), '"s"', T0)
    m = _manifest(url, {url: SourceIdentity(size=N)})
    versioned.put("/size.bin", bytes(range(N + 5)), '"s"', T0)
    with pytest.raises(SourceChanged) as exc:
        refstore.ReferenceStore(m).get_sync("a/0")
    _expect_changed(exc, "a/0", url, "size")
    assert (exc.value.expected, exc.value.found) == (N, N + 5)
    versioned.preconditions = True


def test_http_full_verification_hashes_once(versioned: VersionedServer) -> None:
    data = bytes(range(N))
    url = versioned.put("/full.bin", data, '"f"', T0)
    m = _manifest(url, {url: SourceIdentity(size=N, sha256=hashlib.sha256(data).hexdigest())})
    store = refstore.ReferenceStore(m, verify="full")
    np.testing.assert_array_equal(zarr.open_group(store, mode="r", zarr_format=2)["a"][:], np.arange(N, dtype="u1"))
    bad = _manifest(url, {url: SourceIdentity(sha256="0" * 64)})
    with pytest.raises(SourceChanged) as exc:
        refstore.ReferenceStore(bad, verify="full").get_sync("a/0")
    _expect_changed(exc, "a/0", url, "sha256")
    assert refstore.ReferenceStore(bad).get_sync("a/0").to_bytes() == data[:8]  # cheap: no hash


# -- S3 ------------------------------------------------------------------------------------------------


def test_s3_object_rewritten_in_place_raises(s3_server: Any) -> None:
    key = f"integrity/{os.getpid()}-{id(s3_server)}.bin"
    url = s3_server.put_bytes(BUCKET, key, bytes(range(N)))
    s3 = fsspec.filesystem("s3", skip_instance_cache=True, **s3_server.storage_options)
    ident = identity_from_info(s3.info(url))
    assert ident.etag and ident.size == N and ident.mtime
    m = _manifest(url, {url: ident})
    opts = {"remote_protocol": "s3", "remote_options": s3_server.storage_options}
    store = refstore.ReferenceStore(m, **opts)
    group = zarr.open_group(store, mode="r", zarr_format=2)
    np.testing.assert_array_equal(group["a"][:], np.arange(N, dtype="u1"))
    s3_server.put_bytes(BUCKET, key, bytes(range(1, N + 1)))  # same size, other bytes
    with pytest.raises(SourceChanged) as exc:
        store.get_sync("a/1")
    _expect_changed(exc, "a/1", url, "etag")
    assert exc.value.found and exc.value.found != ident.etag
    with pytest.raises(SourceChanged):
        group["a"][:]
    with pytest.raises(SourceChanged):
        fsspec.filesystem("reference", fo=m.to_dict(), **opts).cat("a/0")
    off = refstore.ReferenceStore(m, verify="off", **opts)
    assert off.get_sync("a/0").to_bytes() == bytes(range(1, 9))


def test_s3_without_etag_checks_info_once(s3_server: Any) -> None:
    key = f"integrity/noetag-{os.getpid()}.bin"
    url = s3_server.put_bytes(BUCKET, key, bytes(range(N)))
    m = _manifest(url, {url: SourceIdentity(size=N + 1)})
    opts = {"remote_protocol": "s3", "remote_options": s3_server.storage_options}
    with pytest.raises(SourceChanged) as exc:
        refstore.ReferenceStore(m, **opts).get_sync("a/0")
    _expect_changed(exc, "a/0", url, "size")


# -- builders record identity ---------------------------------------------------------------------------


def test_builders_record_local_identity(tmp_path: Path) -> None:
    import imagecodecs

    from refstore.build import images
    from refstore.cli._demo import build_sample

    for i in range(2):
        (tmp_path / f"t_{i}.png").write_bytes(imagecodecs.png_encode(np.full((4, 4), i, dtype="u1")))
    m = images(str(tmp_path / "t_*.png"), r"t_(?P<i>\d+)\.png", show_progress=False)
    for i in range(2):
        path = str(tmp_path / f"t_{i}.png")
        assert m.sources[path].size == os.path.getsize(path) and m.sources[path].mtime
    refs, _ = build_sample(str(tmp_path))
    doc = json.loads(Path(refs).read_text())
    assert list(doc["refstore:sources"]) == [os.path.join(str(tmp_path), "sample.bin")]


def test_combine_output_carries_identity(tmp_path: Path) -> None:
    import h5py
    from _datasets import kerchunk_refs

    manifests = []
    for k in range(2):
        h5 = tmp_path / f"f{k}.h5"
        with h5py.File(h5, "w") as f:
            t = f.create_dataset("time", data=np.arange(500 * k, 500 * k + 500, dtype="f8"))
            t.make_scale("time")
            v = f.create_dataset("tas", data=np.full(500, k, dtype="f4"), chunks=(500,))
            v.dims[0].attach_scale(t)
        p = tmp_path / f"f{k}.json"
        p.write_text(json.dumps(kerchunk_refs(h5, str(h5))))
        manifests.append(str(p))
    out = tmp_path / "combined.json"
    refstore.combine(manifests, "time", str(out))
    sources = Manifest.open(str(out)).sources
    assert {str(tmp_path / "f0.h5"), str(tmp_path / "f1.h5")} <= set(sources)
    _rewrite(tmp_path / "f1.h5", (tmp_path / "f1.h5").read_bytes())
    with pytest.raises(SourceChanged) as exc:
        zarr.open_group(refstore.ReferenceStore(str(out)), mode="r")["tas"][:]
    assert exc.value.target == str(tmp_path / "f1.h5")
