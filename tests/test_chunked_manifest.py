"""A manifest served with chunked transfer encoding (no Content-Length) opens, as fsspec opens it (issue 13)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pytest
import zarr
from _hostile import Handler, ScriptedServer, honest
from aiohttp import web

import refstore

N = 40_000  # a manifest of about 2 MiB: the streaming reader reads it in several blocks


def chunked(data: bytes, piece: int = 7_919) -> Handler:
    """Answer GET with 200 and *data* in chunked pieces, whatever the Range; HEAD without a length."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            if request.method != "HEAD":
                for i in range(0, len(data), piece):
                    await resp.write(data[i : i + piece])
            await resp.write_eof()
        except ConnectionError:
            pass  # the client read what it needed and hung up
        return resp

    return handler


@pytest.fixture
def served() -> Iterator[tuple[ScriptedServer, str, np.ndarray, dict[str, Any]]]:
    server = ScriptedServer().start()
    values = np.arange(N, dtype="<i4")
    data_url = server.route("/data.bin", honest(values.tobytes()))
    meta = {"zarr_format": 2, "shape": [N], "chunks": [1], "dtype": "<i4", "compressor": None,
            "filters": None, "fill_value": 0, "order": "C"}
    refs: dict[str, Any] = {".zgroup": json.dumps({"zarr_format": 2}), "v/.zarray": json.dumps(meta)}
    refs.update({f"v/{i}": [data_url, 4 * i, 4] for i in range(N)})
    doc = {"version": 1, "refs": refs}
    try:
        yield server, data_url, values, doc
    finally:
        server.stop()


def _reads(mapper: Any, values: np.ndarray) -> None:
    got = zarr.open_group(mapper, mode="r")["v"]
    np.testing.assert_array_equal(got[:100], values[:100])
    np.testing.assert_array_equal(got[N - 7 :], values[N - 7 :])


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_a_chunked_manifest_opens_in_every_face(served, compress):
    server, _, values, doc = served
    body = json.dumps(doc).encode()
    if compress:
        body = gzip.compress(body)
    url = server.route("/refs.json.gz" if compress else "/refs.json", chunked(body))
    manifest = refstore.Manifest.open(url)
    path = url[len(server.url) :]
    # fsspec's open of a file without a length costs a GET to look for its size, then the
    # document is read once as it arrives (falling back to a whole-document parse would GET it again)
    assert server.count(path) == 2
    assert len(manifest) == N + 2
    assert manifest.get(f"v/{N - 1}") == refstore.Reference(doc["refs"][f"v/{N - 1}"][0], 4 * (N - 1), 4)
    _reads(refstore.ReferenceFileSystem(fo=url).get_mapper(""), values)
    _reads(refstore.ReferenceStore(url), values)
    # the reference:// route, as fsspec users write it
    _reads(fsspec.get_mapper("reference://", fo=url), values)


def test_fsspec_opens_the_same_chunked_manifest(served):
    """The behaviour refstore follows: fsspec's own ReferenceFileSystem reads it."""
    from fsspec.implementations.reference import ReferenceFileSystem

    server, _, values, doc = served
    url = server.route("/refs.json", chunked(json.dumps(doc).encode()))
    fs = ReferenceFileSystem(fo=url)
    assert fs.cat(f"v/{N - 1}") == values[N - 1 :].tobytes()
