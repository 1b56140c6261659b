"""``Options``: every tunable of opening and reading a manifest, with its default, in one place.

The faces (:class:`refstore.ReferenceFileSystem`, :class:`refstore.ReferenceStore`,
and a server) take these as keyword arguments and hand one :class:`Options` to the
:class:`~refstore._engine.Engine`, which gives each layer the fields it uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from refstore.fetch._fetcher import DEFAULT_MAX_BLOCK, DEFAULT_MAX_GAP, DEFAULT_READ_AHEAD
from refstore.fetch._identity import DEFAULT_VERIFY
from refstore.virtual._cache import DEFAULT_CACHE_BYTES

__all__ = ["Options"]


@dataclass(frozen=True, kw_only=True)
class Options:
    """How to open a manifest and read its references.

    Attributes
    ----------
    target
        URL for references whose URL is null.
    target_protocol, target_options
        How to read the manifest itself when it is given as a path or URL.
    remote_protocol, remote_options
        Protocol for reference URLs that name none, and the storage options of
        the remote filesystems (with no ``remote_protocol``, every protocol found
        in the manifest gets ``remote_options``).
    fs
        A filesystem instance, or a dict ``{protocol: instance or options}``, to
        read targets with.
    template_overrides
        Templates replacing or adding to a version 1 manifest's ``templates``.
    max_gap, max_block
        Range merging: the largest gap read through to join two ranges of one URL
        (negative disables merging and read-ahead), and the largest merged read.
    max_concurrency
        Reads in flight per event loop.
    read_ahead
        Largest read-ahead window (bytes) when a remote object is read in order (0: off).
    retries
        Attempts after the first for a transient failure; overrides
        ``deadlines.attempts`` when given.
    cache_size
        Parquet partitions kept in memory.
    url_policy
        A :class:`refstore.URLPolicy` (or its JSON description); by default the
        caller's own manifest may name any protocol, and one read from a remote URL
        only the default protocols and no local files.
    deadlines
        A :class:`refstore.Deadlines` (or a dict of its fields): connect, first byte,
        total, attempts and backoff of remote reads.
    verify
        How reads are held to what the manifest recorded of each source
        (``refstore:sources``: size, ETag, mtime, SHA-256). ``"cheap"`` checks size,
        ETag and mtime without an extra request per chunk (conditional requests, the
        answers' own headers, a ``stat`` of local files) and reopens a local file
        replaced since it was opened; ``"full"`` also hashes each whole source once
        per open; ``"off"`` checks nothing. A changed source raises
        :class:`refstore.SourceChanged`.
    decoded_cache_bytes
        Budget of decoded source chunks shared by assembled virtual-array chunks.
    """

    target: str | None = None
    target_protocol: str | None = None
    target_options: Mapping[str, Any] | None = None
    remote_protocol: str | None = None
    remote_options: Mapping[str, Any] | None = None
    fs: Any = None
    template_overrides: Mapping[str, str] | None = None
    max_gap: int = DEFAULT_MAX_GAP
    max_block: int = DEFAULT_MAX_BLOCK
    max_concurrency: int = 64
    read_ahead: int = DEFAULT_READ_AHEAD
    retries: int | None = None
    cache_size: int = 128
    url_policy: Any = None
    deadlines: Any = None
    verify: str = DEFAULT_VERIFY
    decoded_cache_bytes: int = DEFAULT_CACHE_BYTES

    @classmethod
    def of(cls, options: Options | None = None, /, **kwargs: Any) -> Options:
        """*options* (default: all defaults) with the given keyword arguments applied.

        A keyword given as None keeps the default (faces pass their whole signature).

        Raises
        ------
        TypeError
            For a keyword that is not an option, naming it and the options there are.
        """
        base = options if options is not None else cls()
        unknown = set(kwargs) - _NAMES
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; the options are {sorted(_NAMES)}")
        given = {k: v for k, v in kwargs.items() if v is not None}
        return dataclasses.replace(base, **given) if given else base

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments (e.g. to open a virtual array's other manifests)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


_NAMES = frozenset(f.name for f in dataclasses.fields(Options))
