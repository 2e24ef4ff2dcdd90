"""AIMMO JSON: one document per labeled file (image, video, point-cloud frame, text).

Read from a folder or zip of such documents, or from single files; written
back as one document per item (_aimmo_write.py); masks use AIMMO's own
run-length strings (_aimmo_rle.py).

Mapping (docs/formats/aimmo.md has the full table):
- the document is one item: file_id → native_id, filename → file_name,
  parent_path + filename → media_uri, scene_id → sequence_id, metadata
  width/height/fps → columns; parent_path, last_modifier_id, last_workers,
  the original metadata object and unknown keys → the item's `metadata` JSON;
  tags / parent_tags → item attributes (absent when the document has none).
- the classification `label` is a `tag` annotation carrying the document's
  `attributes`.
- every entry of `annotations` is one annotation; its `attributes` become
  attribute rows (source "attributes"), fields without a column (pointCount,
  bound, ...) attribute rows with source "field".

Each document is parsed whole (orjson): item-level fields may follow the
annotations, and masks need the image size, so rows cannot be emitted before
the document ends. Documents are small; a folder is split into tasks of many
documents so staging does not get one Parquet file per labeled image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import orjson

from pipelines import masks
from pipelines.builder import BatchBuilder, is_finite, to_json
from pipelines.errors import ParseError
from pipelines.formats._aimmo_rle import decode_mask
from pipelines.formats._aimmo_write import TYPE_OF_KIND, plan_write, write
from pipelines.formats.base import Detection, Format, ReadOptions, ReadTask
from pipelines.schema import Batch
from pipelines.storage import Source
from pipelines.streamjson import ijson

NAME = "aimmo"
FILES_PER_TASK = 256
"""Documents per read task: enough to amortise a task, few enough to spread over workers."""

GT_KEYS = ("file_id", "scene_id", "filename", "parent_path", "last_modifier_id", "last_workers")
_ITEM_COLUMNS = ("annotations", "attributes", "label", "file_id", "scene_id", "filename")
_ITEM_ATTRS = ("tags", "parent_tags")
_ANN_COMMON = ("id", "type", "label", "attributes", "track_id")


class _Invalid(ValueError):
    """An annotation that breaks a rule of the format; it goes to rejects."""


@dataclass
class _Shape:
    kind: str
    row: dict[str, Any]
    used: tuple[str, ...]
    coords: list[float] | None = None
    named: list[dict[str, Any]] | None = None


# -- detection and planning ---------------------------------------------------


def _head_keys(head: bytes) -> tuple[set[str], str | None]:
    """Top-level keys and the first annotation's type, from a possibly cut-off head."""
    keys: set[str] = set()
    first_type = None
    try:
        for prefix, event, value in ijson.parse(BytesIO(head)):
            if prefix == "" and event == "map_key":
                keys.add(value)
            elif prefix == "annotations.item.type" and first_type is None:
                first_type = value
            elif prefix == "" and event == "start_array":
                return set(), None
    except (ijson.JSONError, ValueError):
        pass
    return keys, first_type


def _score(head: bytes) -> float:
    keys, first_type = _head_keys(head)
    if "annotations" not in keys or keys & {"images", "categories", "items", "info"}:
        return 0.0
    if keys & set(GT_KEYS):
        return 0.95
    known = set(TYPE_OF_KIND.values()) | {"poly_seg"}
    return 0.6 if first_type in known else 0.0


def detect(source: Source) -> Detection | None:
    if source.is_dir:
        members = list(source.glob(".json"))[:3]
        if not members:
            return None
        scores = [_score(source.head(m)) for m in members]
        if min(scores) > 0:
            return Detection(0.9, "JSON documents with annotations and AIMMO GT fields")
        if max(scores) > 0:
            return Detection(0.5, "some JSON documents look like AIMMO GT files")
        return None
    if not source.url.lower().endswith(".json"):
        return None
    score = _score(source.head())
    if not score:
        return None
    return Detection(score, "annotations with AIMMO GT fields (file_id, parent_path, ...)")


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    if not source.is_dir:
        return [ReadTask(NAME, source, options=options)]
    members = list(source.glob(".json"))
    per = FILES_PER_TASK
    if options.workers > 1:
        per = max(1, min(per, math.ceil(len(members) / (options.workers * 4))))
    return [
        ReadTask(NAME, source, context={"members": members[i : i + per]}, options=options)
        for i in range(0, len(members), per)
    ]


# -- reading -----------------------------------------------------------------


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    members = task.context.get("members") or [task.member]
    for member in members:
        _read_document(task, b, member)
        if b.full():
            yield b.flush()
    yield b.flush()


