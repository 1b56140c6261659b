"""Issue 13, budget probes: gen sizes, template arithmetic, dense columns, inflation, malformed input.

Each probe is a small manifest that used to cost unbounded time or memory, or
to escape as a raw exception; now it raises a ManifestError (or TemplateError)
naming the input and the budget, fast, or is read within bounded memory.
"""

from __future__ import annotations

import gzip
import json
import os
import time
import zlib

import pytest

from refstore import Manifest, ManifestError, TemplateError
from refstore.manifest import Budgets, budgets
from refstore.manifest._inflate import frame_content_size, numcodecs_inflate
from refstore.manifest._model import CELL_FLOOR

ZARRAY = {"zarr_format": 2, "chunks": [1], "dtype": "<i1", "compressor": None, "filters": None,
          "fill_value": 0, "order": "C"}


def _gen(dims: dict, key: str = "k/{{i}}", **fields: str) -> dict:
    return {"version": 1, "refs": {}, "gen": [{"key": key, "url": "s3://b/f", "dimensions": dims, **fields}]}


def _quick(fn, seconds: float = 2.0):
    start = time.perf_counter()
    try:
        return fn()
    finally:
        assert time.perf_counter() - start < seconds


@pytest.mark.parametrize("dims", [
    {"i": {"stop": 10**8}}, {"i": {"stop": 10**12}}, {"i": {"stop": 10**30}},
    {"i": {"stop": 1000}, "j": {"stop": 1000}, "k": {"stop": 1000}},
    {"i": {"start": -(10**30), "stop": 10**30, "step": 10**20}},
])
def test_gen_is_counted_before_it_is_expanded(dims):
    with pytest.raises(TemplateError, match=r"gen\[0\].*max_generated_keys=10000000"):
        _quick(lambda: Manifest.from_dict(_gen(dims)))


def test_gen_budget_counts_all_entries_and_can_be_changed(tmp_path):
    doc = _gen({"i": {"stop": 6}})
    doc["gen"].append({"key": "m/{{i}}", "url": "u", "dimensions": {"i": [1, 2, 3]}})
    with budgets(max_generated_keys=8), pytest.raises(TemplateError, match=r"gen\[1\].*9 keys"):
        Manifest.from_dict(doc)
    with budgets(max_generated_keys=9) as b:
        assert b.max_generated_keys == 9 and len(Manifest.from_dict(doc)) == 9
    (tmp_path / "g.json").write_text(json.dumps(doc))
    with budgets(max_generated_keys=8), pytest.raises(TemplateError, match="max_generated_keys"):
        Manifest.open(str(tmp_path / "g.json"))
    # an empty dimension makes no keys, however large the others
    assert len(Manifest.from_dict(_gen({"i": {"stop": 10**30}, "j": []}))) == 0
    with pytest.raises(TypeError), budgets(no_such_budget=1):
        pass


@pytest.mark.parametrize(("expression", "message"), [
    ("((2**64)**64)**64", "max_int_bits"),
    ("(((((2**60)**60)**60)**60)**60)", "max_int_bits"),
    ("2**64**64", "max_int_bits"),
    ("9**9**9", "exponent"),
    ("10**60 * 10**60", "max_int_bits"),
    ("10**70", "exponent"),
    ("1e300**64", "OverflowError"),
    ("-'a'", "TypeError"),
    ("'%0999999999d' % i", "width"),
    ("'%.999999999f' % i", "width"),
    ("'%*d' % (5, i)", "width"),
    ("'x' * 10", "only"),
    ("-" * 300 + "1", "max_expression_length"),
    ("-(" * 40 + "1" + ")" * 40, "deeper"),
    ("1/0", "ZeroDivisionError"),
    ("__import__('os')", "unsupported"),
    ("i.__class__", "unsupported"),
])
def test_template_expressions_stay_within_budget(expression, message):
    doc = _gen({"i": {"stop": 3}}, key="k/{{" + expression + "}}")
    with pytest.raises(TemplateError, match=message):
        _quick(lambda: Manifest.from_dict(doc))


