"""Virtual arrays: concatenate, stack, pad and crop zarr arrays without copying their chunks."""

from refstore.errors import IncompatibleSources
from refstore.virtual._array import VirtualArray, concat, pad, stack
from refstore.virtual._combine import combine
from refstore.virtual._save import flatten, save_virtual
from refstore.virtual._store import VirtualResolver, VirtualStore, open_virtual

__all__ = [
    "IncompatibleSources",
    "VirtualArray",
    "VirtualResolver",
    "VirtualStore",
    "combine",
    "concat",
    "flatten",
    "open_virtual",
    "pad",
    "save_virtual",
    "stack",
]
