"""Tests for refstore.codecs: image tiles as zarr chunks through zarr 3 and numcodecs codecs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imagecodecs as ic
import numcodecs
import numpy as np
import pytest
import tifffile
import zarr
from _entry_points import fresh_env, probe_site
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import MemoryStore

import refstore.codecs as rc
from refstore.codecs import ImageCodec, ImageCodecError, ImageNumcodec
from refstore.errors import RefstoreError

rc.register()

# --- real encoders, and imagecodecs' own decoders as the reference -------------------------

Encoder = Callable[[np.ndarray], bytes]


def _tiff(**kwargs: Any) -> Encoder:
    def encode(a: np.ndarray) -> bytes:
        bio = io.BytesIO()
        photometric = "rgb" if a.ndim == 3 and a.shape[2] >= 3 else "minisblack"
        extrasamples = ["unassalpha"] if a.ndim == 3 and a.shape[2] in (2, 4) else None
        if kwargs.get("planarconfig") == "separate" and a.ndim == 3:
            a = np.moveaxis(a, -1, 0)  # tifffile takes separate planes first
        tifffile.imwrite(bio, a, photometric=photometric, extrasamples=extrasamples, **kwargs)
        return bio.getvalue()

    return encode


# name -> (imagecodecs library, encoder, reference decoder, lossless)
ENCODERS: dict[str, tuple[str, Encoder, Callable[[bytes], np.ndarray], bool]] = {
    "png": ("PNG", lambda a: ic.png_encode(a), ic.png_decode, True),
    "jpeg": ("JPEG8", lambda a: ic.jpeg8_encode(a, level=85), ic.jpeg8_decode, False),
    "webp": ("WEBP", lambda a: ic.webp_encode(a, lossless=True), ic.webp_decode, True),
    "webp-lossy": ("WEBP", lambda a: ic.webp_encode(a, level=70), ic.webp_decode, False),
    "jpeg2k": ("JPEG2K", lambda a: ic.jpeg2k_encode(a), ic.jpeg2k_decode, True),
    "j2k-codestream": (
        "JPEG2K",
        lambda a: ic.jpeg2k_encode(a, codecformat="j2k"),
        ic.jpeg2k_decode,
        True,
    ),
    "jpegxl": ("JPEGXL", lambda a: ic.jpegxl_encode(a, lossless=True), ic.jpegxl_decode, True),
    "jpegxl-lossy": (
        "JPEGXL",
        lambda a: ic.jpegxl_encode(a, distance=2.0),
        ic.jpegxl_decode,
        False,
    ),
    "jpegxl-container": (
        "JPEGXL",
        lambda a: ic.jpegxl_encode(a, lossless=True, usecontainer=True),
        ic.jpegxl_decode,
        True,
    ),
    "tiff-zlib": (
        "TIFF",
        _tiff(compression="zlib"),
        lambda b: tifffile.imread(io.BytesIO(b)),
        True,
    ),
    "tiff-tiled-lzw": (
        "TIFF",
        _tiff(compression="lzw", tile=(16, 16)),
        lambda b: tifffile.imread(io.BytesIO(b)),
        True,
    ),
    "tiff-planar": (
        "TIFF",
        _tiff(planarconfig="separate"),
        lambda b: np.moveaxis(tifffile.imread(io.BytesIO(b)), 0, -1),
        True,
    ),
    "tiff-planar-big-endian-bigtiff": (
        "TIFF",
        _tiff(planarconfig="separate", bigtiff=True, byteorder=">"),
        lambda b: np.moveaxis(tifffile.imread(io.BytesIO(b)), 0, -1),
        True,
    ),
    "tiff-jpeg": ("TIFF", _tiff(compression="jpeg"), ic.tiff_decode, False),
    "tiff-jpeg2000": (
        "TIFF",
        _tiff(compression="jpeg2000"),
        lambda b: tifffile.imread(io.BytesIO(b)),
        True,
    ),
    "tiff-bigtiff": ("TIFF", _tiff(bigtiff=True), lambda b: tifffile.imread(io.BytesIO(b)), True),
}
MAGIC_FORMAT = {
    "png": "png",
    "jpeg": "jpeg",
    "webp": "webp",
    "webp-lossy": "webp",
    "jpeg2k": "jpeg2k",
    "j2k-codestream": "jpeg2k",
    "jpegxl": "jpegxl",
    "jpegxl-lossy": "jpegxl",
    "jpegxl-container": "jpegxl",
}


def _available(name: str) -> bool:
    return bool(getattr(ic, ENCODERS[name][0]).available)


def kinds(*names: str) -> list[Any]:
    """Parametrize over encoder names, skipping those this imagecodecs build lacks."""
    return [
        pytest.param(n, marks=pytest.mark.skipif(not _available(n), reason=f"no {n}"))
        for n in names
    ]


ALL = kinds(*ENCODERS)
MIXED = [
    n
    for n in ("png", "jpeg", "webp", "jpeg2k", "jpegxl", "tiff-zlib", "tiff-jpeg")
    if _available(n)
]


def encode(name: str, tile: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Encode *tile* with a real encoder; return the bytes and what they decode to (reference)."""
    _, enc, dec, lossless = ENCODERS[name]
    data = bytes(enc(np.ascontiguousarray(tile)))
    ref = np.asarray(dec(data))
    if lossless:
        np.testing.assert_array_equal(ref.reshape(tile.shape), tile)
    return data, ref.reshape((*ref.shape[:2], -1))


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- stores holding raw tile files as chunks --------------------------------------------------

