"""save_virtual / open_virtual / flatten / JSON definitions: served as ordinary zarr arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from _datasets import kerchunk_refs
from _vdata import make_time_files, open_h5_var, read_h5

import refstore
from refstore.virtual import (
    VirtualArray,
    VirtualResolver,
    concat,
    flatten,
    open_virtual,
    pad,
    save_virtual,
    stack,
)
from refstore.virtual._plan import plan_chunk


@pytest.fixture(scope="module")
def time_files(tmp_path_factory: pytest.TempPathFactory):
    return make_time_files(tmp_path_factory.mktemp("vsave"))


@pytest.mark.parametrize("remote", ["local", "http", "s3"], indirect=True)
@pytest.mark.parametrize("zarr_format", [None, 3, 2])
def test_save_virtual_opens_as_zarr_group(tmp_path, time_files, remote, zarr_format) -> None:
    names = ["y2001_gz", "y2004_raw", "y2002_gz"]
    arrays = [open_h5_var(time_files[n], remote) for n in names]
    e = np.concatenate([read_h5(time_files[n]) for n in names])
    v = concat(arrays)
    virtuals = {
        "tas": v,
        "grp/padded": pad(arrays[0], ((0, 1), (0, 0), (2, 0)), fill_value=np.nan),
        "stacked": stack([arrays[0], arrays[2]], axis=1),
        "view": v[100:900:3, ::2],
    }
    out = tmp_path / "out.json"
    save_virtual(virtuals, str(out), zarr_format=zarr_format)
    g = zarr.open_group(refstore.ReferenceStore(str(out), remote_options=remote.storage_options), mode="r")
    assert g["tas"].shape == e.shape and g["tas"].dtype == np.float32
    if zarr_format is not None:
        assert g["tas"].metadata.zarr_format == zarr_format
    np.testing.assert_array_equal(g["tas"][:], e)
    np.testing.assert_array_equal(g["tas"][360:371, 2:4], e[360:371, 2:4])
    ea = read_h5(time_files["y2001_gz"])
    np.testing.assert_array_equal(g["grp/padded"][:], np.pad(ea, ((0, 1), (0, 0), (2, 0)), constant_values=np.nan))
    np.testing.assert_array_equal(g["stacked"][:], np.stack([ea, read_h5(time_files["y2002_gz"])], axis=1))
    np.testing.assert_array_equal(g["view"][:], e[100:900:3, ::2])
    # the definition is JSON and round-trips; the three whole inputs are one run (version 2), two
    # of them encoded alike (one metadata template), the raw one apart
    manifest = refstore.Manifest.open(str(out))
    definition = json.loads(manifest.get("tas/refstore.virtual.json"))
    assert definition["refstore_virtual"] == 2 and len(definition["layers"]) == 1
    run = definition["layers"][0]["run"]
    assert run["lengths"] == [365, 366, 365] and run["path"] == "tas/.sources/" and run["first"] == 0
    assert len(run["metadata"]) == 2 and run["which"] == [0, 1, 0]
    assert not [k for k in manifest.keys() if k.startswith("tas/.sources/") and k.rsplit("/", 1)[-1] in
                (".zarray", ".zattrs", "zarr.json")]


def test_aligned_chunks_pass_through_bytes(tmp_path, time_files) -> None:
    a, b = open_h5_var(time_files["y2001_gz"]), open_h5_var(time_files["y2002_gz"])
    v = concat([a, b])
    store = open_virtual(save_virtual({"t": v}))
    resolver = store.resolver
    from zarr.core.sync import sync

    for coords, src, src_coords in [((0, 0, 0), a, (0, 0, 0)), ((7, 0, 0), b, (2, 0, 0))]:
        key = "t/" + zarr.open_array(store, path="t", mode="r").metadata.encode_chunk_key(coords)
        assert sync(resolver.is_virtual(key))
        got = sync(resolver.get_chunk(key))
        raw = src.store_path.store.manifest.get("var/" + src.metadata.encode_chunk_key(src_coords))
        assert isinstance(raw, refstore.Reference)
        with open(raw.url, "rb") as f:
            f.seek(raw.offset)
            assert got == f.read(raw.length)
    assert not sync(resolver.is_virtual("t/zarr.json")) and not sync(resolver.is_virtual("t/.zarray"))
    assert sync(plan_chunk(v, sync(_encoding(v)), (5, 0, 0)))[0] == "pass"


async def _encoding(v):
    from refstore.virtual._source import encoding_of
    from refstore.virtual._store import _open_meta

    return encoding_of(await _open_meta(v.encoding_docs()))


@pytest.mark.parametrize("remote", ["local", "s3"], indirect=True)
def test_flatten_plain_manifest(time_files, remote) -> None:
    a = open_h5_var(time_files["y2001_gz"], remote)
    b = open_h5_var(time_files["y2002_gz"], remote)
    e = np.concatenate([read_h5(time_files["y2001_gz"]), read_h5(time_files["y2002_gz"])])
    v = concat([a, b])
    m = v.to_manifest("t")
    assert not any(k.endswith("refstore.virtual.json") for k in m.keys())
    # a plain ReferenceStore (no virtual hook) reads it
    g = zarr.open_group(refstore.ReferenceStore(m, remote_options=remote.storage_options), mode="r")
    np.testing.assert_array_equal(g["t"][:], e)
    # so does fsspec's own reference filesystem (kerchunk v2 metadata kept)
    import fsspec

    if remote.kind == "local":
        fs = fsspec.filesystem("reference", fo=m.to_dict(), asynchronous=True)
        arr = zarr.open_array(zarr.storage.FsspecStore(fs, read_only=True), path="t", mode="r")
        np.testing.assert_array_equal(arr[:], e)
    flat2 = save_virtual({"t": v, "u": stack([a, b])}, flatten=True)
    np.testing.assert_array_equal(zarr.open_group(refstore.ReferenceStore(flat2, remote_options=remote.storage_options), mode="r")["u"][:], np.stack([e[:365], e[365:]]))


def test_flatten_refuses_misaligned(time_files) -> None:
    a = open_h5_var(time_files["y2001_gz"])
    c = open_h5_var(time_files["y2004_raw"])
    with pytest.raises(refstore.ManifestError, match="encoded differently"):
        flatten({"x": concat([a, c])})
    with pytest.raises(refstore.ManifestError, match=r"chunk \(0, 0, 0\)"):
        flatten({"x": concat([concat([a])[1:], a])})


def test_definition_with_manifest_urls_and_inline_virtual(tmp_path, time_files) -> None:
    paths = {}
    for n in ("y2001_gz", "y2004_raw"):
        p = tmp_path / f"{n}.json"
        p.write_text(json.dumps(kerchunk_refs(time_files[n], str(time_files[n]))))
        paths[n] = str(p)
    ea, ec = read_h5(time_files["y2001_gz"]), read_h5(time_files["y2004_raw"])
    inner = {
        "refstore_virtual": 1, "shape": [10, 6, 8], "dtype": "<f4", "chunks": [5, 6, 8], "fill_value": "NaN",
        "layers": [{"source": {"manifest": paths["y2004_raw"], "path": "var"}, "origin": [0, 0, 0],
                    "shape": [10, 6, 8], "map": [[0, 100, 2], [1, 0, 1], [2, 0, 1]]}],
    }
    d = {
        "refstore_virtual": 1, "shape": [380, 6, 8], "dtype": "<f4", "chunks": [73, 6, 8], "fill_value": "NaN",
        "attributes": {"units": "K"}, "dimension_names": ["time", "y", "x"],
        "layers": [
            {"source": {"manifest": paths["y2001_gz"], "path": "var"}, "origin": [0, 0, 0], "shape": [365, 6, 8],
             "map": [[0, 0, 1], [1, 0, 1], [2, 0, 1]]},
            {"source": {"virtual": inner}, "origin": [366, 0, 0], "shape": [10, 6, 8],
             "map": [[0, 0, 1], [1, 0, 1], [2, 0, 1]]},
        ],
    }
    v = VirtualArray.from_dict(d)
    expected = np.full((380, 6, 8), np.nan, "f4")
    expected[:365] = ea
    expected[366:376] = ec[100:120:2]
    np.testing.assert_array_equal(v[...], expected)
    assert v.to_dict(source_ref=lambda s: s.ref)["layers"][1]["source"]["virtual"]["layers"][0]["map"][0] == [0, 100, 2]
    # and as a zarr array: definition + metadata in a manifest
    m = save_virtual({"v": v})
    g = zarr.open_group(open_virtual(m), mode="r")
    assert g["v"].metadata.dimension_names == ("time", "y", "x")
    np.testing.assert_array_equal(g["v"][:], expected)
    with pytest.raises(refstore.ManifestError, match="refstore_virtual"):
        VirtualArray.from_dict({**d, "refstore_virtual": 9})
    with pytest.raises(refstore.ManifestError, match="outside"):
        VirtualArray.from_dict({**d, "shape": [300, 6, 8]})


def test_resolver_as_store_hook(time_files) -> None:
    """What ReferenceStore.get will do once the hook is installed: ask the resolver first."""
    from zarr.core.buffer import default_buffer_prototype

    class HookedStore(refstore.ReferenceStore):
        async def get(self, key, prototype, byte_range=None):
            if await self.engine.virtual.is_virtual(key):
                data = await self.engine.virtual.get_chunk(key)
                return None if data is None else prototype.buffer.from_bytes(data)
            return await super().get(key, prototype, byte_range)

    a, c = open_h5_var(time_files["y2001_gz"]), open_h5_var(time_files["y2004_raw"])
    m = save_virtual({"x": concat([a, c])})
    store = HookedStore(m)
    assert isinstance(store.engine.virtual, VirtualResolver)
    np.testing.assert_array_equal(
        zarr.open_array(store, path="x", mode="r")[:], np.concatenate([read_h5(time_files["y2001_gz"]), read_h5(time_files["y2004_raw"])])
    )
    assert default_buffer_prototype() is not None


def test_remote_definition_cannot_reach_local_sources(tmp_path, time_files, http) -> None:
    """A virtual definition read from a remote manifest obeys that manifest's URL policy."""
    p = tmp_path / "local_refs.json"
    p.write_text(json.dumps(kerchunk_refs(time_files["y2001_gz"], str(time_files["y2001_gz"]))))
    d = {"refstore_virtual": 1, "shape": [365, 6, 8], "dtype": "<f4", "chunks": [73, 6, 8], "fill_value": "NaN",
         "layers": [{"source": {"manifest": str(p), "path": "var"}, "origin": [0, 0, 0], "shape": [365, 6, 8],
                     "map": [[0, 0, 1], [1, 0, 1], [2, 0, 1]]}]}
    local = tmp_path / "virtual.json"
    save_virtual({"v": VirtualArray.from_dict(d)}, str(local))
    g = zarr.open_group(refstore.ReferenceStore(str(local)), mode="r")
    np.testing.assert_array_equal(g["v"][:], read_h5(time_files["y2001_gz"]))  # a local manifest may
    url = http.serve(local, "virt")
    g = zarr.open_group(refstore.ReferenceStore(url), mode="r")
    with pytest.raises(refstore.URLNotAllowed, match="local files"):
        g["v"][:]


