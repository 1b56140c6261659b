"""Pickles of large manifests stay small and load without re-parsing; nothing is lost on the way."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
import zarr

from refstore import Manifest, Reference, ReferenceFileSystem, ReferenceStore
from refstore.errors import SnapshotUnavailable
from refstore.manifest import _snapshot


@pytest.fixture(autouse=True)
def snapshots(tmp_path, monkeypatch):
    """This test's own snapshot directory, and no snapshot mapped or source parsed by an earlier test."""
    root = tmp_path / "snapshots"
    monkeypatch.setenv("REFSTORE_SNAPSHOT_DIR", str(root))
    monkeypatch.setattr(_snapshot, "_mapped", type(_snapshot._mapped)())
    monkeypatch.setattr(_snapshot, "_reopened", type(_snapshot._reopened)())
    return root


def _forget(root):
    """Remove every snapshot file and this process's mapped copies (as on another machine)."""
    for p in root.glob("*.rsnap"):
        p.unlink()
    _snapshot._mapped.clear()


def _big_refs(n_side: int = 300) -> dict:
    meta = {"zarr_format": 2, "shape": [n_side, n_side], "chunks": [1, 1], "dtype": "|u1", "compressor": None,
            "filters": None, "fill_value": 0, "order": "C"}
    refs = {".zgroup": '{"zarr_format": 2}', "a/.zarray": json.dumps(meta)}
    for i in range(n_side):
        for j in range(n_side):
            refs[f"a/{i}.{j}"] = [f"s3://b/f{i % 17}.bin", i * n_side + j, 1]
    return {"version": 1, "refs": refs}


def _write(tmp_path, n_side=300):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(_big_refs(n_side)))
    return str(path)


def test_opened_manifest_pickles_small_and_restores_exactly(tmp_path):
    path = _write(tmp_path)  # 90,000 references
    m = Manifest.open(path)
    blob = pickle.dumps(m)
    assert len(blob) < 2_000
    back = pickle.loads(blob)
    assert dict(back.items()) == dict(m.items())
    assert back.source == path
    # the columns are memory-mapped copy-on-write: edits work and stay private
    back.set("a/0.0", Reference("s3://b/other", 5, 6))
    assert back.get("a/0.0") == Reference("s3://b/other", 5, 6)
    assert m.get("a/0.0") == Reference("s3://b/f0.bin", 0, 1)
    assert pickle.loads(pickle.dumps(m)).get("a/0.0") == Reference("s3://b/f0.bin", 0, 1)


def test_without_the_snapshot_the_source_is_read_again(tmp_path, snapshots):
    path = _write(tmp_path)
    m = Manifest.open(path)
    blob = pickle.dumps(m)
    (written,) = snapshots.glob("*.rsnap")
    _forget(snapshots)  # as on another machine
    assert dict(pickle.loads(blob).items()) == dict(m.items())
    # the source was unchanged: the reopened manifest published the same snapshot for the host
    assert [p.name for p in snapshots.glob("*.rsnap")] == [written.name]


def test_an_edited_manifest_pickles_as_its_snapshot_and_never_as_an_empty_store(tmp_path, snapshots):
    """Edits live only in memory, so the snapshot is the only copy: a pickle that cannot find it
    fails, naming the snapshot, instead of reopening the unedited source."""
    path = _write(tmp_path)
    m = Manifest.open(path)
    m.set("a/1.1", Reference("s3://b/edited", 1, 2))
    blob = pickle.dumps(m)
    assert len(blob) < 1_000
    back = pickle.loads(blob)
    assert back.get("a/1.1") == Reference("s3://b/edited", 1, 2)
    assert dict(back.items()) == dict(m.items())
    (written,) = snapshots.glob("*.rsnap")
    _forget(snapshots)
    gone = pickle.loads(blob)  # (dask unpickles where an exception would hang the task)
    for read in (len, lambda m: m.get("a/1.1"), lambda m: list(m.keys()), lambda m: m.list_dir("a")):
        with pytest.raises(SnapshotUnavailable, match=written.stem) as info:
            read(gone)
    assert str(snapshots) in str(info.value) and "REFSTORE_SNAPSHOT_DIR" in str(info.value)
    assert not isinstance(info.value, FileNotFoundError)  # zarr reads those as missing keys
    with pytest.raises(SnapshotUnavailable):  # never an empty group
        zarr.open_group(ReferenceStore(gone), mode="r")
    assert pickle.dumps(gone) == blob  # passed on unchanged


