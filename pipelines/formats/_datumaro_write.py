"""Writing Datumaro 1.0 JSON: `annotations/<subset>.json`, one file and one task per subset.

Every file carries the same categories (Datumaro wants them in each): the
labels read from Datumaro or CVAT first (with parents, colours, keypoint
names), then every other label the annotations use. Items are streamed out
one by one. Keypoints whose label has child labels are written as a
`skeleton` with `elements`; other keypoints as `points` with visibility.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipelines.builder import parse_attribute
from pipelines.formats._fragments import (
    even_bounds,
    part_count,
    part_run,
    part_tasks,
    write_joined,
)
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.grouping import IntGroups, int_like
from pipelines.skeleton import point_owner
from pipelines.staging import ItemGroup, Staging, splitext_root_sql

SOURCE = "datumaro"
FIELD_SOURCE = "datumaro_field"
LAYOUT_SOURCES = ("cvat_xml",)
"""Attribute sources that record another format's layout, not the annotation's meaning
(besides any source ending in `_layout`)."""
POINT_COLUMNS = ("part", "idx", "x", "y", "name", "visibility")
_PARTS = ("polygon", "polyline")
"""Shapes whose vertices come as one array per part (`ItemGroup.parts`), not a dict
per vertex: staging 200 MB → Datumaro, see `write`."""
_SHAPES_WITH_Z = ("bbox", "polygon", "polyline", "points", "mask", "skeleton", "ellipse")


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    """A file per subset, written in runs of items where no two items would want the same
    id (`_Items` numbers the later ones: that takes every id before them)."""
    cats = categories(staging)
    stored = _dataset_values(staging)
    head = {"info": stored.get("info", {})}
    head.update(
        {k: v for k, v in stored.items() if k not in ("info", "categories", "label_attributes")}
    )
    head["categories"] = cats.json
    settings = {"_categories": cats, "_head": orjson.dumps(head)[:-1] + b',"items":['}
    tasks = []
    for subset, items in (staging.subset_sizes() or {None: 0}).items():
        repeated = staging.scalar(_REPEATED_IDS, [subset])
        parts = 1 if repeated else part_count(items, options.workers)
        bounds = even_bounds(items, parts)
        numbered = bool(repeated)
        tasks += part_tasks("datumaro", subset, options, bounds, _numbered=numbered, **settings)
    return tasks


_REPEATED_IDS = f"""
SELECT count(*) - count(DISTINCT CASE
    WHEN source_format = '{SOURCE}' AND coalesce(native_id, '') <> '' THEN native_id
    ELSE coalesce(nullif({splitext_root_sql("file_name")}, ''),
        nullif(native_id, ''), item_id) END)
FROM items WHERE subset IS NOT DISTINCT FROM ?
"""
"""How many of a subset's items want an id another item wants (`wanted_id`)."""


@dataclass
class Categories:
    json: dict[str, Any]
    index: dict[str, int]
    children: dict[str, dict[str, int]] = field(default_factory=dict)
    """Skeleton label → element name → its child label's id."""


def _dataset_values(staging: Staging) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value, vtype in staging.con.execute(
        "SELECT key, value, value_type FROM attributes WHERE owner_kind = 'dataset' "
        f"AND source = '{SOURCE}' ORDER BY filename, file_row_number"
    ).fetchall():
        out.setdefault(key, parse_attribute(value, vtype))
    return out


def _label_specs(staging: Staging) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    for owner, key, value, vtype, source in staging.con.execute(
        "SELECT owner_id, key, value, value_type, source FROM attributes "
        "WHERE owner_kind = 'label' ORDER BY filename, file_row_number"
    ).fetchall():
        spec = specs.setdefault(owner.removeprefix("label:"), {})
        v = parse_attribute(value, vtype)
        if source == SOURCE:
            spec.setdefault(key, v)
        elif key == "color" and isinstance(v, str) and v[:1] == "#" and len(v) == 7:
            spec.setdefault("color", v)
        elif key == "parent" and isinstance(v, str) and v:
            spec.setdefault("parent", v)
        elif key == "attributes" and isinstance(v, list):
            # CVAT's attribute specs: Datumaro lists only their names.
            spec.setdefault("attributes", [a["name"] for a in v if isinstance(a, dict)])
    for label, _ in staging.labels():
        specs.setdefault(label, {})
    return specs