def test_mostly_misaligned_arrays_are_served_uncompressed(time_files) -> None:
    """Assembled chunks are not re-compressed: a mostly misaligned array is plain bytes."""
    a, b = open_h5_var(time_files["y2001_gz"]), open_h5_var(time_files["y2002_gz"])  # gzip, chunk 73
    e = np.concatenate([read_h5(time_files["y2001_gz"]), read_h5(time_files["y2002_gz"])])
    va, vb = concat([a]), concat([b])
    aligned, shifted = concat([a, b]), concat([va[1:], b])  # 365 = 5 * 73; the shift misaligns every chunk
    assert json.loads(aligned.encoding_docs()[".zarray"])["filters"][0]["id"] == "zlib"
    docs = shifted.encoding_docs()
    assert [c["name"] for c in json.loads(docs["zarr.json"])["codecs"]] == ["bytes"]
    assert json.loads(shifted.encoding_docs(copy_encoding=True)[".zarray"])["filters"][0]["id"] == "zlib"
    assert "zarr.json" in concat([a, b]).encoding_docs(copy_encoding=False)
    # mostly aligned: one misaligned layer of four keeps the sources' encoding
    assert ".zarray" in concat([a, b, a, vb[1:]]).encoding_docs()
    g = zarr.open_group(refstore.ReferenceStore(save_virtual({"s": shifted})), mode="r")
    np.testing.assert_array_equal(g["s"][:], e[1:])
    with pytest.raises(refstore.ManifestError, match=r"chunk \(0, 0, 0\) is not one aligned"):
        flatten({"s": shifted})
