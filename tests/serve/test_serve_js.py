"""zarrita.js in Node, and in a page in headless Chromium, reads arrays served by ``refstore
serve`` (both zarr formats, pass-through and transcoded chunks, a DZI PNG pyramid) and compares
them with the values h5py and imagecodecs read; ``npm ci`` installs the locked zarrita into
``tests/js/node_modules``."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from _datasets import kerchunk_refs, make_hdf5, read_hdf5

from refstore.serve import app

JS = Path(__file__).resolve().parent.parent / "js"
pytestmark = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="needs Node.js and npm (.ci/run installs them)")


@pytest.fixture(scope="module")
def zarrita() -> Path:
    """``tests/js`` with its locked packages installed (``npm ci``, unless already installed from this lock)."""
    installed = JS / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < (JS / "package-lock.json").stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"], cwd=JS, check=True,
                       capture_output=True, timeout=600)
    return JS


def _node_reads(js: Path, tmp: Path, url: str, path: str, fmt: int, expected: np.ndarray, dtype: str) -> dict:
    values = [None if isinstance(v, float) and np.isnan(v) else v for v in expected.ravel().tolist()]
    spec = tmp / f"expected-{path.replace('/', '_')}-{fmt}.json"
    spec.write_text(json.dumps({"shape": list(expected.shape), "dtype": dtype, "values": values}))
    proc = subprocess.run(["node", str(js / "read_array.mjs"), url, path, str(fmt), str(spec)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"zarrita read {path} (zarr {fmt}): {proc.stdout} {proc.stderr}"
    return json.loads(proc.stdout)


@pytest.mark.parametrize("fmt", [2, 3])
def test_zarrita_reads_hdf5_arrays_as_h5py_does(serve, zarrita, tmp_path, fmt) -> None:
    h5 = make_hdf5(tmp_path / "d.h5")
    (tmp_path / "d.json").write_text(json.dumps(kerchunk_refs(h5, str(h5))))
    server = serve(app({"h5": str(tmp_path / "d.json")}))
    expected = read_hdf5(h5)
    for name, dtype in [("gz3d", "float32"), ("shuf", "int16"), ("contig", "float64"), ("grp/sub/nested", "uint16")]:
        result = _node_reads(zarrita, tmp_path, f"{server.url}/h5", name, fmt, expected[name], dtype)
        assert result["ok"], result


@pytest.mark.skipif(shutil.which("vips") is None, reason="needs libvips-tools (vips dzsave)")
def test_zarrita_reads_a_dzi_pyramid_level(serve, zarrita, tmp_path) -> None:
    y, x = np.mgrid[0:200, 0:300]
    src = np.stack([x % 256, y % 256, (x * y) % 251], -1).astype("u1")
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(src))
    subprocess.run(["vips", "dzsave", str(tmp_path / "src.png"), str(tmp_path / "dz"), "--tile-size", "64",
                    "--overlap", "1", "--suffix", ".png"], check=True)
    server = serve(app({"slide": {"source": str(tmp_path / "dz.dzi"), "build": {"channel_first": True}}}))
    result = _node_reads(zarrita, tmp_path, f"{server.url}/slide", "0", 3, src.transpose(2, 0, 1), "uint8")
    assert result["ok"], result


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None or shutil.which("vips") is None,
                    reason="needs Debian's chromium and libvips-tools (.ci/run installs them)")
def test_headless_chromium_reads_a_dzi_level_with_zarrita(serve, zarrita, tmp_path) -> None:
    """A page on another origin reads a served Deep Zoom pyramid level with zarrita (CORS, gzip
    transcodes) in headless Chromium; pixels compared with the source image."""
    import functools
    import http.server
    import threading
    import urllib.parse

    y, x = np.mgrid[0:200, 0:300]
    src = np.stack([x % 256, y % 256, (x * y) % 251], -1).astype("u1")
    (tmp_path / "src.png").write_bytes(imagecodecs.png_encode(src))
    subprocess.run(["vips", "dzsave", str(tmp_path / "src.png"), str(tmp_path / "dz"), "--tile-size", "64",
                    "--overlap", "0", "--suffix", ".png"], check=True)
    server = serve(app({"slide": {"source": str(tmp_path / "dz.dzi"), "build": {"channel_first": True}}}))
    expected = json.dumps({"shape": [3, 200, 300], "dtype": "uint8", "values": src.transpose(2, 0, 1).ravel().tolist()})

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/expected.json"):
                body = expected.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    page_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(zarrita)))
    threading.Thread(target=page_server.serve_forever, daemon=True).start()
    try:
        page = f"http://127.0.0.1:{page_server.server_address[1]}"
        query = urllib.parse.urlencode({"url": f"{server.url}/slide", "path": "0", "format": "3",
                                        "expected": f"{page}/expected.json"})
        proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000",
                               "--dump-dom", f"{page}/read_array.html?{query}"],
                              capture_output=True, text=True, timeout=180, check=False)
    finally:
        page_server.shutdown()
        page_server.server_close()
    found = re.search(r'<pre id="result">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no result in the page: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result["ok"] and result["n"] == 3 * 200 * 300, result
