"""COCO writer: one JSON file per subset, streamed from the staging tables.

Images are written as they come; annotations are spooled to a temporary file
(memory-bounded) and appended after them, then the categories. Ids are stable:
an export's own integer ids are kept when they are unique, otherwise numbered
1..N in source order. Category ids follow the labels' integer `label_id`s when
they are consistent, otherwise 1..N in order of first appearance.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import orjson

from pipelines.builder import parse_attribute
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.masks import area as rle_area
from pipelines.masks import bbox as rle_bbox
from pipelines.masks import to_uncompressed
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output

_DIRECT = ("bbox", "polygon", "mask", "keypoints", "caption")
_AS_BOX = ("rotated_bbox", "polyline", "point", "points", "ellipse", "cuboid_2d")
_COLUMN_ATTRS = (("occluded", "occluded"), ("angle_deg", "rotation"), ("track_id", "track_id"),
                 ("keyframe", "keyframe"))  # fmt: skip


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    return [WriteTask("coco", subset=s, options=options) for s in staging.subsets()]


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    result = WriteResult()
    subset = task.subset
    where, params = ("i.subset IS NULL", []) if subset is None else ("i.subset = ?", [subset])
    image_ids = _keep_native(staging, f"SELECT native_id AS n FROM items i WHERE {where}", params)
    ann_ids = _keep_native(
        staging,
        "SELECT a.native_id AS n FROM annotations a JOIN items i USING (item_id) "
        f"WHERE {where} GROUP BY a.native_id, coalesce(a.group_id, a.ann_id)",
        params,
    )
    categories = _categories(staging)
    cat_ids = {c["name"]: c["id"] for c in categories}
    kinds = {
        r[0]
        for r in staging.con.execute(
            f"SELECT DISTINCT a.kind FROM annotations a JOIN items i USING (item_id) WHERE {where}",
            params,
        ).fetchall()
    }
    prefix = (
        "person_keypoints"
        if "keypoints" in kinds
        else ("captions" if kinds == {"caption"} else "instances")
    )
    name = f"annotations/{prefix}_{subset or 'default'}.json"
    next_ann = 0
    with out.open(name) as f, tempfile.TemporaryFile() as spool:
        f.write(b"{")
        for key, value in _head(staging).items():
            f.write(orjson.dumps(key) + b":" + orjson.dumps(value) + b",")
        f.write(b'"images":[')
        containers = _containers(staging)
        for n, group in enumerate(staging.iter_items(all_subsets=False, subset=subset)):
            if group.item["item_id"] in containers and not group.annotations:
                result.lose("video/series items written only as their frames")
                continue
            image_id = int(group.item["native_id"]) if image_ids else n + 1
            f.write((b"," if result.items else b"") + orjson.dumps(_image(group.item, image_id)))
            result.items += 1
            for ann in _annotations(group, image_id, cat_ids, result):
                next_ann += 1
                ann["id"] = int(ann["id"]) if ann_ids else next_ann
                spool.write((b"," if next_ann > 1 else b"") + orjson.dumps(ann))
        f.write(b'],"annotations":[')
        spool.seek(0)
        while block := spool.read(1 << 20):
            f.write(block)
        f.write(b'],"categories":' + orjson.dumps(categories) + b"}")
    result.files.append(name)
    return result


def _containers(staging: Staging) -> set[str]:
    """Items that other items name as their parent: a video, an image group, a series."""
    rows = staging.con.execute(
        "SELECT DISTINCT parent_id FROM items WHERE parent_id IS NOT NULL"
    ).fetchall()
    return {r[0] for r in rows}


def _keep_native(staging: Staging, sql: str, params: list) -> bool:
    """True when every native id is an integer and none repeats: keep them as they are."""
    total, distinct, ints = staging.con.execute(
        f"SELECT count(*), count(DISTINCT n), count(TRY_CAST(n AS BIGINT)) FROM ({sql})", params
    ).fetchone()
    return total > 0 and total == distinct == ints


def _head(staging: Staging) -> dict[str, Any]:
    rows = staging.con.execute(
        "SELECT key, value, value_type FROM attributes WHERE owner_kind = 'dataset' "
        "AND source = 'coco' ORDER BY filename, file_row_number"
    ).fetchall()
    head: dict[str, Any] = {}
    for key, value, vtype in rows:
        head.setdefault(key, parse_attribute(value, vtype))
    return head


def _categories(staging: Staging) -> list[dict[str, Any]]:
    props: dict[str, dict[str, Any]] = {}
    for owner, key, value, vtype in staging.con.execute(
        "SELECT owner_id, key, value, value_type FROM attributes WHERE owner_kind = 'label' "
        "AND source = 'coco' ORDER BY filename, file_row_number"
    ).fetchall():
        props.setdefault(owner.removeprefix("label:"), {}).setdefault(
            key, parse_attribute(value, vtype)
        )
    labels: dict[str, str | None] = {name: None for name in props}
    for label, label_id in staging.labels():
        labels.setdefault(label, label_id)
        if labels[label] is None:
            labels[label] = label_id
    given = [props.get(n, {}).get("id", lid) for n, lid in labels.items()]
    numeric = all(_is_int(g) for g in given) and len({int(g) for g in given}) == len(given)
    cats = []
    for n, (name, g) in enumerate(zip(labels, given, strict=True)):
        extra = {k: v for k, v in props.get(name, {}).items() if k != "id"}
        cats.append({"id": int(g) if numeric else n + 1, "name": name, **extra})
    if not any("keypoints" in c for c in cats):
        _keypoint_names(staging, cats)
    return sorted(cats, key=lambda c: c["id"]) if numeric else cats


def _keypoint_names(staging: Staging, cats: list[dict[str, Any]]) -> None:
    """Categories from other formats: keypoint names as the points name them."""
    rows = staging.con.execute(
        "SELECT a.label, p.idx, any_value(p.name) FROM points p JOIN annotations a USING (ann_id) "
        "WHERE a.kind = 'keypoints' GROUP BY a.label, p.idx ORDER BY a.label, p.idx"
    ).fetchall()
    names: dict[str, list[str]] = {}
    for label, _, name in rows:
        names.setdefault(label, []).append(name or "")
    for c in cats:
        if c["name"] in names:
            c["keypoints"] = names[c["name"]]
            c.setdefault("skeleton", [])


def _is_int(v: Any) -> bool:
    try:
        return int(v) == float(v)
    except (TypeError, ValueError):
        return False


def _image(item: dict[str, Any], image_id: int) -> dict[str, Any]:
    image = {"id": image_id, "width": item["width"], "height": item["height"],
             "file_name": item["file_name"] or item["native_id"]}  # fmt: skip
    if item.get("metadata"):
        image.update(orjson.loads(item["metadata"]))
    return image


def _annotations(
    group: ItemGroup, image_id: int, cat_ids: dict[str, int], result: WriteResult
) -> Iterator[dict[str, Any]]:
    merged: dict[Any, dict[str, Any]] = {}
    for a in group.annotations:
        kind = a["kind"]
        if a.get("outside"):
            result.lose("outside track shapes skipped")
            continue
        if kind not in _DIRECT and kind not in _AS_BOX:
            result.lose(f"{kind} annotations have no COCO form: skipped")
            continue
        if kind in _AS_BOX:
            result.lose(f"{kind} written as boxes")
        result.annotations += 1
        key = (a["group_id"], a["native_id"]) if a["group_id"] else a["ann_id"]
        ann = merged.get(key)
        if ann is None:
            ann = merged[key] = _base(a, image_id, cat_ids, group.attributes.get(a["ann_id"], []))
        _geometry(ann, a, group.points.get(a["ann_id"], []))
    for ann in merged.values():
        if "segmentation" not in ann and "caption" not in ann:
            ann["segmentation"] = []
        yield ann


def _base(a: dict[str, Any], image_id: int, cat_ids: dict[str, int], attrs: list) -> dict:
    ann: dict[str, Any] = {"id": a["native_id"] or 0, "image_id": image_id,
                           "category_id": cat_ids.get(a["label"], 0)}  # fmt: skip
    if a["bbox_x"] is not None:
        ann["bbox"] = [a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"]]
    if a["area"] is not None:
        ann["area"] = a["area"]
    elif a["bbox_w"] is not None and a["kind"] in ("bbox", "rotated_bbox", "ellipse"):
        ann["area"] = a["bbox_w"] * a["bbox_h"]
    ann["iscrowd"] = int(bool(a["iscrowd"]))
    if a["confidence"] is not None:
        ann["score"] = a["confidence"]
    named: dict[str, Any] = {}
    top: dict[str, Any] = {}
    layout: dict[str, Any] = {}
    for r in attrs:
        value = parse_attribute(r["value"], r["value_type"])
        source = r["source"] or ""
        if source.endswith("_layout") and source != "coco_layout":
            continue  # another format's spelling detail
        target = {"coco": top, "coco_layout": layout}.get(source, named)
        target[r["key"]] = value
    for column, key in _COLUMN_ATTRS:
        if a.get(column) is not None and key not in named:
            named[key] = a[column]
    if named:
        ann["attributes"] = named
    ann.update(top)
    if layout.get("rle") == "uncompressed":
        ann["_uncompressed"] = True
    return ann


def _geometry(ann: dict[str, Any], a: dict[str, Any], pts: list[dict[str, Any]]) -> None:
    kind = a["kind"]
    if kind == "polygon":
        parts: dict[int, list[float]] = {}
        for p in pts:
            parts.setdefault(p["part"], []).extend((p["x"], p["y"]))
        ann["segmentation"] = [parts[k] for k in sorted(parts)]
    elif kind == "mask":
        h, w = a["mask_h"], a["mask_w"]
        plain = ann.pop("_uncompressed", False)
        counts: Any = to_uncompressed(a["mask"], h, w) if plain else a["mask"]
        ann["segmentation"] = {"size": [h, w], "counts": counts}
        ann.setdefault("bbox", rle_bbox(a["mask"], h, w))
        ann.setdefault("area", rle_area(a["mask"], h, w))
    elif kind == "keypoints":
        flat: list[float] = []
        for p in sorted(pts, key=lambda p: p["idx"]):
            flat.extend((p["x"], p["y"], p["visibility"] if p["visibility"] is not None else 2))
        ann["keypoints"] = flat
        ann.setdefault("num_keypoints", sum(1 for v in flat[2::3] if v > 0))
    elif kind == "caption":
        ann["caption"] = a["text"]
