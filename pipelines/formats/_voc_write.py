"""Writing Pascal VOC: one task per shard of items (Annotations/*.xml, segmentation
PNGs, optionally JPEGImages/) and one for the shared files (labelmap.txt and
the ImageSets lists), so no two tasks write the same file.

Boxes are written 1-based and inclusive (xmin = x + 1, xmax = x + w; see
voc.py). An annotation is written as a <part> of another when its group_id is
that box's ann_id, as the reader links them. Masks are painted into
SegmentationObject (instance i = the i-th <object> when the mask's group_id
names it, else numbered after the objects) and SegmentationClass (the label's
line in labelmap.txt). Tags go to ImageSets/Main/<class>_<subset>.txt.
Options (`WriteOptions.extra`): `save_images` (default False: VOC boxes are
pixels and the XML states the size).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from lxml import etree

from pipelines.builder import parse_attribute
from pipelines.formats import _image_sets as image_sets
from pipelines.formats import _label_masks as lm
from pipelines.formats import _per_image as per_image
from pipelines.formats import _voc_masks as vm
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.staging import Staging
from pipelines.storage import Output

NAME = "voc"
DEFAULT_SUBSET = "default"
_STANDARD = ("pose", "truncated", "difficult")


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    """The label map every partition shares: background first, then the labels
    (without those only ever used as parts), with colours, parts and actions."""
    props: dict[str, dict[str, Any]] = {}
    for owner, key, value, vtype in staging.con.execute(
        "SELECT owner_id, key, value, value_type FROM attributes WHERE owner_kind = 'label' "
        "AND source = 'voc' ORDER BY filename, file_row_number"
    ).fetchall():
        props.setdefault(owner.removeprefix("label:"), {}).setdefault(
            key, parse_attribute(value, vtype)
        )
    only_parts = {
        r[0]
        for r in staging.con.execute(
            f"SELECT c.label FROM annotations c LEFT JOIN annotations p ON {_PART_OF} "
            "WHERE c.label IS NOT NULL GROUP BY c.label "
            "HAVING bool_and(p.ann_id IS NOT NULL AND c.kind = 'bbox')"
        ).fetchall()
    }
    names = per_image.class_names(staging, ("voc",), "index")
    names = ["background"] + [
        n for n in names if n != "background" and (n in props or n not in only_parts)
    ]
    parts = _pairs(
        staging,
        f"SELECT DISTINCT p.label, c.label FROM annotations c JOIN annotations p ON {_PART_OF} "
        "WHERE c.kind = 'bbox' AND p.label IS NOT NULL AND c.label IS NOT NULL",
    )
    actions = _pairs(
        staging,
        "SELECT DISTINCT a.label, t.key FROM attributes t JOIN annotations a "
        "ON t.owner_id = a.ann_id WHERE t.source = 'voc_action' AND a.label IS NOT NULL",
    )
    defaults = {e.name: e for e in vm.default_labelmap()} if not props else {}
    colors = _colors(names, props, defaults)
    labelmap = []
    for name, color in zip(names, colors, strict=True):
        p = props.get(name, {})
        d = defaults.get(name)
        given_parts = p.get("parts", d.parts if d else None)
        given_actions = p.get("actions", d.actions if d else None)
        labelmap.append(
            (
                name,
                color,
                _merge(given_parts, parts.get(name)),
                _merge(given_actions, actions.get(name)),
            )
        )
    return per_image.plan_sharded(NAME, staging, options, _labelmap=labelmap)


_PART_OF = (
    "c.group_id = p.ann_id AND c.item_id = p.item_id AND c.ann_id <> p.ann_id "
    "AND p.kind IN ('bbox', 'rotated_bbox')"
)
"""Join condition: annotation c is a part of box p (see the module docstring)."""


def _colors(names: list[str], props: dict, defaults: dict) -> list[tuple[int, int, int]]:
    """Each label's colour: as given, else VOC's for a VOC class, else the first unused
    colour of the VOC map (RGB masks are decoded by colour, so no two may share one)."""
    chosen: list[tuple[int, int, int] | None] = []
    for name in names:
        color = props.get(name, {}).get("color")
        if isinstance(color, list) and len(color) == 3:
            chosen.append(tuple(color))  # type: ignore[arg-type]
        elif name in defaults:
            chosen.append(defaults[name].color)
        else:
            chosen.append(None)
    used = {c for c in chosen if c}
    free = (c for c in vm.colormap() if c not in used)
    return [c or next(free) for c in chosen]


def _pairs(staging: Staging, sql: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a, b in staging.con.execute(sql).fetchall():
        out.setdefault(a, []).append(b)
    return out


def _merge(given: Any, seen: list[str] | None) -> list[str]:
    out = [str(v) for v in given] if isinstance(given, list) else []
    return out + sorted(v for v in seen or [] if v not in out)


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    if task.shard == per_image.SHARED:
        return _write_shared(task, staging, out)
    return _write_shard(task, staging, out)


# -- shared files --------------------------------------------------------------------


def _write_shared(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    result = WriteResult()
    labelmap = [vm.LabelEntry(n, tuple(c), p, a) for n, c, p, a in task.options.extra["_labelmap"]]
    per_image.put(out, "labelmap.txt", vm.labelmap_text(labelmap), result)
    collisions = per_image.colliding_stems(staging, per_subset=False)
    tag_labels = [
        r[0]
        for r in staging.con.execute(
            "SELECT DISTINCT label FROM annotations WHERE kind = 'tag' AND label IS NOT NULL "
            "ORDER BY label"
        ).fetchall()
    ]
    lists = per_image.LineFiles(out, result)
    try:
        for item in per_image.rows(staging, _SHARED_SQL):
            stem = per_image.output_stem(item, collisions, per_subset=False)
            s = item["subset"] or DEFAULT_SUBSET
            sets = orjson.loads(item["metadata"]).get("image_sets", []) if item["metadata"] else []
            lists.add(f"ImageSets/Main/{s}.txt", stem)
            for name in ("Segmentation", "Action", "Layout"):
                if item[name] or any(m.startswith(f"{name}/") for m in sets):
                    lists.add(f"ImageSets/{name}/{s}.txt", stem)
            flags = {t["label"]: 0 if t["difficult"] else 1 for t in item["tags"] or []}
            for label in tag_labels:
                lists.add(f"ImageSets/Main/{label}_{s}.txt", f"{stem} {flags.get(label, -1):2d}")
    finally:
        lists.close()
    return result


_SHARED_SQL = f"""
SELECT i.item_id, i.file_name, i.native_id, i.subset, i.metadata,
    EXISTS (SELECT 1 FROM annotations a WHERE a.item_id = i.item_id AND a.kind = 'mask')
        AS "Segmentation",
    EXISTS (SELECT 1 FROM attributes t WHERE t.item_id = i.item_id AND t.source = 'voc_action')
        AS "Action",
    EXISTS (SELECT 1 FROM annotations c JOIN annotations p ON {_PART_OF}
        WHERE c.item_id = i.item_id AND c.kind = 'bbox') AS "Layout",
    g.tags
