"""The refstore command: demo, inspect, convert."""

from __future__ import annotations

import json

from refstore import Manifest
from refstore.cli import main


def test_demo_reads_back_what_it_wrote(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "demo OK" in out and "matches the file: True" in out and "level 2" in out
    assert (tmp_path / "sample.json").exists() and (tmp_path / "tiles.json").exists()


def test_inspect_and_convert(tmp_path, capsys):
    src = tmp_path / "m.json"
    src.write_text(json.dumps({"a/.zarray": json.dumps({"shape": [4], "chunks": [2], "dtype": "u1", "compressor": None,
                                                        "filters": None, "fill_value": 0, "order": "C", "zarr_format": 2}),
                               "a/0": ["s3://b/f", 0, 2], "a/1": ["s3://b/f", 2, 2]}))
    assert main(["inspect", str(src)]) == 0
    assert "3 keys (2 references, 1 inline)" in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "m.parq")]) == 0
    assert Manifest.open(str(tmp_path / "m.parq"))["a/1"].offset == 2
    assert main(["inspect", str(tmp_path / "missing.json")]) == 1
    assert "missing.json" in capsys.readouterr().err
