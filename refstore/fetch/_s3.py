"""Conditional S3 reads through s3fs: each GET carries ``IfMatch`` with the recorded ETag, and the
answer's ETag, object size and modification time are compared with the recorded identity."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from refstore._source_identity import SourceIdentity, identity_from_info
from refstore.fetch._identity import SourceMismatch, compare, precondition_failed

__all__ = ["s3_conditional_get"]

_CONTENT_RANGE = re.compile(r"\s*bytes\s+\d+-\d+/(\d+)\s*\Z", re.IGNORECASE)


async def s3_conditional_get(
    fs: Any, path: str, url: str, start: int, end: int | None, identity: SourceIdentity
) -> bytes:
    """Bytes ``[start, end)`` of the S3 object *path*, read only if it still has *identity*'s ETag.

    Parameters
    ----------
    fs
        An s3fs filesystem usable in the running loop.
    url
        The URL, for messages.

    Raises
    ------
    SourceMismatch
        If S3 refuses the precondition (``PreconditionFailed``), or the answer's
        ETag, size or modification time differ from *identity*.
    OSError
        As s3fs raises it, for any other failure.
    """
    if end is not None and end <= start:
        return b""
    bucket, key, version = fs.split_path(path)
    kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "IfMatch": identity.etag}
    if version:
        kwargs["VersionId"] = version
    if start or end is not None:
        kwargs["Range"] = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
    try:
        resp = await fs._call_s3("get_object", **kwargs)
    except Exception as exc:
        if not _precondition_failed(exc):
            raise
        raise await _mismatch(fs, path, url, identity) from exc
    body = resp["Body"]
    try:
        match = _CONTENT_RANGE.match(str(resp.get("ContentRange") or ""))
        size = int(match.group(1)) if match else (resp.get("ContentLength") if "Range" not in kwargs else None)
        compare(url, identity, size=size, etag=resp.get("ETag"), mtime=resp.get("LastModified"))
        return bytes(await body.read())
    finally:
        body.close()


async def _mismatch(fs: Any, path: str, url: str, identity: SourceIdentity) -> SourceMismatch:
    """The mismatch of a refused ``IfMatch``, naming the ETag the object has now if S3 says."""
    try:
        fs.invalidate_cache(path)
        found = identity_from_info(await fs._info(path))
    except Exception:  # noqa: BLE001 - only for the message
        return precondition_failed(url, identity, {})
    return precondition_failed(url, identity, {"ETag": found.etag} if found.etag else {})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(seen) < 8:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _precondition_failed(exc: BaseException) -> bool:
    """Whether *exc* (as s3fs translates botocore's errors) is S3's ``PreconditionFailed`` (412)."""
    for err in _chain(exc):
        response = getattr(err, "response", None)
        if isinstance(response, Mapping):
            code = (response.get("Error") or {}).get("Code")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code == "PreconditionFailed" or status == 412 or str(code) == "412":
                return True
    return False
