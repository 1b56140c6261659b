"""Behaviours of fsspec's ReferenceFileSystem that refstore keeps, pinned one by one
(written from what fsspec and kerchunk do; see issue 12 for the upstream suites' counts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr
from fsspec.implementations.reference import LazyReferenceMapper
from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS
from zarr.core.buffer import default_buffer_prototype

import refstore
from refstore import ReferenceFileSystem, ReferenceNotReachable, ReferenceStore


def _fs(refs: dict) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("reference", fo=refs, skip_instance_cache=True)


def test_inline_base64_as_bytes_is_decoded_like_text() -> None:
    """kerchunk's do_inline and tiff_to_zarr(inline_threshold=...) write ``b"base64:..."`` values."""
    fs = _fs({"s": "base64:aGVsbG8=", "b": b"base64:aGVsbG8=", "raw": b"hello"})
    assert fs.cat("s") == fs.cat("b") == fs.cat("raw") == b"hello"


def test_inline_base64_bytes_chunk_reads_through_zarr() -> None:
    import base64

    data = np.arange(6, dtype="<i2")
    refs = {
        ".zgroup": json.dumps({"zarr_format": 2}),
        "x/.zarray": json.dumps({"zarr_format": 2, "shape": [6], "chunks": [6], "dtype": "<i2", "compressor": None,
                                 "fill_value": 0, "filters": None, "order": "C"}),
        "x/0": b"base64:" + base64.b64encode(data.tobytes()),
    }
    np.testing.assert_array_equal(zarr.open_group(_fs(refs).get_mapper(""), mode="r")["x"][:], data)


def test_values_with_to_bytes_are_inline_data() -> None:
    """A zarr Buffer (what zarr hands a mapper) is accepted as inline bytes."""
    fs = _fs({"k": default_buffer_prototype().buffer.from_bytes(b"abc")})
    assert fs.cat("k") == b"abc"


def test_a_protocol_the_caller_configures_is_allowed() -> None:
    """``remote_protocol="memory"`` or ``fs={"memory": ...}`` is the caller's choice (fsspec reads it);
    a manifest from a remote URL that names ``memory://`` on its own stays refused
    (tests/fetch/test_url_probes.py)."""
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/refstore-compat/data", b"0123456789")
    try:
        for kwargs in ({"remote_protocol": "memory"}, {"fs": {"memory": mem}}, {"fs": mem}):
            fs = fsspec.filesystem("reference", fo={"k": ["memory://refstore-compat/data", 2, 3]},
                                   skip_instance_cache=True, **kwargs)
            assert fs.cat("k") == b"234"
    finally:
        mem.rm_file("/refstore-compat/data")


# -- the same answer as fsspec's own class, side by side -------------------------------------------

BOTH = pytest.mark.parametrize("cls", [FsspecRFS, ReferenceFileSystem], ids=["fsspec", "refstore"])


def _outcome(call: Any) -> Any:
    """What a call gives: its value, or ``("raises", type)``; returned exceptions as ``("returns", type)``."""
    try:
        value = call()
    except Exception as exc:  # the outcome is compared
        return ("raises", FileNotFoundError if isinstance(exc, FileNotFoundError) else type(exc))
    if isinstance(value, dict):
        return {k: ("returns", type(v)) if isinstance(v, BaseException) else v for k, v in value.items()}
    return ("returns", type(value)) if isinstance(value, BaseException) else value


CAT_CASES = {
    "one key": (lambda fs: fs.cat("a"), b"hello"),
    "list": (lambda fs: fs.cat(["a", "b"]), {"a": b"hello", "b": b"hello"}),
    "list of missing keys raises": (lambda fs: fs.cat(["notone", "nottwo"]), ("raises", FileNotFoundError)),
    "missing key, on_error=return gives the error": (
        lambda fs: fs.cat("missing", on_error="return"), ("returns", FileNotFoundError)),
    "list, on_error=return keeps the error": (
        lambda fs: fs.cat(["a", "missing"], on_error="return"),
        {"a": b"hello", "missing": ("returns", FileNotFoundError)}),
    "list, on_error=omit drops it": (lambda fs: fs.cat(["a", "missing"], on_error="omit"), {"a": b"hello"}),
    "empty list": (lambda fs: fs.cat([]), {}),
    "missing key, on_error=omit": (lambda fs: fs.cat("missing", on_error="omit"), {}),
    "nested key": (lambda fs: fs.cat("d/x"), b"1"),
    "a directory is not a file": (lambda fs: fs.cat(["d"]), ("raises", FileNotFoundError)),
}