def test_deep_expressions_are_refused_even_with_a_larger_length_budget():
    doc = _gen({"i": {"stop": 1}}, key="k/{{" + "-" * 5000 + "1}}")
    with budgets(max_expression_length=100_000), pytest.raises(TemplateError, match="cannot parse|deeper"):
        _quick(lambda: Manifest.from_dict(doc))


def test_ordinary_gen_arithmetic_still_works():
    doc = _gen({"i": {"stop": 4}, "j": [0, 1]}, key="a/{{i}}.{{j}}", offset="{{(i * 2 + j) * 2**20}}",
               length="{{2**20}}")
    doc["gen"][0]["url"] = "s3://b/f{{'%03d' % i}}.nc"
    m = Manifest.from_dict(doc)
    ref = m["a/3.1"]
    assert (ref.url, ref.offset, ref.length) == ("s3://b/f003.nc", 7 << 20, 1 << 20)


def test_rendered_text_is_bounded():
    doc = _gen({"i": {"stop": 2}}, key="k/{{i}}")
    doc["templates"] = {"big": "x" * 5000}
    doc["gen"][0]["url"] = "{{big}}{{big}}"
    with pytest.raises(TemplateError, match="max_text_length"):
        Manifest.from_dict(doc)
    refs = {"version": 1, "templates": {"big": "y" * 3000}, "refs": {"k": ["{{big}}{{big}}{{big}}", 0, 1]}}
    with pytest.raises(TemplateError, match="max_text_length"):
        Manifest.from_dict(refs)
    with pytest.raises(TemplateError, match="max_text_length"):
        Manifest.from_dict({"version": 1, "templates": {"a": "z" * 5000, "b": "{{a}}{{a}}"}, "refs": {}})


def test_many_large_arrays_in_a_small_manifest_do_not_allocate_their_grids(tmp_path):
    refs = {".zgroup": '{"zarr_format": 2}'}
    for n in range(50):
        refs[f"v{n}/.zarray"] = json.dumps({**ZARRAY, "shape": [1_000_000]}, separators=(",", ":"))
        refs[f"v{n}/7"] = ["s3://b/f", n, 1]
    doc = {"version": 1, "refs": refs}
    text = json.dumps(doc, separators=(",", ":"))
    assert len(text) < 10_000  # 50 arrays of 1M chunks: 1 GB of dense columns if each got its grid
    path = tmp_path / "m.json"
    path.write_text(text)
    for m in (Manifest.from_dict(doc), Manifest.open(str(path))):
        assert m.nbytes() <= 20 * CELL_FLOOR  # was 50 x 20 MB
        assert m["v49/7"].offset == 49 and len(m) == 101
    edited = Manifest()
    for key, value in refs.items():
        edited.set(key, value.encode() if isinstance(value, str) else __import__("refstore").Reference(*value))
    assert edited.nbytes() <= 20 * CELL_FLOOR


def _gzip_bomb(path, inflated: int = 1 << 30) -> None:
    """A ~1 MB .json.gz inflating to *inflated* bytes of valid JSON (gzip members concatenated)."""
    block = gzip.compress(b"x" * (1 << 20), 9)
    with open(path, "wb") as f:
        f.write(gzip.compress(b'{"version": 1, "refs": {"a": "'))
        f.writelines(block for _ in range(inflated >> 20))
        f.write(gzip.compress(b'"}}'))


def test_a_gzip_bomb_is_stopped(tmp_path):
    path = tmp_path / "bomb.json.gz"
    _gzip_bomb(path)
    assert os.path.getsize(path) < 1_200_000
    with pytest.raises(ManifestError, match="bomb.json.gz.*inflated.*max_inflate_ratio"):
        _quick(lambda: Manifest.open(str(path)), 10)


