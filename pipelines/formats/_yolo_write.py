"""Writing YOLO label folders: CVAT's YOLO 1.1 layout or the Ultralytics layout.

    YOLO 1.1 (as CVAT exports it)         Ultralytics
    obj.data, obj.names                   data.yaml (names, kpt_shape for pose)
    <subset>.txt (image list)             images/<subset>/<image>
    obj_<subset>_data/<image>, <stem>.txt labels/<subset>/<stem>.txt

Options (`WriteOptions.extra`): `layout` ("yolo" | "ultralytics"), `task`
("detect" | "segment" | "pose" | "obb"; Ultralytics only, default the task
that writes the most annotations without loss, the simpler one on a tie),
`save_images` (default True: without its image a YOLO label cannot be turned
back into pixels).

Class ids are positions in the class list, computed once for all partitions
(`_per_image.class_names`). Coordinates need the item's size: an item
without one is skipped and counted (an empty label file would claim the
image holds no objects).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from pipelines.builder import parse_attribute
from pipelines.errors import LabelflowError
from pipelines.formats import _image_sets as image_sets
from pipelines.formats import _per_image as per_image
from pipelines.formats import _yolo_fast
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.item_spans import item_spans
from pipelines.numtext import fixed, fixed_rows
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output

LAYOUTS = ("yolo", "ultralytics")
TASKS = ("detect", "segment", "pose", "obb")
FAMILY = ("yolo", "ultralytics")
DEFAULT_SUBSET = "train"


def planner(fmt: str, default_layout: str) -> Callable[[Staging, WriteOptions], list[WriteTask]]:
    def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
        layout, task = _stated_task(options, default_layout)
        if layout not in LAYOUTS:
            msg = f"{fmt}: layout must be one of {', '.join(LAYOUTS)}, not {layout!r}"
            raise LabelflowError(msg)
        task = task or _auto_task(staging)
        if task not in TASKS or (layout == "yolo" and task != "detect"):
            msg = f"{fmt}: task {task!r} is not available for the {layout} layout"
            raise LabelflowError(msg)
        # Nothing else runs while a write is planned: its scans (pyarrow lets go of the
        # GIL) take every core, a thread each. Each scan holds tens of MB on 1 GB
        # (collisions 74, shard count 61, spans 41): with a thread more than the
        # workers, the plan of staging 1 GB peaked 25 MB higher (+115-125 MB) for
        # 0.02 s less (0.60-0.67 s vs 0.63-0.67 s, 5 alternating pairs).
        # Collisions once here rather than in every task.
        # Past `items_fit`, DuckDB answers the first two, and the steps run one after
        # another, its connection closed before the scans: side by side, DuckDB's
        # memory and the scans' added up (staging 5.2 GB: the planning process peaked
        # at ~480 MB RSS).
        fits = staging.items_fit()
        detect = task == "detect"
        with ThreadPoolExecutor(max(1, options.workers) if fits else 1) as pool:
            counted = pool.submit(_yolo_fast.shard_count, staging, options) if detect else None
            collisions = pool.submit(per_image.colliding_stems, staging, per_subset=True)
            if not fits:
                pool.submit(staging.close)  # DuckDB's memory back before the scans
            spans = pool.submit(item_spans, staging, "annotations") if detect else None
            names = pool.submit(per_image.class_names, staging, FAMILY, "class_id")
            settings: dict[str, Any] = {"_layout": layout, "_task": task}
            if task == "pose":
                settings["_kpt"] = pool.submit(_kpt_count, staging).result()
            shards = counted.result() if counted is not None else None
            settings["_columns"] = shards is not None  # every box stated: the column path
            if shards is not None and spans is not None:
                settings["_groups"] = _yolo_fast.shard_groups(spans.result(), shards)
            settings["_names"] = names.result()
            settings["_collisions"] = sorted(collisions.result())
        return per_image.plan_sharded(fmt, staging, options, shards=shards, **settings)

    return plan_write


def _stated_task(options: WriteOptions, default_layout: str) -> tuple[str, str | None]:
    """(layout, task) as the options give them; task None: chosen from the data."""
    layout = options.extra.get("layout", default_layout)
    return layout, options.extra.get("task") or ("detect" if layout == "yolo" else None)


def boxes_suffice(default_layout: str) -> Callable[[WriteOptions], bool]:
    """`Format.boxes_suffice`: detect and obb lines come from a shape's stated box."""
    return lambda options: _stated_task(options, default_layout)[1] in ("detect", "obb")


