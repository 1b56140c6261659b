"""More real clients of ``refstore serve``: zarr's ObjectStore over obstore's HTTPStore and
tensorstore's zarr and zarr3 drivers, in both formats, compared with h5py's read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from _datasets import kerchunk_refs, make_hdf5, read_hdf5

from refstore.serve import app


@pytest.fixture
def served(serve, tmp_path):
    h5 = make_hdf5(tmp_path / "d.h5")
    (tmp_path / "d.json").write_text(json.dumps(kerchunk_refs(h5, str(h5))))
    return serve(app({"h5": str(tmp_path / "d.json")})), read_hdf5(h5)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_obstore_http_store(served, zarr_format) -> None:
    from obstore.store import HTTPStore
    from zarr.storage import ObjectStore

    server, expected = served
    store = ObjectStore(HTTPStore.from_url(f"{server.url}/h5", client_options={"allow_http": True}), read_only=True)
    group = zarr.open_group(store, mode="r", zarr_format=zarr_format)
    for name in ("gz3d", "shuf", "contig", "fill", "grp/sub/nested", "scalar"):
        np.testing.assert_array_equal(group[name][...], expected[name], err_msg=name)


@pytest.mark.parametrize("driver", ["zarr", "zarr3"])
def test_tensorstore_drivers(served, driver) -> None:
    import tensorstore as ts

    server, expected = served
    for name in ("gz3d", "shuf", "contig", "fill", "grp/sub/nested"):
        spec = {"driver": driver, "kvstore": {"driver": "http", "base_url": f"{server.url}/h5/{name}/"}}
        got = ts.open(spec, read=True).result().read().result()
        np.testing.assert_array_equal(got, expected[name], err_msg=f"{driver} {name}")
