"""Encord: the JSON label export (a list of label rows), read and written.

Reading (pipelines/formats/_encord_read.py and _encord_stream.py) maps:

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

Files are framed first (pipelines/jsonframe.py: a numpy scan, no parsing) into
byte ranges of whole rows, one read task per ~32 MB, so a single large export
is read in parallel. A row up to ROW_BYTES is parsed whole with orjson; a
longer one (a video of many thousands of frames) is streamed where it lies
with ijson, one data unit and one frame at a time.

Writing gives back one JSON list of label rows per subset
(`label_rows.json`, or `<subset>.json`), pixels divided by the item size.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipelines import jsonframe
from pipelines.formats._encord_read import RowReader
from pipelines.formats._encord_stream import Events, Window, drive_row, stream
from pipelines.formats._encord_write import plan_write, write
from pipelines.formats.base import Detection, Format, ReadOptions, ReadTask, plan_each
from pipelines.schema import Batch
from pipelines.storage import Source

ROW_BYTES = 64 << 20
"""Rows up to this size are parsed whole (orjson); longer ones are streamed frame by frame."""

DETECT_FILES = 16
"""JSON files of a folder whose first bytes detection looks at."""


def _looks_like_rows(head: bytes) -> bool:
    if b'"data_units"' not in head and not (b'"label_hash"' in head and b'"data_type"' in head):
        return False
    # COCO files (Encord's own COCO export included) are objects with images and categories.
    return not (b'"images"' in head and b'"categories"' in head)


def _label_files(source: Source, limit: int | None = None) -> list[str]:
    found = []
    for n, rel in enumerate(source.glob(".json")):
        if limit is not None and n >= limit:
            break
        if _looks_like_rows(source.head(rel)):
            found.append(rel)
    return found


def detect(source: Source) -> Detection | None:
    if source.is_dir:
        found = _label_files(source, limit=DETECT_FILES)
        return Detection(0.9, f"Encord label rows in {', '.join(found[:3])}") if found else None
    if not source.name.lower().endswith(".json"):
        return None
    if _looks_like_rows(source.head()):
        return Detection(0.95, "JSON with Encord label-row keys (data_units, label_hash)")
    return None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    members = _label_files(source) if source.is_dir else [""]
    return plan_each(source, members, "encord", lambda m: _plan_file(source, m, options))


def _plan_file(source: Source, member: str, options: ReadOptions) -> list[ReadTask]:
    with source.open(member) as f:
        values = jsonframe.frame(f, source.uri(member))
    if len(values) == 1 and values[0].key == "" and values[0].kind == "array":
        ranges = [(c.start, c.end, c.first_index) for c in values[0].chunks]
    else:  # one label row object
        ranges = [(0, source.size(member), -1)]
    return [
        ReadTask("encord", source, member, context={"ranges": group}, options=options)
        for group in jsonframe.task_groups(ranges, options.workers, _range_bytes)
    ]


def _range_bytes(span: tuple[int, int, int]) -> int:
    return span[1] - span[0]


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    reader = RowReader(task, b)
    uri = task.uri
    with task.source.open(task.member) as f:
        for start, end, first in task.context["ranges"]:
            whole = first < 0  # the file is one row object
            if end - start > ROW_BYTES:
                reader.stream_from(start, None if whole else end, max(first, 0))
                view = f if whole else Window(f, start, end)
                yield from stream(Events(view, uri), reader, max(first, 0))
                continue
            if whole:
                value = jsonframe.Value("", start, end, "object")
                row = jsonframe.read_value(f, uri, value, path="$")
                yield from drive_row(reader, 0, "$", row)
                continue
            chunk = jsonframe.Chunk(start, end, first)
            # The collector stays off while the parsed rows live (see jsonframe.iter_chunks).
            with jsonframe.paused_gc():
                rows = jsonframe.parse_chunk(f, uri, chunk, path="$")
                for i, row in enumerate(rows, start=first):
                    yield from drive_row(reader, i, f"$[{i}]", row)
                del rows
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