_KEPT = {
    "detect": ("bbox",),
    "obb": ("bbox", "rotated_bbox"),
    "segment": ("bbox", "rotated_bbox", "polygon"),
    "pose": ("keypoints",),
}
"""The kinds each Ultralytics task writes without loss, in order of preference on a tie."""


def _auto_task(staging: Staging) -> str:
    """The task that writes the most annotations without loss."""
    counts = dict(
        staging.con.execute(
            "SELECT kind, count(*) FROM annotations WHERE NOT coalesce(outside, false) "
            "AND label IS NOT NULL GROUP BY kind"
        ).fetchall()
    )
    kept = {task: sum(counts.get(k, 0) for k in kinds) for task, kinds in _KEPT.items()}
    return max(_KEPT, key=lambda task: kept[task])


def _kpt_count(staging: Staging) -> int:
    n = staging.scalar(
        "SELECT max(p.idx) + 1 FROM points p JOIN annotations a USING (ann_id) "
        "WHERE a.kind = 'keypoints'"
    )
    return int(n or 0)


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    if task.shard == per_image.SHARED:
        return _write_shared(task, staging, out)
    return _write_shard(task, staging, out)


def _collisions(task: WriteTask, staging: Staging) -> set[tuple[str | None, str]]:
    """Colliding (subset, stem) keys (see `per_image.colliding_stems`), found once when
    the run was planned."""
    given = task.options.extra.get("_collisions")
    if given is None:
        return per_image.colliding_stems(staging, per_subset=True)
    return {(subset, stem) for subset, stem in given}


def _dirs(layout: str, subset: str | None) -> tuple[str, str]:
    """(label folder, image folder) of a subset."""
    s = subset or DEFAULT_SUBSET
    if layout == "yolo":
        return f"obj_{s}_data", f"obj_{s}_data"
    return f"labels/{s}", f"images/{s}"


def _has_size(item: dict[str, Any]) -> bool:
    return bool(item.get("width")) and bool(item.get("height"))


# -- shared files -------------------------------------------------------------------


def _write_shared(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    ex = task.options.extra
    layout, names = ex["_layout"], ex["_names"]
    result = WriteResult()
    collisions = _collisions(task, staging)
    subsets: list[str] = []
    lists = per_image.LineFiles(out, result)
    try:
        for items in staging.scan("items", _yolo_fast.ITEM_COLUMNS):
            items = items.filter(pa.array(per_image.sized(items)))
            subset = items.column("subset").cast(pa.string())
            named = pc.fill_null(pc.not_equal(subset, ""), False)
            subset_of = pc.if_else(named, subset, DEFAULT_SUBSET)
            present = pc.unique(subset_of).to_pylist()  # in order of first appearance
            subsets += [s for s in present if s not in subsets]
            if layout != "yolo":
                continue
            stems = pa.array(
                per_image.output_stems(items, collisions, per_subset=True), pa.string()
            )
            files = pc.binary_join_element_wise(stems, per_image.image_suffixes(items), "")
            for s in present:
                folder = f"data/{_dirs(layout, s)[1]}/"
                in_subset = files.filter(pc.equal(subset_of, s))
                lists.extend(
                    f"{s}.txt", pc.binary_join_element_wise(folder, in_subset, "").to_pylist()
                )
        subsets = subsets or [DEFAULT_SUBSET]
        if layout == "yolo":
            for s in subsets:
                lists.touch(f"{s}.txt")
    finally:
        lists.close()
    if layout == "yolo":
        per_image.put(out, "obj.names", "".join(f"{n}\n" for n in names), result)
        data = [f"classes = {len(names)}"]
        data += [f"{s} = data/{s}.txt" for s in subsets]
        data += ["names = data/obj.names", "backup = backup/"]
        per_image.put(out, "obj.data", "\n".join(data) + "\n", result)
    else:
        doc: dict[str, Any] = {"path": "."}
        doc |= {s: f"images/{s}" for s in subsets}
        doc["names"] = dict(enumerate(names))
        doc |= _pose_settings(staging, ex)
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=None)
        per_image.put(out, "data.yaml", text, result)
    return result


