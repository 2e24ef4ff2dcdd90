"""Coordinates as the source had them → pixels (sql/normalize_coordinates.sql)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.schema import Batch, conform
from transforms.sql import run_sql


def normalize_coordinates(batch: Batch) -> Batch:
    """Scale every `units = 'norm'` annotation and its points by its item's size.

    Items and annotations must be in the same batch (readers flush whole
    items). Annotations whose item has no size stay `norm`.
    """
    anns = batch.annotations
    if (
        anns.num_rows == 0
        or not pc.any(pc.equal(anns.column("units").cast("string"), "norm")).as_py()
    ):
        return batch
    out = run_sql(
        "normalize_coordinates",
        ("annotations_px", "points_px"),
        items=batch.items,
        annotations=_numbered(anns),
        points=_numbered(batch.points),
    )
    return batch.replace(
        annotations=conform(out["annotations_px"].sort_by("_row"), "annotations"),
        points=conform(out["points_px"].sort_by("_row"), "points"),
    )


def _numbered(table: pa.Table) -> pa.Table:
    # The joins may reorder rows; the row number restores the reader's order.
    return table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
