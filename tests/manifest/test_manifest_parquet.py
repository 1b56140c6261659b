"""Kerchunk's parquet layout: read what kerchunk/fsspec write, write what fsspec reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refstore import Manifest, ManifestError, Reference

pytest.importorskip("pyarrow")


def entries(m: Manifest) -> dict:
    """Entries with metadata documents parsed (parquet stores them as JSON, not as the original text)."""
    return {k: json.loads(v) if k.rsplit("/", 1)[-1] in (".zgroup", ".zarray", ".zattrs", "zarr.json") else v
            for k, v in m.items()}


def _refs(zarr_format: int) -> dict:
    refs: dict = {}
    if zarr_format == 2:
        refs[".zgroup"] = json.dumps({"zarr_format": 2})
        refs["data/.zarray"] = json.dumps({"shape": [30, 40], "chunks": [10, 10], "dtype": "<i4", "compressor": None,
                                           "filters": None, "fill_value": 0, "order": "C", "zarr_format": 2})
        refs["data/.zattrs"] = json.dumps({"_ARRAY_DIMENSIONS": ["y", "x"]})
        key = "data/{}.{}"
    else:
        refs["zarr.json"] = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
        refs["data/zarr.json"] = json.dumps({
            "zarr_format": 3, "node_type": "array", "shape": [30, 40], "data_type": "int32",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [10, 10]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]})
        key = "data/c/{}/{}"
    for i in range(3):
        for j in range(4):
            if (i, j) == (2, 3):
                continue  # a missing chunk
            refs[key.format(i, j)] = [f"s3://bucket/file{j}.bin", 400 * (4 * i + j), 400]
    refs[key.format(0, 0)] = ["s3://bucket/whole.bin"]
    refs[key.format(1, 1)] = b"\x07" * 400
    return refs


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("record_size", [5, 10_000])
def test_parquet_round_trip(tmp_path, zarr_format, record_size):
    m = Manifest.from_dict(_refs(zarr_format))
    out = str(tmp_path / "refs.parq")
    m.save(out, record_size=record_size)
    back = Manifest.open(out)
    assert entries(back) == entries(m)
    assert back[("data/c/0/0" if zarr_format == 3 else "data/0.0")] == Reference("s3://bucket/whole.bin", 0, None)


def test_reads_what_kerchunk_writes(tmp_path):
    kdf = pytest.importorskip("kerchunk.df")
    refs = _refs(2)
    refs["data/1.1"] = "base64:" + __import__("base64").b64encode(b"\x07" * 400).decode()
    out = str(tmp_path / "k.parq")
    kdf.refs_to_dataframe({"version": 1, "refs": refs}, out, record_size=5)
    m = Manifest.open(out)
    assert m["data/0.1"] == Reference("s3://bucket/file1.bin", 400, 400)
    assert m["data/0.0"] == Reference("s3://bucket/whole.bin", 0, None)
    assert m["data/1.1"] == b"\x07" * 400
    assert m.get("data/2.3") is None
    assert json.loads(m["data/.zattrs"]) == {"_ARRAY_DIMENSIONS": ["y", "x"]}


def test_fsspec_reads_what_refstore_writes(tmp_path):
    """fsspec's own LazyReferenceMapper must read refstore's parquet (zarr v2 keys)."""
    from fsspec.implementations.reference import LazyReferenceMapper

    m = Manifest.from_dict(_refs(2))
    out = str(tmp_path / "r.parq")
    m.save(out, record_size=5)
    lazy = LazyReferenceMapper(out, engine="pyarrow")
    assert list(lazy["data/0.1"]) == ["s3://bucket/file1.bin", 400, 400]
    assert list(lazy["data/2.2"]) == ["s3://bucket/file2.bin", 400 * 10, 400]
    assert bytes(lazy["data/1.1"]) == b"\x07" * 400


def test_parquet_refuses_what_it_cannot_express(tmp_path):
    m = Manifest.from_dict({"loose/key": ["f", 0, 1]})
    with pytest.raises(ManifestError, match="loose/key"):
        m.save(str(tmp_path / "x.parq"))


def test_large_parquet_columns(tmp_path):
    n = 50_000
    meta = {"shape": [n], "chunks": [1], "dtype": "u1", "compressor": None, "filters": None,
            "fill_value": 0, "order": "C", "zarr_format": 2}
    refs = {"v/.zarray": json.dumps(meta)}
    refs.update({f"v/{i}": [f"gs://b/f{i % 7}", i, 1] for i in range(n)})
    m = Manifest.from_dict(refs)
    m.save(str(tmp_path / "big.parq"))
    back = Manifest.open(str(tmp_path / "big.parq"))
    assert np.array_equal(back.load()._tables["v"].offset, np.arange(n))
    assert back["v/49999"] == Reference(f"gs://b/f{49999 % 7}", 49999, 1)
