"""Label rows → items, annotations, points, attributes.

`RowReader` receives a label row piece by piece through hooks (begin_row,
row_field, begin_du, du_field, labels_entry, end_du, end_row) that the
drivers in _encord_stream.py call in file order, from a row parsed whole or
from an ijson event stream one frame at a time. What a frame's rows need
from elsewhere in the row — the data unit's width/height (usually after its
labels), the row's label_status (usually after its data units) — is known at
once for a row parsed whole; for a streamed row it is filled in when the row
ends, its rows held as compact dicts (not JSON) until then. A streamed row
whose held rows outgrow a few batches makes one light pass over its bytes
(prescan) that collects the small fields, after which its frames are complete
when read and flushed between frames. Either way the tables do not depend on
the order of the keys.

Row-level answers (object_answers, classification_answers, object_actions)
may come before or after the data units: the annotations they describe are
indexed by hash and their attributes are written when the row ends.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipelines.builder import BatchBuilder, to_json
from pipelines.formats._encord_answers import answers
from pipelines.formats._encord_shapes import (
    LAYOUT,
    Reject,
    as_int,
    common_columns,
    date,
    is_frame_key,
    leftovers,
    optional_number,
    parse_object,
)
from pipelines.formats._encord_stream import Events, Window, key_path, prescan, unit_fields
from pipelines.formats.base import ReadTask
from pipelines.schema import Batch

_DIRECT = ("objects", "classifications")
_IMAGE_ROWS = {"image", "img_group", "image_group", "image_sequence"}
_MEDIA = {
    "video": "video",
    "dicom": "dicom",
    "nifti": "nifti",
    "audio": "audio",
    "plain_text": "text",
    "text": "text",
    "html": "html",
    "group": "group",
}
HOLD_BATCHES = 4
"""Rows held for one label row, in batches, before the size pass makes them complete."""


# -- the row model -------------------------------------------------------------


@dataclass
class _Du:
    key: str
    loc: str
    item_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    direct: dict[str, Any] = field(default_factory=dict)
    odd: list[tuple[str, Any]] = field(default_factory=list)
    frames: list[tuple[int, dict, dict]] = field(default_factory=list)
    """Frame items waiting to be finished: (frame, item row, the frame's other fields)."""
    frame_ids: list[tuple[int, str]] = field(default_factory=list)
    labels_extra: dict[str, Any] | None = None
    """Set for direct labels: their fields other than objects and classifications."""
    has_item: bool = False
    done: bool = False


@dataclass
class _Row:
    index: int
    loc: str
    fields: dict[str, Any] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    key: str | None = None
    informed: bool = False
    du_infos: dict[str, dict] = field(default_factory=dict)
    dus: list[_Du] = field(default_factory=list)
    objects: dict[str, list[tuple[str, str, str, int | None]]] = field(default_factory=dict)
    tags: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


class RowReader:
    """Receives a label row piece by piece (from any driver) and fills a BatchBuilder."""

    def __init__(self, task: ReadTask, b: BatchBuilder) -> None:
        self.task = task
        self.b = b
        self.stem = posixpath.splitext(task.member or task.source.name)[0]
        self.hold_limit = HOLD_BATCHES * task.options.batch_rows
        self._scan: dict[int, tuple[dict, dict]] | None = None
        self.window: tuple[int, int, int] | None = None
        """(start, end, index of its first row) when streaming part of the file."""
        self.row: _Row | None = None
        self.du: _Du | None = None

    def stream_from(self, start: int, end: int | None, first: int) -> None:
        """The next rows are streamed from bytes start..end (None: the whole file), whose
        first row has index `first`: where the light pass must look."""
        self.window = None if end is None else (start, end, first)
        self._scan = None

    # -- flushing ----------------------------------------------------------------

    def checkpoint(self) -> Iterator[Batch]:
        """Flush when the batch is full and every held row is complete."""
        row = self.row
        if self.b.full() and (row is None or (row.informed and not any(d.frames for d in row.dus))):
            yield self.b.flush()

    def _held(self) -> None:
        row = self.row
        if row is not None and not row.informed and self.b.pending > self.hold_limit:
            self._inform()

    # -- row ---------------------------------------------------------------------

    def begin_row(self, index: int, loc: str, whole: dict | None = None) -> None:
        """`whole`: the row already parsed, so every field is known before its frames."""
        self.row = row = _Row(index, loc)
        if whole is not None:
            row.fields.update((k, v) for k, v in whole.items() if k != "data_units")
            row.du_infos = unit_fields(whole.get("data_units"))
            row.informed = True

    def reject_row(self, loc: str, value: Any) -> None:
        self.b.reject(loc, "label row is not an object", record=value, record_kind="items")

    def row_field(self, key: str, value: Any) -> None:
        row = self.row
        row.fields[key] = value
        if key not in row.order:
            row.order.append(key)

    def row_key(self) -> str:
        row = self.row
        if row.key is None:
            # Ids come from the row's content alone: a label_hash that comes after the data
            # units (exports with sorted keys) is fetched by the light pass.
            f = row.fields
            if "label_hash" not in f or (not f["label_hash"] and "data_hash" not in f):
                self._inform()
            row.key = str(f.get("label_hash") or f.get("data_hash") or f"{self.stem}#{row.index}")
        return row.key

    def end_row(self) -> None:
        row = self.row
        if not row.informed:
            for du in row.dus:
                self._finish_du(du)
        anchor = self._anchor() or self._row_item()
        b, f = self.b, row.fields
        for key in row.order:
            b.attribute(anchor, anchor, key, f[key], owner_kind="item", source="label_row")
        answers(self.b, self.row, anchor, self._next_ann)
        self.row = None

    def _anchor(self) -> str | None:
        """The item that holds the row's own fields: the first data unit by data_sequence
        (not by its place in the file), its first frame if it is an image with frames."""
        units = [du for du in self.row.dus if du.has_item or du.frame_ids]
        if not units:
            return None
        first = min(units, key=lambda du: (_sequence(du), du.key))
        return first.item_id if first.has_item else min(first.frame_ids)[1]

    def _row_item(self) -> str:
        f = self.row.fields
        item_id = self.row_key()
        self.b.item(
            item_id=item_id,
            native_id=_text(f.get("data_hash")),
            file_name=_text(f.get("data_title")),
            media_type=_MEDIA.get(str(f.get("data_type")), "image" if _image_like(f, {}) else None),
            sequence_id=item_id,
            **self._row_columns(),
        )
        return item_id

    def _row_columns(self) -> dict[str, Any]:
        f = self.row.fields
        return {
            "label_status": _text(f.get("label_status")),
            "created_at": date(f.get("created_at")),
            "edited_at": date(f.get("last_edited_at")),
        }

    # -- data units ----------------------------------------------------------------

    def begin_du(self, key: str, loc: str) -> None:
        du = _Du(key, loc, f"{self.row_key()}/{key}")
        du.fields.update(self.row.du_infos.get(key, {}))
        self.row.dus.append(du)
        self.du = du

    def reject_du(self, loc: str, value: Any) -> None:
        self.b.reject(loc, "data unit is not an object", record=value, record_kind="items")

    def du_field(self, key: str, value: Any) -> None:
        self.du.fields[key] = value

    def labels_entry(self, key: str, value: Any) -> None:
        du = self.du
        if is_frame_key(key):
            self._frame(du, int(key), value, key_path(f"{du.loc}.labels", key))
            self._held()
        elif key in _DIRECT:
            du.direct[key] = value
        else:
            du.odd.append((key, value))

    def labels_value(self, value: Any) -> None:
        """`labels` that is not an object: null means none; anything else is corrupt."""
        if value not in (None, [], {}):
            self.b.reject(
                f"{self.du.loc}.labels",
                "labels must be an object",
                record=value,
                record_kind="items",
            )

    def end_du(self) -> None:
        du = self.du
        loc = f"{du.loc}.labels"
        extra = {}
        for key, value in du.odd:
            if du.direct:
                extra[key] = value
            else:
                self.b.reject(
                    key_path(loc, key),
                    f"frame key {key!r} is not a number",
                    record=value,
                    record_kind="items",
                    native_id=key,
                )
        if du.direct or extra:
            du.labels_extra = extra
            objects = du.direct.get("objects") or []
            classes = du.direct.get("classifications") or []
            self._labels(du, du.item_id, None, objects, classes, loc, direct=True)
        if self.row.informed:
            self._finish_du(du)
        self.du = None

    def _frame(self, du: _Du, n: int, frame: Any, loc: str) -> None:
        if not isinstance(frame, dict):
            self.b.reject(
                loc, f"frame {n} is not an object", record=frame, record_kind="items", native_id=n
            )
            return
        item_id = f"{du.item_id}/{n}"
        other = {k: v for k, v in frame.items() if k not in _DIRECT}
        row = {"item_id": item_id, "frame_index": n, "sequence_id": self.row_key()}
        du.frames.append((n, row, other))
        du.frame_ids.append((n, item_id))
        if self.row.informed:
            self._finish_frames(du)
        self._labels(
            du,
            item_id,
            n,
            frame.get("objects") or [],
            frame.get("classifications") or [],
            loc,
            direct=False,
        )

    # -- finishing items -----------------------------------------------------------

    def _finish_du(self, du: _Du) -> None:
        if du.done:
            return
        du.done = True
        image = _image_like(self.row.fields, du.fields)
        if du.labels_extra is not None or not (image and du.frame_ids):
            self._du_item(du, image, du.labels_extra)
            du.has_item = True
        self._finish_frames(du)

    def _du_item(self, du: _Du, image: bool, direct: dict | None) -> None:
        d = du.fields
        meta: dict[str, Any] = {"data_unit": d}
        if direct:
            meta["labels"] = direct
        # Images of a group or sequence are numbered by their place in it.
        grouped = str(self.row.fields.get("data_type")) in _IMAGE_ROWS - {"image"}
        sequence = as_int(d.get("data_sequence")) if image and grouped else None
        self.b.item(
            item_id=du.item_id,
            native_id=_text(d.get("data_hash", du.key)),
            file_name=_text(d.get("data_title")),
            media_uri=_text(d.get("data_link")),
            media_type="image" if image else _media_type(self.row.fields, d),
            width=as_int(d.get("width")),
            height=as_int(d.get("height")),
            frame_index=sequence,
            sequence_id=self.row_key(),
            fps=optional_number(d.get("data_fps")),
            duration_s=optional_number(d.get("data_duration")),
            metadata=to_json(meta),
            **self._row_columns(),
        )

    def _finish_frames(self, du: _Du) -> None:
        if not du.frames:
            return
        d, f = du.fields, self.row.fields
        image = _image_like(f, d)
        columns = self._row_columns()
        title, link = _text(d.get("data_title")), _text(d.get("data_link"))
        for n, row, other in du.frames:
            slice_meta = other.get("metadata") if isinstance(other.get("metadata"), dict) else {}
            w = as_int(slice_meta.get("width")) or as_int(d.get("width"))
            h = as_int(slice_meta.get("height")) or as_int(d.get("height"))
            meta: dict[str, Any] = {}
            if image:
                meta = {"data_unit": d, "labels": "frames"}
                row.update(
                    native_id=_text(d.get("data_hash", du.key)),
                    file_name=title,
                    media_uri=link,
                    media_type="image",
                )
            else:
                uid = slice_meta.get("dicom_instance_uid")
                row.update(
                    parent_id=du.item_id,
                    native_id=_text(uid) if uid else f"{du.key}/{n}",
                    file_name=f"{title}/{n}" if title else None,
                    media_uri=_text(slice_meta.get("file_uri")) or link,
                    media_type="frame",
                )
            if other:
                meta["frame"] = other
            self.b.item(
                **row, width=w, height=h, metadata=to_json(meta) if meta else None, **columns
            )
        du.frames = []

    # -- labels --------------------------------------------------------------------

    def _next_ann(self, item_id: str) -> str:
        n = self.row.counters.get(item_id, 0)
        self.row.counters[item_id] = n + 1
        return f"{item_id}/{n}"

    def _labels(self, du, item_id, frame, objects, classes, loc, *, direct: bool) -> None:
        for key, values in (("objects", objects), ("classifications", classes)):
            if not isinstance(values, list):
                self.b.reject(f"{loc}.{key}", f"{key} must be a list", record=values)
                return
        for i, obj in enumerate(objects):
            self._object(du, item_id, frame, obj, f"{loc}.objects[{i}]", direct)
        for i, cls in enumerate(classes):
            self._classification(item_id, frame, cls, f"{loc}.classifications[{i}]")

    def _object(self, du, item_id, frame, obj, loc, direct: bool) -> None:
        b = self.b
        if not isinstance(obj, dict):
            b.reject(loc, "object is not an object", record=obj, record_kind="annotations")
            return
        native = obj.get("objectHash")
        try:
            shape = parse_object(obj)
        except Reject as exc:
            b.reject(loc, str(exc), record=obj, native_id=native, record_kind="annotations")
            return
        if direct and as_int(obj.get("frame")) is not None:
            frame = as_int(obj["frame"])
            shape.consumed += ("frame",)
        ann_id = self._next_ann(item_id)
        columns = common_columns(obj)
        native = _text(native)
        b.annotation(
            ann_id=ann_id,
            item_id=item_id,
            native_id=native,
            track_id=native,
            kind=shape.kind,
            frame_index=frame,
            **columns,
            **shape.columns,
        )
        for part, coords in enumerate(shape.parts):
            b.points(ann_id, item_id, coords, part=part)
        if shape.named:
            b.named_points(ann_id, item_id, shape.named)
        extra = leftovers(obj, ("objectHash", *shape.consumed), columns)
        if extra:
            b.attributes(ann_id, item_id, extra, source="object")
        if shape.layout:
            b.attributes(ann_id, item_id, shape.layout, source=LAYOUT)
        if native is not None:
            self.row.objects.setdefault(native, []).append((ann_id, item_id, du.key, frame))

    def _classification(self, item_id, frame, cls, loc) -> None:
        b = self.b
        if not isinstance(cls, dict):
            b.reject(loc, "classification is not an object", record=cls, record_kind="annotations")
            return
        ann_id = self._next_ann(item_id)
        native = _text(cls.get("classificationHash"))
        columns = common_columns(cls)
        b.annotation(
            ann_id=ann_id,
            item_id=item_id,
            native_id=native,
            track_id=native,
            kind="tag",
            frame_index=frame,
            **columns,
        )
        extra = leftovers(cls, ("classificationHash",), columns)
        if extra:
            b.attributes(ann_id, item_id, extra, source="classification")
        if native is not None:
            self.row.tags.setdefault(native, []).append((ann_id, item_id))

    # -- the size pass ------------------------------------------------------------------

    def _inform(self) -> None:
        """Complete this row from the size pass, and finish what it holds."""
        row = self.row
        if row.informed:
            return
        if self._scan is None:
            with self.task.source.open(self.task.member) as f:
                start, end, first = self.window or (0, None, 0)
                view = f if end is None else Window(f, start, end)
                self._scan = prescan(Events(view, self.task.uri), first)
        fields, dus = self._scan.get(row.index, ({}, {}))
        for k, v in fields.items():
            row.fields.setdefault(k, v)
        row.du_infos = dus
        row.informed = True
        for du in row.dus:
            for k, v in dus.get(du.key, {}).items():
                du.fields.setdefault(k, v)
            if du is self.du:
                self._finish_frames(du)
            else:
                self._finish_du(du)


def _sequence(du: _Du) -> float:
    n = as_int(du.fields.get("data_sequence"))
    return math.inf if n is None else n


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _image_like(row_fields: dict, du_fields: dict) -> bool:
    dt = str(du_fields.get("data_type") or "")
    if dt:
        return dt.startswith("image")
    return str(row_fields.get("data_type")) in _IMAGE_ROWS


def _media_type(row_fields: dict, du_fields: dict) -> str | None:
    kind = _MEDIA.get(str(row_fields.get("data_type")))
    if kind:
        return kind
    dt = str(du_fields.get("data_type") or "")
    if dt.endswith("dicom"):
        return "dicom"
    top = dt.split("/", 1)[0]
    return top if top in ("video", "audio", "text", "image") else None
