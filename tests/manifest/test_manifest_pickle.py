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
