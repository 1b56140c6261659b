"""The ``refstore`` command line."""

from refstore.cli._main import main

__all__ = ["main"]
