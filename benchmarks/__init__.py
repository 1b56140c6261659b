"""Benchmark suite comparing refstore with fsspec's ReferenceFileSystem.

Run from the repository root with ``python -m benchmarks`` (see
``python -m benchmarks --help``).  This package is deliberately not a test
suite: it prints a table and writes raw timings to a JSON file.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
