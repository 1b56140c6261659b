"""What ``refstore serve`` serves and how: datasets from the command line or a TOML file."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TRANSCODE_CODECS", "DatasetConfig", "ServerConfig", "load_config", "parse_dataset_args"]

#: What chunks a generic client cannot decode are re-encoded with (``none``: uncompressed).
TRANSCODE_CODECS = ("none", "gzip", "zstd", "blosc")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, kw_only=True)
class DatasetConfig:
    """One served dataset.

    Attributes
    ----------
    name
        Its URL path: key ``K`` is served at ``/<name>/K``. Letters, digits, ``_``, ``.``, ``-``.
    source
        A kerchunk manifest (JSON or parquet; local, HTTP, S3, GCS), a manifest holding
        virtual-array definitions or a built pyramid, a Deep Zoom ``.dzi`` file (its
        manifest is built at start), or a folder holding a plain zarr store.
    options
        :class:`refstore.Options` fields for the engine (``remote_options``, ``url_policy``,
        ``deadlines``, ``max_concurrency``, ...).
    transcode
        The codec chunks that a generic client cannot decode are re-encoded with:
        ``none``, ``gzip`` (default; every JavaScript zarr client reads it), ``zstd`` or ``blosc``.
    level
        Its compression level (None: the codec's default; gzip 1).
    cache_bytes
        Budget of the LRU of hot chunks: transcoded ones, and whole pass-through ones (0 keeps none).
    token
        A bearer token every request for this dataset must carry (None: open).
    build
        Keyword arguments of the builder for a ``.dzi`` source (``channel_first = true``
        gives OME-NGFF's axis order, and its metadata).
    """

    name: str
    source: str
    options: Mapping[str, Any] = field(default_factory=dict)
    transcode: str = "gzip"
    level: int | None = None
    cache_bytes: int = 64 * 2**20
    token: str | None = None
    build: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"dataset name {self.name!r}: use letters, digits, '_', '.' and '-' (it is a URL path)")
        if self.transcode not in TRANSCODE_CODECS:
            raise ValueError(f"dataset {self.name!r}: transcode {self.transcode!r} is none of {TRANSCODE_CODECS}")
        if self.cache_bytes < 0:
            raise ValueError(f"dataset {self.name!r}: cache_bytes must be >= 0, got {self.cache_bytes}")
        from refstore._options import Options

        Options.of(**dict(self.options))  # refuses unknown option names, naming them


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """The server: its datasets and the HTTP behaviour they share.

    Attributes
    ----------
    datasets
        The datasets, each under its own name.
    host, port
        Where ``refstore serve`` listens.
    cors_origins
        Origins allowed to read cross-site (``["*"]``: any; ``[]``: no CORS headers).
    max_in_flight
        Requests answered at once; more wait in a queue.
    queue_limit
        Requests allowed to wait; past it, ``503`` with ``Retry-After``.
    retry_after
        Seconds the ``Retry-After`` header of a ``503`` asks clients to wait.
    max_range_bytes
        Largest body one request may ask for (0: no limit); larger asks get ``416``.
    cache_control
        The ``Cache-Control`` header of data and metadata answers.
    redact_urls
        Hide source URLs and paths in error messages (default True).
    rate_limit, rate_burst
        Requests a second per client address (0: no limit), in bursts of up to *rate_burst*
        (default: one second's worth); past it, ``429`` with ``Retry-After``.
    stream_bytes
        Pass-through chunks larger than this are streamed from the source in pieces of this
        size, never held whole in memory.
    """

    datasets: tuple[DatasetConfig, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    cors_origins: tuple[str, ...] = ("*",)
    max_in_flight: int = 64
    queue_limit: int = 1024
    retry_after: int = 1
    max_range_bytes: int = 0
    cache_control: str = "public, max-age=3600"
    redact_urls: bool = True
    rate_limit: float = 0
    rate_burst: int = 0
    stream_bytes: int = 8 * 2**20

    def __post_init__(self) -> None:
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset name(s) {dupes} given more than once")
        if self.rate_limit < 0 or self.rate_burst < 0 or self.stream_bytes < 1:
            raise ValueError(f"rate_limit and rate_burst must be >= 0 and stream_bytes >= 1, got "
                             f"{self.rate_limit}, {self.rate_burst}, {self.stream_bytes}")
        if self.max_in_flight < 1 or self.queue_limit < 0:
            raise ValueError(f"max_in_flight must be >= 1 and queue_limit >= 0, got {self.max_in_flight}, {self.queue_limit}")

    def replace(self, **changes: Any) -> ServerConfig:
        """A copy with *changes* applied (None values ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


_SERVER_FIELDS = {f.name for f in dataclasses.fields(ServerConfig)} - {"datasets"}
_DATASET_FIELDS = {f.name for f in dataclasses.fields(DatasetConfig)} - {"name"}


def _dataset(name: str, table: Any, where: str, base: Path | None) -> DatasetConfig:
    if isinstance(table, str):
        table = {"source": table}
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: dataset {name!r} must be a table or a source string, got {type(table).__name__}")
    unknown = set(table) - _DATASET_FIELDS
    if unknown:
        raise ValueError(f"{where}: dataset {name!r} has unknown field(s) {sorted(unknown)}; "
                         f"the fields are {sorted(_DATASET_FIELDS)}")
    if "source" not in table:
        raise ValueError(f"{where}: dataset {name!r} has no 'source'")
    source = str(table["source"])
    if base is not None and "://" not in source and not Path(source).is_absolute():
        source = str(base / source)  # relative to the config file
    return DatasetConfig(name=name, **{**dict(table), "source": source})


def load_config(path: str | Path) -> ServerConfig:
    """Read a TOML configuration (see ``spec/serve.md``).

    Raises
    ------
    ValueError
        Naming the file and the field, for unknown fields, bad values or no datasets.
    """
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from exc
    server = doc.get("server", {})
    unknown = (set(doc) - {"server", "datasets"}) | (set(server) - _SERVER_FIELDS)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; [server] takes {sorted(_SERVER_FIELDS)}")
    datasets = doc.get("datasets", {})
    if not isinstance(datasets, Mapping) or not datasets:
        raise ValueError(f"{path}: no [datasets.<name>] tables: nothing to serve")
    found = tuple(_dataset(name, table, str(path), path.parent) for name, table in datasets.items())
    if "cors_origins" in server:
        server = {**server, "cors_origins": tuple(server["cors_origins"])}
    try:
        return ServerConfig(datasets=found, **server)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def parse_dataset_args(items: Sequence[str], **common: Any) -> tuple[DatasetConfig, ...]:
    """Datasets given as ``name=source`` (or a bare source, named by its file stem).

    Raises
    ------
    ValueError
        For an invalid name, naming the argument.
    """
    out = []
    for item in items:
        name, eq, source = item.partition("=")
        if not eq or "://" in name:
            source = item
            stem = Path(source.rstrip("/").rsplit("/", 1)[-1]).name
            name = stem.split(".", 1)[0] or "data"
        out.append(DatasetConfig(name=name, source=source, **{k: v for k, v in common.items() if v is not None}))
    return tuple(out)
