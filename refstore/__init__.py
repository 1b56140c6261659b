"""refstore: read bytes that already exist (netCDF/HDF5, TIFF, image tiles) as zarr arrays."""

from refstore import build, multiscale
from refstore._options import Options
from refstore.errors import (
    ChunkDecodeError,
    DeadlineExceeded,
    KeyNotInManifest,
    ManifestError,
    ReferenceNotReachable,
    RefstoreError,
    SourceChanged,
    TemplateError,
    URLNotAllowed,
)
from refstore.fetch import Deadlines, URLPolicy
from refstore.fs import ReferenceFileSystem
from refstore.manifest import Manifest, Reference, SourceIdentity
from refstore.store import ReferenceStore
from refstore.virtual import VirtualArray, combine, concat, open_virtual, pad, save_virtual, stack

__version__ = "0.1.0"

__all__ = [
    "ChunkDecodeError",
    "DeadlineExceeded",
    "Deadlines",
    "KeyNotInManifest",
    "Manifest",
    "ManifestError",
    "Options",
    "Reference",
    "ReferenceFileSystem",
    "ReferenceNotReachable",
    "ReferenceStore",
    "RefstoreError",
    "SourceChanged",
    "SourceIdentity",
    "TemplateError",
    "URLNotAllowed",
    "URLPolicy",
    "VirtualArray",
    "build",
    "combine",
    "concat",
    "multiscale",
    "open_virtual",
    "pad",
    "save_virtual",
    "stack",
]