FROM items i
LEFT JOIN (
    SELECT a.item_id, list({{'label': a.label, 'difficult': coalesce(
        (SELECT bool_or(t.value = 'true') FROM attributes t
         WHERE t.owner_id = a.ann_id AND t.key = 'difficult'), false)}}) AS tags
    FROM annotations a WHERE a.kind = 'tag' AND a.label IS NOT NULL GROUP BY a.item_id
) g USING (item_id)
ORDER BY i.filename, i.file_row_number
"""
"""One row per item: its names, which task lists it belongs to, and its tags."""


# -- per-item files --------------------------------------------------------------------


def _write_shard(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    extra = task.options.extra
    labelmap = extra["_labelmap"]
    class_index = {entry[0]: i for i, entry in enumerate(labelmap)}
    colors = [tuple(entry[1]) for entry in labelmap]
    collisions = per_image.colliding_stems(staging, per_subset=False)
    copier = per_image.MediaCopier()
    result = WriteResult()
    # A shape's vertices matter only where it states no box (`per_image.pixel_box`).
    for group in per_image.item_groups(staging, task, boxed_vertices=False):
        item = group.item
        stem = per_image.output_stem(item, collisions, per_subset=False)
        doc, seg = _Document(item, group, stem, result).build(class_index)
        per_image.put(out, f"Annotations/{stem}.xml", doc, result)
        if seg is not None:
            obj, cls = seg
            for folder, arr, pal in (
                ("SegmentationObject", obj, list(vm.colormap())),
                ("SegmentationClass", cls, colors),
            ):
                with out.open(f"{folder}/{stem}.png") as f:
                    vm.write_png(f, arr, pal)
                result.files.append(f"{folder}/{stem}.png")
        if image_sets.flag(task.options, image_sets.SAVE_IMAGES, False):
            rel = f"JPEGImages/{stem}{per_image.image_suffix(item)}"
            copier.copy(item.get("media_uri"), out, rel, result)
        result.items += 1
    return result


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(round(float(v), 6))


def _sub(parent: etree._Element, tag: str, value: Any = None) -> etree._Element:
    el = etree.SubElement(parent, tag)
    if isinstance(value, dict):
        for k, v in value.items():
            _sub(el, str(k), v)
    elif isinstance(value, bool):
        el.text = "1" if value else "0"
    elif isinstance(value, (int, float)):
        el.text = _num(value)
    elif value is not None:
        el.text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return el


def _bndbox(parent: etree._Element, x: float, y: float, w: float, h: float) -> None:
    box = _sub(parent, "bndbox")
    for tag, v in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
        _sub(box, tag, v)


class _Document:
    """One item's annotation XML and segmentation arrays."""

    def __init__(self, item: dict, group: Any, stem: str, result: WriteResult) -> None:
        self.item = item
        self.group = group
        self.stem = stem
        self.result = result

    def build(self, class_index: dict[str, int]) -> tuple[bytes, tuple | None]:
        item, anns = self.item, self.group.annotations
        meta = orjson.loads(item["metadata"]) if item.get("metadata") else {}
        own = item.get("source_format") == NAME
        root = etree.Element("annotation")
        _sub(root, "folder", meta.get("folder", "") if own else "")
        _sub(root, "filename", f"{self.stem}{per_image.image_suffix(item)}")
        candidates = {a["ann_id"] for a in anns if a["kind"] in ("bbox", "rotated_bbox")}
        parts: dict[str, list[dict]] = {}
        for a in anns:
            g = a.get("group_id")
            if a["kind"] == "bbox" and g in candidates and g != a["ann_id"]:
                parts.setdefault(g, []).append(a)
        part_ids = {p["ann_id"] for ps in parts.values() for p in ps}
        mask_anns = [a for a in anns if a["kind"] == "mask" and a.get("mask")]
        seg = None
        size = (item.get("width"), item.get("height"))
        if not all(size) and mask_anns:
            size = (mask_anns[0]["mask_w"], mask_anns[0]["mask_h"])
        if own:
            for key, value in meta.items():
                if key not in ("folder", "image_sets", "depth", "segmented"):
                    _sub(root, key, value)
        if all(size):
            el = _sub(root, "size")
            _sub(el, "width", size[0])
            _sub(el, "height", size[1])
            _sub(el, "depth", meta.get("depth", 3))
        _sub(root, "segmented", 1 if mask_anns else 0)
        objects: dict[str, int] = {}
        for a in anns:
            if a["ann_id"] in part_ids or a["kind"] in ("mask", "tag"):
                if a["kind"] == "tag":
                    self._tag(a)
                continue
            if self._object(root, a, parts.get(a["ann_id"], [])):
                objects[a["ann_id"]] = len(objects) + 1
        if mask_anns:
            seg = self._segmentation(mask_anns, objects, class_index)
        return etree.tostring(root, pretty_print=True, encoding="utf-8"), seg

    def _tag(self, a: dict) -> None:
        if a.get("label") is None:
            self.result.lose("unlabelled annotations skipped")
        else:
            self.result.annotations += 1

    def _object(self, root: etree._Element, a: dict, parts: list[dict]) -> bool:
        result = self.result
        if not per_image.writable(a, result, "VOC"):
            return False
        box = per_image.pixel_box(a, self.group.points.get(a["ann_id"], []))
        if box is None:
            result.lose("annotations without geometry skipped")
            return False
        per_image.count_box_loss(a, result)
        attrs = self.group.attributes.get(a["ann_id"], [])
        voc = {
            r["key"]: parse_attribute(r["value"], r["value_type"])
            for r in attrs
            if r["source"] == "voc"
        }
        obj = _sub(root, "object")
        _sub(obj, "name", a["label"])
        _sub(obj, "pose", voc.get("pose", "Unspecified"))
        _sub(obj, "truncated", bool(voc.get("truncated", False)))
        _sub(obj, "difficult", bool(voc.get("difficult", False)))
        if a.get("occluded") is not None:
            _sub(obj, "occluded", bool(a["occluded"]))
        _bndbox(obj, *box)
        for p in parts:
            if p.get("bbox_x") is None:
                continue
            part = _sub(obj, "part")
            _sub(part, "name", p.get("label") or "")
            _bndbox(part, p["bbox_x"], p["bbox_y"], p["bbox_w"], p["bbox_h"])
            result.annotations += 1
        actions = [r for r in attrs if r["source"] == "voc_action"]
        if actions:
            el = _sub(obj, "actions")
            for r in actions:
                _sub(el, r["key"], parse_attribute(r["value"], r["value_type"]))
        for key, value in voc.items():
            if key not in _STANDARD and key != "occluded":
                _sub(obj, key, value)
        others = [r for r in attrs if r["source"] not in ("voc", "voc_action")]
        if others:
            el = _sub(obj, "attributes")
            for r in others:
                att = _sub(el, "attribute")
                _sub(att, "name", r["key"])
                _sub(att, "value", r["value"] or "")
        result.annotations += 1
        return True

    def _segmentation(
        self, mask_anns: list[dict], objects: dict[str, int], class_index: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        h, w = mask_anns[0]["mask_h"], mask_anns[0]["mask_w"]
        shapes = []
        for a in mask_anns:
            if (a["mask_h"], a["mask_w"]) != (h, w):
                self.result.lose("masks of another size than the image's first mask skipped")
                continue
            shapes.append(lm.place(a, a["mask"], h, w))
        return vm.draw(shapes, h, w, class_index, objects, self.result)
