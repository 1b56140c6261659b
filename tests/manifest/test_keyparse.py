"""Parsing many chunk keys at once gives, key by key, what ``KeyLayout.parse`` gives."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from refstore.manifest._keyparse import parse_keys
from refstore.manifest._table import KeyLayout


def _one_by_one(layout: KeyLayout, keys: list[str]) -> list[int]:
    head = layout.head
    return [layout.parse(k[len(head):]) if k.startswith(head) else -1 for k in keys]


LAYOUTS = [
    KeyLayout("data", (1000, 1000), False, "."),
    KeyLayout("a/b", (3, 4, 5), True, "/"),
    KeyLayout("t", (7,), True, "."),
    KeyLayout("x", (2, 3), False, "/"),
    KeyLayout("", (10, 10), False, "."),
    KeyLayout("", (12,), True, "/"),
    KeyLayout("s", (), False, "."),
    KeyLayout("big", (10**15 + 1,), False, "."),
]


def _valid_key(layout: KeyLayout, rng: random.Random, spill: int = 0) -> str:
    lead = layout.head + ("c." if layout.v3 and layout.sep == "." and layout.grid else "")
    return lead + layout.sep.join(str(rng.randrange(n + spill)) for n in layout.grid)


def test_every_key_of_a_shuffled_grid():
    layout = LAYOUTS[0]
    keys = [f"data/{i}.{j}" for i in range(0, 1000, 7) for j in range(1000)]
    random.Random(1).shuffle(keys)
    got = parse_keys(layout, keys)
    assert got.dtype == np.int64
    assert got.tolist() == _one_by_one(layout, keys)


def test_keys_that_are_not_canonical_chunk_keys_get_minus_one():
    layout = LAYOUTS[0]
    keys = ["data/01.2", "data/1..2", "data/1.2.", "data/.1.2", "datb/1.2", "data/1.2\u00e9", "data/1000.0",
            "data/999.999", "data/ 1.2", "data/1.2.3", "data/1", "", "data/", "x", "data/99999999999999999999.1",
            "data/0.0", "data/+1.2", "data/-1.2", "data/1.2\n", "data/\u0661.2", "data/1.0x"]
    assert parse_keys(layout, keys).tolist() == _one_by_one(layout, keys)
    if keys and not any("\n" in k for k in keys):  # the same from the keys' text (as a block gives it)
        assert parse_keys(layout, None, "\n".join(keys)).tolist() == _one_by_one(layout, keys)
    assert parse_keys(layout, keys)[[7, 15]].tolist() == [999_999, 0]


def test_a_newline_in_a_key_cannot_shift_the_others():
    layout = LAYOUTS[4]
    keys = ["1.2", "3.4\n5.6", "7.8"]
    assert parse_keys(layout, keys).tolist() == [12, -1, 78]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(LAYOUTS),
    st.lists(st.one_of(st.text(alphabet="0123456789./cabdstx\n\u00e9 ", max_size=14), st.integers(0, 2**32)),
             max_size=40),
    st.integers(0, 2**32),
)
def test_same_answer_as_one_by_one(layout, items, seed):
    """Random text and valid keys (some just outside the grid), in any mix."""
    rng = random.Random(seed)
    keys = [item if isinstance(item, str) else _valid_key(layout, rng, spill=item % 3) for item in items]
    if rng.random() < 0.3:
        keys = [layout.head + k for k in keys]
    assert parse_keys(layout, keys).tolist() == _one_by_one(layout, keys)


@settings(max_examples=200, deadline=None)
@given(
    grid=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    v3=st.booleans(),
    sep=st.sampled_from([".", "/"]),
    data=st.data(),
)
def test_key_text_is_the_grid_keys_joined(grid, v3, sep, data):
    """The grid's key text made a row at a time is the keys one by one, joined (the streaming
    reader compares a block's keys with it, so one wrong byte would misplace references)."""
    layout = KeyLayout("a/b", tuple(grid), v3, sep)
    start = data.draw(st.integers(0, layout.size - 1))
    stop = data.draw(st.integers(start + 1, layout.size))
    assert layout.key_text(start, stop) == "\n".join(layout.iter_keys(start, stop))
    assert layout.key_text(start, stop).split("\n") == [layout.head + layout.suffix(i) for i in range(start, stop)]


def test_key_text_of_a_huge_grid_makes_only_the_keys_asked_for():
    layout = KeyLayout("big", (10**15 + 1,), False, ".")
    assert layout.key_text(10**15 - 2, 10**15 + 1) == "big/999999999999998\nbig/999999999999999\nbig/1000000000000000"
    wide = KeyLayout("w", (3, 100_000), True, "/")
    assert wide.key_text(99_999, 100_003) == "w/c/0/99999\nw/c/1/0\nw/c/1/1\nw/c/1/2"
