"""Segmentation mask 1.1 (CVAT's Pascal VOC segmentation layout, without annotation XML).

    labelmap.txt                          `label:r,g,b:parts:actions` a line; line order is
                                          the class index (optional: the 21 VOC classes)
    ImageSets/Segmentation/<subset>.txt   image ids, one a line
    SegmentationClass/<id>.png            class indices (palette or grey PNG), or RGB
                                          drawn with the label colours
    SegmentationObject/<id>.png           instance numbers (palette, grey, or RGB drawn
                                          with the VOC colour map)
    JPEGImages/<id>.jpg                   the images (optional)

Items are the ids of the lists and of the PNGs (`item_id` = id, subset = the first list
naming it), sized by their PNGs. Each instance of SegmentationObject is one `mask`
annotation labelled by the class under most of its pixels; without SegmentationObject
each class of SegmentationClass is one. Background (0) and the void border (255) are
not annotations. This is the reading of Pascal VOC's PNGs (`_voc_masks`), without the
XML objects instances would be linked to.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipelines.builder import BatchBuilder, to_json
from pipelines.formats import _class_table as classes
from pipelines.formats import _image_sets as image_sets
from pipelines.formats import _label_masks as lm
from pipelines.formats import _per_image as per_image
from pipelines.formats import _voc_masks as vm
from pipelines.formats.base import (
    Detection,
    Format,
    ReadOptions,
    ReadTask,
    WriteOptions,
    WriteResult,
    WriteTask,
)
from pipelines.schema import Batch
from pipelines.staging import Staging
from pipelines.storage import Output, Source

NAME = "segmentation_mask"
CLASS_DIR = "SegmentationClass"
OBJECT_DIR = "SegmentationObject"
LISTS = "ImageSets/Segmentation"
IMAGES = "JPEGImages"
LABELMAP = "labelmap.txt"
DEFAULT_SUBSET = "default"


# -- layout -----------------------------------------------------------------------------


@dataclass
class _Entry:
    id: str
    subset: str | None = None
    seg_class: str = ""
    seg_object: str = ""
    image: str = ""
    sets: list[str] = field(default_factory=list)


def _roots(source: Source) -> list[str]:
    roots = set()
    for f in source.files:
        parts = f.split("/")
        for i, d in enumerate(parts[:-1]):
            if d in (CLASS_DIR, OBJECT_DIR) or "/".join(parts[i : i + 2]) == LISTS:
                roots.add("/".join(parts[:i]))
                break
    return sorted(roots)


def _under(source: Source, root: str, folder: str) -> dict[str, str]:
    """id (path below the folder without extension) → member."""
    prefix = posixpath.join(root, folder) + "/"
    return {per_image.strip_ext(f[len(prefix) :]): f for f in source.files if f.startswith(prefix)}


def _scan(source: Source, root: str) -> list[_Entry]:
    entries: dict[str, _Entry] = {}
    for name, member in sorted(_under(source, root, LISTS).items()):
        if not member.endswith(".txt"):
            continue
        for line in per_image.read_text(source, member).splitlines():
            item_id = line.strip()
            if item_id:
                e = entries.setdefault(item_id, _Entry(item_id))
                e.subset = e.subset or name
                e.sets.append(name)
    for folder, attr in ((CLASS_DIR, "seg_class"), (OBJECT_DIR, "seg_object")):
        for item_id, member in _under(source, root, folder).items():
            if member.lower().endswith(".png"):
                setattr(entries.setdefault(item_id, _Entry(item_id)), attr, member)
    images = _under(source, root, IMAGES)
    for item_id, e in entries.items():
        e.image = images.get(item_id, "")
    return [entries[k] for k in sorted(entries)]


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        return None
    pngs = [f for f in source.files if f.lower().endswith(".png") and (
        f"{CLASS_DIR}/" in f or f"{OBJECT_DIR}/" in f
    )]  # fmt: skip
    if not pngs:
        return None
    if any("Annotations/" in f and f.lower().endswith(".xml") for f in source.files):
        # Pascal VOC with its segmentation: the VOC reader reads both.
        return Detection(0.5, "SegmentationClass/SegmentationObject PNGs beside VOC XML")
    return Detection(0.85, "SegmentationClass/SegmentationObject PNGs without annotation XML")


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    tasks = []
    for root in _roots(source):
        member = posixpath.join(root, LABELMAP)
        labelmap = None
        if member in source.files:
            labelmap = vm.parse_labelmap(per_image.read_text(source, member), source.uri(member))
        entries = _scan(source, root)
        for n, group in enumerate(per_image.chunks(entries, options)):
            ctx = {"root": root, "labelmap": labelmap, "entries": group, "header": n == 0}
            tasks.append(ReadTask(NAME, source, member=root, context=ctx, options=options))
    return tasks


# -- reading -----------------------------------------------------------------------------


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    labelmap = task.context["labelmap"] or vm.default_labelmap()
    colors = _colors(labelmap)
    if task.context["header"]:
        classes.label_attributes(
            b, [(e.name, c) for e, c in zip(labelmap, colors, strict=True)], NAME
        )
    for entry in task.context["entries"]:
        _item(b, task, entry, labelmap, colors)
        if b.full():
            yield b.flush()
    yield b.flush()


def _colors(labelmap: list[vm.LabelEntry]) -> list[classes.RGB]:
    """Each class's colour: as the label map gives it, else the VOC colour of its index."""
    return [e.color or vm.colormap()[i % 256] for i, e in enumerate(labelmap)]