def test_a_zstd_bomb_is_stopped(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    writer = zstandard.ZstdCompressor(level=3).compressobj()
    parts = [writer.compress(b'{"version": 1, "refs": {"a": "')]
    parts += [writer.compress(b"x" * (1 << 20)) for _ in range(1024)]
    parts += [writer.compress(b'"}}'), writer.flush()]
    path = tmp_path / "bomb.json.zst"
    path.write_bytes(b"".join(parts))
    with pytest.raises(ManifestError, match="inflated.*max_inflate_ratio"):
        _quick(lambda: Manifest.open(str(path)), 10)


def test_compressed_manifests_within_the_budget_still_open(tmp_path):
    refs = {".zgroup": '{"zarr_format": 2}'}
    refs.update({f"k{i}": " " * 1000 for i in range(20_000)})  # 20 MB of blanks: inflates > 200x
    text = json.dumps({"version": 1, "refs": refs}).encode()
    (tmp_path / "m.json.gz").write_bytes(gzip.compress(text))
    assert len(Manifest.open(str(tmp_path / "m.json.gz"))) == 20_001  # within min_inflate_allowance
    with budgets(min_inflate_allowance=1 << 20), pytest.raises(ManifestError, match="max_inflate_ratio"):
        Manifest.open(str(tmp_path / "m.json.gz"))
    assert Budgets().max_inflate_ratio == 200


def test_numcodecs_zstd_path_checks_the_declared_size():
    zstandard = pytest.importorskip("zstandard")
    data = b'{"version": 1, "refs": {"a": "b"}}'
    framed = zstandard.ZstdCompressor().compress(data)
    assert frame_content_size(framed) == len(data)
    assert numcodecs_inflate(framed, "m.json.zst") == data
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    assert frame_content_size(unsized) is None
    with pytest.raises(ManifestError, match="does not declare its size"):
        numcodecs_inflate(unsized, "m.json.zst")
    big = zstandard.ZstdCompressor().compress(b" " * (80 << 20))
    with pytest.raises(ManifestError, match="declare"):
        numcodecs_inflate(big, "m.json.zst")
    with pytest.raises(ManifestError, match="corrupt"):
        numcodecs_inflate(framed[:6] + b"\xff" * 20, "m.json.zst")


def _zmetadata(tmp_path, name, content):
    root = tmp_path / name
    root.mkdir()
    (root / ".zmetadata").write_text(content)
    return str(root)


RAW = {
    "offset_2_63_dict": lambda p: Manifest.from_dict({"a": ["u", 2**63, 1]}),
    "length_2_64_table": lambda p: Manifest.from_dict({"a/.zarray": json.dumps({**ZARRAY, "shape": [4]}),
                                                      "a/0": ["u", 0, 2**64]}),
    "offset_2_63_stream": lambda p: _open_text(p, json.dumps({"version": 1, "refs": {
        "a/.zarray": json.dumps({**ZARRAY, "shape": [4]}), "a/0": ["u", 2**63, 1], "a/1": ["u", 1, 1]}})),
    "offset_2_63_gen": lambda p: Manifest.from_dict(_gen({"i": {"stop": 1}}, offset="{{2**63}}", length="1")),
    "truncated_gzip": lambda p: _open_bytes(p, "t.json.gz", gzip.compress(b'{"version": 1, "refs": {}}' * 50)[:30]),
    "corrupt_gzip": lambda p: _open_bytes(p, "c.json.gz", b"\x1f\x8b" + bytes(range(200))),
    "corrupt_gzip_crc": lambda p: _open_bytes(p, "crc.json.gz", _bad_crc()),
    "corrupt_zstd": lambda p: _open_bytes(p, "c.json.zst", b"\x28\xb5\x2f\xfd" + bytes(range(200))),
    "deep_templates": lambda p: _open_text(p, '{"version": 1, "templates": ' + "[" * 100_000 + "]" * 100_000
                                           + ', "refs": {}}'),
    "deep_refs": lambda p: _open_text(p, '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    "deep_dict": lambda p: Manifest.from_dict({"a/.zattrs": _nested(100_000)}),
    "negative_shape": lambda p: Manifest.from_dict({"a/.zarray": json.dumps({**ZARRAY, "shape": [-5]})}),
    "negative_shape_v3": lambda p: Manifest.from_dict({"a/zarr.json": json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": [-1, 4], "data_type": "int8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, 1]}}})}),
    "grid_past_int64": lambda p: Manifest.from_dict({"a/.zarray": json.dumps({**ZARRAY, "shape": [2**40, 2**40], "chunks": [1, 1]})}),
    "grid_past_int64_parquet": lambda p: Manifest.open(_zmetadata(p, "g.parq", json.dumps(
        {"metadata": {"a/.zarray": {**ZARRAY, "shape": [10**30]}}, "record_size": 10}))),
    "directory_json": lambda p: (os.makedirs(p / "d.json"), Manifest.open(str(p / "d.json"))),
    "directory_zmetadata": lambda p: (os.makedirs(p / "z.parq" / ".zmetadata"), Manifest.open(str(p / "z.parq"))),
    "zmetadata_int": lambda p: Manifest.open(_zmetadata(p, "i.parq", "5")),
    "zmetadata_metadata_int": lambda p: Manifest.open(_zmetadata(p, "j.parq", '{"metadata": 5, "record_size": 2}')),
    "zmetadata_record_size": lambda p: Manifest.open(_zmetadata(p, "k.parq", '{"metadata": {}, "record_size": "x"}')),
    "zmetadata_key_int": lambda p: Manifest.from_dict({".zmetadata": 5}),
    "zmetadata_documents_int": lambda p: Manifest.open(_zmetadata(p, "l.parq", json.dumps(
        {"metadata": {".zgroup": 5, "a/.zarray": 5}, "record_size": 2}))),
    "zmetadata_text_int": lambda p: Manifest.from_dict({"version": 1, "refs": {".zmetadata": "5"}}),
    "zmetadata_text_int_stream": lambda p: _open_text(p, json.dumps({"version": 1, "refs": {
        ".zgroup": '{"zarr_format": 2}', ".zmetadata": "5", "a": ["u", 0, 1]}})),
    "zattrs_not_json": lambda p: Manifest.from_dict({"a/.zattrs": "not json"}),
    "non_text_key": lambda p: Manifest.from_dict({5: "x"}),
}


