"""The four tables every format is flattened into, and the Batch that carries them.

This module is the only definition of the tables. Column names are a contract:
users' SQL and other tools query them. Add columns when a format needs them;
rename none without a migration note in docs/schema.md.

Geometry is in pixels once the normalize transform has run (origin top-left,
x right, y down); a reader records what the source has and says so in `units`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = "1"

_DICT = pa.dictionary(pa.int32(), pa.string())
_TS = pa.timestamp("us", tz="UTC")
_VEC3 = pa.list_(pa.float64())


def _schema(name: str, fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    meta = {b"labelflow.table": name.encode(), b"labelflow.schema_version": SCHEMA_VERSION.encode()}
    return pa.schema([pa.field(n, t) for n, t in fields], metadata=meta)


ITEMS = _schema(
    "items",
    [
        ("dataset", _DICT),
        ("item_id", pa.string()),
        ("parent_id", pa.string()),
        ("source_format", _DICT),
        ("source_uri", _DICT),
        ("media_uri", pa.string()),
        ("native_id", pa.string()),
        ("file_name", pa.string()),
        ("media_type", _DICT),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("frame_index", pa.int64()),
        ("sequence_id", pa.string()),
        ("fps", pa.float64()),
        ("duration_s", pa.float64()),
        ("subset", _DICT),
        ("label_status", _DICT),
        ("created_at", _TS),
        ("edited_at", _TS),
        ("metadata", pa.string()),
    ],
)

ANNOTATIONS = _schema(
    "annotations",
    [
        ("dataset", _DICT),
        ("ann_id", pa.string()),
        ("item_id", pa.string()),
        ("native_id", pa.string()),
        ("kind", _DICT),
        ("label", _DICT),
        ("label_id", pa.string()),
        ("units", _DICT),
        ("frame_index", pa.int64()),
        ("bbox_x", pa.float64()),
        ("bbox_y", pa.float64()),
        ("bbox_w", pa.float64()),
        ("bbox_h", pa.float64()),
        ("angle_deg", pa.float64()),
        ("area", pa.float64()),
        ("iscrowd", pa.bool_()),
        ("mask", pa.string()),
        ("mask_h", pa.int32()),
        ("mask_w", pa.int32()),
        ("position", _VEC3),
        ("size", _VEC3),
        ("rotation", _VEC3),
        ("text", pa.string()),
        ("text_start", pa.int64()),
        ("text_end", pa.int64()),
        ("frame_start", pa.int64()),
        ("frame_end", pa.int64()),
        ("time_start_s", pa.float64()),
        ("time_end_s", pa.float64()),
        ("track_id", pa.string()),
        ("keyframe", pa.bool_()),
        ("outside", pa.bool_()),
        ("occluded", pa.bool_()),
        ("z_order", pa.int32()),
        ("group_id", pa.string()),
        ("confidence", pa.float64()),
        ("manual", pa.bool_()),
        ("created_by", pa.string()),
        ("created_at", _TS),
        ("edited_by", pa.string()),
        ("edited_at", _TS),
    ],
)

POINTS = _schema(
    "points",
    [
        ("dataset", _DICT),
        ("ann_id", pa.string()),
        ("item_id", pa.string()),
        ("part", pa.int32()),
        ("idx", pa.int32()),
        ("x", pa.float64()),
        ("y", pa.float64()),
        ("z", pa.float64()),
        ("name", pa.string()),
        ("visibility", pa.int8()),
    ],
)

ATTRIBUTES = _schema(
    "attributes",
    [
        ("dataset", _DICT),
        ("item_id", pa.string()),
        ("owner_id", pa.string()),
        ("owner_kind", _DICT),
        ("frame_index", pa.int64()),
        ("key", pa.string()),
        ("value", pa.string()),
        ("value_type", _DICT),
        ("source", _DICT),
    ],
)

REJECTS = _schema(
    "rejects",
    [
        ("dataset", _DICT),
        ("source_uri", _DICT),
        ("location", pa.string()),
        ("record_kind", _DICT),
        ("native_id", pa.string()),
        ("reason", pa.string()),
        ("record", pa.string()),
    ],
)

TABLES: dict[str, pa.Schema] = {
    "items": ITEMS,
    "annotations": ANNOTATIONS,
    "points": POINTS,
    "attributes": ATTRIBUTES,
    "rejects": REJECTS,
}
"""Every table by name, in write order. `rejects` holds what could not be mapped."""

DATA_TABLES = ("items", "annotations", "points", "attributes")

KINDS = (
    "bbox",  # axis-aligned box: bbox_x/y/w/h
    "rotated_bbox",  # bbox_* of the unrotated box + angle_deg, clockwise about its centre
    "polygon",  # points; several parts = several rings/components
    "polyline",
    "point",  # one vertex
    "points",  # an unordered set of vertices (CVAT points)
    "keypoints",  # named vertices with visibility (COCO keypoints, skeletons)
    "mask",  # mask = COCO compressed RLE over the whole image, mask_h × mask_w
    "ellipse",  # bbox_* of the bounding box + angle_deg
    "cuboid_2d",  # 8 points: front face then rear face
    "cuboid_3d",  # position / size / rotation (radians)
    "tag",  # a label on the whole item (or a frame, or a frame range)
    "caption",  # free text about the item
    "text_span",  # text_start .. text_end of a text item
    "time_range",  # frame_start/end, time_start_s/end_s
    "lasso",  # point-cloud selection, kept verbatim in `text`
    "cuboid_plain",  # flat cuboid: 4 box corners, optionally 2 side points (AIMMO)
)
"""The `kind` values readers emit; a format with a shape outside this list adds it here."""


def empty_table(name: str) -> pa.Table:
    return TABLES[name].empty_table()


@dataclass
class Batch:
    """Rows of the five tables produced from one bounded piece of a source.

    `read` counts source records by the table they map to (an image is one
    item read); a record is either written as rows or rejected, never both,
    so `read == rows + rejects` per table once a source is done. Vertices a
    reader was allowed to leave out (`ReadOptions.boxed_vertices`) count as
    points read: `vertices_left_out`.
    """

    items: pa.Table = field(default_factory=lambda: empty_table("items"))
    annotations: pa.Table = field(default_factory=lambda: empty_table("annotations"))
    points: pa.Table = field(default_factory=lambda: empty_table("points"))
    attributes: pa.Table = field(default_factory=lambda: empty_table("attributes"))
    rejects: pa.Table = field(default_factory=lambda: empty_table("rejects"))
    vertices_left_out: int = 0

    def tables(self) -> dict[str, pa.Table]:
        return {name: getattr(self, name) for name in TABLES}

    def replace(self, **tables: pa.Table) -> Batch:
        return Batch(**{**self.tables(), **tables}, vertices_left_out=self.vertices_left_out)

    @property
    def num_rows(self) -> int:
        return sum(t.num_rows for t in self.tables().values())

    @staticmethod
    def concat(batches: Iterable[Batch]) -> Batch:
        parts = list(batches)
        if not parts:
            return Batch()
        return Batch(
            **{
                name: pa.concat_tables([getattr(b, name) for b in parts]).combine_chunks()
                for name in TABLES
            },
            vertices_left_out=sum(b.vertices_left_out for b in parts),
        )


BOX = ("bbox_x", "bbox_y", "bbox_w", "bbox_h")


def box_stated(columns: Any) -> pa.Array | pa.ChunkedArray:
    """Per annotation row, whether all four `BOX` columns have a value: the box a
    box-reading writer uses as it is. `columns`: a table, or a dict of its columns."""
    import pyarrow.compute as pc

    x, y, w, h = (columns[c].is_valid() for c in BOX)
    return pc.and_(pc.and_(x, y), pc.and_(w, h))


def conform(table: pa.Table, name: str) -> pa.Table:
    """Cast `table` to the named schema: add missing columns as nulls, order them.

    Used where tables come back from Parquet or DuckDB, whose types may differ
    (plain strings for dictionary columns, hive partition columns last).
    """
    schema = TABLES[name]
    n = table.num_rows
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type:
                col = col.cast(f.type)
            cols.append(col)
        else:
            cols.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(cols, schema=schema)
