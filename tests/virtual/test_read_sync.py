"""Virtual arrays read through ReferenceStore.get_sync (on fsspec's IO loop) match the async reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from _vdata import open_h5_var, read_h5, write_h5
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from refstore import ReferenceStore
from refstore.virtual import concat, save_virtual

PROTO = default_buffer_prototype()


def test_virtual_chunks_read_sync(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    paths = [write_h5(tmp_path / f"y{i}.h5", rng.standard_normal((n, 3)).astype("f4"), (4, 3), "gzip")
             for i, n in enumerate((9, 6))]
    store = ReferenceStore(save_virtual({"t": concat([open_h5_var(p) for p in paths])}))
    assert not store._supports_sync_io
    listed = sync(_collect(store.list_prefix("t/")))
    chunk_keys = [k for k in listed if "/.sources/" not in k and k.rpartition("/")[2][0].isdigit()]
    assert len(chunk_keys) == 4  # 15 rows in chunks of 4; chunk 2 straddles the two files
    for key in chunk_keys:
        assert store.get_sync(key).to_bytes() == sync(store.get(key, PROTO)).to_bytes()
    expected = np.concatenate([read_h5(p) for p in paths])
    np.testing.assert_array_equal(zarr.open_array(store, path="t", mode="r")[:], expected)


async def _collect(it) -> list[str]:
    return [k async for k in it]
