"""MOTS PNG (as CVAT exports it): 16-bit instance masks, one PNG per frame.

    <subset>/instances/<frame>.png   pixel = class_id * 1000 + instance id (0 = background)
    <subset>/instances/labels.txt    class names, class id = line number (KITTI MOTS's
                                     car = 1, pedestrian = 2 when absent)
    <subset>/images/<frame>.jpg      the frames (optional)

Every PNG is an item whose size is the PNG's (the frames' headers are not read: they may
disagree, and the masks are what the annotations are drawn on); every non-zero pixel
value is one `mask` annotation (COCO RLE over the whole frame) with the instance id as
`track_id` and the class id as `label_id`. Class 10 is KITTI MOTS's "ignore" region when
labels.txt has fewer than 10 lines: label "ignored", z_order 1. PNGs in folders below
instances/ (KITTI MOTS: instances/0002/000000.png) take that folder as `sequence_id`.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as cocomask

from pipelines import masks
from pipelines.builder import BatchBuilder
from pipelines.formats import _label_masks as lm
from pipelines.formats import _per_image as per_image
from pipelines.formats._fragments import even_bounds, part_count, part_run, part_tasks
from pipelines.formats._mot import (
    LABELS_FILE,
    TrackNumbers,
    class_ids,
    frame_stem,
    labels_text,
    read_labels,
    subset_dir,
    track_ids,
)
from pipelines.formats.base import (
    Detection,
    Format,
    ReadOptions,
    ReadTask,
    WriteOptions,
    WriteResult,
    WriteTask,
)
from pipelines.images import IMAGE_SUFFIXES
from pipelines.schema import Batch
from pipelines.staging import ItemGroup, Staging, splitext_root_sql
from pipelines.storage import Output, Source

INSTANCES = "instances"
IMAGES = "images"
MAX_INSTANCES = 1000
IGNORE_CLASS = 10
KITTI_LABELS = {1: "car", 2: "pedestrian"}
_MAX_CLASS = 65  # 65 * 1000 + 535 is the largest 16-bit value
_ANN = "annotations"


# -- detection and planning ---------------------------------------------------


def _instance_dirs(source: Source) -> dict[str, list[str]]:
    """instances/ folder → its PNGs (also those in sequence folders below it)."""
    found: dict[str, list[str]] = {}
    for rel in source.files:
        if not rel.lower().endswith(".png"):
            continue
        parts = rel.split("/")
        for i in range(len(parts) - 2, -1, -1):
            if parts[i] == INSTANCES:
                found.setdefault("/".join(parts[: i + 1]), []).append(rel)
                break
    return found


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        return None
    dirs = _instance_dirs(source)
    if not dirs:
        return None
    labelled = [d for d in dirs if source.exists(f"{d}/{LABELS_FILE}")]
    if labelled:
        return Detection(0.85, f"{len(dirs)} instances/ folder(s) of PNG masks with labels.txt")
    return Detection(0.5, f"{len(dirs)} instances/ folder(s) of PNG masks")


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    """Each instances/ folder's PNGs in tasks of bounded size."""
    tasks = []
    for folder, pngs in _instance_dirs(source).items():
        subset = posixpath.dirname(folder) or None
        for group in per_image.chunks(pngs, options):
            tasks.append(
                ReadTask(
                    "mots",
                    source,
                    member=folder,
                    subset=subset,
                    context={"files": group},
                    options=options,
                )
            )
    return tasks


# -- reading ------------------------------------------------------------------


def _labels(source: Source, folder: str) -> dict[int, str]:
    member = f"{folder}/{LABELS_FILE}"
    if not source.exists(member):
        return dict(KITTI_LABELS)
    return dict(enumerate(read_labels(source, member), 1))


def _frames(source: Source, folder: str) -> dict[str, str]:
    """Frame image by its path below images/ without extension (as instances/ names it)."""
    images = posixpath.join(posixpath.dirname(folder), IMAGES)
    out = {}
    for rel in source.glob(under=images):
        stem, ext = posixpath.splitext(rel[len(images) + 1 :])
        if ext.lower() in IMAGE_SUFFIXES:
            out[stem] = rel
    return out


