"""Open Images writer: the CSV layout of CVAT's export.

    annotations/class-descriptions.csv                  LabelName,DisplayName (no header)
    annotations/bbox_labels_600_hierarchy.json          when labels have parents
    annotations/images.meta                             `<ImageID> <height> <width>`
    annotations/<subset>-images-with-rotation.csv
    annotations/<subset>-annotations-human-imagelabels.csv
    annotations/<subset>-annotations-bbox.csv
    annotations/<subset>-annotations-object-segmentation.csv
    masks/<subset>/<MaskPath>                           1-bit PNGs at the image size

One task writes the dataset-wide files; a subset is written in parts, runs of its
items in source order, each writing its masks and its rows of the subset's CSVs as
fragments that the last part to finish joins (`_fragments`). ImageIDs are an Open
Images source's own ids, else the image file name without extension (made unique).
Boxes need the image size to be normalized: boxes and masks of items without one are
skipped and counted.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import re
from dataclasses import replace
from typing import Any

import orjson

from pipelines import masks
from pipelines.builder import parse_attribute
from pipelines.formats import _label_masks as lm
from pipelines.formats import _per_image as per_image
from pipelines.formats._fragments import (
    Fragments,
    Piece,
    even_bounds,
    part_count,
    part_run,
    part_tasks,
)
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output

NAME = "open_images"
SOURCE = "open_images"
DEFAULT_SUBSET = "default"
IMAGE_FIELDS = ("ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License",
                "AuthorProfileURL", "Author", "Title", "OriginalSize", "OriginalMD5",
                "Thumbnail300KURL", "Rotation")  # fmt: skip
LABEL_FIELDS = ("ImageID", "Source", "LabelName", "Confidence")
BOX_FIELDS = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
              "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")  # fmt: skip
CLICKS = ("XClick1X", "XClick2X", "XClick3X", "XClick4X",
          "XClick1Y", "XClick2Y", "XClick3Y", "XClick4Y")  # fmt: skip
MASK_FIELDS = ("MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin",
               "BoxYMax", "PredictedIoU", "Clicks")  # fmt: skip
FLAGS = (("IsTruncated", "truncated"), ("IsGroupOf", "is_group_of"),
         ("IsDepiction", "is_depiction"), ("IsInside", "is_inside"))  # fmt: skip
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_KINDS = ("tag", "bbox", "rotated_bbox", "mask", "polygon", "ellipse")
"""What the CSVs hold: image-level labels, boxes, masks (polygons and ellipses rasterized)."""
_CSVS = {
    "images": "-images-with-rotation.csv",
    "labels": "-annotations-human-imagelabels.csv",
    "boxes": "-annotations-bbox.csv",
    "masks": "-annotations-object-segmentation.csv",
}
"""Each subset's CSVs: the images list always, the others when they have rows."""
PART_ITEMS = 1000
"""A subset is split into about four parts per worker, none of fewer items: a part
queries staging for its run of items, and masks make items costly enough to share."""


# -- planning ------------------------------------------------------------------------------


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    labels: dict[str, dict[str, Any]] = {}
    for owner, key, value, vtype in staging.con.execute(
        "SELECT owner_id, key, value, value_type FROM attributes WHERE owner_kind = 'label' "
        "AND key IN ('display_name', 'parent') ORDER BY filename, file_row_number"
    ).fetchall():
        labels.setdefault(owner.removeprefix("label:"), {}).setdefault(
            key, parse_attribute(value, vtype)
        )
    for label, _ in staging.labels():
        labels.setdefault(label, {})
    clicks = bool(staging.scalar("SELECT count(*) > 0 FROM attributes WHERE key = ?", [CLICKS[0]]))
    collisions = sorted(per_image.colliding_stems(staging, per_subset=False))
    extra = {"_labels": labels, "_clicks": clicks, "_collisions": collisions}
    opts = replace(options, extra={**options.extra, **extra})
    tasks = [WriteTask(NAME, shard=per_image.SHARED, options=opts)]
    for subset, items in staging.subset_sizes().items():
        parts = part_count(items, options.workers, per_worker=4, min_items=PART_ITEMS)
        tasks += part_tasks(NAME, subset, opts, even_bounds(items, parts))
    return tasks


def image_id(item: dict[str, Any], collisions: set) -> str:
    """An item's ImageID: its own for an Open Images source, else its file stem."""
    if item.get("source_format") == SOURCE and item.get("native_id"):
        return str(item["native_id"])
    return per_image.output_stem(item, collisions, per_subset=False)


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    if task.shard == per_image.SHARED:
        return _write_shared(task, staging, out)
    return _Part(task, staging, out).write()


def _collisions(task: WriteTask) -> set[tuple[str | None, str]]:
    return {tuple(key) for key in task.options.extra["_collisions"]}