def _pose_settings(staging: Staging, ex: dict[str, Any]) -> dict[str, Any]:
    """kpt_shape, and the source's flip_idx / kpt_names when they still fit."""
    if ex["_task"] != "pose":
        return {}
    n = ex["_kpt"]
    doc: dict[str, Any] = {"kpt_shape": [n, 3]}
    for key, value, vtype in staging.con.execute(
        "SELECT key, value, value_type FROM attributes WHERE owner_kind = 'dataset' "
        "AND key IN ('flip_idx', 'kpt_names') ORDER BY filename, file_row_number"
    ).fetchall():
        v = parse_attribute(value, vtype)
        if key == "flip_idx" and isinstance(v, list) and len(v) == n:
            doc.setdefault("flip_idx", v)
        elif key == "kpt_names" and isinstance(v, dict):
            doc.setdefault(
                "kpt_names", {int(k) if str(k).isdigit() else k: n for k, n in v.items()}
            )
    if "kpt_names" not in doc:
        rows = staging.con.execute(
            "SELECT a.label, p.idx, any_value(p.name) FROM points p JOIN annotations a "
            "USING (ann_id) WHERE a.kind = 'keypoints' AND p.name IS NOT NULL "
            "GROUP BY a.label, p.idx ORDER BY a.label, p.idx"
        ).fetchall()
        names = ex["_names"]
        by_class: dict[int, list[str]] = {}
        for label, idx, name in rows:
            if label in names:
                lst = by_class.setdefault(names.index(label), [""] * n)
                lst[idx] = name
        if by_class:
            doc["kpt_names"] = by_class
    return doc


# -- per-item files -------------------------------------------------------------------


