"""ICDAR writer: one of the three ICDAR layouts for the whole dataset.

The layout is the writer option `task` (word_recognition, text_localization or
text_segmentation); by default the one that writes the most annotations: captions
for recognition, boxes and polygons for localization, masks for segmentation (ties
go to localization). Recognition writes one gt.txt per subset (a task per subset);
the other two write a file per image (a task per shard of items).

Transcriptions come from the `text` column, else a `text` (localization,
segmentation) or `caption` (recognition) attribute, as CVAT keeps them.
"""

from __future__ import annotations

import posixpath
from dataclasses import replace
from typing import Any

import numpy as np

from pipelines.builder import parse_attribute
from pipelines.errors import LabelflowError
from pipelines.formats import _class_table as classes
from pipelines.formats import _image_sets as image_sets
from pipelines.formats import _label_masks as lm
from pipelines.formats import _per_image as per_image
from pipelines.formats._mot import number_text
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output

NAME = "icdar"
RECOGNITION = "word_recognition"
LOCALIZATION = "text_localization"
SEGMENTATION = "text_segmentation"
TASKS = (LOCALIZATION, SEGMENTATION, RECOGNITION)
"""In order of preference when two write as many annotations."""
DEFAULT_SUBSET = "default"
IMAGES = "images"
WHITE = (255, 255, 255)


def choose_task(staging: Staging, options: WriteOptions) -> str:
    given = options.extra.get("task")
    if given:
        if given not in TASKS:
            msg = f"writer option task must be one of {', '.join(TASKS)}, not {given!r}"
            raise LabelflowError(msg)
        return given
    counts = dict(
        staging.con.execute("SELECT kind, count(*) FROM annotations GROUP BY kind").fetchall()
    )
    scores = {
        LOCALIZATION: sum(counts.get(k, 0) for k in ("bbox", "polygon", "rotated_bbox")),
        SEGMENTATION: counts.get("mask", 0),
        RECOGNITION: counts.get("caption", 0),
    }
    return max(TASKS, key=lambda t: scores[t])


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    task = choose_task(staging, options)
    opts = replace(options, extra={**options.extra, "_task": task})
    if task == RECOGNITION:
        return [WriteTask(NAME, subset=s, options=opts) for s in staging.subsets()]
    n = per_image.shard_count(staging, options)
    return [WriteTask(NAME, shard=k, shards=n, options=opts) for k in range(n)]


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    result = WriteResult()
    kind = task.options.extra["_task"]
    if kind == RECOGNITION:
        _recognition(task, staging, out, result)
        return result
    collisions = per_image.colliding_stems(staging, per_subset=True)
    copier = per_image.MediaCopier()
    save_images = image_sets.flag(task.options, "save_images", False)
    for group in per_image.item_groups(staging, task):
        item = group.item
        result.items += 1
        folder = f"{kind}/{item.get('subset') or DEFAULT_SUBSET}"
        stem = per_image.output_stem(item, collisions, per_subset=True)
        if save_images:
            image = f"{folder}/{IMAGES}/{stem}{per_image.image_suffix(item)}"
            copier.copy(item.get("media_uri"), out, image, result)
        if kind == LOCALIZATION:
            head, base = posixpath.split(stem)
            rel = posixpath.join(folder, head, f"gt_{base}.txt")
            per_image.put(out, rel, _localization(group, result), result)
        else:
            _segmentation(group, out, f"{folder}/{stem}_GT", result)
    return result


def _quoted(text: str, result: WriteResult) -> str:
    if "\n" in text or "\r" in text:
        result.lose("line breaks in transcriptions written as spaces")
        text = " ".join(text.splitlines())
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(group: ItemGroup, ann: dict[str, Any], key: str) -> str | None:
    if ann.get("text") is not None:
        return ann["text"]
    for r in group.attributes.get(ann["ann_id"], []):
        if r["key"] == key:
            value = parse_attribute(r["value"], r["value_type"])
            return value if isinstance(value, str) else r["value"]
    return None


def _others(group: ItemGroup, keep: tuple[str, ...], target: str, result: WriteResult) -> None:
    for a in group.annotations:
        if a["kind"] not in keep:
            result.lose(f"{a['kind']} annotations not written: {target}")


# -- word recognition ------------------------------------------------------------------


def _recognition(task: WriteTask, staging: Staging, out: Output, result: WriteResult) -> None:
    folder = f"{RECOGNITION}/{task.subset or DEFAULT_SUBSET}"
    collisions = per_image.colliding_stems(staging, per_subset=True)
    copier = per_image.MediaCopier()
    save_images = image_sets.flag(task.options, "save_images", False)
    lines = []
    for group in staging.iter_items(subset=task.subset, all_subsets=False, point_columns=()):
        item = group.item
        result.items += 1
        name = per_image.output_stem(item, collisions, per_subset=True)
        name += per_image.image_suffix(item)
        if save_images:
            copier.copy(item.get("media_uri"), out, f"{folder}/{IMAGES}/{name}", result)
        captions = [a for a in group.annotations if a["kind"] == "caption"]
        _others(group, ("caption",), "word recognition holds transcriptions", result)
        texts = [t for a in captions if (t := _text(group, a, "caption")) is not None]
        if len(texts) < len(captions):
            result.lose("captions without text skipped")
        for text in texts:
            lines.append(f"{name}, {_quoted(text, result)}")
            result.annotations += 1
        if not texts:
            lines.append(f"{name},")
    per_image.put(out, f"{folder}/gt.txt", "".join(f"{line}\n" for line in lines), result)


