"""refstore.multiscale: NGFF 0.4/0.5 attributes, exact factors, level choice."""

from __future__ import annotations

from fractions import Fraction

import pytest
import zarr

from refstore.multiscale import LEVELS_KEY, Level, levels, multiscale_attributes, pick_level


def test_ngff_05_and_exact_levels() -> None:
    shapes = [(3, 300, 200), (3, 150, 100), (3, 100, 67)]
    attrs = multiscale_attributes(["0", "1", "2"], shapes, ["c", "y", "x"],
                                  offsets=[[0, 0, 0], [0, Fraction(1, 2), Fraction(1, 2)], [0, 1, 1]])
    ms = attrs["ome"]["multiscales"][0]
    assert attrs["ome"]["version"] == "0.5"
    assert [a["type"] for a in ms["axes"]] == ["channel", "space", "space"]
    assert attrs[LEVELS_KEY][2]["factor"] == [1, 3, "200/67"]
    assert attrs[LEVELS_KEY][1]["offset"] == [0, "1/2", "1/2"]
    group = zarr.create_group(zarr.storage.MemoryStore(), attributes=attrs)
    for path, shape in zip(["0", "1", "2"], shapes):
        group.create_array(path, shape=shape, dtype="u1")
    lv = levels(group)
    assert lv[2].factor == (1, 3, Fraction(200, 67)) and lv[1].offset[1] == Fraction(1, 2)
    assert pick_level(group, 2.0).path == "1"
    assert pick_level(group, 1.5).path == "0"
    assert pick_level(group, (3, 120, 60)).path == "1"


def test_channel_last_has_no_ngff_and_v2_writes_04() -> None:
    assert "ome" not in multiscale_attributes(["0"], [(10, 10, 3)], ["y", "x", "c"])
    attrs = multiscale_attributes(["0", "1"], [(10, 10), (5, 5)], ["y", "x"], zarr_format=2)
    assert attrs["multiscales"][0]["version"] == "0.4"


def test_levels_from_ngff_only() -> None:
    attrs = multiscale_attributes(["0", "1"], [(8, 8), (4, 4)], ["y", "x"])
    del attrs[LEVELS_KEY]
    group = zarr.create_group(zarr.storage.MemoryStore(), attributes=attrs)
    group.create_array("0", shape=(8, 8), dtype="u1")
    group.create_array("1", shape=(4, 4), dtype="u1")
    assert [lv.factor for lv in levels(group)] == [(1, 1), (2, 2)]


def _pyramid() -> zarr.Group:
    shapes = [(3, 300, 200), (3, 150, 100), (3, 75, 50), (3, 38, 25)]
    offsets = [[0, Fraction(2**k - 1, 2), Fraction(2**k - 1, 2)] for k in range(4)]
    attrs = multiscale_attributes([str(i) for i in range(4)], shapes, ["c", "y", "x"], offsets=offsets)
    group = zarr.create_group(zarr.storage.MemoryStore(), attributes=attrs)
    for i, shape in enumerate(shapes):
        a = group.create_array(str(i), shape=shape, dtype="u1", dimension_names=["c", "y", "x"])
        a[:] = i + 1
    return group


def test_levels_carry_their_arrays_opened_on_access() -> None:
    group = _pyramid()
    lv = levels(group)
    assert [level.path for level in lv] == ["0", "1", "2", "3"]
    assert all("array" not in vars(level) for level in lv)  # nothing opened yet
    assert lv[2].array.shape == (3, 75, 50) and int(lv[2].array[0, 0, 0]) == 3
    assert "array" in vars(lv[2]) and "array" not in vars(lv[1])
    assert lv[2].factors == (1, 4, 4) and lv[2].offsets == (0, Fraction(3, 2), Fraction(3, 2))
    assert lv[3].factors == (1, Fraction(300, 38), 8)  # exact, from refstore:levels
    assert lv[0].axes == ("c", "y", "x")
    with pytest.raises(ValueError, match="no group"):
        _ = Level("0", (1,), (Fraction(1),), (Fraction(0),)).array


def test_pick_level_for_a_resolution_or_an_output_size() -> None:
    group = _pyramid()
    lv = levels(group)
    assert pick_level(group, resolution=4).path == "2"
    assert pick_level(group, resolution=3.9).path == "1"
    assert pick_level(group, resolution=[1, 2, 8]).path == "1"
    assert pick_level(lv, shape=(70, 40)).path == "2"  # a display of 70 x 40: the smallest level covering it
    assert pick_level(lv, shape=(76, 40)).path == "1"
    assert pick_level(lv, shape=(3000, 2000)).path == "0"
    assert pick_level(lv, shape=(10, 10)).array.shape == (3, 38, 25)
    with pytest.raises(ValueError, match="either a resolution"):
        pick_level(group)
    with pytest.raises(ValueError, match="either a resolution"):
        pick_level(group, resolution=2, shape=(10, 10))