def _write_shard(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    ex = task.options.extra
    layout = ex["_layout"]
    save_images = image_sets.flag(task.options, image_sets.SAVE_IMAGES, True)
    classes = {name: i for i, name in enumerate(ex["_names"])}
    lines = _Lines(ex["_task"], classes, ex.get("_kpt", 0))
    collisions = _collisions(task, staging)
    if ex["_columns"]:
        dirs = functools.partial(_dirs, layout)
        return _yolo_fast.write_boxes(task, staging, out, dirs, classes, collisions, save_images)
    copier = per_image.MediaCopier()
    result = WriteResult()
    for group in _item_groups(staging, task):
        item = group.item
        if not _has_size(item):
            result.lose("items without a size skipped")
            if group.annotations:
                result.lose("annotations of items without a size", len(group.annotations))
            continue
        stem = per_image.output_stem(item, collisions, per_subset=True)
        label_dir, image_dir = _dirs(layout, item.get("subset"))
        text = []
        for ann in group.annotations:
            written = lines.lines(ann, group, result)
            if written:
                text += written
                result.annotations += 1
        per_image.put(out, f"{label_dir}/{stem}.txt", "".join(f"{t}\n" for t in text), result)
        if save_images:
            rel = f"{image_dir}/{stem}{per_image.image_suffix(item)}"
            copier.copy(item.get("media_uri"), out, rel, result)
        result.items += 1
    return result


_ANN_COLUMNS = (
    "ann_id", "kind", "label", "outside", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
    "angle_deg", "confidence", "mask", "mask_h", "mask_w",
)  # fmt: skip
"""What `_Lines` reads of an annotation: fetching every column costs as much again."""


def _item_groups(staging: Staging, task: WriteTask):
    """The shard's items with their annotations, and their vertices only when a line
    needs them: boxes of a detect or obb dataset whose annotations all have one need
    none, and fetching millions of vertex rows was most of the write."""
    need_points = task.options.extra["_task"] in ("segment", "pose") or bool(
        staging.scalar("SELECT count(*) FROM annotations WHERE bbox_x IS NULL OR bbox_w IS NULL")
    )
    segment = task.options.extra["_task"] == "segment"
    return staging.iter_items(
        shard=task.shard,
        shards=task.shards,
        ann_columns=_ANN_COLUMNS,
        point_columns=None if need_points else (),
        with_attributes=False,
        # Polygons of a segment dataset come a line's text per part (`_Lines._polygon`).
        part_kinds=("polygon",) if segment else (),
        point_text=_segment_text,
    )


def _segment_text(vertices: pa.RecordBatch) -> pa.Array:
    """A vertex of a segment line as `_coords` spells it (a test compares them); an item
    without a size has no lines (`_has_size`). Formatting every vertex in Python, from a
    dict per vertex, was most of a segment write."""
    w, h = (pc.cast(vertices.column(c), pa.float64()) for c in ("width", "height"))
    x, y = pc.divide(vertices.column("x"), w), pc.divide(vertices.column("y"), h)
    sized = pc.fill_null(pc.and_(pc.not_equal(w, 0), pc.not_equal(h, 0)), False)
    return pc.if_else(sized, fixed_rows([x, y], " "), "")


def corners(x: float, y: float, w: float, h: float, angle: float) -> list[tuple[float, float]]:
    """Top-left, top-right, bottom-right, bottom-left of a box turned clockwise by
    `angle` degrees about its centre (y down)."""
    cx, cy = x + w / 2, y + h / 2
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    out = []
    for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        out.append((cx + dx * c - dy * s, cy + dx * s + dy * c))
    return out


class _Lines:
    """One annotation → its label lines for the chosen task, counting what is lost."""

    def __init__(self, task: str, classes: dict[str, int], kpt: int) -> None:
        self.task = task
        self.classes = classes
        self.kpt = kpt

    def lines(
        self,
        ann: dict[str, Any],
        group: ItemGroup,
        result: WriteResult,
    ) -> list[str]:
        """`group`: the item with the annotation's vertices (`points`, or for a segment
        dataset's polygons their parts' text, `parts`)."""
        pts, polygons, item = group.points.get(ann["ann_id"], []), group.parts, group.item
        kind = ann["kind"]
        if not per_image.writable(ann, result, "YOLO"):
            return []
        if self.task == "pose" and kind != "keypoints":
            plural = per_image.PLURAL[kind]
            result.lose(f"{plural} not written: a pose dataset holds keypoints only")
            return []
        rings = (
            polygons.get(ann["ann_id"]) if self.task == "segment" and kind == "polygon" else None
        )
        box = per_image.pixel_box(ann, pts)
        if box is None and not rings:
            result.lose("annotations without geometry skipped")
            return []
        if ann.get("confidence") is not None:
            result.lose("confidences dropped")
        w, h = float(item["width"]), float(item["height"])
        cls = str(self.classes[ann["label"]])
        if self.task == "pose":
            return [f"{cls} {_centre(box, w, h)} {self._keypoints(pts, w, h)}"]
        if rings:
            return self._polygon(cls, rings, result)
        if kind == "rotated_bbox" and self.task in ("segment", "obb"):
            quad = corners(*box, ann.get("angle_deg") or 0.0)
            return [f"{cls} {_coords(quad, w, h)}"]
        per_image.count_box_loss(ann, result)
        if self.task == "detect":
            return [f"{cls} {_centre(box, w, h)}"]
        return [f"{cls} {_coords(corners(*box, 0.0), w, h)}"]

    def _polygon(self, cls: str, rings: dict[int, str], result: WriteResult) -> list:
        if len(rings) > 1:
            result.lose("multi-part polygons written as one polygon per part")
        # A ring's vertices are joined with ';' (`Staging.iter_items`), a line's with ' '.
        return [
            f"{cls} {ring.replace(';', ' ')}" for ring in rings.values() if ring.count(";") >= 2
        ]

    def _keypoints(self, pts: list[dict], w: float, h: float) -> str:
        by_idx = {p["idx"]: p for p in pts}
        out = []
        for i in range(self.kpt):
            p = by_idx.get(i)
            if p is None:
                out.append("0 0 0")
                continue
            vis = p.get("visibility")
            out.append(f"{fixed(p['x'] / w)} {fixed(p['y'] / h)} {2 if vis is None else int(vis)}")
        return " ".join(out)


def _centre(box: tuple[float, ...], w: float, h: float) -> str:
    x, y, bw, bh = box
    return f"{fixed((x + bw / 2) / w)} {fixed((y + bh / 2) / h)} {fixed(bw / w)} {fixed(bh / h)}"


def _coords(points: list[tuple[float, float]], w: float, h: float) -> str:
    return " ".join(f"{fixed(x / w)} {fixed(y / h)}" for x, y in points)
