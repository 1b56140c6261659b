"""Kerchunk JSON v0/v1 into the compact Manifest and back."""

from __future__ import annotations

import base64
import gzip
import json
import pickle

import numpy as np
import pytest

from refstore import KeyNotInManifest, Manifest, ManifestError, Reference, TemplateError


def zarray(shape, chunks, sep=None):
    meta = {"shape": shape, "chunks": chunks, "dtype": "<f4", "compressor": None, "filters": None,
            "fill_value": 0, "order": "C", "zarr_format": 2}
    if sep:
        meta["dimension_separator"] = sep
    return json.dumps(meta)


def zarrjson(shape, chunks, sep="/", encoding="default"):
    return json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": encoding, "configuration": {"separator": sep}},
        "fill_value": 0, "codecs": [{"name": "bytes"}],
    })


def test_v0_values_of_every_kind():
    refs = {
        ".zgroup": '{"zarr_format": 2}',
        ".zattrs": {"title": "x"},
        "a/.zarray": zarray([4, 4], [2, 2]),
        "a/0.0": ["/data/f.nc", 10, 20],
        "a/0.1": ["/data/f.nc"],
        "a/1.0": "base64:" + base64.b64encode(b"\x00\x01\xff").decode(),
        "a/1.1": "ascii text",
    }
    m = Manifest.from_dict(refs)
    assert len(m) == 7
    assert m["a/0.0"] == Reference("/data/f.nc", 10, 20)
    assert m["a/0.1"] == Reference("/data/f.nc", 0, None)
    assert m["a/1.0"] == b"\x00\x01\xff"
    assert m["a/1.1"] == b"ascii text"
    assert json.loads(m[".zattrs"]) == {"title": "x"}
    assert sorted(m) == sorted(refs)
    # chunk references live in integer columns, not per-key Python objects
    assert "a" in m._tables and m._tables["a"].count == 2 and not m._loose


def test_v1_templates_and_overrides_do_not_mutate_input():
    templates = {"u": "s3://bucket/path", "v": "{{u}}/sub"}
    refs = {"version": 1, "templates": templates,
            "refs": {"a/.zarray": zarray([2], [1]), "a/0": ["{{u}}/f1", 0, 5], "a/1": ["{{v}}/f2", 5, 5]}}
    m = Manifest.from_dict(refs)
    assert m["a/0"].url == "s3://bucket/path/f1"
    assert m["a/1"].url == "s3://bucket/path/sub/f2"
    m2 = Manifest.from_dict(refs, template_overrides={"u": "gs://other"})
    assert m2["a/0"].url == "gs://other/f1"
    assert templates == {"u": "s3://bucket/path", "v": "{{u}}/sub"}


def test_gen_expands_arithmetic_without_code():
    refs = {"version": 1, "templates": {"u": "server/path"}, "refs": {}, "gen": [
        {"key": "gen_key{{i}}", "url": "http://{{u}}_{{i}}", "offset": "{{(i + 1) * 1000}}",
         "length": "1000", "dimensions": {"i": {"stop": 5}}},
        {"key": "w/{{ '%02d' % j }}", "url": "file_{{j}}", "dimensions": {"j": [3, 7]}},
    ]}
    m = Manifest.from_dict(refs)
    assert m["gen_key0"] == Reference("http://server/path_0", 1000, 1000)
    assert m["gen_key4"] == Reference("http://server/path_4", 5000, 1000)
    assert m["w/07"] == Reference("file_7", 0, None)
    assert len(m) == 7


@pytest.mark.parametrize("expr", [
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ __import__('os').system('echo pwned') }}",
    "{{ open('/etc/passwd').read() }}",
    "{{ i.real }}",
    "{{ 'a' * 10**9 }}",
])
def test_gen_refuses_anything_but_arithmetic(expr):
    refs = {"version": 1, "refs": {}, "gen": [{"key": "k" + expr, "url": "u", "dimensions": {"i": [1]}}]}
    with pytest.raises(TemplateError, match=r"gen\[0\]"):
        Manifest.from_dict(refs)


