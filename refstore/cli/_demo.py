"""``refstore demo``: write a small raw dataset, build its manifest, read it back through zarr."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np


def build_sample(folder: str) -> tuple[str, dict[str, np.ndarray]]:
    """Write ``sample.bin`` (two variables, one after the other) and ``sample.json``, its manifest.

    The binary file is what an instrument or a legacy format would hold: a
    float32 ``temperature`` grid (24 x 90 x 180) in C order, then an int16
    ``elevation`` grid (90 x 180). The manifest points each zarr chunk at its
    byte range; nothing is copied.

    Returns
    -------
    tuple
        The manifest path and the arrays that were written, for comparison.
    """
    from refstore.manifest import Manifest, Reference, record_sources

    rng = np.random.default_rng(0)
    hours, lat, lon = 24, 90, 180
    temperature = (15 + 10 * np.cos(np.linspace(-np.pi / 2, np.pi / 2, lat))[None, :, None]
                   + rng.normal(0, 1, (hours, lat, lon))).astype("<f4")
    elevation = rng.integers(-400, 4000, (lat, lon)).astype("<i2")
    data_path = os.path.join(folder, "sample.bin")
    with open(data_path, "wb") as f:
        f.write(temperature.tobytes())
        f.write(elevation.tobytes())

    manifest = Manifest()
    manifest.set("zarr.json", json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"title": "refstore demo"}}).encode())
    base = 0
    for name, arr, dims in (("temperature", temperature, ["time", "lat", "lon"]), ("elevation", elevation, ["lat", "lon"])):
        chunk = (1,) + arr.shape[1:] if arr.ndim == 3 else arr.shape
        meta = {
            "zarr_format": 3, "node_type": "array", "shape": list(arr.shape),
            "data_type": arr.dtype.name, "fill_value": 0,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "dimension_names": dims, "attributes": {},
        }
        manifest.set(f"{name}/zarr.json", json.dumps(meta).encode())
        nbytes = int(np.prod(chunk)) * arr.itemsize
        for i in range(arr.shape[0] // chunk[0]):
            key = f"{name}/c/{i}/0/0" if arr.ndim == 3 else f"{name}/c/0/0"
            manifest.set(key, Reference(data_path, base + i * nbytes, nbytes))
        base += arr.nbytes
    record_sources(manifest)  # the file's size and mtime: reads refuse it once it changes
    manifest_path = os.path.join(folder, "sample.json")
    manifest.save(manifest_path)
    return manifest_path, {"temperature": temperature, "elevation": elevation}


def run_demo(folder: str | None = None) -> int:
    """Build the sample, open it with zarr through :class:`refstore.ReferenceStore` and the
    ``reference://`` filesystem, print what was read, and check it; returns 0 on success."""
    import fsspec
    import zarr

    from refstore import ReferenceStore

    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="refstore-demo-")
        folder = tmp.name
    os.makedirs(folder, exist_ok=True)
    manifest_path, truth = build_sample(folder)
    print(f"wrote {os.path.join(folder, 'sample.bin')} and its manifest {manifest_path}")

    group = zarr.open_group(ReferenceStore(manifest_path), mode="r")
    print(f"zarr group through refstore.ReferenceStore: {group.attrs['title']!r}")
    ok = True
    for name in ("temperature", "elevation"):
        arr = group[name]
        assert isinstance(arr, zarr.Array)
        values = np.asarray(arr[:])
        same = bool(np.array_equal(values, truth[name]))
        ok &= same
        print(f"  {name}: shape {arr.shape}, dtype {arr.dtype}, chunks {arr.chunks}, "
              f"mean {float(values.mean()):.3f}, matches the file: {same}")
    fs = fsspec.filesystem("reference", fo=manifest_path)
    noon = np.asarray(zarr.open_array(fs.get_mapper("temperature"), mode="r")[12, 45, :4])
    print(f"  through fsspec.filesystem('reference') ({type(fs).__module__}): temperature[12, 45, :4] = {noon}")
    ok &= bool(np.array_equal(noon, truth["temperature"][12, 45, :4]))
    ok &= _pyramid_demo(folder)
    print("demo OK" if ok else "demo FAILED: values differ")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


def _pyramid_demo(folder: str) -> bool:
    """Write a small XYZ tile pyramid as PNG files, build its manifest with
    :func:`refstore.build.xyz`, and open it as a multiscale group."""
    try:
        import imagecodecs
    except ImportError:
        print("tile pyramid part skipped: pip install 'refstore[images]' for the image codecs")
        return True
    import zarr

    from refstore import ReferenceStore, build, multiscale

    tile = 64
    yy, xx = np.mgrid[0:256, 0:256]
    image = np.stack([(xx % 256), (yy % 256), ((xx + yy) // 2) % 256], axis=-1).astype("u1")
    root = os.path.join(folder, "tiles")
    level_images = {}
    for z, step in ((2, 1), (1, 2), (0, 4)):  # z=2 is the full image, each level down halves it
        pixels = image[::step, ::step]
        level_images[z] = pixels
        for y in range(0, pixels.shape[0], tile):
            for x in range(0, pixels.shape[1], tile):
                os.makedirs(os.path.join(root, str(z), str(y // tile)), exist_ok=True)
                with open(os.path.join(root, str(z), str(y // tile), f"{x // tile}.png"), "wb") as f:
                    f.write(imagecodecs.png_encode(np.ascontiguousarray(pixels[y : y + tile, x : x + tile])))
    manifest_path = os.path.join(folder, "tiles.json")
    build.xyz(root, show_progress=False).save(manifest_path)
    group = zarr.open_group(ReferenceStore(manifest_path), mode="r")
    print(f"tile pyramid {root} (PNG tiles) as a multiscale group through {manifest_path}:")
    ok = True
    for level, z in zip(multiscale.levels(group), (2, 1, 0)):
        arr = group[level.path]
        assert isinstance(arr, zarr.Array)
        # levels are OME-NGFF (c, y, x); the tiles are (y, x, c)
        same = bool(np.array_equal(np.moveaxis(np.asarray(arr[:]), 0, -1), level_images[z]))
        ok &= same
        factor = "x".join(str(f) for f in level.factor)
        print(f"  level {level.path}: shape {level.shape}, downsample factor {factor}, matches the tiles: {same}")
    return ok
