"""Encord: the JSON label export (a list of label rows), read and written.

Reading streams each file with ijson one data unit and frame at a time
(pipelines/formats/_encord_read.py). Mapping:

- label row → the items of its data units, all with `sequence_id` = label_hash
  and the row's label_status / created_at / last_edited_at. Every top-level
  field but `data_units` (hashes, titles, export history, and the raw
  object_answers, classification_answers, object_actions) → attributes of the
  row's first item with source "label_row", verbatim.
- data unit → an item (`item_id` = "<label_hash>/<data_hash>", metadata
  {"data_unit": its fields}). An image's labels go on it; a video, DICOM or
  NIfTI series also gets one item per labelled frame (`parent_id` = the data
  unit's item, frame fields such as DICOM slice metadata in metadata "frame").
- object → one annotation (native_id = track_id = objectHash, label =
  name, label_id = featureHash), coordinates normalized (`units = 'norm'`):
  boundingBox → bbox, rotatableBoundingBox → rotated_bbox (theta clockwise →
  angle_deg), polygon / polygons → polygon (one part per ring), polyline,
  point, skeleton → keypoints (names; invisible 0, occluded 1, visible 2),
  bitmask → mask (pixels, COCO compressed RLE). Other fields → attributes
  with source "object"; per-point skeleton fields and polygon ring counts →
  source "encord_layout".
- frame classification → a `tag` annotation; its answers → attributes
  (source "classification_answers"); object_answers and object_actions (per
  frame) → attributes of every annotation of the object. Answer entries with
  a range and no shape (audio, text) → time_range / text_span / tag rows.

Writing gives back one JSON list of label rows per subset
(`label_rows.json`, or `<subset>.json`), pixels divided by the item size.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipelines.formats._encord_read import RowReader
from pipelines.formats._encord_stream import Events, stream
from pipelines.formats._encord_write import plan_write, write
from pipelines.formats.base import Detection, Format, ReadOptions, ReadTask
from pipelines.schema import Batch
from pipelines.storage import Source


def _looks_like_rows(head: bytes) -> bool:
    if b'"data_units"' not in head and not (b'"label_hash"' in head and b'"data_type"' in head):
        return False
    # COCO files (Encord's own COCO export included) are objects with images and categories.
    return not (b'"images"' in head and b'"categories"' in head)


def _label_files(source: Source) -> list[str]:
    return [rel for rel in source.glob(".json") if _looks_like_rows(source.head(rel))]


def detect(source: Source) -> Detection | None:
    if source.is_dir:
        found = _label_files(source)
        return Detection(0.9, f"Encord label rows in {', '.join(found[:3])}") if found else None
    if not source.name.lower().endswith(".json"):
        return None
    if _looks_like_rows(source.head()):
        return Detection(0.95, "JSON with Encord label-row keys (data_units, label_hash)")
    return None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    members = _label_files(source) if source.is_dir else [""]
    return [ReadTask("encord", source, member, options=options) for member in members]


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    with task.source.open(task.member) as f:
        yield from stream(Events(f, task.uri), RowReader(task, b))
    yield b.flush()


FORMAT = Format(
    name="encord",
    description="Encord JSON label export (label rows: images, groups, video, DICOM, audio, text)",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
)
