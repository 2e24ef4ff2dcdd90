"""AIMMO JSON writer: one GT document per item, `<item_id>.json`, sharded by item.

An item read from AIMMO is written back as it came (GT fields from its
`metadata` JSON, other type spellings and extra fields from attribute rows of
source "field"); items from other formats get the fields the staging tables
can fill. Masks are re-encoded as AIMMO run strings over their bound.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from pipelines.docwrite import (
    attribute_dict,
    attribute_rows,
    by_source,
    check_stage,
    item_path,
    json_number,
    json_pairs,
    select_stage,
    shard_tasks,
)
from pipelines.formats._aimmo_rle import encode_mask
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output

TYPE_OF_KIND = {
    "bbox": "bbox",
    "rotated_bbox": "obbox_v2",
    "keypoints": "keypoint",
    "polygon": "polygon",
    "polyline": "polyline",
    "cuboid_2d": "cuboid_2d",
    "cuboid_plain": "cuboid_plain",
    "mask": "segmentation_mask",
    "cuboid_3d": "cuboid",
    "lasso": "lasso",
    "time_range": "frameRange",
    "text_span": "entity",
}
"""The AIMMO type written for each kind; a reader keeps other spellings (poly_seg) as a field."""
_SPELLINGS = {"polygon": ("poly_seg",)}
_VERTEX_RULES: dict[str, tuple[Callable[[int], bool], str]] = {
    "polygon": (lambda n: n >= 3, "polygons with fewer than 3 points not written"),
    "polyline": (lambda n: n >= 2, "polylines with fewer than 2 points not written"),
    "cuboid_2d": (lambda n: n == 8, "cuboid_2d without 8 points not written"),
    "cuboid_plain": (lambda n: n in (4, 6), "cuboid_plain without 4 or 6 points not written"),
}
_NOT_ATTRIBUTES = ("field", "itag", "shape", "tags")
"""Attribute sources that are bookkeeping of a format, not the annotation's own attributes."""
_WHOLE = re.compile(r"-?\d+")


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    check_stage(options.prefer_stage)
    return shard_tasks("aimmo", options)


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    res = WriteResult()
    groups = staging.iter_items(shard=task.shard, shards=task.shards, part_kinds=_VERTEX_RULES)
    for group in groups:
        doc = document(group, task.options.prefer_stage, res)
        rel = item_path(group.item["item_id"], ".json")
        with out.open(rel) as f:
            f.write(orjson.dumps(doc))
        res.files.append(rel)
        res.items += 1
    return res


def document(group: ItemGroup, prefer_stage: str | None, res: WriteResult) -> dict[str, Any]:
    """One item as an AIMMO GT document."""
    item = group.item
    own = item["source_format"] == "aimmo"
    extra = orjson.loads(item["metadata"]) if own and item["metadata"] else {}
    anns, _ = select_stage(group, prefer_stage)
    if len(anns) < len(group.annotations):
        res.lose(
            "annotations of other review stages not written", len(group.annotations) - len(anns)
        )
    item_rows = attribute_rows(group, item["item_id"])
    doc: dict[str, Any] = {"annotations": [], "attributes": {}}
    for n, a in enumerate(anns):
        rows = attribute_rows(group, a["ann_id"])
        if a["kind"] == "tag":
            if "label" in doc:
                res.lose("tags beyond the first not written (AIMMO has one classification label)")
                continue
            doc["label"] = a["label"]
            doc["attributes"] = _own_attributes(rows)
            res.annotations += 1
            continue
        # `_vertices` takes its kinds' parts as arrays; other geometry, vertex rows.
        if a["kind"] in _VERTEX_RULES:
            vertices: Any = group.parts.get(a["ann_id"], {})
        else:
            vertices = group.points.get(a["ann_id"], [])
        shapes = _annotation(a, n, rows, vertices, res)
        if shapes:
            doc["annotations"].extend(shapes)
            res.annotations += 1
    doc["attributes"].update(
        attribute_dict([r for r in item_rows if r["source"] not in _NOT_ATTRIBUTES])
    )
    doc["file_id"] = item["native_id"] or item["item_id"]
    if item["sequence_id"]:
        doc["scene_id"] = item["sequence_id"]
    media = item["media_uri"]
    filename = item["file_name"] or (posixpath.basename(media) if media else None)
    if filename:
        doc["filename"] = filename
    if own:
        doc.update(extra)
    else:
        if media and posixpath.dirname(media):
            doc["parent_path"] = posixpath.dirname(media)
        doc["metadata"] = _metadata(item)
    for key, value in attribute_dict(by_source(item_rows, "tags")).items():
        doc[key] = value
    return doc


def _metadata(item: dict[str, Any]) -> dict[str, Any]:
    if item["width"] and item["height"]:
        return {"height": item["height"], "width": item["width"]}
    if item["fps"]:
        return {"fps": json_number(item["fps"])}
    return {}