def categories(staging: Staging) -> Categories:
    specs = _label_specs(staging)
    keypoints: dict[str, list[str]] = {}
    for label, name, idx in staging.con.execute(
        "SELECT a.label, p.name, min(p.idx) FROM points p JOIN annotations a USING (ann_id) "
        "WHERE a.kind = 'keypoints' AND a.label IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 3"
    ).fetchall():
        keypoints.setdefault(label, []).append(name or str(idx + 1))
    parents = {spec.get("parent") for spec in specs.values()}
    for label, names in keypoints.items():
        if label in parents:
            for name in names:
                spec = specs.setdefault(name, {"parent": label})
                spec.setdefault("parent", label)
        elif "points" not in specs[label]:
            specs[label]["points"] = {"labels": names, "joints": []}
    index = {name: i for i, name in enumerate(specs)}
    children: dict[str, dict[str, int]] = {}
    for name, spec in specs.items():
        if spec.get("parent") in index:
            children.setdefault(spec["parent"], {})[name] = index[name]
    stored = _dataset_values(staging)
    rest = stored.get("categories") if isinstance(stored.get("categories"), dict) else {}
    cats: dict[str, Any] = {
        "label": {
            "labels": [
                {
                    "name": name,
                    "parent": spec.get("parent", ""),
                    "attributes": spec.get("attributes", []),
                }
                for name, spec in specs.items()
            ],
            "attributes": stored.get("label_attributes", []),
        }
    }
    colormap = [
        {"label_id": index[n], **dict(zip("rgb", _rgb(s["color"]), strict=True))}
        for n, s in specs.items()
        if isinstance(s.get("color"), str) and _rgb(s["color"])
    ] + list((rest.get("mask") or {}).get("colormap", []))
    if colormap:
        cats["mask"] = {"colormap": colormap}
    points = [
        {
            "label_id": index[n],
            "labels": s["points"].get("labels", []),
            "joints": s["points"].get("joints", []),
        }
        for n, s in specs.items()
        if isinstance(s.get("points"), dict)
    ] + list((rest.get("points") or {}).get("items", []))
    if points:
        cats["points"] = {"items": points}
    cats.update({k: v for k, v in rest.items() if k not in ("label", "mask", "points")})
    return Categories(cats, index, children)


def _rgb(color: str) -> tuple[int, int, int] | None:
    try:
        return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)
    except ValueError:
        return None


# -- items --------------------------------------------------------------------------


def wanted_id(item: dict[str, Any]) -> str:
    """The id an item asks for: its own from Datumaro, else its file name's root."""
    if item.get("source_format") == SOURCE and item.get("native_id"):
        return item["native_id"]
    file_name = item.get("file_name")
    root = posixpath.splitext(file_name)[0] if file_name else None
    return root or item.get("native_id") or item["item_id"]


