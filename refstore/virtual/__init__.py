"""Virtual arrays: concatenate, stack, pad and crop zarr arrays without copying their chunks."""

from refstore.virtual._array import IncompatibleSources, VirtualArray, concat, pad, stack
from refstore.virtual._save import flatten, save_virtual
from refstore.virtual._store import VirtualResolver, VirtualStore, open_virtual

__all__ = [
    "IncompatibleSources",
    "VirtualArray",
    "VirtualResolver",
    "VirtualStore",
    "concat",
    "flatten",
    "open_virtual",
    "pad",
    "save_virtual",
    "stack",
]