def _own_attributes(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return attribute_dict([r for r in rows if r["source"] not in _NOT_ATTRIBUTES])


def _annotation(
    a: dict[str, Any], n: int, rows: list, pts: list, res: WriteResult
) -> list[dict[str, Any]]:
    """One annotation as AIMMO entries (a multi-part polygon becomes one per part)."""
    kind = a["kind"]
    fields = attribute_dict(by_source(rows, "field"))
    typ = TYPE_OF_KIND.get(kind)
    if kind in ("point", "points"):
        typ = "keypoint"
        res.lose(f"{kind} annotations written as keypoints")
    if typ is None:
        res.lose(f"{kind} annotations not written (no AIMMO type)")
        return []
    spelling = fields.pop("type", None)
    if spelling in _SPELLINGS.get(kind, ()):
        typ = spelling
    geometry = _GEOMETRY.get(typ, _vertices)(a, pts, fields, res)
    if not geometry:
        return []
    attrs = _own_attributes(rows)
    text = a["text"]
    # Text on a shape (OCR) has no AIMMO field; keep it unless an attribute holds it.
    if text is not None and kind not in ("lasso", "text_span") and text not in attrs.values():
        attrs.setdefault("text", text)
    out = []
    for part, geo in enumerate(geometry):
        entry: dict[str, Any] = {"id": a["native_id"] or str(n), "type": typ}
        if part:
            entry["id"] = f"{entry['id']}#{part}"
        entry.update(geo)
        if a["label"] is not None:
            entry["label"] = a["label"]
        entry["attributes"] = attrs
        track = a["track_id"]
        if track is not None:
            entry["track_id"] = int(track) if _WHOLE.fullmatch(track) else track
        for key, value in fields.items():
            entry.setdefault(key, value)
        out.append(entry)
    if len(out) > 1:
        res.lose("multi-part shapes written as one AIMMO annotation per part")
    return out


def _xy(p: dict[str, Any]) -> list[Any] | None:
    if p["x"] is None or p["y"] is None:
        return None
    return [json_number(p["x"]), json_number(p["y"])]


def _box(a: dict[str, Any]) -> tuple[Any, Any, Any, Any] | None:
    vals = (a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"])
    return None if None in vals else vals


def _bbox(a, pts, fields, res) -> list[dict[str, Any]]:
    corners = fields.pop("points", None)
    if isinstance(corners, list) and len(corners) == 4:
        return [{"points": corners}]
    box = _box(a)
    if box is None:
        res.lose("boxes without coordinates not written")
        return []
    x0, y0, w, h = box
    x1, y1 = (json_number(x0 + w), json_number(y0 + h))
    x0, y0 = json_number(x0), json_number(y0)
    return [{"points": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}]


def _obbox(a, pts, fields, res) -> list[dict[str, Any]]:
    box = _box(a)
    if box is None:
        res.lose("rotated boxes without coordinates not written")
        return []
    degree = a["angle_deg"] or 0.0
    while degree > 270:  # AIMMO's range is -89.5 ≤ degree ≤ 270
        degree -= 360
    while degree < -89.5:
        degree += 360
    return [{"rect": [json_number(v) for v in box], "degree": json_number(degree)}]


def _keypoint(a, pts, fields, res) -> list[dict[str, Any]]:
    keypoints = {(p["name"] if p["name"] is not None else str(p["idx"])): _xy(p) for p in pts}
    invisible = [p["name"] or str(p["idx"]) for p in pts if p["visibility"] == 1]
    geo: dict[str, Any] = {"keypoints": keypoints}
    if "invisible_keys" in fields:
        geo["invisible_keys"] = fields.pop("invisible_keys")
    elif invisible:
        geo["invisible_keys"] = invisible
    if any(p["visibility"] == 0 and p["x"] is not None for p in pts):
        res.lose("unlabeled keypoints written as visible")
    return [geo]


def _vertices(a, parts: dict[int, np.ndarray], fields, res) -> list[dict[str, Any]]:
    rule, message = _VERTEX_RULES[a["kind"]]
    out = []
    for xy in parts.values():
        ring: list[Any] = json_pairs(xy)
        missing = np.isnan(xy).reshape(-1, 2).any(axis=1)
        if missing.any():  # a vertex without coordinates is null, as `_xy` writes it
            ring = [None if m else pair for pair, m in zip(ring, missing.tolist(), strict=True)]
        if rule(len(ring)):
            out.append({"points": ring})
        else:
            res.lose(message)
    return out


def _mask(a, pts, fields, res) -> list[dict[str, Any]]:
    if a["mask"] is None or not a["mask_h"] or not a["mask_w"]:
        res.lose("masks without pixels not written")
        return []
    text, bound = encode_mask(a["mask"], a["mask_h"], a["mask_w"], fields.pop("bound", None))
    return [{"mask": text, "bound": bound}]


def _cuboid(a, pts, fields, res) -> list[dict[str, Any]]:
    if a["size"] is None or a["position"] is None or a["rotation"] is None:
        res.lose("3D cuboids without size, position or rotation not written")
        return []
    vec = {k: [json_number(v) for v in a[c]] for k, c in _CUBOID.items()}
    return [vec]


_CUBOID = {"geometry": "size", "position": "position", "rotation": "rotation"}


def _lasso(a, pts, fields, res) -> list[dict[str, Any]]:
    return [{"indices": a["text"] or ""}]


def _frame_range(a, pts, fields, res) -> list[dict[str, Any]]:
    cols = {
        "startFrame": a["frame_start"],
        "endFrame": a["frame_end"],
        "startTime": a["time_start_s"],
        "endTime": a["time_end_s"],
    }
    return [{k: json_number(v) for k, v in cols.items() if v is not None}]


def _entity(a, pts, fields, res) -> list[dict[str, Any]]:
    return [{"text": a["text"], "start": a["text_start"], "end": a["text_end"]}]


_GEOMETRY: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "bbox": _bbox,
    "obbox_v2": _obbox,
    "keypoint": _keypoint,
    "segmentation_mask": _mask,
    "cuboid": _cuboid,
    "lasso": _lasso,
    "frameRange": _frame_range,
    "entity": _entity,
}
