"""Lazy parquet manifests: what is read when, the LRU bound, edits, pickling, writing, remote reads.

Inputs are written by kerchunk's own ``refs_to_dataframe`` and answers are
compared with fsspec's ``LazyReferenceMapper`` reading the same files.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import threading
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr

from refstore import (
    KeyNotInManifest,
    Manifest,
    ManifestError,
    Reference,
    ReferenceFileSystem,
    ReferenceStore,
    URLNotAllowed,
)
from refstore.manifest._lazy import LazyParquetManifest, ParquetSource, is_lazy

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
kdf = pytest.importorskip("kerchunk.df")

GRID = (5, 4, 3)
CHUNK = (2, 2, 2)
N = int(np.prod(GRID))
RECORD = 7  # does not divide the 60 chunks: the last file is partial
MISSING = {(0, 0, 2), (1, 3, 0), (4, 3, 2)}
INLINE = (2, 1, 1)
WHOLE_KEY = (3, 0, 0)
CHUNK_BYTES = 2 * 2 * 2 * 4


def _zarray() -> dict[str, Any]:
    return {"shape": [10, 8, 6], "chunks": list(CHUNK), "dtype": "<i4", "compressor": None, "filters": None,
            "fill_value": -1, "order": "C", "zarr_format": 2}


def _refs(data_url: str, whole_url: str) -> dict[str, Any]:
    refs: dict[str, Any] = {".zgroup": json.dumps({"zarr_format": 2}), "d/.zarray": json.dumps(_zarray()),
                            "d/.zattrs": json.dumps({"_ARRAY_DIMENSIONS": ["z", "y", "x"]})}
    for flat, idx in enumerate(np.ndindex(GRID)):
        if idx in MISSING:
            continue
        refs["d/" + ".".join(map(str, idx))] = [data_url, flat * CHUNK_BYTES, CHUNK_BYTES]
    refs["d/" + ".".join(map(str, INLINE))] = "base64:" + __import__("base64").b64encode(b"\x07" * CHUNK_BYTES).decode()
    refs["d/" + ".".join(map(str, WHOLE_KEY))] = [whole_url]
    return refs


@pytest.fixture
def dataset(tmp_path: Path) -> dict[str, Any]:
    """A kerchunk parquet manifest over a local data file, with missing, inline and whole-object chunks."""
    values = np.arange(N * 8, dtype="<i4")
    data = tmp_path / "data.bin"
    data.write_bytes(values.tobytes())
    whole = tmp_path / "whole.bin"
    whole.write_bytes(np.full(8, 42, "<i4").tobytes())
    refs = _refs(str(data), str(whole))
    out = str(tmp_path / "k.parq")
    kdf.refs_to_dataframe({"version": 1, "refs": refs}, out, record_size=RECORD)
    return {"path": out, "refs": refs, "values": values, "dir": tmp_path}


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names (relative to the manifest root) of every file a lazy manifest reads."""
    seen: list[str] = []
    original = ParquetSource.read

    def read(self: ParquetSource, fn: str) -> bytes:
        seen.append(fn[len(self.root) + 1 :])
        return original(self, fn)

    monkeypatch.setattr(ParquetSource, "read", read)
    return seen


def _key(idx: tuple[int, ...]) -> str:
    return "d/" + ".".join(map(str, idx))


def _fsspec_entry(mapper: Any, key: str) -> Any:
    try:
        value = mapper[key]
    except KeyError:
        return None
    if isinstance(value, (bytes, str)):
        return value.encode() if isinstance(value, str) else value
    value = list(value)
    if not isinstance(value[0], str):
        return None  # fsspec with fastparquet (pandas 3) returns [nan] for a null path: a missing chunk
    return Reference(value[0], 0, None) if len(value) == 1 else Reference(value[0], int(value[1]), int(value[2]))


@pytest.mark.parametrize("engine", ["fastparquet", "pyarrow"])
def test_every_chunk_agrees_with_fsspec(dataset, engine):
    """Partition number and row from the C-order index, exactly as fsspec's LazyReferenceMapper reads them."""
    pytest.importorskip(engine)
    from fsspec.implementations.reference import LazyReferenceMapper

    mapper = LazyReferenceMapper(dataset["path"], engine=engine)
    m = Manifest.open(dataset["path"])
    assert is_lazy(m)
    for idx in np.ndindex(GRID):
        key = _key(idx)
        assert m.get(key) == _fsspec_entry(mapper, key), key
    assert m[_key(INLINE)] == b"\x07" * CHUNK_BYTES
    assert m[_key(WHOLE_KEY)].length is None
    assert all(m.get(_key(i)) is None for i in MISSING)


