"""The quote-split reader of flat entries, and the packed URL table, against a whole JSON parse."""

from __future__ import annotations

import io
import json
import pickle

import pytest
import ujson

from refstore import Manifest, ManifestError, Reference
from refstore.manifest import _urls
from refstore.manifest._flat import read_flat
from refstore.manifest._stream import load_json_stream


def _stream(text: bytes, block: int) -> Manifest:
    m = Manifest()
    assert load_json_stream(m, io.BytesIO(text), size_hint=len(text), block=block)
    return m


def _doc(entries: str) -> bytes:
    zarray = json.dumps({"zarr_format": 2, "shape": [40], "chunks": [1], "dtype": "<f4", "compressor": None,
                         "filters": None, "fill_value": 0.0, "order": "C"})
    return ('{"version": 1, "refs": {"a/.zarray": ' + json.dumps(zarray) + ", " + entries + "}}").encode()


GOOD = [
    '"a/0": ["s3://b/x", 0, 1], "a/1": ["s3://b/x", 10, 20]',
    '"a/0":["s3://b/ x],\\u0020", 5, 6]',  # an escape: not for the quote-split reader, still read
    '"a/0" :\n [ "s3://b/x" ,\t7 , 8 ] , "a/1":["s3://b/y",0,0]',
    '"a/0": ["s3://b/ü.bin", 1, 2], "a/1": ["s3://b/x", 9223372036854775807, 1]',
    '"a/0": [null, 1, 2], "a/1": ["s3://b/whole"], "a/2": ["s3://b/x", 3, 4]',
    '"a/0": [null, 1, 2], "a/1":[ null ,3 ,4 ],\n "a/2": [null, 0, 0]',  # every URL null: one target
    '"a/0": [null, 1, 2], "null": [null, 3, 4]',
    '"a/0": ["s3://b/x", 1, 2], "loose key": ["s3://b/x", 3, 4], "a/39": ["s3://b/x],\\"", 5, 6]',
    # what ujson (fsspec's parser too) reads although JSON does not allow it: the quote-split
    # reader passes these to ujson rather than read them its own way
    '"a/0": ["s3://b/x", 007, 1], "a/1": ["s3://b/\tx", 1, 2]',
]
BAD = [
    ('"a/0": ["s3://b/x", -1, 1]', "a/0.*offset"),
    ('"a/0": ["s3://b/x", 1.5, 1]', "a/0"),
    ('"a/0": ["s3://b/x", 1, 99999999999999999999]', "a/0"),
    ('"a/0": ["s3://b/x", 1, 2], "a/1": ["s3://b/x", 3]', "a/1"),
    ('"a/0": ["s3://b/x", 1, 2, 3]', "a/0"),
    # a number split by a blank is not two digits' worth of one number (it was read as 12)
    ('"a/0": ["s3://b/x", 1 2, 3], "a/1": ["s3://b/x", 3, 4]', "JSON|json|a/0"),
    ('"a/0": [null, 1, 2], "a/1": [null, 3 4, 5]', "JSON|json|a/1"),
    ('"a/0": [nu ll, 1, 2], "a/1": [null, 3, 5]', "JSON|json|a/0"),
]


@pytest.mark.parametrize("entries", GOOD)
def test_flat_entries_read_as_a_whole_parse_reads_them(entries):
    text = _doc(entries)
    whole = Manifest.from_dict(ujson.loads(text))
    for block in (8, 40, 1 << 20):
        got = _stream(text, block)
        assert dict(got.items()) == dict(whole.items()) and len(got) == len(whole)


