"""ReferenceFileSystem: a drop-in for fsspec's ``reference://`` filesystem, sync and async."""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import os
import weakref
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import fsspec.asyn
from fsspec.asyn import AsyncFileSystem
from fsspec.dircache import DirCache
from fsspec.spec import AbstractBufferedFile

from refstore._engine import Engine
from refstore._options import Options
from refstore.errors import ReferenceNotReachable
from refstore.fetch._deadlines import run_sync
from refstore.manifest import Manifest
from refstore.manifest._mapping import ReferenceDict, put, references_of, remove

_HANDLES: weakref.WeakValueDictionary[str, Manifest] = weakref.WeakValueDictionary()
_HANDLE_KEY = "refstore_manifest_handle"


class ReferenceFileSystem(AsyncFileSystem):
    """A read-only view of a reference manifest as a filesystem.

    Accepts the constructor arguments of
    ``fsspec.implementations.reference.ReferenceFileSystem`` and behaves the
    same, with these differences: the target filesystems are managed per
    event loop, so one instance works synchronously, asynchronously and under
    zarr 3 whatever ``asynchronous`` was; ranges are merged on the async path
    too; failures of a target keep their cause; pickling and zarr's
    re-instantiation reuse the parsed manifest.

    Parameters
    ----------
    fo
        The manifest: a :class:`refstore.Manifest`, a kerchunk reference dict
        (v0 or v1), or the path/URL of JSON (optionally ``.gz``/``.zst``) or
        parquet references.
    target, target_protocol, target_options, remote_protocol, remote_options, fs, template_overrides
        As for fsspec's class (``ref_storage_args`` is an old alias of
        ``target_options``); see :class:`refstore.Options`.
    simple_templates
        Accepted for compatibility: refstore always expands templates without
        a template engine, and expands ``gen`` within budgets.
    max_gap, max_block, cache_size, max_concurrency, read_ahead, retries, url_policy, deadlines, verify
        refstore's tunables; each, with its default, is described once, in
        :class:`refstore.Options`. None keeps the default.
    options
        A :class:`refstore.Options` to start from; the arguments above are applied over it.
    **kwargs
        ``asynchronous``, ``loop`` and the other AsyncFileSystem arguments.

    Raises
    ------
    refstore.ManifestError
        If the manifest is malformed (naming the key).
    """

    protocol = ("reference", "refstore")
    root_marker = ""
    cachable = False  # tokenising a large reference dict costs more than parsing it
    mirror_sync_methods = False  # done in __init__, then re-wrapped by _keep_timeouts

    def __init__(
        self,
        fo: Any,
        target: str | None = None,
        ref_storage_args: Mapping[str, Any] | None = None,
        target_protocol: str | None = None,
        target_options: Mapping[str, Any] | None = None,
        remote_protocol: str | None = None,
        remote_options: Mapping[str, Any] | None = None,
        fs: Any = None,
        template_overrides: Mapping[str, str] | None = None,
        simple_templates: bool = True,
        max_gap: int | None = None,
        max_block: int | None = None,
        cache_size: int | None = None,
        max_concurrency: int | None = None,
        read_ahead: int | None = None,
        retries: int | None = None,
        url_policy: Any = None,
        deadlines: Any = None,
        verify: str | None = None,
        options: Options | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**{k: v for k, v in kwargs.items() if k in ("asynchronous", "loop", "batch_size")})
        fsspec.asyn.mirror_sync_methods(self)  # here, not after __init__: see _keep_timeouts
        self._keep_timeouts()
        if isinstance(fo, Mapping) and set(fo) >= {_HANDLE_KEY}:
            fo = _from_handle(fo)
        opts = Options.of(
            options,
            target=target,
            target_protocol=target_protocol,
            target_options=target_options or ref_storage_args,
            remote_protocol=remote_protocol,
            remote_options=remote_options,
            fs=fs,
            template_overrides=template_overrides,
            max_gap=max_gap,
            max_block=max_block,
            max_concurrency=max_concurrency,
            read_ahead=read_ahead,
            retries=retries,
            cache_size=cache_size,
            url_policy=url_policy,
            deadlines=deadlines,
            verify=verify,
        )
        self._engine = Engine(fo, opts, reader=kwargs.get("_reader"))
        self._fss_args = (fs, remote_options)
        self._refs: Any = None  # the dict handed out as .references, built on first use
        self._given = fo if isinstance(fo, dict) else None  # fsspec keeps its values as given
        self._given_generation = self.manifest.generation
        if isinstance(fo, MutableMapping) and not isinstance(fo, dict):
            # a mapping of the caller's own (fsspec's LazyReferenceMapper) also receives the
            # edits, as fsspec's class writes into it
            self.manifest.mirror = fo
        self.target = target
        self.max_gap = opts.max_gap
        self.max_block = opts.max_block

    def _keep_timeouts(self) -> None:
        """Re-wrap the sync methods fsspec mirrored from the async ones with :func:`run_sync`, so a
        :class:`refstore.DeadlineExceeded` reaches the caller as itself (naming key, URL and
        deadline) rather than as fsspec's bare ``FSTimeoutError``."""
        for name, attr in list(vars(self).items()):
            inner = getattr(attr, "__wrapped__", None)
            if getattr(inner, "__self__", None) is self and inspect.iscoroutinefunction(inner):
                setattr(self, name, _sync_method(self, inner))

    @property
    def loop(self) -> Any:
        """The loop the sync methods run on: fsspec's IO loop when none was given.

        The engine keeps its sessions per event loop, so an ``asynchronous=True``
        instance also answers ``ls``, ``info``, ``cat_file``, ... from plain threads,
        as fsspec's own class does.
        """
        loop = super().loop
        return fsspec.asyn.get_loop() if loop is None else loop

    # -- identity: rebuilds and pickles reuse the parsed manifest --------------------------------

    @property
    def manifest(self) -> Manifest:
        """The :class:`refstore.Manifest` this filesystem reads (edits through ``pipe`` land here)."""
        return self._engine.manifest

    @property
    def storage_args(self) -> tuple[Any, ...]:
        return ()

    @storage_args.setter
    def storage_args(self, value: tuple[Any, ...]) -> None:
        pass  # fo is reported through storage_options as the parsed Manifest

    @property
    def storage_options(self) -> dict[str, Any]:
        return {**self._storage_options, "fo": self.manifest}

    @storage_options.setter
    def storage_options(self, value: dict[str, Any]) -> None:
        drop = ("fo", "target_protocol", "target_options", "ref_storage_args", "template_overrides", "_reader")
        self._storage_options = {k: v for k, v in value.items() if k not in drop}

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # the reader travels whole (not rebuilt from the options, as fsspec's pickling does), so
        # the copies a dask worker unpickles, one per task, share its fetcher's sessions
        return (_rebuild, (type(self), self._storage_options, self._engine.reader))

    def to_dict(self, *, include_password: bool = True) -> dict[str, Any]:
        """A JSON-safe description; the manifest is passed by an in-process handle.

        zarr 3.1 re-creates filesystems from this (``to_json``/``from_json``);
        the handle lets it reuse the parsed manifest instead of parsing again.
        When the handle is gone (another process), the manifest's source URL
        is opened again.
        """
        handle = self.manifest.uid
        _HANDLES.setdefault(handle, self.manifest)
        opts = {k: v for k, v in self._storage_options.items() if k != "fs" or isinstance(v, (dict, type(None)))}
        if not include_password:
            opts.pop("password", None)
        return dict(
            cls=f"{type(self).__module__}:{type(self).__name__}",
            protocol="reference",
            args=[],
            fo={_HANDLE_KEY: handle, "source": self.manifest.source},
            **_json_safe(opts),
        )

    # -- reading ---------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        for proto in cls.protocol:
            if path.startswith(proto + "://"):
                path = path[len(proto) + 3 :]
                break
        return path.strip("/")

    async def describe(self, path: str) -> str:
        """Where the bytes of *path* come from (URL and byte span, inline, virtual); for error messages."""
        return await self._engine.describe(self._strip_protocol(path))

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        key = self._strip_protocol(path)
        data = await self._engine.get(key, start, end)
        if data is None:
            raise FileNotFoundError(key)
        return data

    async def _cat_ranges(
        self,
        paths: list[str],
        starts: list[int | None] | int | None,
        ends: list[int | None] | int | None,
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[bytes | BaseException]:
        n = len(paths)
        starts = starts if isinstance(starts, list) else [starts] * n
        ends = ends if isinstance(ends, list) else [ends] * n
        if len(starts) != n or len(ends) != n:
            raise ValueError("paths, starts and ends must have the same length")
        keys = [self._strip_protocol(p) for p in paths]
        results = _absent_as_error(keys, await self._engine.get_many(list(zip(keys, starts, ends))))
        if on_error == "raise":
            for res in results:
                if isinstance(res, BaseException):
                    raise res
        return results

    async def _cat(self, path: Any, recursive: bool = False, on_error: str = "raise", batch_size: int | None = None, **kwargs: Any) -> Any:
        """fsspec's ``cat``: the bytes of one path, or ``{path: bytes}`` for a list, a glob or
        ``recursive``. A missing path raises ``FileNotFoundError`` with ``on_error="raise"``,
        is left out with ``"omit"`` and is given as the exception otherwise, as fsspec does
        (also for a single path: then the exception is returned, not raised).
        """
        if recursive or _has_magic(path) or (isinstance(path, list) and any(map(_has_magic, path))):
            # expanded paths: directories are dropped (an extension: fsspec refuses these)
            found = await self._expand_path(path, recursive=recursive)
            keys = [p for p in found if p in self.manifest or await self._engine.exists(p)]
            as_dict = True
        else:
            keys = [self._strip_protocol(p) for p in (path if isinstance(path, list) else [path])]
            as_dict = isinstance(path, list)
        results = _absent_as_error(keys, await self._engine.get_many([(k, None, None) for k in keys]))
        if on_error == "raise":
            for res in results:
                if isinstance(res, BaseException):
                    raise res
        out = {k: r for k, r in zip(keys, results) if not (on_error == "omit" and isinstance(r, BaseException))}
        if as_dict:
            return out
        return out[keys[0]] if out else {}

    def cat(self, path: Any, recursive: bool = False, on_error: str = "raise", **kwargs: Any) -> Any:
        # the mirrored sync method is replaced so its signature matches fsspec's
        async def boxed() -> tuple[Any]:  # sync() raises an exception it is handed back; fsspec returns it
            return (await self._cat(path, recursive=recursive, on_error=on_error, **kwargs),)

        return run_sync(self.loop, boxed)[0]

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        key = self._strip_protocol(path)
        entry = self.manifest.get(key) if key else None
        if entry is not None:
            if isinstance(entry, bytes):
                size = len(entry)
            elif entry.length is not None:
                size = entry.length
            else:
                size = await self._whole_size(key)
            return {"name": key, "size": size, "type": "file"}
        if key and await self._engine.exists(key):  # a virtual array's chunk
            return {"name": key, "size": await self._engine.size(key), "type": "file"}
        if not key or await self._engine.is_dir(key):
            return {"name": key, "size": 0, "type": "directory"}
        raise FileNotFoundError(key)

    async def _whole_size(self, key: str) -> int:
        """The size of a whole-object reference's target; ``FileNotFoundError`` if it is missing,
        as fsspec's ``info`` gives (a read of it still raises ``ReferenceNotReachable``)."""
        try:
            return await self._engine.size(key)
        except ReferenceNotReachable as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise FileNotFoundError(f"{key}: the target {exc.target} does not exist") from exc
            raise

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        key = self._strip_protocol(path)
        entry = self.manifest.get(key) if key else None
        if entry is not None:
            out = [self._file_info(key, entry)]
        else:
            files, dirs = await self._engine.list_dir(key)
            if not files and not dirs and key:
                raise FileNotFoundError(key)
            base = f"{key}/" if key else ""
            out = [{"name": base + d, "size": 0, "type": "directory"} for d in dirs]
            for name in files:
                out.append(self._file_info(base + name, self.manifest.get(base + name)))
            out.sort(key=lambda e: e["name"])
        return out if detail else [e["name"] for e in out]

    @staticmethod
    def _file_info(key: str, entry: Any) -> dict[str, Any]:
        if isinstance(entry, bytes):
            size: int | None = len(entry)
        elif entry is None:
            size = None  # a virtual array's chunk: its size is known once it is assembled
        else:
            size = entry.length  # None for a whole-object reference, as in fsspec
        return {"name": key, "size": size, "type": "file"}

    async def _find(self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False, **kwargs: Any) -> Any:
        key = self._strip_protocol(path)
        base = f"{key}/" if key else ""
        out: dict[str, dict[str, Any]] = {}
        entry = self.manifest.get(key) if key else None
        if entry is not None:
            out[key] = self._file_info(key, entry)
        async for k in self._engine.keys(base):
            rel = k[len(base) :].split("/")
            if maxdepth is not None and len(rel) > maxdepth:
                continue
            out[k] = self._file_info(k, self.manifest.get(k))
            if withdirs:
                for depth in range(1, len(rel)):
                    d = base + "/".join(rel[:depth])
                    out.setdefault(d, {"name": d, "size": 0, "type": "directory"})
        if withdirs and key and out and key not in out:
            out[key] = {"name": key, "size": 0, "type": "directory"}
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    async def _get_file(self, rpath: str, lpath: str, **kwargs: Any) -> None:
        if await asyncio.to_thread(os.path.isdir, lpath):
            return
        data = await self._cat_file(rpath)
        await asyncio.to_thread(_write_local, lpath, data)

    # -- in-memory edits -------------------------------------------------------------------------

    async def _pipe_file(self, path: str, value: Any, mode: str = "overwrite", **kwargs: Any) -> None:
        """Add or replace a key: *value* is bytes, or any kerchunk value (a reference list too), as
        fsspec's class takes it."""
        key = self._strip_protocol(path)
        if mode == "create" and key in self.manifest:
            raise FileExistsError(key)
        refs = self._refs
        if isinstance(refs, ReferenceDict) and refs.generation == self.manifest.generation:
            refs[key] = value  # keeps the dict handed out earlier in step
        else:
            put(self.manifest, key, value)

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        key = self._strip_protocol(path)
        refs = self._refs
        try:
            if isinstance(refs, ReferenceDict) and refs.generation == self.manifest.generation:
                del refs[key]
            else:
                remove(self.manifest, key)
        except KeyError:
            raise FileNotFoundError(path) from None

    async def _put_file(self, lpath: str, rpath: str, mode: str = "overwrite", **kwargs: Any) -> None:
        data = await asyncio.to_thread(Path(lpath).read_bytes)
        await self._pipe_file(rpath, data, mode=mode)

    def save_json(self, url: str, **storage_options: Any) -> None:
        """Write the (possibly edited) manifest as kerchunk JSON to *url*."""
        self.manifest.save(url, storage_options=storage_options)

    @property
    def references(self) -> Any:
        """The manifest as kerchunk's live ``refs``, as fsspec gives it: a ``dict`` (for a
        manifest from a dict or JSON) whose edits (``[k] = v``, ``update``, ``del``) go into
        the manifest; for parquet references, a mapping writing through fsspec's
        ``LazyReferenceMapper`` (``fs.references.flush()`` writes the edits to the directory).
        Building the dict costs what fsspec's class spends at open; it is built on first use.
        """
        unedited = self._given is not None and self.manifest.generation == self._given_generation
        self._refs = references_of(self.manifest, self._given if unedited else None, self._refs)
        return self._refs

    @property
    def fss(self) -> dict[str | None, Any]:
        """fsspec's ``fss``: a filesystem per protocol the manifest names, and ``None`` for URLs
        that name none, made as fsspec's class makes them (the instances given as ``fs``, sync
        ones wrapped to be async as fsspec wraps them).

        For code that reads targets itself; refstore's own reads do not go through these
        (they use its fetcher, under the URL policy).
        """
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

        fs, remote_options = self._fss_args
        reader = self._engine.reader
        if isinstance(fs, Mapping):
            out: dict[str | None, Any] = {
                k: fsspec.filesystem(k.split(":", 1)[0], **v) if isinstance(v, Mapping) else v
                for k, v in fs.items()
            }
            out.setdefault(None, fsspec.filesystem("file"))
            return out
        out = {}
        default = reader._default
        for proto in {*reader._protocols_in_manifest(), default} - {"file"}:
            out[proto] = fs if fs is not None and proto in _protocol_names(fs) else fsspec.filesystem(
                proto, **reader.fetcher.options.get(proto, dict(remote_options or {})))
        out[None] = fs if fs is not None else out.get(default) or fsspec.filesystem("file")
        return {k: v if v.async_impl else AsyncFileSystemWrapper(v) for k, v in out.items()}

    def _dircache_from_items(self) -> None:
        """fsspec's hook to rebuild its listing cache after ``references`` changed (kerchunk's
        MultiZarrToZarr calls it): refstore lists from the manifest itself, so this only resets
        ``dircache``."""
        self.dircache = DirCache()

    def _open(self, path: str, mode: str = "rb", block_size: int | None = None, cache_options: Any = None, **kwargs: Any) -> Any:
        if mode != "rb":
            raise NotImplementedError("ReferenceFileSystem is read-only; edit with pipe()")
        key = self._strip_protocol(path)
        entry = self.manifest.get(key)
        if entry is None:
            raise FileNotFoundError(key)
        if isinstance(entry, bytes):
            return io.BytesIO(entry)
        return _ReferenceFile(self, key, block_size=block_size or 5 * 2**20, cache_options=cache_options, **kwargs)

    def __repr__(self) -> str:
        return f"<refstore.ReferenceFileSystem {self.manifest!r}>"


class _ReferenceFile(AbstractBufferedFile):
    """A read-only file over one reference, reading ranges on demand."""

    def __init__(self, fs: ReferenceFileSystem, path: str, **kwargs: Any) -> None:
        super().__init__(fs, path, mode="rb", **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.fs.cat_file(self.path, start=start, end=end)


def _protocol_names(fs: Any) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


def _sync_method(fs: ReferenceFileSystem, coro: Any) -> Any:
    """The blocking form of the bound coroutine method *coro*, run on ``fs.loop`` by :func:`run_sync`."""

    @functools.wraps(coro)
    def method(*args: Any, **kwargs: Any) -> Any:
        return run_sync(fs.loop, coro, *args, **kwargs)

    return method


def _json_safe(obj: Any) -> Any:
    """*obj* with mappings and sequences converted as fsspec's JSON encoder converts them, and
    None kept (fsspec's ``make_serializable`` refuses None, e.g. in a URL policy's description)."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in obj]
    from fsspec.json import FilesystemJSONEncoder

    return FilesystemJSONEncoder().default(obj)


def _has_magic(path: Any) -> bool:
    return isinstance(path, str) and any(c in path for c in "*?[")


def _rebuild(cls: type[ReferenceFileSystem], options: Mapping[str, Any], reader: Any) -> ReferenceFileSystem:
    """A pickled filesystem: its reader (manifest, policy, fetcher) with its options."""
    return cls(reader.manifest, _reader=reader, **options)


def _from_handle(fo: Mapping[str, Any]) -> Any:
    manifest = _HANDLES.get(fo[_HANDLE_KEY])
    if manifest is not None:
        return manifest
    if fo.get("source"):
        return fo["source"]
    raise ValueError(
        "this ReferenceFileSystem description refers to an in-memory manifest of another "
        "process; pickle the filesystem instead of serialising it to JSON"
    )


def _write_local(lpath: str, data: bytes) -> None:
    """Write *data* to the local file *lpath*, making its folder."""
    parent = os.path.dirname(lpath)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(lpath, "wb") as f:
        f.write(data)


def _absent_as_error(keys: list[str], results: list[bytes | BaseException | None]) -> list[bytes | BaseException]:
    """fsspec's answer for a key that holds nothing: ``FileNotFoundError`` naming it."""
    return [FileNotFoundError(k) if r is None else r for k, r in zip(keys, results)]
