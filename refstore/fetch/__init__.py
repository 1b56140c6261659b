"""Fetching bytes: per-protocol targets, the URL policy, range merging and batching."""

from refstore.fetch._fetcher import Fetcher, ShortRead
from refstore.fetch._merge import merge_ranges
from refstore.fetch._policy import URLPolicy, normalize, split_url
from refstore.fetch._targets import TransientError

__all__ = ["Fetcher", "ShortRead", "TransientError", "URLPolicy", "merge_ranges", "normalize", "split_url"]