def test_open_reads_only_zmetadata(dataset, reads):
    m = Manifest.open(dataset["path"])
    assert reads == [".zmetadata"]
    assert json.loads(m["d/.zattrs"]) == {"_ARRAY_DIMENSIONS": ["z", "y", "x"]}
    assert m.list_dir("") == ([".zgroup"], ["d"])
    keys = m.keys()
    assert {next(keys) for _ in range(3)} == {".zgroup", "d/.zarray", "d/.zattrs"}  # metadata comes first
    assert reads == [".zmetadata"]
    m.get("d/0.0.1")  # flat 1: partition 0
    m.get("d/0.1.0")  # flat 3: partition 0 again, from the cache
    assert reads == [".zmetadata", "d/refs.0.parq"]
    m.get("d/4.3.1")  # flat 58: partition 8, row 2
    assert reads[-1] == "d/refs.8.parq" and len(reads) == 3


def test_lru_holds_at_most_cache_size_partitions(dataset, reads):
    m = Manifest.open(dataset["path"], cache_size=2)
    for flat in range(0, N, RECORD):  # one key in each of the 9 partitions
        m.get(_key(np.unravel_index(flat, GRID)))
        assert m._parquet.cached() <= 2
    assert len(reads) == 1 + 9
    m.get(_key(np.unravel_index(8 * RECORD, GRID)))  # the most recent partition: cached
    assert len(reads) == 10
    m.get(_key(np.unravel_index(0, GRID)))  # evicted long ago: read again
    assert reads[-1] == "d/refs.0.parq" and len(reads) == 11
    assert 0 < m.nbytes() < 2 * RECORD * 21 + 2000


def test_cache_size_zero_keeps_nothing(dataset, reads):
    m = Manifest.open(dataset["path"], cache_size=0)
    assert m["d/0.0.1"].offset == CHUNK_BYTES
    assert m["d/0.0.1"].offset == CHUNK_BYTES
    assert reads.count("d/refs.0.parq") == 2 and m._parquet.cached() == 0
    with pytest.raises(ValueError, match="cache_size"):
        Manifest.open(dataset["path"], cache_size=-1)
    unbounded = Manifest.open(dataset["path"], cache_size=None)
    assert len(list(unbounded.keys())) == len(dataset["refs"]) and unbounded._parquet.cached() == 9


def test_iterating_keys_is_bounded_and_complete(dataset):
    m = Manifest.open(dataset["path"], cache_size=1)
    expected = set(dataset["refs"])
    got = list(m.keys())
    assert len(got) == len(set(got)) and set(got) == expected
    assert m._parquet.cached() == 1
    assert len(m) == len(expected)
    assert dict(m.items()) == dict(m.load().items())


def test_len_and_load_do_not_fill_the_cache(dataset):
    m = Manifest.open(dataset["path"], cache_size=4)
    assert len(m) == len(dataset["refs"])
    eager = m.load()
    assert not is_lazy(eager) and m._parquet.cached() == 0
    assert {k: eager[k] for k in eager.keys()} == {k: m[k] for k in m.keys()}


def test_list_dir_reads_only_the_partitions_of_the_prefix(tmp_path, reads):
    """zarr v3 keys: the chunks under ``c/2`` are one contiguous range of the C order."""
    meta = {"zarr_format": 3, "node_type": "array", "shape": [6, 5], "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, 1]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": [{"name": "bytes"}]}
    refs = {"a/zarr.json": json.dumps(meta)}
    refs.update({f"a/c/{i}/{j}": ["s3://b/x", 5 * i + j, 1] for i in range(6) for j in range(5) if (i + j) % 4})
    Manifest.from_dict(refs).save(str(tmp_path / "v3.parq"), record_size=4)
    m = Manifest.open(str(tmp_path / "v3.parq"))
    del reads[:]
    files, dirs = m.list_dir("a/c/2")  # flats 10..14: partitions 2 and 3
    assert (files, dirs) == ([str(j) for j in range(5) if (2 + j) % 4], [])
    assert sorted(reads) == ["a/refs.2.parq", "a/refs.3.parq"]
    assert m.list_dir("a/c") == ([], [str(i) for i in range(6)])
    assert m.list_dir("a/c/9") == ([], []) and m.list_dir("a/c/02") == ([], [])
    assert m.list_dir("a") == (["zarr.json"], ["c"])


