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

A block whose every URL is ``null`` (``"key": [null, offset, length]``: one
file named by the ``target``, as kerchunk writes a single HDF5 file's
references) is read the same way, its pieces alternating between keys and
``: [null, offset, length], ``.

Anything else (a backslash other than ujson's ``\\/`` for ``/``, ``null`` beside URLs, a whole-object
reference, a float, a leading zero, a number split by a blank, a control character in a string, a key or URL
that is not UTF-8) returns None, and the block goes to a JSON parser, which reads it or raises.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np
import ujson

_WS = b" \t\r\n"
_COMMA, _CLOSE = ord(","), ord("]")
#: Digits of the longest offset or length read here (int64 holds 18 digits exactly).
_MAX_DIGITS = 18


class FlatBlock(NamedTuple):
    """The entries of one block, in the order written."""

    keys: str  # the keys joined by "\n" (no key holds a newline: JSON strings cannot, unescaped)
    urls: list[bytes] | None  # UTF-8, exact as written; None: every URL is null
    offsets: np.ndarray  # int64
    lengths: np.ndarray  # int64

    def key_list(self) -> list[str]:
        return self.keys.split("\n")


def read_flat(text: bytes) -> FlatBlock | None:
    """The entries of *text* (``"k": ["u", o, l], ...``, without the braces), or None if it is
    anything else (see the module docstring)."""
    raw = np.frombuffer(text, dtype=np.uint8)
    low = raw[raw < 32]  # (numpy: a pass, and the few blanks it finds; 5-10x bytes.translate or re)
    if ((low != 9) & (low != 10) & (low != 13)).any():
        return None  # a control character but a blank (a tab in a string is read as itself, as ujson does)
    newlines = bool((low == 10).any())
    if b"\\" in text:
        slashes = np.flatnonzero(raw == 92)
        if slashes[-1] + 1 >= len(raw) or (raw[slashes + 1] != 47).any():
            return None  # an escape other than ujson's "\\/" for "/"
        text = text.translate(None, b"\\")  # every backslash is one of those: dropping them unescapes
    try:
        text.isascii() or text.decode("utf-8")  # (then every string in it is: they end at ASCII quotes)
    except UnicodeDecodeError:
        return None
    parts = text.split(b'"')
    if len(parts) < 3 or parts[0].strip(_WS) or parts[-1].rstrip(_WS)[-1:] != b"]":
        return None
    if b"null" in text:
        return _read_nulls(text, parts, newlines)
    if (len(parts) - 1) % 4:
        return None
    n = (len(parts) - 1) // 4
    colons = b"".join(parts[2::4])
    if colons.translate(None, _WS) != b":[" * n:
        return None
    tails = b"".join(parts[4::4])
    numbers = _numbers(tails.translate(None, _WS), n, tails.translate(_BLANK_DELIMS))
    if numbers is None:
        return None
    key_text = _key_text(parts[1::4], newlines)
    if key_text is None:
        return None
    return FlatBlock(key_text, parts[3::4], numbers[0::2].copy(), numbers[1::2].copy())


def _key_text(keys: list[bytes], newlines: bool) -> str | None:
    """*keys* joined by newlines, or None if a key holds one (the block has *newlines*)."""
    joined = b"\n".join(keys)
    if newlines and joined.count(b"\n") != len(keys) - 1:
        return None
    return joined.decode("utf-8")


def _read_nulls(text: bytes, parts: list[bytes], newlines: bool) -> FlatBlock | None:
    """:func:`read_flat` of a block whose every entry is ``"key": [null, offset, length]``."""
    n = (len(parts) - 1) // 2
    if (len(parts) - 1) % 2 or n < 1:
        return None
    # each piece between two keys must open with ":[null,"; a byte no piece holds (control
    # characters were refused) marks where one ends, so a piece cannot lend its "null" to the next
    tails = b"\0".join(parts[2::2])
    if tails.count(b"null") != n or text.count(b"null") != n:
        return None  # a null in a key, or a null elsewhere than in the URL's place
    bare = tails.translate(None, _WS)
    if not bare.startswith(b":[null,") or bare.count(b"\0:[null,") != n - 1:
        return None
    numbers = _numbers(bare[len(b":[null") :].replace(b"\0:[null", b""), n, tails.translate(_BLANK_NULLS))
    if numbers is None:
        return None
    key_text = _key_text(parts[1::2], newlines)
    if key_text is None:
        return None
    return FlatBlock(key_text, None, numbers[0::2].copy(), numbers[1::2].copy())