# -- text localization ---------------------------------------------------------------------


def _localization(group: ItemGroup, result: WriteResult) -> str:
    lines = []
    _others(
        group, ("bbox", "polygon", "rotated_bbox"), "text localization holds boxes and polygons",
        result,
    )  # fmt: skip
    for a in group.annotations:
        kind = a["kind"]
        text = _text(group, a, "text")
        if kind == "bbox" and a.get("bbox_w") is not None:
            x, y, w, h = a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"]
            line = " ".join(number_text(v) for v in (x, y, x + w, y + h))
            lines.append(line + (f" {_quoted(text, result)}" if text is not None else ""))
        elif kind in ("polygon", "rotated_bbox"):
            coords = _polygon(group, a, result)
            if coords is None:
                continue
            line = ",".join(number_text(v) for v in coords)
            lines.append(line + (f",{_quoted(text, result)}" if text is not None else ""))
        else:
            continue
        result.annotations += 1
    return "".join(f"{line}\n" for line in lines)


def _polygon(group: ItemGroup, a: dict[str, Any], result: WriteResult) -> list[float] | None:
    if a["kind"] == "rotated_bbox":
        if a.get("bbox_w") is None:
            result.lose("rotated_bbox annotations without geometry skipped")
            return None
        result.lose("rotated boxes written as polygons")
        return lm.outline(a)
    points = group.points.get(a["ann_id"], [])
    parts = sorted({p.get("part") or 0 for p in points})
    if len(parts) > 1:
        result.lose("polygon parts after the first skipped")
    coords = [v for p in points if (p.get("part") or 0) == parts[0] for v in (p["x"], p["y"])]
    if len(coords) < 6:
        result.lose("polygons with fewer than 3 points skipped")
        return None
    return coords


# -- text segmentation ----------------------------------------------------------------------


def _segmentation(group: ItemGroup, out: Output, base: str, result: WriteResult) -> None:
    size = lm.item_size(group)
    _others(
        group, ("mask", "bbox", "polygon", "rotated_bbox", "ellipse"),
        "text segmentation holds character masks", result,
    )  # fmt: skip
    if size is None:
        if group.annotations:
            result.lose("items without a size written without characters")
        per_image.put(out, f"{base}.txt", b"", result)
        return
    h, w = size
    drawn = lm.shapes(group, h, w, result, "ICDAR text segmentation")
    attrs = {shape.ann["ann_id"]: _icdar_attrs(group, shape.ann) for shape in drawn}
    drawn.sort(key=lambda shape: _index(attrs[shape.ann["ann_id"]].get("index")))
    canvas = np.full((h, w, 3), 255, dtype=np.uint8)
    painted = np.zeros((h, w), dtype=bool)
    used = {WHITE}
    palette = (c for c in classes.voc_palette()[1:] if c != WHITE)
    lines: list[str] = []
    previous: Any = ()
    for shape in drawn:
        a = shape.ann
        given = attrs[a["ann_id"]]
        color = _color(given.get("color"))
        if color is None or color in used:
            color = next((c for c in palette if c not in used), None)
        if color is None or not shape.mask.any():
            result.lose("characters without pixels (or beyond 254 colours) skipped")
            continue
        used.add(color)
        if shape.paint(painted, True):  # the canvas is white: a mask of its own
            result.lose("characters partly hidden by an overlapping character")
        shape.on(canvas)[shape.mask] = color
        group_id = a.get("group_id")
        if lines and (group_id is None or group_id != previous):
            lines.append("")
        previous = group_id
        lines.append(_character_line(shape, color, given, group))
        result.annotations += 1
    per_image.put(out, f"{base}.txt", "".join(f"{line}\n" for line in lines), result)
    per_image.put(out, f"{base}.bmp", lm.png(canvas, fmt="BMP"), result)


def _icdar_attrs(group: ItemGroup, a: dict[str, Any]) -> dict[str, Any]:
    return {
        r["key"]: parse_attribute(r["value"], r["value_type"])
        for r in group.attributes.get(a["ann_id"], [])
    }


def _index(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")


def _color(value: Any) -> tuple[int, int, int] | None:
    parts = str(value).split() if value is not None else []
    if len(parts) == 3 and all(p.isdigit() and int(p) <= 255 for p in parts):
        return int(parts[0]), int(parts[1]), int(parts[2])
    return None


def _character_line(shape: lm.Drawn, color: tuple, given: dict[str, Any], group: ItemGroup) -> str:
    a = shape.ann
    ys, xs = np.nonzero(shape.mask)
    left, top = shape.left + int(xs.min()), shape.top + int(ys.min())
    right, bottom = shape.left + int(xs.max()) + 1, shape.top + int(ys.max()) + 1
    center = given.get("center")
    if not isinstance(center, str) or len(center.split()) != 2:
        center = f"{(left + right) // 2} {(top + bottom) // 2}"
    text = _text(group, a, "text") or ""
    char = text.replace('"', "").replace("\n", " ") if len(text) != 1 else text
    prefix = "#" if char == " " else ""
    rgb = " ".join(str(v) for v in color)
    return f'{prefix}{rgb} {center} {left} {top} {right} {bottom} "{char}"'
