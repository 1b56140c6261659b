"""Fetching bytes: per-protocol targets, the URL policy, range merging and batching, deadlines and retries.

Targets register themselves by protocol when their module is imported
(:mod:`._registry`); the imports below are what makes them available.
"""

from refstore.fetch import _http, _targets  # noqa: F401 - register the HTTP and fsspec targets
from refstore.fetch._deadlines import Deadlines, FetchTimeout, TransientError
from refstore.fetch._fetcher import Fetcher, ShortRead
from refstore.fetch._merge import merge_ranges
from refstore.fetch._policy import URLPolicy, normalize, split_url
from refstore.fetch._registry import Target, TargetContext, register_target

__all__ = [
    "Deadlines",
    "FetchTimeout",
    "Fetcher",
    "ShortRead",
    "Target",
    "TargetContext",
    "TransientError",
    "URLPolicy",
    "merge_ranges",
    "normalize",
    "register_target",
    "split_url",
]