class _Items:
    def __init__(self, cats: Categories, result: WriteResult, numbered: bool) -> None:
        """`numbered`: some items want an id another wants (`_REPEATED_IDS`), so every
        id given is kept to number the later ones. Otherwise none is: the ids grew
        with the part (170k objects at the end of a 205k-item part of staging 1 GB;
        10M items a part of 50 GB on two workers)."""
        self.cats = cats
        self.result = result
        self.used: set[str] | None = set() if numbered else None

    def item(self, g: ItemGroup) -> dict[str, Any]:
        item = g.item
        ours = item.get("source_format") == SOURCE
        file_name = item.get("file_name")
        dm_id = wanted_id(item)
        if self.used is not None:
            base, n = dm_id, 1
            while dm_id in self.used:
                n += 1
                dm_id = f"{base}_{n}"
            self.used.add(dm_id)
        desc: dict[str, Any] = {"id": dm_id, "annotations": []}
        attrs = _typed(g.attributes.get(item["item_id"], []))
        if attrs:
            desc["attr"] = attrs
        media, w, h = item.get("media_type"), item.get("width"), item.get("height")
        if media == "point_cloud":
            desc["point_cloud"] = {"path": file_name}
        elif media == "image" or (media is None and w is not None and h is not None):
            image: dict[str, Any] = {"path": file_name} if file_name else {}
            if w is not None and h is not None:
                image["size"] = [h, w]
            desc["image"] = image
        elif file_name:
            desc["media"] = {"path": file_name}
        if ours and item.get("metadata"):
            extra = orjson.loads(item["metadata"])
            for key, value in extra.items() if isinstance(extra, dict) else ():
                desc.setdefault(key, value)
        groups = IntGroups(a.get("group_id") for a in g.annotations)
        for j, ann in enumerate(g.annotations):
            out = self.annotation(j, ann, g, groups)
            if out is not None:
                desc["annotations"].extend(out)
                self.result.annotations += 1
        return desc

    def annotation(self, j: int, ann: dict, g: ItemGroup, groups: IntGroups) -> list[dict] | None:
        kind = ann.get("kind")
        rows = g.attributes.get(ann["ann_id"], [])
        attrs = _typed(r for r in rows if _meaningful(r["source"]))
        for key in ("occluded", "outside", "keyframe"):
            if ann.get(key) is not None:
                attrs[key] = ann[key]
        if ann.get("track_id") is not None:
            tid = int_like(ann["track_id"])
            attrs["track_id"] = ann["track_id"] if tid is None else tid
        if ann.get("confidence") is not None:
            attrs["score"] = ann["confidence"]
        if ann.get("angle_deg") and kind in ("rotated_bbox", "ellipse"):
            attrs["rotation"] = ann["angle_deg"]
        native = int_like(ann.get("native_id"))
        d: dict[str, Any] = {
            "id": j if native is None else native,
            "type": None,
            "attributes": attrs,
            "group": groups.of(ann.get("group_id")),
        }
        label = ann.get("label")
        d["label_id"] = self.cats.index.get(label) if label else int_like(ann.get("label_id"))
        pts = g.points.get(ann["ann_id"], [])
        shape = self._geometry(kind, ann, pts, g)
        if shape is None:
            return None
        out = []
        for part in shape:
            one = {**d, **part}
            if one["type"] == "caption":
                del one["label_id"]
            if one["type"] in _SHAPES_WITH_Z and ann.get("z_order") is not None:
                one["z_order"] = ann["z_order"]
            for r in rows:
                if r["source"] == FIELD_SOURCE:
                    one.setdefault(r["key"], parse_attribute(r["value"], r["value_type"]))
            out.append(one)
        return out

    def _geometry(self, kind: str, ann: dict, pts: list[dict], g: ItemGroup) -> list[dict] | None:
        box = [ann.get(k) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")]
        lose = self.result.lose
        if kind in ("bbox", "rotated_bbox", "ellipse") and None in box:
            lose(f"{kind} annotations without a box not written")
            return None
        if kind in ("bbox", "rotated_bbox"):
            return [{"type": "bbox", "bbox": box}]
        if kind == "ellipse":
            x, y, w, h = box
            return [{"type": "ellipse", "points": [x, y, x + w, y + h]}]
        if kind in _PARTS:
            parts = g.parts.get(ann["ann_id"], {})
            if not parts:
                lose(f"{kind}s without points not written")
                return None
            if len(parts) > 1:
                lose(f"multi-part {kind}s written as one {kind} per part")
            return [{"type": kind, "points": flat} for flat in parts.values()]
        if kind in ("points", "point", "cuboid_2d"):
            if kind == "cuboid_2d":
                lose("cuboid_2d written as points")
            return [_points(pts)]
        if kind == "keypoints":
            return [self._keypoints(ann, pts, g)]
        if kind == "mask" and ann.get("mask") and ann.get("mask_h") and ann.get("mask_w"):
            return [
                {
                    "type": "mask",
                    "rle": {"counts": ann["mask"], "size": [ann["mask_h"], ann["mask_w"]]},
                }
            ]
        if kind == "caption":
            return [{"type": "caption", "caption": ann.get("text") or ""}]
        if kind == "tag":
            return [{"type": "label"}]
        if kind == "cuboid_3d":
            return [
                {
                    "type": "cuboid_3d",
                    "position": ann.get("position"),
                    "rotation": ann.get("rotation"),
                    "scale": ann.get("size"),
                }
            ]
        lose(f"{kind} annotations not written (no Datumaro type)")
        return None

    def _keypoints(self, ann: dict, pts: list[dict], g: ItemGroup) -> dict:
        children = self.cats.children.get(ann.get("label") or "")
        owners = [g.attributes.get(point_owner(ann["ann_id"], p["idx"]), []) for p in pts]
        if children is None:
            if any(owners):
                self.result.lose("keypoint attributes not written (Datumaro points have none)")
            return _points(pts)
        elements = [
            {
                "id": 0,
                "type": "points",
                "attributes": _typed(r for r in own if _meaningful(r["source"])),
                "group": 0,
                "label_id": children.get(p.get("name") or str(p["idx"] + 1)),
                "points": [p["x"], p["y"]],
                "z_order": 0,
                "visibility": [2 if p.get("visibility") is None else p["visibility"]],
            }
            for p, own in zip(pts, owners, strict=True)
        ]
        return {"type": "skeleton", "elements": elements}


def _meaningful(source: str | None) -> bool:
    return source not in (FIELD_SOURCE, *LAYOUT_SOURCES) and not (source or "").endswith("_layout")


def _points(pts: list[dict]) -> dict:
    return {
        "type": "points",
        "points": [v for p in pts for v in (p["x"], p["y"])],
        "visibility": [2 if p.get("visibility") is None else p["visibility"] for p in pts],
    }


def _typed(rows: Any) -> dict[str, Any]:
    return {r["key"]: parse_attribute(r["value"], r["value_type"]) for r in rows}


def write(task: WriteTask, staging: Staging, out: Any) -> WriteResult:
    result = WriteResult()
    name = f"annotations/{task.subset or 'default'}.json"
    items = _Items(task.options.extra["_categories"], result, task.options.extra["_numbered"])

    def chunks() -> Iterator[bytes]:
        for g in staging.iter_items(
            subset=task.subset,
            all_subsets=False,
            point_columns=POINT_COLUMNS,
            part_kinds=_PARTS,
            positions=part_run(task),
        ):
            yield orjson.dumps(items.item(g), option=orjson.OPT_SERIALIZE_NUMPY)
            result.items += 1

    frame = (task.options.extra["_head"], b"\n]}\n")
    if write_joined(task, out, name, chunks(), lambda: frame, lead=b"\n", sep=b",\n") is not None:
        result.files.append(name)
    return result
