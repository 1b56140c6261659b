"""No reader drops a key: arrays inside other arrays' keys, arrays described twice, short reads (issue 13)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from refstore import Manifest, ManifestError
from refstore.manifest._stream import load_json_stream


def _zarray(shape: list[int], chunks: list[int], sep: str = ".") -> str:
    return json.dumps({"zarr_format": 2, "shape": shape, "chunks": chunks, "dtype": "<f4", "compressor": None,
                       "filters": None, "fill_value": 0.0, "order": "C", "dimension_separator": sep})


def _zarr_json(shape: list[int], chunks: list[int]) -> str:
    return json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}], "fill_value": 0,
    })


def _entries(m: Manifest) -> dict[str, Any]:
    keys = list(m.keys())
    assert len(keys) == len(set(keys)), "a key is listed twice"
    assert len(m) == len(keys)
    return {k: m[k] for k in keys}


def _expected(refs: dict[str, Any]) -> dict[str, Any]:
    """What a plain dict of the references holds (fsspec's view): every key once."""
    return _entries(Manifest.from_dict(refs))


def _stream(doc: dict[str, Any], block: int) -> Manifest:
    text = json.dumps(doc).encode()
    m = Manifest()
    assert load_json_stream(m, io.BytesIO(text), size_hint=len(text), block=block)
    return m


def _nested_arrays() -> dict[str, Any]:
    # array "a" has "/"-separated keys a/i/j; array "a/0" (invalid as a hierarchy, but a
    # dict of references all the same) has keys a/0/j: both claim a/0/0 and a/0/1
    refs: dict[str, Any] = {"a/.zarray": _zarray([2, 2], [1, 1], "/"), "a/0/.zarray": _zarray([2], [1])}
    refs.update({f"a/{i}/{j}": ["s3://b/x", 2 * i + j, 1] for i in range(2) for j in range(2)})
    refs["z/loose"] = ["s3://b/z", 9, 1]
    return refs


def test_two_arrays_claiming_the_same_keys_keep_every_key_once():
    refs = _nested_arrays()
    got = _entries(Manifest.from_dict(refs))
    assert sorted(got) == sorted(refs)  # z/loose was dropped: the shared keys were counted twice
    for key in ("a/0/0", "a/0/1", "a/1/1", "z/loose"):
        url, offset, length = refs[key]
        assert (got[key].url, got[key].offset, got[key].length) == (url, offset, length)


@pytest.mark.parametrize("block", [16, 1 << 20])
def test_two_arrays_claiming_the_same_keys_stream_alike(block):
    refs = _nested_arrays()
    assert _entries(_stream({"version": 1, "refs": refs}, block)) == _entries(Manifest.from_dict(refs))


def test_edits_do_not_tabulate_an_array_inside_another():
    m = Manifest.from_dict({"a/.zarray": _zarray([2, 2], [1, 1], "/"), "a/0/0": ["s3://b/x", 0, 1]})
    m.set("a/0/.zarray", _zarray([2], [1]).encode())
    assert _entries(m)["a/0/0"].offset == 0
    assert sorted(m.keys()) == ["a/.zarray", "a/0/.zarray", "a/0/0"]


def _described_twice() -> dict[str, Any]:
    refs: dict[str, Any] = {"a/.zarray": _zarray([2], [1])}
    refs.update({f"a/{i}": ["s3://b/x", i, 1] for i in range(2)})
    refs["pad"] = "x" * 2000  # the zarr.json arrives in a later block than a/0 and a/1
    refs["a/zarr.json"] = _zarr_json([4], [1])
    refs["a/c/0"] = ["s3://b/x", 5, 1]
    return refs


@pytest.mark.parametrize("block", [64, 256, 1 << 20])
def test_an_array_with_both_zarray_and_zarr_json_streams_every_key(block):
    refs = _described_twice()
    got = _entries(_stream({"version": 1, "refs": refs}, block))
    assert sorted(got) == sorted(refs)  # a/0 and a/1 were dropped when zarr.json replaced the table
    assert got == _entries(Manifest.from_dict(refs))


def test_rewriting_an_arrays_metadata_keeps_its_references():
    m = Manifest.from_dict({"a/.zarray": _zarray([2], [1]), "a/0": ["s3://b/x", 0, 1], "a/1": ["s3://b/x", 1, 1]})
    m.set("a/.zarray", _zarray([8], [2]).encode())  # another grid: a/0 is still a chunk key, a/1 too
    assert sorted(m.keys()) == ["a/.zarray", "a/0", "a/1"]
    assert m["a/1"].offset == 1


class _Short(io.RawIOBase):
    """A stream whose reads return at most *n* bytes (a socket, a decompressor)."""

    def __init__(self, data: bytes, n: int) -> None:
        super().__init__()
        self.data, self.at, self.n = data, 0, n

    def read(self, size: int | None = -1) -> bytes:
        size = self.n if size is None or size < 0 else min(size, self.n)
        out = self.data[self.at : self.at + size]
        self.at += len(out)
        return out

    def readable(self) -> bool:
        return True


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("indent", [None, 2])
def test_a_short_first_read_does_not_misplace_the_first_key(n, indent):
    refs = {"abc/.zarray": _zarray([2], [1]), "abc/0": ["s3://b/x", 0, 1], "abc/1": ["s3://b/x", 1, 1]}
    text = json.dumps(refs, indent=indent).encode()
    m = Manifest()
    # the reader went back to where it had been in the old block: it then fell back to
    # reading the whole document again, or misread the first key
    assert load_json_stream(m, _Short(text, n), block=4)
    assert _entries(m) == _expected(refs)


def test_parquet_refuses_an_array_described_twice(tmp_path):
    root = tmp_path / "refs.parq"
    root.mkdir()
    meta = {"a/.zarray": json.loads(_zarray([2], [1])), "a/zarr.json": json.loads(_zarr_json([4], [1]))}
    (root / ".zmetadata").write_text(json.dumps({"metadata": meta, "record_size": 10}))
    with pytest.raises(ManifestError, match="a/"):
        Manifest.open(str(root))


def test_parquet_refuses_an_array_among_another_arrays_keys(tmp_path):
    root = tmp_path / "refs.parq"
    root.mkdir()
    meta = {"a/.zarray": json.loads(_zarray([2, 2], [1, 1], "/")), "a/0/.zarray": json.loads(_zarray([2], [1]))}
    (root / ".zmetadata").write_text(json.dumps({"metadata": meta, "record_size": 10}))
    with pytest.raises(ManifestError, match=r"a/0/\.zarray"):
        Manifest.open(str(root))


def test_parquet_writing_refuses_what_reading_would_refuse(tmp_path):
    refs = _described_twice()
    del refs["pad"]  # (inline text outside any grid: the layout cannot hold it either)
    m = Manifest.from_dict(refs)
    with pytest.raises(ManifestError, match=r"a/zarr\.json"):
        m.save(str(tmp_path / "refs.parq"))


def test_the_index_of_heads_finds_every_clash_pairwise_comparison_finds():
    """``Manifest._clashes`` looks tables up by head (a virtual manifest has thousands of arrays: comparing
    each new array with every table made loading quadratic, 50 s for 4,000); it must agree with
    comparing the new layout with every table, for nested arrays in both orders, both separators,
    zarr 3's ``c/`` and arrays whose keys only look like chunk keys (``a/0``, ``a/c``, ``a/.s/1``)."""
    import itertools
    import random

    from refstore.manifest._table import keys_may_overlap, layout_from_metadata

    names = ["", "a", "a/0", "a/0/1", "a/c", "a/c/0", "a/1.0", "a/.s", "a/.s/1", "a/.s/12", "b", "b/c/0/0", "ab"]
    docs = [(".zarray", json.loads(_zarray([4, 4], [2, 2], "/"))), (".zarray", json.loads(_zarray([4], [2]))),
            ("zarr.json", json.loads(_zarr_json([4, 4], [2, 2])))]
    rng = random.Random(5)
    for trial in range(60):
        m = Manifest()
        chosen = rng.sample(list(itertools.product(names, range(len(docs)))), 6)
        for prefix, d in chosen:
            name, meta = docs[d]
            layout = layout_from_metadata(prefix, name, meta)
            if prefix in m._tables:
                continue
            brute = any(p != layout.prefix and keys_may_overlap(t.layout, layout) for p, t in m._tables.items())
            assert m._clashes(layout) == brute, (trial, prefix, name, sorted(m._tables))
            if not brute:
                m._add_table(layout)
