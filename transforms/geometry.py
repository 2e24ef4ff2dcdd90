"""Geometry derived from vertices: bounding boxes and polygon areas (Polars).

Only missing values are filled: a box or area the source states is kept as is.
Polars is imported on first use: most batches state both, and a process that
never needs it is spared its import (a quarter of a second and ~40 MB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from pipelines.schema import Batch, conform

if TYPE_CHECKING:
    import polars as pl

_AREA_KINDS = ("polygon",)
_BOX_KINDS = ("polygon", "polyline", "point", "points", "keypoints", "cuboid_2d")


def _missing(anns: pa.Table, column: str, kinds: tuple[str, ...]) -> bool:
    if anns.num_rows == 0 or anns.column(column).null_count == 0:
        return False
    import polars as pl

    kind = pl.from_arrow(anns.select(["kind", column]))
    return (
        kind.filter(pl.col(column).is_null() & pl.col("kind").cast(pl.String).is_in(kinds)).height
        > 0
    )


def fill_bbox_from_points(batch: Batch) -> Batch:
    """bbox_* of vertex shapes without a box: the extent of their points.

    Keypoints count only labelled ones (visibility > 0, or unknown).
    """
    anns = batch.annotations
    if batch.points.num_rows == 0 or not _missing(anns, "bbox_x", _BOX_KINDS):
        return batch
    import polars as pl

    pts = pl.from_arrow(batch.points.select(["ann_id", "x", "y", "visibility"]))
    extent = (
        pts.filter(pl.col("visibility").is_null() | (pl.col("visibility") > 0))
        .group_by("ann_id")
        .agg(
            _x0=pl.col("x").min(),
            _y0=pl.col("y").min(),
            _x1=pl.col("x").max(),
            _y1=pl.col("y").max(),
        )
    )
    df = pl.from_arrow(anns).join(extent, on="ann_id", how="left", maintain_order="left")
    fill = pl.col("bbox_x").is_null() & pl.col("kind").cast(pl.String).is_in(_BOX_KINDS)
    df = df.with_columns(
        bbox_x=pl.when(fill).then(pl.col("_x0")).otherwise(pl.col("bbox_x")),
        bbox_y=pl.when(fill).then(pl.col("_y0")).otherwise(pl.col("bbox_y")),
        bbox_w=pl.when(fill).then(pl.col("_x1") - pl.col("_x0")).otherwise(pl.col("bbox_w")),
        bbox_h=pl.when(fill).then(pl.col("_y1") - pl.col("_y0")).otherwise(pl.col("bbox_h")),
    )
    return batch.replace(annotations=conform(df.to_arrow(), "annotations"))


def polygon_areas(points: pa.Table) -> pl.DataFrame:
    """Shoelace area per ann_id, summing the absolute areas of its parts."""
    import polars as pl

    pts = pl.from_arrow(points.select(["ann_id", "part", "idx", "x", "y"])).sort(
        ["ann_id", "part", "idx"]
    )
    ring = ["ann_id", "part"]
    return (
        pts.with_columns(
            _xn=pl.col("x").shift(-1).over(ring).fill_null(pl.col("x").first().over(ring)),
            _yn=pl.col("y").shift(-1).over(ring).fill_null(pl.col("y").first().over(ring)),
        )
        .group_by(ring)
        .agg(_a=((pl.col("x") * pl.col("_yn") - pl.col("_xn") * pl.col("y")).sum() / 2).abs())
        .group_by("ann_id")
        .agg(_area=pl.col("_a").sum())
    )


def fill_polygon_area(batch: Batch) -> Batch:
    anns = batch.annotations
    if batch.points.num_rows == 0 or not _missing(anns, "area", _AREA_KINDS):
        return batch
    import polars as pl

    areas = polygon_areas(batch.points)
    df = pl.from_arrow(anns).join(areas, on="ann_id", how="left", maintain_order="left")
    fill = pl.col("area").is_null() & pl.col("kind").cast(pl.String).is_in(_AREA_KINDS)
    df = df.with_columns(area=pl.when(fill).then(pl.col("_area")).otherwise(pl.col("area")))
    return batch.replace(annotations=conform(df.to_arrow(), "annotations"))
