"""The engine's own small calls that faces use directly."""

from __future__ import annotations

import json

from refstore._engine import Engine


def test_metadata_keys_lists_only_metadata_documents_in_order() -> None:
    refs = {
        ".zgroup": json.dumps({"zarr_format": 2}),
        ".zattrs": json.dumps({"title": "t"}),
        "a/.zarray": json.dumps({"shape": [4], "chunks": [2], "dtype": "<u1", "compressor": None, "filters": None,
                                 "fill_value": 0, "order": "C", "zarr_format": 2}),
        "a/0": ["/nowhere/x.bin", 0, 2],
        "a/1": "base64:AAE=",
        "b/zarr.json": json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}),
        "b/notes.txt": "zarr.json is not in this name",
    }
    engine = Engine(refs)
    assert list(engine.metadata_keys()) == [".zgroup", ".zattrs", "a/.zarray", "b/zarr.json"]