def _item_id(task: ReadTask, member: str) -> str:
    name = member or task.source.name
    return name[:-5] if name.lower().endswith(".json") else name


def _read_document(task: ReadTask, b: BatchBuilder, member: str) -> None:
    where = member or task.source.name
    with task.source.open(member) as f:
        raw = f.read()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        place = f"{where}: line {exc.lineno} column {exc.colno}"
        if not task.source.is_dir:
            raise ParseError(task.uri, place, f"invalid JSON: {exc.msg}") from exc
        # One broken document in a folder is one rejected item; the others still load.
        b.reject(
            place,
            f"invalid JSON: {exc.msg}",
            record=raw[:2000].decode(errors="replace"),
            record_kind="items",
        )
        return
    if not isinstance(doc, dict) or not (
        isinstance(doc.get("annotations"), list) or doc.keys() & set(GT_KEYS)
    ):
        b.reject(
            where,
            "not an AIMMO document (no annotations list or GT fields)",
            record=doc,
            record_kind="items",
        )
        return
    _map_document(b, doc, _item_id(task, member), where)


def _map_document(b: BatchBuilder, doc: dict, item_id: str, where: str) -> None:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    width, height = _int_or_none(meta.get("width")), _int_or_none(meta.get("height"))
    fps = meta.get("fps") if is_finite(meta.get("fps")) else None
    anns = doc.get("annotations") if isinstance(doc.get("annotations"), list) else []
    filename = doc.get("filename")
    parent = doc.get("parent_path")
    media_uri = None
    if isinstance(filename, str):
        media_uri = f"{parent.rstrip('/')}/{filename}" if isinstance(parent, str) else filename
    extra = {k: v for k, v in doc.items() if k not in _ITEM_COLUMNS and k not in _ITEM_ATTRS}
    for key, kind in (("annotations", list), ("attributes", dict)):
        if key in doc and not isinstance(doc[key], kind):
            extra[key] = doc[key]  # malformed but kept: nothing is dropped silently
    b.item(
        item_id=item_id,
        native_id=_text(doc.get("file_id")),
        file_name=filename if isinstance(filename, str) else None,
        media_uri=media_uri,
        media_type=_media_type(meta, anns),
        width=width,
        height=height,
        fps=float(fps) if fps is not None else None,
        sequence_id=_text(doc.get("scene_id")),
        metadata=to_json(extra) if extra else None,
    )
    for key in _ITEM_ATTRS:
        if key in doc:
            b.attribute(item_id, item_id, key, doc[key], owner_kind="item", source="tags")
    attrs = doc.get("attributes") if isinstance(doc.get("attributes"), dict) else {}
    if "label" in doc:
        tag_id = f"{item_id}/label"
        b.annotation(ann_id=tag_id, item_id=item_id, kind="tag", label=_text(doc["label"]))
        b.attributes(tag_id, item_id, attrs, source="classification")
    else:
        b.attributes(item_id, item_id, attrs, owner_kind="item", source="classification")
    for n, ann in enumerate(anns):
        _map_annotation(b, ann, item_id, n, f"{where}: annotations[{n}]", (width, height))


def _map_annotation(
    b: BatchBuilder, ann: Any, item_id: str, n: int, where: str, size: tuple
) -> None:
    if not isinstance(ann, dict):
        b.reject(where, "annotation is not an object", record=ann, record_kind="annotations")
        return
    native = _text(ann.get("id"))
    if native is not None:
        where = f"{where} (id {native})"
    typ = ann.get("type")
    mapper = _MAPPERS.get(typ) if isinstance(typ, str) else None
    try:
        if mapper is None:
            raise _Invalid(f"unknown annotation type {typ!r}")
        shape = mapper(ann, size)
    except _Invalid as exc:
        b.reject(where, str(exc), record=ann, record_kind="annotations", native_id=native)
        return
    ann_id = f"{item_id}/{n}"
    b.annotation(
        ann_id=ann_id,
        item_id=item_id,
        native_id=native,
        kind=shape.kind,
        label=_text(ann.get("label")),
        track_id=_text(ann.get("track_id")),
        **shape.row,
    )
    if shape.coords:
        b.points(ann_id, item_id, shape.coords)
    if shape.named:
        b.named_points(ann_id, item_id, shape.named)
    if isinstance(ann.get("attributes"), dict):
        b.attributes(ann_id, item_id, ann["attributes"], source="attributes")
    if typ != TYPE_OF_KIND[shape.kind]:
        b.attribute(ann_id, item_id, "type", typ, source="field")
    for key, value in ann.items():
        if key not in _ANN_COMMON and key not in shape.used:
            b.attribute(ann_id, item_id, key, value, source="field")
    if "attributes" in ann and not isinstance(ann["attributes"], dict):
        b.attribute(ann_id, item_id, "attributes", ann["attributes"], source="field")