def _load(source: Source, member: str) -> np.ndarray | str:
    """The PNG as a 2-D integer array, or the reason it is not an instance mask."""
    try:
        with source.open(member) as f, Image.open(f) as img:
            if img.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
                return f"a {img.mode} image, not a single-channel instance mask"
            arr = np.array(img)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return f"not a readable PNG: {exc}"
    return arr.astype(np.int64) if arr.ndim == 2 else f"{arr.ndim}-D pixel array"


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    folder, source = task.member, task.source
    labels = _labels(source, folder)
    frames = _frames(source, folder)
    for png in task.context["files"]:
        rel = posixpath.splitext(png[len(folder) + 1 :])[0]
        arr = _load(source, png)
        b.read_counts["items"] += 1
        if isinstance(arr, str):
            b.reject(png, arr, record_kind="items", native_id=rel)
            continue
        _item(b, task, png, rel, arr, labels, frames.get(rel))
        if b.full():
            yield b.flush()
    yield b.flush()


def _item(
    b: BatchBuilder,
    task: ReadTask,
    png: str,
    rel: str,
    arr: np.ndarray,
    labels: dict[int, str],
    image: str | None,
) -> None:
    item_id = posixpath.join(task.subset, rel) if task.subset else rel
    seq, stem = posixpath.split(rel)
    h, w = arr.shape
    b.item(
        item_id=item_id,
        native_id=rel,
        file_name=posixpath.basename(image) if image else None,
        media_uri=task.source.uri(image) if image else None,
        media_type="image",
        width=w,
        height=h,
        frame_index=int(stem) if stem.isdigit() else None,
        sequence_id=seq or None,
        subset=task.subset,
    )
    for value in np.unique(arr):
        value = int(value)
        if value == 0:
            continue
        b.read_counts["annotations"] += 1
        cls, instance = divmod(value, MAX_INSTANCES)
        z_order = None
        label = labels.get(cls)
        if cls == IGNORE_CLASS and len(labels) < IGNORE_CLASS:
            label, z_order = "ignored", 1
        if label is None:
            reason = (
                "class id 0 is background"
                if cls == 0
                else f"class id {cls} is not in labels.txt ({len(labels)} labels)"
            )
            b.reject(f"{png}, pixel value {value}", reason, record=value, record_kind=_ANN)
            continue
        counts = masks.encode(arr == value)
        x, y, bw, bh = masks.bbox(counts, h, w)
        b.annotation(
            ann_id=f"{item_id}/{value}",
            item_id=item_id,
            native_id=str(value),
            kind="mask",
            label=label,
            label_id=str(cls),
            units="px",
            frame_index=int(stem) if stem.isdigit() else None,
            bbox_x=x,
            bbox_y=y,
            bbox_w=bw,
            bbox_h=bh,
            area=masks.area(counts, h, w),
            mask=counts,
            mask_h=h,
            mask_w=w,
            track_id=str(instance),
            z_order=z_order,
        )


# -- writing ------------------------------------------------------------------


PART_FRAMES = 256
"""A subset is written in runs of at least this many frames (a frame's PNG takes
milliseconds), two runs a worker."""


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    """A subset in runs of frames, unless a frame's PNG depends on the frames before it
    (`_frames_depend`): then one task writes it."""
    tasks = []
    for subset, items in staging.subset_sizes().items():
        parts = 1
        if not _frames_depend(staging, subset):
            parts = part_count(items, options.workers, per_worker=2, min_items=PART_FRAMES)
        tasks += part_tasks("mots", subset, options, even_bounds(items, parts))
    return tasks


_FRAME_NAME = splitext_root_sql(
    "regexp_extract(replace(coalesce(nullif(file_name, ''), nullif(native_id, ''), item_id), "
    "'\\', '/'), '[^/]*$')"
)
_REPEATED_FRAMES = f"""
SELECT count(*) - count(DISTINCT [coalesce(sequence_id, ''), {_FRAME_NAME}])
    + count(*) FILTER (WHERE contains(sequence_id, '/'))
FROM items WHERE subset IS NOT DISTINCT FROM ?
"""
"""Frames of a subset whose file another takes (`frame_stem` in its sequence's folder),
or whose sequence id is a path."""


