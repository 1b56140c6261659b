"""One served dataset: its source opened once (an engine, or a plain zarr store), its hierarchy
translated to both zarr formats, and each requested key resolved to what answers it."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from refstore._engine import METADATA_NAMES, Engine
from refstore._options import Options
from refstore.serve._config import DatasetConfig
from refstore.serve._metadata import (
    ServedArray,
    ServedGroup,
    consolidated,
    translate_array,
    translate_group,
)
from refstore.serve._transcode import ChunkCache, transcode_chunk
from refstore.virtual._spec import DEFINITION_NAME
from refstore.virtual._store import SOURCES_DIR

__all__ = ["ETAGS_KEPT", "Chunk", "Document", "ServedDataset"]

#: ETags of chunks remembered per dataset (oldest forgotten first); also the number of parsed chunk keys kept.
ETAGS_KEPT = 100_000
#: Stored chunks up to this size are read from a local file on the event loop's thread (as the
#: engine's local reads of this size are: a page-cache read costs less than the hop to a thread).
INLINE_READ_BYTES = 256 * 1024


@dataclass(frozen=True)
class Document:
    """A metadata document: JSON bytes, their gzip, and their ETag."""

    body: bytes
    etag: str
    gzipped: bytes | None


@dataclass(frozen=True)
class Chunk:
    """A chunk key of a served array, and where its bytes come from."""

    array: ServedArray
    coords: tuple[int, ...]
    source_key: str


def _document(doc: Any) -> Document:
    body = json.dumps(doc, indent=2, allow_nan=False).encode()
    etag = '"' + hashlib.sha1(body).hexdigest()[:20] + '"'
    return Document(body, etag, gzip.compress(body, 6, mtime=0) if len(body) > 512 else None)


class _StoreSource:
    """A plain zarr store (a local folder) read through zarr's ``LocalStore``: the engine's calls."""

    def __init__(self, root: str) -> None:
        from zarr.storage import LocalStore

        self.root = root
        self.store = LocalStore(root, read_only=True)

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype

        from refstore._engine import to_request

        buf = await self.store.get(key, default_buffer_prototype(), to_request(start, end))
        return None if buf is None else buf.to_bytes()

    async def size(self, key: str) -> int:
        return await self.store.getsize(key)

    async def describe(self, key: str) -> str:
        path = os.path.join(self.root, key)
        try:
            st = os.stat(path)
        except OSError:
            return "no entry"
        return f"{path} {st.st_size} {st.st_mtime_ns}"

    def metadata_keys(self) -> Iterator[str]:
        for folder, _dirs, files in os.walk(self.root):
            rel = os.path.relpath(folder, self.root).replace(os.sep, "/")
            for name in files:
                if name in METADATA_NAMES:
                    yield name if rel == "." else f"{rel}/{name}"


def _is_zarr_folder(path: str) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, n)) for n in ("zarr.json", ".zgroup", ".zarray"))


def open_source(config: DatasetConfig) -> Any:
    """The engine (or plain store) a dataset's ``source`` names; a ``.dzi`` is built into a manifest here."""
    source = config.source
    options = Options.of(**dict(config.options))
    if "://" not in source and _is_zarr_folder(source):
        return _StoreSource(source)
    if source.lower().endswith(".dzi"):
        from refstore.build import dzi

        return Engine(dzi(source, **{"show_progress": False, **dict(config.build)}), options)
    return Engine(source, options)


def _identity(source: str) -> tuple[str, float | None]:
    """A tag that changes when a local source file does, and its modification time."""
    try:
        st = os.stat(source)
    except OSError:
        return source, None
    return f"{source}|{st.st_size}|{st.st_mtime_ns}", st.st_mtime