# -- one mapper per annotation type ------------------------------------------


def _points(ann: dict, key: str = "points") -> list[tuple[float, float]]:
    value = ann.get(key)
    if not isinstance(value, list):
        raise _Invalid(f"{key} must be a list of [x, y] points")
    out = []
    for p in value:
        if not (isinstance(p, list) and len(p) == 2 and is_finite(*p)):
            raise _Invalid(f"{key} must be a list of [x, y] points; found {p!r}")
        out.append((float(p[0]), float(p[1])))
    return out


def _flat(pts: list[tuple[float, float]]) -> list[float]:
    return [c for p in pts for c in p]


def _box(pts: list[tuple[float, float]]) -> dict[str, float]:
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return {
        "bbox_x": min(xs),
        "bbox_y": min(ys),
        "bbox_w": max(xs) - min(xs),
        "bbox_h": max(ys) - min(ys),
        "units": "px",
    }


def _bbox(ann: dict, size: tuple) -> _Shape:
    pts = _points(ann)
    if len(pts) != 4:
        raise _Invalid(f"bbox has {len(pts)} points; it must have 4")
    row = _box(pts)
    x0, y0 = row["bbox_x"], row["bbox_y"]
    x1, y1 = x0 + row["bbox_w"], y0 + row["bbox_h"]
    # Corners in the documented order (TL, TR, BR, BL) are exactly the box; any
    # other corner list is kept verbatim as a field so a writer can restore it.
    regular = pts == [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return _Shape("bbox", row, ("points",) if regular else ())


def _obbox(ann: dict, size: tuple) -> _Shape:
    rect, degree = ann.get("rect"), ann.get("degree")
    if not (isinstance(rect, list) and len(rect) == 4 and is_finite(*rect)):
        raise _Invalid(f"obbox_v2 rect must be [x, y, w, h]; found {rect!r}")
    if not is_finite(degree):
        raise _Invalid(f"obbox_v2 degree must be a number; found {degree!r}")
    x, y, w, h = (float(v) for v in rect)
    row = {"bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h, "angle_deg": float(degree)}
    return _Shape("rotated_bbox", {**row, "units": "px"}, ("rect", "degree"))


def _keypoint(ann: dict, size: tuple) -> _Shape:
    kps = ann.get("keypoints")
    if not isinstance(kps, dict):
        raise _Invalid("keypoints must be an object of name: [x, y]")
    invisible = ann.get("invisible_keys", [])
    if not isinstance(invisible, list):
        raise _Invalid("invisible_keys must be a list of keypoint names")
    named = []
    for name, p in kps.items():
        if p is None:
            named.append({"name": name, "x": None, "y": None, "visibility": 0})
            continue
        if not (isinstance(p, list) and len(p) == 2 and is_finite(*p)):
            raise _Invalid(f"keypoint {name!r} must be [x, y]; found {p!r}")
        vis = 1 if name in invisible else 2
        named.append({"name": name, "x": float(p[0]), "y": float(p[1]), "visibility": vis})
    # Names in invisible_keys that are not keypoints cannot live on a vertex: keep the list.
    used = ("keypoints", "invisible_keys") if set(invisible) <= set(kps) else ("keypoints",)
    return _Shape("keypoints", {"units": "px"}, used, named=named)


def _vertices(kind: str, counts: Callable[[int], bool], rule: str) -> Callable:
    def mapper(ann: dict, size: tuple) -> _Shape:
        pts = _points(ann)
        if not counts(len(pts)):
            raise _Invalid(f"{ann['type']} has {len(pts)} points; {rule}")
        row: dict[str, Any] = {"units": "px"}
        if kind == "cuboid_plain":
            row = _box(pts[:4])  # the first four points are the box, the others side points
        return _Shape(kind, row, ("points",), coords=_flat(pts))

    return mapper


def _mask(ann: dict, size: tuple) -> _Shape:
    text, bound = ann.get("mask"), ann.get("bound")
    if not isinstance(text, str):
        raise _Invalid("segmentation_mask mask must be a run-length string")
    try:
        sub, left, top = decode_mask(text, bound)
    except ValueError as exc:
        raise _Invalid(f"segmentation_mask: {exc}") from exc
    width, height = size
    if not (width and height):
        width, height = left + sub.shape[1], top + sub.shape[0]
    counts, area = masks.encode_placed(sub, left, top, height, width)
    row: dict[str, Any] = {"mask": counts, "mask_h": height, "mask_w": width, "units": "px"}
    row["area"] = float(area)
    if row["area"]:
        x, y, w, h = masks.bbox(counts, height, width)
        row.update(bbox_x=x, bbox_y=y, bbox_w=w, bbox_h=h)
    return _Shape("mask", row, ("mask",))


def _vec3(ann: dict, key: str) -> list[float]:
    v = ann.get(key)
    if not (isinstance(v, list) and len(v) == 3 and is_finite(*v)):
        raise _Invalid(f"cuboid {key} must be three numbers; found {v!r}")
    return [float(c) for c in v]


def _cuboid(ann: dict, size: tuple) -> _Shape:
    row = {
        "size": _vec3(ann, "geometry"),
        "position": _vec3(ann, "position"),
        "rotation": _vec3(ann, "rotation"),
    }
    return _Shape("cuboid_3d", row, ("geometry", "position", "rotation"))


def _lasso(ann: dict, size: tuple) -> _Shape:
    indices = ann.get("indices")
    if not isinstance(indices, str):
        raise _Invalid("lasso indices must be a string")
    return _Shape("lasso", {"text": indices}, ("indices",))


def _whole(ann: dict, key: str, required: bool = True) -> int | None:
    v = ann.get(key)
    if v is None and not required:
        return None
    if not is_finite(v) or float(v) != int(v):
        raise _Invalid(f"{key} must be a whole number; found {v!r}")
    return int(v)


def _frame_range(ann: dict, size: tuple) -> _Shape:
    start, end = _whole(ann, "startFrame"), _whole(ann, "endFrame")
    if end < start:
        raise _Invalid(f"endFrame {end} is before startFrame {start}")
    t0, t1 = ann.get("startTime"), ann.get("endTime")
    for key, t in (("startTime", t0), ("endTime", t1)):
        if t is not None and not is_finite(t):
            raise _Invalid(f"{key} must be a number; found {t!r}")
    if t0 is not None and t1 is not None and t1 < t0:
        raise _Invalid(f"endTime {t1} is before startTime {t0}")
    row = {
        "frame_start": start,
        "frame_end": end,
        "time_start_s": None if t0 is None else float(t0),
        "time_end_s": None if t1 is None else float(t1),
    }
    return _Shape("time_range", row, ("startFrame", "endFrame", "startTime", "endTime"))


def _entity(ann: dict, size: tuple) -> _Shape:
    start, end = _whole(ann, "start"), _whole(ann, "end")
    if end <= start:
        raise _Invalid(f"entity end {end} must be greater than start {start}")
    text = ann.get("text")
    if text is not None and not isinstance(text, str):
        raise _Invalid("entity text must be a string")
    return _Shape(
        "text_span", {"text": text, "text_start": start, "text_end": end}, ("text", "start", "end")
    )


_MAPPERS: dict[str, Callable[[dict, tuple], _Shape]] = {
    "bbox": _bbox,
    "obbox_v2": _obbox,
    "keypoint": _keypoint,
    "polygon": _vertices("polygon", lambda n: n >= 3, "a polygon needs at least 3"),
    "poly_seg": _vertices("polygon", lambda n: n >= 3, "a poly_seg needs at least 3"),
    "polyline": _vertices("polyline", lambda n: n >= 2, "a polyline needs at least 2"),
    "cuboid_2d": _vertices("cuboid_2d", lambda n: n == 8, "a cuboid_2d must have 8"),
    "cuboid_plain": _vertices("cuboid_plain", lambda n: n in (4, 6), "it must have 4 or 6"),
    "segmentation_mask": _mask,
    "cuboid": _cuboid,
    "lasso": _lasso,
    "frameRange": _frame_range,
    "entity": _entity,
}


# -- small helpers -------------------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else to_json(value)


def _int_or_none(value: Any) -> int | None:
    return int(value) if is_finite(value) and float(value) == int(value) else None


def _media_type(meta: dict, anns: list) -> str | None:
    if "width" in meta or "height" in meta:
        return "image"
    if "fps" in meta:
        return "video"
    types = {a.get("type") for a in anns if isinstance(a, dict)}
    if types & {"cuboid", "lasso"}:
        return "point_cloud"
    if "entity" in types:
        return "text"
    if "frameRange" in types:
        return "video"
    return None


FORMAT = Format(
    name=NAME,
    description="AIMMO JSON: one document per labeled file (folder, zip or single files)",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
)
