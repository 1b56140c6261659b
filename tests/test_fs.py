"""ReferenceFileSystem as a drop-in for fsspec's reference filesystem (local targets)."""

from __future__ import annotations

import json
import pickle

import fsspec
import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore

import refstore
from refstore import ReferenceFileSystem, ReferenceNotReachable


@pytest.fixture
def blob(tmp_path):
    data = bytes(range(256)) * 64
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.fixture
def refs(blob):
    path, _ = blob
    return {
        "a": b"data",
        "b": [path, 100, 20],
        "c/d": [path],
        "c/e/f": "base64:" + __import__("base64").b64encode(b"\x00\xff").decode(),
        "c/g": [path, 10, 5],
    }


def test_registered_under_reference_and_refstore(refs):
    assert fsspec.get_filesystem_class("reference") is ReferenceFileSystem
    assert isinstance(fsspec.filesystem("refstore", fo=refs), ReferenceFileSystem)


def test_cat_variants(refs, blob):
    _, data = blob
    fs = fsspec.filesystem("reference", fo=refs)
    assert fs.cat("a") == b"data"
    assert fs.cat("b") == data[100:120]
    assert fs.cat("c/d") == data
    assert fs.cat("c/e/f") == b"\x00\xff"
    assert fs.cat_file("b", start=5, end=10) == data[105:110]
    assert fs.cat_file("b", start=-5) == data[115:120]
    # ranges are clamped to the reference: never a neighbour's bytes
    assert fs.cat_file("b", start=10, end=1000) == data[110:120]
    assert fs.cat_file("c/d", start=-4) == data[-4:]
    assert fs.cat(["a", "b"]) == {"a": b"data", "b": data[100:120]}
    assert fs.cat("c", recursive=True) == {"c/d": data, "c/e/f": b"\x00\xff", "c/g": data[10:15]}
    assert fs.cat_ranges(["b", "c/g", "a"], [0, 1, 1], [4, 3, 3]) == [data[100:104], data[11:13], b"at"]


def test_listing_and_info(refs, blob):
    fs = ReferenceFileSystem(refs)
    assert fs.ls("", detail=False) == ["a", "b", "c"]
    assert fs.ls("c", detail=False) == ["c/d", "c/e", "c/g"]
    assert fs.info("b") == {"name": "b", "size": 20, "type": "file"}
    assert fs.info("c/d")["size"] == len(blob[1])
    assert fs.info("c")["type"] == "directory"
    assert fs.find("c") == ["c/d", "c/e/f", "c/g"]
    assert fs.find("", maxdepth=1) == ["a", "b"]
    assert fs.isdir("c/e") and fs.isfile("c/e/f") and not fs.exists("zz")
    with pytest.raises(FileNotFoundError):
        fs.info("nope")


def test_asynchronous_instance_answers_sync_calls_too(refs, blob):
    """fsspec's class answers ls/info/cat_file/cat on an ``asynchronous=True`` instance from plain code."""
    _, data = blob
    fs = fsspec.filesystem("reference", fo=refs, asynchronous=True, skip_instance_cache=True)
    assert fs.ls("", detail=False) == ["a", "b", "c"]
    assert fs.info("b") == {"name": "b", "size": 20, "type": "file"}
    assert fs.cat_file("b", start=5, end=10) == data[105:110]
    assert fs.cat(["a", "c/g"]) == {"a": b"data", "c/g": data[10:15]}


def test_open_reads_lazily(refs, blob):
    fs = ReferenceFileSystem(refs)
    with fs.open("c/d", block_size=64) as f:
        f.seek(1000)
        assert f.read(10) == blob[1][1000:1010]
    with fs.open("a") as f:
        assert f.read() == b"data"


def test_missing_key_and_missing_target(refs, tmp_path):
    refs["gone"] = [str(tmp_path / "nope.bin"), 0, 10]
    fs = ReferenceFileSystem(refs)
    with pytest.raises(FileNotFoundError):
        fs.cat("not-a-key")
    with pytest.raises(ReferenceNotReachable) as info:
        fs.cat("gone")
    assert isinstance(info.value, fsspec.implementations.reference.ReferenceNotReachable)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    msg = str(info.value)
    assert '"gone"' in msg and "nope.bin" in msg and "FileNotFoundError" in msg
    out = fs.cat(["a", "gone"], on_error="return")
    assert out["a"] == b"data" and isinstance(out["gone"], ReferenceNotReachable)
    assert fs.cat(["a", "gone"], on_error="omit") == {"a": b"data"}


def test_short_target_is_an_error_not_silent_truncation(blob):
    path, data = blob
    fs = ReferenceFileSystem({"k": [path, len(data) - 4, 10]})
    with pytest.raises(ReferenceNotReachable, match="4 bytes.*needs 10"):
        fs.cat("k")


def test_pipe_rm_get_put_and_save(refs, tmp_path):
    fs = ReferenceFileSystem(refs)
    fs.pipe("new/key", b"hello")
    assert fs.cat("new/key") == b"hello" and "new" in fs.ls("", detail=False)
    fs.rm("a")
    assert not fs.exists("a")
    fs.get("c", str(tmp_path / "out"), recursive=True)
    assert (tmp_path / "out" / "e" / "f").read_bytes() == b"\x00\xff"
    local = tmp_path / "in.txt"
    local.write_bytes(b"put")
    fs.put(str(local), "p")
    assert fs.cat("p") == b"put"
    fs.save_json(str(tmp_path / "saved.json"))
    again = ReferenceFileSystem(str(tmp_path / "saved.json"))
    assert again.cat("new/key") == b"hello" and again.cat("p") == b"put" and not again.exists("a")


