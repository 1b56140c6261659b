"""The exceptions refstore raises.

Every error derives from one root, and also from the builtin a caller would
naturally catch, so ``except FileNotFoundError`` or ``except ValueError`` keep
working::

    RefstoreError
    ├── ManifestError(ValueError)            a manifest is malformed: names the key and the problem
    │   ├── TemplateError                    a template or ``gen`` entry cannot be expanded safely
    │   ├── IncompatibleSources              inputs of concat/stack disagree on a field that must match
    │   └── CombineError                     ``combine`` refuses its inputs: names the input, the variable
    │       │                                and the field; nothing is written
    │       ├── UnknownDimension             the concat dimension is none of the inputs' (lists those present)
    │       ├── CoordinateOrderError         the concat coordinate is not monotonic, or inputs overlap
    │       ├── InputsDiffer(IncompatibleSources)  a variable's dtype, shape, fill value, units, calendar
    │       │                                or CF attribute differs between inputs
    │       ├── NotRepresentable             kerchunk-only output was asked for, but a variable needs a
    │       │                                virtual array (names it and why: e.g. misaligned chunks)
    │       └── InputsFailed                 inputs of a parallel build could not be scanned or opened:
    │                                        lists every one with its cause; nothing is written
    ├── ImageCodecError(ValueError)          an image tile cannot be decoded into (or encoded from) a chunk
    ├── ChunkDecodeError(ValueError)         a chunk's bytes do not decode: names key, where its bytes
    │                                        come from and the codec; the codec's error is ``__cause__``
    ├── KeyNotInManifest(FileNotFoundError)  a key the manifest does not hold
    ├── SnapshotUnavailable(RuntimeError)    a pickled manifest with no source to reopen names a
    │                                        snapshot this process cannot find or verify: raised by
    │                                        its first read; names the hash, the directories searched
    │                                        and the writer's host (not a FileNotFoundError: zarr would
    │                                        read that as a missing key, i.e. an empty store)
    ├── URLNotAllowed(PermissionError)       a reference points outside the URL policy
    ├── BadResponse(OSError)                 a server answered something other than what was asked
    │                                        (another Content-Range, more bytes than requested)
    ├── ReferenceNotReachable(fsspec's ReferenceNotReachable, i.e. RuntimeError)
    │   │                                    a target could not be read: names key, URL and cause;
    │   │                                    the original error (e.g. FileNotFoundError) is ``__cause__``
    │   ├── DeadlineExceeded(TimeoutError)   every attempt timed out (``refstore.Deadlines``)
    │   └── SourceChanged                    the target is not what the manifest recorded (size, ETag,
    │                                        mtime or SHA-256): names key, URL, field, expected and found
    └── RefstoreWarning(UserWarning)         issued, not raised: e.g. a server that ignores Range

A *missing key* is not an error for a zarr store (it reads as the fill value);
an *unreachable target* always is, so a broken dataset never reads as zeros.
"""

from __future__ import annotations

from typing import Any

from fsspec.implementations.reference import (
    ReferenceNotReachable as _FsspecReferenceNotReachable,
)

__all__ = [
    "BadResponse",
    "ChunkDecodeError",
    "CombineError",
    "CoordinateOrderError",
    "DeadlineExceeded",
    "ImageCodecError",
    "IncompatibleSources",
    "InputsDiffer",
    "InputsFailed",
    "KeyNotInManifest",
    "ManifestError",
    "NotRepresentable",
    "ReferenceNotReachable",
    "RefstoreError",
    "RefstoreWarning",
    "SnapshotUnavailable",
    "SourceChanged",
    "TemplateError",
    "URLNotAllowed",
    "UnknownDimension",
]


class RefstoreError(Exception):
    """Root of every refstore exception."""


class ManifestError(RefstoreError, ValueError):
    """A manifest (or one of its entries) is malformed.

    The message names the offending key or field and what is wrong with it.
    """


class TemplateError(ManifestError):
    """A template or ``gen`` expression cannot be expanded.

    Raised for unknown template names and for expressions outside the small
    arithmetic subset refstore evaluates (templates never execute code).
    """


