"""Cityscapes 1.0: per-image instance and class PNGs under gtFine/.

    label_colors.txt (or label_color.txt)   `r g b name` a line; line order is the class
                                            id (optional: Cityscapes' 34 classes)
    gtFine/<subset>/<city>/<stem>_gtFine_instanceIds.png
        8- or 16-bit: a value below 1000 is a class id for a region of the class as a
        whole (a crowd, or a class without instances); otherwise class id × 1000 +
        instance number
    gtFine/<subset>/<city>/<stem>_gtFine_labelIds.png       class ids (8-bit)
    gtFine/<subset>/<city>/<stem>_gtFine_labelTrainIds.png  train ids (19 classes,
                                                            19 and 255 unlabelled)
    gtFine/<subset>/<city>/<stem>_gtFine_color.png          classes by colour
    leftImg8bit/<subset>/<city>/<stem>_leftImg8bit.png      the images (also under
                                                            imgsFine/leftImg8bit/)

An item per image stem (`item_id` = subset/city/stem), sized by its mask. Of the mask
files of a stem the most informative is read (instanceIds, else labelIds, else
labelTrainIds, else color); the others are derived from it. Every value is one `mask`
annotation: `label_id` the class id, `iscrowd` true for a class-level region,
`track_id` the instance number otherwise. Value 0 ("unlabeled") is background.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.builder import BatchBuilder
from pipelines.formats import _class_table as classes
from pipelines.formats import _image_sets as image_sets
from pipelines.formats import _label_masks as lm
from pipelines.formats import _per_image as per_image
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

NAME = "cityscapes"
GT = "gtFine"
IMAGES = "leftImg8bit"
LABELS_FILES = ("label_colors.txt", "label_color.txt")
DEFAULT_SUBSET = "default"
INSTANCE_DIVISOR = 1000
MAX_CLASS = 65  # 65 * 1000 + 535 is the largest 16-bit value
KINDS = ("instanceIds", "labelIds", "labelTrainIds", "color")
"""Mask files in order of preference: each later one holds less than the one before."""
_MASK = re.compile(r"^(.*)_gtFine_(instanceIds|labelIds|labelTrainIds|color)\.png$")
_IMAGE = re.compile(r"^(.*)_leftImg8bit\.[^./]+$")

CITYSCAPES_LABELS: tuple[tuple[str, classes.RGB], ...] = (
    ("unlabeled", (0, 0, 0)), ("egovehicle", (0, 0, 0)), ("rectificationborder", (0, 0, 0)),
    ("outofroi", (0, 0, 0)), ("static", (0, 0, 0)), ("dynamic", (111, 74, 0)),
    ("ground", (81, 0, 81)), ("road", (128, 64, 128)), ("sidewalk", (244, 35, 232)),
    ("parking", (250, 170, 160)), ("railtrack", (230, 150, 140)), ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)), ("fence", (190, 153, 153)), ("guardrail", (180, 165, 180)),
    ("bridge", (150, 100, 100)), ("tunnel", (150, 120, 90)), ("pole", (153, 153, 153)),
    ("polegroup", (153, 153, 153)), ("trafficlight", (250, 170, 30)),
    ("trafficsign", (220, 220, 0)), ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)), ("sky", (70, 130, 180)), ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)), ("car", (0, 0, 142)), ("truck", (0, 0, 70)), ("bus", (0, 60, 100)),
    ("caravan", (0, 0, 90)), ("trailer", (0, 0, 110)), ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)), ("bicycle", (119, 11, 32)), ("licenseplate", (0, 0, 142)),
)  # fmt: skip
"""Cityscapes' classes by id (the format document's colour map)."""
_TRAIN = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "trafficlight", "trafficsign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
TRAIN_LABELS: tuple[tuple[str, classes.RGB], ...] = (
    *((n, c) for n, c in CITYSCAPES_LABELS if n in _TRAIN),
    ("background", (0, 0, 0)),
)
"""The 19 training classes by train id; 19 (and 255) are unlabelled."""


# -- layout -------------------------------------------------------------------------


@dataclass
class _Entry:
    root: str
    subset: str
    rel: str
    masks: dict[str, str] = field(default_factory=dict)
    image: str = ""

    @property
    def item_id(self) -> str:
        return "/".join(p for p in (self.root, self.subset, self.rel) if p)


def _split(path: str, folder: str) -> tuple[str, list[str]] | None:
    """(root before `folder`, path parts below it) for a file under a `folder` directory."""
    parts = path.split("/")
    if folder not in parts[:-1]:
        return None
    i = parts.index(folder)
    root = "/".join(parts[:i])
    if folder == IMAGES and root.endswith("imgsFine"):
        root = root[: -len("imgsFine")].rstrip("/")
    return root, parts[i + 1 :]


def _scan(source: Source) -> dict[tuple[str, str, str], _Entry]:
    entries: dict[tuple[str, str, str], _Entry] = {}
    for path in source.files:
        name = posixpath.basename(path)
        for folder, pattern in ((GT, _MASK), (IMAGES, _IMAGE)):
            hit = pattern.match(name)
            split = _split(path, folder) if hit else None
            if not hit or not split or len(split[1]) < 2:
                continue
            root, below = split
            rel = "/".join([*below[1:-1], hit.group(1)])
            entry = entries.setdefault((root, below[0], rel), _Entry(root, below[0], rel))
            if folder == GT:
                entry.masks[hit.group(2)] = path
            else:
                entry.image = path
    return entries


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        return None
    for path in source.files:
        if _MASK.match(posixpath.basename(path)) and _split(path, GT):
            return Detection(0.9, f"Cityscapes masks under {GT}/ ({path})")
    return None


def _table(source: Source, root: str) -> list[tuple[str, classes.RGB | None]] | None:
    for name in LABELS_FILES:
        member = posixpath.join(root, name)
        if member in source.files:
            return classes.parse_label_colors(
                per_image.read_text(source, member), source.uri(member)
            )
    return None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    by_root: dict[str, list[_Entry]] = {}
    for entry in sorted(_scan(source).values(), key=lambda e: (e.root, e.subset, e.rel)):
        by_root.setdefault(entry.root, []).append(entry)
    tasks = []
    for root, entries in by_root.items():
        table = _table(source, root)
        for n, group in enumerate(per_image.chunks(entries, options)):
            ctx = {"table": table, "entries": group, "header": n == 0}
            tasks.append(ReadTask(NAME, source, member=root, context=ctx, options=options))
    return tasks


# -- reading ---------------------------------------------------------------------------


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    given = task.context["table"]
    if task.context["header"] and given:
        classes.label_attributes(b, given, NAME)
    for entry in task.context["entries"]:
        _item(b, task, entry, given)
        if b.full():
            yield b.flush()
    yield b.flush()


def _item(
    b: BatchBuilder, task: ReadTask, e: _Entry, given: list[tuple[str, classes.RGB | None]] | None
) -> None:
    src = task.source
    kind = next((k for k in KINDS if k in e.masks), None)
    arr = lm.load_or_reject(b, src, e.masks[kind], e.rel) if kind else None
    if kind and arr is None:
        return
    size = lm.size_of(arr, src, e.image or None, [e.rel], task.options)
    image_name = posixpath.relpath(e.image, _image_dir(e)) if e.image else f"{e.rel}_{IMAGES}.png"
    b.item(
        item_id=e.item_id,
        native_id=e.rel,
        file_name=image_name,
        media_uri=src.uri(e.image) if e.image else None,
        media_type="image",
        width=size[0] if size else None,
        height=size[1] if size else None,
        subset=e.subset,
    )
    if arr is None or kind is None:
        return
    table = given or list(TRAIN_LABELS if kind == "labelTrainIds" else CITYSCAPES_LABELS)
    where = e.masks[kind]
    if kind == "color":
        arr, unknown = lm.to_indices(arr, [c for _, c in table])
        lm.reject_colors(b, where, unknown)
    elif arr.ndim != 2:
        b.reject(where, f"a colour image, not {kind}", record_kind="annotations")
        return
    skip = (19, 255, -1) if kind == "labelTrainIds" and not given else (0, -1)
    for value, m in lm.values(arr, skip=skip):
        instance = kind == "instanceIds" and value >= INSTANCE_DIVISOR
        cls, number = divmod(value, INSTANCE_DIVISOR) if instance else (value, None)
        if not lm.in_table(b, where, value, cls, table):
            continue
        b.annotation(
            ann_id=f"{e.item_id}/{value}",
            item_id=e.item_id,
            native_id=str(value),
            label=table[cls][0],
            label_id=str(cls),
            iscrowd=None if kind != "instanceIds" else not instance,
            track_id=str(number) if instance else None,
            **lm.mask_fields(m),
        )


def _image_dir(e: _Entry) -> str:
    """The folder image names are relative to: leftImg8bit/<subset>/ (city kept)."""
    parts = e.image.split("/")
    i = parts.index(IMAGES)
    return "/".join(parts[: i + 2])


# -- writing -----------------------------------------------------------------------------


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    table = classes.class_table(staging, defaults=CITYSCAPES_LABELS, limit=MAX_CLASS)
    return classes.plan_write(NAME, staging, options, table)


def stem(item: dict[str, Any], collisions: set) -> str:
    """The item's path below gtFine/<subset>/: its image name without `_leftImg8bit`."""
    name = per_image.output_stem(item, collisions, per_subset=True)
    return name.removesuffix(f"_{IMAGES}")


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    result = WriteResult()
    table = classes.task_table(task)
    if task.shard == per_image.SHARED:
        per_image.put(out, LABELS_FILES[0], classes.label_colors_text(table), result)
        return result
    class_of = classes.class_numbers(table)
    colors = [c for _, c in table]
    collisions = per_image.colliding_stems(staging, per_subset=True)
    copier = per_image.MediaCopier()
    for group in per_image.item_groups(staging, task, with_attributes=False):
        item = group.item
        result.items += 1
        base = f"{item.get('subset') or DEFAULT_SUBSET}/{stem(item, collisions)}"
        if image_sets.flag(task.options, "save_images", False):
            image = f"{IMAGES}/{base}_{IMAGES}{per_image.image_suffix(item)}"
            copier.copy(item.get("media_uri"), out, image, result)
        size = lm.item_size(group)
        if size is None:
            if group.annotations:
                result.lose("items without a size written without masks")
            continue
        ids = lm.draw_instances(group, size, class_of, 999, result, "Cityscapes", _instance_id)
        lm.lose_text_annotations(group, result, "Cityscapes")
        class_ids = np.where(ids >= INSTANCE_DIVISOR, ids // INSTANCE_DIVISOR, ids)
        for suffix, data in (
            ("instanceIds", lm.png(ids.astype(np.uint16))),
            ("labelIds", lm.png(class_ids.astype(np.uint8))),
            ("color", lm.png(lm.paint(class_ids, colors))),
        ):
            per_image.put(out, f"{GT}/{base}_{GT}_{suffix}.png", data, result)
    return result


def _instance_id(cls: int, number: int | None) -> int:
    """A crowd region (no instance number) holds its class id alone, below 1000."""
    return cls if number is None else cls * INSTANCE_DIVISOR + number


FORMAT = Format(
    name=NAME,
    description="Cityscapes 1.0: gtFine instance/class PNGs (class × 1000 + instance)",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
    annotation_weight=lm.DRAWN_WEIGHT,
)
