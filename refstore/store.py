"""ReferenceStore: a native zarr 3 store over a reference manifest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from refstore._engine import Engine, EngineStore, to_range
from refstore._options import Options
from refstore.errors import KeyNotInManifest

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype


class ReferenceStore(EngineStore):
    """A zarr 3 store whose keys are the entries of a reference manifest.

    Parameters
    ----------
    fo
        The manifest: a :class:`refstore.Manifest`, a kerchunk reference dict,
        or a path/URL of JSON or parquet references.
    read_only
        True (the default) refuses writes. With False, ``set`` and ``delete``
        edit the manifest in memory (the targets are never written); save the
        result with ``store.manifest.save(...)``.
    options
        A :class:`refstore.Options` holding every tunable (defaults where not given).
    **kwargs
        Options one by one, applied over *options*: ``target``, ``target_protocol``,
        ``target_options``, ``remote_protocol``, ``remote_options``, ``fs``,
        ``template_overrides``, ``max_gap``, ``max_block``, ``max_concurrency``,
        ``read_ahead``, ``retries``, ``cache_size``, ``url_policy``, ``deadlines``,
        ``verify``, ``decoded_cache_bytes`` (see :class:`refstore.Options` for each and its default).

    Notes
    -----
    A key the manifest lacks reads as None (zarr fills it). A key whose
    target cannot be read raises :class:`refstore.ReferenceNotReachable`, and
    a URL outside the policy raises :class:`refstore.URLNotAllowed`: a broken
    dataset never reads as fill values.
    """

    supports_writes = True
    supports_deletes = True
    supports_listing = True

    def __init__(self, fo: Any, *, read_only: bool = True, options: Options | None = None, **kwargs: Any) -> None:
        engine = kwargs.pop("_engine", None) or Engine(fo, options, **kwargs)
        super().__init__(engine, read_only=read_only)

    def with_read_only(self, read_only: bool = False) -> ReferenceStore:
        # docstring inherited
        return type(self)(self.manifest, read_only=read_only, _engine=self.engine)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ReferenceStore)
            and self.read_only == other.read_only
            and (other.manifest is self.manifest or dict(other.manifest.items()) == dict(self.manifest.items()))
        )

    def __repr__(self) -> str:
        return f"ReferenceStore({self.manifest!r}, read_only={self.read_only})"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_is_open"] = False
        return state

    # -- reads --------------------------------------------------------------------------------

    def get_sync(
        self, key: str, *, prototype: BufferPrototype | None = None, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """:meth:`get` without an event loop (zarr's ``SupportsGetSync``), for threads.

        Local targets are read in the calling thread; remote targets and virtual
        arrays are read on fsspec's IO loop (so not from that loop's thread).

        Returns
        -------
        Buffer or None
            The bytes, or None for a key the manifest lacks (zarr fills it).

        Raises
        ------
        ReferenceNotReachable
            If the target cannot be read (missing file, HTTP error, fewer bytes
            than the reference promises); the cause is chained.
        URLNotAllowed
            If the reference's URL is outside the URL policy.
        """
        self._is_open = True  # opening a ReferenceStore has nothing to wait for
        data = self.engine.get_sync(key, *to_range(byte_range))
        return None if data is None else (prototype or _default_prototype()).buffer.from_bytes(data)

    @property
    def _supports_sync_io(self) -> bool:
        """Whether zarr should read this store through :meth:`get_sync` in its worker threads.

        True when every reference targets a local file and there are no virtual
        arrays: then a sync read costs no thread hop, and
        :class:`refstore.pipeline.ThreadedCodecPipeline` (zarr's
        ``FusedCodecPipeline``) fetches and decodes each chunk in one worker
        thread. Remote reads stay on the async path, where many requests are in
        flight at once rather than one per worker thread.
        """
        return self.engine.reads_in_thread()

    # -- in-memory edits ----------------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        self.set_sync(key, value)

    def set_sync(self, key: str, value: Buffer) -> None:
        """:meth:`set` without an event loop (zarr's ``SupportsSetSync``)."""
        self._check_writable()
        if not isinstance(value, _buffer_type()):
            raise TypeError(f"ReferenceStore.set(): `value` must be a Buffer instance. Got an instance of {type(value)} instead.")
        self.manifest.set(key, value.to_bytes())
        self.engine.refresh()

    async def delete(self, key: str) -> None:
        # docstring inherited
        self.delete_sync(key)

    def delete_sync(self, key: str) -> None:
        """:meth:`delete` without an event loop (zarr's ``SupportsDeleteSync``)."""
        self._check_writable()
        try:
            self.manifest.delete(key)
        except KeyNotInManifest:
            pass

    def close(self) -> None:
        """Close the store and the fetcher's sessions and files (reopened by the next read)."""
        self.engine.close_all()
        super().close()


def _buffer_type() -> type:
    from zarr.core.buffer import Buffer

    return Buffer


def _default_prototype() -> BufferPrototype:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()
