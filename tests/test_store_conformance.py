"""ReferenceStore against zarr's own store conformance suite.

Writes to a store opened with ``read_only=False`` edit the manifest in memory,
so the whole suite applies; the test-side ``set``/``get`` go to the manifest
directly, bypassing the store.
"""

from __future__ import annotations

from typing import Any

import pytest
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.testing.store import StoreTests

from refstore import Manifest, ReferenceStore


class TestReferenceStore(StoreTests[ReferenceStore, cpu.Buffer]):
    store_cls = ReferenceStore
    buffer_cls = cpu.Buffer

    async def set(self, store: ReferenceStore, key: str, value: Buffer) -> None:
        store.manifest.set(key, value.to_bytes())

    async def get(self, store: ReferenceStore, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(store.manifest[key])

    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"fo": Manifest(), "read_only": False}

    def test_store_repr(self, store: ReferenceStore) -> None:
        assert repr(store).startswith("ReferenceStore(<Manifest")

    def test_store_supports_writes(self, store: ReferenceStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: ReferenceStore) -> None:
        assert store.supports_listing


async def test_default_is_read_only() -> None:
    store = ReferenceStore({"a": "x"})
    assert store.read_only
    with pytest.raises(ValueError, match="read-only"):
        await store.set("b", cpu.Buffer.from_bytes(b"y"))
    assert (await store.get("a", default_buffer_prototype())).to_bytes() == b"x"
    assert await store.get("missing", default_buffer_prototype()) is None
