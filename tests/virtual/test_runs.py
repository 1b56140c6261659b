"""Virtual definitions stay small (issue 18): the sources of a concatenation or stack are written
as runs (definition version 2): shared metadata once, per input its length. Manifests written by
earlier refstore versions (version 1: a layer and ``.sources/<i>`` metadata per input, see
``_v1_fixtures.py``) still read the same values on every route (the HTTP server face: in
``tests/serve/test_serve_formats.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from _v1_fixtures import FIXTURES, expected, memory_array, sources


def _open_routes(path: Path) -> dict[str, Any]:
    """The fixture's root group by every in-process route (store, threaded pipeline, reference://)."""
    import fsspec

    import refstore

    return {
        "store": lambda: zarr.open_group(refstore.ReferenceStore(str(path)), mode="r"),
        "mapper": lambda: zarr.open_group(fsspec.filesystem("reference", fo=str(path), skip_instance_cache=True)
                                          .get_mapper(""), mode="r"),
    }


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_version_1_manifest_reads_the_same_on_every_route(zarr_format) -> None:
    import xarray as xr

    path = FIXTURES[zarr_format]
    definition = json.loads(json.loads(path.read_text())["refs"]["tas/refstore.virtual.json"])
    assert definition["refstore_virtual"] == 1 and len(definition["layers"]) == 3  # the old format
    want = expected(zarr_format)
    for route, open_group in _open_routes(path).items():
        for threaded in (False, True):
            cfg = {"codec_pipeline.path": "refstore.pipeline.ThreadedCodecPipeline"} if threaded else {}
            with zarr.config.set(cfg):
                g = open_group()
                for name, values in want.items():
                    np.testing.assert_array_equal(g[name][:], values, err_msg=f"{name} via {route}")
                    np.testing.assert_array_equal(g[name][3:9], values[3:9], err_msg=f"{name} via {route}")
    ds = xr.open_dataset("reference://", engine="zarr", drop_variables=["stacked"], backend_kwargs={
        "storage_options": {"fo": str(path)}, "consolidated": False})
    # zeros stay zeros: zarr 2 null is no fill value; zarr 3 sources say NaN
    np.testing.assert_array_equal(ds["tas"].values, want["tas"])


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_saving_again_writes_runs_of_the_same_values(tmp_path, zarr_format) -> None:
    import refstore
    from refstore.virtual import save_virtual

    old = zarr.open_group(refstore.ReferenceStore(str(FIXTURES[zarr_format])), mode="r")
    out = tmp_path / "again.json"
    save_virtual({"tas": old["tas"], "stacked": old["stacked"]}, str(out), zarr_format=zarr_format)
    refs = json.loads(out.read_text())["refs"]
    tas = json.loads(refs["tas/refstore.virtual.json"])
    assert tas["refstore_virtual"] == 2 and [list(layer) for layer in tas["layers"]] == [["run"]]
    run = tas["layers"][0]["run"]
    assert run["lengths"] == [5, 7, 4] and len(run["metadata"]) == 2 and run["which"] == [0, 1, 0]
    stacked = json.loads(refs["stacked/refstore.virtual.json"])["layers"][0]["run"]
    assert stacked["count"] == 2 and stacked["axis"] == 0 and "lengths" not in stacked
    assert not [k for k in refs if "/.sources/" in k and k.rsplit("/", 1)[-1] in (".zarray", ".zattrs", "zarr.json")]
    assert out.stat().st_size < FIXTURES[zarr_format].stat().st_size
    g = zarr.open_group(refstore.ReferenceStore(str(out)), mode="r")
    assert g["tas"].metadata.zarr_format == zarr_format
    for name, values in expected(zarr_format).items():
        np.testing.assert_array_equal(g[name][:], values)
        np.testing.assert_array_equal(g[name][4:10], values[4:10])


def test_definition_costs_a_few_bytes_per_input() -> None:
    """40 and 80 inputs: the definition grows by its lengths alone, and no input has metadata documents."""
    from refstore.virtual import concat, save_virtual

    values = np.arange(6, dtype="i4")
    sizes = {}
    for n in (40, 80):
        arrays = [memory_array(values.reshape(3, 2) + i, (2, 2), "zlib" if i % 2 else None, 2) for i in range(n)]
        manifest = save_virtual({"v": concat(arrays)})
        definition = manifest.get("v/refstore.virtual.json")
        sizes[n] = len(definition)
        assert not [k for k in manifest.keys() if k.startswith("v/.sources/") and ".z" in k]
        store = zarr.open_group(__import__("refstore").ReferenceStore(manifest), mode="r")
        np.testing.assert_array_equal(store["v"][:], np.concatenate([values.reshape(3, 2) + i for i in range(n)]))
    # per input: its length and its template number ("3, " and "1, ")
    assert (sizes[80] - sizes[40]) / 40 <= 8


@pytest.mark.parametrize(("field", "value", "match"), [
    ("lengths", None, "lengths"),
    ("which", [0, 5], "which"),
    ("axis", 4, "axis"),
    ("metadata", [{"x": 1}, {".zarray": {"shape": [1]}}], "metadata 0"),
    ("metadata", [{".zarray": {"shape": [5, 3]}}, {".zarray": {"shape": [1]}}], "metadata 1 has no shape"),
])
def test_malformed_run_is_refused_naming_the_field(field, value, match) -> None:
    import refstore
    from refstore.virtual import VirtualArray, save_virtual

    manifest = save_virtual({"v": refstore.concat(sources(2)[:2])})
    d = json.loads(manifest.get("v/refstore.virtual.json"))
    run = d["layers"][0]["run"]
    if value is None:
        del run[field]
    else:
        run[field] = value
    with pytest.raises(refstore.ManifestError, match=match):
        VirtualArray.from_dict(d, root=zarr.storage.MemoryStore())


def test_a_stack_run_with_a_huge_count_is_refused_before_allocating() -> None:
    import refstore
    from refstore.virtual import VirtualArray, save_virtual

    two = [memory_array(np.full((4, 3), k, "f4"), (2, 3), None, 2) for k in range(2)]
    d = json.loads(save_virtual({"v": refstore.stack(two)}).get("v/refstore.virtual.json"))
    run = d["layers"][0]["run"]
    assert run["count"] == 2
    run["count"] = 10**15
    with pytest.raises(refstore.ManifestError, match="count"):
        VirtualArray.from_dict(d, root=zarr.storage.MemoryStore())