@BOTH
@pytest.mark.parametrize("case", list(CAT_CASES))
def test_cat_answers_as_fsspec(cls: type, case: str) -> None:
    call, expected = CAT_CASES[case]
    fs = cls(fo={"a": "hello", "b": "base64:aGVsbG8=", "d/x": "1"}, skip_instance_cache=True)
    assert _outcome(lambda: call(fs)) == expected


@BOTH
def test_info_and_size_of_a_missing_whole_file_target_raise_file_not_found(cls: type, tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(b"0123456789")
    fs = cls(fo={"missing": [str(tmp_path / "nope")], "there": [str(tmp_path / "data")]}, skip_instance_cache=True)
    with pytest.raises(FileNotFoundError):
        fs.info("missing")
    with pytest.raises(FileNotFoundError):
        fs.size("missing")
    assert fs.size("there") == 10
    # reading it is an unreachable reference, never a missing key (which zarr would read as fill)
    with pytest.raises(ReferenceNotReachable if cls is ReferenceFileSystem else RuntimeError) as err:
        fs.cat_file("missing")
    assert not isinstance(err.value, FileNotFoundError)


@BOTH
def test_numpy_integer_offsets(cls: type, tmp_path: Path) -> None:
    """kerchunk's scanners can leave numpy integers in the dicts they return."""
    (tmp_path / "data").write_bytes(b"0123456789")
    fs = cls(fo={"n": [str(tmp_path / "data"), np.int64(2), np.uint32(3)]}, skip_instance_cache=True)
    assert fs.cat("n") == b"234"


@BOTH
def test_a_filesystem_instance_reads_urls_that_name_no_protocol(cls: type) -> None:
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/refstore-compat-noproto", b"memdata")
    try:
        fs = cls(fo={"k": ["refstore-compat-noproto"], "r": ["refstore-compat-noproto", 3, 3]}, fs=mem,
                 skip_instance_cache=True)
        assert fs.cat("k") == b"memdata"
        assert fs.cat("r") == b"dat"
    finally:
        mem.rm_file("/refstore-compat-noproto")


def _zarr2_dir(root: Path) -> np.ndarray:
    data = np.arange(10, dtype="<i4")
    g = zarr.open_group(str(root), mode="w", zarr_format=2)
    g.create_array("x", shape=(10,), chunks=(4,), dtype="<i4", fill_value=None)[:] = data
    return data


def _metadata_refs(tmp_path: Path) -> tuple[dict[str, Any], np.ndarray]:
    src = tmp_path / "src.zarr"
    data = _zarr2_dir(src)
    refs = {".zgroup": [str(src / ".zgroup")], "x/.zarray": [str(src / "x" / ".zarray")],
            **{f"x/{i}": [str(src / "x" / str(i))] for i in range(3)}}
    return refs, data


@BOTH
def test_metadata_given_as_a_reference(cls: type, tmp_path: Path) -> None:
    """``".zarray": [url]`` (a whole-file reference to a metadata document) reads like any reference."""
    refs, data = _metadata_refs(tmp_path)
    group = zarr.open_group(cls(fo=refs, skip_instance_cache=True).get_mapper(""), mode="r")
    np.testing.assert_array_equal(group["x"][:], data)
    fs = cls(fo={"version": 1, "refs": refs}, skip_instance_cache=True)
    assert json.loads(fs.cat("x/.zarray"))["chunks"] == [4]


def test_metadata_given_as_a_reference_through_the_store(tmp_path: Path) -> None:
    refs, data = _metadata_refs(tmp_path)
    np.testing.assert_array_equal(zarr.open_group(ReferenceStore(refs), mode="r")["x"][:], data)


ZARRAY = json.dumps({"zarr_format": 2, "shape": [4], "chunks": [2], "dtype": "<i2", "compressor": None,
                     "filters": None, "fill_value": 0, "order": "C"})


@BOTH
def test_references_is_live(cls: type) -> None:
    """kerchunk writes through ``fs.references`` (``HDF4ToZarr``: ``.update(refs)``; MZZ: ``out=``)."""
    fs = cls(fo={"version": 1, "refs": {".zgroup": '{"zarr_format":2}'}}, skip_instance_cache=True)
    fs.references.update({"a/.zarray": ZARRAY, "a/0": b"\x01\x00\x02\x00", "a/1": "base64:AwAEAA=="})
    assert np.frombuffer(fs.cat("a/0") + fs.cat("a/1"), "<i2").tolist() == [1, 2, 3, 4]
    fs.references["a/1"] = b"\x05\x00\x06\x00"
    assert fs.cat("a/1") == b"\x05\x00\x06\x00"
    del fs.references["a/1"]
    with pytest.raises(FileNotFoundError):
        fs.cat("a/1")
    copy = fs.references.copy()
    assert isinstance(copy, dict) and set(copy) == {".zgroup", "a/.zarray", "a/0"}
    assert json.loads(copy["a/.zarray"]) == json.loads(ZARRAY)


@BOTH
def test_pipe_takes_a_reference_list(cls: type, tmp_path: Path) -> None:
    """fsspec's ``pipe_file`` stores any kerchunk value, a ``[url, offset, length]`` list included."""
    (tmp_path / "data").write_bytes(b"0123456789")
    fs = cls(fo={}, skip_instance_cache=True)
    fs.pipe_file("r", [str(tmp_path / "data"), 4, 2])
    assert fs.cat("r") == b"45"


def test_references_reach_zarr_after_update() -> None:
    """An array added through ``references.update`` is what zarr then reads (not fill)."""
    fs = fsspec.filesystem("reference", fo={".zgroup": '{"zarr_format":2}'}, skip_instance_cache=True)
    fs.references.update({"a/.zarray": ZARRAY, "a/0": b"\x01\x00\x02\x00", "a/1": b"\x03\x00\x04\x00"})
    np.testing.assert_array_equal(zarr.open_group(fs.get_mapper(""), mode="r")["a"][:], [1, 2, 3, 4])


@pytest.mark.parametrize("how", ["references", "zarr"])
def test_append_grows_an_array_keeping_its_chunks(how: str, tmp_path: Path) -> None:
    """kerchunk's ``MultiZarrToZarr.append`` writes a grown ``.zarray`` and the new chunks into
    ``fs.references``; zarr's ``resize`` + write does the same through the mapper. The chunks
    referenced before must still be read (they were once dropped, reading as fill).
    (fsspec's own class reads the old shape here, so this is pinned for refstore alone.)"""
    (tmp_path / "data").write_bytes(np.arange(1, 5, dtype="<i2").tobytes())
    data = str(tmp_path / "data")
    fs = _fs({".zgroup": '{"zarr_format":2}', "a/.zarray": ZARRAY, "a/0": [data, 0, 4], "a/1": [data, 4, 4]})
    if how == "references":
        fs.references.update({"a/.zarray": ZARRAY.replace("[4]", "[6]", 1), "a/2": "base64:BQAGAA=="})
    else:
        array = zarr.open_group(fs.get_mapper(""), mode="r+")["a"]
        array.resize((6,))
        array[4:] = [5, 6]
    np.testing.assert_array_equal(zarr.open_group(fs.get_mapper(""), mode="r")["a"][:], [1, 2, 3, 4, 5, 6])


def test_zarr_writes_into_a_lazy_reference_mapper(tmp_path: Path) -> None:
    """zarr writing through ``reference://`` over fsspec's ``LazyReferenceMapper`` lands in the
    parquet references (kerchunk's parquet output path), readable by fsspec's own class afterwards."""
    pytest.importorskip("fastparquet")
    root = tmp_path / "out.parq"
    root.mkdir()
    lazy = LazyReferenceMapper.create(str(root), record_size=2)
    fs = fsspec.filesystem("reference", fo=lazy, skip_instance_cache=True)
    group = zarr.open_group(fs.get_mapper(""), mode="w", zarr_format=2)
    group.create_array("x", shape=(6,), chunks=(2,), dtype="<i4", compressors=None, fill_value=0)[:] = np.arange(6)
    fs.references.flush()  # the mirror's own method, through the live mapping
    assert (root / "x" / "refs.0.parq").exists()
    # (fsspec's own class cannot open a directory whose chunks are all inline: it takes NaN for a URL)
    assert np.frombuffer(LazyReferenceMapper(str(root))["x/2"], "<i4").tolist() == [4, 5]
    ours = fsspec.filesystem("reference", fo=str(root), skip_instance_cache=True)
    np.testing.assert_array_equal(zarr.open_group(ours.get_mapper(""), mode="r")["x"][:], np.arange(6))


def test_parquet_references_open_consolidated(tmp_path: Path) -> None:
    """kerchunk's parquet output opens with ``consolidated=True`` (fsspec's lazy mapper serves
    the directory's ``.zmetadata``)."""
    pytest.importorskip("fastparquet")
    xr = pytest.importorskip("xarray")
    from kerchunk.df import refs_to_dataframe

    src = tmp_path / "src.zarr"
    data = _zarr2_dir(src)
    (src / ".zattrs").write_text("{}")
    (src / "x" / ".zattrs").write_text(json.dumps({"_ARRAY_DIMENSIONS": ["t"]}))
    refs = {k: (p.read_text() if k.rpartition("/")[2].startswith(".z") else [str(p)])
            for p in src.rglob("*") if p.is_file() for k in [str(p.relative_to(src))]}
    refs_to_dataframe({"version": 1, "refs": refs}, str(tmp_path / "refs.parq"), record_size=2)
    for cls in (FsspecRFS, ReferenceFileSystem):
        fs = cls(fo=str(tmp_path / "refs.parq"), skip_instance_cache=True)
        assert json.loads(fs.cat(".zmetadata"))["metadata"]["x/.zarray"]["chunks"] == [4]
    ds = xr.open_zarr("reference://", consolidated=True, zarr_format=2,
                      storage_options={"fo": str(tmp_path / "refs.parq"), "skip_instance_cache": True})
    np.testing.assert_array_equal(ds["x"].values, data)


@BOTH
def test_the_callers_own_manifest_names_any_protocol(cls: type) -> None:
    """A dict manifest naming ``memory://`` reads it, as fsspec does (the caller's own manifest)."""
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/refstore-compat-own", b"0123456789")
    try:
        fs = cls(fo={"k": ["memory://refstore-compat-own", 1, 3]}, skip_instance_cache=True)
        assert fs.cat("k") == b"123"
    finally:
        mem.rm_file("/refstore-compat-own")


@BOTH
def test_references_is_a_dict_holding_values_as_given(cls: type) -> None:
    """kerchunk checks ``isinstance(out, dict)`` and compares ``fs.references`` with its input."""
    given = {".zgroup": b'{"zarr_format": 2}', "a/.zarray": ZARRAY, "a/.zattrs": {"foo": "bar"},
             "a/0": b"\x01\x00\x02\x00", "a/1": "base64:AwAEAA=="}
    fs = cls(fo=given, skip_instance_cache=True)
    refs = fs.references
    assert isinstance(refs, dict)
    assert list(refs) == list(given)
    assert {k: v for k, v in refs.items() if k != "a/.zattrs"} == {k: v for k, v in given.items() if k != "a/.zattrs"}
    assert json.loads(refs["a/.zattrs"]) == {"foo": "bar"}  # a JSON object is kept as its text
    import copy

    deep = copy.deepcopy(refs)
    assert type(deep) is dict and deep == refs
    deep["a/0"] = b"changed"  # a copy is the caller's own: the filesystem does not change
    assert fs.cat("a/0") == b"\x01\x00\x02\x00"


@BOTH
def test_references_follow_pipe_and_rm(cls: type) -> None:
    fs = cls(fo={"a": "x"}, skip_instance_cache=True)
    refs = fs.references
    fs.pipe_file("b", b"y")
    assert fs.references["b"] == b"y"
    fs.rm("b")
    assert "b" not in fs.references
    assert refs == fs.references == {"a": "x"}


@BOTH
def test_references_expand_templates(cls: type) -> None:
    fs = cls(fo={"version": 1, "templates": {"u": "http://h/d"}, "refs": {"k": ["{{u}}/f", 1, 2]}},
             skip_instance_cache=True)
    assert fs.references["k"] == ["http://h/d/f", 1, 2]


def test_parquet_references_flush_what_zarr_wrote(tmp_path: Path) -> None:
    """``fo`` naming a parquet directory: zarr writes through ``reference://`` and
    ``fs.references.flush()`` writes them there, as fsspec's ``LazyReferenceMapper`` does."""
    pytest.importorskip("fastparquet")
    root = str(tmp_path / "out.parq")
    LazyReferenceMapper.create(root)
    group = zarr.open_group("reference://", mode="w", zarr_format=2, storage_options={"fo": root})
    group.create_group("g").create_array("one", shape=(3,), dtype="int64")[:] = [1, 2, 3]
    group.store.fs.references.flush()
    assert (tmp_path / "out.parq" / "g" / "one" / "refs.0.parq").exists()
    assert "g/one/.zarray" in LazyReferenceMapper(root).zmetadata
    back = zarr.open_group("reference://", mode="r", zarr_format=2,
                           storage_options={"fo": root, "skip_instance_cache": True})
    assert back["g"]["one"][:].tolist() == [1, 2, 3]


def test_function_templates_are_refused_naming_the_rule() -> None:
    """fsspec renders ``"f": "{{c}}"`` as a jinja function (``{{f(c='text')}}``); refstore runs
    no template code and says so, naming the key and the template."""
    from refstore import TemplateError

    refs = {"version": 1, "templates": {"u": "h/p", "f": "{{c}}"},
            "refs": {"key2": ["http://{{u}}", 1, 2], "key3": ["http://{{f(c='text')}}", 1, 2]}}
    with pytest.raises(TemplateError, match=r"key 'key3'.*template 'f' is a function template.*never runs template code"):
        ReferenceFileSystem(refs)
    del refs["refs"]["key3"]  # (a function template nobody uses is harmless)
    assert ReferenceFileSystem(refs).references == {"key2": ["http://h/p", 1, 2]}


@BOTH
def test_fss(cls: type) -> None:
    mem = fsspec.filesystem("memory")
    assert None in cls(fo={}, skip_instance_cache=True).fss
    fs = cls(fo={}, remote_protocol="memory", skip_instance_cache=True)
    assert fs.fss[None].protocol == fs.fss["memory"].protocol == "memory"
    assert cls(fo={}, fs=mem, skip_instance_cache=True).fss[None].sync_fs is mem
    fs = cls(fo={}, fs={"memory": mem}, skip_instance_cache=True)
    assert fs.fss["memory"] is mem and fs.fss[None].protocol == ("file", "local")
    fs = cls(fo={"key": ["memory://a"], "blah": ["path"]}, skip_instance_cache=True)
    assert fs.fss[None] == fs.fss["memory"]


def test_remote_options_that_are_not_a_dict_are_ignored_with_a_warning(tmp_path: Path) -> None:
    """fsspec's own test_append_parquet passes ``remote_options="memory"``; fsspec never reads it."""
    (tmp_path / "d").write_bytes(b"0123")
    with pytest.warns(refstore.errors.RefstoreWarning, match="remote_options='memory'"):
        fs = fsspec.filesystem("reference", fo={"k": [str(tmp_path / "d"), 1, 2]}, remote_options="memory",
                               skip_instance_cache=True)
    assert fs.cat("k") == b"12"


def test_an_async_wrapped_local_filesystem_does_not_wait_for_fsspecs_io_loop(tmp_path: Path) -> None:
    """kerchunk hands ``fs=AsyncFileSystemWrapper(LocalFileSystem())``; its calls hop to fsspec's IO
    loop, so a busy loop stalled every local chunk read (kerchunk's test_translate_links timed out)."""
    import asyncio
    import threading
    import time

    from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

    (tmp_path / "d").write_bytes(b"0123456789")
    wrapped = AsyncFileSystemWrapper(fsspec.filesystem("file"))
    store = ReferenceStore({"k": [str(tmp_path / "d"), 2, 3]}, fs=wrapped, remote_protocol="file")
    io_loop = fsspec.asyn.get_loop()
    busy = threading.Event()

    async def hog() -> None:
        busy.set()
        time.sleep(3)  # blocks fsspec's IO loop, as a stuck network call of another test would

    hogging = asyncio.run_coroutine_threadsafe(hog(), io_loop)
    busy.wait()
    start = time.perf_counter()
    got = asyncio.run(store.get("k", default_buffer_prototype()))
    elapsed = time.perf_counter() - start
    hogging.result()
    assert got is not None and got.to_bytes() == b"234"
    assert elapsed < 2, f"the read waited {elapsed:.1f} s for fsspec's IO loop"