class IncompatibleSources(ManifestError):
    """Inputs of :func:`refstore.concat` / :func:`refstore.stack` disagree on a field that must match.

    The message names the input index and the field, with both values.
    """


class CombineError(ManifestError):
    """:func:`refstore.combine` cannot combine its inputs as asked.

    Raised before anything is written; the message names the input (file), the
    variable and the field, and what to do about it.
    """


class UnknownDimension(CombineError):
    """The dimension to concatenate along is no dimension of the inputs.

    The message lists the dimensions present (a typo would otherwise stack the
    inputs along a new dimension); stacking along a new one is asked for explicitly.
    """


class CoordinateOrderError(CombineError):
    """The inputs cannot be put in order by their concat coordinate.

    An input's coordinate is not strictly monotonic, the inputs run in different
    directions, or two inputs overlap or repeat a value. The message names the
    inputs and the values.
    """


class InputsDiffer(CombineError, IncompatibleSources):
    """A variable differs between inputs in a field that changes what its values mean.

    dtype, shape off the concat dimension, dimension names, fill value, zarr format,
    ``units``, ``calendar``, ``scale_factor``, ``add_offset``, ``_FillValue``,
    ``missing_value`` and the other CF decoding attributes; or, for variables
    without the concat dimension, the values themselves.
    """


class NotRepresentable(CombineError):
    """Plain kerchunk output was asked for (``layout="kerchunk"``, ``--kerchunk-only``), but a
    variable cannot be expressed as kerchunk references.

    The message names the variable and the reason (e.g. a chunk spanning two inputs).
    """


class InputsFailed(CombineError):
    """Inputs of a parallel build (:func:`refstore.build.combine_parallel`) could not be scanned or
    opened.

    The message lists every failed input with its cause; ``failures`` holds them as
    ``(label, cause)`` pairs and ``total`` the number of inputs. Nothing is written. Pass
    ``on_error="continue"`` (``--keep-going``) to combine the others.
    """

    def __init__(self, failures: list[Any], total: int) -> None:
        self.failures = [(f.label, f.cause) if hasattr(f, "label") else tuple(f) for f in failures]
        self.total = total
        lines = [f"combine: {len(self.failures)} of {total} inputs could not be scanned or opened:"]
        lines += [f"  {label}: {cause}" for label, cause in self.failures]
        lines.append("nothing was written; fix or leave out these inputs, or pass on_error='continue' "
                     "(--keep-going) to combine the others")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.failures, self.total)


class ImageCodecError(RefstoreError, ValueError):
    """An image tile cannot be decoded into, or encoded from, a chunk.

    Raised for unrecognised bytes, tiles larger than the chunk, lossy channel or
    dtype conversions, and bad codec configuration. The message names the tile's
    format, shape and dtype and the chunk's shape and dtype, and says what to change.
    """


class ChunkDecodeError(RefstoreError, ValueError):
    """A chunk's bytes could not be decoded by the array's codecs.

    Raised by :class:`refstore.pipeline.ThreadedCodecPipeline` (zarr's own
    pipelines raise the codec's bare error). The codec's error is ``__cause__``.

    Attributes
    ----------
    key : str
        The chunk key, as the store sees it.
    source : str
        Where the bytes came from: URL and byte span, ``inline``, or a virtual chunk.
    codec : str
        The codec that failed, e.g. ``zlib`` or ``refstore.png``.
    """

    def __init__(self, key: str, source: str, codec: str, cause: BaseException | str) -> None:
        self.key, self.source, self.codec = key, source, codec
        self.detail = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"cannot decode chunk {key!r} from {source} with codec {codec!r}: {self.detail}")

    def __reduce__(self):  # keep the four-argument constructor picklable
        return (type(self), (self.key, self.source, self.codec, self.detail))


class KeyNotInManifest(RefstoreError, FileNotFoundError):
    """The manifest holds no entry for this key."""


class SnapshotUnavailable(RefstoreError, RuntimeError):
    """Unpickling a manifest that has no source (given as a dict, or edited in memory) found its
    snapshot in none of this process's snapshot directories, or found it corrupt.

    Raised by the unpickled manifest's first read or edit (unpickling itself succeeds, so that
    dask reports it as the task's error). The message names the snapshot's SHA-256, where it
    was looked for, the host that wrote it, and how to share snapshots between hosts
    (``REFSTORE_SNAPSHOT_DIR``). Such a manifest never reads as an empty store.
    """


