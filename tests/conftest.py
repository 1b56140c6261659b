"""Shared fixtures: loopback HTTP/S3/GCS servers and the parametrised ``remote``.

Servers are session-scoped and started lazily (only when a test asks for
them).  ``remote`` is parametrised over ``local``, ``http``, ``s3``, ``gcs``
and gives every test its own key prefix.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Helper modules live next to this file; import them by path so this works
# with or without tests/__init__.py (other tests: ``from _datasets import ...``).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from _entry_points import probe_site  # noqa: E402
from _servers import CLIENT_ENV, GCSServer, RangeHTTPServer, S3Server  # noqa: E402

# Must happen before anything imports gcsfs (it reads the flag at import time).
os.environ.update(CLIENT_ENV)

# The venvs' editable install declares the entry points of the checkout it was made from.
# Declare this checkout's codec entry points (pyproject.toml) to this process and to every
# interpreter the tests start, as installing this checkout would: before zarr and numcodecs
# read entry points at import, or by asking them to read again.
_SITE = str(probe_site(Path(tempfile.mkdtemp(prefix="refstore-entry-points-"))))
atexit.register(shutil.rmtree, _SITE, True)
sys.path.insert(0, _SITE)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_SITE, os.environ.get("PYTHONPATH")) if p)
# Snapshots of pickled manifests outlive their processes (refstore.manifest._snapshot_store): keep
# this run's (and its subprocesses') out of the user's shared directory, and remove them after.
_SNAPSHOTS = tempfile.mkdtemp(prefix="refstore-test-snapshots-")
atexit.register(shutil.rmtree, _SNAPSHOTS, True)
os.environ["REFSTORE_SNAPSHOT_DIR"] = _SNAPSHOTS
if "numcodecs.registry" in sys.modules:
    sys.modules["numcodecs.registry"].run_entrypoints()
if "zarr.registry" in sys.modules:
    sys.modules["zarr.registry"]._collect_entrypoints()

BUCKET = "refstore-test"
REMOTE_KINDS = ("local", "http", "s3", "gcs")


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RangeHTTPServer]:
    """Session aiohttp range server; prefer the function-scoped ``http`` fixture."""
    server = RangeHTTPServer(tmp_path_factory.mktemp("http_root")).start()
    yield server
    server.stop()


@pytest.fixture
def http(http_server: RangeHTTPServer) -> Iterator[RangeHTTPServer]:
    """The HTTP server with counters and fault injection reset before and after."""
    http_server.reset()
    yield http_server
    http_server.reset()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """Session moto S3 server (dummy AWS credentials in the environment)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CLIENT_ENV.items():
            mp.setenv(key, value)
        server = S3Server().start()
        yield server
        server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    """Session in-memory GCS emulator; also sets ``STORAGE_EMULATOR_HOST``."""
    server = GCSServer().start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        mp.setenv("STORAGE_EMULATOR_HOST", server.endpoint_url)
        yield server
    server.stop()


@dataclass
class Remote:
    """One storage backend as seen by a test.

    * ``kind``: ``"local"``, ``"http"``, ``"s3"`` or ``"gcs"`` (the param id).
    * ``protocol``: fsspec protocol = URL scheme: ``"file"``, ``"http"``,
      ``"s3"``, ``"gs"``.  Use ``"gs"`` (not ``"gcs"``) as fsspec
      ReferenceFileSystem's ``remote_protocol``: it keys its filesystems by
      that string and does not alias ``gs://`` URLs to ``"gcs"``.
    * ``storage_options``: kwargs for that protocol's filesystem, i.e. the
      ``remote_options`` of a reference filesystem (empty for local/http).
    * ``prefix``: this test's unique key prefix.
    * ``server``: the server object (``None`` for local).
    """

    kind: str
    protocol: str
    storage_options: dict[str, Any]
    prefix: str
    server: Any
    _put: Callable[[Path, str], str] = field(repr=False)
    _put_bytes: Callable[[str, bytes], str] = field(repr=False)

    def upload(self, src: str | os.PathLike[str]) -> str:
        """Put a file or a directory tree on the backend and return its URL.

        A directory returns the URL of the directory (no trailing slash;
        children keep their relative paths); a file returns the URL of that
        file.  Local "URLs" are absolute paths without ``file://``.
        """
        return self._put(Path(src), self.prefix)

    def upload_bytes(self, name: str, data: bytes) -> str:
        """Store ``data`` as ``<prefix>/<name>``; return its URL."""
        return self._put_bytes(f"{self.prefix}/{name}", data)

    def fs(self, **kwargs: Any) -> Any:
        """A fresh (uncached) fsspec filesystem for this backend."""
        import fsspec

        return fsspec.filesystem(
            self.protocol, skip_instance_cache=True, **{**self.storage_options, **kwargs}
        )