def _csv_text(rows: list[tuple] | list[list]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def _write_shared(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    result = WriteResult()
    labels = task.options.extra["_labels"]
    rows = [(name, props.get("display_name") or name) for name, props in labels.items()]
    per_image.put(out, "annotations/class-descriptions.csv", _csv_text(rows), result)
    parents = {name: p["parent"] for name, p in labels.items() if p.get("parent")}
    if parents:
        per_image.put(
            out, "annotations/bbox_labels_600_hierarchy.json", _hierarchy(parents), result
        )
    collisions = _collisions(task)
    lines = []
    for item_id, file_name, native_id, fmt, w, h in staging.con.execute(
        "SELECT item_id, file_name, native_id, source_format, width, height FROM items "
        "WHERE width > 0 AND height > 0 ORDER BY filename, file_row_number"
    ).fetchall():
        item = {"item_id": item_id, "file_name": file_name, "native_id": native_id}
        lines.append(f"{image_id(item | {'source_format': fmt}, collisions)} {h} {w}\n")
    per_image.put(out, "annotations/images.meta", "".join(lines), result)
    return result


def _hierarchy(parents: dict[str, str]) -> bytes:
    """The label tree as Open Images nests it, under one root (a new one if needed)."""
    nodes: dict[str, dict] = {}

    def node(name: str) -> dict:
        return nodes.setdefault(name, {"LabelName": name})

    for child, parent in parents.items():
        node(parent).setdefault("Subcategory", []).append(node(child))
    tops = [n for name, n in nodes.items() if name not in parents]
    if len(tops) == 1:
        root = tops[0]
    else:
        taken = set(nodes)
        name = next(f"/m/{i}" for i in range(len(taken) + 1) if f"/m/{i}" not in taken)
        root = {"LabelName": name, "Subcategory": tops}
    return orjson.dumps(root, option=orjson.OPT_INDENT_2) + b"\n"


# -- a part of a subset ----------------------------------------------------------------------


class _Part:
    """A run of a subset's items: their masks, and their rows of the subset's CSVs."""

    def __init__(self, task: WriteTask, staging: Staging, out: Output) -> None:
        self.task, self.staging, self.out = task, staging, out
        self.subset = task.subset or DEFAULT_SUBSET
        self.result = WriteResult()
        self.collisions = _collisions(task)
        self.clicks = task.options.extra["_clicks"]
        self.fields = {"images": IMAGE_FIELDS, "labels": LABEL_FIELDS, "masks": MASK_FIELDS}
        self.fields["boxes"] = BOX_FIELDS + (CLICKS if self.clicks else ())
        self.rows = dict.fromkeys(_CSVS, 0)
        self.writers: dict[str, Any] = {}  # csv writers of this part's fragments
        self.mask_names: set[str] = set()

    def write(self) -> WriteResult:
        task, prefix = self.task, f"annotations/{self.subset}"
        run = part_run(task)
        fragments = {
            key: Fragments(self.out, prefix + suffix, task.shards) for key, suffix in _CSVS.items()
        }
        with contextlib.ExitStack() as stack:
            self.writers = {
                key: csv.writer(
                    stack.enter_context(
                        io.TextIOWrapper(f.open("rows", task.shard), encoding="utf-8", newline="")
                    ),
                    lineterminator="\n",
                )
                for key, f in fragments.items()
            }
            for group in self.staging.iter_items(
                subset=task.subset,
                all_subsets=False,
                positions=run,
                point_columns=("part", "idx", "x", "y"),
            ):
                self._item(group)
        for key, f in fragments.items():
            done = f.finish(task.shard, b"1" if self.rows[key] else b"")
            if done is None:
                continue
            if key == "images" or any(done):
                f.join([_csv_text([self.fields[key]]), Piece("rows")])
                self.result.files.append(f.name)
            else:
                f.drop()
        return self.result

    def _row(self, key: str, row: dict[str, Any]) -> None:
        self.writers[key].writerow([row.get(f, "") for f in self.fields[key]])
        self.rows[key] += 1

    def _item(self, group: ItemGroup) -> None:
        item, result = group.item, self.result
        result.items += 1
        iid = image_id(item, self.collisions)
        meta = orjson.loads(item["metadata"]) if item.get("metadata") else {}
        own = item.get("source_format") == SOURCE
        desc = {k: v for k, v in meta.items() if own and k in IMAGE_FIELDS}
        self._row("images", desc | {"ImageID": iid, "Subset": self.subset})
        size = (item.get("width"), item.get("height"))
        size = size if all(size) else None
        boxes = {}
        box_ids = {self._attrs(group, a).get("box_id") for a in group.annotations}
        next_box = 0
        shaped = []
        for a in group.annotations:  # boxes first: masks refer to them
            kind = a["kind"]
            if kind not in _KINDS:
                result.lose(f"{kind} annotations not written: Open Images has no place for them")
            elif a.get("label") is None or a.get("outside"):
                result.lose("unlabelled or outside annotations skipped")
            elif kind == "tag":
                self._label(iid, a, self._attrs(group, a))
            elif kind in ("bbox", "rotated_bbox"):
                box = self._box(iid, a, self._attrs(group, a), size)
                if box:
                    boxes[a["ann_id"]] = box
            else:
                shaped.append(a)
        for a in shaped:
            attrs = self._attrs(group, a)
            if "box_id" not in attrs:
                while format(next_box, "08x") in box_ids:
                    next_box += 1
                attrs["box_id"] = format(next_box, "08x")
                box_ids.add(attrs["box_id"])
            self._mask(iid, group, a, attrs, size, boxes)

    def _attrs(self, group: ItemGroup, a: dict) -> dict[str, Any]:
        return {
            r["key"]: parse_attribute(r["value"], r["value_type"])
            for r in group.attributes.get(a["ann_id"], [])
            if r["source"] == SOURCE or r["key"] not in ("source",)
        }

    def _label(self, iid: str, a: dict, attrs: dict) -> None:
        confidence = a.get("confidence")
        row = {"ImageID": iid, "Source": attrs.get("source", ""), "LabelName": a["label"]}
        row["Confidence"] = _num(confidence if confidence is not None else 1)
        self._row("labels", row)
        self.result.annotations += 1

    def _box(self, iid: str, a: dict, attrs: dict, size: tuple | None) -> tuple | None:
        if size is None or a.get("bbox_w") is None:
            self.result.lose("boxes of items without a size (or without geometry) skipped")
            return None
        if a["kind"] == "rotated_bbox" and a.get("angle_deg"):
            self.result.lose("rotated boxes lost their angle")
        w, h = size
        x0, y0 = a["bbox_x"] / w, a["bbox_y"] / h
        box = (x0, x0 + a["bbox_w"] / w, y0, y0 + a["bbox_h"] / h)
        confidence = a.get("confidence")
        row = {"ImageID": iid, "Source": attrs.get("source", ""), "LabelName": a["label"]}
        row |= {"Confidence": _num(confidence if confidence is not None else 1)}
        row |= dict(zip(("XMin", "XMax", "YMin", "YMax"), (_num(v) for v in box), strict=True))
        row["IsOccluded"] = _flag(a.get("occluded"))
        for column, key in FLAGS:
            row[column] = _flag(attrs.get(key))
        for column in CLICKS if self.clicks else ():
            row[column] = attrs.get(column, "")
        self._row("boxes", row)
        self.result.annotations += 1
        return box

    def _mask(
        self, iid: str, group: ItemGroup, a: dict, attrs: dict, size: tuple | None, boxes: dict
    ) -> None:
        if size is None:
            self.result.lose("masks of items without a size skipped")
            return
        w, h = size
        counts = lm.coverage(a, group.points.get(a["ann_id"], []), h, w, self.result, "Open Images")
        if counts is None:
            return
        name = _mask_name(iid, a["label"], attrs["box_id"], attrs.get("mask_path"))
        while name in self.mask_names:  # the same name twice within one item
            name = name[: -len(".png")] + "_.png"
        self.mask_names.add(name)
        per_image.put(self.out, f"masks/{self.subset}/{name}", masks.png(counts, h, w), self.result)
        row = {"MaskPath": name, "ImageID": iid, "LabelName": a["label"]}
        row |= {"BoxID": attrs["box_id"], "Clicks": attrs.get("clicks", "")}
        iou = attrs.get("predicted_iou")
        row["PredictedIoU"] = "" if iou is None else (_num(iou) if isinstance(iou, float) else iou)
        box = boxes.get(a.get("group_id") or "")
        given = attrs.get("box")
        if box is None and isinstance(given, list) and len(given) == 4:
            box = given
        if box is not None:
            names = ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")
            row |= {
                k: _num(v) if isinstance(v, float) else v for k, v in zip(names, box, strict=True)
            }
        self._row("masks", row)
        self.result.annotations += 1


def _mask_name(iid: str, label: str, box_id: str, given: Any) -> str:
    """A mask's file name: the source's own where it starts with the ImageID (as Open
    Images' do), else `<ImageID>_<label>_<BoxID>.png`. Either way no two items share
    one, which matters as parts write their masks apart: an ImageID with characters a
    file name cannot hold (replaced by `_`) gets a digest of itself."""
    own = isinstance(given, str) and given.startswith(f"{iid}_") and given.endswith(".png")
    if own and "/" not in given:
        return given
    safe = _UNSAFE.sub("_", iid)
    if safe != iid:
        safe = f"{safe}_{hashlib.sha1(iid.encode()).hexdigest()[:8]}"
    return f"{safe}_{_UNSAFE.sub('_', label)}_{box_id}.png"


def _num(value: float) -> str:
    value = round(float(value), 6)
    return str(int(value)) if value.is_integer() else repr(value)


def _flag(value: Any) -> int:
    return -1 if value is None else int(bool(value))
