"""Issue 13, key probes: one key rule for every reader (dict, streaming JSON, gzip, parquet, gen, edits).

A key that could name a place outside the hierarchy (``..``, ``.``, empty
segments, a leading ``/``) or that holds control characters is refused with a
ManifestError naming it, whichever way it arrives; listing never yields one.
"""

from __future__ import annotations

import gzip
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refstore import (
    Manifest,
    ManifestError,
    Reference,
    ReferenceFileSystem,
    ReferenceStore,
)
from refstore.manifest import budgets
from refstore.manifest._keys import check_key
from refstore.manifest._stream import load_json_stream

ESCAPE = "a/../../../escaped_dir/.zattrs"
BAD_KEYS = [
    ESCAPE, "../x/.zattrs", "a/./b/.zarray", "./.zgroup", "a//b/.zattrs", "/abs/.zgroup", "a/", ".", "..", "",
    "a/\x00/.zattrs", "a\tb", "a\nb/.zattrs", "a/b\x7f", "a/\x85b", "a/../../../escaped_dir/0",
    "a\\..\\b\x00",
]
GOOD_KEYS = ["a/.zattrs", "a/...", "a/..b", "a/b../c", ".zgroup", "a b/ü/c.0", "a\\..\\b"]
ZARRAY = json.dumps({"zarr_format": 2, "shape": [4], "chunks": [1], "dtype": "<i1", "compressor": None,
                     "filters": None, "fill_value": 0, "order": "C"})


def _named(info: pytest.ExceptionInfo[ManifestError], key: str) -> None:
    assert repr(key)[1:-1] in str(info.value), (key, str(info.value))


@pytest.mark.parametrize("key", BAD_KEYS)
def test_check_key_refuses_and_names_the_key(key):
    with pytest.raises(ManifestError) as info:
        check_key(key)
    _named(info, key)


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_check_key_accepts_ordinary_names(key):
    assert check_key(key) == key


def _docs(key: str) -> list[dict]:
    value = '{"x": 1}' if key.endswith((".zattrs", ".zgroup", ".zarray")) else ["s3://b/f", 0, 1]
    return [
        {key: value},
        {"version": 1, "refs": {".zgroup": '{"zarr_format": 2}', key: value}},
        # an array described by metadata, then chunk keys under the escaping prefix
        {"version": 1, "refs": {"ok/.zarray": ZARRAY, "ok/0": ["s3://b/f", 0, 1], key: value, "ok/1": ["u", 1, 1]}},
    ]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_every_json_reader_refuses_the_key(tmp_path, key):
    for n, doc in enumerate(_docs(key)):
        with pytest.raises(ManifestError) as info:
            Manifest.from_dict(doc)
        _named(info, key)
        text = json.dumps(doc).encode()
        for block in (16, 1 << 20):
            try:
                streamed = load_json_stream(Manifest(), io.BytesIO(text), block=block)
            except ManifestError as exc:
                assert repr(key)[1:-1] in str(exc)
            else:  # a shape it hands to the whole-document reader (Manifest.open, below)
                assert not streamed
        for name, data in ((f"m{n}.json", text), (f"m{n}.json.gz", gzip.compress(text))):
            (tmp_path / name).write_bytes(data)
            with pytest.raises(ManifestError) as info:
                Manifest.open(str(tmp_path / name))
            _named(info, key)
            with pytest.raises(ManifestError):
                ReferenceFileSystem(str(tmp_path / name))


def test_escaping_prefix_probe_is_refused_and_nothing_lists_it(tmp_path):
    """The probe of the issue: metadata and chunks under ``a/../../../escaped_dir`` in a file."""
    prefix = "a/../../../escaped_dir"
    refs = {".zgroup": '{"zarr_format": 2}', f"{prefix}/.zattrs": '{"x": 1}', f"{prefix}/.zarray": ZARRAY,
            f"{prefix}/0": ["s3://b/f", 0, 1]}
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"version": 1, "refs": refs}))
    with pytest.raises(ManifestError, match="escaped_dir"):
        ReferenceFileSystem(str(path))
    with pytest.raises(ManifestError, match="escaped_dir"):
        Manifest.open(str(path))


@pytest.mark.parametrize("key", [ESCAPE, "/abs/.zattrs", "a//b/.zarray", "a\x00/.zattrs"])
def test_parquet_metadata_keys_are_checked(tmp_path, key):
    pytest.importorskip("pyarrow")
    root = tmp_path / "refs.parq"
    root.mkdir()
    (root / ".zmetadata").write_text(json.dumps({"metadata": {".zgroup": {"zarr_format": 2}, key: {"x": 1}},
                                                 "record_size": 10}))
    with pytest.raises(ManifestError) as info:
        Manifest.open(str(root))
    _named(info, key)


@pytest.mark.parametrize("key", BAD_KEYS)
def test_edits_refuse_the_key(key):
    m = Manifest.from_dict({".zgroup": '{"zarr_format": 2}'})
    for value in (b"{}", Reference("s3://b/f", 0, 1)):
        with pytest.raises(ManifestError):
            m.set(key, value)
    if key.strip("/") == key and key:  # (fsspec strips slashes from paths before refstore sees them)
        fs = ReferenceFileSystem({".zgroup": '{"zarr_format": 2}'})
        with pytest.raises(ManifestError):
            fs.pipe(key, b"{}")
    assert list(m) == [".zgroup"]


def test_store_writes_refuse_the_key():
    import zarr.core.buffer
    import zarr.core.sync

    store = ReferenceStore({".zgroup": '{"zarr_format": 2}'}, read_only=False)
    buf = zarr.core.buffer.default_buffer_prototype().buffer.from_bytes(b"{}")
    with pytest.raises(ManifestError, match="escaped_dir"):
        zarr.core.sync.sync(store.set(ESCAPE, buf))


def test_gen_cannot_generate_bad_keys():
    doc = {"version": 1, "refs": {}, "gen": [{"key": "a/{{d}}/x", "url": "u", "dimensions": {"d": [".."]}}]}
    with pytest.raises(ManifestError, match=r"a/\.\./x"):
        Manifest.from_dict(doc)
    doc["gen"][0]["dimensions"] = {"d": ["\x00"]}
    with pytest.raises(ManifestError, match="control"):
        Manifest.from_dict(doc)


def test_keys_longer_than_the_budget_are_refused():
    long = "a/" + "b" * 5000
    with pytest.raises(ManifestError, match="max_key_length"):
        Manifest.from_dict({long: "x"})
    with budgets(max_key_length=10_000):
        assert long in Manifest.from_dict({long: "x"})


_SEGMENT = st.sampled_from(["a", "b0", ".", "..", "", "...", ".z", "\x00", "\t", " ", "ü", "c/d"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_SEGMENT, min_size=1, max_size=5).map("/".join), min_size=1, max_size=8))
def test_listing_never_yields_an_invalid_key(keys):
    accepted = {}
    for key in keys:
        try:
            check_key(key)
        except ManifestError:
            with pytest.raises(ManifestError):
                Manifest.from_dict({key: "x"})
            with pytest.raises(ManifestError):
                Manifest.from_dict({"version": 1, "refs": {key: "x", "b": "y"}})
            continue
        accepted[key] = "x"
    m = Manifest.from_dict(accepted)
    assert sorted(m) == sorted(accepted)
    stack = [""]
    while stack:
        path = stack.pop()
        files, dirs = m.list_dir(path)
        for name in files + dirs:
            full = f"{path}/{name}" if path else name
            check_key(full)
            if name in dirs:
                stack.append(full)
    fs = ReferenceFileSystem(m)
    for name in fs.find("", withdirs=True):
        check_key(name)
