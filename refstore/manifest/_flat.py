"""Reading a block of ``"key": ["url", offset, length]`` entries without a JSON parser.

Most of a kerchunk JSON is such entries. Parsed with a JSON parser, each becomes
five Python objects (key, list, URL, two ints) before a column is filled. Here
the block's text is split at its quotes once: with no backslash in the text,
every ``"`` opens or closes a string, so the pieces alternate between string
contents (keys and URLs, exact as written) and the text between them, which
must be exactly ``:["`` before a URL and ``",offset,length],"`` after it, give
or take blanks. That is checked on all the in-between text at once (bytes
methods and numpy); the offsets and lengths are then read by one
``numpy.fromstring``. Keys come back as one text (they are compared with the
keys an array's grid spells, as text, before any is made a string of its own),
URLs as bytes (packed as they are when a manifest names many).

Anything else (a backslash other than ujson's ``\\/`` for ``/``, ``null``, a whole-object reference, a float, a
leading zero, a control character in a string, a key or URL that is not UTF-8)
returns None, and the block goes to a JSON parser, which reads it or raises.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_WS = b" \t\r\n"
_COMMA, _CLOSE = ord(","), ord("]")
#: Digits of the longest offset or length read here (int64 holds 18 digits exactly).
_MAX_DIGITS = 18


class FlatBlock(NamedTuple):
    """The entries of one block, in the order written."""

    keys: str  # the keys joined by "\n" (no key holds a newline: JSON strings cannot, unescaped)
    urls: list[bytes]  # UTF-8, exact as written
    offsets: np.ndarray  # int64
    lengths: np.ndarray  # int64

    def key_list(self) -> list[str]:
        return self.keys.split("\n")


def read_flat(text: bytes) -> FlatBlock | None:
    """The entries of *text* (``"k": ["u", o, l], ...``, without the braces), or None if it is
    anything else (see the module docstring)."""
    if b"\\" in text:
        if text.count(b"\\") != text.count(b"\\/"):
            return None
        text = text.replace(b"\\/", b"/")  # ujson's way of writing "/" (the only escape here)
    raw = np.frombuffer(text, dtype=np.uint8)
    if ((raw < 32) & (raw != 9) & (raw != 10) & (raw != 13)).any():  # (numpy: faster than bytes.translate)
        return None  # a control character but a blank (a tab in a string is read as itself, as ujson does)
    try:
        text.isascii() or text.decode("utf-8")  # (then every string in it is: they end at ASCII quotes)
    except UnicodeDecodeError:
        return None
    parts = text.split(b'"')
    if len(parts) < 5 or (len(parts) - 1) % 4:
        return None
    n = (len(parts) - 1) // 4
    if parts[0].strip(_WS) or parts[-1].rstrip(_WS)[-1:] != b"]":
        return None
    colons = b"".join(parts[2::4])
    if colons.translate(None, _WS) != b":[" * n:
        return None
    tails = b"".join(parts[4::4])
    if text.count(b"\n") != parts[0].count(b"\n") + colons.count(b"\n") + tails.count(b"\n"):
        return None  # a newline inside a string (keys are joined with newlines)
    numbers = _numbers(tails.translate(None, _WS) + b",", n)
    if numbers is None:
        return None
    key_text = b"\n".join(parts[1::4]).decode("utf-8")
    return FlatBlock(key_text, parts[3::4], numbers[0::2].copy(), numbers[1::2].copy())


def _numbers(tails: bytes, n: int) -> np.ndarray | None:
    """Offsets and lengths from the text after each URL, every entry's as ``,offset,length],``."""
    if tails.translate(None, b"0123456789,]"):
        return None  # a sign, a float, null, ...
    raw = np.frombuffer(tails, dtype=np.uint8)
    delims = np.flatnonzero((raw == _COMMA) | (raw == _CLOSE))
    if len(delims) != 4 * n:
        return None
    shape = delims.reshape(n, 4)
    if not (raw[shape] == np.array([_COMMA, _COMMA, _CLOSE, _COMMA], dtype=np.uint8)).all():
        return None
    if shape[0, 0] != 0 or (np.diff(delims)[3::4] != 1).any() or (shape[:, 3] - shape[:, 2] != 1).any():
        return None  # text between two entries
    digits = np.stack([shape[:, 1] - shape[:, 0] - 1, shape[:, 2] - shape[:, 1] - 1], axis=1)
    if digits.min() < 1 or digits.max() > _MAX_DIGITS:
        return None  # an empty number, or one past int64
    first = np.stack([shape[:, 0] + 1, shape[:, 1] + 1], axis=1)
    if ((raw[first] == ord("0")) & (digits > 1)).any():
        return None  # a leading zero: not JSON
    try:
        values = np.fromstring(tails.translate(_BLANK_DELIMS), dtype=np.int64, sep=" ")
    except ValueError:
        return None
    return values if len(values) == 2 * n else None


_BLANK_DELIMS = bytes.maketrans(b",]", b"  ")


def without_blanks(text: bytes) -> bytes | None:
    """*text* (JSON without backslashes) with the blanks between tokens removed, at C speed;
    None if some string holds a blank (then removing them all would change it)."""
    parts = text.split(b'"')
    if len(parts) % 2 == 0:
        return None  # an unclosed string
    inside = b"".join(parts[1::2])
    if len(inside.translate(None, _WS)) != len(inside):
        return None
    return text.translate(None, _WS)