_BUF = default_buffer_prototype().buffer


def v3_store(
    tiles: dict[tuple[int, ...], bytes],
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    codec: dict[str, Any] | None = None,
    dtype: str = "uint8",
    fill_value: Any = 0,
) -> MemoryStore:
    meta = {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(shape),
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill_value,
        "codecs": [codec or {"name": "refstore.image"}],
        "attributes": {},
    }
    d = {"zarr.json": _BUF.from_bytes(json.dumps(meta).encode())}
    d.update({"c/" + "/".join(map(str, k)): _BUF.from_bytes(v) for k, v in tiles.items()})
    return MemoryStore(d)


def v2_store(
    tiles: dict[tuple[int, ...], bytes],
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    codec: dict[str, Any],
    dtype: str = "|u1",
    fill_value: Any = 0,
    as_filter: bool = False,
) -> MemoryStore:
    meta = {
        "zarr_format": 2,
        "shape": list(shape),
        "chunks": list(chunks),
        "dtype": dtype,
        "compressor": None if as_filter else codec,
        "filters": [codec] if as_filter else None,
        "fill_value": fill_value,
        "order": "C",
        "dimension_separator": ".",
    }
    d = {".zarray": _BUF.from_bytes(json.dumps(meta).encode())}
    d.update({".".join(map(str, k)): _BUF.from_bytes(v) for k, v in tiles.items()})
    return MemoryStore(d)


