"""Fuzzing the JSON manifest readers: dicts, the streaming reader, gzip and zstd (issue 13, item 8).

Each property runs a fixed number of derandomized examples without an example
database, so CI runs the same cases every time (well under a minute together);
``REFSTORE_FUZZ_EXAMPLES=N`` runs N cases of each by hand. The properties are
in :mod:`_fuzz`.
"""

from __future__ import annotations

import gzip
import io
import json
from typing import Any

import fsspec
import pytest
import ujson
from _fuzz import (
    TALLY,
    check_opens,
    documents,
    fuzz_settings,
    mutated,
    put_data,
    tight_budgets,
    valid_documents,
)
from hypothesis import given
from hypothesis import strategies as st

from refstore import Manifest, ManifestError
from refstore.manifest._stream import load_json_stream

STYLES = st.sampled_from([{}, {"separators": (",", ":")}, {"indent": 1}, {"ensure_ascii": False}])


@pytest.fixture(scope="module", autouse=True)
def _data() -> Any:
    put_data()
    yield
    if TALLY.cases:
        print(f"\nfuzz tally: {TALLY}")


def _hints(doc: Any) -> list[str]:
    body = doc.get("refs") if isinstance(doc, dict) and isinstance(doc.get("refs"), dict) else doc
    return list(body)[:8] if isinstance(body, dict) else []


def _text(doc: Any, style: dict[str, Any]) -> bytes:
    try:
        return json.dumps(doc, **style).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):  # a key json cannot write
        return json.dumps({"version": 1, "refs": {}}).encode()


@given(doc=documents())
@fuzz_settings(300)
def test_from_dict_opens_or_refuses(doc):
    check_opens(lambda: Manifest.from_dict(doc), _hints(doc))


def _put(name: str, data: bytes) -> str:
    url = f"memory://fuzz/manifests/{name}"
    fsspec.filesystem("memory").pipe_file(url, data)
    return url


@given(doc=documents(), style=STYLES, block=st.sampled_from([7, 64, 1 << 20]))
@fuzz_settings(200)
def test_the_streaming_reader_opens_or_refuses(doc, style, block):
    text = _text(doc, style)

    def stream() -> Manifest:
        m = Manifest()
        if not load_json_stream(m, io.BytesIO(text), size_hint=len(text), block=block):
            return Manifest.open(_put("refs.json", text))  # as open_manifest falls back
        return m

    check_opens(stream, _hints(doc))


@given(doc=valid_documents(), style=STYLES, block=st.sampled_from([5, 64, 300, 1 << 20]))
@fuzz_settings(200)
def test_the_streaming_reader_agrees_with_from_dict(doc, style, block):
    text = _text(doc, style)
    with tight_budgets():
        try:
            whole = Manifest.from_dict(ujson.loads(text))
        except (ManifestError, ValueError):
            whole = None
        streamed = Manifest()
        try:
            ok = load_json_stream(streamed, io.BytesIO(text), size_hint=len(text), block=block)
        except ManifestError:
            assert whole is None, "the streaming reader refused what from_dict opens"
            return
    if not ok:
        return  # the whole-document reader reads it: that is from_dict
    assert whole is not None, "the streaming reader opened what from_dict refuses"
    keys = list(streamed.keys())
    assert len(keys) == len(set(keys)) == len(streamed)
    assert sorted(keys) == sorted(whole.keys())
    assert dict(streamed.items()) == dict(whole.items())


def _valid_text() -> bytes:
    refs: dict[str, Any] = {
        ".zgroup": '{"zarr_format": 2}',
        "a/.zarray": json.dumps({"zarr_format": 2, "shape": [8, 8], "chunks": [2, 2], "dtype": "<f4",
                                 "compressor": None, "filters": None, "fill_value": 0, "order": "C"}),
        "a/.zattrs": '{"units": "K"}',
        "b/zarr.json": json.dumps({"zarr_format": 3, "node_type": "array", "shape": [6], "data_type": "uint8",
                                   "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [2]}},
                                   "codecs": [{"name": "bytes"}], "fill_value": 0}),
        "b/c/2": "base64:AAE=",
        "loose": ["{{u}}/data.bin"],
    }
    refs.update({f"a/{i}.{j}": ["{{u}}/data.bin", 16 * (4 * i + j), 16] for i in range(4) for j in range(4)})
    refs.update({f"b/c/{i}": ["memory://fuzz/data.bin", 2 * i, 2] for i in range(2)})
    doc = {"version": 1, "templates": {"u": "memory://fuzz"},
           "gen": [{"key": "g/{{i}}", "url": "{{u}}/data.bin", "offset": "{{i * 4}}", "length": "4",
                    "dimensions": {"i": {"stop": 5}}}],
           "refs": refs}
    return json.dumps(doc, indent=1).encode()


VALID = _valid_text()


@given(data=mutated(VALID))
@fuzz_settings(400)
def test_mutated_json_bytes_open_or_refuse(data):
    url = _put("mutated.json", data)
    check_opens(lambda: Manifest.open(url), ["a/0.0", "b/c/1", "g/3", "loose"])


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(data)


@given(data=st.data(), kind=st.sampled_from(["gzip", "zstd"]), where=st.sampled_from(["inside", "outside"]))
@fuzz_settings(300)
def test_mutated_compressed_manifests_open_or_refuse(data, kind, where):
    compress = gzip.compress if kind == "gzip" else _zstd
    if where == "inside":  # a sound container of broken JSON
        blob = compress(data.draw(mutated(VALID)))
    else:  # a broken container
        blob = data.draw(mutated(compress(VALID)))
    url = _put("mutated.json" + (".gz" if kind == "gzip" else ".zst"), blob)
    check_opens(lambda: Manifest.open(url), ["a/0.0", "b/c/1", "g/3"])


@given(doc=documents(), kind=st.sampled_from(["gzip", "zstd"]))
@fuzz_settings(100)
def test_hostile_documents_compressed_open_or_refuse(doc, kind):
    text = _text(doc, {})
    blob = gzip.compress(text) if kind == "gzip" else _zstd(text)
    url = _put("hostile.json" + (".gz" if kind == "gzip" else ".zst"), blob)
    check_opens(lambda: Manifest.open(url), _hints(doc))
