"""KITTI 1.0 (as CVAT exports it): object detection labels and segmentation masks.

    label_colors.txt                 `r g b name` a line; line order is the class id
                                     (optional: the Cityscapes classes, as KITTI's)
    labels.txt                       detection label names, one a line (optional)
    <subset>/label_2/<stem>.txt      one object a line: type truncated occluded alpha
                                     x1 y1 x2 y2 height width length x y z rotation_y
                                     [score]
    <subset>/instance/<stem>.png     16-bit: class id × 256 + instance (0 = class level)
    <subset>/semantic/<stem>.png     class ids (used when there is no instance PNG)
    <subset>/semantic_rgb/<stem>.png classes by colour (used when neither exists)
    <subset>/image_2/<stem>.png      the images

One item per stem (`item_id` = subset/stem), sized by its mask, else its image.
A label_2 line is a bbox in pixels (x1, y1 the top-left corner, w = x2 − x1); the
occlusion level goes to the `occluded` column (level > 0) and, as it is, to the
`occlusion` attribute; `truncated`, `alpha`, `dimensions` (h, w, l in metres),
`location` (x, y, z in camera coordinates) and `rotation_y` are attributes (source
"kitti"); the score is `confidence`. Every value of a mask is a `mask` annotation:
`label_id` its class id, `iscrowd` for instance 0, `track_id` the instance otherwise.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.builder import BatchBuilder, is_finite, parse_attribute
from pipelines.formats import _class_table as classes
from pipelines.formats import _image_sets as image_sets
from pipelines.formats import _label_masks as lm
from pipelines.formats import _per_image as per_image
from pipelines.formats._mot import number_text
from pipelines.formats.base import (
    Detection,
    Format,
    ReadOptions,
    ReadTask,
    WriteOptions,
    WriteResult,
    WriteTask,
)
from pipelines.formats.cityscapes import CITYSCAPES_LABELS
from pipelines.schema import Batch
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output, Source

NAME = "kitti"
LABELS = "label_2"
IMAGES = "image_2"
MASK_DIRS = ("instance", "semantic", "semantic_rgb")
"""Mask folders in order of preference: each later one holds less than the one before."""
COLORS_FILE = "label_colors.txt"
NAMES_FILE = "labels.txt"
DEFAULT_SUBSET = "default"
INSTANCE_BITS = 8
SOURCE = "kitti"
_DIRS = (LABELS, IMAGES, *MASK_DIRS)
_PIXEL_KINDS = ("mask", "polygon")
"""What the writer draws into the segmentation PNGs; boxes go to label_2."""


# -- layout ---------------------------------------------------------------------------


@dataclass
class _Entry:
    root: str
    subset: str
    stem: str
    files: dict[str, str] = field(default_factory=dict)
    """folder (label_2, image_2, instance, ...) → member."""

    @property
    def item_id(self) -> str:
        return "/".join(p for p in (self.root, self.subset, self.stem) if p)


def _place(path: str) -> tuple[str, str, str, str] | None:
    """(root, subset, folder, stem) of a file in one of the KITTI folders.

    A folder at the top of the source (the subset folder itself was given) has no subset.
    """
    parts = path.split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in _DIRS:
            stem = per_image.strip_ext("/".join(parts[i + 1 :]))
            subset = parts[i - 1] if i else ""
            return "/".join(parts[: max(i - 1, 0)]), subset, parts[i], stem
    return None


def _scan(source: Source) -> list[_Entry]:
    entries: dict[tuple[str, str, str], _Entry] = {}
    for path in source.files:
        place = _place(path)
        if place is None:
            continue
        root, subset, folder, stem = place
        wanted = path.endswith(".txt") if folder == LABELS else (
            path.lower().endswith(".png") if folder in MASK_DIRS else per_image.is_image(path)
        )  # fmt: skip
        if wanted:
            entry = entries.setdefault((root, subset, stem), _Entry(root, subset, stem))
            entry.files.setdefault(folder, path)
    return [entries[k] for k in sorted(entries)]


def _is_label_line(line: str) -> bool:
    fields = line.split()
    return len(fields) in (15, 16) and all(_number(v) is not None for v in fields[1:])


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if is_finite(value) else None


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        return None
    entries = _scan(source)
    for e in entries[:20]:
        if LABELS in e.files:
            head = source.head(e.files[LABELS], 4096).decode("utf-8", "replace")
            first = next((line for line in head.splitlines() if line.strip()), "")
            if _is_label_line(first):
                return Detection(0.9, f"KITTI object labels in {LABELS}/")
    if any("instance" in e.files and (IMAGES in e.files or len(e.files) > 2) for e in entries):
        return Detection(0.85, "KITTI instance masks beside image_2/ or semantic masks")
    if any(set(e.files) & set(MASK_DIRS) for e in entries):
        return Detection(0.5, "PNG masks in KITTI's instance/ or semantic/ folders")
    return None


def _root_file(source: Source, root: str, name: str) -> str | None:
    member = posixpath.join(root, name)
    return per_image.read_text(source, member) if member in source.files else None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    by_root: dict[str, list[_Entry]] = {}
    for e in _scan(source):
        by_root.setdefault(e.root, []).append(e)
    tasks = []
    for root, entries in by_root.items():
        text = _root_file(source, root, COLORS_FILE)
        table = (
            classes.parse_label_colors(text, source.uri(root + "/" + COLORS_FILE)) if text else None
        )
        names = _root_file(source, root, NAMES_FILE)
        names_list = [n.strip() for n in names.splitlines() if n.strip()] if names else None
        for n, group in enumerate(per_image.chunks(entries, options)):
            ctx = {"table": table, "names": names_list, "entries": group, "header": n == 0}
            tasks.append(ReadTask(NAME, source, member=root, context=ctx, options=options))
    return tasks


# -- reading ---------------------------------------------------------------------------


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    ctx = task.context
    if ctx["header"] and ctx["table"]:
        classes.label_attributes(b, ctx["table"], SOURCE)
    for e in ctx["entries"]:
        _item(b, task, e)
        if b.full():
            yield b.flush()
    yield b.flush()


def _item(b: BatchBuilder, task: ReadTask, e: _Entry) -> None:
    src = task.source
    folder = next((d for d in MASK_DIRS if d in e.files), None)
    arr = lm.load_or_reject(b, src, e.files[folder], e.stem) if folder else None
    if folder and arr is None:
        return
    image = e.files.get(IMAGES)
    size = lm.size_of(arr, src, image, [e.stem], task.options)
    prefix = posixpath.join(e.root, e.subset, IMAGES) + "/"
    b.item(
        item_id=e.item_id,
        native_id=e.stem,
        file_name=image[len(prefix) :] if image else f"{e.stem}.png",
        media_uri=src.uri(image) if image else None,
        media_type="image",
        width=size[0] if size else None,
        height=size[1] if size else None,
        subset=e.subset or None,
    )
    if LABELS in e.files:
        _objects(b, task, e)
    if arr is not None and folder is not None:
        _masks(b, task, e, folder, arr)


def _objects(b: BatchBuilder, task: ReadTask, e: _Entry) -> None:
    member = e.files[LABELS]
    names = task.context["names"]
    for n, line in enumerate(per_image.read_text(task.source, member).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{member} line {n}"
        fields = line.split()
        if len(fields) not in (15, 16):
            reason = f"expected 15 or 16 fields, got {len(fields)}"
            b.reject(where, reason, record=line, record_kind="annotations")
            continue
        nums = [_number(v) for v in fields[1:]]
        if any(v is None for v in nums):
            reason = "fields after the type must be numbers"
            b.reject(where, reason, record=line, record_kind="annotations")
            continue
        trunc, occ, alpha, x1, y1, x2, y2, h, w, length, x, y, z, ry = nums[:14]  # type: ignore[misc]
        if x2 < x1 or y2 < y1:
            b.reject(where, "x2 < x1 or y2 < y1", record=line, record_kind="annotations")
            continue
        label = fields[0]
        ann_id = f"{e.item_id}/{n}"
        b.annotation(
            ann_id=ann_id,
            item_id=e.item_id,
            native_id=str(n),
            kind="bbox",
            label=label,
            label_id=str(names.index(label)) if names and label in names else None,
            units="px",
            bbox_x=x1,
            bbox_y=y1,
            bbox_w=x2 - x1,
            bbox_h=y2 - y1,
            occluded=occ != 0,
            confidence=nums[14] if len(nums) == 15 else None,
        )
        values = {
            "truncated": trunc,
            "occlusion": int(occ) if float(occ).is_integer() else occ,
            "alpha": alpha,
            "dimensions": [h, w, length],
            "location": [x, y, z],
            "rotation_y": ry,
        }
        b.attributes(ann_id, e.item_id, values, source=SOURCE)


def _masks(b: BatchBuilder, task: ReadTask, e: _Entry, folder: str, arr: np.ndarray) -> None:
    table = task.context["table"] or list(CITYSCAPES_LABELS)
    where = e.files[folder]
    if folder == "semantic_rgb" or arr.ndim == 3:
        arr, unknown = lm.to_indices(arr, [c for _, c in table])
        lm.reject_colors(b, where, unknown)
    instances = folder == "instance"
    for value, m in lm.values(arr, skip=(0, -1)):
        cls, number = (value >> INSTANCE_BITS, value & 255) if instances else (value, None)
        if cls == 0:
            continue  # the background class: "unlabeled" (0 × 256 + an instance number)
        if not lm.in_table(b, where, value, cls, table):
            continue
        b.annotation(
            ann_id=f"{e.item_id}/{folder}/{value}",
            item_id=e.item_id,
            native_id=str(value),
            label=table[cls][0],
            label_id=str(cls),
            iscrowd=number == 0 if instances else None,
            track_id=str(number) if number else None,
            **lm.mask_fields(m),
        )


# -- writing ---------------------------------------------------------------------------


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    table = classes.class_table(staging, defaults=CITYSCAPES_LABELS, limit=255, kinds=_PIXEL_KINDS)
    names = [
        r[0]
        for r in staging.con.execute(
            "SELECT label FROM annotations WHERE kind IN ('bbox', 'rotated_bbox') "
            "AND label IS NOT NULL GROUP BY label ORDER BY min(filename), min(file_row_number)"
        ).fetchall()
    ]
    return classes.plan_write(NAME, staging, options, table, _names=names)


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    result = WriteResult()
    extra = task.options.extra
    table = classes.task_table(task)
    if task.shard == per_image.SHARED:
        per_image.put(out, COLORS_FILE, classes.label_colors_text(table), result)
        per_image.put(out, NAMES_FILE, "".join(f"{n}\n" for n in extra["_names"]), result)
        return result
    class_of = classes.class_numbers(table)
    colors = [c for _, c in table]
    collisions = per_image.colliding_stems(staging, per_subset=True)
    copier = per_image.MediaCopier()
    for group in per_image.item_groups(staging, task):
        item = group.item
        result.items += 1
        base = item.get("subset") or DEFAULT_SUBSET
        stem = per_image.output_stem(item, collisions, per_subset=True)
        if image_sets.flag(task.options, "save_images", False):
            image = f"{base}/{IMAGES}/{stem}{per_image.image_suffix(item)}"
            copier.copy(item.get("media_uri"), out, image, result)
        lines = _label_lines(group, result)
        if lines:
            text = "".join(f"{line}\n" for line in lines)
            per_image.put(out, f"{base}/{LABELS}/{stem}.txt", text, result)
        ids = _instances(group, class_of, result)
        if ids is None:
            continue
        class_ids = ids >> INSTANCE_BITS
        for folder, data in (
            ("instance", lm.png(ids.astype(np.uint16))),
            ("semantic", lm.png(class_ids.astype(np.uint8))),
            ("semantic_rgb", lm.png(lm.paint(class_ids, colors))),
        ):
            per_image.put(out, f"{base}/{folder}/{stem}.png", data, result)
    return result


def _label_lines(group: ItemGroup, result: WriteResult) -> list[str]:
    lines = []
    for a in group.annotations:
        kind = a["kind"]
        if kind in _PIXEL_KINDS:
            continue
        if kind not in ("bbox", "rotated_bbox"):
            result.lose(f"{kind} annotations not written: KITTI holds boxes and masks")
            continue
        if a.get("outside"):
            result.lose("outside shapes skipped")
            continue
        if a.get("label") is None or a.get("bbox_w") is None:
            result.lose("boxes without a label or geometry skipped")
            continue
        if " " in a["label"] or not a["label"]:
            result.lose("labels with spaces written with underscores")
        if kind == "rotated_bbox" and a.get("angle_deg"):
            result.lose("rotated boxes lost their angle")
        attrs = {
            r["key"]: parse_attribute(r["value"], r["value_type"])
            for r in group.attributes.get(a["ann_id"], [])
            if r["source"] == SOURCE
        }
        occlusion = attrs.get("occlusion", 1 if a.get("occluded") else 0)
        x, y, w, h = a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"]
        values = [
            attrs.get("truncated", 0.0),
            occlusion,
            attrs.get("alpha", -1),
            x,
            y,
            x + w,
            y + h,
            *_three(attrs.get("dimensions")),
            *_three(attrs.get("location")),
            attrs.get("rotation_y", -1),
        ]
        if a.get("confidence") is not None:
            values.append(a["confidence"])
        label = a["label"].replace(" ", "_") or "_"
        lines.append(" ".join([label, *(number_text(float(v)) for v in values)]))
        result.annotations += 1
    return lines


def _three(value: Any) -> list[float]:
    if isinstance(value, list) and len(value) == 3 and all(is_finite(v) for v in value):
        return value
    return [-1.0, -1.0, -1.0]


def _instances(
    group: ItemGroup, class_of: dict[str, int], result: WriteResult
) -> np.ndarray | None:
    if not any(a["kind"] in _PIXEL_KINDS for a in group.annotations):
        return None
    size = lm.item_size(group)
    if size is None:
        result.lose("masks of items without a size skipped")
        return None
    return lm.draw_instances(
        group, size, class_of, 255, result, "KITTI", _instance_id, kinds=_PIXEL_KINDS
    )


def _instance_id(cls: int, number: int | None) -> int:
    """Instance 0 of a class is its crowd (class-level) region."""
    return (cls << INSTANCE_BITS) | (number or 0)


FORMAT = Format(
    name=NAME,
    description="KITTI 1.0: label_2 object boxes and instance/semantic segmentation PNGs",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
    annotation_weight=lm.DRAWN_WEIGHT,
)