def _numbers(bare: bytes, n: int, spaced: bytes) -> np.ndarray | None:
    """Offsets and lengths from the text after each URL: *bare*, without blanks, must be every
    entry's ``,offset,length],`` (the last one's comma left out); *spaced* is the same text with
    its blanks, and everything but the digits made blanks."""
    tails = bare + b","
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
        # from the text with its blanks, so that "1 2" reads as two numbers (and is refused), not 12
        values = np.fromstring(spaced, dtype=np.int64, sep=" ")
    except ValueError:
        return None
    return values if len(values) == 2 * n else None


_BLANK_DELIMS = bytes.maketrans(b",]", b"  ")
_BLANK_NULLS = bytes.maketrans(b",]:[nul\0", b" " * 8)


def without_blanks(text: bytes) -> bytes | None:
    """*text* (JSON without backslashes) with the blanks between tokens removed, at C speed;
    None if some string holds a blank (then removing them all would change it)."""
    parts = text.split(b'"')
    if len(parts) % 2 == 0:
        return None  # an unclosed string
    inside = b"".join(parts[1::2])
    if len(inside.translate(None, _WS)) != len(inside):
        return None
    outside = b'""'.join(parts[0::2])
    bare = outside.translate(None, _WS)
    if _words(bare) != _words(outside):
        return None  # a blank inside a number or a literal ("1 2", "nu ll"): not JSON, not ours to join
    return text.translate(None, _WS)


#: Letters, digits and what else a JSON number or literal is made of -> "1"; everything else -> "0".
_WORD_CLASS = bytes(49 if chr(b).isalnum() or chr(b) in "+-." else 48 for b in range(128)) + b"0" * 128


def _words(text: bytes) -> int:
    """How many runs of number or literal characters *text* holds."""
    classes = text.translate(_WORD_CLASS)
    return classes.count(b"01") + classes.startswith(b"1")


#: The end of a list value and the start of the next key: where a block may be cut in two (a
#: string ending in "]," looks the same; then a piece fails to parse, and the block is read whole).
_BOUNDARY = re.compile(rb"\],[ \t\r\n]*\"")
#: Pieces this small are read by ujson rather than cut further.
_SMALL = 1 << 12
#: More small pieces than this: the block is not mostly flat, and is better read whole.
_MAX_SMALL = 8


def read_pieces(text: bytes) -> list[FlatBlock | dict[str, Any]] | None:
    """The entries of a block (as :func:`read_flat` takes) that is flat but for a few other
    entries (inline metadata or data), in document order: the flat stretches as
    :class:`FlatBlock`, the rest parsed by ujson into small dicts. None if the block is not
    mostly flat, or some piece is not JSON (then the whole block goes to a JSON parser).

    The block is cut in halves at entry boundaries until each piece reads flat or is small.
    """
    small = [0]
    pieces: list[FlatBlock | dict[str, Any]] = []
    return pieces if _cut(text, pieces, small) else None


def _cut(text: bytes, out: list[FlatBlock | dict[str, Any]], small: list[int]) -> bool:
    block = read_flat(text)
    if block is not None:
        out.append(block)
        return True
    match = _BOUNDARY.search(text, len(text) // 2) if len(text) > _SMALL else None
    if match is None:
        match = _BOUNDARY.search(text) if len(text) > _SMALL else None
    if match is None:
        small[0] += 1
        if small[0] > _MAX_SMALL:
            return False
        try:
            entries = ujson.loads(b"{" + text + b"}")
        except ValueError:
            return False
        if not isinstance(entries, dict):
            return False
        out.append(entries)
        return True
    return _cut(text[: match.start() + 1], out, small) and _cut(text[match.start() + 2 :], out, small)
