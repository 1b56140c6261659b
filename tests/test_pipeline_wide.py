"""``ThreadedCodecPipeline`` at full width: a remote selection is fetched a window of chunks at a
time through ``get_partial_values`` (not ``async.concurrency`` = 10 at a time), through
``ReferenceStore`` and through ``reference://`` (``FsspecStore``), and returns exactly what
zarr's default pipeline returns: values, fill for an absent chunk, errors naming key and URL."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.storage import FsspecStore, LocalStore

import refstore
from refstore import pipeline
from refstore.errors import ReferenceNotReachable

THREADED = {"codec_pipeline.path": "refstore.pipeline.ThreadedCodecPipeline"}
SHAPE, CHUNKS = (120, 500), (2, 25)  # 60 x 20 = 1200 chunks: more than two windows
N_CHUNKS = 1200
MISSING = (7, 3)  # this chunk is left out of the manifest: every route reads it as fill
FILL = -1
ROUTES = ("store", "fsspecstore")


def _chunk_key(zarr_format: int, i: int, j: int) -> str:
    return f"a/c/{i}/{j}" if zarr_format == 3 else f"a/{i}.{j}"


def _served(tmp_path: Path, http: Any, zarr_format: int) -> tuple[dict[str, Any], np.ndarray]:
    """A gzip'd int32 array written by zarr, one file per chunk, served over loopback HTTP, and
    a manifest of it (metadata inline, each chunk a byte range of its file); the expected values."""
    data = np.random.default_rng(zarr_format).integers(-1000, 1000, SHAPE, dtype="<i4")
    src = tmp_path / "src"
    arr = zarr.create_array(
        LocalStore(src), name="a", shape=SHAPE, chunks=CHUNKS, dtype="<i4", fill_value=FILL,
        compressors=[zarr.codecs.GzipCodec(level=1)] if zarr_format == 3 else None,
        zarr_format=zarr_format,
    )
    arr[:] = data
    base = http.serve(src, f"wide-{uuid.uuid4().hex}")
    refs: dict[str, Any] = {}
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        key = f.relative_to(src).as_posix()
        if f.name in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
            refs[key] = f.read_text()
        else:
            refs[key] = [f"{base}/{key}", 0, f.stat().st_size]
    missing = _chunk_key(zarr_format, *MISSING)
    del refs[missing]
    expected = data.copy()
    expected[MISSING[0] * 2 : MISSING[0] * 2 + 2, MISSING[1] * 25 : MISSING[1] * 25 + 25] = FILL
    return {"version": 1, "refs": refs}, expected


def _store(route: str, refs: dict[str, Any]) -> Any:
    if route == "store":
        return refstore.ReferenceStore(refs)
    fs = refstore.ReferenceFileSystem(fo=refs, asynchronous=True, skip_instance_cache=True)
    return FsspecStore(fs, read_only=True, path="")


def _open(route: str, refs: dict[str, Any], threaded: bool) -> zarr.Array:
    with zarr.config.set(THREADED if threaded else {}):
        arr = zarr.open_array(_store(route, refs), path="a", mode="r")
    assert isinstance(arr._async_array.codec_pipeline, pipeline.ThreadedCodecPipeline) == threaded
    return arr


SELECTIONS: list[Any] = [
    np.s_[:],
    np.s_[3:117, 7:480:3],
    np.s_[5, :],  # an integer index: zarr drops that axis of every chunk
    np.s_[:, 499],
]


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("route", ROUTES)
def test_full_width_reads_equal_the_default_pipeline(tmp_path: Path, http: Any, route: str, zarr_format: int) -> None:
    refs, expected = _served(tmp_path, http, zarr_format)
    rng = np.random.default_rng(9)
    points = (rng.integers(0, SHAPE[0], 400), rng.integers(0, SHAPE[1], 400))
    rows, cols = np.sort(rng.choice(SHAPE[0], 30, replace=False)), np.sort(rng.choice(SHAPE[1], 40, replace=False))
    got = {}
    for threaded in (False, True):
        arr = _open(route, refs, threaded)
        got[threaded] = [arr[sel] for sel in SELECTIONS]
        got[threaded].append(arr.get_coordinate_selection(points))
        got[threaded].append(arr.get_orthogonal_selection((rows, cols)))
    wanted = [expected[sel] for sel in SELECTIONS] + [expected[points], expected[np.ix_(rows, cols)]]
    for default, wide, want in zip(got[False], got[True], wanted, strict=True):
        np.testing.assert_array_equal(default, want)
        np.testing.assert_array_equal(wide, want)
        assert wide.dtype == default.dtype and wide.shape == default.shape


@pytest.mark.parametrize("route", ROUTES)
def test_a_selection_is_fetched_beyond_zarrs_ten_at_a_time(tmp_path: Path, http: Any, route: str) -> None:
    refs, expected = _served(tmp_path, http, 3)
    arr = _open(route, refs, threaded=True)
    http.reset()
    http.delay = 0.05  # every answer takes a while, so requests pile up only if they are sent together
    np.testing.assert_array_equal(arr[:40, :], expected[:40, :])  # 20 x 20 chunks, one absent
    assert http.total_gets == 20 * 20 - 1  # each chunk once (one file each: nothing to merge)
    assert http.max_in_flight > zarr.config.get("async.concurrency")
    assert http.max_in_flight <= refstore.Options().max_concurrency


@pytest.mark.parametrize("route", ROUTES)
def test_an_unreachable_chunk_raises_naming_key_and_url(tmp_path: Path, http: Any, route: str) -> None:
    refs, _ = _served(tmp_path, http, 3)
    key = _chunk_key(3, 50, 11)
    url = refs["refs"][key][0]
    http.fail(url)
    arr = _open(route, refs, threaded=True)
    with pytest.raises(ReferenceNotReachable) as caught:
        arr[:]
    assert key in str(caught.value) and url in str(caught.value)
    np.testing.assert_array_equal(arr[:100, :], _open(route, refs, threaded=False)[:100, :])  # the rest reads


def test_windows_cover_every_chunk_once(tmp_path: Path, http: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A window size that does not divide the selection: every chunk is asked for exactly once."""
    refs, expected = _served(tmp_path, http, 3)
    monkeypatch.setattr(pipeline, "WINDOW", 7)
    arr = _open("store", refs, threaded=True)
    http.reset()
    np.testing.assert_array_equal(arr[:], expected)
    assert http.total_gets == N_CHUNKS - 1
    assert sorted(http.get_counts.values()) == [1] * (N_CHUNKS - 1)
