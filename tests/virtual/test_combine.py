"""refstore.virtual._combine.combine over kerchunk manifests of HDF5 files with dimension scales."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from _datasets import kerchunk_refs

import refstore
from refstore.cli import main
from refstore.virtual import open_virtual
from refstore.virtual._combine import combine


def _write(path, days, seed, start=0):
    import h5py

    rng = np.random.default_rng(seed)
    data = rng.standard_normal((days, 4, 5)).astype("f4")
    with h5py.File(path, "w") as f:
        t = f.create_dataset("time", data=np.arange(start, start + days, dtype="f8"))
        t.make_scale("time")
        y = f.create_dataset("y", data=np.arange(4, dtype="f8"))
        y.make_scale("y")
        x = f.create_dataset("x", data=np.arange(5, dtype="f8"))
        x.make_scale("x")
        v = f.create_dataset("tas", data=data, chunks=(30, 4, 5), compression="gzip")
        for k, s in enumerate((t, y, x)):
            v.dims[k].attach_scale(s)
    return data


def test_combine_time(tmp_path) -> None:
    datas, manifests = [], []
    for k, days in enumerate((365, 366)):
        h5 = tmp_path / f"f{k}.h5"
        datas.append(_write(h5, days, k, start=365 * k))
        p = tmp_path / f"f{k}.json"
        p.write_text(json.dumps(kerchunk_refs(h5, str(h5))))
        manifests.append(str(p))
    out = tmp_path / "combined.json"
    combine(manifests, "time", str(out))
    g = zarr.open_group(refstore.ReferenceStore(str(out)), mode="r")
    np.testing.assert_array_equal(g["tas"][:], np.concatenate(datas))
    assert g["time"].shape == (731,)
    assert g["y"].shape == (4,)
    # stacking along a new dimension needs equal shapes: 365 vs 366 days is refused, naming the input
    with pytest.raises(ValueError, match=r"'tas' of '.*f1.json' differs from '.*f0.json' in length of dimension 'time'"):
        combine(manifests, "member", None, new_dim=True)
    combine([manifests[0], manifests[0]], "member", str(out), new_dim=True)
    g = zarr.open_group(open_virtual(str(out)), mode="r")
    assert g["y"].shape == (2, 4)
    assert g["tas"].attrs["_ARRAY_DIMENSIONS"] == ["member", "time", "y", "x"]
    np.testing.assert_array_equal(g["tas"][:], np.stack([datas[0], datas[0]]))


def test_combine_cli_checks_identical_coordinates(tmp_path, capsys) -> None:
    datas, manifests = [], []
    for k, days in enumerate((365, 366)):
        h5 = tmp_path / f"f{k}.h5"
        datas.append(_write(h5, days, k, start=365 * k))
        if k == 1:
            import h5py

            with h5py.File(h5, "r+") as f:
                f["y"][0] = 99.0  # a coordinate that should be identical, but is not
        p = tmp_path / f"f{k}.json"
        p.write_text(json.dumps(kerchunk_refs(h5, str(h5))))
        manifests.append(str(p))
    out = tmp_path / "c.json"
    assert main(["combine", *manifests, "--concat-dim", "time", "-o", str(out)]) == 1
    assert "variable 'y' has no 'time' dimension, so it must be identical" in capsys.readouterr().err
    # the same file twice repeats every time value: refused, unless the order given is kept (xarray's nested)
    assert main(["combine", manifests[0], manifests[0], "--concat-dim", "time", "-o", str(out)]) == 1
    assert not out.exists()
    assert main(["combine", manifests[0], manifests[0], "--concat-dim", "time", "-o", str(out), "--keep-order"]) == 0
    g = zarr.open_group(refstore.ReferenceStore(str(out)), mode="r")
    np.testing.assert_array_equal(g["tas"][:], np.concatenate([datas[0], datas[0]]))