def test_faces_unpickle_in_another_process(tmp_path):
    data = np.arange(90_000, dtype="u1").reshape(300, 300)
    (tmp_path / "d.bin").write_bytes(data.tobytes())
    refs = _big_refs(300)
    for k, v in refs["refs"].items():
        if isinstance(v, list):
            i, j = map(int, k[2:].split("."))
            refs["refs"][k] = [str(tmp_path / "d.bin"), i * 300 + j, 1]
    path = tmp_path / "local.json"
    path.write_text(json.dumps(refs))
    store = ReferenceStore(str(path))
    fs = ReferenceFileSystem(str(path))
    for obj in (store, fs):
        blob = pickle.dumps(obj)
        assert len(blob) < 5_000
        code = (
            "import pickle, sys, zarr, numpy as np\n"
            "obj = pickle.loads(sys.stdin.buffer.read())\n"
            "store = obj if hasattr(obj, 'get_partial_values') else obj.get_mapper('')\n"
            "a = zarr.open_group(store, mode='r')['a']\n"
            "sys.stdout.write(str(int(np.asarray(a[:3]).astype('u8').sum())))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, check=True)
        assert int(out.stdout) == int(data[:3].astype("u8").sum())
    back = zarr.open_group(pickle.loads(pickle.dumps(store)), mode="r")["a"]
    np.testing.assert_array_equal(back[-3:], data[-3:])


def test_unpickled_copies_share_the_fetcher_and_its_sessions(tmp_path, s3_server):
    """dask unpickles a store once per task and drops it after: each copy built its own S3 client
    (about 0.2 s each against 3 ms for the read; fsspec's instance cache avoided it). Copies of
    one store or filesystem in a process now share its fetcher, so a worker builds one client."""
    data = np.arange(400, dtype="u1")
    url = s3_server.put_bytes("refstore-test", "pickle-share/d.bin", data.tobytes())
    meta = {"zarr_format": 2, "shape": [400], "chunks": [100], "dtype": "|u1", "compressor": None,
            "filters": None, "fill_value": 0, "order": "C"}
    refs = {".zgroup": '{"zarr_format": 2}', "a/.zarray": json.dumps(meta),
            **{f"a/{i}": [url, 100 * i, 100] for i in range(4)}}
    path = tmp_path / "s3.json"
    path.write_text(json.dumps(refs))
    store = ReferenceStore(str(path), remote_options=s3_server.storage_options)
    fs = ReferenceFileSystem(str(path), remote_options=s3_server.storage_options, asynchronous=True)
    for obj in (store, fs):
        fetcher = (obj.engine if obj is store else obj._engine).reader.fetcher
        copy = pickle.loads(pickle.dumps(obj))
        assert (copy.engine if obj is store else copy._engine).reader.fetcher is fetcher
        code = (
            "import gc, pickle, sys, zarr, numpy as np, s3fs\n"
            "built = []\n"
            "original = s3fs.S3FileSystem.set_session\n"
            "async def counted(self, *a, **k):\n"
            "    built.append(self)\n"
            "    return await original(self, *a, **k)\n"
            "s3fs.S3FileSystem.set_session = counted\n"
            "blob = sys.stdin.buffer.read()\n"
            "total = 0\n"
            "for i in range(4):  # one task each, as a dask worker runs them\n"
            "    obj = pickle.loads(blob)\n"
            "    store = obj if hasattr(obj, 'get_partial_values') else obj.get_mapper('')\n"
            "    total += int(zarr.open_group(store, mode='r')['a'][100 * i:100 * i + 100].astype('u8').sum())\n"
            "    del obj, store\n"
            "    gc.collect()\n"
            "sys.stdout.write(f'{total} {len({id(b) for b in built})}')\n"  # set_session runs per call
        )
        out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(obj), capture_output=True, check=False)
        assert out.returncode == 0, out.stderr.decode()
        total, clients = map(int, out.stdout.split())
        assert total == int(data.astype("u8").sum())
        assert clients == 1, f"{type(obj).__name__}: {clients} S3 clients for 4 unpickled copies"


def test_pickles_of_opened_manifests_are_o1_whatever_their_size(tmp_path):
    """Small manifests used to pickle their whole state; with a source they carry only the source."""
    for n_side in (20, 300):  # 400 references (under the snapshot threshold) and 90,000
        folder = tmp_path / str(n_side)
        folder.mkdir()
        m = Manifest.open(_write(folder, n_side))
        blob = pickle.dumps(m)
        assert len(blob) < 2_000, (n_side, len(blob))
        assert dict(pickle.loads(blob).items()) == dict(m.items())
    from_dict = Manifest.from_dict(_big_refs(20))  # no source, small: its state travels
    assert len(pickle.dumps(from_dict)) > 4_000  # 400 references
    from_dict = Manifest.from_dict(_big_refs(300))  # no source, large: its snapshot's hash
    blob = pickle.dumps(from_dict)
    assert len(blob) < 1_000
    assert dict(pickle.loads(blob).items()) == dict(from_dict.items())


