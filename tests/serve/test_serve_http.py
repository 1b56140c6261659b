"""HTTP behaviour of the server: CORS, ETag/Last-Modified and 304, Cache-Control, gzip'd
metadata, bearer tokens, back-pressure (503 + Retry-After), the JSON listing and HTML pages."""

from __future__ import annotations

import gzip
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import zarr
from _datasets import kerchunk_refs, make_hdf5

from refstore.serve import app


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = make_hdf5(tmp_path / "data.h5")
    out = tmp_path / "data.json"
    out.write_text(json.dumps(kerchunk_refs(path, str(path))))
    return out


def test_cors_preflight_and_exposed_headers(serve, manifest) -> None:
    server = serve(app({"h5": str(manifest)}, cors_origins=["https://viewer.example"]))
    status, headers, _ = _get(f"{server.url}/h5/gz3d/0.0.0", {
        "Origin": "https://viewer.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "range"}, method="OPTIONS")
    assert status == 200 and headers["access-control-allow-origin"] == "https://viewer.example"
    assert "range" in headers["access-control-allow-headers"].lower()
    status, headers, _ = _get(f"{server.url}/h5/gz3d/0.0.0", {"Origin": "https://viewer.example", "Range": "bytes=0-9"})
    assert status == 206 and headers["access-control-allow-origin"] == "https://viewer.example"
    assert "content-range" in headers["access-control-expose-headers"].lower()
    status, headers, _ = _get(f"{server.url}/h5/.zgroup", {"Origin": "https://elsewhere.example"})
    assert status == 200 and "access-control-allow-origin" not in headers
    closed = serve(app({"h5": str(manifest)}, cors_origins=[]))
    assert "access-control-allow-origin" not in _get(f"{closed.url}/h5/.zgroup", {"Origin": "https://x.example"})[1]


def test_etag_last_modified_304_and_cache_control(serve, manifest) -> None:
    server = serve(app({"h5": str(manifest)}, cache_control="public, max-age=60"))
    for key in ("gz3d/.zarray", "gz3d/0.0.0", "contig/0"):
        status, headers, body = _get(f"{server.url}/h5/{key}")
        assert status == 200 and headers["cache-control"] == "public, max-age=60"
        etag, modified = headers["etag"], headers["last-modified"]
        assert etag.startswith('"') and _get(f"{server.url}/h5/{key}")[1]["etag"] == etag  # stable
        status, headers, body = _get(f"{server.url}/h5/{key}", {"If-None-Match": etag})
        assert (status, body) == (304, b"") and headers["etag"] == etag
        assert _get(f"{server.url}/h5/{key}", {"If-Modified-Since": modified})[0] == 304
        assert _get(f"{server.url}/h5/{key}", {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})[0] == 200
        assert _get(f"{server.url}/h5/{key}", {"If-None-Match": '"other"'})[0] == 200
    tags = {_get(f"{server.url}/h5/{k}")[1]["etag"] for k in ("gz3d/0.0.0", "gz3d/0.0.1", "shuf/0.0")}
    assert len(tags) == 3


def test_metadata_gzipped_when_accepted(serve, manifest) -> None:
    server = serve(app({"h5": str(manifest)}))
    status, headers, body = _get(f"{server.url}/h5/.zmetadata", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip" and "Accept-Encoding" in headers["vary"]
    doc = json.loads(gzip.decompress(body))
    assert doc["metadata"]["gz3d/.zarray"]["compressor"]["id"] == "gzip"
    status, headers, plain = _get(f"{server.url}/h5/.zmetadata", {"Accept-Encoding": "identity"})
    assert "content-encoding" not in headers and json.loads(plain) == doc
    gz_etag = _get(f"{server.url}/h5/.zmetadata", {"Accept-Encoding": "gzip"})[1]["etag"]
    assert headers["etag"] != gz_etag
    assert _get(f"{server.url}/h5/.zmetadata", {"Accept-Encoding": "gzip", "If-None-Match": gz_etag})[0] == 304
    assert _get(f"{server.url}/h5/.zmetadata", {"Accept-Encoding": "identity", "If-None-Match": gz_etag})[0] == 200


def test_bearer_token_per_dataset(serve, manifest) -> None:
    server = serve(app({"open": str(manifest), "closed": {"source": str(manifest), "token": "s3cret"}}))
    assert _get(f"{server.url}/open/.zgroup")[0] == 200
    status, headers, body = _get(f"{server.url}/closed/.zgroup")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer") and json.loads(body)["dataset"] == "closed"
    assert _get(f"{server.url}/closed/.zgroup", {"Authorization": "Bearer wrong"})[0] == 401
    assert _get(f"{server.url}/closed/.zgroup", {"Authorization": "Bearer s3cret"})[0] == 200
    store = zarr.storage.FsspecStore.from_url(
        f"{server.url}/closed", storage_options={"client_kwargs": {"headers": {"Authorization": "Bearer s3cret"}}}, read_only=True)
    group = zarr.open_group(store, mode="r", zarr_format=3)
    assert group["shuf"].shape == (64, 48)


def test_back_pressure_503_with_retry_after(serve, manifest, http) -> None:
    h5 = manifest.parent / "data.h5"
    url = http.serve(h5, "bp")
    (manifest.parent / "remote.json").write_text(json.dumps(kerchunk_refs(h5, url)))
    server = serve(app({"h5": str(manifest.parent / "remote.json")}, max_in_flight=1, queue_limit=1, retry_after=7))
    assert _get(f"{server.url}/h5/.zgroup")[0] == 200  # loaded
    http.delay = 1.0
    results: list[int] = []

    def slow(key: str) -> None:
        results.append(_get(f"{server.url}/h5/{key}")[0])

    threads = [threading.Thread(target=slow, args=(k,)) for k in ("contig/0", "gz3d/0.0.0")]
    for t in threads:
        t.start()
        time.sleep(0.2)  # one in flight, one waiting
    status, headers, body = _get(f"{server.url}/h5/gz3d/0.0.1")
    for t in threads:
        t.join()
    assert status == 503 and headers["retry-after"] == "7" and "busy" in json.loads(body)["error"]
    assert sorted(results) == [200, 200]


def test_listing_and_html_pages(serve, manifest) -> None:
    server = serve(app({"h5": str(manifest)}))
    status, headers, body = _get(f"{server.url}/h5/")
    listing = json.loads(body)
    nodes = {n["path"]: n for n in listing["nodes"]}
    assert nodes["gz3d"]["source_codecs"] == ["zlib"] and nodes["gz3d"]["served_codecs"] == ["gzip"]
    assert nodes["gz3d"]["transcoded"] and not nodes["contig"]["transcoded"] and nodes["grp/sub"]["node_type"] == "group"
    assert nodes["gz3d"]["zarr_formats"] == [2, 3] and nodes["gz3d"]["shape"] == [20, 30, 40]
    status, headers, page = _get(f"{server.url}/h5/", {"Accept": "text/html"})
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"grp/sub/nested" in page and b"gzip (transcoded from zlib)" in page
    status, headers, page = _get(f"{server.url}/", {"Accept": "text/html"})
    assert b"href='h5/'" in page
    assert json.loads(_get(f"{server.url}/h5?format=json", {"Accept": "text/html"})[2])["dataset"] == "h5"


def test_mounted_in_a_starlette_application(serve, manifest) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    outer = Starlette(routes=[Route("/hello", hello), Mount("/zarr", app=app({"h5": str(manifest)}))])
    server = serve(outer)
    assert _get(f"{server.url}/hello")[2] == b"hello"
    group = zarr.open_group(f"{server.url}/zarr/h5", mode="r", zarr_format=3)
    assert group["shuf"].shape == (64, 48) and int(group["grp/sub/nested"][19, 19]) == 399
    assert json.loads(_get(f"{server.url}/zarr/")[2]) == {"datasets": ["h5"]}


def test_rate_limit_per_client_429(serve, manifest) -> None:
    server = serve(app({"h5": str(manifest)}, rate_limit=1, rate_burst=3))
    statuses = [_get(f"{server.url}/h5/.zgroup")[0] for _ in range(4)]
    assert statuses[:3] == [200, 200, 200]
    status, headers, body = _get(f"{server.url}/h5/.zgroup")
    assert status == 429 and int(headers["retry-after"]) >= 1 and "too many requests" in json.loads(body)["error"]
    time.sleep(1.1)
    assert _get(f"{server.url}/h5/.zgroup")[0] == 200


def test_large_chunks_are_streamed_in_pieces(serve, manifest) -> None:
    application = app({"h5": str(manifest)}, stream_bytes=1000)
    server = serve(application)
    h5 = manifest.parent / "data.h5"
    import refstore

    entry = refstore.Manifest.open(str(manifest))["contig/0"]
    status, headers, body = _get(f"{server.url}/h5/contig/0")
    assert status == 200 and int(headers["content-length"]) == entry.length == 8000
    assert body == h5.read_bytes()[entry.offset:entry.offset + entry.length]
    assert len(application.state.refstore.datasets["h5"].cache) == 0  # never held whole
    assert _get(f"{server.url}/h5/shuf/0.0")[0] == 200  # small chunks are not streamed
    assert len(application.state.refstore.datasets["h5"].cache) == 1


def test_concurrent_requests_merge_into_one_source_read(http, tmp_path) -> None:
    """Requests of many clients arriving together reach the engine's fetcher in one loop turn,
    which reads adjacent chunks of one source with one request (the app driven in process)."""
    import asyncio

    from _datasets import make_contiguous_chunks

    data = make_contiguous_chunks(tmp_path, n_chunks=16, chunk_bytes=4096)
    url = http.serve(data.path, "merge")
    (tmp_path / "refs.json").write_text(json.dumps(data.refs_v2(url)))
    application = app({"c": {"source": str(tmp_path / "refs.json"), "cache_bytes": 0}})

    async def get(key: str) -> tuple[int, bytes]:
        sent: list[dict] = []
        scope = {"type": "http", "method": "GET", "path": f"/c/{key}", "raw_path": f"/c/{key}".encode(),
                 "query_string": b"", "headers": [], "root_path": "", "client": ("127.0.0.1", 1)}

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await application(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    async def main() -> list[tuple[int, bytes]]:
        await get(".zarray")  # loaded
        http.reset()
        return await asyncio.gather(*(get(str(i)) for i in range(16)))

    answers = asyncio.run(main())
    expected = data.expected().tobytes()
    assert [a for a, _ in answers] == [200] * 16
    assert all(body == expected[i * 4096:(i + 1) * 4096] for i, (_, body) in enumerate(answers))
    assert http.total_gets == 1, http.log
    application.state.refstore.datasets["c"].source.close_all()


def test_fast_path_answers_as_the_full_chain_does(manifest) -> None:
    """GETs of whole chunks and documents take the fast path (refstore.serve._fast); each answer
    (status, headers, body) equals the one the full middleware chain gives the same request."""
    import asyncio

    application = app({"h5": str(manifest), "closed": {"source": str(manifest), "token": "s3cret"}},
                      cors_origins=["https://viewer.example"], max_range_bytes=10**6)

    async def call(target: object, method: str, path: str, headers: dict[str, str]) -> tuple[int, list, bytes]:
        sent: list[dict] = []
        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 1),
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await target(scope, receive, send)  # type: ignore[operator]
        return sent[0]["status"], sorted(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])

    async def refuse_to_send(message: dict) -> None:
        raise AssertionError(f"the fast path sent {message} for a request it declined")

    async def main() -> None:
        await application.state.refstore.datasets["h5"].load()
        await application.state.refstore.datasets["closed"].load()
        fast = application.fast
        etag = dict((await call(application, "GET", "/h5/gz3d/0.0.0", {}))[1])[b"etag"].decode()
        origin = {"Origin": "https://viewer.example"}
        cases = [
            ("GET", "/h5/gz3d/0.0.0", {}), ("GET", "/h5/contig/0", origin), ("GET", "/h5/shuf/0.0", {"Origin": "https://x.example"}),
            ("GET", "/h5/gz3d/0.0.0", {"If-None-Match": etag, **origin}), ("GET", "/h5/.zmetadata", {"Accept-Encoding": "gzip"}),
            ("GET", "/h5/.zmetadata", {"Accept-Encoding": "gzip, br", **origin}), ("HEAD", "/h5/gz3d/.zarray", origin),
            ("GET", "/h5/zarr.json", {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}),
            ("GET", "/closed/shuf/0.0", {"Authorization": "Bearer s3cret"}),
        ]
        for method, path, headers in cases:
            ds = application.state.refstore.datasets[path.split("/")[1]]
            hits = ds.cache.hits + ds.cache.misses
            got = await call(application, method, path, headers)
            if "/." not in path and "zarr.json" not in path and "If-None-Match" not in headers:
                assert ds.cache.hits + ds.cache.misses > hits, path  # read through the fast path
            assert got == await call(application.chain, method, path, headers), (method, path, headers)
            assert got[0] in (200, 304)
        # declined, so answered by the full chain: a range, a HEAD of a chunk, a missing token, an absent key
        for method, path, headers in [("GET", "/h5/contig/0", {"Range": "bytes=0-9"}), ("HEAD", "/h5/contig/0", {}),
                                      ("GET", "/closed/shuf/0.0", {}), ("GET", "/h5/nothing/0", {})]:
            scope = {"type": "http", "method": method, "path": path, "root_path": "",
                     "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
            assert not await fast(scope, None, refuse_to_send)  # type: ignore[arg-type]
        assert fast.pressure.in_flight == 0
        application.state.refstore.datasets["h5"].source.close_all()

    asyncio.run(main())
