"""Bounded decompression of manifest files (gzip, zstd): streamed, and stopped past the inflate budget.

A compressed manifest may inflate to at most ``max_inflate_ratio`` times the
compressed bytes read so far, or ``min_inflate_allowance`` bytes, whichever is
more (:class:`~refstore.manifest._budgets.Budgets`), so a 1 MB file cannot
become gigabytes of text. Corrupt or truncated data raises
:class:`~refstore.errors.ManifestError` naming the file, never the
decompressor's own ``EOFError``/``zlib.error``/``RuntimeError``.
"""

from __future__ import annotations

import gzip
import io
import zlib
from typing import IO, Any, cast

from refstore.errors import ManifestError
from refstore.manifest._budgets import Budgets, current

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Largest piece inflated before the budget is checked again.
_PIECE = 1 << 20
_GZIP_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile)


def detect(head: bytes, compression: str | None, name: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or None (plain text), from *compression* or the first bytes *head*.

    Raises
    ------
    ManifestError
        For a compression other than gzip or zstd.
    """
    if compression in ("gzip", "zstd"):
        return compression
    if compression not in (None, "infer"):
        raise ManifestError(f"manifest {name!r}: unsupported compression {compression!r}; use gzip or zstd")
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head[:4] == ZSTD_MAGIC:
        return "zstd"
    return None


class _Counting(io.RawIOBase):
    """A binary stream that counts the bytes read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self.raw = raw
        self.count = 0

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)

    def readable(self) -> bool:
        return True


class Inflating:
    """The inflated bytes of a compressed binary stream, read with ``read(n)`` within the budget.

    Parameters
    ----------
    raw
        The compressed stream.
    kind
        ``"gzip"`` or ``"zstd"``.
    name
        The manifest's URL or path, named in errors.

    Raises
    ------
    ManifestError
        From :meth:`read`: corrupt or truncated data, or inflation past the budget.
    """

    def __init__(self, raw: IO[bytes], kind: str, name: str, budget: Budgets | None = None) -> None:
        self.name, self.kind = name, kind
        self.budget = budget or current()
        self._source = _Counting(raw)
        self._out = 0
        self._errors: tuple[type[BaseException], ...] = _GZIP_ERRORS
        if kind == "gzip":
            self._inner: Any = gzip.GzipFile(fileobj=self._source, mode="rb")
        else:
            self._inner, self._errors = _zstd_reader(self._source, name, self.budget)

    def read(self, n: int = -1) -> bytes:
        parts = []
        left = -1 if n is None or n < 0 else n
        while left:  # in pieces, so a bomb is stopped within one piece of the budget
            piece = self._read_piece(_PIECE if left < 0 else min(left, _PIECE))
            if not piece:
                break
            parts.append(piece)
            left -= len(piece) if left > 0 else 0
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_piece(self, n: int) -> bytes:
        try:
            data = self._inner.read(n)
        except self._errors as exc:
            raise ManifestError(f"manifest {self.name!r}: corrupt or truncated {self.kind} data ({exc})") from None
        self._out += len(data)
        budget = self.budget
        allowed = max(budget.min_inflate_allowance, budget.max_inflate_ratio * self._source.count)
        if self._out > allowed:
            raise ManifestError(
                f"manifest {self.name!r}: {self._source.count} compressed bytes inflated to {self._out} "
                f"bytes so far, more than the {allowed} allowed (max_inflate_ratio={budget.max_inflate_ratio}, "
                f"min_inflate_allowance={budget.min_inflate_allowance}; see refstore.manifest.budgets)"
            )
        return data


def inflate_all(data: bytes, kind: str, name: str) -> bytes:
    """The inflated bytes of *data*, a whole compressed manifest.

    Raises
    ------
    ManifestError
        As :class:`Inflating`.
    """
    return Inflating(io.BytesIO(data), kind, name).read()


def _zstd_reader(source: _Counting, name: str, budget: Budgets) -> tuple[Any, tuple[type[BaseException], ...]]:
    """A streaming zstd reader over *source* and the errors it raises.

    Uses ``zstandard`` if installed, else the standard library's
    ``compression.zstd`` (Python 3.14), else numcodecs, which decodes whole
    frames: then the frame must declare its size, and that size is checked
    against the budget before anything is decoded.
    """
    try:
        import zstandard
    except ImportError:
        pass
    else:
        reader = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], source), read_across_frames=True)
        return reader, (zstandard.ZstdError,)
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:  # pragma: no cover - Python 3.14
        return zstd.ZstdFile(source), (zstd.ZstdError, EOFError)
    data = source.read()
    return io.BytesIO(numcodecs_inflate(data, name, budget)), ()


def frame_content_size(data: bytes) -> int | None:
    """The content size a zstd frame header declares, or None if it declares none (RFC 8878 3.1.1.1)."""
    if len(data) < 5 or data[:4] != ZSTD_MAGIC:
        return None
    descriptor = data[4]
    fcs_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    if not size:
        return None
    at = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    if len(data) < at + size:
        return None
    value = int.from_bytes(data[at : at + size], "little")
    return value + 256 if size == 2 else value


def numcodecs_inflate(data: bytes, name: str, budget: Budgets | None = None) -> bytes:
    """Decode a zstd manifest with numcodecs, refusing it first if its declared size is past the budget.

    Raises
    ------
    ManifestError
        If the frame declares no size or too large a one, or the data is corrupt.
    """
    budget = budget or current()
    allowed = max(budget.min_inflate_allowance, budget.max_inflate_ratio * len(data))
    declared = frame_content_size(data)
    if declared is None:
        raise ManifestError(
            f"manifest {name!r}: the zstd frame does not declare its size, so it cannot be inflated "
            "within the budget without the zstandard package (pip install zstandard)"
        )
    if declared > allowed:
        raise ManifestError(
            f"manifest {name!r}: {len(data)} compressed bytes declare {declared} inflated bytes, past "
            f"max_inflate_ratio={budget.max_inflate_ratio}; see refstore.manifest.budgets"
        )
    from numcodecs import Zstd  # zarr depends on numcodecs

    try:
        out = bytes(Zstd().decode(data))
    except (RuntimeError, ValueError) as exc:
        raise ManifestError(f"manifest {name!r}: corrupt zstd data ({exc})") from None
    if len(out) > allowed:
        raise ManifestError(f"manifest {name!r}: zstd data inflates past the budget ({len(out)} bytes)")
    return out


__all__ = ["Inflating", "detect", "frame_content_size", "inflate_all", "numcodecs_inflate"]