def test_unknown_template_names_the_key():
    refs = {"version": 1, "templates": {}, "refs": {"x": ["{{nope}}/f", 0, 1]}}
    with pytest.raises(TemplateError, match="'x'.*nope"):
        Manifest.from_dict(refs)


@pytest.mark.parametrize("value, message", [
    (["u", 1], "got 2 items"),
    (["u", -1, 5], "offset must be an integer >= 0"),
    (["u", 0, "5"], "length must be an integer >= 0"),
    ([5, 0, 1], "url must be text"),
    (3.5, "unsupported value"),
    ("base64:@@@", "invalid base64"),
])
def test_malformed_entries_name_key_and_problem(value, message):
    with pytest.raises(ManifestError, match=f"'a/0'.*{message}"):
        Manifest.from_dict({"a/.zarray": zarray([2], [1]), "a/0": value})
    with pytest.raises(ManifestError, match=f"'loose'.*{message}"):
        Manifest.from_dict({"loose": value})


def test_unknown_version():
    with pytest.raises(ManifestError, match="version 2"):
        Manifest.from_dict({"version": 2, "refs": {}})


@pytest.mark.parametrize("meta, keys", [
    (zarray([4, 6], [2, 3]), ["0.0", "0.1", "1.0", "1.1"]),
    (zarray([4, 6], [2, 3], sep="/"), ["0/0", "0/1", "1/0", "1/1"]),
    (zarrjson([4, 6], [2, 3]), ["c/0/0", "c/0/1", "c/1/0", "c/1/1"]),
    (zarrjson([4, 6], [2, 3], sep="."), ["c.0.0", "c.0.1", "c.1.0", "c.1.1"]),
    (zarrjson([4, 6], [2, 3], sep=".", encoding="v2"), ["0.0", "0.1", "1.0", "1.1"]),
    (zarrjson([], []), ["c"]),
    (zarray([], []), ["0"]),
])
@pytest.mark.parametrize("prefix", ["", "grp/var"])
def test_key_layouts_are_tabulated(meta, keys, prefix):
    name = "zarr.json" if '"zarr_format": 3' in meta else ".zarray"
    base = f"{prefix}/" if prefix else ""
    refs = {base + name: meta}
    for i, k in enumerate(keys):
        refs[base + k] = ["f", i * 10, 10]
    m = Manifest.from_dict(refs)
    assert not m._loose, "chunk keys should be held in columns"
    for i, k in enumerate(keys):
        assert m[base + k] == Reference("f", i * 10, 10)
    # non-canonical or out-of-grid spellings are different keys
    assert m.get(base + "00.0") is None and m.get(base + "9.9") is None
    assert sorted(m) == sorted(refs)


def test_keys_outside_the_grid_and_odd_keys_are_kept():
    refs = {"a/.zarray": zarray([2], [1]), "a/0": ["f", 0, 1], "a/7": ["f", 1, 1], "a/01": ["f", 2, 1], "x/y": ["g"]}
    m = Manifest.from_dict(refs)
    assert m["a/7"] == Reference("f", 1, 1)
    assert m["a/01"] == Reference("f", 2, 1)
    assert m["x/y"] == Reference("g", 0, None)
    assert len(m) == 5


def test_edits_and_listing():
    m = Manifest.from_dict({"a/zarr.json": zarrjson([4, 4], [2, 2]), "a/c/0/0": ["f", 0, 4]})
    m.set("a/c/1/1", Reference("g", 4, 4))
    m.set("a/c/0/1", b"inline")
    assert m.list_dir("") == ([], ["a"])
    assert m.list_dir("a") == (["zarr.json"], ["c"])
    assert m.list_dir("a/c") == ([], ["0", "1"])
    assert m.list_dir("a/c/0") == (["0", "1"], [])
    assert m.list_dir("a/c/1/") == (["1"], [])
    m.delete("a/c/0/0")
    assert "a/c/0/0" not in m and len(m) == 3
    with pytest.raises(KeyNotInManifest):
        m.delete("a/c/0/0")
    with pytest.raises(ManifestError, match="'..'"):
        m.set("a/../etc", b"x")