def test_missing_partition_and_null_rows_read_as_fill(dataset):
    """A deleted partition file holds no chunks: zarr fills them, and the rest reads normally."""
    os.remove(Path(dataset["path"]) / "d" / "refs.1.parq")  # flats 7..13
    m = Manifest.open(dataset["path"])
    for flat in range(7, 14):
        assert m.get(_key(np.unravel_index(flat, GRID))) is None
    arr = zarr.open_array(ReferenceStore(dataset["path"]), path="d", mode="r", zarr_format=2)
    got = arr[...]
    values = dataset["values"]
    for flat, idx in enumerate(np.ndindex(GRID)):
        block = got[tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, CHUNK))]
        if 7 <= flat < 14 or idx in MISSING:
            assert (block == -1).all(), idx
        elif idx == INLINE:
            assert (block == 0x07070707).all()
        elif idx == WHOLE_KEY:
            assert (block == 42).all()
        else:
            np.testing.assert_array_equal(block.ravel(), values[flat * 8 : flat * 8 + 8], err_msg=str(idx))


def _write_partition(path: Path, columns: dict[str, Any]) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    path.write_bytes(buf.getvalue())


def test_corrupt_partitions_raise_naming_key_and_file(dataset):
    root = Path(dataset["path"]) / "d"
    (root / "refs.2.parq").write_bytes(b"not parquet at all")
    _write_partition(root / "refs.3.parq", {"path": ["f"] * 7, "offset": [0, 1, -5, 0, 0, 0, 0], "size": [1] * 7,
                                           "raw": pa.nulls(7, pa.binary())})
    _write_partition(root / "refs.4.parq", {"path": ["f"] * 7, "offset": ["0"] * 7, "size": [1] * 7})
    _write_partition(root / "refs.5.parq", {"path": ["f"] * 8, "offset": [0] * 8, "size": [1] * 8})
    m = Manifest.open(dataset["path"])
    key2 = _key(np.unravel_index(15, GRID))
    with pytest.raises(ManifestError, match="refs.2.parq") as err:
        m.get(key2)
    assert repr(key2) in str(err.value)
    with pytest.raises(ManifestError, match=r"negative offset.*refs\.3\.parq.*row 2"):
        m.get(_key(np.unravel_index(21, GRID)))
    with pytest.raises(ManifestError, match=r"refs\.4\.parq.*'offset' must hold integers"):
        m.get(_key(np.unravel_index(28, GRID)))
    with pytest.raises(ManifestError, match=r"refs\.5\.parq.*8 rows, more than record_size 7"):
        m.get(_key(np.unravel_index(35, GRID)))
    assert m["d/0.0.1"].offset == CHUNK_BYTES  # other partitions are unaffected
    store = ReferenceStore(dataset["path"])
    with pytest.raises(ManifestError, match="refs.2.parq"):
        zarr.open_array(store, path="d", mode="r", zarr_format=2)[...]


def test_malformed_zmetadata(tmp_path):
    root = tmp_path / "bad.parq"
    root.mkdir()
    for text, field in [('{"metadata": {}}', "record_size"), ('{"metadata": [], "record_size": 5}', "metadata"),
                        ('{"metadata": {}, "record_size": 0}', "record_size"), ("[1", "not valid JSON")]:
        (root / ".zmetadata").write_text(text)
        with pytest.raises(ManifestError, match=field):
            Manifest.open(str(root))
    (root / ".zmetadata").write_text('{"metadata": {"../x/.zarray": {}}, "record_size": 5}')
    with pytest.raises(ManifestError, match=r"\.\./x/\.zarray"):
        Manifest.open(str(root))
    with pytest.raises(FileNotFoundError):
        Manifest.open(str(tmp_path / "absent.parq"))


def test_pickle_is_small_and_loads_no_partition(dataset, reads):
    m = Manifest.open(dataset["path"])
    for flat in range(0, N, RECORD):
        m.get(_key(np.unravel_index(flat, GRID)))
    blob = pickle.dumps(m)
    assert len(blob) < 1000 and b"refs.0" not in blob
    del reads[:]
    back = pickle.loads(blob)
    assert reads == [".zmetadata"] and isinstance(back, LazyParquetManifest)
    assert back.source == m.source and back._parquet.cache_size == m._parquet.cache_size
    assert back["d/0.0.1"] == m["d/0.0.1"]


