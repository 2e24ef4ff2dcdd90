"""Pure Batch → Batch functions, applied to every batch a reader yields.

`standard` is the chain the runner applies: coordinates to pixels first, then
geometry that can be derived (boxes and areas), so writers find them filled.
"""

from __future__ import annotations

from pipelines.schema import Batch
from transforms.geometry import fill_geometry
from transforms.normalize import normalize_coordinates


def standard(batch: Batch) -> Batch:
    batch = normalize_coordinates(batch)
    return fill_geometry(batch)


__all__ = ["fill_geometry", "normalize_coordinates", "standard"]