@pytest.mark.parametrize("opened", ["dict", "file"])
@pytest.mark.parametrize(
    ("before", "after"),
    [
        (zarray([4, 4], [2, 2]), zarray([6, 4], [2, 2])),  # grows on append
        (zarray([4, 4], [2, 2]), zarray([2, 4], [2, 2])),  # shrinks: keys past the grid stay
        (zarray([4, 4], [2, 2]), zarray([4, 4], [2, 2], sep="/")),  # another key spelling
        (zarrjson([4, 4], [2, 2]), zarrjson([8, 4], [2, 2])),
    ],
)
def test_replacing_metadata_keeps_every_chunk(tmp_path, opened, before, after):
    """Metadata replaced (kerchunk's append writes a grown .zarray) must not drop the
    array's existing references: they stay under their keys, and new ones join them."""
    v3 = "zarr_format\": 3" in before
    meta = "a/zarr.json" if v3 else "a/.zarray"
    keys = ["a/c/0/0", "a/c/1/1"] if v3 else ["a/0.0", "a/1.1"]
    refs = {meta: before, keys[0]: ["f", 0, 16], keys[1]: ["g", 16, 16], "a/x": "inline"}
    if opened == "dict":
        m = Manifest.from_dict(refs)
    else:
        (tmp_path / "r.json").write_text(json.dumps({"version": 1, "refs": refs}))
        m = Manifest.open(str(tmp_path / "r.json"))
    m.set(meta, after.encode())
    assert m[keys[0]] == Reference("f", 0, 16) and m[keys[1]] == Reference("g", 16, 16)
    assert m["a/x"] == b"inline" and len(m) == 4
    grown = "a/c/2/0" if v3 else "a/2.0"
    m.set(grown, Reference("h", 0, 16))
    assert m[grown] == Reference("h", 0, 16) and len(m) == 5
    assert sorted(m.keys()) == sorted([meta, "a/x", grown, *keys])


def test_round_trip_json_and_pickle(tmp_path):
    refs = {".zgroup": '{"zarr_format":2}', "a/.zarray": zarray([6], [2]), "a/0": ["f", 0, 3],
            "a/1": "base64:" + base64.b64encode(b"\xff\xfe").decode(), "a/2": ["g"], "odd": ["h", 1, 2]}
    m = Manifest.from_dict(refs)
    for name in ("m.json", "m.json.gz", "m.json.zst"):
        m.save(str(tmp_path / name))
        back = Manifest.open(str(tmp_path / name))
        assert dict(back.items()) == dict(m.items())
    assert gzip.decompress((tmp_path / "m.json.gz").read_bytes()).startswith(b"{")
    clone = pickle.loads(pickle.dumps(m))
    assert dict(clone.items()) == dict(m.items())


def test_compact_in_memory():
    n = 200_000
    refs = {"a/.zarray": zarray([n], [1])}
    refs.update({f"a/{i}": [f"s3://b/file{i % 100}.nc", i * 8, 8] for i in range(n)})
    m = Manifest.from_dict(refs)
    assert m.nbytes() == 20 * n
    assert len(pickle.dumps(m)) < 25 * n
    assert m[f"a/{n - 1}"] == Reference(f"s3://b/file{(n - 1) % 100}.nc", (n - 1) * 8, 8)
    assert np.all(m._tables["a"].offset == np.arange(n) * 8)


def test_grids_larger_than_a_million_chunks_are_tabulated():
    refs = {"big/.zarray": zarray([1200, 1000], [1, 1])}  # 1.2M chunks, 40k of them referenced
    refs.update({f"big/{i}.{j}": ["u", i * 1000 + j, 1] for i in [*range(39), 1199] for j in range(1000)})
    m = Manifest.from_dict(refs)
    assert "big" in m._tables and not m._loose
    assert m["big/1199.999"] == Reference("u", 1199999, 1)