def _frames_depend(staging: Staging, subset: str | None) -> bool:
    """Whether a frame's PNG depends on the frames before it: a track id that is not a
    number in range gets the next free number in order of appearance, and a frame whose
    file another took is renamed after how many came before it."""
    tracks = TrackNumbers(track_ids(staging, subset), lowest=0, limit=MAX_INSTANCES - 1)
    return not tracks.all_kept or bool(staging.scalar(_REPEATED_FRAMES, [subset]))


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    result = WriteResult()
    classes = class_ids(staging, limit=_MAX_CLASS)
    ids = track_ids(staging, task.subset)
    tracks = TrackNumbers(ids, lowest=0, limit=MAX_INSTANCES - 1)
    folder = subset_dir(task.subset, INSTANCES)
    written: set[str] = set()
    for group in staging.iter_items(
        subset=task.subset,
        all_subsets=False,
        point_columns=(),
        part_kinds=("polygon",),
        with_attributes=False,
        positions=part_run(task),
    ):
        canvas = _canvas(group, classes, tracks, result)
        if canvas is None:
            result.lose("items without a size not written")
            continue
        seq = group.item.get("sequence_id")
        rel = posixpath.join(folder, seq or "", frame_stem(group.item) + ".png")
        if rel in written:  # two frames with one stem (a.jpg, a.png): the later one is renamed
            rel = f"{rel[:-4]}_{len(written)}.png"
            result.lose("frames renamed: their file stem was taken")
        written.add(rel)
        with out.open(rel) as f:
            f.write(lm.png(canvas))
        result.files.append(rel)
        result.items += 1
    if task.shard == 0:
        labels = posixpath.join(folder, LABELS_FILE)
        with out.open(labels) as f:
            f.write(labels_text(classes).encode())
        result.files.append(labels)
    return result


def _canvas(
    group: ItemGroup, classes: dict[str, int], tracks: TrackNumbers, result: WriteResult
) -> np.ndarray | None:
    """The item's instance PNG pixels; annotations drawn in z_order, later ones on top."""
    item = group.item
    h, w = item.get("height"), item.get("width")
    if not (h and w):
        sized = [a for a in group.annotations if a["kind"] == "mask" and a.get("mask_h")]
        if not sized:
            return None
        h, w = sized[0]["mask_h"], sized[0]["mask_w"]
    canvas = np.zeros((h, w), dtype=np.uint16)
    used: set[int] = set()
    order = sorted(group.annotations, key=lambda a: a.get("z_order") or 0)
    for ann in order:
        shape = _shape(ann, group.parts.get(ann["ann_id"], {}), h, w, result)
        if shape is None:
            continue
        cls = classes.get(ann["label"]) if ann.get("label") is not None else None
        if cls is None or cls > _MAX_CLASS:
            result.lose("masks without a label (or a class id over 65) skipped")
            continue
        value = _value(cls, tracks.number(ann.get("track_id")), used)
        if value is None:
            result.lose("masks beyond 999 instances of a class skipped")
            continue
        used.add(value)
        if shape.paint(canvas, value):
            result.lose("masks partly hidden by an overlapping instance")
        result.annotations += 1
    return canvas


def _value(cls: int, track: int | None, used: set[int]) -> int | None:
    if track is not None and cls * MAX_INSTANCES + track not in used:
        return cls * MAX_INSTANCES + track
    for instance in range(1, MAX_INSTANCES):  # untracked: the first free instance id
        value = cls * MAX_INSTANCES + instance
        if value not in used and value <= 0xFFFF:
            return value
    return None


def _shape(
    ann: dict[str, Any], parts: dict[int, np.ndarray], h: int, w: int, result: WriteResult
) -> lm.Drawn | None:
    """The annotation's pixels on an h × w frame, or None (and its lossiness) if it has
    none."""
    kind = ann["kind"]
    if ann.get("outside"):
        result.lose("track frames outside the image skipped")
        return None
    if kind == "mask" and ann.get("mask"):
        if (ann["mask_h"], ann["mask_w"]) != (h, w):
            result.lose("masks whose size differs from the frame skipped")
            return None
        return lm.place(ann, ann["mask"], h, w)
    if kind == "polygon" and parts:
        polys = [xy.tolist() for xy in parts.values() if len(xy) >= 6 and np.isfinite(xy).all()]
        if polys:
            rle = cocomask.merge(cocomask.frPyObjects(polys, h, w))
            result.lose("polygons written as masks")
            return lm.place(ann, rle["counts"].decode("ascii"), h, w)
    if kind == "bbox" and ann.get("bbox_w") is not None:
        x0, y0 = round(ann["bbox_x"]), round(ann["bbox_y"])
        x1, y1 = round(ann["bbox_x"] + ann["bbox_w"]), round(ann["bbox_y"] + ann["bbox_h"])
        top, left = min(max(0, y0), h), min(max(0, x0), w)
        box = np.ones((max(0, min(y1, h) - top), max(0, min(x1, w) - left)), dtype=bool)
        result.lose("boxes written as masks")
        return lm.Drawn(ann, top, left, box)
    result.lose(f"{kind} annotations skipped (MOTS holds masks)")
    return None


FORMAT = Format(
    name="mots",
    description="MOTS PNG: 16-bit instance masks (class * 1000 + instance) per frame",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
)
