"""Canonical URLs: the one form in which an HTTP(S) URL is checked by the URL policy and then sent.

HTTP clients rewrite URLs before sending them: yarl decodes ``%2e`` to ``.``,
resolves ``..``, drops tabs and newlines, lowercases the host. A policy that
compared the URL as written could allow ``http://h/ok/pub/%2e%2e/private``,
which the client then sends as ``/ok/private``. :func:`canonical_http`
performs every such rewrite itself (RFC 3986 normalisation: scheme and host
lowercased, default port dropped, escapes of unreserved characters decoded and
the others upper-cased, characters outside the URL alphabet escaped, dot
segments resolved, fragment dropped) and refuses what has no single reading:
control characters, surrounding whitespace, a bad host or port, and dot
segments hidden behind an encoded ``/`` or ``\\``. The HTTP target sends
exactly the canonical form (``yarl.URL(..., encoded=True)``), so what was
checked is what is sent.
"""

from __future__ import annotations

import functools
import re
import string
from urllib.parse import unquote

from refstore.errors import URLNotAllowed

HTTP_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_SUB_DELIMS = "!$&'()*+,;="
_PATH_SAFE = _UNRESERVED | frozenset(_SUB_DELIMS + ":@/")
_QUERY_SAFE = _PATH_SAFE | frozenset("?")
_USERINFO_SAFE = _UNRESERVED | frozenset(_SUB_DELIMS + ":")
_HEX = frozenset(string.hexdigits)
#: Unicode category Cc: C0 controls (tab, newline, NUL, ...), DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_REG_NAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]+\]")
#: Times an escaped path is decoded when looking for hidden dot segments (``%252e`` is two).
_DECODE_ROUNDS = 4


def refuse_unreadable(url: str) -> None:
    """Raise :class:`URLNotAllowed` if *url* holds control characters or surrounding whitespace.

    Clients drop or trim them, so such a URL has more than one reading.
    """
    if _CONTROL.search(url):
        raise URLNotAllowed(url, "it contains control characters (tab, newline, NUL, ...), which clients drop")
    if url != url.strip():
        raise URLNotAllowed(url, "it starts or ends with whitespace, which clients trim")


def _requote(text: str, safe: frozenset[str]) -> str:
    """*text* with escapes of unreserved characters decoded, other escapes upper-cased, and
    every character outside *safe* escaped (as UTF-8)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            hexa = text[i + 1 : i + 3]
            ch = chr(int(hexa, 16))
            out.append(ch if ch in _UNRESERVED else "%" + hexa.upper())
            i += 3
            continue
        out.append(c if c in safe else "".join(f"%{b:02X}" for b in c.encode("utf-8")))
        i += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """Resolve ``.`` and ``..`` segments of an absolute path (RFC 3986, 5.2.4); ``..`` stops at the root."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for seg in segments:
        if seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    if segments and segments[-1] in (".", ".."):
        out.append("")  # "/a/b/.." is the directory "/a/"
    return "/" + "/".join(out)


def _hides_dot_segment(path: str) -> bool:
    """True if decoding *path* (again and again) reveals a ``.``/``..`` segment between ``/`` or ``\\``."""
    for _ in range(_DECODE_ROUNDS):
        decoded = unquote(path)
        if decoded == path:
            return False
        if any(seg in (".", "..") for seg in re.split(r"[/\\]", decoded)):
            return True
        path = decoded
    return "%" in path  # still escaped after every round: refuse rather than guess


def _authority(url: str, scheme: str, authority: str) -> str:
    """The canonical ``[userinfo@]host[:port]`` of an HTTP(S) URL."""
    userinfo, at, hostport = authority.rpartition("@")
    if _IPV6.match(hostport):
        end = hostport.index("]") + 1
        host, port = hostport[:end], hostport[end:]
        if port and not port.startswith(":"):
            raise URLNotAllowed(url, f"host {hostport!r} is not a valid host[:port]")
        port = port[1:]
    else:
        host, _, port = hostport.partition(":")
        if host and not _REG_NAME.fullmatch(host):  # (no host at all fails when sent, as unreachable)
            raise URLNotAllowed(url, f"host {host!r} is not a valid host name")
    if port and not (port.isascii() and port.isdigit()):
        raise URLNotAllowed(url, f"port {port!r} is not a number")
    port = port.lstrip("0") or ("0" if port else "")
    if port == _DEFAULT_PORTS.get(scheme):
        port = ""
    user = _requote(userinfo, _USERINFO_SAFE) + "@" if at else ""
    return f"{user}{_requote(host, _UNRESERVED | frozenset(_SUB_DELIMS + '[]:')).lower()}{':' + port if port else ''}"


@functools.lru_cache(maxsize=4096)
def canonical_http(url: str) -> str:
    """The canonical form of an ``http://`` or ``https://`` URL: what the policy checks and the client sends.

    Parameters
    ----------
    url
        An absolute HTTP(S) URL.

    Returns
    -------
    str
        ``scheme://authority/path[?query]``, idempotent:
        ``canonical_http(canonical_http(u)) == canonical_http(u)``.

    Raises
    ------
    URLNotAllowed
        If the URL has no single reading (see the module docstring).
    """
    refuse_unreadable(url)
    match = _SCHEME.match(url)
    if match is None or match.group(1).lower() not in HTTP_SCHEMES:
        raise URLNotAllowed(url, "it is not an absolute http:// or https:// URL")
    scheme = match.group(1).lower()
    rest = url[match.end() :]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    tail = tail.partition("#")[0]
    path, question, query = tail.partition("?")
    path = _remove_dot_segments(_requote(path or "/", _PATH_SAFE))  # (the authority ends at the first "/")
    if _hides_dot_segment(path):
        raise URLNotAllowed(
            url, "its path hides a '.' or '..' segment behind an escaped '/' or '\\' (or nested escapes)"
        )
    out = f"{scheme}://{_authority(url, scheme, authority)}{path}"
    return out + "?" + _requote(query, _QUERY_SAFE) if question else out


def join(base: str, location: str) -> str:
    """The absolute URL a redirect's *location* names, relative to the canonical *base*.

    The result is not canonical yet (pass it to :func:`canonical_http`), and
    not resolved by any client: dot segments and escapes stay as written, so
    the policy sees them.

    Raises
    ------
    URLNotAllowed
        If *location* has control characters or surrounding whitespace.
    """
    refuse_unreadable(location)
    if _SCHEME.match(location) or re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", location):
        return location
    scheme, _, rest = base.partition("://")
    if location.startswith("//"):
        return f"{scheme}:{location}"
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    origin, path = f"{scheme}://{rest[:cut]}", rest[cut:].partition("?")[0] or "/"
    if location.startswith("/"):
        return origin + location
    if location.startswith("?"):
        return origin + path + location
    if location.startswith("#") or not location:
        return base
    return origin + path.rsplit("/", 1)[0] + "/" + location


__all__ = ["HTTP_SCHEMES", "canonical_http", "join", "refuse_unreadable"]
