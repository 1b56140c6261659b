"""Fetching bytes: per-protocol targets, the URL policy, range merging and batching, deadlines and retries."""

from refstore.fetch._deadlines import Deadlines, FetchTimeout, TransientError
from refstore.fetch._fetcher import Fetcher, ShortRead
from refstore.fetch._merge import merge_ranges
from refstore.fetch._policy import URLPolicy, normalize, split_url

__all__ = [
    "Deadlines",
    "FetchTimeout",
    "Fetcher",
    "ShortRead",
    "TransientError",
    "URLPolicy",
    "merge_ranges",
    "normalize",
    "split_url",
]
