"""Fuzzing the parquet manifest reader (``.zmetadata`` and partition files) (issue 13, item 8).

Settings as in test_fuzz_json.py: a fixed number of derandomized examples in
CI, ``REFSTORE_FUZZ_EXAMPLES=N`` for a run by hand.
"""

from __future__ import annotations

import io
import itertools
import json
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _fuzz import (
    DATA_URL,
    INTS,
    TALLY,
    URLS,
    WILD,
    ZARR_JSON,
    ZARRAY,
    check_opens,
    fuzz_settings,
    mutated,
    put_data,
    tight_budgets,
    valid_documents,
)
from hypothesis import given
from hypothesis import strategies as st

from refstore import Manifest, ManifestError

MEM = fsspec.filesystem("memory")
_count = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def _data() -> Any:
    put_data()
    yield
    if TALLY.cases:
        print(f"\nfuzz tally: {TALLY}")


def _root() -> str:
    """A fresh directory for one case (parquet directories are never overwritten in place)."""
    return f"memory://fuzz/pq/{next(_count)}.parq"


@given(doc=valid_documents(), record_size=st.sampled_from([1, 3, 1000]))
@fuzz_settings(150)
def test_what_refstore_writes_reads_back_the_same(doc, record_size):
    with tight_budgets():
        source = Manifest.from_dict(json.loads(json.dumps(doc)))
        root = _root()
        try:
            source.save(root, record_size=record_size)
        except ManifestError:
            return  # entries the layout cannot hold are refused, naming the key
    opened = check_opens(lambda: Manifest.open(root), list(source.keys())[:8])
    assert opened is not None, "refstore cannot read a parquet manifest it wrote"
    assert _entries(opened) == _entries(source)


def _entries(m: Manifest) -> dict[str, Any]:
    """Entries, JSON documents parsed: the layout keeps inline data outside chunk grids
    (metadata, and objects given as values) as JSON documents, not as the bytes they were."""
    return {k: _parsed(v) if isinstance(v, bytes) else v for k, v in m.items()}


def _parsed(data: bytes) -> Any:
    try:
        return ("json", json.loads(data))
    except ValueError:
        return data


# -- hostile .zmetadata and partitions -----------------------------------------------------------

ARRAY_PREFIXES = st.sampled_from(["a", "", "a/b", "a/0", "c"])
DOCUMENTS = st.one_of(
    st.tuples(ARRAY_PREFIXES, ZARRAY).map(lambda t: ((t[0] + "/" if t[0] else "") + ".zarray", t[1])),
    st.tuples(ARRAY_PREFIXES, ZARR_JSON).map(lambda t: ((t[0] + "/" if t[0] else "") + "zarr.json", t[1])),
    st.tuples(st.sampled_from([".zgroup", ".zattrs", "a/.zattrs", "", "../x", "a//b"]), WILD),
)
PATHS = st.one_of(
    st.lists(URLS.filter(lambda u: u is None or isinstance(u, str)), max_size=12),
    st.lists(st.sampled_from([DATA_URL, None]), max_size=12),
)


def _column(kind: str, values: list[Any]) -> pa.Array:
    """*values* as a pyarrow column of *kind*, or as strings when they do not fit it."""
    types = {"int64": pa.int64(), "uint64": pa.uint64(), "int8": pa.int8(), "float": pa.float64(),
             "string": pa.string(), "binary": pa.binary(), "null": pa.null()}
    try:
        return pa.array(values, type=types[kind])
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


@st.composite
def partitions(draw: Any) -> bytes:
    """The bytes of a parquet file with kerchunk's columns (or some of them), holding hostile values."""
    n = draw(st.integers(0, 12))
    columns: dict[str, pa.Array] = {}
    if draw(st.integers(0, 5)):
        paths = (draw(PATHS) + [DATA_URL] * n)[:n]
        paths += [None] * (n - len(paths))
        arr = _column(draw(st.sampled_from(["string", "string", "binary", "int64"])), paths)
        if draw(st.booleans()) and pa.types.is_string(arr.type):
            arr = arr.dictionary_encode()
        columns["path"] = arr
    for name in ("offset", "size"):
        if draw(st.integers(0, 5)):
            values = draw(st.lists(st.one_of(st.integers(0, 4000), INTS, st.none()), min_size=n, max_size=n))
            columns[name] = _column(draw(st.sampled_from(["int64", "int64", "uint64", "int8", "float", "string"])),
                                    values)
    if draw(st.integers(0, 2)):
        raw = draw(st.lists(st.one_of(st.none(), st.binary(max_size=8)), min_size=n, max_size=n))
        columns["raw"] = _column(draw(st.sampled_from(["binary", "binary", "string", "null"])), raw)
    if draw(st.integers(0, 3)) == 0:
        columns["extra"] = pa.array(list(range(n)))
    table = pa.table(columns) if columns else pa.table({"x": pa.array([], type=pa.int8())})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=draw(st.sampled_from(["zstd", "none", "snappy"])))
    return buf.getvalue()


@given(
    documents=st.lists(DOCUMENTS, max_size=4),
    record_size=st.one_of(st.sampled_from([1, 4, 10, 100]), INTS, WILD),
    parts=st.lists(st.tuples(ARRAY_PREFIXES, st.integers(0, 3), partitions()), max_size=4),
    form=st.sampled_from(["object", "object", "text"]),
)
@fuzz_settings(250)
def test_hostile_parquet_manifests_open_or_refuse(documents, record_size, parts, form):
    root = _root()
    metadata = {key: (json.dumps(doc) if form == "text" else doc) for key, doc in documents}
    try:
        MEM.pipe_file(f"{root}/.zmetadata", json.dumps({"metadata": metadata, "record_size": record_size}).encode())
    except (TypeError, ValueError):  # a key json cannot write
        return
    for prefix, record, data in parts:
        MEM.pipe_file(f"{root}/{prefix + '/' if prefix else ''}refs.{record}.parq", data)
    hints = [f"{p}/{i}" for p in ("a", "a/b", "c") for i in ("0", "0.0", "1", "c/0", "0/0", "3")]
    check_opens(lambda: Manifest.open(root), hints)


def _valid_parquet() -> dict[str, bytes]:
    """The files of a small valid parquet manifest, by path relative to its root."""
    refs: dict[str, Any] = {
        ".zgroup": '{"zarr_format": 2}',
        "a/.zarray": json.dumps({"zarr_format": 2, "shape": [6, 4], "chunks": [2, 2], "dtype": "<f4",
                                 "compressor": None, "filters": None, "fill_value": 0, "order": "C"}),
    }
    refs.update({f"a/{i}.{j}": [DATA_URL, 16 * (2 * i + j), 16] for i in range(3) for j in range(2)})
    refs["a/2.1"] = "base64:AAECAw=="
    root = "memory://fuzz/pq/valid.parq"
    Manifest.from_dict(refs).save(root, record_size=4)
    return {p[len("/fuzz/pq/valid.parq/") :]: MEM.cat_file(p) for p in MEM.find(root)}


@given(data=st.data())
@fuzz_settings(250)
def test_mutated_parquet_files_open_or_refuse(data):
    valid = _valid_parquet()
    name = data.draw(st.sampled_from(sorted(valid)))
    root = _root()
    for rel, content in valid.items():
        MEM.pipe_file(f"{root}/{rel}", data.draw(mutated(content)) if rel == name else content)
    check_opens(lambda: Manifest.open(root), ["a/0.0", "a/1.1", "a/2.1", "a/2.0"])
