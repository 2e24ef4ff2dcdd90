"""Market-1501 1.0 (person re-identification): the annotation is the image's file name.

    bounding_box_<subset>/0001_c1s1_001051_00.jpg   gallery images of a subset
    query/0001_c2s3_000111_00.jpg                    query images
    images_<subset>.txt                              optional: the subset's image paths

`0001_c1s1_001051_00`: person 0001 (-1: distractor, 0000: junk), camera 1,
sequence 1, frame 001051 in that sequence, box 00 in that frame. Every image
is an item of the subset its folder names (`query/` is the subset `query`) or
its list names; the name's fields are item attributes (person_id, camera_id,
sequence, frame, bbox_index, query) and the person id, as written, is the
label of a `tag`. Numbers keep Market's own counting (cameras from 1).

Writing: every image copied to `query/` (attribute query, or subset `query`)
or `bounding_box_<subset>/` under the name its fields give, plus one
`images_<subset>.txt` per subset. See docs/formats/market1501.md.
"""

from __future__ import annotations

import posixpath
import re
import zlib
from collections.abc import Iterator
from typing import Any

from pipelines.errors import LabelflowError
from pipelines.formats import _image_sets as sets
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
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output, Source, safe_member

NAME = "market1501"
QUERY = "query"
GALLERY = "bounding_box_"
LIST_PREFIX = "images_"
PATTERN = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)$")
FIELDS = ("person_id", "camera_id", "sequence", "frame", "bbox_index")
_LIST = re.compile(r"^images_(.+)\.txt$")


def _folder_subset(folder: str) -> str | None:
    if folder == QUERY:
        return QUERY
    if folder.startswith(GALLERY) and len(folder) > len(GALLERY):
        return folder[len(GALLERY) :]
    return None


def _lists(source: Source) -> list[str]:
    return [f for f in source.files if _LIST.match(f)]


def _folder_images(source: Source) -> list[str]:
    return [
        f
        for f in source.files
        if f.count("/") == 1 and per_image.is_image(f) and _folder_subset(f.split("/")[0])
    ]


def _stem(path: str) -> str:
    return per_image.strip_ext(posixpath.basename(path))


# -- detection and planning -------------------------------------------------------------


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        return None
    images = _folder_images(source)
    named = [f for f in images[:50] if PATTERN.match(_stem(f))]
    if named and len(named) * 2 >= min(len(images), 50):
        return Detection(0.9, "query/ or bounding_box_<subset>/ images named <person>_c<cam>s...")
    for lst in _lists(source):
        line = sets.first_line(source, lst).strip()
        folder = line.split("/", 1)[0]
        if _folder_subset(folder) and PATTERN.match(_stem(line)):
            return Detection(0.85, f"Market-1501 image list {lst}")
    return None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    """Entries (path as written, image member, subset, place of the list line)."""
    if not source.is_dir:
        return []
    files = set(source.files)
    entries: list[tuple[str, str | None, str, str | None]] = []
    listed = set()
    for lst in _lists(source):
        subset = _LIST.match(lst).group(1)  # type: ignore[union-attr]
        for n, line in sets.text_lines(source, lst):
            path = line.strip()
            if path:
                entries.append((path, path if path in files else None, subset, f"{lst}, line {n}"))
                listed.add(path)
    for f in _folder_images(source):
        if f not in listed:
            entries.append((f, f, _folder_subset(f.split("/")[0]), None))  # type: ignore[arg-type]
    return [
        ReadTask(NAME, source, context={"entries": group}, options=options)
        for group in per_image.chunks(entries, options)
    ]


