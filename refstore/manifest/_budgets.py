"""Budgets: the limits that keep a hostile manifest from costing unbounded time or memory.

Reading a manifest may multiply its size: ``gen`` entries and templates
expand, compressed files inflate, metadata describes chunk grids. Each of
these is bounded here, with defaults far above what real manifests use; a
manifest past a bound raises :class:`~refstore.errors.ManifestError` (or its
:class:`~refstore.errors.TemplateError`) naming the input and the budget.

Change them for a block of code with :func:`budgets`::

    with refstore.manifest.budgets(max_generated_keys=10**9):
        fs = refstore.ReferenceFileSystem("huge-gen.json")
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Budgets:
    """The limits applied while a manifest is read.

    Attributes
    ----------
    max_generated_keys
        Keys all ``gen`` entries of one manifest may produce together,
        counted before anything is expanded. 10 million: expanding them takes
        about four minutes (24 us a key).
    max_key_length
        Characters of one key (any reader, any edit). Zarr keys are short;
        4096 leaves room for deep hierarchies.
    max_text_length
        Characters of any text a template renders (a URL, a template value, a
        ``gen`` field), and the largest width or precision a ``%`` format in
        a ``gen`` expression may ask for. 8192 admits signed URLs.
    max_expression_length
        Characters of template expressions (inside ``{{...}}``) one ``gen``
        entry evaluates per key, all its fields together: this bounds the
        cost of each generated key.
    max_int_bits
        Bits of any integer a template expression computes (exponent towers
        stop here). Offsets need 63.
    max_inflate_ratio
        A compressed manifest may inflate to at most this many times the
        compressed bytes read so far (gzip and zstd bombs reach 1000x; JSON
        manifests compress 10-35x, about 100x when half their entries are
        inlined zero chunks) ...
    min_inflate_allowance
        ... except that this many inflated bytes are always allowed (64 MiB).
    """

    max_generated_keys: int = 10_000_000
    max_key_length: int = 4096
    max_text_length: int = 8192
    max_expression_length: int = 256
    max_int_bits: int = 256
    max_inflate_ratio: int = 200
    min_inflate_allowance: int = 64 << 20


_DEFAULT = Budgets()
_CURRENT: ContextVar[Budgets] = ContextVar("refstore_budgets")


def current() -> Budgets:
    """The budgets in force in this context."""
    return _CURRENT.get(_DEFAULT)


@contextmanager
def budgets(**changes: Any) -> Iterator[Budgets]:
    """Change some budgets for the manifests read inside the ``with`` block.

    Parameters
    ----------
    **changes
        New values for :class:`Budgets` fields.

    Raises
    ------
    TypeError
        For a name that is not a budget.
    """
    token = _CURRENT.set(replace(current(), **changes))
    try:
        yield current()
    finally:
        _CURRENT.reset(token)


__all__ = ["Budgets", "budgets", "current"]
