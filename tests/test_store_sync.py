"""ReferenceStore's synchronous surface (zarr's ``SupportsSyncStore``): ``get_sync`` on every
backend, when zarr is told to use it, and local descriptors under threads (the pipelines that
read through it: tests/test_pipeline.py)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from _datasets import kerchunk_refs
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import refstore
from refstore import ReferenceNotReachable, ReferenceStore, URLNotAllowed, URLPolicy
from refstore.fetch._targets import LocalTarget

PROTO = default_buffer_prototype()
RANGES = (None, RangeByteRequest(1, 5), OffsetByteRequest(3), SuffixByteRequest(4), RangeByteRequest(2, 10**9))


def test_get_sync_matches_get_on_every_backend(remote, hdf5_path) -> None:
    store = ReferenceStore(kerchunk_refs(hdf5_path, remote.upload(hdf5_path)), remote_options=remote.storage_options)
    keys = [k for k in store.manifest.keys() if not k.endswith((".zarray", ".zattrs", ".zgroup"))]
    assert len(keys) > 5
    for key in keys:
        for byte_range in RANGES:
            want = sync(store.get(key, PROTO, byte_range))
            got = store.get_sync(key, prototype=PROTO, byte_range=byte_range)
            assert got is not None and want is not None
            assert got.to_bytes() == want.to_bytes(), (key, byte_range)
    assert store.get_sync("no/such/key") is None
    # only local targets are worth zarr's sync path (see ReferenceStore._supports_sync_io)
    assert store._supports_sync_io is (remote.kind == "local")
    store.close()


def test_get_sync_errors_name_key_and_url(tmp_path: Path, http) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(b"12345")
    missing = tmp_path / "gone.bin"
    refs = {
        "short": [str(short), 0, 10],
        "gone": [str(missing), 0, 4],
        "http_gone": [f"{http.url}/nothing-here.bin", 0, 4],
        "inline": "base64:AAEC",
    }
    store = ReferenceStore(refs)
    for key, url in (("short", str(short)), ("gone", str(missing)), ("http_gone", "nothing-here.bin")):
        with pytest.raises(ReferenceNotReachable) as err:
            store.get_sync(key)
        assert key in str(err.value) and url in str(err.value)
    assert store.get_sync("inline").to_bytes() == b"\x00\x01\x02"
    assert store.get_sync("inline", byte_range=SuffixByteRequest(2)).to_bytes() == b"\x01\x02"

    fenced = ReferenceStore({"a": [str(short), 0, 2]}, url_policy=URLPolicy(allow_local=False))
    with pytest.raises(URLNotAllowed):
        fenced.get_sync("a")


def test_supports_sync_io_follows_edits_and_options(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(32)))
    store = ReferenceStore({"a": [str(path), 0, 8]}, read_only=False)
    assert store._supports_sync_io
    store.manifest.set("b", refstore.Reference("http://example.invalid/x.bin", 0, 8))
    assert not store._supports_sync_io
    store.delete_sync("b")
    assert not store._supports_sync_io  # the URL table keeps the URL; the answer stays conservative
    # file:// URLs with options of their own go through fsspec, not the thread-local reader
    opts = ReferenceStore({"a": [f"file://{path}", 0, 8]}, fs={"file": {"auto_mkdir": True}})
    assert not opts._supports_sync_io
    assert opts.get_sync("a").to_bytes() == bytes(range(8))


def test_local_descriptor_is_not_closed_under_a_read(tmp_path: Path) -> None:
    files = []
    for i in range(3):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(bytes([i]) * 100)
    target = LocalTarget(max_open=1)
    fd = target._acquire(str(files[0]))
    target.read_sync(str(files[1]), [(0, 4)])  # evicts f0 from the LRU while it is in use
    # had f0's descriptor been closed, a newly opened file could reuse its number
    target.read_sync(str(files[2]), [(0, 4)])
    assert os.pread(fd, 4, 0) == b"\x00" * 4
    target._release(fd)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by its last reader


def test_local_reads_from_many_threads_get_their_own_bytes(tmp_path: Path) -> None:
    paths = []
    for i in range(40):
        paths.append(str(tmp_path / f"f{i}"))
        Path(paths[-1]).write_bytes(i.to_bytes(2, "big") * 4096)
    target = LocalTarget(max_open=3)
    barrier = threading.Barrier(8)

    def hammer(seed: int) -> int:
        order = np.random.default_rng(seed).integers(0, len(paths), 400)
        barrier.wait()
        bad = 0
        for i in order:
            (data,) = target.read_sync(paths[i], [(0, 8192)])
            bad += data != int(i).to_bytes(2, "big") * 4096
        return bad

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(hammer, range(8))) == 0
    target.close_sync()
    assert not target._busy and not target._doomed


def test_remembered_local_plans_follow_edits_and_source_checks(tmp_path: Path) -> None:
    """Whole-key sync reads of local files remember each key's plan (refstore._reader): an edit
    of the manifest is seen at the next read, and every read still goes through the fetcher's
    source checks (a short file is an error naming key and URL, not short bytes)."""
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(64)))
    store = ReferenceStore({"a": [str(path), 0, 8], "b": [str(path), 8, 8]}, read_only=False)
    reader = store.engine.reader
    assert store.get_sync("a").to_bytes() == bytes(range(8))
    assert store.get_sync("a").to_bytes() == bytes(range(8))  # from the remembered plan
    assert "a" in reader._local_plans
    store.manifest.set("a", refstore.Reference(str(path), 16, 4))
    assert store.get_sync("a").to_bytes() == bytes(range(16, 20))
    store.manifest.set("a", b"inline")
    assert store.get_sync("a").to_bytes() == b"inline"
    assert store.get_sync("b").to_bytes() == bytes(range(8, 16))
    path.write_bytes(bytes(range(12)))  # now too short for b
    with pytest.raises(ReferenceNotReachable) as err:
        store.get_sync("b")
    assert '"b"' in str(err.value) and str(path) in str(err.value) and "ShortRead" in str(err.value)
    store.close()
