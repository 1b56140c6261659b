"""Reference manifests: the data model, kerchunk JSON and parquet, safe templates, budgets."""

from refstore.manifest._budgets import Budgets, budgets
from refstore.manifest._io import open_manifest, save_manifest
from refstore.manifest._model import Manifest, Reference, is_metadata_key
from refstore.manifest._sources import SourceIdentity, record_sources

__all__ = [
    "Budgets", "Manifest", "Reference", "SourceIdentity", "budgets", "is_metadata_key", "open_manifest",
    "record_sources", "save_manifest",
]
