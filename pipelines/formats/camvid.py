"""CamVid 1.0: colour-coded class masks listed per subset.

    label_colors.txt           `r g b name` (or `name`) a line; line order is the class
                               index (optional: the 32 CamVid classes otherwise)
    <subset>.txt               `/<subset>/<image> /<subset>annot/<mask>` a line (paths
                               with spaces in double quotes; the mask may be missing)
    <subset>/<image>           the images
    <subset>annot/<mask>.png   RGB masks drawn with the label colours, or one-channel
                               masks holding the class index

Every list line is an item (`item_id` = subset / image path below the subset folder
without extension); its size is the mask's, else the image header's. Every class
present in the mask is one `mask` annotation (COCO RLE over the image) with the class
index as `label_id`. The class of colour (0, 0, 0) is the background (CamVid's "Void")
and is not an annotation; a label table without it gets "background" at index 0, as
CVAT does. Pixels of a colour the table lacks are rejected, one reject per colour.
Label colours are kept as label attributes (`color`, source "camvid").
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
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

NAME = "camvid"
LABELS_FILE = "label_colors.txt"
ANNOT = "annot"
DEFAULT_SUBSET = "default"
CAMVID_LABELS: tuple[tuple[str, classes.RGB], ...] = (
    ("Void", (0, 0, 0)), ("Animal", (64, 128, 64)), ("Archway", (192, 0, 128)),
    ("Bicyclist", (0, 128, 192)), ("Bridge", (0, 128, 64)), ("Building", (128, 0, 0)),
    ("Car", (64, 0, 128)), ("CartLuggagePram", (64, 0, 192)), ("Child", (192, 128, 64)),
    ("Column_Pole", (192, 192, 128)), ("Fence", (64, 64, 128)),
    ("LaneMkgsDriv", (128, 0, 192)), ("LaneMkgsNonDriv", (192, 0, 64)),
    ("Misc_Text", (128, 128, 64)), ("MotorcycycleScooter", (192, 0, 192)),
    ("OtherMoving", (128, 64, 64)), ("ParkingBlock", (64, 192, 128)),
    ("Pedestrian", (64, 64, 0)), ("Road", (128, 64, 128)), ("RoadShoulder", (128, 128, 192)),
    ("Sidewalk", (0, 0, 192)), ("SignSymbol", (192, 128, 128)), ("Sky", (128, 128, 128)),
    ("SUVPickupTruck", (64, 128, 192)), ("TrafficCone", (0, 0, 64)),
    ("TrafficLight", (0, 64, 64)), ("Train", (192, 64, 128)), ("Tree", (128, 128, 0)),
    ("Truck_Bus", (192, 128, 192)), ("Tunnel", (64, 0, 64)), ("VegetationMisc", (192, 192, 0)),
    ("Wall", (64, 192, 0)),
)  # fmt: skip
"""CamVid's 32 classes and colours: the table when an export has no label_colors.txt."""


# -- detection ---------------------------------------------------------------------


def parse_line(line: str) -> tuple[str, str | None] | None:
    """(image, mask) of a list line, leading slashes removed; None for a blank line.

    Raises ValueError for unbalanced quotes.
    """
    line = line.strip()
    if not line:
        return None
    if '"' in line:
        parts = line.split('"')
        if len(parts) not in (3, 5) or parts[0].strip() or (len(parts) == 5 and parts[4].strip()):
            raise ValueError("expected two paths, each in double quotes if quoted")
        paths = [parts[1], parts[3]] if len(parts) == 5 else [parts[1], parts[2].strip()]
    else:
        paths = line.split()
        if len(paths) > 2:
            raise ValueError(f"expected an image path and a mask path, got {len(paths)} fields")
    image = paths[0].lstrip("/")
    mask = paths[1].lstrip("/") if len(paths) > 1 and paths[1].strip() else None
    return image, mask


def _list_files(source: Source) -> list[str]:
    return [
        f
        for f in source.files
        if f.lower().endswith(".txt") and posixpath.basename(f) != LABELS_FILE
    ]


