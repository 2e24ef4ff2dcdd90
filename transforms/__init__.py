"""Pure Batch → Batch functions, applied to every batch a reader yields.

`standard` is the chain the runner applies: coordinates to pixels first, then
geometry that can be derived (boxes and areas), so writers find them filled.
"""

from __future__ import annotations

from pipelines.schema import Batch
from transforms.geometry import fill_bbox_from_points, fill_polygon_area
from transforms.normalize import normalize_coordinates


def standard(batch: Batch) -> Batch:
    batch = normalize_coordinates(batch)
    batch = fill_bbox_from_points(batch)
    return fill_polygon_area(batch)


__all__ = ["fill_bbox_from_points", "fill_polygon_area", "normalize_coordinates", "standard"]
