"""Geometry derived from vertices: bounding boxes and polygon areas (Polars).

Only missing values are filled: a box or area the source states is kept as is.
Polars computes per-annotation values from the points; the annotations table
itself stays Arrow, and only the filled columns are replaced (converting every
column there and back cost more than the geometry). Polars is imported on first
use: most batches state both, and a process that never needs it is spared its
import (a quarter of a second and ~40 MB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.schema import Batch

if TYPE_CHECKING:
    import polars as pl

_AREA_KINDS = ("polygon",)
_BOX_KINDS = ("polygon", "polyline", "point", "points", "keypoints", "cuboid_2d")
_BOX = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")


def _to_fill(anns: pa.Table, column: str, kinds: tuple[str, ...]) -> pa.Array | None:
    """Which rows lack `column` and are of a kind that derives it; None if none do."""
    if anns.num_rows == 0 or anns.column(column).null_count == 0:
        return None
    kind = anns.column("kind").cast(pa.string())
    fill = pc.and_(pc.is_null(anns.column(column)), pc.is_in(kind, pa.array(kinds)))
    return fill if pc.any(fill).as_py() else None


def _per_annotation(anns: pa.Table, values: pl.DataFrame, names: tuple[str, ...]) -> list:
    """`values` (ann_id + `names`) aligned to the rows of `anns`: nulls where absent."""
    import polars as pl

    aligned = (
        pl.from_arrow(anns.select(["ann_id"]))
        .join(values, on="ann_id", how="left", maintain_order="left")
        .to_arrow()
    )
    return [aligned.column(n).cast(pa.float64()) for n in names]


def fill_bbox_from_points(batch: Batch) -> Batch:
    """bbox_* of vertex shapes without a box: the extent of their points.

    Keypoints count only labelled ones (visibility > 0, or unknown).
    """
    anns = batch.annotations
    fill = _to_fill(anns, "bbox_x", _BOX_KINDS) if batch.points.num_rows else None
    if fill is None:
        return batch
    import polars as pl

    pts = pl.from_arrow(batch.points.select(["ann_id", "x", "y", "visibility"]))
    extent = (
        pts.filter(pl.col("visibility").is_null() | (pl.col("visibility") > 0))
        .group_by("ann_id")
        .agg(
            bbox_x=pl.col("x").min(),
            bbox_y=pl.col("y").min(),
            bbox_w=pl.col("x").max() - pl.col("x").min(),
            bbox_h=pl.col("y").max() - pl.col("y").min(),
        )
    )
    for name, derived in zip(_BOX, _per_annotation(anns, extent, _BOX), strict=True):
        i = anns.schema.get_field_index(name)
        anns = anns.set_column(i, name, pc.if_else(fill, derived, anns.column(name)))
    return batch.replace(annotations=anns)


def polygon_areas(points: pa.Table) -> pl.DataFrame:
    """Shoelace area per ann_id, summing the absolute areas of its parts.

    Each vertex pairs with the next one of its ring, the last with the first: a
    shift over the sorted points, the ring's first vertex carried forward, no
    window per group.
    """
    import polars as pl

    pts = pl.from_arrow(points.select(["ann_id", "part", "idx", "x", "y"])).sort(
        ["ann_id", "part", "idx"]
    )
    starts = (
        (pl.col("ann_id") != pl.col("ann_id").shift(1))
        | (pl.col("part") != pl.col("part").shift(1))
    ).fill_null(True)
    pts = pts.with_columns(_start=starts, _ring=starts.cum_sum())
    last = pl.col("_start").shift(-1).fill_null(True)
    first_x = pl.when(pl.col("_start")).then(pl.col("x")).forward_fill()
    first_y = pl.when(pl.col("_start")).then(pl.col("y")).forward_fill()
    xn = pl.when(last).then(first_x).otherwise(pl.col("x").shift(-1))
    yn = pl.when(last).then(first_y).otherwise(pl.col("y").shift(-1))
    return (
        pts.with_columns(_cross=pl.col("x") * yn - xn * pl.col("y"))
        .group_by("_ring")
        .agg(pl.col("ann_id").first(), _a=(pl.col("_cross").sum() / 2).abs())
        .group_by("ann_id")
        .agg(_area=pl.col("_a").sum())
    )


def fill_polygon_area(batch: Batch) -> Batch:
    anns = batch.annotations
    fill = _to_fill(anns, "area", _AREA_KINDS) if batch.points.num_rows else None
    if fill is None:
        return batch
    (derived,) = _per_annotation(anns, polygon_areas(batch.points), ("_area",))
    i = anns.schema.get_field_index("area")
    anns = anns.set_column(i, "area", pc.if_else(fill, derived, anns.column("area")))
    return batch.replace(annotations=anns)
