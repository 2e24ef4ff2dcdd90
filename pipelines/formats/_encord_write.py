"""Encord writer: label rows rebuilt from the staging tables, one JSON list per subset.

Items are grouped into label rows by `sequence_id` (else their parent, else
themselves), in source order, so one row is in memory at a time. A row read
from Encord gets back its own top-level fields (attributes with source
"label_row", raw answers included) and each data unit its own fields (item
metadata "data_unit"); geometry comes from the tables, pixels divided by the
item's width and height. Rows from other formats get fields made up from the
columns and answers made from their attributes.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Iterable, Iterator
from datetime import timezone
from email.utils import format_datetime
from typing import Any

import orjson

from pipelines.builder import parse_attribute
from pipelines.formats._encord_shapes import KIND_SHAPE, LAYOUT, bitmask_from_mask
from pipelines.formats._fragments import (
    even_bounds,
    part_count,
    part_run,
    part_tasks,
    write_joined,
)
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output

_ANSWERS = ("object_answers", "classification_answers", "object_actions")
_OWN = ("object", "classification", LAYOUT, "label_row", *_ANSWERS)
"""Attribute sources the writer places itself; any other source is an answer."""
_ROW_TYPES = {
    "video": "video",
    "dicom": "dicom",
    "nifti": "nifti",
    "audio": "audio",
    "text": "plain_text",
    "html": "html",
    "group": "group",
}


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    """A file per subset, written in runs of items; a label row's items stay in one run."""
    tasks = []
    for subset, items in staging.subset_sizes().items():
        parts = part_count(items, options.workers)
        tasks += part_tasks("encord", subset, options, _row_bounds(staging, subset, items, parts))
    return tasks


_ROW_STARTS = """
WITH keyed AS (
    SELECT row_number() OVER w - 1 AS pos,
        coalesce(nullif(sequence_id, ''), nullif(parent_id, ''), item_id) AS k
    FROM items WHERE subset IS NOT DISTINCT FROM $subset
    WINDOW w AS (ORDER BY filename, file_row_number)),
starts AS (
    SELECT pos FROM (SELECT pos, k, lag(k) OVER (ORDER BY pos) AS prev FROM keyed)
    WHERE prev IS DISTINCT FROM k)
SELECT (SELECT min(pos) FROM starts WHERE pos >= t) FROM unnest($targets) AS u(t)
"""
"""For each target position, the first item at or after it that begins a label row
(`_rows`' key, in the subset's source order)."""


def _row_bounds(staging: Staging, subset: str | None, items: int, parts: int) -> list[int]:
    """`part_tasks` bounds near even runs, each moved on to where a label row begins."""
    if parts == 1:
        return [0, items]
    targets = even_bounds(items, parts)[1:-1]
    found = staging.con.execute(_ROW_STARTS, {"subset": subset, "targets": targets}).fetchall()
    return [0, *sorted({pos for (pos,) in found if pos is not None}), items]


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    result = WriteResult()
    name = f"{task.subset}.json" if task.subset else "label_rows.json"
    groups = staging.iter_items(
        all_subsets=False, subset=task.subset, part_kinds=_PARTS, positions=part_run(task)
    )
    rows = (orjson.dumps(_RowWriter(row, result).build()) for row in _rows(groups))
    joined = write_joined(task, out, name, rows, lambda: (b"[", b"\n]\n"), lead=b"\n", sep=b",\n")
    if joined is not None:
        result.files.append(name)
    return result


def _rows(groups: Iterable[ItemGroup]) -> Iterator[list[ItemGroup]]:
    row: list[ItemGroup] = []
    key = None
    for g in groups:
        k = g.item["sequence_id"] or g.item["parent_id"] or g.item["item_id"]
        if row and k != key:
            yield row
            row = []
        key = k
        row.append(g)
    if row:
        yield row


def _iso(dt: Any) -> str | None:
    return None if dt is None else dt.isoformat()


def _rfc(dt: Any) -> str | None:
    """Encord's own spelling of object dates: "Mon, 11 Jul 2022 17:10:51 GMT"."""
    if dt is None:
        return None
    utc = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    return format_datetime(utc, usegmt=True)


def _slug(name: Any) -> str:
    return re.sub(r"\s+", "_", str(name).strip().lower())


def _hash(text: str) -> str:
    """An 8-character id in Encord's style, stable for the same text."""
    return base64.b64encode(hashlib.blake2b(text.encode(), digest_size=6).digest()).decode()


def _answers_of(value: Any) -> Any:
    if isinstance(value, list):
        return [{"name": str(v), "value": _slug(v)} for v in value]
    return value


