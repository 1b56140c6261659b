"""What one source (a target URL) looked like: :class:`SourceIdentity`, and how to read it off
a local file or an fsspec ``info()`` dict, and compare times and ETags.

A leaf module (it imports only :mod:`refstore.errors`): the manifest layer stores
identities (:mod:`refstore.manifest._sources`) and the fetch layer verifies them
(:mod:`refstore.fetch._identity`), and neither imports the other for it.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from refstore.errors import ManifestError

__all__ = [
    "SOURCES_KEY",
    "SourceIdentity",
    "etags_match",
    "format_mtime",
    "identity_from_info",
    "local_identity",
    "mtime_from_ns",
    "parse_mtime",
    "same_mtime",
]

#: The top-level key of kerchunk JSON (version 1) and of parquet ``.zmetadata`` holding the identities.
SOURCES_KEY = "refstore:sources"
_FIELDS = ("size", "etag", "mtime", "sha256")
_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_HASH_BLOCK = 1 << 22


@dataclass(frozen=True)
class SourceIdentity:
    """What one source (a target URL) looked like when the manifest was made.

    Every field is optional; the readers check those present.

    Attributes
    ----------
    size
        Size of the whole object in bytes.
    etag
        The entity tag the server gave (HTTP ``ETag``, S3/GCS ETag), as sent, quotes included.
    mtime
        Last modification, ISO 8601 in UTC (``2024-05-01T12:00:00.123456Z``); HTTP's
        ``Last-Modified`` has whole seconds and is compared at that precision.
    sha256
        SHA-256 of the whole object, lower-case hex; checked only with ``verify="full"``.
    """

    size: int | None = None
    etag: str | None = None
    mtime: str | None = None
    sha256: str | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, f) is not None for f in _FIELDS)

    @property
    def cheap_fields(self) -> tuple[str, ...]:
        """The fields present that cost no read of the bytes: size, etag, mtime."""
        return tuple(f for f in _FIELDS[:3] if getattr(self, f) is not None)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this identity (only the fields present)."""
        return {f: getattr(self, f) for f in _FIELDS if getattr(self, f) is not None}

    @classmethod
    def from_json(cls, url: str, value: Any) -> SourceIdentity:
        """Parse the JSON object of *url*'s identity.

        Raises
        ------
        ManifestError
            Naming the URL and the field, for an unknown field or a value of the wrong type.
        """
        where = f"{SOURCES_KEY}[{url!r}]"
        if not isinstance(value, Mapping):
            raise ManifestError(f"{where} must be an object of {', '.join(_FIELDS)}, got {type(value).__name__}")
        unknown = set(value) - set(_FIELDS)
        if unknown:
            raise ManifestError(f"{where}: unknown field {sorted(unknown)[0]!r}; fields are {', '.join(_FIELDS)}")
        size, etag, mtime, sha = (value.get(f) for f in _FIELDS)
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ManifestError(f"{where}: size must be an integer >= 0, got {size!r}")
        if etag is not None and not isinstance(etag, str):
            raise ManifestError(f"{where}: etag must be text, got {etag!r}")
        if mtime is not None and (not isinstance(mtime, str) or parse_mtime(mtime) is None):
            raise ManifestError(f"{where}: mtime must be an ISO 8601 time such as "
                                f"'2024-05-01T12:00:00Z', got {mtime!r}")
        if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha)):
            raise ManifestError(f"{where}: sha256 must be 64 lower-case hex digits, got {sha!r}")
        return cls(size, etag, mtime, sha)



# -- times and tags ------------------------------------------------------------------------------


def format_mtime(value: datetime | float | int) -> str:
    """ISO 8601 in UTC with microseconds if any: ``2024-05-01T12:00:00.5Z`` is never written,
    ``2024-05-01T12:00:00.500000Z`` is. A number is seconds since the epoch."""
    dt = value if isinstance(value, datetime) else datetime.fromtimestamp(float(value), UTC)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    frac = f".{dt.microsecond:06d}" if dt.microsecond else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + "Z"


def mtime_from_ns(ns: int) -> str:
    """:func:`format_mtime` of ``st_mtime_ns`` (exact to the microsecond, no float rounding)."""
    sec, rest = divmod(ns, 1_000_000_000)
    dt = datetime.fromtimestamp(sec, UTC).replace(microsecond=rest // 1000)
    return format_mtime(dt)


def parse_mtime(text: str) -> datetime | None:
    """A time written as ISO 8601 or as an HTTP date (``Last-Modified``), in UTC; None if neither."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def same_mtime(expected: str, found: datetime | str) -> bool:
    """Whether *found* is the recorded time *expected*, at the precision *expected* was written
    with (whole seconds unless it has a fraction)."""
    exp = parse_mtime(expected)
    got = parse_mtime(found) if isinstance(found, str) else found
    if exp is None or got is None:
        return False
    if got.tzinfo is None:
        got = got.replace(tzinfo=UTC)
    if "." not in expected:
        got = got.replace(microsecond=0)
    return exp == got


def etags_match(expected: str, found: str) -> bool:
    """Weak comparison of entity tags (RFC 9110): ``W/`` prefixes and surrounding quotes ignored."""
    def bare(tag: str) -> str:
        tag = tag.strip()
        return (tag[2:] if tag.startswith(("W/", "w/")) else tag).strip('"')
    return bare(expected) == bare(found)


# -- identities of sources ----------------------------------------------------------------------


def local_identity(path: str, checksum: bool = False) -> SourceIdentity:
    """Size and mtime of a local file (and its SHA-256 if *checksum*, reading it once).

    Raises
    ------
    OSError
        If the file cannot be read.
    """
    st = os.stat(path)
    sha = None
    if checksum:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
        sha = digest.hexdigest()
    return SourceIdentity(size=st.st_size, mtime=mtime_from_ns(st.st_mtime_ns), sha256=sha)


def identity_from_info(info: Mapping[str, Any]) -> SourceIdentity:
    """The identity an fsspec ``info()`` dict gives (S3, GCS, HTTP and local spellings)."""
    size = info.get("size")
    etag = next((info[k] for k in ("ETag", "etag", "Etag") if isinstance(info.get(k), str)), None)
    mtime = None
    for name in ("LastModified", "last_modified", "Last-Modified", "updated", "mtime"):
        value = info.get(name)
        if isinstance(value, (datetime, int, float)) and not isinstance(value, bool):
            mtime = format_mtime(value)
        elif isinstance(value, str) and (parsed := parse_mtime(value)) is not None:
            mtime = format_mtime(parsed)
        if mtime is not None:
            break
    return SourceIdentity(size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                          etag=etag, mtime=mtime)
