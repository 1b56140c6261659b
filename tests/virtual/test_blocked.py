"""Blocked maps: per-block offsets inside fixed strides, checked against a numpy gather."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

import refstore
from refstore.virtual import VirtualArray, open_virtual, save_virtual
from refstore.virtual._index import Blocked, Layer
from refstore.virtual._source import ZarrSource


def _gather_index(n: int, start: int, step: int, block: int, stride: int, offsets: list[int]) -> np.ndarray:
    """Source indices of virtual positions 0..n-1, computed elementwise from the spec formula."""
    j = start + np.arange(n) * step
    k = j // block
    off = np.asarray(offsets)[np.minimum(k, len(offsets) - 1)]
    return k * stride + off + j % block


@pytest.fixture()
def raw() -> tuple[zarr.Array, np.ndarray]:
    """A 3 x 4 grid of 9 x 9 tiles (values encode position), chunked by tile."""
    data = np.arange(27 * 36 * 2, dtype="i4").reshape(27, 36, 2)
    arr = zarr.create_array(zarr.storage.MemoryStore(), shape=data.shape, chunks=(9, 9, 2), dtype="i4", fill_value=-1)
    arr[:] = data
    return arr, data


def _tiles_view(arr: zarr.Array, h: int = 20, w: int = 27) -> VirtualArray:
    """Tile 7 with overlap 1 stored in 9 x 9 chunks: the Deep Zoom pattern."""
    y = Blocked(0, 0, 1, 7, 9, (0, 1))
    x = Blocked(1, 0, 1, 7, 9, (0, 1))
    layer = Layer(ZarrSource(arr), (0, 0, 0), (h, w, 2), (y, x, (2, 0, 1)))
    return VirtualArray((h, w, 2), "i4", (7, 7, 2), -1, [layer])


def test_blocked_gather_matches_formula(raw) -> None:
    arr, data = raw
    v = _tiles_view(arr)
    iy, ix = _gather_index(20, 0, 1, 7, 9, [0, 1]), _gather_index(27, 0, 1, 7, 9, [0, 1])
    expected = data[np.ix_(iy, ix, [0, 1])]
    np.testing.assert_array_equal(v[...], expected)
    # block 0 starts at source 0, block 1 at 9 + 1, block 2 at 18 + 1
    assert list(iy[[0, 6, 7, 13, 14]]) == [0, 6, 10, 16, 19]
    for index in [np.s_[3:17, 5:23], np.s_[1:20:3, ::4], np.s_[13, 2:9, 1], np.s_[6:8, 6:8], np.s_[..., 0]]:
        np.testing.assert_array_equal(v[index][...], expected[index])
    # views of views stay blocked (no nesting) and compose
    w = v[2:19, 1:26:2][1::3, 3:]
    np.testing.assert_array_equal(w[...], expected[2:19, 1:26:2][1::3, 3:])
    assert all(isinstance(m, (Blocked, tuple)) for m in w.layers[0].src_map)


def test_blocked_offsets_list_and_start(raw) -> None:
    arr, data = raw
    m = Blocked(0, 3, 2, 5, 9, (2, 0, 4))
    layer = Layer(ZarrSource(arr), (1,), (8,), (4, m, 1))
    v = VirtualArray((10,), "i4", (4,), -1, [layer])
    expected = np.full(10, -1, "i4")
    expected[1:9] = data[4, _gather_index(8, 3, 2, 5, 9, [2, 0, 4]), 1]
    np.testing.assert_array_equal(v[...], expected)


def test_blocked_definition_round_trip_and_served(raw, tmp_path) -> None:
    arr, _ = raw
    v = _tiles_view(arr)
    m = save_virtual({"lvl": v}, str(tmp_path / "v.json"))
    definition = json.loads(m.get("lvl/refstore.virtual.json"))
    assert definition["layers"][0]["map"][0] == {"dim": 0, "start": 0, "step": 1, "block": 7, "stride": 9,
                                                 "offsets": [0, 1]}
    expected = v[...]
    for store in (open_virtual(str(tmp_path / "v.json")), refstore.ReferenceStore(str(tmp_path / "v.json"))):
        got = zarr.open_array(store, path="lvl", mode="r")
        np.testing.assert_array_equal(got[:], expected)
        np.testing.assert_array_equal(got[6:15, 13:22], expected[6:15, 13:22])
    with pytest.raises(refstore.ManifestError, match=r"chunk \(0, 0, 0\) is not one aligned"):
        v.to_manifest()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dim": 0, "block": 7, "stride": 9}, "lacks field 'offsets'"),
        ({"dim": 0, "block": 7, "stride": 9, "offsets": [0, 3]}, "o \\+ block <= stride"),
        ({"dim": 0, "block": 0, "stride": 9, "offsets": [0]}, "block >= 1"),
        ({"dim": 0, "block": 7, "stride": 9, "offsets": []}, "offsets"),
        ({"dim": 0, "block": 7, "stride": 9, "offsets": [0], "tile": 1}, "unknown blocked-map field"),
        ({"dim": 0, "block": "a", "stride": 9, "offsets": [0]}, "must be integers"),
        ({"dim": 5, "block": 7, "stride": 9, "offsets": [0]}, "virtual dimensions"),
        ([0, 0, 0], "step must be >= 1"),
    ],
)
def test_bad_blocked_maps_are_refused(entry, message) -> None:
    d = {"refstore_virtual": 1, "shape": [20], "dtype": "<i4", "chunks": [7], "fill_value": 0,
         "layers": [{"source": {"zarr": "memory://x"}, "origin": [0], "shape": [20], "map": [entry]}]}
    with pytest.raises(refstore.ManifestError, match=f"layer 0 map.*{message}|{message}"):
        VirtualArray.from_dict(d)
