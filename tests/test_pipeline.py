"""``refstore.pipeline.ThreadedCodecPipeline`` on every zarr version: same results as zarr's
default pipeline, chunks read through ``get_sync`` where the store allows it, the async
path everywhere else."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import GzipCodec, TransposeCodec

import refstore
from refstore import ReferenceStore
from refstore.pipeline import ThreadedCodecPipeline

PATH = "refstore.pipeline.ThreadedCodecPipeline"


def _is_chunk(key: str) -> bool:
    """Not metadata: zarr.json, nor the v2 keys (.zarray, ...) zarr probes when opening."""
    name = key.rpartition("/")[2]
    return name != "zarr.json" and not name.startswith(".")


class CountingStore(ReferenceStore):
    """Counts the chunk reads (metadata aside) that take the sync and the async route."""

    def __init__(self, *args, **kwargs) -> None:
        self.calls: Counter[str] = Counter()
        super().__init__(*args, **kwargs)

    def get_sync(self, key, *, prototype=None, byte_range=None):
        self.calls["sync"] += _is_chunk(key)
        return super().get_sync(key, prototype=prototype, byte_range=byte_range)

    async def get(self, key, prototype, byte_range=None):
        self.calls["async"] += _is_chunk(key)
        return await super().get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        # the full-width path asks for remote chunks a window at a time (test_pipeline_wide.py)
        key_ranges = list(key_ranges)
        self.calls["async"] += sum(_is_chunk(key) for key, _ in key_ranges)
        return await super().get_partial_values(prototype, key_ranges)


def _tiles(root: Path, shape: tuple[int, int], tile: int) -> tuple[str, np.ndarray]:
    image = np.random.default_rng(5).integers(0, 255, (*shape, 3), dtype=np.uint8)
    for r in range(0, shape[0], tile):
        for c in range(0, shape[1], tile):
            (root / f"t_{r // tile}_{c // tile}.png").write_bytes(
                imagecodecs.png_encode(image[r : r + tile, c : c + tile])
            )
    return str(root / "t_*.png"), image


def _images(pattern: str) -> refstore.Manifest:
    return refstore.build.images(pattern, r"t_(?P<row>\d+)_(?P<col>\d+)\.png", mosaic=True, show_progress=False)


def test_registered_with_zarr_by_its_path() -> None:
    from zarr.registry import get_pipeline_class

    with zarr.config.set({"codec_pipeline.path": PATH}):
        assert get_pipeline_class() is ThreadedCodecPipeline


def test_image_tiles_read_in_threads(tmp_path: Path) -> None:
    pattern, image = _tiles(tmp_path, (200, 150), 64)
    store = CountingStore(_images(pattern))
    with zarr.config.set({"codec_pipeline.path": PATH}):
        arr = zarr.open_array(store, path="image", mode="r")
        np.testing.assert_array_equal(arr[:], image)
        np.testing.assert_array_equal(arr[65:130, 3, 1], image[65:130, 3, 1])  # drops two axes
    assert store.calls["sync"] == 4 * 3 + 2 and store.calls["async"] == 0


def test_missing_tile_reads_as_fill(tmp_path: Path) -> None:
    _, image = _tiles(tmp_path, (128, 128), 64)
    (tmp_path / "t_1_0.png").unlink()
    manifest = refstore.build.images(
        [str(p) for p in sorted(tmp_path.glob("t_*.png"))], r"t_(?P<row>\d+)_(?P<col>\d+)\.png",
        mosaic=True, show_progress=False,
    )
    with zarr.config.set({"codec_pipeline.path": PATH}):
        got = zarr.open_array(CountingStore(manifest), path="image", mode="r")[:]
    expected = image.copy()
    expected[64:, :64] = 0
    np.testing.assert_array_equal(got, expected)


def test_codec_chain_and_selections_match_default_pipeline() -> None:
    """transpose (array->array) + bytes + gzip (bytes->bytes), edge chunks, a missing chunk."""
    data = np.arange(37 * 23 * 5, dtype="<i4").reshape(37, 23, 5)
    store = ReferenceStore({}, read_only=False)
    arr = zarr.create_array(
        store, name="a", shape=data.shape, chunks=(8, 6, 5), dtype="<i4", fill_value=-7,
        filters=[TransposeCodec(order=(2, 0, 1))], compressors=[GzipCodec(level=1)],
    )
    arr[:] = data
    store.manifest.delete("a/c/1/1/0")  # one chunk missing: reads as the fill value
    expected = data.copy()
    expected[8:16, 6:12, :] = -7
    selections = [np.s_[:], np.s_[5:30, 2:20:3, 1], np.s_[36, :, 4], np.s_[[0, 9, 36], 5]]
    with zarr.config.set({"codec_pipeline.path": PATH}):
        reader = CountingStore(store.manifest)
        threaded = zarr.open_array(reader, path="a", mode="r")
        got = [threaded[sel] for sel in selections]
    for sel, value in zip(selections, got):
        np.testing.assert_array_equal(value, expected[sel], err_msg=str(sel))
    assert reader.calls["sync"] == 5 * 4 + 4 * 3 + 4 + 3 and reader.calls["async"] == 0


def test_writes_and_sharded_arrays_keep_working() -> None:
    data = np.random.default_rng(2).standard_normal((40, 30)).astype("f4")
    store = ReferenceStore({}, read_only=False)
    with zarr.config.set({"codec_pipeline.path": PATH}):
        arr = zarr.create_array(store, name="s", shape=data.shape, chunks=(5, 5), shards=(20, 15), dtype="f4")
        arr[:] = data
        arr[3:7, 4] = 1.5
        data[3:7, 4] = 1.5
        np.testing.assert_array_equal(zarr.open_array(store, path="s", mode="r")[:], data)
        np.testing.assert_array_equal(zarr.open_array(store, path="s", mode="r")[11:33, 2:29], data[11:33, 2:29])


def test_remote_references_stay_on_the_async_path(tmp_path: Path, http) -> None:
    pattern, image = _tiles(tmp_path, (130, 70), 64)
    base = http.serve(tmp_path, "threaded-tiles")
    manifest = _images(pattern)
    for key, ref in list(manifest.items()):
        if isinstance(ref, refstore.Reference):
            manifest.set(key, refstore.Reference(ref.url.replace(str(tmp_path), base), ref.offset, ref.length))
    store = CountingStore(manifest)
    with zarr.config.set({"codec_pipeline.path": PATH}):
        np.testing.assert_array_equal(zarr.open_array(store, path="image", mode="r")[:], image)
    assert store.calls["sync"] == 0 and store.calls["async"] >= 3 * 2


def test_a_failing_chunk_raises_naming_key_and_file(tmp_path: Path) -> None:
    pattern, _ = _tiles(tmp_path, (128, 128), 64)
    manifest = _images(pattern)
    (tmp_path / "t_0_1.png").unlink()
    with zarr.config.set({"codec_pipeline.path": PATH}):
        arr = zarr.open_array(ReferenceStore(manifest), path="image", mode="r")
        with pytest.raises(refstore.ReferenceNotReachable, match="t_0_1.png") as err:
            arr[:]
    assert "image/c/0/1/0" in str(err.value)


def test_kerchunk_v2_manifest_matches_h5py(hdf5_path) -> None:
    """zarr v2 arrays (numcodecs compressors, inline chunks) from kerchunk read the same."""
    from _datasets import HDF5_DATASETS, kerchunk_refs, read_hdf5

    truth = read_hdf5(hdf5_path)
    with zarr.config.set({"codec_pipeline.path": PATH}):
        group = zarr.open_group(ReferenceStore(kerchunk_refs(hdf5_path, str(hdf5_path))), mode="r")
        for name in HDF5_DATASETS:
            np.testing.assert_array_equal(group[name][...], truth[name], err_msg=name)


def _bad_offset_refs(tmp_path: Path, zarr_format: int) -> tuple[dict, str]:
    """One good zlib/gzip chunk, and one whose reference starts 8 bytes early (a wrong offset)."""
    import gzip
    import json
    import zlib

    data = np.arange(4, dtype="<i4").tobytes()
    good = zlib.compress(data) if zarr_format == 2 else gzip.compress(data)
    path = tmp_path / "data.bin"
    path.write_bytes(b"JUNKJUNK" + good)
    if zarr_format == 2:
        meta = {"zarr_format": 2, "shape": [8], "chunks": [4], "dtype": "<i4", "compressor": {"id": "zlib", "level": 1},
                "filters": None, "fill_value": 0, "order": "C"}
        return {".zgroup": '{"zarr_format":2}', "a/.zarray": json.dumps(meta),
                "a/0": [str(path), 8, len(good)], "a/1": [str(path), 0, len(good)]}, "a/1"
    meta = {"zarr_format": 3, "node_type": "array", "shape": [8], "data_type": "int32", "fill_value": 0,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "gzip", "configuration": {"level": 1}}]}
    return {"zarr.json": '{"zarr_format":3,"node_type":"group"}', "a/zarr.json": json.dumps(meta),
            "a/c/0": [str(path), 8, len(good)], "a/c/1": [str(path), 0, len(good)]}, "a/c/1"


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("route", ["store", "reference://"])
def test_an_undecodable_chunk_names_key_source_and_codec(tmp_path: Path, zarr_format: int, route: str) -> None:
    """A wrong offset used to surface as a bare ``zlib.error: incorrect header check``."""
    import fsspec

    refs, key = _bad_offset_refs(tmp_path, zarr_format)
    store = (ReferenceStore(refs) if route == "store"
             else fsspec.filesystem("reference", fo=refs, skip_instance_cache=True).get_mapper(""))
    with zarr.config.set({"codec_pipeline.path": PATH}):
        arr = zarr.open_group(store, mode="r")["a"]
        np.testing.assert_array_equal(arr[:4], np.arange(4))  # the good chunk still reads
        with pytest.raises(refstore.ChunkDecodeError) as err:
            arr[:]
    e = err.value
    assert e.key == key and e.codec == ("zlib" if zarr_format == 2 else "gzip")
    assert str(tmp_path / "data.bin") in e.source and "bytes 0-" in e.source
    assert key in str(e) and e.__cause__ is not None and isinstance(e, ValueError)


def test_a_truncated_png_tile_names_key_file_and_codec(tmp_path: Path) -> None:
    pattern, _ = _tiles(tmp_path, (128, 128), 64)
    manifest = _images(pattern)
    tile = tmp_path / "t_1_0.png"
    tile.write_bytes(tile.read_bytes()[:60] + b"\0" * (tile.stat().st_size - 60))  # same size, broken body
    with zarr.config.set({"codec_pipeline.path": PATH}):
        # verify="off": with the default, the rewritten tile is refused as a changed source first
        arr = zarr.open_array(ReferenceStore(manifest, verify="off"), path="image", mode="r")
        with pytest.raises(refstore.ChunkDecodeError) as err:
            arr[:]
    assert err.value.key == "image/c/1/0/0" and str(tile) in err.value.source
    assert err.value.codec == "refstore.image" and "PNG" in str(err.value)
    assert isinstance(err.value.__cause__, refstore.errors.ImageCodecError)
