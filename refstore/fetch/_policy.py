"""The URL policy: which protocols and URL prefixes a manifest's references may reach."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

from refstore.errors import URLNotAllowed

LOCAL_PROTOCOLS = frozenset({"file", "local"})
_ALIASES = {"local": "file", "gcs": "gs", "s3a": "s3"}


def split_url(url: str) -> tuple[str, str]:
    """Split *url* into ``(protocol, rest)``, with aliases merged (``gcs`` is ``gs``,
    ``s3a`` is ``s3``, ``local`` is ``file``); a bare path is ``("file", path)``."""
    if "://" in url:
        protocol, rest = url.split("://", 1)
        protocol = protocol.lower()
        return _ALIASES.get(protocol, protocol), rest
    return "file", url


def normalize(url: str) -> str:
    """A canonical form for prefix checks: protocol aliases merged, ``.``/``..`` resolved.

    Local paths become absolute ``file://`` URLs; a remote URL keeps its host
    and gets a normalized path, so ``s3://b/data/../secret`` cannot pass as
    ``s3://b/data/``.
    """
    protocol, rest = split_url(url)
    if protocol == "file":
        path = os.path.abspath(os.path.expanduser(rest)) if rest else os.getcwd()
        return "file://" + path.replace(os.sep, "/")
    host, _, path = rest.partition("/")
    path = path.split("?", 1)[0].split("#", 1)[0]
    norm = posixpath.normpath("/" + path) if path else "/"
    if path.endswith("/") and norm != "/":
        norm += "/"
    return f"{protocol}://{host.lower()}{norm}"


@dataclass(frozen=True)
class URLPolicy:
    """Which references a manifest may follow.

    Parameters
    ----------
    protocols
        Allowed protocols (``"file"``, ``"http"``, ``"https"``, ``"s3"``,
        ``"gs"``, ...); None allows any.
    prefixes
        If given, a URL must start with one of these (compared after
        :func:`normalize`, on path-segment boundaries).
    allow_local
        Whether local files may be read at all.

    Notes
    -----
    :meth:`for_manifest` gives the default: everything for a manifest built
    in memory or read from a local file, everything but local files for a
    manifest read from a remote URL.
    """

    protocols: frozenset[str] | None = None
    prefixes: tuple[str, ...] | None = None
    allow_local: bool = True
    _normalized_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.protocols is not None:
            object.__setattr__(
                self, "protocols", frozenset(_ALIASES.get(p, p) for p in self.protocols)
            )
        if self.prefixes is not None:
            prefixes = (self.prefixes,) if isinstance(self.prefixes, str) else tuple(self.prefixes)
            object.__setattr__(self, "prefixes", prefixes)
            object.__setattr__(self, "_normalized_prefixes", tuple(normalize(p) for p in prefixes))
        else:
            object.__setattr__(self, "_normalized_prefixes", ())

    @classmethod
    def allow(
        cls, *prefixes: str, protocols: Iterable[str] | None = None, allow_local: bool = True
    ) -> URLPolicy:
        """A policy allowing only URLs under *prefixes* (and, optionally, *protocols*)."""
        return cls(
            protocols=frozenset(protocols) if protocols is not None else None,
            prefixes=prefixes or None,
            allow_local=allow_local,
        )

    @classmethod
    def for_manifest(cls, source_is_remote: bool) -> URLPolicy:
        """The default policy: a manifest read from a remote URL cannot reach local files."""
        return cls(allow_local=not source_is_remote)

    def check(self, url: str, key: str | None = None) -> None:
        """Raise :class:`URLNotAllowed` unless *url* is allowed.

        Parameters
        ----------
        url
            The resolved URL (a bare path means a local file).
        key
            The manifest key, named in the error.
        """
        protocol = split_url(url)[0]
        if protocol == "file" and not self.allow_local:
            raise URLNotAllowed(url, "the manifest came from a remote URL and may not read local files", key)
        if self.protocols is not None and protocol not in self.protocols:
            raise URLNotAllowed(url, f"protocol {protocol!r} is not in {sorted(self.protocols)}", key)
        if self._normalized_prefixes:
            norm = normalize(url)
            for prefix in self._normalized_prefixes:
                if norm == prefix.rstrip("/") or norm.startswith(prefix if prefix.endswith("/") else prefix + "/"):
                    return
            raise URLNotAllowed(url, f"it is not under any allowed prefix {list(self.prefixes or ())}", key)
