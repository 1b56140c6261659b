"""concat / stack / pad / views over HDF5 (kerchunk) and zarr sources, compared with numpy on h5py reads."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from _vdata import make_time_files, open_h5_var, read_h5, write_h5

import refstore
from refstore.virtual import IncompatibleSources, VirtualArray, concat, pad, stack


@pytest.fixture(scope="module")
def time_files(tmp_path_factory: pytest.TempPathFactory):
    return make_time_files(tmp_path_factory.mktemp("vtime"))


@pytest.mark.parametrize("remote", ["local", "http", "s3"], indirect=True)
def test_leap_year_mixed_codecs_and_chunks(time_files, remote) -> None:
    names = ["y2001_gz", "y2004_raw", "y2002_gz"]
    arrays = [open_h5_var(time_files[n], remote) for n in names]
    expected = np.concatenate([read_h5(time_files[n]) for n in names])
    v = concat(arrays, axis=0)
    assert isinstance(v, VirtualArray)
    assert v.shape == (365 + 366 + 365, 6, 8)
    assert v.dtype == np.float32 and v.chunks == (73, 6, 8)
    np.testing.assert_array_equal(v[...], expected)
    np.testing.assert_array_equal(np.asarray(v), expected)
    w = v[300:800:7, ::2, 3]
    assert isinstance(w, VirtualArray) and w.shape == expected[300:800:7, ::2, 3].shape
    np.testing.assert_array_equal(w[...], expected[300:800:7, ::2, 3])
    np.testing.assert_array_equal(v.read((slice(360, 370), 1)), expected[360:370, 1])


def test_concat_other_axis_and_negative_axis(time_files) -> None:
    a = open_h5_var(time_files["y2001_gz"])
    b = open_h5_var(time_files["y2002_gz"])
    ea, eb = read_h5(time_files["y2001_gz"]), read_h5(time_files["y2002_gz"])
    np.testing.assert_array_equal(concat([a, b], axis=-1)[...], np.concatenate([ea, eb], axis=-1))
    np.testing.assert_array_equal(concat([a, b], axis=1)[10:20, 4:9][...], np.concatenate([ea, eb], axis=1)[10:20, 4:9])


def test_zarr_zstd_sources_with_hdf5(tmp_path, time_files) -> None:
    """zarr arrays (zstd, written by zarr) from Local, Fsspec and Memory stores next to HDF5."""
    rng = np.random.default_rng(5)
    parts = [rng.standard_normal((n, 6, 8)).astype("f4") for n in (100, 50, 40)]
    local = zarr.create_array(zarr.storage.LocalStore(tmp_path / "z1"), shape=parts[0].shape, chunks=(30, 6, 4), dtype="f4")
    local[:] = parts[0]
    (tmp_path / "z2").mkdir()
    fss = zarr.storage.FsspecStore.from_url(f"file://{tmp_path}/z2", read_only=False)
    f2 = zarr.create_array(fss, shape=parts[1].shape, chunks=(50, 2, 8), dtype="f4", zarr_format=2)
    f2[:] = parts[1]
    mem = zarr.create_array(zarr.storage.MemoryStore(), shape=parts[2].shape, chunks=(7, 6, 8), dtype="f4")
    mem[:] = parts[2]
    h5 = open_h5_var(time_files["y2004_raw"])
    v = concat([local, h5, f2, mem])
    expected = np.concatenate([parts[0], read_h5(time_files["y2004_raw"]), parts[1], parts[2]])
    np.testing.assert_array_equal(v[...], expected)
    np.testing.assert_array_equal(v[95:480:5, 1:][...], expected[95:480:5, 1:])


def test_stack_images_2d_to_3d(tmp_path) -> None:
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 4000, (50, 70)).astype("u2") for _ in range(3)]
    specs = [((16, 16), "gzip"), ((50, 70), None), ((25, 10), "gzip")]
    arrays = []
    for k, (img, (chunks, comp)) in enumerate(zip(imgs, specs)):
        path = write_h5(tmp_path / f"img{k}.h5", img, chunks, comp)
        np.testing.assert_array_equal(read_h5(path), img)
        arrays.append(open_h5_var(path))
    for axis in (0, 1, 2, -1):
        v = stack(arrays, axis=axis)
        expected = np.stack(imgs, axis=axis)
        assert v.shape == expected.shape
        np.testing.assert_array_equal(v[...], expected)
    v = stack(arrays)
    assert v.chunks == (1, 16, 16)
    np.testing.assert_array_equal(v[1][...], imgs[1])
    np.testing.assert_array_equal(v[:, 10:40:3, 5][...], np.stack(imgs)[:, 10:40:3, 5])


def test_nan_padding_partial_chunk(time_files) -> None:
    a = open_h5_var(time_files["y2001_gz"])
    b = open_h5_var(time_files["y2004_raw"])
    ea, eb = read_h5(time_files["y2001_gz"]), read_h5(time_files["y2004_raw"])
    # 365 -> 366 days: one NaN day at the end, inside the last chunk of 73
    pa = pad(a, ((0, 1), (0, 0), (0, 0)), fill_value=np.nan)
    assert pa.shape == (366, 6, 8) and np.isnan(pa.fill_value)
    expected = np.concatenate([np.pad(ea, ((0, 1), (0, 0), (0, 0)), constant_values=np.nan), eb])
    bb = pad(b, 0, fill_value=np.nan)
    v = concat([pa, bb])
    np.testing.assert_array_equal(v[...], expected)
    np.testing.assert_array_equal(v[360:372][...], expected[360:372])
    p2 = pad(a, ((3, 2), (1, 0), (0, 5)), fill_value=-1.0)
    np.testing.assert_array_equal(p2[...], np.pad(ea, ((3, 2), (1, 0), (0, 5)), constant_values=-1.0))


def test_nested_views(time_files) -> None:
    names = ["y2001_gz", "y2004_raw"]
    arrays = [open_h5_var(time_files[n]) for n in names]
    e = np.concatenate([read_h5(time_files[n]) for n in names])
    v = concat(arrays)
    w = v[10:700:3, 1:5][5:200:2, ::2]
    np.testing.assert_array_equal(w[...], e[10:700:3, 1:5][5:200:2, ::2])
    x = concat([v[:100], v[500:600:2], v[-10:]])
    ex = np.concatenate([e[:100], e[500:600:2], e[-10:]])
    np.testing.assert_array_equal(x[...], ex)
    np.testing.assert_array_equal(x[90:160, 2, ::3][...], ex[90:160, 2, ::3])
    s = stack([v[:365], v[365:730]], axis=1)
    np.testing.assert_array_equal(s[...], np.stack([e[:365], e[365:730]], axis=1))
    assert v[5, 2, 3].shape == () and v[5, 2, 3][...] == e[5, 2, 3]


def test_overlap_last_wins_and_index_errors() -> None:
    a = zarr.create_array(zarr.storage.MemoryStore(), shape=(10,), chunks=(4,), dtype="i4")
    a[:] = np.arange(10)
    v = concat([a, a])
    from refstore.virtual._index import Layer, shift_layer

    extra = shift_layer(v.layers[0], (5,))
    over = VirtualArray(v.shape, v.dtype, v.chunks, -1, [*v.layers, Layer(extra.source, extra.origin, (3,), extra.src_map)])
    expected = np.concatenate([np.arange(10), np.arange(10)])
    expected[5:8] = [0, 1, 2]
    np.testing.assert_array_equal(over[...], expected)
    with pytest.raises(IndexError):
        v[::-1]
    with pytest.raises(IndexError):
        v[25]
    with pytest.raises(IndexError):
        v[[1, 2]]


def _mem(shape=(10, 4), dtype="f4", fill=0, attrs=None, names=("t", "x"), fmt=3):
    arr = zarr.create_array(
        zarr.storage.MemoryStore(), shape=shape, chunks=(5, 4, 1)[: len(shape)], dtype=dtype, fill_value=fill,
        attributes=attrs or {}, dimension_names=names if fmt == 3 else None, zarr_format=fmt,
    )
    arr[:] = 1
    return arr


@pytest.mark.parametrize(
    ("other", "field"),
    [
        (dict(dtype="f8"), "dtype"),
        (dict(shape=(10, 5)), r"shape \(axis 1\)"),
        (dict(shape=(10, 4, 1), names=("t", "x", "y")), "ndim"),
        (dict(fill=np.nan), "fill_value"),
        (dict(attrs={"scale_factor": 0.5}), "attribute 'scale_factor'"),
        (dict(attrs={"add_offset": 1.0}), "attribute 'add_offset'"),
        (dict(attrs={"_FillValue": -9}), "attribute '_FillValue'"),
        (dict(names=("t", "y")), "dimension names"),
    ],
)
def test_validation_names_input_and_field(other, field) -> None:
    good = _mem()
    with pytest.raises(IncompatibleSources, match=rf"input 2 differs from input 0 in {field}"):
        concat([good, good, _mem(**other)])
    with pytest.raises(ValueError):
        concat([good, _mem(**other)])
    assert issubclass(IncompatibleSources, refstore.ManifestError)


def test_validation_ok_cases() -> None:
    concat([_mem(shape=(10, 4)), _mem(shape=(3, 4))])  # only the concat axis differs
    concat([_mem(fill=np.nan), _mem(fill=np.nan)])  # NaN fill equals NaN fill
    concat([_mem(attrs={"scale_factor": 0.5}), _mem(attrs={"scale_factor": 0.5, "units": "K"})])
    with pytest.raises(IncompatibleSources, match="shape"):
        stack([_mem(shape=(10, 4)), _mem(shape=(3, 4))])
    with pytest.raises(refstore.ManifestError):
        concat([])


def test_sharded_sources_are_assembled_not_passed_through(tmp_path) -> None:
    """A sharded zarr 3 array stores shards, not chunks: passing a stored object through as one chunk read
    garbage (a checksum error); its chunks are assembled, saved, flattened or not."""
    arrays = []
    for k in range(2):
        a = zarr.create_array(str(tmp_path / f"s{k}.zarr"), shape=(20, 4), chunks=(5, 4), shards=(10, 4), dtype="f4")
        a[:] = np.arange(80, dtype="f4").reshape(20, 4) + 100 * k
        arrays.append(a)
    expected = np.concatenate([a[:] for a in arrays])
    v = concat(arrays, axis=0)
    np.testing.assert_array_equal(v[...], expected)
    g = zarr.open_group(refstore.ReferenceStore(refstore.save_virtual({"x": v}).to_dict()), mode="r")
    np.testing.assert_array_equal(g["x"][:], expected)
    with pytest.raises(refstore.ManifestError, match="cannot flatten 'x'"):
        refstore.save_virtual({"x": v}, flatten=True)