class ServedDataset:
    """A dataset as the server sees it.

    Parameters
    ----------
    config
        What to serve and how (:class:`~refstore.serve.DatasetConfig`).
    """

    def __init__(self, config: DatasetConfig) -> None:
        self.config = config
        self.name = config.name
        try:
            self.source = open_source(config)
        except Exception as exc:
            exc.add_note(f"while opening dataset {config.name!r} (source {config.source!r})")
            raise
        tag, self.last_modified = _identity(config.source)
        self.tag = hashlib.sha1(f"{tag}|{config.transcode}|{config.level}".encode()).hexdigest()[:12]
        self.cache = ChunkCache(config.cache_bytes)
        self.nodes: dict[str, ServedArray | ServedGroup] = {}
        self.documents: dict[str, Document] = {}
        self._loaded: asyncio.Task[None] | None = None
        self._etags: dict[str, str] = {}
        self._chunks: dict[str, Chunk] = {}
        #: True once the hierarchy is read (:meth:`load`).
        self.ready = False

    async def load(self) -> None:
        """Read and translate the hierarchy (once; concurrent callers share it)."""
        if self._loaded is None or self._loaded.get_loop() is not asyncio.get_running_loop():
            self._loaded = asyncio.get_running_loop().create_task(self._load())
        await asyncio.shield(self._loaded)

    async def _load(self) -> None:
        by_node: dict[str, dict[str, bytes]] = {}
        for key in self.source.metadata_keys():
            path, _, name = key.rpartition("/")
            if SOURCES_DIR in key.split("/") or name == ".zmetadata":
                continue  # a virtual array's embedded sources are its own business
            data = await self.source.get(key)
            if data is not None:
                by_node.setdefault(path, {})[name] = data
        virtual = getattr(self.source, "virtual", None)
        assembled = set(await virtual.prefixes()) if virtual is not None else set()
        nodes: dict[str, ServedArray | ServedGroup] = {}
        for path, docs in by_node.items():
            if ".zarray" in docs or _node_type(docs) == "array":
                nodes[path] = translate_array(path, docs, self.config.transcode, self.config.level,
                                              assembled=path in assembled)
            elif ".zgroup" in docs or _node_type(docs) == "group":
                nodes[path] = translate_group(path, docs)
        for path in list(nodes):
            parts = path.split("/") if path else []
            for cut in range(len(parts)):
                parent = "/".join(parts[:cut])
                if parent not in nodes:
                    nodes[parent] = ServedGroup(parent, {})  # an implicit group
        if not nodes:
            nodes[""] = ServedGroup("", {})
        self.nodes = dict(sorted(nodes.items()))
        documents: dict[str, Document] = {}
        for path, node in self.nodes.items():
            base = f"{path}/" if path else ""
            for name, doc in node.docs().items():
                documents[base + name] = _document(doc)
        root = self.nodes.get("")
        if isinstance(root, ServedGroup):
            zmetadata, inline = consolidated(self.nodes)
            documents[".zmetadata"] = _document(zmetadata)
            documents["zarr.json"] = _document({**root.docs()["zarr.json"], "consolidated_metadata": inline})
        self.documents = documents
        self._chunks = {}
        self.ready = True

    def document(self, key: str) -> Document | None:
        """The metadata document served at *key*, if it is one."""
        return self.documents.get(key)

    def chunk(self, key: str) -> Chunk | None:
        """The chunk that served key *key* names, if it names one (the last :data:`ETAGS_KEPT` found
        remembered; keys naming none are not, so requests for made-up keys cannot fill memory)."""
        memo = self._chunks
        found = memo.get(key)
        if found is not None:
            return found
        found = self._parse_chunk(key)
        if found is not None and len(key) <= 256:
            if len(memo) >= ETAGS_KEPT:
                memo.pop(next(iter(memo)))
            memo[key] = found
        return found

    def _parse_chunk(self, key: str) -> Chunk | None:
        parts = key.split("/")
        if parts[-1] in METADATA_NAMES or parts[-1] == DEFINITION_NAME:
            return None
        for cut in range(len(parts) - 1, -1, -1):
            node = self.nodes.get("/".join(parts[:cut]))
            if isinstance(node, ServedArray):
                coords = node.parse("/".join(parts[cut:]))
                if coords is None or any(c * n >= s for c, n, s in zip(coords, node.chunks, node.shape)):
                    return None
                base = f"{node.path}/" if node.path else ""
                return Chunk(node, coords, base + node.source_key(coords))
        return None

    async def etag(self, chunk: Chunk) -> str:
        """An ETag of a chunk that needs no read: where its bytes come from, hashed (remembered
        for the last :data:`ETAGS_KEPT` chunks asked for)."""
        tags = self._etags
        found = tags.get(chunk.source_key)
        if found is not None:
            return found
        where = await self.source.describe(chunk.source_key)
        digest = hashlib.sha1(f"{self.tag}|{chunk.source_key}|{where}".encode()).hexdigest()[:20]
        if len(tags) >= ETAGS_KEPT:
            tags.pop(next(iter(tags)))
        tags[chunk.source_key] = found = f'"{digest}"'
        return found

    def known_etag(self, chunk: Chunk) -> str | None:
        """The chunk's ETag if :meth:`etag` has already worked it out (no await)."""
        return self._etags.get(chunk.source_key)

    def reads_inline(self, chunk: Chunk) -> bool:
        """Whether :meth:`read_inline` may read *chunk*: a small chunk of an engine whose references
        are all local files (no thread hop, no virtual array)."""
        source = self.source
        return (isinstance(source, Engine) and chunk.array.max_chunk_bytes <= INLINE_READ_BYTES
                and source.reads_in_thread())

    def read_inline(self, chunk: Chunk) -> bytes | None:
        """The whole stored bytes of a pass-through chunk read now, in this thread, through the
        hot-chunk cache (only where :meth:`reads_inline`); None if the source holds none."""
        data = self.cache.peek(chunk.source_key)
        if data is None:
            data = self.source.get_sync(chunk.source_key)
            self.cache.put(chunk.source_key, data)
        return data

    async def passed_through(self, chunk: Chunk) -> bytes | None:
        """The whole stored bytes of a pass-through chunk (through the hot-chunk cache); None if absent."""
        return await self.cache.get(chunk.source_key, lambda: self.source.get(chunk.source_key))

    async def transcoded(self, chunk: Chunk) -> bytes | None:
        """The chunk's served bytes when it is transcoded (cached), None if the source has no such chunk."""

        async def compute() -> bytes | None:
            data = await self.source.get(chunk.source_key)
            return None if data is None else await transcode_chunk(chunk.array, chunk.coords, data)

        return await self.cache.get(chunk.source_key, compute)

    def listing(self) -> dict[str, Any]:
        """The JSON listing of every group and array."""
        out = []
        for path, node in self.nodes.items():
            if isinstance(node, ServedArray):
                out.append(node.describe())
            else:
                out.append({"path": path, "node_type": "group", "attributes": node.attributes})
        return {"dataset": self.name, "nodes": out}


def _node_type(docs: dict[str, bytes]) -> str | None:
    if "zarr.json" not in docs:
        return None
    try:
        return str(json.loads(docs["zarr.json"]).get("node_type"))
    except ValueError:
        return None