class _RowWriter:
    def __init__(self, groups: list[ItemGroup], result: WriteResult) -> None:
        self.groups = groups
        self.result = result
        self.fields: dict[str, Any] = {}
        for g in groups:
            rows = [
                r for r in g.attributes.get(g.item["item_id"], []) if r["source"] == "label_row"
            ]
            if rows:
                self.fields = {r["key"]: parse_attribute(r["value"], r["value_type"]) for r in rows}
                break
        raw = all(k in self.fields for k in _ANSWERS)
        # Without the export's own answers, they are rebuilt from the attributes.
        self.built: dict[str, dict[str, Any]] | None = None if raw else {k: {} for k in _ANSWERS}
        self._acts: dict[tuple, dict[str, Any]] = {}

    def build(self) -> dict[str, Any]:
        ids = {g.item["item_id"] for g in self.groups}
        kids: dict[str, list[ItemGroup]] = {}
        tops = []
        for g in self.groups:
            parent = g.item["parent_id"]
            if parent and parent in ids:
                kids.setdefault(parent, []).append(g)
            else:
                tops.append(g)
        units: dict[str, dict[str, Any]] = {}
        for n, g in enumerate(tops):
            key, du = self._data_unit(g, n, kids.get(g.item["item_id"], []))
            if key in units and isinstance(units[key].get("labels"), dict):
                units[key]["labels"].update(du["labels"])  # frames of one image, split in items
            else:
                units[key] = du
        self.result.items += len(self.groups)
        fields = self.fields or self._made_up(tops, kids)
        if self.built is not None:
            for k in _ANSWERS:
                fields.setdefault(k, self.built[k])
        row: dict[str, Any] = {}
        for k, v in fields.items():
            if k in (*_ANSWERS, "label_status") and "data_units" not in row:
                row["data_units"] = units
            row[k] = v
        row.setdefault("data_units", units)
        return row

    def _made_up(self, tops: list[ItemGroup], kids: dict) -> dict[str, Any]:
        first = tops[0].item
        media = {g.item["media_type"] for g in tops}
        data_type = next((_ROW_TYPES[m] for m in media if m in _ROW_TYPES), None)
        if data_type is None:
            data_type = "video" if kids else ("img_group" if len(tops) > 1 else "image")
        return {
            "label_hash": first["sequence_id"] or first["item_id"],
            "data_hash": first["native_id"] or first["item_id"],
            "data_title": first["file_name"],
            "data_type": data_type,
            "created_at": _iso(first["created_at"]),
            "last_edited_at": _iso(first["edited_at"]),
            "label_status": first["label_status"],
        }

    # -- data units ----------------------------------------------------------------

    def _data_unit(self, g: ItemGroup, n: int, frames: list[ItemGroup]) -> tuple[str, dict]:
        item = g.item
        meta = _metadata(item)
        du = dict(meta.get("data_unit") or {})
        if not du:
            du = {
                "data_hash": item["native_id"] or item["item_id"],
                "data_title": item["file_name"],
                "data_type": item["media_type"],
                "data_sequence": n,
            }
            if item["media_uri"]:
                du["data_link"] = item["media_uri"]
            if item["fps"] is not None:
                du["data_fps"] = item["fps"]
            if item["duration_s"] is not None:
                du["data_duration"] = item["duration_s"]
        if item["width"] is not None and item["height"] is not None:
            du["width"], du["height"] = item["width"], item["height"]
        labels: dict[str, Any] = {}
        for kid in frames:
            labels[str(kid.item["frame_index"])] = self._frame(
                kid, _metadata(kid.item).get("frame")
            )
        if meta.get("labels") == "frames":
            frame = item["frame_index"] if item["frame_index"] is not None else 0
            labels[str(frame)] = self._frame(g, meta.get("frame"))
        elif g.annotations or not frames:
            extra = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
            labels.update(self._frame(g, extra, direct=True))
        du["labels"] = labels
        return str(du.get("data_hash") or item["item_id"]), du

    def _frame(self, g: ItemGroup, extra: Any, direct: bool = False) -> dict[str, Any]:
        item = g.item
        size = (item["width"], item["height"])
        objects, classes = [], []
        for a in g.annotations:
            attrs = g.attributes.get(a["ann_id"], [])
            if a["kind"] == "tag" and not _ranged(a):
                classes.append(self._classification(a, attrs))
            elif a["kind"] in KIND_SHAPE:
                obj = self._object(a, g, attrs, size, direct)
                if obj is not None:
                    objects.append(obj)
            elif _ranged(a):
                self._ranged(a, attrs)
            else:
                self.result.lose(f"{a['kind']} annotations have no Encord shape")
        frame: dict[str, Any] = {"objects": objects, "classifications": classes}
        if isinstance(extra, dict):
            frame.update(extra)
        return frame

    # -- objects and classifications -------------------------------------------------

    def _common(self, a: dict[str, Any], out: dict[str, Any]) -> None:
        for key, value in (
            ("confidence", a["confidence"]),
            ("manualAnnotation", a["manual"]),
            ("createdBy", a["created_by"]),
            ("createdAt", _rfc(a["created_at"])),
            ("lastEditedBy", a["edited_by"]),
            ("lastEditedAt", _rfc(a["edited_at"])),
        ):
            if value is not None:
                out[key] = value

    def _object(self, a, g: ItemGroup, attrs, size, direct: bool) -> dict[str, Any] | None:
        kind = a["kind"]
        if a["units"] == "px" and kind != "mask" and not (size[0] and size[1]):
            self.result.lose("annotations on items without a size")
            return None
        sx, sy = (1.0, 1.0) if a["units"] == "norm" or kind == "mask" else size
        h = a["track_id"] or a["native_id"] or _hash(a["ann_id"])
        obj: dict[str, Any] = {
            "name": a["label"],
            "featureHash": a["label_id"],
            "objectHash": h,
            "shape": KIND_SHAPE[kind],
        }
        self._common(a, obj)
        if direct and a["frame_index"] is not None:
            obj["frame"] = a["frame_index"]
        layout = {
            r["key"]: parse_attribute(r["value"], r["value_type"])
            for r in attrs
            if r["source"] == LAYOUT
        }
        try:
            obj.update(_geometry(a, g, layout, sx, sy))
        except (TypeError, ValueError):
            self.result.lose(f"{kind} annotations without their coordinates")
            return None
        self._extras(obj, attrs, "object")
        self.result.annotations += 1
        if self.built is not None:
            self._built_answers("object_answers", "objectHash", h, attrs)
            self._built_actions(h, attrs)
        return obj

    def _classification(self, a: dict[str, Any], attrs: list[dict]) -> dict[str, Any]:
        h = a["track_id"] or a["native_id"] or _hash(a["ann_id"])
        out = {"name": a["label"], "featureHash": a["label_id"], "classificationHash": h}
        self._common(a, out)
        self._extras(out, attrs, "classification")
        self.result.annotations += 1
        if self.built is not None:
            self._built_answers("classification_answers", "classificationHash", h, attrs)
        return out

    def _extras(self, out: dict[str, Any], attrs: list[dict], source: str) -> None:
        for r in attrs:
            if r["source"] == source:
                out[r["key"]] = parse_attribute(r["value"], r["value_type"])

    # -- answers -----------------------------------------------------------------------

    def _ranged(self, a: dict[str, Any], attrs: list[dict]) -> None:
        """A label that lives in the row's answers (audio, text, frame spans)."""
        self.result.annotations += 1
        if self.built is None:
            return  # the export's own answers hold it
        h = a["track_id"] or a["native_id"] or _hash(a["ann_id"])
        tag = a["kind"] == "tag"
        target = "classification_answers" if tag else "object_answers"
        entry = self._built_answers(target, "classificationHash" if tag else "objectHash", h, attrs)
        entry.setdefault("featureHash", a["label_id"])
        self._common(a, entry)
        span = _span(a)
        if span is not None:
            entry.setdefault("range", []).append(span)
        html = [r for r in attrs if r["key"] == "range_html"]
        if html:
            part = parse_attribute(html[0]["value"], html[0]["value_type"])
            entry.setdefault("range", [])
            entry.setdefault("range_html", []).append(part)

    def _built_answers(self, target: str, id_key: str, h: str, attrs: list[dict]) -> dict:
        entries = self.built[target]
        if h in entries:
            return entries[h]
        answers = [
            {
                "name": r["key"],
                "value": _slug(r["key"]),
                "answers": _answers_of(parse_attribute(r["value"], r["value_type"])),
                "manualAnnotation": True,
            }
            for r in attrs
            if r["source"] not in _OWN or r["source"] == target
            if r["key"] != "range_html"
        ]
        entries[h] = {id_key: h, "classifications": answers}
        return entries[h]

    def _built_actions(self, h: str, attrs: list[dict]) -> None:
        """Dynamic answers, one per frame in the tables, back to actions with frame ranges."""
        for r in attrs:
            if r["source"] != "object_actions" or r["frame_index"] is None:
                continue
            key = (h, r["key"], r["value"])
            act = self._acts.get(key)
            if act is None:
                value = parse_attribute(r["value"], r["value_type"])
                act = {
                    "name": r["key"],
                    "value": _slug(r["key"]),
                    "answers": _answers_of(value),
                    "range": [],
                    "dynamic": True,
                    "manualAnnotation": True,
                }
                self._acts[key] = act
                entry = self.built["object_actions"].setdefault(h, {"objectHash": h, "actions": []})
                entry["actions"].append(act)
            _extend(act["range"], r["frame_index"])


