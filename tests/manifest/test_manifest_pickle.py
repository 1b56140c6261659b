"""Pickles of large manifests stay small and load without re-parsing; nothing is lost on the way."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import zarr

from refstore import Manifest, Reference, ReferenceFileSystem, ReferenceStore
from refstore.manifest import _snapshot


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


def test_without_the_snapshot_the_source_is_read_again(tmp_path):
    path = _write(tmp_path)
    m = Manifest.open(path)
    blob = pickle.dumps(m)
    for p in list(_snapshot._written.values()):
        shutil.rmtree(p, ignore_errors=True)  # as on another machine
    assert dict(pickle.loads(blob).items()) == dict(m.items())


def test_an_edited_manifest_carries_its_state(tmp_path):
    path = _write(tmp_path)
    m = Manifest.open(path)
    m.set("a/1.1", Reference("s3://b/edited", 1, 2))
    blob = pickle.dumps(m)
    assert len(blob) > 100_000  # the edit lives only in memory: the state travels with it
    for p in list(_snapshot._written.values()):
        shutil.rmtree(p, ignore_errors=True)
    back = pickle.loads(blob)
    assert back.get("a/1.1") == Reference("s3://b/edited", 1, 2)
    assert dict(back.items()) == dict(m.items())


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
    from_dict = Manifest.from_dict(_big_refs(20))  # no source: nowhere else to come from
    assert len(pickle.dumps(from_dict)) > 4_000  # its state: 400 references


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


def test_snapshots_of_a_killed_process_are_swept(tmp_path):
    """A process killed before its exit handlers ran leaves its snapshot; the next writer removes it."""
    path = _write(tmp_path)  # 90,000 references: pickling writes a snapshot
    root = tmp_path / "snapshots"
    code = (
        "import os, pickle, signal, sys\n"
        "from refstore import Manifest\n"
        "pickle.dumps(Manifest.open(sys.argv[1]))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**__import__("os").environ, "REFSTORE_SNAPSHOT_DIR": str(root)}
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, env=env, check=False)
    assert out.returncode == -9, out.stderr.decode()
    left = [p.name for p in root.iterdir()]
    assert len(left) == 1
    mine = root / f"{__import__('os').getpid()}-live"
    mine.mkdir()  # a live process's snapshot is kept
    assert _snapshot.sweep_stale(str(root)) == left
    assert [p.name for p in root.iterdir()] == [mine.name]