# -- reading ------------------------------------------------------------------------------


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    for path, image, subset, where in task.context["entries"]:
        try:
            safe_member(path)
        except LabelflowError as exc:
            b.reject(where or path, str(exc), record=path, record_kind="items")
            continue
        folder = posixpath.dirname(path)
        # A path whose folder already names its subset needs no prefix to be unique.
        item_id = path if _folder_subset(folder) == subset else sets.join(subset, path)
        base = posixpath.basename(path)
        sets.add_item(b, task, item_id, image=image, file_name=base, subset=subset, native_id=path)
        m = PATTERN.match(_stem(base))
        if not m:
            reason = "file name is not <person>_c<camera>s<sequence>_<frame>_<box>: no person id"
            b.read_counts["annotations"] += 1
            b.reject(where or path, reason, record=base, record_kind="annotations")
            continue
        values: dict[str, Any] = dict(zip(FIELDS, (int(g) for g in m.groups()), strict=True))
        values[QUERY] = folder == QUERY
        b.attributes(item_id, item_id, values, owner_kind="item", source=NAME)
        sets.tag(b, item_id, m.group(1))
        if b.full():
            yield b.flush()
    yield b.flush()


# -- writing -------------------------------------------------------------------------------


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    return sets.plan(NAME, staging, options)


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _person(pid: int) -> str:
    return f"{pid:04d}" if pid >= 0 else str(pid)


def image_path(group: ItemGroup) -> tuple[str, str]:
    """(relative path, what was made up or "" ) of an item's image.

    Fields come from the tag (the person), then the item attributes, then the
    current file name; a name must be a pure function of the item, since list
    and image tasks compute it apart. Missing camera, sequence or box numbers
    become 1, 1, 0 and a missing frame a number derived from the item id.
    """
    item = group.item
    attrs = sets.item_attributes(group)
    name = posixpath.basename(per_image.item_name(item))
    ext = posixpath.splitext(name)[1] if per_image.is_image(name) else ".jpg"
    m = PATTERN.match(_stem(name))
    parsed = dict(zip(FIELDS, (int(g) for g in m.groups()), strict=True)) if m else {}
    fields = {k: _int(attrs[k]) if k in attrs else parsed.get(k) for k in FIELDS}
    labels = [label for label in sets.tag_labels(group) if _int(label) is not None]
    if labels:
        fields["person_id"] = int(labels[0])
    query = attrs.get(QUERY) is True or item.get("subset") == QUERY
    folder = QUERY if query else GALLERY + sets.subset_name(item.get("subset"))
    if fields["person_id"] is None:
        return f"{folder}/{name if per_image.is_image(name) else name + ext}", "person"
    made = ""
    if None in fields.values():
        made = "numbers"
        frame = zlib.crc32(item["item_id"].encode()) % 1_000_000
        defaults = {"camera_id": 1, "sequence": 1, "frame": frame, "bbox_index": 0}
        fields = {k: defaults[k] if v is None else v for k, v in fields.items()}
    f = fields
    stem = f"{_person(f['person_id'])}_c{f['camera_id']}s{f['sequence']}_{f['frame']:06d}"  # type: ignore[index]
    return f"{folder}/{stem}_{f['bbox_index']:02d}{ext}", made


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    if task.shard >= 0:
        return sets.copy_images(task, staging, out, lambda g: [image_path(g)[0]])
    result = WriteResult()
    rel = f"{LIST_PREFIX}{sets.subset_name(task.subset)}.txt"
    with out.open(rel) as f:
        for group in sets.groups(staging, subset=task.subset, point_columns=()):
            path, made = image_path(group)
            f.write(f"{path}\n".encode())
            result.items += 1
            if made == "person":
                result.lose("items without a person id written under their own name")
            elif made:
                result.lose("file names given made-up camera, sequence, frame or box numbers")
            kept = made == "person"
            for ann in group.annotations:
                if ann["kind"] == "tag" and not kept and _int(ann.get("label")) is not None:
                    kept = True
                    result.annotations += 1
                elif ann["kind"] == "tag":
                    result.lose("tags other than the person id not written")
                else:
                    sets.lose_unwritten(result, ann, "Market-1501")
    result.files.append(rel)
    return result


FORMAT = Format(
    name=NAME,
    description="Market-1501 1.0 (re-identification): person, camera, sequence and frame "
    "from file names in query/ and bounding_box_<subset>/",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
    boxes_suffice=lambda options: True,  # images by person: no geometry
)
