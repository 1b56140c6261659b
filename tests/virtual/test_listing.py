"""Listing a store that serves virtual arrays: their chunk keys appear, in the array's key encoding."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

import refstore
from refstore.virtual import VirtualStore, concat, open_virtual, pad, save_virtual


def _arrays(store: Any = None) -> tuple[zarr.Array, zarr.Array]:
    a = zarr.create_array(store or zarr.storage.MemoryStore(), name="src/a" if store else None,
                          shape=(10, 4), chunks=(4, 4), dtype="i4")
    a[:] = np.arange(40).reshape(10, 4)
    b = zarr.create_array(store or zarr.storage.MemoryStore(), name="src/b" if store else None,
                          shape=(7, 4), chunks=(4, 4), dtype="i4")
    b[:] = -np.arange(28).reshape(7, 4)
    return a, b


async def _collect(it: Any) -> list[str]:
    return [k async for k in it]


def _ls(store: Any, method: str, prefix: str | None = None) -> list[str]:
    fn = getattr(store, method)
    return sync(_collect(fn() if prefix is None else fn(prefix)))


def _key(fmt: int, name: str, coords: tuple[int, ...]) -> str:
    return f"{name}/c/" + "/".join(map(str, coords)) if fmt == 3 else f"{name}/" + ".".join(map(str, coords))


@pytest.mark.parametrize("zarr_format", [3, 2])
@pytest.mark.parametrize("opener", ["ReferenceStore", "open_virtual"])
def test_virtual_chunk_keys_are_listed(zarr_format: int, opener: str) -> None:
    a, b = _arrays()
    virtuals = {"v": concat([a, b]), "g/p": pad(a, ((0, 8), (0, 0)))}  # v: 17 rows; p: rows 10..17 padding
    manifest = save_virtual(virtuals, zarr_format=zarr_format)
    store = refstore.ReferenceStore(manifest) if opener == "ReferenceStore" else open_virtual(manifest)
    v_keys = {_key(zarr_format, "v", (i, 0)) for i in range(5)}
    p_keys = {_key(zarr_format, "g/p", (i, 0)) for i in range(3)}  # chunks 3 and 4 are padding only
    listed = _ls(store, "list")
    assert len(listed) == len(set(listed))
    assert v_keys | p_keys <= set(listed)
    assert not {_key(zarr_format, "g/p", (i, 0)) for i in (3, 4)} & set(listed)
    assert set(_ls(store, "list_prefix", "v/")) - v_keys == {k for k in manifest.keys() if k.startswith("v/")}
    assert set(_ls(store, "list_prefix", "g/p/")) & (v_keys | p_keys) == p_keys
    if zarr_format == 3:
        assert "c" in _ls(store, "list_dir", "v")
        assert _ls(store, "list_dir", "v/c") == ["0", "1", "2", "3", "4"]
        assert _ls(store, "list_dir", "v/c/3/") == ["0"]
        assert _ls(store, "list_dir", "g/p/c") == ["0", "1", "2"]
    else:
        assert {"0.0", "4.0", ".zarray"} <= set(_ls(store, "list_dir", "v"))
        assert {"0.0", "2.0"} <= set(_ls(store, "list_dir", "g/p")) and "3.0" not in _ls(store, "list_dir", "g/p")
    assert "p" in _ls(store, "list_dir", "g") and "v" in _ls(store, "list_dir", "")
    # zarr counts stored chunks by listing
    group = zarr.open_group(store, mode="r")
    assert group["v"].nchunks_initialized == 5 and group["g/p"].nchunks_initialized == 3
    assert sorted(name for name, _ in group.members(max_depth=None)) == ["g", "g/p", "v"]
    assert sync(store.exists(_key(zarr_format, "v", (4, 0))))
    assert not sync(store.exists(_key(zarr_format, "g/p", (3, 0))))
    np.testing.assert_array_equal(group["v"][:], np.concatenate([a[:], b[:]]))


def test_virtual_store_over_a_plain_zarr_store() -> None:
    """VirtualStore over a MemoryStore: sources are arrays of the same store, found by listing it."""
    mem = zarr.storage.MemoryStore()
    zarr.create_group(mem)
    a, b = _arrays(mem)
    v = concat([a, b])[2:]  # 15 rows, chunks of 4: misaligned everywhere
    proto = default_buffer_prototype()
    definition = v.to_dict(source_ref=lambda s: {"path": s.array.path})
    sync(mem.set("v/refstore.virtual.json", proto.buffer.from_bytes(json.dumps(definition).encode())))
    for name, doc in v.encoding_docs().items():
        sync(mem.set(f"v/{name}", proto.buffer.from_bytes(doc)))
    store = VirtualStore(mem)
    listed = _ls(store, "list_prefix", "v")
    assert sorted(k for k in listed if "/c/" in k) == [f"v/c/{i}/0" for i in range(4)]
    assert _ls(store, "list_dir", "v/c") == ["0", "1", "2", "3"]
    assert sorted(_ls(store, "list_dir", "")) == ["src", "v", "zarr.json"]
    arr = zarr.open_group(store, mode="r")["v"]
    assert arr.nchunks_initialized == 4
    np.testing.assert_array_equal(arr[:], np.concatenate([a[:], b[:]])[2:])
