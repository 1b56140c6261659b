"""Every JSON shape of the benchmark family reads, key by key, as fsspec's own parse of the same file.

The family (``benchmarks/open_shapes.py``): compact, ``json.dump`` defaults,
``indent=2``, ujson, orjson, kerchunk's writer, version 0, null URLs with a
target, keys in random order, one URL per chunk; each plain, gzip and zstd.
The files are written by those very writers (the tools themselves), at 6,000
references, and read through ``Manifest.open`` (1 MiB blocks), the streaming
reader in 4 KiB blocks with the URL table packing from its 1,000th URL (so
block edges and the packed table fall everywhere), and ``reference://``.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import fsspec
import pytest
import zstandard

import refstore
from benchmarks.data import big_json
from benchmarks.open_shapes import NULL_TARGET, shape_names, write_shape
from refstore.manifest import _urls
from refstore.manifest._model import Manifest
from refstore.manifest._stream import load_json_stream

N = 6_000


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import json

    folder = tmp_path_factory.mktemp("shapes")
    refs = json.loads(big_json(folder, N).read_text())
    return {name: write_shape(refs, name, folder) for name in shape_names()}


def _fsspec_refs(path: Path) -> dict[str, Any]:
    from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS

    fs = FsspecRFS(fo=str(path), target_options={"compression": "infer"}, target=NULL_TARGET,
                   remote_protocol="s3", remote_options={"anon": True}, skip_instance_cache=True)
    return dict(fs.references)


def _text(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _same(mine: Manifest, theirs: dict[str, Any]) -> None:
    assert len(mine) == len(theirs) == N + 4
    for key, value in theirs.items():
        got = mine.get(key)
        if isinstance(value, list):
            assert got is not None and [got.url, got.offset, got.length] == value, key
        else:
            assert got == (value.encode() if isinstance(value, str) else value), key


@pytest.mark.parametrize("name", shape_names())
def test_every_shape_reads_as_fsspec_reads_it(name: str, family: dict[str, Path], monkeypatch) -> None:
    path = family[name]
    theirs = _fsspec_refs(path)
    _same(Manifest.open(str(path)), theirs)

    monkeypatch.setattr(_urls, "PACK_AFTER", 1000)
    small = Manifest()
    text = _text(path)
    assert load_json_stream(small, io.BytesIO(text), size_hint=len(text), block=4096)
    _same(small, theirs)


@pytest.mark.parametrize("name", [n for n in shape_names() if n.startswith(("null", "one URL", "kerchunk"))])
def test_the_reference_protocol_reads_every_shape_as_fsspec(name: str, family: dict[str, Path]) -> None:
    """The same through ``reference://`` (refstore's class as fsspec hands it out)."""
    path = family[name]
    fs = fsspec.filesystem("reference", fo=str(path), target_options={"compression": "infer"},
                           target=NULL_TARGET, remote_protocol="s3", remote_options={"anon": True},
                           skip_instance_cache=True)
    assert isinstance(fs, refstore.ReferenceFileSystem)
    theirs = _fsspec_refs(path)
    mine = fs.references
    assert len(mine) == len(theirs)
    for key, value in theirs.items():
        assert mine[key] == value, key
    last = f"data/{N // 1000 - 1}.999"
    assert fs.info(last)["size"] == theirs[last][2]
    assert fs.cat_file("data/.zarray") == theirs["data/.zarray"].encode()


@pytest.mark.parametrize("suffix", ["", ", gzip"])
def test_null_urls_read_their_bytes_from_the_target(suffix: str, family: dict[str, Path], tmp_path: Path) -> None:
    """A null URL reads the ``target``'s bytes, as fsspec's class reads them (and not fill)."""
    import numpy as np
    from fsspec.implementations.reference import ReferenceFileSystem as FsspecRFS

    blob = np.random.default_rng(5).integers(0, 256, (N // 1000) * 40000, dtype=np.uint8).tobytes()
    target = tmp_path / "target.bin"
    target.write_bytes(blob)
    path = str(family[f"null URLs, a target{suffix}"])
    opts = {"fo": path, "target_options": {"compression": "infer"}, "target": str(target),
            "skip_instance_cache": True}
    mine = refstore.ReferenceFileSystem(**opts)
    theirs = FsspecRFS(**opts)
    for row, col in ((0, 0), (3, 517), (N // 1000 - 1, 999)):
        key = f"data/{row}.{col}"
        want = blob[row * 40000:(row + 1) * 40000]
        assert mine.cat_file(key) == theirs.cat_file(key) == want, key
