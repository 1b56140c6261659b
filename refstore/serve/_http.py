"""HTTP details the app shares: byte ranges, conditional requests, dates, and errors as JSON
(status chosen from the exception, source URLs redacted)."""

from __future__ import annotations

import re
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

from starlette.responses import JSONResponse

from refstore.errors import (
    ChunkDecodeError,
    DeadlineExceeded,
    ImageCodecError,
    ReferenceNotReachable,
    URLNotAllowed,
)

__all__ = ["error_response", "http_date", "not_modified", "parse_range", "status_of"]

_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """A single ``bytes=`` range as ``(start, end)`` (end exclusive) against a body of *size* bytes.

    None: no range, or one to ignore (another unit, several ranges: answered whole, as
    RFC 9110 allows); ``"unsatisfiable"``: answer ``416``.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - n), size
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size >= 0 and start >= 0:
        return "unsatisfiable"
    if start < 0 or end <= start:
        return None
    return start, min(end, size)


def http_date(timestamp: float) -> str:
    """*timestamp* as an HTTP date (``Last-Modified``)."""
    return formatdate(timestamp, usegmt=True)


def not_modified(headers: Any, etag: str | None, last_modified: float | None) -> bool:
    """Whether the request's ``If-None-Match`` (or, without it, ``If-Modified-Since``) is met."""
    inm = headers.get("if-none-match")
    if inm is not None and etag is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return "*" in tags or etag.removeprefix("W/") in tags
    ims = headers.get("if-modified-since")
    if ims and last_modified is not None:
        try:
            return int(last_modified) <= parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError):
            return False
    return False


def status_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and a short title for an exception raised while answering."""
    if isinstance(exc, DeadlineExceeded | TimeoutError):
        return 504, "source too slow"
    if isinstance(exc, URLNotAllowed):
        return 502, "source URL not allowed by the dataset's URL policy"
    if isinstance(exc, ReferenceNotReachable):
        return 502, "source unreachable"
    if isinstance(exc, ChunkDecodeError | ImageCodecError):
        return 502, "source chunk does not decode"
    if isinstance(exc, FileNotFoundError):
        return 404, "not found"
    if isinstance(exc, OSError):
        return 502, "source unreachable"
    return 500, "internal error"


def redact(message: str, exc: BaseException | None) -> str:
    """*message* with the source URLs and paths an exception names replaced by ``<source>``."""
    secrets = set()
    for e in _chain(exc):
        for attr in ("target", "url"):
            value = getattr(e, attr, None)
            if isinstance(value, str) and len(value) > 3:
                secrets.add(value)
        for arg in getattr(e, "filename", None), getattr(e, "filename2", None):
            if isinstance(arg, str) and len(arg) > 3:
                secrets.add(arg)
    for s in sorted(secrets, key=len, reverse=True):
        message = message.replace(s, "<source>")
    return _URL.sub("<source>", message)


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and len(out) < 10:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def error_response(
    status: int, title: str, *, dataset: str | None = None, key: str | None = None,
    exc: BaseException | None = None, redact_urls: bool = True, headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error as JSON: ``{"error", "status", "dataset", "key", "cause"}``."""
    body: dict[str, Any] = {"error": title, "status": status}
    if dataset is not None:
        body["dataset"] = dataset
    if key is not None:
        body["key"] = key
    if exc is not None:
        cause = f"{type(exc).__name__}: {exc}"
        body["cause"] = redact(cause, exc) if redact_urls else cause
    return JSONResponse(body, status_code=status, headers=headers)