def test_pickle_of_edited_manifest_keeps_edits_and_reads_nothing(dataset, reads):
    m = Manifest.open(dataset["path"])
    m.set("d/0.0.0", Reference("s3://other/x", 5, 6))
    m.delete("d/0.0.1")
    m.set("d/0.1.0", b"inline")
    m.set("d/.zattrs", json.dumps({"edited": True}).encode())
    blob = pickle.dumps(m)
    assert len(blob) < 2000
    del reads[:]
    back = pickle.loads(blob)
    assert reads == []
    assert back["d/0.0.0"] == Reference("s3://other/x", 5, 6)
    assert back.get("d/0.0.1") is None and back["d/0.1.0"] == b"inline"
    assert json.loads(back["d/.zattrs"]) == {"edited": True}
    assert back["d/4.3.1"] == m["d/4.3.1"]


def test_filesystem_and_store_pickles_are_small(dataset):
    fs = ReferenceFileSystem(dataset["path"], skip_instance_cache=True)
    assert fs.cat("d/0.0.1") == dataset["values"][8:16].tobytes()
    blob = pickle.dumps(fs)
    assert len(blob) < 4000
    assert pickle.loads(blob).cat("d/4.3.1") == dataset["values"][58 * 8 : 59 * 8].tobytes()
    store = ReferenceStore(dataset["path"])
    assert len(pickle.dumps(store)) < 4000


def test_edits_over_partitions(dataset):
    m = Manifest.open(dataset["path"])
    n = len(m)
    m.set("d/0.0.0", Reference("s3://other/x", 5, 6))
    m.delete("d/0.0.1")
    m.set(_key(INLINE), Reference("s3://other/y", 0, 1))  # a partition's inline chunk replaced
    m.set(_key(next(iter(MISSING))), b"new inline")  # a missing chunk filled with inline data
    m.delete(_key(WHOLE_KEY))
    with pytest.raises(KeyNotInManifest):
        m.delete(_key(WHOLE_KEY))
    assert m["d/0.0.0"] == Reference("s3://other/x", 5, 6)
    assert "d/0.0.1" not in m and _key(WHOLE_KEY) not in m
    assert m[_key(INLINE)] == Reference("s3://other/y", 0, 1)
    assert m[_key(next(iter(MISSING)))] == b"new inline"
    assert len(m) == n - 1
    keys = list(m.keys())
    assert len(keys) == len(set(keys)) == n - 1
    eager = m.load()
    assert {k: eager[k] for k in eager.keys()} == {k: m[k] for k in keys}
    assert m.to_dict() == eager.to_dict()


def test_replacing_metadata_keeps_every_chunk(dataset):
    """A grown ``.zarray`` (kerchunk's append) keeps every chunk read from the partitions."""
    m = Manifest.open(dataset["path"])
    before = {k: m[k] for k in m.keys()}
    grown = dict(_zarray(), shape=[12, 8, 6])
    m.set("d/.zarray", json.dumps(grown).encode())
    m.set("d/5.0.0", Reference("s3://other/z", 0, CHUNK_BYTES))
    for key, entry in before.items():
        if key != "d/.zarray":
            assert m[key] == entry, key
    assert len(m) == len(before) + 1 and m["d/5.0.0"] == Reference("s3://other/z", 0, CHUNK_BYTES)


def test_save_streams_a_lazy_manifest(dataset, tmp_path):
    from fsspec.implementations.reference import LazyReferenceMapper

    m = Manifest.open(dataset["path"], cache_size=1)
    m.set("d/0.0.0", Reference("s3://other/x", 5, 6))
    m.delete("d/0.0.1")
    out = str(tmp_path / "copy.parq")
    m.save(out, record_size=11)  # partitions of another size than the source's
    back = Manifest.open(out)
    assert {k: back[k] for k in back.keys()} == {k: m[k] for k in m.keys()}
    mapper = LazyReferenceMapper(out, engine="pyarrow")
    for idx in np.ndindex(GRID):
        assert _fsspec_entry(mapper, _key(idx)) == m.get(_key(idx)), idx
    m.save(str(tmp_path / "copy.json"))
    assert Manifest.open(str(tmp_path / "copy.json")).to_dict() == m.to_dict()
    with pytest.raises(ManifestError, match="lazily reading from"):
        m.save(dataset["path"])