def _extend(ranges: list[list[int]], frame: int) -> None:
    if ranges and ranges[-1][0] <= frame <= ranges[-1][1]:
        return
    if ranges and frame == ranges[-1][1] + 1:
        ranges[-1][1] = frame
    else:
        ranges.append([frame, frame])


def _ranged(a: dict[str, Any]) -> bool:
    return a["kind"] in ("time_range", "text_span") or (
        a["kind"] == "tag" and (a["frame_start"] is not None or a["time_start_s"] is not None)
    )


def _span(a: dict[str, Any]) -> list[float] | None:
    if a["time_start_s"] is not None:
        return [round(a["time_start_s"] * 1000), round(a["time_end_s"] * 1000)]
    if a["text_start"] is not None:
        return [a["text_start"], a["text_end"]]
    if a["frame_start"] is not None:
        return [a["frame_start"], a["frame_end"]]
    return None


def _metadata(item: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = orjson.loads(item["metadata"]) if item["metadata"] else {}
    except orjson.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


_PARTS = ("polygon", "polyline", "point")
"""Shapes whose vertices come as one array per part (`ItemGroup.parts`), not a dict per
vertex: most of an Encord write was fetching those dicts (staged 200 MB, see `write`)."""


def _geometry(a, g: ItemGroup, layout, sx: float, sy: float) -> dict[str, Any]:
    kind = a["kind"]
    if kind in ("bbox", "rotated_bbox"):
        box = {
            "x": a["bbox_x"] / sx,
            "y": a["bbox_y"] / sy,
            "w": a["bbox_w"] / sx,
            "h": a["bbox_h"] / sy,
        }
        if kind == "bbox":
            return {"boundingBox": box}
        return {"rotatableBoundingBox": {**box, "theta": a["angle_deg"] or 0.0}}
    if kind == "mask":
        return {"bitmask": bitmask_from_mask(a["mask"], a["mask_h"], a["mask_w"])}
    if kind == "keypoints":
        pts = g.points.get(a["ann_id"], [])
        if not pts:
            raise ValueError("no vertices")
        extras = layout.get("skeleton") or []
        skeleton = {}
        for i, p in enumerate(pts):
            point = {"x": p["x"] / sx, "y": p["y"] / sy, "name": p["name"]}
            if i < len(extras) and isinstance(extras[i], dict):
                point.update(extras[i])
            elif p["visibility"] == 0:
                point["invisible"] = True
            elif p["visibility"] == 1:
                point["occluded"] = True
            skeleton[str(i)] = point
        return {"skeleton": skeleton}
    parts = g.parts.get(a["ann_id"], {})
    if not parts:
        raise ValueError("no vertices")
    # Divided as each coordinate was (x / sx): the same floats. A vertex without
    # coordinates comes as NaN.
    flat = [(parts[k].reshape(-1, 2) / (sx, sy)).ravel().tolist() for k in sorted(parts)]
    # A NaN makes the sum NaN (so does inf - inf: then the vertices are looked at).
    if any(math.isnan(sum(f)) and any(map(math.isnan, f)) for f in flat):
        raise ValueError("a vertex without coordinates")
    first = flat[0]
    xy = zip(_vertex_keys(len(first) // 2), first[0::2], first[1::2], strict=True)
    vertices = {key: {"x": x, "y": y} for key, x, y in xy}
    if kind == "point":
        return {"point": {"0": vertices["0"]}}
    if kind == "polyline":
        return {"polyline": vertices}
    counts = layout.get("polygon_rings") or [1] * len(flat)
    polygons, at = [], 0
    for n in counts:
        polygons.append(flat[at : at + n])
        at += n
    return {"polygon": layout.get("polygon") or vertices, "polygons": polygons}


_KEYS: list[str] = []


def _vertex_keys(n: int) -> list[str]:
    """Encord's keys of `n` vertices, "0" to str(n - 1), spelt once a process."""
    if n > len(_KEYS):
        _KEYS.extend(map(str, range(len(_KEYS), n)))
    return _KEYS[:n]
