"""The one rule for manifest keys, applied by every reader and every edit.

A key is a relative path of non-empty segments: no ``.`` or ``..`` segment,
no leading or trailing ``/``, no control character, at most
:attr:`~refstore.manifest._budgets.Budgets.max_key_length` characters. A key
that passes can never name a place outside the manifest's hierarchy, whether
it is listed, written to a directory or handed to another store.
"""

from __future__ import annotations

import re

from refstore.errors import ManifestError
from refstore.manifest._budgets import current

#: Unicode category Cc: C0 controls (NUL, tab, newline, ...), DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BAD_SEGMENT = re.compile(r"(?:^|/)(?:\.{1,2})?(?:/|$)")


def check_key(key: object) -> str:
    """Return *key* if it is a valid manifest key.

    Raises
    ------
    ManifestError
        Naming the key and the rule it breaks.
    """
    if not isinstance(key, str):
        raise ManifestError(f"manifest key {key!r} is not text")
    if not key:
        raise ManifestError("manifest key '': keys are non-empty relative paths")
    limit = current().max_key_length
    if len(key) > limit:
        raise ManifestError(
            f"manifest key {key[:60]!r}... has {len(key)} characters, more than max_key_length={limit} "
            "(see refstore.manifest.budgets)"
        )
    if _CONTROL.search(key):
        raise ManifestError(f"manifest key {key!r}: control characters (NUL, tab, newline, ...) are not allowed")
    if _BAD_SEGMENT.search(key):
        raise ManifestError(
            f"manifest key {key!r}: keys are relative paths; '.', '..', empty path parts and a leading "
            "or trailing '/' are not allowed"
        )
    return key


__all__ = ["check_key"]