def _indices(b: BatchBuilder, task: ReadTask, member: str, colors: list, e: _Entry) -> Any:
    """The PNG's index array; False (and a reject) when it is not a readable image."""
    if not member:
        return None
    arr = lm.load_or_reject(b, task.source, member, e.id)
    if arr is None:
        return False
    indices, unknown = lm.to_indices(arr, colors, unknown=vm.VOID)
    lm.reject_colors(b, member, {c: n for c, n in unknown.items() if c != (224, 224, 192)})
    return indices


def _item(
    b: BatchBuilder, task: ReadTask, e: _Entry, labelmap: list[vm.LabelEntry], colors: list
) -> None:
    src, root = task.source, task.context["root"]
    cls = _indices(b, task, e.seg_class, colors, e)
    obj = _indices(b, task, e.seg_object, list(vm.colormap()), e)
    if cls is False or obj is False:
        return
    item_id = "/".join(p for p in (root, e.id) if p)
    arr = cls if cls is not None else obj
    size = lm.size_of(arr, src, e.image or None, [e.id], task.options)
    prefix = posixpath.join(root, IMAGES) + "/"
    b.item(
        item_id=item_id,
        native_id=e.id,
        file_name=e.image[len(prefix) :] if e.image else f"{e.id}.jpg",
        media_uri=src.uri(e.image) if e.image else None,
        media_type="image",
        width=size[0] if size else None,
        height=size[1] if size else None,
        subset=e.subset,
        metadata=to_json({"image_sets": e.sets}) if len(e.sets) > 1 else None,
    )
    if cls is not None and obj is not None and cls.shape != obj.shape:
        reason = f"{e.seg_object} is {obj.shape[1]}×{obj.shape[0]}, {e.seg_class} is not"
        b.reject(e.seg_object, reason, record_kind="annotations", native_id=e.id)
        obj = None
    for seg in vm.segments(cls, obj):
        label = None
        if seg.index is not None:
            if seg.index >= len(labelmap):
                reason = f"class index {seg.index} is not in the label map ({len(labelmap)})"
                b.reject(e.seg_class, reason, record=seg.index, record_kind="annotations")
                continue
            label = labelmap[seg.index].name
        if seg.instance is None:
            ann_id, native = f"{item_id}/class/{seg.index}", None
        else:
            ann_id, native = f"{item_id}/{seg.instance}", str(seg.instance)
        b.annotation(
            ann_id=ann_id,
            item_id=item_id,
            native_id=native,
            label=label,
            label_id=None if seg.index is None else str(seg.index),
            **lm.mask_fields(seg.mask),
        )


# -- writing ------------------------------------------------------------------------------


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    defaults = [(e.name, e.color) for e in vm.default_labelmap()]
    table = classes.class_table(staging, defaults=defaults, limit=vm.VOID - 1, distinct_colors=True)
    return classes.plan_write(NAME, staging, options, table)


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    result = WriteResult()
    table = classes.task_table(task)
    collisions = per_image.colliding_stems(staging, per_subset=False)
    if task.shard == per_image.SHARED:
        entries = [vm.LabelEntry(n, c) for n, c in table]  # type: ignore[arg-type]
        per_image.put(out, LABELMAP, vm.labelmap_text(entries), result)
        lists: dict[str, list[str]] = {}
        for item_id, file_name, native_id, subset in staging.con.execute(
            "SELECT item_id, file_name, native_id, subset FROM items "
            "ORDER BY filename, file_row_number"
        ).fetchall():
            item = {"item_id": item_id, "file_name": file_name, "native_id": native_id}
            stem = per_image.output_stem(item, collisions, per_subset=False)
            lists.setdefault(subset or DEFAULT_SUBSET, []).append(stem)
        for subset, stems in lists.items():
            text = "".join(f"{s}\n" for s in stems)
            per_image.put(out, f"{LISTS}/{subset}.txt", text, result)
        return result
    class_index = classes.class_numbers(table)
    colors = [c for _, c in table]
    copier = per_image.MediaCopier()
    for group in per_image.item_groups(staging, task, with_attributes=False):
        item = group.item
        result.items += 1
        stem = per_image.output_stem(item, collisions, per_subset=False)
        if image_sets.flag(task.options, "save_images", False):
            copier.copy(item.get("media_uri"), out, f"{IMAGES}/{stem}.jpg", result)
        for a in group.annotations:
            if a["kind"] in ("tag", "caption"):
                result.lose(f"{a['kind']} annotations not written: masks only")
        size = lm.item_size(group)
        if size is None:
            if group.annotations:
                result.lose("items without a size written without masks")
            continue
        h, w = size
        shapes = lm.shapes(group, h, w, result, "Segmentation mask")
        obj, cls = vm.draw(shapes, h, w, class_index, {}, result)
        for folder, arr, palette in (
            (OBJECT_DIR, obj, list(vm.colormap())),
            (CLASS_DIR, cls, colors),
        ):
            with out.open(f"{folder}/{stem}.png") as f:
                vm.write_png(f, arr, palette)
            result.files.append(f"{folder}/{stem}.png")
    return result


FORMAT = Format(
    name=NAME,
    description="Segmentation mask 1.1: VOC-style SegmentationClass/SegmentationObject PNGs",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
    annotation_weight=lm.DRAWN_WEIGHT,
)