def _nested(depth: int) -> dict:
    out: dict = {}
    for _ in range(depth):
        out = {"a": out}
    return out


def _bad_crc() -> bytes:
    data = bytearray(gzip.compress(b'{"version": 1, "refs": {"a": "b"}}'))
    data[-8] ^= 0xFF
    return bytes(data)


def _open_text(path, text: str):
    (path / "m.json").write_text(text)
    return Manifest.open(str(path / "m.json"))


def _open_bytes(path, name: str, data: bytes):
    (path / name).write_bytes(data)
    return Manifest.open(str(path / name))


@pytest.mark.parametrize("case", sorted(RAW))
def test_malformed_input_raises_manifest_error_naming_it(tmp_path, case):
    with pytest.raises(ManifestError) as info:
        _quick(lambda: RAW[case](tmp_path), 5)
    message = str(info.value)
    assert any(name in message for name in ("key", "manifest", "gen[0]", ".zmetadata")), message
    assert zlib.crc32(message.encode())  # (a message, not an empty one)


def test_a_huge_sparse_parquet_grid_lists_only_its_partition_files(tmp_path):
    pytest.importorskip("pyarrow")
    from refstore import Reference, ReferenceFileSystem

    small = {".zgroup": '{"zarr_format": 2}', "a/.zarray": json.dumps({**ZARRAY, "shape": [3000]})}
    small.update({f"a/{i}": ["s3://b/f", i, 1] for i in range(0, 3000, 7)})
    root = tmp_path / "refs.parq"
    Manifest.from_dict(small).save(str(root), record_size=1000)
    meta = json.loads((root / ".zmetadata").read_text())
    meta["metadata"]["a/.zarray"]["shape"] = [10**12]  # a billion partitions, three of them with files
    (root / ".zmetadata").write_text(json.dumps(meta))
    os.rename(root / "a" / "refs.2.parq", root / "a" / "refs.999999.parq")
    m = Manifest.open(str(root))
    m.set("a/123456789012", Reference("s3://b/g", 5, 1))  # an edit in a partition without a file
    fs = ReferenceFileSystem(m)
    names = _quick(lambda: fs.ls("a", detail=False), 5)
    moved = [f"a/{999_999_000 + (i - 2000)}" for i in range(2000, 3000) if i % 7 == 0]
    assert set(moved) <= set(names) and "a/123456789012" in names and "a/7" in names
    assert _quick(lambda: len(m), 5) == 1 + 1 + len(range(0, 3000, 7)) + 1
    assert m[moved[0]] == Reference("s3://b/f", int(moved[0][2:]) - 999_999_000 + 2000, 1)