def test_save_removes_stale_partitions(tmp_path):
    meta = {"shape": [20], "chunks": [1], "dtype": "u1", "compressor": None, "filters": None,
            "fill_value": 0, "order": "C", "zarr_format": 2}
    full = {"v/.zarray": json.dumps(meta), **{f"v/{i}": ["s3://b/f", i, 1] for i in range(20)}}
    out = str(tmp_path / "m.parq")
    Manifest.from_dict(full).save(out, record_size=5)
    assert len(list((tmp_path / "m.parq" / "v").glob("refs.*.parq"))) == 4
    sparse = {"v/.zarray": json.dumps(meta), "v/0": ["s3://b/f", 0, 1]}
    Manifest.from_dict(sparse).save(out, record_size=5)
    assert [p.name for p in (tmp_path / "m.parq" / "v").glob("refs.*.parq")] == ["refs.0.parq"]
    assert set(Manifest.open(out).keys()) == {"v/.zarray", "v/0"}


def test_null_url_cannot_be_written(tmp_path):
    meta = {"shape": [2], "chunks": [1], "dtype": "u1", "compressor": None, "filters": None,
            "fill_value": 0, "order": "C", "zarr_format": 2}
    m = Manifest.from_dict({"v/.zarray": json.dumps(meta), "v/0": ["s3://b/f", 0, 1], "v/1": [None, 0, 1]})
    with pytest.raises(ManifestError, match="'v/1'.*without a URL"):
        m.save(str(tmp_path / "n.parq"))


def test_root_and_zero_d_arrays(tmp_path):
    root_meta = {"shape": [4], "chunks": [2], "dtype": "u1", "compressor": None, "filters": None,
                 "fill_value": 0, "order": "C", "zarr_format": 2}
    scalar = {"shape": [], "chunks": [], "dtype": "<f8", "compressor": None, "filters": None,
              "fill_value": 0, "order": "C", "zarr_format": 2}
    refs = {".zarray": json.dumps(root_meta), "0": ["s3://b/r", 0, 2], "1": ["s3://b/r", 2, 2],
            "s/.zarray": json.dumps(scalar), "s/0": "base64:" + __import__("base64").b64encode(b"12345678").decode()}
    Manifest.from_dict(refs).save(str(tmp_path / "r.parq"), record_size=1)
    m = Manifest.open(str(tmp_path / "r.parq"))
    assert m["1"] == Reference("s3://b/r", 2, 2) and m["s/0"] == b"12345678"
    assert set(m.keys()) == set(refs)