@pytest.mark.parametrize(("entries", "says"), BAD)
def test_what_a_json_parse_refuses_is_refused(entries, says, tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(_doc(entries))
    with pytest.raises(ManifestError, match=says):
        Manifest.open(str(path))


def test_read_flat_takes_only_its_shape():
    block = read_flat(b'"a/0": ["s3://b/x", 1, 2],\n  "a/1" : [ "s3://b/y" , 30 , 40 ]  ')
    assert block is not None
    assert block.key_list() == ["a/0", "a/1"] and block.urls == [b"s3://b/x", b"s3://b/y"]
    assert block.offsets.tolist() == [1, 30] and block.lengths.tolist() == [2, 40]
    for other in (b'"a/0": ["s3://b/x", 1, 2] "a/1": ["s3://b/y", 3, 4]',  # no comma between entries
                  b'"a/0": ["s3://b/x", 1, 2],, "a/1": ["s3://b/y", 3, 4]',
                  b'"a/0": ["s3://b/x", 1 2]', b'"a/0": ["s3://b/x", 1, 2]x', b'"a/0": ["\xff", 1, 2]',
                  b'"a/0": ["s3://b/x", 1, 2], "a/1": "inline"', b'"a/0": ["s3://b/x", 01, 2]',
                  b'"a/0": ["s3://b/x", 1 2, 3]', b'"a/0": ["s3://b/x", 1, 2], "a/1": [null, 3, 4]',
                  b'"a/0": [null, 1, 2] "a/1": [null, 3, 4]', b'"a/0": [null, null, 2]',
                  b'"a/0": [null, 1, 2, "a/1": [null, 3, 4]]', b'"a/0": [null, 1, 2], "a/1": [null, 3, 4]x'):
        assert read_flat(other) is None, other
    assert read_flat(b'"a\n0": ["u", 1, 2],\n "a/1": ["u", 1, 2]') is None  # a newline in a key
    raw_newline = read_flat(b'"a/0": ["u\nv", 1, 2],\n "a/1": ["u", 1, 2]')  # in a URL: as ujson reads it
    assert raw_newline is not None and raw_newline.urls == [b"u\nv", b"u"] and raw_newline.keys == "a/0\na/1"
    nulls = read_flat(b'"a/0": [null, 1, 2],\n  "a/1" : [ null , 30 , 40 ]  ')
    assert nulls is not None and nulls.urls is None and nulls.key_list() == ["a/0", "a/1"]
    assert nulls.offsets.tolist() == [1, 30] and nulls.lengths.tolist() == [2, 40]


@pytest.fixture
def pack_early(monkeypatch):
    monkeypatch.setattr(_urls, "PACK_AFTER", 5)


def _many_urls(n: int) -> dict:
    refs = {".zgroup": '{"zarr_format": 2}',
            "a/.zarray": json.dumps({"zarr_format": 2, "shape": [n], "chunks": [1], "dtype": "<f4",
                                     "compressor": None, "filters": None, "fill_value": 0.0, "order": "C"})}
    for i in range(n):
        url = None if i == 33 else ("gs" if i % 50 == 7 else "s3") + f"://bucket/tiles/t-{i % (n - 9)}-é.bin"
        refs[f"a/{i}"] = [url, i, 10 + i]
    refs["a/12"] = ["s3://bucket/whole.bin"]
    return {"version": 1, "refs": refs}


@pytest.mark.parametrize("block", [64, 1 << 20])
def test_many_urls_are_packed_and_read_back_exactly(pack_early, block, tmp_path):
    doc = _many_urls(300)
    text = json.dumps(doc).encode()
    whole = Manifest.from_dict(doc)
    got = _stream(text, block)
    assert got._urls.packed > 200  # past PACK_AFTER, URLs are packed
    assert dict(got.items()) == dict(whole.items()) and len(got) == len(whole)
    assert got.protocols() == {"s3", "gs"} == whole.protocols()
    assert got.get("a/33").url is None
    again = pickle.loads(pickle.dumps(got))
    assert dict(again.items()) == dict(got.items())
    got.set("a/5", Reference("s3://bucket/new", 1, 2))
    got.set("b", Reference("s3://bucket/tiles/t-3-é.bin", 1, 2))  # known URL, added after packing
    assert got.get("a/5") == Reference("s3://bucket/new", 1, 2)
    assert got.get("b") == Reference("s3://bucket/tiles/t-3-é.bin", 1, 2)
    out = tmp_path / "out.json"
    got.save(str(out))
    assert dict(Manifest.open(str(out)).items()) == dict(got.items())


def test_url_table_ids_are_positions(pack_early):
    table = _urls.UrlTable(["a", None, "a", "b"])  # as given: a table read back keeps its ids
    assert list(table) == ["a", None, "a", "b"] and table.id_of("a") == 0
    assert table.schemes() == {"", None} and table.protocols() == set()
    ids = table.extend(["c", "d", "e", "c", None, "f", "g"])
    assert table.packed and [table[i] for i in ids] == ["c", "d", "e", "c", None, "f", "g"]
    assert ids[0] == ids[3] and table[-1] == "g" and table[2:4] == ["a", "b"]
    table.extend(["s3://x/1", "gs://y/2", "s3://x/3"])
    assert table.protocols() == {"s3", "gs"} and table.schemes() == {"s3", "gs", "", None}
    with pytest.raises(IndexError):
        table[len(table)]
    assert table.copy() == table and pickle.loads(pickle.dumps(table)) == list(table)


def test_packed_urls_span_chunks_and_keep_their_ids(pack_early, monkeypatch):
    """Once packing begins, the strings so far become the first packed ids (same ids, same
    URLs); packed URLs go in chunks of bounded count and bytes, and every id reads back across
    chunk edges, after pickling and copying too."""
    monkeypatch.setattr(_urls, "_CHUNK_URLS", 3)
    monkeypatch.setattr(_urls, "_CHUNK_BYTES", 12)
    urls = ["s3://a", "s3://c", "gs://é", "s3://b"]
    table = _urls.UrlTable(urls)
    assert not table.packed and table.id_of("gs://é") == 2
    more = [f"s3://x/{i}" for i in range(9)] + [None, "https://h/ü" * 2, "s3://x/3"]
    ids = table.extend(more)
    assert table.packed == len(table) == 4 + 12 - 1  # "s3://x/3" twice in one call: one id
    assert list(table) == urls + more[:-1] and [table[i] for i in ids] == more
    assert table[-1] == "https://h/ühttps://h/ü" and table[13] is None and table[1] == "s3://c"
    assert len(table._chunks) > 5 and all(len(c) <= 12 or len(e) == 1 for c, e in zip(table._chunks, table._ends))
    again = table.extend(["s3://a"])  # packed: a known URL gets a new id, naming the same text
    assert again[0] == len(table) - 1 and table[int(again[0])] == "s3://a"
    assert pickle.loads(pickle.dumps(table)) == table == table.copy()
    assert table.protocols() == {"s3", "gs", "https"} and table.contains("h/ü") and not table.contains("zz")


@pytest.mark.parametrize("extra", [0, 12])
def test_a_large_block_with_a_few_inline_entries_reads_as_a_whole_parse(extra, monkeypatch):
    """Flat entries with inline metadata and data among them (keys in random order put
    ``.zarray`` anywhere) are read piece by piece: the same as one JSON parse, whatever the
    pieces, including a URL ending in ``],`` (which looks like the end of an entry), and a block
    with more inline entries than pieces are tried for."""
    n = 6000
    zarray = json.dumps({"zarr_format": 2, "shape": [n], "chunks": [1], "dtype": "<f4", "compressor": None,
                         "filters": None, "fill_value": 0.0, "order": "C"})
    items: list[tuple[str, object]] = [(f"a/{i}", [f"s3://b/f{i % 7}.nc", 8 * i, 8]) for i in range(n)]
    items[1500] = ("a/1500", "inline bytes")
    items[3000] = ("a/3000", ["s3://b/odd],", 1, 2])
    for j in range(extra):
        items[100 + 400 * j] = (f"a/{100 + 400 * j}", "base64:AAAA")
    items.insert(4000, ("a/.zarray", zarray))
    items.insert(4500, ("b/.zattrs", json.dumps({"x": [1, 2]})))
    from refstore.manifest import _flat
    from refstore.manifest import _stream as stream_module

    read = []  # how often a block was read piece by piece
    monkeypatch.setattr(stream_module, "read_pieces", lambda t: read.append(_flat.read_pieces(t)) or read[-1])
    for style in ({}, {"indent": 1}):
        text = json.dumps({"version": 1, "refs": dict(items)}, **style).encode()
        whole = Manifest.from_dict(ujson.loads(text))
        for block in (1 << 17, 1 << 20):
            got = _stream(text, block)
            assert dict(got.items()) == dict(whole.items()) and len(got) == len(whole) == n + 2
            assert got.get("a/1500") == b"inline bytes" and got.get("a/3000").url == "s3://b/odd],"
    assert any(p is not None for p in read) == (extra == 0)  # 12 inline entries: past _MAX_SMALL
