"""The URL policy: which protocols and URL prefixes a manifest's references may reach.

Protocols are allow-listed (:data:`DEFAULT_PROTOCOLS` unless told otherwise).
Every URL is compared in the form it will be used in: HTTP(S) URLs in the
canonical form the HTTP target sends (:mod:`._urls`), local paths after
resolving symbolic links, other URLs with ``.``/``..`` resolved. A policy is
also a read-only mapping of its JSON description (:meth:`URLPolicy.to_dict`),
so fsspec's ``to_json()`` of a filesystem holding one works, and
:meth:`URLPolicy.from_dict` reads it back.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from refstore.errors import URLNotAllowed
from refstore.fetch._urls import HTTP_SCHEMES, canonical_http, refuse_unreadable

LOCAL_PROTOCOLS = frozenset({"file", "local"})
_ALIASES = {"local": "file", "gcs": "gs", "s3a": "s3"}
#: Protocols a policy allows unless given others: local files, HTTP(S) and the object stores.
#: Anything else (``memory``, ``ftp``, ``hf``, chained URLs, ...) must be allowed explicitly.
DEFAULT_PROTOCOLS = frozenset({"file", "http", "https", "s3", "gs", "az", "abfs", "abfss", "adl"})
_JSON_TAG = "refstore_url_policy"


def split_url(url: str) -> tuple[str, str]:
    """Split *url* into ``(protocol, rest)``, with aliases merged (``gcs`` is ``gs``,
    ``s3a`` is ``s3``, ``local`` is ``file``); a bare path is ``("file", path)``."""
    if "://" in url:
        protocol, rest = url.split("://", 1)
        protocol = protocol.lower()
        return _ALIASES.get(protocol, protocol), rest
    return "file", url


def normalize(url: str) -> str:
    """The form in which *url* is compared with the policy's prefixes.

    Local paths become absolute ``file://`` URLs with symbolic links resolved
    (so a link inside an allowed directory cannot lead out of it); HTTP(S)
    URLs take their canonical form (:func:`~refstore.fetch._urls.canonical_http`)
    without the query; other URLs keep their host, lowercased, and get a
    normalized path, so ``s3://b/data/../secret`` cannot pass as ``s3://b/data/``.

    Raises
    ------
    URLNotAllowed
        For a URL with no single reading (control characters, an HTTP URL
        hiding ``..`` behind escapes, ...).
    """
    refuse_unreadable(url)
    protocol, rest = split_url(url)
    if protocol == "file":
        path = os.path.realpath(os.path.expanduser(rest)) if rest else os.getcwd()
        return "file://" + path.replace(os.sep, "/")
    if protocol in HTTP_SCHEMES:
        return canonical_http(f"{protocol}://{rest}").partition("?")[0]
    host, _, path = rest.partition("/")
    path = path.split("?", 1)[0].split("#", 1)[0]
    norm = posixpath.normpath("/" + path) if path else "/"
    if norm.startswith("//"):  # (normpath keeps a leading "//")
        norm = "/" + norm.lstrip("/")
    if path.endswith("/") and norm != "/":
        norm += "/"
    return f"{protocol}://{host.lower()}{norm}"


@dataclass(frozen=True)
class URLPolicy(Mapping[str, Any]):
    """Which references a manifest may follow.

    Parameters
    ----------
    protocols
        Allowed protocols (``"file"``, ``"http"``, ``"https"``, ``"s3"``,
        ``"gs"``, ...). The default is :data:`DEFAULT_PROTOCOLS`; None allows
        any protocol (an explicit opt-out).
    prefixes
        If given, a URL must start with one of these (compared after
        :func:`normalize`, on path-segment boundaries).
    allow_local
        Whether local files may be read at all.

    Notes
    -----
    :meth:`for_manifest` gives the default. A manifest built in memory or read
    from a local file (or ``memory://``) is the caller's own: it may name any
    protocol, as with fsspec's class (it can read local files already, the most
    sensitive target there is). A manifest read from a remote URL is a
    stranger's: only :data:`DEFAULT_PROTOCOLS` and no local files. The policy
    checks every URL as it will be sent, and every redirect hop of an HTTP read
    (redirects never leave HTTP).
    """

    protocols: frozenset[str] | None = DEFAULT_PROTOCOLS
    prefixes: tuple[str, ...] | None = None
    allow_local: bool = True
    _normalized_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.protocols is not None:
            protocols = (self.protocols,) if isinstance(self.protocols, str) else self.protocols
            object.__setattr__(self, "protocols", frozenset(_ALIASES.get(p, p) for p in protocols))
        if self.prefixes is not None:
            prefixes = (self.prefixes,) if isinstance(self.prefixes, str) else tuple(self.prefixes)
            object.__setattr__(self, "prefixes", prefixes)
            try:
                normalized = tuple(normalize(p) for p in prefixes)
            except URLNotAllowed as exc:
                raise ValueError(f"URL policy prefix {exc.url!r} is not a usable URL: {exc.reason}") from None
            object.__setattr__(self, "_normalized_prefixes", normalized)
        else:
            object.__setattr__(self, "_normalized_prefixes", ())

    @classmethod
    def allow(
        cls, *prefixes: str, protocols: Iterable[str] | str | None = "default", allow_local: bool = True
    ) -> URLPolicy:
        """A policy allowing only URLs under *prefixes*.

        Parameters
        ----------
        protocols
            By default :data:`DEFAULT_PROTOCOLS` plus the protocols the
            prefixes name (naming ``memory://x/`` allows ``memory``); None
            allows any; otherwise exactly these.
        """
        if isinstance(protocols, str) and protocols == "default":
            allowed: frozenset[str] | None = DEFAULT_PROTOCOLS | {split_url(p)[0] for p in prefixes}
        else:
            allowed = None if protocols is None else frozenset([protocols] if isinstance(protocols, str) else protocols)
        return cls(protocols=allowed, prefixes=prefixes or None, allow_local=allow_local)

    @classmethod
    def for_manifest(cls, source_is_remote: bool) -> URLPolicy:
        """The default policy: any protocol for the caller's own manifest; for one read from a
        remote URL, :data:`DEFAULT_PROTOCOLS` and no local files."""
        return cls(allow_local=False) if source_is_remote else cls(protocols=None)

    # -- JSON ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe description; :meth:`from_dict` builds the same policy from it."""
        return {
            _JSON_TAG: 1,
            "protocols": None if self.protocols is None else sorted(self.protocols),
            "prefixes": None if self.prefixes is None else list(self.prefixes),
            "allow_local": self.allow_local,
        }

    @classmethod
    def from_dict(cls, description: Mapping[str, Any]) -> URLPolicy:
        """The policy a :meth:`to_dict` description (or a policy) stands for.

        Raises
        ------
        ValueError
            If *description* is not one.
        """
        if isinstance(description, URLPolicy):
            return description
        if not isinstance(description, Mapping) or description.get(_JSON_TAG) != 1:
            raise ValueError(f"not a URL policy description: {description!r}")
        unknown = set(description) - {_JSON_TAG, "protocols", "prefixes", "allow_local"}
        if unknown:
            raise ValueError(f"URL policy description has unknown fields {sorted(unknown)}")
        protocols, prefixes = description.get("protocols"), description.get("prefixes")
        return cls(
            protocols=None if protocols is None else frozenset(protocols),
            prefixes=None if prefixes is None else tuple(prefixes),
            allow_local=bool(description.get("allow_local", True)),
        )

    @classmethod
    def coerce(cls, policy: URLPolicy | Mapping[str, Any] | None) -> URLPolicy | None:
        """*policy* as a :class:`URLPolicy`: a policy as is, a description read back, None as None."""
        return None if policy is None else cls.from_dict(policy)

    def __getitem__(self, name: str) -> Any:
        return self.to_dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return 4

    # -- checking -------------------------------------------------------------------------

    def check(self, url: str, key: str | None = None) -> None:
        """Raise :class:`URLNotAllowed` unless *url* is allowed.

        Parameters
        ----------
        url
            The resolved URL (a bare path means a local file).
        key
            The manifest key, named in the error.
        """
        try:
            self._check(url)
        except URLNotAllowed as exc:
            if key is None or exc.key is not None:
                raise
            raise URLNotAllowed(exc.url, exc.reason, key) from None

    def _check(self, url: str) -> None:
        protocol = split_url(url)[0]
        if protocol == "file" and not self.allow_local:
            raise URLNotAllowed(url, "the manifest came from a remote URL and may not read local files")
        if self.protocols is not None and protocol not in self.protocols:
            raise URLNotAllowed(
                url, f"protocol {protocol!r} is not in {sorted(self.protocols)}; allow it with "
                "URLPolicy(protocols=...)"
            )
        refuse_unreadable(url)
        if protocol in HTTP_SCHEMES:
            canonical_http(url)  # refuses an HTTP URL with no single reading, prefixes or not
        if self._normalized_prefixes:
            norm = normalize(url)
            for prefix in self._normalized_prefixes:
                if norm == prefix.rstrip("/") or norm.startswith(prefix if prefix.endswith("/") else prefix + "/"):
                    return
            raise URLNotAllowed(url, f"it is not under any allowed prefix {list(self.prefixes or ())}")