def test_threads_share_the_cache_safely(dataset):
    m = Manifest.open(dataset["path"], cache_size=2)
    eager = m.load()
    keys = [_key(idx) for idx in np.ndindex(GRID)] * 4
    errors: list[str] = []

    def work(offset: int) -> None:
        for key in keys[offset:] + keys[:offset]:
            if m.get(key) != eager.get(key):
                errors.append(key)

    threads = [threading.Thread(target=work, args=(7 * i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and m._parquet.cached() <= 2


# -- remote manifests ---------------------------------------------------------------------------


def _routes(url: str, opts: dict[str, Any]) -> Any:
    from zarr.storage import FsspecStore

    common = {"target_options": opts, "remote_options": opts}
    yield "store", lambda: ReferenceStore(url, **common)
    yield "mapper", lambda: ReferenceFileSystem(url, skip_instance_cache=True, **common).get_mapper("")
    yield "fsspecstore-async", lambda: FsspecStore(
        ReferenceFileSystem(url, asynchronous=True, skip_instance_cache=True, **common), read_only=True, path="")


def test_kerchunk_hdf5_parquet_from_every_backend(remote, hdf5_path, tmp_path):
    """kerchunk refs of a real HDF5 file, written by kerchunk as parquet, uploaded with the data,
    then read lazily by every route (the partitions are read from inside the event loops)."""
    from _datasets import HDF5_DATASETS, kerchunk_refs, read_hdf5

    data_url = remote.upload(hdf5_path)
    local = tmp_path / "h5.parq"
    kdf.refs_to_dataframe(kerchunk_refs(hdf5_path, data_url), str(local), record_size=3)
    url = remote.upload(local)
    truth = read_hdf5(hdf5_path)
    for route, open_store in _routes(url, dict(remote.storage_options)):
        group = zarr.open_group(open_store(), mode="r", zarr_format=2)
        for name in HDF5_DATASETS:
            np.testing.assert_array_equal(group[name][...], truth[name], err_msg=f"{remote.kind}/{route}/{name}")


def test_remote_manifest_reads_partitions_on_demand(http, tmp_path, dataset):
    local = Path(dataset["path"])
    http_refs = _refs(f"{http.url}/data.bin", f"{http.url}/whole.bin")
    shutil.copy(dataset["dir"] / "data.bin", http.root / "data.bin")
    shutil.copy(dataset["dir"] / "whole.bin", http.root / "whole.bin")
    out = tmp_path / "h.parq"
    kdf.refs_to_dataframe({"version": 1, "refs": http_refs}, str(out), record_size=RECORD)
    url = http.serve(out, "lazy/h.parq")
    assert local.exists()
    http.reset()
    fs = ReferenceFileSystem(url, remote_protocol="http", skip_instance_cache=True)
    assert http.gets(f"{url}/.zmetadata") == 1 and http.total_gets == 1
    assert fs.cat("d/4.3.1") == dataset["values"][58 * 8 : 59 * 8].tobytes()
    assert http.gets(f"{url}/d/refs.8.parq") == 1 and http.gets(f"{url}/d/refs.0.parq") == 0
    fs.cat("d/4.3.0")
    assert http.gets(f"{url}/d/refs.8.parq") == 1


def test_remote_manifest_may_not_read_local_files(http, tmp_path, dataset):
    out = tmp_path / "l.parq"
    shutil.copytree(dataset["path"], out)  # references to local paths
    url = http.serve(out, "policy/l.parq")
    fs = ReferenceFileSystem(url, skip_instance_cache=True)
    with pytest.raises(URLNotAllowed):
        fs.cat("d/0.0.1")
    assert fs.cat(_key(INLINE)) == b"\x07" * CHUNK_BYTES


def test_protocol_is_inferred_from_a_sampled_partition(dataset, reads):
    """Without remote_protocol, the readers infer it from the URLs; a lazy manifest samples one partition."""
    m = Manifest.open(dataset["path"])
    assert reads == [".zmetadata"]
    assert m.urls and all(u.startswith(str(dataset["dir"])) for u in m.urls)
    assert reads == [".zmetadata", "d/refs.0.parq"]


def test_fsspec_can_still_open_what_refstore_opens(dataset):
    """The same directory stays readable by fsspec's own filesystem (no state is written)."""
    from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS

    Manifest.open(dataset["path"])["d/0.0.1"]
    theirs = FsspecRFS(dataset["path"], remote_protocol="file")
    assert theirs.cat("d/0.0.1") == dataset["values"][8:16].tobytes()
    assert fsspec.filesystem("reference", fo=dataset["path"]).cat("d/0.0.1") == dataset["values"][8:16].tobytes()


def test_fsspec_default_engine_reads_what_refstore_writes(dataset, tmp_path):
    """fsspec's ReferenceFileSystem reads parquet with fastparquet by default: offsets must come back as integers."""
    pytest.importorskip("fastparquet")
    from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS

    out = str(tmp_path / "w.parq")
    Manifest.open(dataset["path"]).save(out, record_size=RECORD)
    theirs = FsspecRFS(out, remote_protocol="file", skip_instance_cache=True)
    for flat in (1, 30, 58):
        key = _key(np.unravel_index(flat, GRID))
        assert theirs.cat(key) == dataset["values"][flat * 8 : flat * 8 + 8].tobytes(), key
    assert theirs.cat(_key(INLINE)) == b"\x07" * CHUNK_BYTES


def test_is_dir_stops_at_the_first_key(tmp_path, reads):
    meta = {"zarr_format": 3, "node_type": "array", "shape": [6, 5], "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, 1]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": [{"name": "bytes"}]}
    refs = {"g/a/zarr.json": json.dumps(meta)}
    refs.update({f"g/a/c/{i}/{j}": ["s3://b/x", 5 * i + j, 1] for i in (1, 4) for j in range(5)})
    Manifest.from_dict(refs).save(str(tmp_path / "d.parq"), record_size=4)
    m = Manifest.open(str(tmp_path / "d.parq"))
    del reads[:]
    assert m.is_dir("") and m.is_dir("g") and m.is_dir("g/a") and m.is_dir("g/a/c")
    assert reads == []  # answered from the metadata
    assert m.is_dir("g/a/c/4")  # flats 20..24: partition 5 (20..23) has chunks
    assert reads == ["g/a/refs.5.parq"]
    assert not m.is_dir("g/a/c/2") and not m.is_dir("g/a/c/9") and not m.is_dir("g/b")
    assert not m.is_dir("g/a/zarr.json") and not m.is_dir("g/a/c/1/1")
    eager = m.load()
    for path in ("", "g", "g/a", "g/a/c", "g/a/c/1", "g/a/c/2", "g/b", "g/a/c/1/1"):
        assert m.is_dir(path) == eager.is_dir(path) == (eager.list_dir(path) != ([], [])) or path == "", path
