"""Behaviours of fsspec's ReferenceFileSystem that refstore keeps, pinned one by one
(written from what fsspec and kerchunk do; see issue 12 for the upstream suites' counts)."""

from __future__ import annotations

import fsspec
import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype


def _fs(refs: dict) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("reference", fo=refs, skip_instance_cache=True)


def test_inline_base64_as_bytes_is_decoded_like_text() -> None:
    """kerchunk's do_inline and tiff_to_zarr(inline_threshold=...) write ``b"base64:..."`` values."""
    fs = _fs({"s": "base64:aGVsbG8=", "b": b"base64:aGVsbG8=", "raw": b"hello"})
    assert fs.cat("s") == fs.cat("b") == fs.cat("raw") == b"hello"


def test_inline_base64_bytes_chunk_reads_through_zarr() -> None:
    import base64
    import json

    data = np.arange(6, dtype="<i2")
    refs = {
        ".zgroup": json.dumps({"zarr_format": 2}),
        "x/.zarray": json.dumps({"zarr_format": 2, "shape": [6], "chunks": [6], "dtype": "<i2", "compressor": None,
                                 "fill_value": 0, "filters": None, "order": "C"}),
        "x/0": b"base64:" + base64.b64encode(data.tobytes()),
    }
    np.testing.assert_array_equal(zarr.open_group(_fs(refs).get_mapper(""), mode="r")["x"][:], data)


def test_values_with_to_bytes_are_inline_data() -> None:
    """A zarr Buffer (what zarr hands a mapper) is accepted as inline bytes."""
    fs = _fs({"k": default_buffer_prototype().buffer.from_bytes(b"abc")})
    assert fs.cat("k") == b"abc"


def test_a_protocol_the_caller_configures_is_allowed() -> None:
    """``remote_protocol="memory"`` or ``fs={"memory": ...}`` is the caller's choice (fsspec reads it);
    a manifest that names ``memory://`` on its own stays refused (tests/fetch/test_url_probes.py)."""
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/refstore-compat/data", b"0123456789")
    try:
        for kwargs in ({"remote_protocol": "memory"}, {"fs": {"memory": mem}}, {"fs": mem}):
            fs = fsspec.filesystem("reference", fo={"k": ["memory://refstore-compat/data", 2, 3]},
                                   skip_instance_cache=True, **kwargs)
            assert fs.cat("k") == b"234"
    finally:
        mem.rm_file("/refstore-compat/data")