def test_unpickling_one_source_many_times_parses_it_once_per_process(tmp_path):
    """As a dask worker does once per task: the copies share one parse's columns, copy-on-write."""
    path = _write(tmp_path, 60)  # 3,600 references: no snapshot, so each unpickle reopens the source
    blob = pickle.dumps(Manifest.open(path))
    copies = [pickle.loads(blob) for _ in range(20)]
    first, second = copies[0]._tables["a"], copies[1]._tables["a"]
    assert np.shares_memory(first.offset, second.offset)  # one parse, shared
    copies[0].set("a/0.0", Reference("s3://b/edited", 7, 8))  # an edit copies that copy's columns only
    assert copies[0].get("a/0.0") == Reference("s3://b/edited", 7, 8)
    assert all(c.get("a/0.0") == Reference("s3://b/f0.bin", 0, 1) for c in copies[1:])
    assert pickle.loads(blob).get("a/0.0") == Reference("s3://b/f0.bin", 0, 1)
    assert not np.shares_memory(copies[0]._tables["a"].offset, second.offset)


def test_a_source_changed_since_is_parsed_again(tmp_path):
    path = _write(tmp_path, 60)
    blob = pickle.dumps(Manifest.open(path))
    before = pickle.loads(blob)
    refs = _big_refs(60)
    refs["refs"]["a/0.0"] = ["s3://b/rewritten.bin", 3, 4]
    with open(path, "w") as f:
        f.write(json.dumps(refs) + " " * 10)  # another size too, whatever the clock's resolution
    after = pickle.loads(blob)
    assert before.get("a/0.0") == Reference("s3://b/f0.bin", 0, 1)
    assert after.get("a/0.0") == Reference("s3://b/rewritten.bin", 3, 4)


def test_a_relative_path_is_resolved_when_opened(tmp_path, monkeypatch):
    _write(tmp_path, 60)
    monkeypatch.chdir(tmp_path)
    m = Manifest.open("big.json")
    blob = pickle.dumps(m)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import pickle, sys; m = pickle.loads(sys.stdin.buffer.read()); print(len(m))"
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, cwd=elsewhere, check=False)
    assert out.returncode == 0, out.stderr.decode()
    assert int(out.stdout) == len(m)


def test_snapshots_of_a_killed_process_are_swept_or_reused(tmp_path, snapshots, monkeypatch):
    """A process killed with SIGKILL runs no exit handler: its lease and its half-written file stay
    behind. The next process on the host removes both, reuses the finished snapshot (same content:
    nothing written), and evicts it past the size bound once no live process leases it."""
    path = _write(tmp_path)  # 90,000 references: pickling writes a snapshot
    code = (
        "import os, pickle, signal, sys\n"
        "from refstore import Manifest\n"
        "from refstore.manifest import _snapshot_file\n"
        "m = Manifest.open(sys.argv[1])\n"
        "pickle.dumps(m)\n"  # a finished snapshot, leased by this process
        "m.set('a/0.0', m['a/0.1'])\n"
        "def killed_midway(enc, tmp):\n"
        "    open(tmp, 'wb').write(enc.head)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "_snapshot_file.write = killed_midway\n"
        "import refstore.manifest._snapshot_store as store; store.write = killed_midway\n"
        "pickle.dumps(m)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, check=False)
    assert out.returncode == -signal.SIGKILL, out.stderr.decode()
    (snap,) = snapshots.glob("*.rsnap")  # the half-written one was never published
    (tmp,) = snapshots.glob(".tmp-*")
    (lease,) = (snapshots / "leases" / snap.stem).iterdir()
    inode = snap.stat().st_ino

    m = Manifest.open(path)  # this process: the same content
    blob = pickle.dumps(m)
    assert snap.exists() and snap.stat().st_ino == inode  # reused, not written again
    assert not tmp.exists() and not lease.exists()  # swept: their process is dead
    assert [p.name for p in snapshots.glob("*.rsnap")] == [snap.name]
    assert [p.name for p in (snapshots / "leases" / snap.stem).iterdir()] == [f"{os.getpid()}@{lease.name.split('@')[1]}"]

    from refstore.manifest import _snapshot_store

    monkeypatch.setenv("REFSTORE_SNAPSHOT_MAX_BYTES", "0")
    assert _snapshot_store.sweep(str(snapshots)) == []  # leased by this live process: kept
    del m
    __import__("gc").collect()  # the lease goes with the manifest
    assert _snapshot_store.sweep(str(snapshots)) == [snap.name]  # then evicted past the bound
    assert dict(pickle.loads(blob).items()) == dict(Manifest.open(path).items())  # reopened