def tile_grid(
    image: np.ndarray, size: int, names: list[str]
) -> tuple[dict[tuple[int, int], bytes], np.ndarray]:
    """Cut a (H, W, 3) image into tiles (edge tiles smaller), cycling through encoders.

    Returns the tiles keyed by (row, col) and the image as the reference decoders see it.
    """
    tiles: dict[tuple[int, int], bytes] = {}
    expected = np.empty_like(image)
    k = 0
    for i in range(0, image.shape[0], size):
        for j in range(0, image.shape[1], size):
            data, ref = encode(names[k % len(names)], image[i : i + size, j : j + size])
            tiles[(i // size, j // size)] = data
            expected[i : i + size, j : j + size] = ref
            k += 1
    return tiles, expected


#: zarr's default pipeline, and refstore's threaded one (zarr's FusedCodecPipeline where zarr has it)
PIPELINES = (None, "refstore.pipeline.ThreadedCodecPipeline")


@pytest.fixture(params=PIPELINES, ids=lambda p: "default" if p is None else "threaded")
def pipeline(request: pytest.FixtureRequest) -> Any:
    if request.param is None:
        yield None
    else:
        with zarr.config.set({"codec_pipeline.path": request.param}):
            yield request.param


# --- format detection and each format -------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_each_format_reads_through_zarr(name: str, pipeline: Any) -> None:
    data, ref = encode(name, rgb(64, 48))
    if name in MAGIC_FORMAT:
        assert rc._formats.detect_format(data) == MAGIC_FORMAT[name]
    a = zarr.open_array(store=v3_store({(0, 0, 0): data}, (64, 48, 3), (64, 48, 3)), mode="r")
    np.testing.assert_array_equal(a[:], ref)


def test_unknown_bytes_are_refused_naming_them() -> None:
    store = v3_store({(0, 0, 0): b"GIF89a not supported"}, (8, 8, 3), (8, 8, 3))
    with pytest.raises(ImageCodecError, match=r"GIF89a"):
        zarr.open_array(store=store, mode="r")[:]


def test_error_type_is_refstore_and_value_error() -> None:
    assert issubclass(ImageCodecError, RefstoreError) and issubclass(ImageCodecError, ValueError)


def test_available_formats_matches_imagecodecs() -> None:
    libs = {
        "png": "PNG",
        "jpeg": "JPEG8",
        "tiff": "TIFF",
        "webp": "WEBP",
        "jpeg2k": "JPEG2K",
        "jpegxl": "JPEGXL",
    }
    assert rc.available_formats() == tuple(f for f in rc.FORMATS if getattr(ic, libs[f]).available)


# --- a mosaic: mixed formats, partial edge tiles, both layouts --------------------------------


@pytest.fixture(scope="module")
def mosaic() -> tuple[dict[tuple[int, int], bytes], np.ndarray]:
    return tile_grid(rgb(1000, 1000, seed=1), 256, MIXED)


def test_mixed_formats_with_edge_tiles_channel_last(mosaic: Any, pipeline: Any) -> None:
    tiles, expected = mosaic
    store = v3_store({(*k, 0): v for k, v in tiles.items()}, (1000, 1000, 3), (256, 256, 3))
    a = zarr.open_array(store=store, mode="r")
    np.testing.assert_array_equal(a[:], expected)
    np.testing.assert_array_equal(a[900:1000, 100:900], expected[900:1000, 100:900])


def test_mixed_formats_channel_first(mosaic: Any, pipeline: Any) -> None:
    tiles, expected = mosaic
    store = v3_store(
        {(0, *k): v for k, v in tiles.items()},
        (3, 1000, 1000),
        (3, 256, 256),
        {"name": "refstore.image", "configuration": {"layout": "cyx"}},
    )
    np.testing.assert_array_equal(
        zarr.open_array(store=store, mode="r")[:], expected.transpose(2, 0, 1)
    )


def test_edge_tiles_are_padded_top_left_with_fill_value(mosaic: Any) -> None:
    tiles, expected = mosaic
    store = v3_store(
        {(*k, 0): v for k, v in tiles.items()}, (1024, 1024, 3), (256, 256, 3), fill_value=7
    )
    out = zarr.open_array(store=store, mode="r")[:]
    np.testing.assert_array_equal(out[:1000, :1000], expected)
    assert (out[1000:] == 7).all() and (out[:, 1000:] == 7).all()


def test_ambiguous_chunk_shape_follows_layout() -> None:
    image = rgb(6, 3)  # chunk (3, 6, 3) read as cyx: 3 channels of 6 x 3
    data, ref = encode("png", image)
    cyx = v3_store(
        {(0, 0, 0): data},
        (3, 6, 3),
        (3, 6, 3),
        {"name": "refstore.image", "configuration": {"layout": "cyx"}},
    )
    np.testing.assert_array_equal(zarr.open_array(store=cyx, mode="r")[:], ref.transpose(2, 0, 1))
    wide = rgb(3, 6)  # the same chunk shape read as yxc: 3 x 6, 3 channels
    data, ref = encode("png", wide)
    yxc = v3_store(
        {(0, 0, 0): data},
        (3, 6, 3),
        (3, 6, 3),
        {"name": "refstore.image", "configuration": {"layout": "yxc"}},
    )
    np.testing.assert_array_equal(zarr.open_array(store=yxc, mode="r")[:], ref)
    with pytest.raises(ImageCodecError, match=r"larger than the chunk shape"):
        zarr.open_array(
            store=v3_store(
                {(0, 0, 0): data},
                (3, 6, 3),
                (3, 6, 3),
                {"name": "refstore.image", "configuration": {"layout": "cyx"}},
            ),
            mode="r",
        )[:]


def test_gray_array_and_leading_unit_axes() -> None:
    gray = rgb(40, 50)[:, :, 0].copy()
    data, _ = encode("png", gray)
    a = zarr.open_array(store=v3_store({(0, 0): data}, (40, 50), (64, 64)), mode="r")
    np.testing.assert_array_equal(a[:], gray)
    data2, _ = encode("png", gray[::-1].copy())
    stack = v3_store(
        {(0, 0, 0): data, (1, 0, 0): data2},
        (2, 40, 50),
        (1, 40, 50),
        {"name": "refstore.image", "configuration": {"layout": "yx"}},
    )
    np.testing.assert_array_equal(
        zarr.open_array(store=stack, mode="r")[:], np.stack([gray, gray[::-1]])
    )


# --- channel and dtype conversions ---------------------------------------------------------


def read_one(
    tile: np.ndarray,
    chunk: tuple[int, ...],
    dtype: str = "uint8",
    layout: str | None = None,
    name: str = "png",
) -> np.ndarray:
    data, _ = encode(name, tile)
    codec = {"name": "refstore.image", "configuration": {"layout": layout}} if layout else None
    return zarr.open_array(
        store=v3_store({(0,) * len(chunk): data}, chunk, chunk, codec, dtype), mode="r"
    )[:]


def test_gray_tile_into_rgb_and_rgba_chunks() -> None:
    gray = rgb(16, 16)[:, :, 0].copy()
    np.testing.assert_array_equal(read_one(gray, (16, 16, 3)), np.repeat(gray[:, :, None], 3, 2))
    out = read_one(gray, (16, 16, 4))
    np.testing.assert_array_equal(out[:, :, :3], np.repeat(gray[:, :, None], 3, 2))
    assert (out[:, :, 3] == 255).all()
    out = read_one(gray, (2, 16, 16), layout="cyx")
    np.testing.assert_array_equal(out[0], gray)
    assert (out[1] == 255).all()


def test_rgb_into_rgba_adds_opaque_alpha_and_opaque_rgba_into_rgb() -> None:
    image = rgb(16, 16)
    out = read_one(image, (16, 16, 4))
    np.testing.assert_array_equal(out[:, :, :3], image)
    assert (out[:, :, 3] == 255).all()
    rgba = np.concatenate([image, np.full((16, 16, 1), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(read_one(rgba, (16, 16, 3)), image)


@pytest.mark.parametrize("name", kinds("webp"))
def test_webp_drops_opaque_alpha_yet_reads_into_rgba(name: str) -> None:
    image = rgb(16, 16)
    rgba = np.concatenate([image, np.full((16, 16, 1), 255, np.uint8)], axis=2)
    data = bytes(ic.webp_encode(rgba, lossless=True))
    assert ic.webp_decode(data).shape == (16, 16, 3)  # libwebp leaves out an all-opaque alpha
    store = v3_store({(0, 0, 0): data}, (16, 16, 4), (16, 16, 4))
    np.testing.assert_array_equal(zarr.open_array(store=store, mode="r")[:], rgba)


def test_equal_rgb_into_gray_and_uint8_into_uint16() -> None:
    gray = rgb(16, 16)[:, :, 0].copy()
    np.testing.assert_array_equal(read_one(np.repeat(gray[:, :, None], 3, 2), (16, 16)), gray)
    out = read_one(gray, (16, 16), dtype="uint16")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, gray)


def test_refusals() -> None:
    image = rgb(16, 16)
    rgba = np.concatenate([image, np.full((16, 16, 1), 100, np.uint8)], axis=2)
    with pytest.raises(ImageCodecError, match=r"alpha channel is not opaque"):
        read_one(rgba, (16, 16, 3))
    with pytest.raises(ImageCodecError, match=r"red, green and blue differ"):
        read_one(image, (16, 16))
    with pytest.raises(ImageCodecError, match=r"red, green and blue differ"):
        read_one(image, (16, 16, 1))
    with pytest.raises(
        ImageCodecError, match=r"dtype uint16 cannot be stored in a chunk of dtype uint8"
    ):
        read_one(image[:, :, 0].astype(np.uint16) * 257, (16, 16))
    with pytest.raises(
        ValueError, match=r"tile of shape \(16, 16, 3\).*larger than the chunk shape \(8, 16, 3\)"
    ):
        read_one(image, (8, 16, 3))
    with pytest.raises(ImageCodecError, match=r"has 16 channels"):
        read_one(image, (16, 16, 16))
    with pytest.raises(ImageCodecError, match=r"dtype must be bool, integer or float"):
        zarr.create_array(
            store=MemoryStore(),
            shape=(8, 8, 3),
            chunks=(8, 8, 3),
            dtype="complex64",
            serializer=ImageCodec(),
            compressors=None,
        )


def test_fit_image_anchors_top_left() -> None:
    tile = np.arange(6, dtype=np.uint8).reshape(2, 3)
    out = rc._fit.fit_image(tile, (1, 4, 5), np.dtype("uint8"), 9, "yx")
    assert out.shape == (1, 4, 5)
    np.testing.assert_array_equal(out[0, :2, :3], tile)
    assert (out[0, 2:] == 9).all() and (out[0, :, 3:] == 9).all()


# --- zarr format 2 (numcodecs) ---------------------------------------------------------------


@pytest.mark.parametrize("as_filter", [False, True], ids=["compressor", "filter"])
def test_zarr_v2_mosaic_with_edge_tiles(mosaic: Any, as_filter: bool) -> None:
    tiles, expected = mosaic
    codec = {
        "id": "refstore.image",
        "chunk_shape": [3, 256, 256],
        "dtype": "|u1",
        "fill_value": 0,
        "layout": "cyx",
    }
    store = v2_store(
        {(0, *k): v for k, v in tiles.items()},
        (3, 1000, 1000),
        (3, 256, 256),
        codec,
        as_filter=as_filter,
    )
    a = zarr.open_array(store=store, mode="r")
    assert a.metadata.zarr_format == 2
    np.testing.assert_array_equal(a[:], expected.transpose(2, 0, 1))


def test_zarr_v2_without_chunk_shape_reads_full_tiles() -> None:
    data, ref = encode("png", rgb(32, 32))
    store = v2_store({(0, 0, 0): data}, (32, 32, 3), (32, 32, 3), {"id": "refstore.png"})
    np.testing.assert_array_equal(zarr.open_array(store=store, mode="r")[:], ref)


def test_numcodecs_config_round_trip() -> None:
    codec = numcodecs.get_codec(
        {"id": "refstore.image", "format": "webp", "chunk_shape": [8, 8, 3], "dtype": "|u1"}
    )
    assert isinstance(codec, ImageNumcodec)
    assert numcodecs.get_codec(codec.get_config()).get_config() == codec.get_config()
    assert numcodecs.get_codec({"id": "refstore.jpegxl"}).format == "jpegxl"
    with pytest.raises(ImageCodecError, match=r"always writes png"):
        numcodecs.get_codec({"id": "refstore.png", "format": "jpeg"})
    out = np.empty((8, 8, 3), np.uint8)
    data, ref = encode("png", rgb(8, 8))
    assert ImageNumcodec().decode(data, out=out) is out
    np.testing.assert_array_equal(out, ref)


# --- writing through zarr --------------------------------------------------------------------

WRITE = [
    pytest.param(f, marks=pytest.mark.skipif(f not in rc.available_formats(), reason=f"no {f}"))
    for f in rc.FORMATS
]


@pytest.mark.parametrize("fmt", WRITE)
def test_zarr_v3_write_round_trip(fmt: str, pipeline: Any) -> None:
    src = rgb(300, 500, seed=3)
    store = MemoryStore()
    a = zarr.create_array(
        store=store,
        shape=src.shape,
        chunks=(128, 128, 3),
        dtype="uint8",
        serializer=ImageCodec(format=fmt),
        compressors=None,
        fill_value=0,
    )
    a[:] = src
    raw = {k: v for k, v in store._store_dict.items() if k.startswith("c/")}
    assert len(raw) == 12 and all(
        rc._formats.detect_format(v.to_bytes()) == fmt for v in raw.values()
    )
    back = zarr.open_array(store=store, mode="r")[:]
    if fmt == "jpeg":  # lossy: equal to imagecodecs' own decode of the stored bytes
        expected = np.zeros_like(src)
        for key, value in raw.items():
            i, j = (int(x) for x in key.split("/")[1:3])
            tile = ic.jpeg8_decode(value.to_bytes())
            expected[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128] = tile[
                : 300 - i * 128, : 500 - j * 128
            ]
        np.testing.assert_array_equal(back, expected)
    else:
        np.testing.assert_array_equal(back, src)


def test_zarr_v3_write_channel_first_gray_alpha_and_uint16() -> None:
    src = np.random.default_rng(4).integers(0, 65536, (2, 70, 90), dtype=np.uint16)
    a = zarr.create_array(
        store=MemoryStore(),
        shape=src.shape,
        chunks=(2, 64, 64),
        dtype="uint16",
        serializer=ImageCodec(layout="cyx"),
        compressors=None,
    )
    a[:] = src
    np.testing.assert_array_equal(a[:], src)
    assert a.metadata.to_dict()["codecs"][0] == {
        "name": "refstore.image",
        "configuration": {"format": "png", "layout": "cyx"},
    }


def test_zarr_v2_write_round_trip() -> None:
    src = rgb(100, 130, seed=5)
    codec = ImageNumcodec(format="tiff")
    a = zarr.create_array(
        store=MemoryStore(),
        shape=src.shape,
        chunks=(64, 64, 3),
        dtype="uint8",
        compressors=codec,
        zarr_format=2,
    )
    a[:] = src
    np.testing.assert_array_equal(zarr.open_array(store=a.store, mode="r")[:], src)


# --- configuration ---------------------------------------------------------------------------


def test_zarr3_json_round_trip_and_aliases() -> None:
    codec = ImageCodec(format="JPEG", level=90, layout="cyx")
    assert codec.to_dict() == {
        "name": "refstore.image",
        "configuration": {"format": "jpeg", "level": 90, "layout": "cyx"},
    }
    assert ImageCodec.from_dict(codec.to_dict()) == codec
    assert rc.PngCodec().to_dict() == {"name": "refstore.png"}
    assert (
        rc.JpegxlCodec.from_dict(
            {"name": "refstore.jpegxl", "configuration": {"lossless": False}}
        ).lossless
        is False
    )
    for cls in rc.ZARR3_CODECS:
        assert zarr.registry.get_codec_class(cls.codec_name) is cls
    with pytest.raises(ImageCodecError, match=r"unknown configuration key\(s\) \['quality'\]"):
        ImageCodec.from_dict({"name": "refstore.image", "configuration": {"quality": 3}})
    with pytest.raises(ImageCodecError, match=r"layout='xyc'"):
        ImageCodec(layout="xyc")
    with pytest.raises(ImageCodecError, match=r"format='gif'"):
        ImageCodec(format="gif")


async def test_async_decode_single_runs_in_a_thread() -> None:
    data, ref = encode("png", rgb(8, 8))
    store = v3_store({(0, 0, 0): data}, (8, 8, 3), (8, 8, 3))
    a = await zarr.api.asynchronous.open_array(store=store, mode="r")
    np.testing.assert_array_equal(await a.getitem(slice(None)), ref)


# --- entry points: pyproject.toml's own lines ------------------------------------------------


def test_entry_points_open_arrays_without_import(tmp_path: Path) -> None:
    site = probe_site(tmp_path / "site")
    data = encode("png", rgb(20, 30))[0]
    for fmt, meta, key in [
        (
            3,
            {
                "zarr_format": 3,
                "node_type": "array",
                "shape": [32, 32, 3],
                "data_type": "uint8",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [32, 32, 3]}},
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "fill_value": 5,
                "codecs": [{"name": "refstore.png"}],
            },
            "c/0/0/0",
        ),
        (
            2,
            {
                "zarr_format": 2,
                "shape": [32, 32, 3],
                "chunks": [32, 32, 3],
                "dtype": "|u1",
                "compressor": {
                    "id": "refstore.image",
                    "chunk_shape": [32, 32, 3],
                    "dtype": "|u1",
                    "fill_value": 5,
                },
                "filters": None,
                "fill_value": 5,
                "order": "C",
            },
            "0.0.0",
        ),
    ]:
        root = tmp_path / f"v{fmt}"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / ("zarr.json" if fmt == 3 else ".zarray")).write_text(json.dumps(meta))
        (root / key).write_bytes(data)
    script = textwrap.dedent(f"""
        import sys, zarr, numpy as np
        for p in ({str(tmp_path / "v3")!r}, {str(tmp_path / "v2")!r}):
            a = zarr.open_array(p, mode="r")[:]
            assert a.shape == (32, 32, 3) and (a[20:] == 5).all(), a
        print("ok", sorted(m for m in sys.modules if m.startswith("refstore.codecs"))[:1])
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], env=fresh_env(site), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "ok ['refstore.codecs']" in done.stdout


def test_inner_codec_of_a_sharded_array() -> None:
    src = rgb(200, 300, seed=6)
    a = zarr.create_array(
        store=MemoryStore(),
        shape=src.shape,
        chunks=(64, 64, 3),
        shards=(128, 192, 3),
        dtype="uint8",
        serializer=ImageCodec(),
        compressors=None,
    )
    a[:] = src
    np.testing.assert_array_equal(a[:], src)


def test_rectilinear_edge_chunks_take_the_tile_size() -> None:
    if "rectilinear_chunks" not in zarr.config.get("array"):
        pytest.skip(f"zarr {zarr.__version__} has no rectilinear chunk grids")
    src = rgb(300, 500, seed=7)
    with zarr.config.set({"array.rectilinear_chunks": True}):
        a = zarr.create_array(
            store=MemoryStore(),
            shape=src.shape,
            chunks=[[256, 44], [256, 244], [3]],
            dtype="uint8",
            serializer=ImageCodec(),
            compressors=None,
        )
        a[:] = src
        np.testing.assert_array_equal(a[:], src)
    assert ic.png_decode(a.store._store_dict["c/1/1/0"].to_bytes()).shape == (44, 244, 3)
