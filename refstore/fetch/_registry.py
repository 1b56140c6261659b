"""The fetch-target protocol and the protocol -> target registry.

A *target* reads byte spans of the objects of one protocol, inside one event
loop (see :mod:`._targets` for the error contract). The fetcher asks
:func:`make_target` for one per protocol and loop; which class answers is
decided here, so a new backend (obstore, say) is one module that calls
:func:`register_target` at import, and one import in :mod:`refstore.fetch`.

Local files are not in the registry: the fetcher keeps one
:class:`~refstore.fetch._targets.LocalTarget` for every loop and thread,
since file descriptors belong to no loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from refstore.fetch._deadlines import Deadlines

__all__ = ["Target", "TargetContext", "TargetFactory", "make_target", "register_target", "registered"]


class Target(Protocol):
    """What the fetcher needs of a target."""

    async def read(self, url: str, spans: list[tuple[int, int | None]]) -> list[bytes]:
        """The bytes of each ``[start, end)`` span of *url* (``end`` None: to the end), in order.

        Raises ``FileNotFoundError`` for a missing object,
        :class:`~refstore.fetch.TransientError` for what a retry may cure, and
        another ``OSError`` (or a refstore error) for the rest.
        """
        ...

    async def size(self, url: str) -> int:
        """The size in bytes of the object at *url*."""
        ...

    async def close(self) -> None:
        """Release sessions and files; the target is not used again."""
        ...


@dataclass(frozen=True)
class TargetContext:
    """What a target is made from.

    Attributes
    ----------
    protocol
        The protocol of the URLs it will read (``"s3"``, ``"https"``, ...).
    options
        The storage options given for that protocol (``remote_options``).
    filesystem
        An fsspec filesystem instance the caller gave for the protocol, or None.
    check_url
        The URL policy's check, for targets that follow redirects (raises
        :class:`~refstore.errors.URLNotAllowed`).
    deadlines
        The per-request deadlines, for targets that make their own connections.
    verifier
        The :class:`~refstore.fetch._identity.Verifier` holding reads to the sources'
        recorded identity (None: no checks).
    """

    protocol: str
    options: Mapping[str, Any] = field(default_factory=dict)
    filesystem: Any = None
    check_url: Callable[[str], None] = lambda url: None
    deadlines: Deadlines = field(default_factory=Deadlines)
    verifier: Any = None


TargetFactory = Callable[[TargetContext], Target | None]
"""Makes a target for a context, or answers None to leave the protocol to the default."""

_FACTORIES: dict[str, TargetFactory] = {}
_DEFAULT: list[TargetFactory] = []


def register_target(protocols: Iterable[str] | None, factory: TargetFactory) -> None:
    """Make *factory* the maker of targets for *protocols* (None: the default for every other one).

    A later registration for a protocol replaces an earlier one. A factory that
    answers None for a context (for example when the caller gave its own
    filesystem) leaves that context to the default factory.
    """
    if protocols is None:
        _DEFAULT[:] = [factory]
        return
    for protocol in protocols:
        _FACTORIES[protocol] = factory


def registered() -> dict[str, TargetFactory]:
    """The protocols with a factory of their own (a copy)."""
    return dict(_FACTORIES)


def make_target(context: TargetContext) -> Target:
    """A new target for *context*: its protocol's factory, else the default one.

    Raises
    ------
    LookupError
        If no default factory is registered (:mod:`refstore.fetch` registers fsspec's).
    """
    factory = _FACTORIES.get(context.protocol)
    target = factory(context) if factory is not None else None
    if target is None:
        if not _DEFAULT:
            raise LookupError(f"no fetch target is registered for protocol {context.protocol!r}")
        target = _DEFAULT[0](context)
    if target is None:
        raise LookupError(f"the default fetch target declined protocol {context.protocol!r}")
    return target