class URLNotAllowed(RefstoreError, PermissionError):
    """A reference's URL is outside the manifest's URL policy.

    Attributes
    ----------
    url : str
        The URL that was refused.
    key : str or None
        The manifest key whose reference named it, when known.
    """

    def __init__(self, url: str, reason: str, key: str | None = None) -> None:
        self.url = url
        self.key = key
        self.reason = reason
        where = f" (key {key!r})" if key is not None else ""
        super().__init__(
            f"URL {url!r}{where} is not allowed by the URL policy: {reason}. "
            "Pass url_policy=refstore.URLPolicy(...) to allow it."
        )

    def __reduce__(self):  # keep the three-argument constructor picklable
        return (type(self), (self.url, self.reason, self.key))


class BadResponse(RefstoreError, OSError):
    """A server's answer does not match the request.

    For example a ``206`` whose ``Content-Range`` is not the range asked for,
    or a body longer than the requested length. Such an answer is never
    sliced or retried: it would give a key another key's bytes. Readers see
    it as the ``__cause__`` of :class:`ReferenceNotReachable`.
    """


class RefstoreWarning(RefstoreError, UserWarning):
    """A warning about a target that still reads correctly, but slowly.

    Issued (``warnings.warn``), not raised; for example once per URL whose
    server ignores ``Range`` requests.
    """


class ReferenceNotReachable(RefstoreError, _FsspecReferenceNotReachable):
    """The target of a reference could not be read.

    Subclasses fsspec's ``ReferenceNotReachable`` (a ``RuntimeError``) so code
    written for fsspec's reference filesystem keeps working. The triggering
    exception is chained as ``__cause__``.

    Attributes
    ----------
    reference : str
        The manifest key.
    target : str
        The URL that failed.
    """

    def __init__(self, reference: str, target: str, cause: BaseException | str) -> None:
        super().__init__(reference, target)
        self.detail = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"

    def __str__(self) -> str:
        return (
            f'Reference "{self.reference}" failed to fetch target {self.target}: {self.detail}'
        )

    def __reduce__(self):  # keep the three-argument constructor picklable
        return (type(self), (self.reference, self.target, self.detail))


class DeadlineExceeded(ReferenceNotReachable, TimeoutError):
    """Every attempt to read a reference's target ran out of time.

    Raised instead of :class:`ReferenceNotReachable` when the last attempt
    failed by a deadline of :class:`refstore.Deadlines` (no connection, no
    first byte, or the whole answer not in time), so ``except TimeoutError``
    catches it as well. The message names key, URL and the deadline, e.g.
    ``deadline 25 s exceeded; gave up after 3 attempts``.
    """


class SourceChanged(ReferenceNotReachable):
    """A reference's target changed since the manifest recorded what it looked like.

    Raised instead of reading the bytes, whenever the manifest holds the target's
    identity (``refstore:sources``: size, ETag, modification time, SHA-256) and
    the target no longer matches it, under the store's ``verify`` policy. A
    :class:`ReferenceNotReachable` (a ``RuntimeError``), so code that handles
    unreadable targets handles it too. The message names key, URL, the field
    and both values, e.g. ``source changed: etag is '"v2"', the manifest
    recorded '"v1"'``.

    Attributes
    ----------
    reference, target : str
        The manifest key and the URL.
    field : str
        ``"size"``, ``"etag"``, ``"mtime"`` or ``"sha256"``.
    expected, found : str or int or None
        What the manifest recorded, and what the source has now (None if it no longer says).
    """

    def __init__(
        self,
        reference: str,
        target: str,
        field: str,
        expected: object,
        found: object,
    ) -> None:
        self.field = field
        self.expected = expected
        self.found = found
        super().__init__(
            reference,
            target,
            f"source changed since the manifest was made: {field} is {found!r}, the manifest recorded "
            f"{expected!r}. Rebuild the manifest, or pass verify='off' to read the source as it is now",
        )

    def __reduce__(self):  # keep the five-argument constructor picklable
        return (type(self), (self.reference, self.target, self.field, self.expected, self.found))