def _is_list(source: Source, member: str) -> bool:
    """A list whose first line pairs an image with a mask present in the source."""
    text = source.head(member, 4096).decode("utf-8-sig", "replace")
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        parsed = parse_line(first)
    except ValueError:
        return False
    if not parsed or not parsed[1] or not per_image.is_image(parsed[0]):
        return False
    root = posixpath.dirname(member)
    return posixpath.join(root, parsed[1]) in source.files


def _candidates(source: Source) -> list[str]:
    """List files worth opening: beside a `<stem>annot/` folder, else a few shallow ones.

    Detection must stay cheap on folders of thousands of .txt label files (YOLO).
    """
    dirs = {posixpath.dirname(f) for f in source.files}
    lists = _list_files(source)
    beside = [f for f in lists if posixpath.splitext(f)[0] + ANNOT in dirs]
    return beside or [f for f in lists if f.count("/") <= 1][:5]


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        return None
    lists = [f for f in _candidates(source) if _is_list(source, f)]
    if not lists:
        return None
    return Detection(0.9, f"CamVid lists pairing images with masks: {', '.join(lists[:3])}")


# -- planning and reading ----------------------------------------------------------------


def label_table(
    entries: list[tuple[str, classes.RGB | None]],
) -> list[tuple[str, classes.RGB | None]]:
    """The class table as CVAT reads it: the black label (or a new "background") first;
    without any colour, colours of the VOC map by index."""
    table = list(entries)
    black = next((i for i, (_, c) in enumerate(table) if c == classes.BLACK), None)
    if black is None:
        has_colors = any(c is not None for _, c in table)
        bg = next((i for i, (n, _) in enumerate(table) if n == "background"), None)
        entry = table.pop(bg) if bg is not None else ("background", None)
        table.insert(0, (entry[0], classes.BLACK if has_colors else entry[1]))
    else:
        table.insert(0, table.pop(black))
    if all(c is None for _, c in table):
        palette = classes.voc_palette()
        table = [(n, palette[i % 256]) for i, (n, _) in enumerate(table)]
    return table


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    tasks = []
    roots: set[str] = set()
    for member in _list_files(source):
        if not _is_list(source, member):
            continue
        root = posixpath.dirname(member)
        labels_member = posixpath.join(root, LABELS_FILE)
        if labels_member in source.files:
            given = classes.parse_label_colors(
                per_image.read_text(source, labels_member), source.uri(labels_member)
            )
        else:
            given = list(CAMVID_LABELS)
        table = label_table(given)
        entries = list(enumerate(per_image.read_text(source, member).splitlines(), 1))
        subset = posixpath.splitext(posixpath.basename(member))[0]
        for group in per_image.chunks(entries, options):
            ctx = {"root": root, "table": table, "entries": group, "header": root not in roots}
            roots.add(root)
            tasks.append(
                ReadTask(NAME, source, member=member, subset=subset, context=ctx, options=options)
            )
    return tasks


def read(task: ReadTask) -> Iterator[Batch]:
    ctx = task.context
    b = task.builder()
    table = ctx["table"]
    if ctx["header"]:
        classes.label_attributes(b, table, NAME)
    for n, line in ctx["entries"]:
        try:
            parsed = parse_line(line)
        except ValueError as exc:
            b.reject(f"{task.member} line {n}", str(exc), record=line, record_kind="items")
            continue
        if parsed is not None:
            _item(b, task, n, *parsed)
        if b.full():
            yield b.flush()
    yield b.flush()


def _item(b: BatchBuilder, task: ReadTask, n: int, image: str, mask: str | None) -> None:
    src, root, table = task.source, task.context["root"], task.context["table"]
    where = f"{task.member} line {n}"
    rel = image.split("/", 1)[1] if "/" in image else image
    native = per_image.strip_ext(rel)
    item_id = f"{task.subset}/{native}"
    image_member = posixpath.join(root, image)
    present = image_member in src.files
    arr: Any = None
    if mask:
        arr = lm.load(src, posixpath.join(root, mask))
        if isinstance(arr, str):
            b.reject(where, f"mask {mask}: {arr}", record_kind="items", native_id=native)
            return
    size = lm.size_of(arr, src, image_member if present else None, [rel], task.options)
    b.item(
        item_id=item_id,
        native_id=native,
        file_name=rel,
        media_uri=src.uri(image_member) if present else None,
        media_type="image",
        width=size[0] if size else None,
        height=size[1] if size else None,
        subset=task.subset,
    )
    if arr is None:
        return
    colors = [c for _, c in table]
    indices, unknown = lm.to_indices(arr, colors)
    lm.reject_colors(b, mask, unknown)
    for index, m in lm.values(indices, skip=(0, -1)):
        if not lm.in_table(b, mask, index, index, table, what="class index"):
            continue
        row = lm.mask_fields(m)
        b.annotation(
            ann_id=f"{item_id}/{index}",
            item_id=item_id,
            label=table[index][0],
            label_id=str(index),
            **row,
        )