def test_pickle_keeps_parsed_manifest_and_edits(refs):
    fs = ReferenceFileSystem(refs)
    fs.pipe("edit", b"kept")
    clone = pickle.loads(pickle.dumps(fs))
    assert clone.cat("edit") == b"kept"
    assert clone.cat("b") == fs.cat("b")


@pytest.fixture
def zarr_refs(tmp_path):
    """A real zarr v3 array written by zarr, described by references into its chunk files."""
    src = zarr.create_array(str(tmp_path / "src.zarr"), shape=(40, 30), chunks=(10, 10), dtype="f8",
                            compressors=None, fill_value=-1.0)
    values = np.arange(1200, dtype="f8").reshape(40, 30)
    src[:] = values
    refs = {"zarr.json": json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}),
            "x/zarr.json": (tmp_path / "src.zarr" / "zarr.json").read_text()}
    for i in range(4):
        for j in range(3):
            if (i, j) != (3, 2):  # leave one chunk out: it must read as fill
                refs[f"x/c/{i}/{j}"] = [str(tmp_path / "src.zarr" / "c" / str(i) / str(j))]
    expect = values.copy()
    expect[30:, 20:] = -1.0
    return refs, expect


def test_every_zarr_route(zarr_refs):
    refs, expect = zarr_refs
    routes = {
        "url": lambda: zarr.open_group("reference://", storage_options={"fo": refs}, mode="r"),
        "mapper-sync": lambda: zarr.open_group(fsspec.filesystem("reference", fo=refs).get_mapper(""), mode="r"),
        "mapper-async": lambda: zarr.open_group(
            fsspec.filesystem("reference", fo=refs, asynchronous=True).get_mapper(""), mode="r"),
        "fsspecstore": lambda: zarr.open_group(
            FsspecStore(ReferenceFileSystem(refs, asynchronous=True), read_only=True, path=""), mode="r"),
        "store": lambda: zarr.open_group(refstore.ReferenceStore(refs), mode="r"),
    }
    for name, open_group in routes.items():
        group = open_group()
        np.testing.assert_array_equal(group["x"][:], expect, err_msg=name)


def test_zarr_rebuild_reuses_manifest(zarr_refs):
    """zarr re-creates sync filesystems as async ones; that must not parse the manifest again."""
    refs, _ = zarr_refs
    fs = ReferenceFileSystem(refs)
    store = FsspecStore.from_mapper(fs.get_mapper(""), read_only=True)
    assert store.fs is not fs and store.fs.manifest is fs.manifest


def test_broken_target_raises_through_zarr(zarr_refs, tmp_path):
    refs, _ = zarr_refs
    refs["x/c/0/0"] = [str(tmp_path / "vanished")]
    group = zarr.open_group(refstore.ReferenceStore(refs), mode="r")
    with pytest.raises(ReferenceNotReachable, match="x/c/0/0"):
        group["x"][:]
    group = zarr.open_group("reference://", storage_options={"fo": refs}, mode="r")
    with pytest.raises(ReferenceNotReachable, match="x/c/0/0"):
        group["x"][:]


@pytest.mark.parametrize("route", ["store", "reference://"])
def test_corrupt_metadata_read_from_a_reference_names_key_and_url(tmp_path, route):
    """kerchunk's single_zarr writes ``".zarray": [url]``; a target that is not JSON used to
    reach zarr as a bare JSONDecodeError."""
    bad = tmp_path / "zarray.json"
    bad.write_text('{"zarr_format": 2, "shape": [')
    refs = {".zgroup": '{"zarr_format":2}', "a/.zarray": [str(bad)]}
    store = (refstore.ReferenceStore(refs) if route == "store"
             else fsspec.filesystem("reference", fo=refs, skip_instance_cache=True).get_mapper(""))
    with pytest.raises(refstore.ManifestError, match=r"'a/\.zarray'.*" + str(bad)):
        zarr.open_group(store, mode="r")["a"]


def test_one_options_object_for_every_face(tmp_path):
    """Every tunable, with its default, lives in refstore.Options; both faces take it whole
    or one keyword at a time, and refuse a misspelt one by name."""
    data = tmp_path / "d"
    data.write_bytes(b"0123456789")
    refs = {"k": [str(data), 2, 3]}
    opts = refstore.Options(max_gap=7, read_ahead=0, cache_size=3)
    fs = ReferenceFileSystem(refs, options=opts, max_block=1 << 20)
    store = refstore.ReferenceStore(refs, options=opts, max_block=1 << 20)
    for engine in (fs._engine, store.engine):
        assert engine.options == refstore.Options(max_gap=7, read_ahead=0, cache_size=3, max_block=1 << 20)
        assert engine.reader.fetcher.max_gap == 7 and engine.reader.fetcher.max_block == 1 << 20
    assert fs.cat("k") == b"234" and store.get_sync("k").to_bytes() == b"234"
    assert ReferenceFileSystem(refs)._engine.options == refstore.Options()
    with pytest.raises(TypeError, match="max_gapp"):
        refstore.ReferenceStore(refs, max_gapp=3)
