"""Reference manifests: the data model, kerchunk JSON and parquet, safe templates."""

from refstore.manifest._io import open_manifest, save_manifest
from refstore.manifest._model import Manifest, Reference, is_metadata_key

__all__ = ["Manifest", "Reference", "is_metadata_key", "open_manifest", "save_manifest"]