def _unique_prefix(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")[:48]
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _local_remote(root: Path, prefix: str) -> Remote:
    def put(src: Path, pfx: str) -> str:
        dest = root / pfx
        dest.mkdir(parents=True, exist_ok=True)
        if src.is_file():
            return str(Path(shutil.copy2(src, dest / src.name)).resolve())
        shutil.copytree(src, dest / src.name, dirs_exist_ok=True)
        return str((dest / src.name).resolve())

    def put_bytes(key: str, data: bytes) -> str:
        target = root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return str(target.resolve())

    return Remote("local", "file", {}, prefix, None, put, put_bytes)


def make_remote(kind: str, request: pytest.FixtureRequest) -> Remote:
    """Build the :class:`Remote` for ``kind``, starting its server if needed."""
    prefix = _unique_prefix(request)
    if kind == "local":
        root = request.getfixturevalue("tmp_path") / "remote"
        return _local_remote(root, prefix)
    if kind == "http":
        srv: RangeHTTPServer = request.getfixturevalue("http")

        def put_http(key: str, data: bytes) -> str:
            target = srv.root / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            return f"{srv.url}/{key}"

        return Remote("http", "http", {}, prefix, srv, lambda s, p: srv.serve(s, _child(s, p)), put_http)
    if kind == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        return Remote(
            "s3", "s3", s3.storage_options, prefix, s3,
            lambda s, p: s3.upload(s, BUCKET, _child(s, p)),
            lambda k, d: s3.put_bytes(BUCKET, k, d),
        )
    if kind == "gcs":
        gcs: GCSServer = request.getfixturevalue("gcs_server")
        return Remote(
            "gcs", "gs", gcs.storage_options, prefix, gcs,
            lambda s, p: gcs.upload(s, BUCKET, _child(s, p)),
            lambda k, d: gcs.put_bytes(BUCKET, k, d),
        )
    raise ValueError(kind)


def _child(src: Path, prefix: str) -> str:
    """Key prefix so that a directory keeps its own name, like the local copy."""
    return prefix if src.is_file() else f"{prefix}/{src.name}"


@pytest.fixture(params=REMOTE_KINDS)
def remote(request: pytest.FixtureRequest) -> Remote:
    """A backend per param (local/http/s3/gcs) with a unique prefix per test."""
    return make_remote(request.param, request)


@pytest.fixture(params=("http", "s3", "gcs"))
def network_remote(request: pytest.FixtureRequest) -> Remote:
    """Like ``remote``, without the local backend."""
    return make_remote(request.param, request)


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    """A fresh temporary directory (alias of ``tmp_path``)."""
    return tmp_path


@pytest.fixture(scope="session")
def hdf5_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The :func:`tests._datasets.make_hdf5` file, built once per session."""
    from _datasets import make_hdf5

    return make_hdf5(tmp_path_factory.mktemp("data") / "test.h5")


@pytest.fixture(scope="session")
def netcdf_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The :func:`tests._datasets.make_netcdf` file, built once per session."""
    from _datasets import make_netcdf

    return make_netcdf(tmp_path_factory.mktemp("data") / "test.nc")
