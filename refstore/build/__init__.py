"""Builders: scan image files, TIFF headers and tile pyramids, and return manifests.

Each builder returns a :class:`refstore.Manifest`; ``manifest.save(path)`` writes it
and ``zarr.open_group(refstore.ReferenceStore(path), mode="r")`` reads it. See
``spec/builders.md``.
"""

from __future__ import annotations

from refstore.build._images import images
from refstore.build._parallel import BuildReport, Failure, combine_parallel
from refstore.build._tiff import needs_imagecodecs, tiff
from refstore.build._tiles import dzi
from refstore.build._xyz import xyz

__all__ = ["BuildReport", "Failure", "combine_parallel", "dzi", "images", "needs_imagecodecs", "tiff", "xyz"]
