"""A new fetch backend is one registration: refstore reads a protocol through whatever target
is registered for it, on every face, and the URL policy still applies."""

from __future__ import annotations

import asyncio

import fsspec
import numpy as np
import pytest
import zarr

import refstore
from refstore.fetch import TargetContext, _registry, register_target
from refstore.fetch._http import HTTPTarget
from refstore.fetch._targets import FsspecTarget


class DictTarget:
    """Objects held in a dict, counting the spans it is asked for."""

    objects: dict[str, bytes] = {}
    spans: list[tuple[str, int, int | None]] = []

    def __init__(self, context: TargetContext) -> None:
        self.context = context

    async def read(self, url: str, spans: list[tuple[int, int | None]]) -> list[bytes]:
        data = self.objects.get(url)
        if data is None:
            raise FileNotFoundError(url)
        self.spans.extend((url, s, e) for s, e in spans)
        return [data[s:e] for s, e in spans]

    async def size(self, url: str) -> int:
        return len(self.objects[url])

    async def close(self) -> None:
        pass


@pytest.fixture
def dict_protocol(monkeypatch: pytest.MonkeyPatch) -> type[DictTarget]:
    monkeypatch.setattr(_registry, "_FACTORIES", dict(_registry._FACTORIES))
    register_target(["dictproto"], DictTarget)
    DictTarget.objects = {"dictproto://b/data": np.arange(8, dtype="<i2").tobytes()}
    DictTarget.spans = []
    return DictTarget


def _refs() -> dict:
    meta = ('{"zarr_format":2,"shape":[8],"chunks":[4],"dtype":"<i2","compressor":null,"filters":null,'
            '"fill_value":0,"order":"C"}')
    return {".zgroup": '{"zarr_format":2}', "a/.zarray": meta,
            "a/0": ["dictproto://b/data", 0, 8], "a/1": ["dictproto://b/data", 8, 8]}


def test_a_registered_target_serves_its_protocol_on_every_face(dict_protocol) -> None:
    policy = refstore.URLPolicy(protocols=frozenset({"dictproto"}))
    fs = fsspec.filesystem("reference", fo=_refs(), url_policy=policy, skip_instance_cache=True)
    for store in (refstore.ReferenceStore(_refs(), url_policy=policy), fs.get_mapper("")):
        np.testing.assert_array_equal(zarr.open_group(store, mode="r")["a"][:], np.arange(8))
    assert {url for url, _, _ in dict_protocol.spans} == {"dictproto://b/data"}
    with pytest.raises(refstore.ReferenceNotReachable, match="dictproto://b/missing"):
        fsspec.filesystem("reference", fo={"k": ["dictproto://b/missing", 0, 2]}, url_policy=policy,
                          skip_instance_cache=True).cat("k")


def test_the_url_policy_still_decides(dict_protocol) -> None:
    """A registered protocol is not thereby allowed for a manifest from elsewhere."""
    with pytest.raises(refstore.URLNotAllowed):
        refstore.ReferenceStore(_refs(), url_policy=refstore.URLPolicy()).get_sync("a/0")
    assert dict_protocol.spans == []


def test_builtin_registrations() -> None:
    async def made() -> list[type]:
        given = fsspec.filesystem("memory")
        targets = [_registry.make_target(ctx) for ctx in (
            TargetContext("https"), TargetContext("https", filesystem=given), TargetContext("s3"))]
        for target in targets:
            await target.close()
        return [type(t) for t in targets]

    assert asyncio.run(made()) == [HTTPTarget, FsspecTarget, FsspecTarget]