# -- writing -----------------------------------------------------------------------------


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    table = classes.class_table(staging, defaults=CAMVID_LABELS, distinct_colors=True)
    return classes.plan_write(NAME, staging, options, table)


def _paths(item: dict[str, Any], collisions: set) -> tuple[str, str, str]:
    subset = item.get("subset") or DEFAULT_SUBSET
    stem = per_image.output_stem(item, collisions, per_subset=True)
    image = f"{subset}/{stem}{per_image.image_suffix(item)}"
    return subset, image, f"{subset}{ANNOT}/{stem}.png"


def _quoted(path: str) -> str:
    return f'"{path}"' if any(c.isspace() for c in path) else path


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    result = WriteResult()
    table = classes.task_table(task)
    collisions = per_image.colliding_stems(staging, per_subset=True)
    if task.shard == per_image.SHARED:
        per_image.put(out, LABELS_FILE, classes.label_colors_text(table), result)
        lists: dict[str, list[str]] = {}
        for item_id, file_name, native_id, subset, sized in staging.con.execute(
            "SELECT i.item_id, i.file_name, i.native_id, i.subset, (i.width > 0 AND i.height > 0) "
            "OR EXISTS (SELECT 1 FROM annotations a WHERE a.item_id = i.item_id "
            "AND a.kind = 'mask' AND a.mask_h > 0) FROM items i ORDER BY i.filename, "
            "i.file_row_number"
        ).fetchall():
            item = {"item_id": item_id, "file_name": file_name, "native_id": native_id}
            item["subset"] = subset
            name, image, mask = _paths(item, collisions)
            pair = [_quoted("/" + image)] + ([_quoted("/" + mask)] if sized else [])
            lists.setdefault(name, []).append(" ".join(pair))
        for name, lines in lists.items():
            per_image.put(out, f"{name}.txt", "".join(f"{line}\n" for line in lines), result)
        return result
    class_of = classes.class_numbers(table)
    colors = [c for _, c in table]
    copier = per_image.MediaCopier()
    for group in per_image.item_groups(staging, task, with_attributes=False):
        result.items += 1
        _, image, mask = _paths(group.item, collisions)
        if image_sets.flag(task.options, "save_images", False):
            copier.copy(group.item.get("media_uri"), out, image, result)
        size = lm.item_size(group)
        if size is None:
            if group.annotations:
                result.lose("items without a size written without a mask")
            continue
        indices = _draw(group, size, class_of, result)
        lm.lose_text_annotations(group, result, "CamVid")
        per_image.put(out, mask, lm.png(lm.paint(indices, colors)), result)
    return result


def _draw(
    group: Any, size: tuple[int, int], class_of: dict[str, int], result: WriteResult
) -> np.ndarray:
    h, w = size
    indices = np.zeros((h, w), dtype=np.int64)
    drawn: set[int] = set()
    for shape in lm.shapes(group, h, w, result, "CamVid"):
        cls = class_of.get(shape.ann.get("label") or "")
        if cls is None:
            result.lose("masks without a label (or of the background label) skipped")
            continue
        covered = shape.paint(indices, cls)
        if cls in drawn:
            result.lose("masks of one class merged into one class mask")
        elif covered:
            result.lose("masks partly hidden by an overlapping mask")
        drawn.add(cls)
        result.annotations += 1
    return indices


FORMAT = Format(
    name=NAME,
    description="CamVid 1.0: per-subset lists of images and colour-coded class masks",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
    annotation_weight=lm.DRAWN_WEIGHT,
)
