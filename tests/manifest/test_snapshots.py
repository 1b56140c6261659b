"""Snapshots of pickled manifests: content-addressed, shared by the processes of a host, shipped
through an fsspec URL (moto S3) to a "host" without them, verified, and never an empty store.

Fresh interpreters stand in for dask workers; each is given its own REFSTORE_SNAPSHOT_DIR (or
local cache) to play another host.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from refstore import Manifest, ReferenceStore
from refstore.errors import RefstoreWarning, SnapshotUnavailable
from refstore.manifest import _snapshot, _snapshot_file

N_SIDE = 40  # 1,600 references: made to write snapshots by lowering SMALL


@pytest.fixture(autouse=True)
def snapshots(tmp_path, monkeypatch):
    root = tmp_path / "snapshots"
    monkeypatch.setenv("REFSTORE_SNAPSHOT_DIR", str(root))
    monkeypatch.setattr(_snapshot, "SMALL", 100)
    monkeypatch.setattr(_snapshot, "_mapped", type(_snapshot._mapped)())
    monkeypatch.setattr(_snapshot, "_reopened", type(_snapshot._reopened)())
    return root


def _refs(tmp_path: Path, n_side: int = N_SIDE) -> tuple[dict, np.ndarray]:
    data = (np.arange(n_side * n_side) % 251).astype("u1").reshape(n_side, n_side)
    (tmp_path / "d.bin").write_bytes(data.tobytes())
    meta = {"zarr_format": 2, "shape": [n_side, n_side], "chunks": [1, 1], "dtype": "|u1", "compressor": None,
            "filters": None, "fill_value": 0, "order": "C"}
    refs = {".zgroup": '{"zarr_format": 2}', "a/.zarray": json.dumps(meta)}
    for i in range(n_side):
        for j in range(n_side):
            refs[f"a/{i}.{j}"] = [str(tmp_path / "d.bin"), i * n_side + j, 1]
    return {"version": 1, "refs": refs}, data


def _json(tmp_path: Path) -> str:
    refs, _ = _refs(tmp_path)
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(refs))
    return str(path)


def _snaps(root: Path) -> list[Path]:
    return sorted(root.glob("*.rsnap"))


_SUMMARY = (
    "import pickle, sys\n"
    "m = pickle.loads(sys.stdin.buffer.read())\n"
    "print(len(m), m['a/3.7'].offset, m['a/3.7'].url == sys.argv[1])\n"
)


def _python(code: str, *args: str, blob: bytes = b"", check: bool = True, **env: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", code, *args], input=blob, capture_output=True,
                         env={**os.environ, **env}, check=False)
    if check:
        assert out.returncode == 0, out.stderr.decode()
    return out


def _expected(tmp_path: Path) -> str:
    return f"{N_SIDE * N_SIDE + 2} {3 * N_SIDE + 7} True"


def test_equal_manifests_share_one_snapshot_between_processes(tmp_path, snapshots):
    """Three opens of one manifest, another process opening it, and a process re-pickling what it
    unpickled all name one snapshot, written once; a process on the host maps it without the source."""
    path = _json(tmp_path)
    blobs = {pickle.dumps(Manifest.open(path)) for _ in range(3)}
    assert len(blobs) == 1 and len(next(iter(blobs))) < 1_000
    (snap,) = _snaps(snapshots)
    inode = snap.stat().st_ino
    code = (
        "import pickle, sys\n"
        "from refstore import Manifest\n"
        "from refstore.manifest import _snapshot\n"
        "_snapshot.SMALL = 100\n"
        "theirs = pickle.dumps(Manifest.open(sys.argv[1]))\n"
        "again = pickle.dumps(pickle.loads(sys.stdin.buffer.read()))\n"
        "sys.stdout.buffer.write(theirs + b'|||' + again)\n"
    )
    blob = next(iter(blobs))
    theirs, again = _python(code, path, blob=blob).stdout.split(b"|||")
    assert pickle.loads(theirs).get("a/1.1") == pickle.loads(again).get("a/1.1")
    assert _snaps(snapshots) == [snap] and snap.stat().st_ino == inode  # nothing written again
    os.rename(path, path + ".moved")  # the source is gone: only the snapshot can serve
    assert _python(_SUMMARY, str(tmp_path / "d.bin"), blob=blob).stdout.decode().split() == _expected(tmp_path).split()
    assert blob.find(str(snapshots).encode()) < 0  # no local path travels: each process uses its own setting


def test_a_dict_manifest_ships_by_hash_and_fails_loudly_where_it_is_missing(tmp_path, snapshots):
    refs, _ = _refs(tmp_path)
    m = Manifest.from_dict(refs)
    blob = pickle.dumps(m)
    assert len(blob) < 1_000
    (snap,) = _snaps(snapshots)
    assert _python(_SUMMARY, str(tmp_path / "d.bin"), blob=blob).stdout.decode().split() == _expected(tmp_path).split()
    elsewhere = tmp_path / "elsewhere"
    out = _python(_SUMMARY, "", blob=blob, check=False, REFSTORE_SNAPSHOT_DIR=str(elsewhere))
    err = out.stderr.decode()
    assert out.returncode != 0 and "SnapshotUnavailable" in err
    assert snap.stem in err and str(elsewhere) in err and "REFSTORE_SNAPSHOT_DIR" in err
    assert list(elsewhere.glob("*.rsnap")) == []


def test_small_dict_manifests_carry_their_state(tmp_path, snapshots, monkeypatch):
    monkeypatch.setattr(_snapshot, "SMALL", 20_000)
    refs, _ = _refs(tmp_path)
    m = Manifest.from_dict(refs)
    blob = pickle.dumps(m)
    assert _snaps(snapshots) == [] and len(blob) > 20 * N_SIDE * N_SIDE
    out = _python(_SUMMARY, str(tmp_path / "d.bin"), blob=blob, REFSTORE_SNAPSHOT_DIR=str(tmp_path / "other"))
    assert out.stdout.decode().split() == _expected(tmp_path).split()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_snapshot_is_rebuilt_from_the_source_or_refused(tmp_path, snapshots, damage):
    path = _json(tmp_path)
    opened = Manifest.open(path)
    sourced = pickle.dumps(opened)
    refs, _ = _refs(tmp_path)
    from_dict = Manifest.from_dict({**refs, "refs": {**refs["refs"], "extra": "x"}})
    sourceless = pickle.dumps(from_dict)
    good = {p.name: p.read_bytes() for p in _snaps(snapshots)}
    assert len(good) == 2
    for p in _snaps(snapshots):
        data = bytearray(good[p.name])
        if damage == "truncate":
            data = data[: len(data) - 100]
        else:
            data[len(data) // 2] ^= 1  # same size: only the hash tells
        p.write_bytes(bytes(data))
    _snapshot._mapped.clear()
    with pytest.warns(RefstoreWarning, match="corrupt"):
        back = pickle.loads(sourced)
    assert dict(back.items()) == dict(opened.items())
    with pytest.raises(SnapshotUnavailable, match="corrupt"):
        len(pickle.loads(sourceless))
    # the sourced one was published again, whole; the sourceless one is gone, not kept corrupt
    assert {p.name: p.read_bytes() for p in _snaps(snapshots)} == {
        n: b for n, b in good.items() if n == opened._digest[1] + ".rsnap"
    }


def test_hostile_snapshot_headers_are_refused_unread(tmp_path):
    bad = tmp_path / "x.rsnap"
    cases = [
        b"NOTSNAP!" + bytes(8),
        _snapshot_file.MAGIC + (1 << 40).to_bytes(8, "little") + b"{}",
        _snapshot_file.MAGIC + (2).to_bytes(8, "little") + b"[]" + bytes(60),
    ]
    refs, _ = _refs(tmp_path, 4)
    enc = _snapshot_file.encode(Manifest.from_dict(refs), None, None)
    whole = b"".join(bytes(p) for p in enc.chunks())
    header = json.loads(whole[16 : 16 + int.from_bytes(whole[8:16], "little")])
    header["tables"][0]["columns"][1][2] = 1 << 40  # a column outside the file
    text = json.dumps(header).encode()
    cases.append(_snapshot_file.MAGIC + len(text).to_bytes(8, "little") + text)
    for data in cases:
        bad.write_bytes(data)
        with pytest.raises(_snapshot_file.CorruptSnapshot):
            _snapshot_file.read(str(bad))
    bad.write_bytes(whole)
    assert dict(_snapshot_file.read(str(bad), enc.digest)[0].items()) == dict(Manifest.from_dict(refs).items())


def test_snapshots_ship_through_an_s3_snapshot_dir(tmp_path, s3_server, monkeypatch):
    """The writer uploads; a "host" with an empty local cache downloads once, verified, and maps it."""
    bucket, prefix = "refstore-test", f"snapshots-{uuid.uuid4().hex[:8]}"
    s3_server.ensure_bucket(bucket)
    env = {"REFSTORE_SNAPSHOT_DIR": f"s3://{bucket}/{prefix}",
           "REFSTORE_SNAPSHOT_OPTIONS": json.dumps(s3_server.storage_options),
           "REFSTORE_SNAPSHOT_CACHE": str(tmp_path / "cache-here")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    refs, _ = _refs(tmp_path)
    blob = pickle.dumps(Manifest.from_dict(refs))  # no source: only the shared copy can serve
    (snap,) = _snaps(tmp_path / "cache-here")
    listed = s3_server._client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    assert [o["Key"] for o in listed] == [f"{prefix}/{snap.name}"]
    there = tmp_path / "cache-there"
    out = _python(_SUMMARY, str(tmp_path / "d.bin"), blob=blob, **{**env, "REFSTORE_SNAPSHOT_CACHE": str(there)})
    assert out.stdout.decode().split() == _expected(tmp_path).split()
    assert [p.read_bytes() for p in _snaps(there)] == [snap.read_bytes()]  # downloaded into its cache
    s3_server._client.delete_object(Bucket=bucket, Key=f"{prefix}/{snap.name}")
    out = _python(_SUMMARY, str(tmp_path / "d.bin"), blob=blob, **{**env, "REFSTORE_SNAPSHOT_CACHE": str(there)})
    assert out.stdout.decode().split() == _expected(tmp_path).split()  # from its cache: downloaded once

    # a corrupt shared copy is refused (and not cached)
    s3_server.put_bytes(bucket, f"{prefix}/{snap.name}", snap.read_bytes()[:-1] + b"\x01")
    third = tmp_path / "cache-third"
    out = _python(_SUMMARY, "", blob=blob, check=False, **{**env, "REFSTORE_SNAPSHOT_CACHE": str(third)})
    assert "SnapshotUnavailable" in out.stderr.decode() and "SHA-256" in out.stderr.decode()
    assert _snaps(third) == []

    # a sourced manifest whose source another host cannot read: mapped from the shared copy
    path = _json(tmp_path)
    blob = pickle.dumps(Manifest.open(path))
    os.rename(path, path + ".moved")
    out = _python(_SUMMARY, str(tmp_path / "d.bin"), blob=blob,
                  **{**env, "REFSTORE_SNAPSHOT_CACHE": str(tmp_path / "cache-fourth")})
    assert out.stdout.decode().split() == _expected(tmp_path).split()


def test_a_local_cluster_worker_without_the_snapshot(tmp_path, snapshots):
    """dask workers in other processes, with a snapshot directory of their own (empty): the store
    of an opened manifest reopens its source once and publishes the snapshot there; a dict's fails
    loudly, naming its snapshot."""
    import dask.array as da
    import distributed

    refs, data = _refs(tmp_path)
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(refs))
    worker_dir = tmp_path / "worker-snapshots"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None,
                                  env={"REFSTORE_SNAPSHOT_DIR": str(worker_dir)}) as cluster, \
            distributed.Client(cluster) as client:
        store = ReferenceStore(str(path))
        arr = da.from_zarr(store, component="a", chunks=(10, N_SIDE))
        assert int(client.compute(arr.astype("u8").sum()).result()) == int(data.astype("u8").sum())
        (snap,) = _snaps(snapshots)
        assert [p.name for p in _snaps(worker_dir)] == [snap.name]  # reopened once, published there
        sourceless = ReferenceStore(Manifest.from_dict(refs))
        arr = da.from_zarr(sourceless, component="a", chunks=(10, N_SIDE))
        with pytest.raises(SnapshotUnavailable, match=str(worker_dir)):
            client.compute(arr.sum()).result()


def test_sweeps_evict_the_least_recently_used_unleased_snapshots(tmp_path, monkeypatch):
    from refstore.manifest import _snapshot_store as store

    root = tmp_path / "root"
    root.mkdir()
    names = [f"{c * 64}.rsnap" for c in "abcd"]
    for age, name in zip((400, 300, 200, 100), names):  # a is the least recently used
        (root / name).write_bytes(bytes(1000))
        os.utime(root / name, (0, os.path.getmtime(root / name) - age))
    (root / "leases" / ("a" * 64)).mkdir(parents=True)
    (root / "leases" / ("a" * 64) / f"{os.getpid()}@{store._HOST}").touch()  # a live lease: kept
    monkeypatch.setenv("REFSTORE_SNAPSHOT_MAX_BYTES", "2500")
    assert store.sweep(str(root)) == [names[1], names[2]]  # b, then c: down to 2,000 bytes
    monkeypatch.setenv("REFSTORE_SNAPSHOT_MAX_BYTES", "1000000")
    monkeypatch.setenv("REFSTORE_SNAPSHOT_MAX_AGE", "50")
    assert store.sweep(str(root)) == [names[3]]  # unused for longer than the age bound
    assert [p.name for p in root.glob("*.rsnap")] == [names[0]]


def test_a_packed_url_table_goes_through_a_snapshot(tmp_path, monkeypatch):
    """A dict manifest naming a URL per chunk (packed past PACK_AFTER) pickles as its snapshot and
    comes back with every URL: the snapshot holds the URLs, not the table's repr."""
    from refstore import Reference
    from refstore.manifest import _urls

    monkeypatch.setattr(_urls, "PACK_AFTER", 10)
    refs, _ = _refs(tmp_path)
    for i, key in enumerate(k for k in list(refs["refs"]) if k.startswith("a/") and "zarray" not in k):
        refs["refs"][key] = [f"s3://bucket/tile-{i}-é.bin", 0, 1]
    manifest = Manifest.from_dict(refs)
    assert manifest._urls.packed > 1000
    blob = pickle.dumps(manifest)
    assert len(blob) < 2000 and _snaps(tmp_path / "snapshots")
    monkeypatch.setattr(_snapshot, "_mapped", type(_snapshot._mapped)())
    again = pickle.loads(blob)
    assert dict(again.items()) == dict(manifest.items())
    assert again.get("a/39.39") == Reference("s3://bucket/tile-1599-é.bin", 0, 1)
