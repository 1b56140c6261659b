"""Regression tests for what the manifest fuzzers found (tests/manifest/test_fuzz_*.py), one per bug."""

from __future__ import annotations

import io
import json

import pytest

from refstore import Manifest, ManifestError
from refstore.manifest._stream import load_json_stream


@pytest.mark.parametrize("value", [5, 0, -1, 256, True, 1.5])
def test_a_number_is_no_value(value):
    # int has a to_bytes method, so 5 was read as the inline byte b"\x05" (and -1 raised OverflowError)
    with pytest.raises(ManifestError, match=r"key 'k': unsupported value of type"):
        Manifest.from_dict({"version": 1, "refs": {"k": value}})


@pytest.mark.parametrize("refs", [{"": None}, {".": ""}, {"k": [[]]}])
def test_a_version_0_key_named_refs_streams_as_a_whole_parse_reads_it(refs):
    # without "version": 1 the top-level "refs" is a key of a version 0 manifest, whose value is
    # inline JSON; the streaming reader parsed it as version 1 refs and refused their entries
    text = json.dumps({"refs": refs}).encode()
    m = Manifest()
    if load_json_stream(m, io.BytesIO(text), block=5):
        assert dict(m.items()) == dict(Manifest.from_dict({"refs": refs}).items())
    assert json.loads(Manifest.from_dict(json.loads(text))["refs"]) == refs


def test_every_one_byte_corruption_of_a_partition_reads_or_raises_manifest_error():
    # pyarrow reads some corrupt files without complaint: a path dictionary index past the
    # dictionary gave IndexError on lookup, text that is not UTF-8 a UnicodeDecodeError
    import fsspec

    from refstore.manifest._parquet import decode_partition
    from refstore.manifest._table import KeyLayout

    refs = {"a/.zarray": json.dumps({"zarr_format": 2, "shape": [6, 4], "chunks": [2, 2], "dtype": "<f4",
                                     "compressor": None, "filters": None, "fill_value": 0, "order": "C"})}
    refs.update({f"a/{i}.{j}": ["memory://regress/data.bin", 16 * (2 * i + j), 16] for i in range(3) for j in range(2)})
    refs["a/2.1"] = "base64:AAECAw=="
    Manifest.from_dict(refs).save("memory://regress/v.parq", record_size=4)
    data = fsspec.filesystem("memory").cat_file("memory://regress/v.parq/a/refs.0.parq")
    layout = KeyLayout("a", (3, 2), False, ".")
    for at in range(len(data)):
        for bits in (32, 128, 255):
            corrupt = bytearray(data)
            corrupt[at] ^= bits
            try:
                part = decode_partition(bytes(corrupt), "refs.0.parq", layout, 0, 4)
                for row in range(4):
                    part.entry(row)
                    part.has(row)
                part.present_rows()
            except ManifestError as exc:
                assert "refs.0.parq" in str(exc)


@pytest.mark.parametrize("shape", [[2**31], [2**40, 2**20]])
def test_loading_a_parquet_manifest_of_a_huge_sparse_grid_allocates_no_columns(tmp_path, shape):
    # load() (and to_dict) allocated dense columns for the whole declared grid (67M cells:
    # 1.3 GB; 2**60: MemoryError) and looped over every partition number it could have
    meta = {"zarr_format": 2, "shape": shape, "chunks": [1] * len(shape), "dtype": "<f4", "compressor": None,
            "filters": None, "fill_value": 0, "order": "C"}
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "refs.parq"
    (root / "a").mkdir(parents=True)
    (root / ".zmetadata").write_text(json.dumps({"metadata": {"a/.zarray": meta}, "record_size": 10}))
    # the chunk of flat index 5 (the last index 0...05): row 5 of partition 0
    rows = {"path": [None] * 5 + ["memory://x"], "offset": [0] * 5 + [1], "size": [0] * 5 + [2]}
    pq.write_table(pa.table(rows), root / "a" / "refs.0.parq")
    key = "a/" + ".".join(["0"] * (len(shape) - 1) + ["5"])
    opened = Manifest.open(str(root))
    loaded = opened.load()
    assert loaded.nbytes() < 1 << 20
    assert dict(loaded.items()) == {"a/.zarray": opened["a/.zarray"], key: opened[key]}
    assert opened.to_dict()["refs"][key] == ["memory://x", 1, 2]
