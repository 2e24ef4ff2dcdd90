"""ImageNet 1.0 as CVAT exports it: a folder per label (torchvision's ImageFolder), or,
without images, `<subset>.txt` lists of label numbers with `synsets.txt`.

    folders                              lists
    <label>/<image>                      synsets.txt        optional: label names, number =
                                                            line - 1 (else `class-<n>`)
    no_label/<image>  (or at the root)   <subset>.txt       <image> <n> [<n> ...]
    [<subset>/]<label>/<image>           images/<image>     (optional)

An image is an item with one `tag` annotation for its label folder. Images at
the root or under `no_label/` have no label. A folder below a label folder is
part of the image's name (`label_1/extra/a.jpg`: label `label_1`, file name
`extra/a.jpg`), as torchvision finds images at any depth under a class folder.
When no image sits less than two folders deep, the first folder is the subset
(`train/cat/1.jpg`). `label_id` is the label's position among the sorted label
folders (torchvision's class index) or its number in synsets.txt.

Writing: folders (each image copied into its label's folder; an item with
several labels into each), or the lists when `save_images` is false or
`layout=txt`. Several subsets get a folder each. See docs/formats/imagenet.md.
"""

from __future__ import annotations

import posixpath
from collections import Counter
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
from pipelines.storage import Output, Source

NAME = "imagenet"
NO_LABEL = "no_label"
SYNSETS = "synsets.txt"
IMAGES_DIR = "images"
SUBSET_NAMES = frozenset({"train", "val", "valid", "validation", "test", "default"})
LAYOUTS = ("folders", "txt")


# -- detection and planning ---------------------------------------------------------


def _lists(source: Source) -> list[str]:
    """Root-level image lists: every other .txt beside a synsets.txt; without one
    (synsets.txt is optional), the .txt files whose first line reads `<image> <n>`."""
    txts = [f for f in source.files if "/" not in f and f.endswith(".txt") and f != SYNSETS]
    if SYNSETS in source.files:
        return txts
    return [f for f in txts if _looks_like_list(sets.first_line(source, f))]


def _parse_line(line: str) -> tuple[str, list[str]] | None:
    """(image name, label numbers as written) of a list line; None when it has no name.

    A name with spaces is quoted without its extension: `"my image".jpg 3`.
    """
    if '"' in line:
        parts = line.split('"')
        if len(parts) != 3 or not parts[1]:
            return None
        rest = parts[2].split()
        if not rest or rest[0].startswith("."):
            return (parts[1] + rest[0], rest[1:]) if rest else (parts[1], [])
        return parts[1], rest
    tokens = line.split()
    return (tokens[0], tokens[1:]) if tokens else None


def _looks_like_list(line: str) -> bool:
    parsed = _parse_line(line)
    return bool(parsed and parsed[1] and all(t.isdigit() for t in parsed[1]))


def _layout(files: tuple[str, ...]) -> tuple[str, str] | None:
    """('labels' | 'subsets', why) for a folder holding only images in label folders."""
    images = [f for f in files if per_image.is_image(f)]
    if not images or len(images) != len(files):
        return None
    depth = Counter(min(f.count("/"), 2) for f in images)
    if depth[1] * 2 >= len(images):
        return "labels", f"{len(images)} images in label folders"
    tops = {f.split("/", 1)[0].lower() for f in images}
    if not depth[0] and not depth[1] and tops <= SUBSET_NAMES:
        return "subsets", f"{len(images)} images in <subset>/<label> folders"
    return None


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        return None
    lists = _lists(source)
    if lists and _looks_like_list(sets.first_line(source, lists[0])):
        if SYNSETS in source.files:
            return Detection(0.8, f"synsets.txt with image lists ({', '.join(lists)})")
        return Detection(0.4, f"image lists of label numbers ({', '.join(lists)})")
    found = _layout(source.files)
    # Folders of images alone say little: any format with a more specific sign wins.
    return Detection(0.3, found[1]) if found else None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    if not source.is_dir:
        return []
    lists = _lists(source)
    if lists:
        labels = None
        if SYNSETS in source.files:
            labels = [line.strip() for _, line in sets.text_lines(source, SYNSETS) if line.strip()]
        ctx = {"synsets": labels, "images": sets.images_under(source, IMAGES_DIR)}
        return [
            ReadTask(
                NAME,
                source,
                member=m,
                subset=posixpath.splitext(m)[0],
                context=ctx,
                options=options,
            )
            for m in lists
        ]
    images = [f for f in source.files if per_image.is_image(f)]
    by_depth = Counter(min(f.count("/"), 2) for f in images)
    with_subsets = bool(images) and not by_depth[0] and not by_depth[1]
    entries = [_entry(f, with_subsets) for f in images]
    ids = {label: str(i) for i, label in enumerate(sorted({e[2] for e in entries if e[2]}))}
    return [
        ReadTask(NAME, source, context={"entries": group, "label_ids": ids}, options=options)
        for group in per_image.chunks(entries, options)
    ]


def _entry(member: str, with_subsets: bool) -> tuple[str, str | None, str | None, str]:
    """(member, subset, label, file name under the label folder) of one image."""
    parts = member.split("/")
    subset = parts.pop(0) if with_subsets else None
    if len(parts) == 1:
        return member, subset, None, parts[0]
    label = None if parts[0] == NO_LABEL else parts[0]
    return member, subset, label, "/".join(parts[1:])


# -- reading ----------------------------------------------------------------------------


def read(task: ReadTask) -> Iterator[Batch]:
    yield from (_read_list(task) if task.member else _read_folders(task))


def _read_folders(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    ids = task.context["label_ids"]
    for member, subset, label, file_name in task.context["entries"]:
        sets.add_item(
            b, task, member, image=member, file_name=file_name, subset=subset, native_id=member
        )
        if label:
            sets.tag(b, member, label, label_id=ids.get(label))
        if b.full():
            yield b.flush()
    yield b.flush()


def _read_list(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    synsets, images = task.context["synsets"], task.context["images"]
    for n, line in sets.text_lines(task.source, task.member):
        if not line.strip():
            continue
        where = f"{task.member}, line {n}"
        parsed = _parse_line(line)
        if parsed is None:
            b.reject(where, "no image name (unbalanced quotes?)", record=line, record_kind="items")
            continue
        name, numbers = parsed
        bad = [t for t in numbers if not t.isdigit()]
        if bad:
            reason = f"label number {bad[0]!r} is not a whole number from 0"
            b.reject(where, reason, record=line, record_kind="items")
            continue
        unknown = [t for t in numbers if synsets is not None and int(t) >= len(synsets)]
        if unknown:
            reason = f"label number {unknown[0]} is not in {SYNSETS} ({len(synsets)} labels)"
            b.reject(where, reason, record=line, record_kind="items")
            continue
        item_id = sets.join(task.subset, name)
        image = images.get(per_image.strip_ext(name))
        # A name written without its extension (`1 0`) takes the image's.
        file_name = image[len(IMAGES_DIR) + 1 :] if image and "." not in name else name
        sets.add_item(
            b, task, item_id, image=image, file_name=file_name, subset=task.subset, native_id=name
        )
        for k, t in enumerate(dict.fromkeys(numbers)):
            label = synsets[int(t)] if synsets is not None else f"class-{int(t)}"
            sets.tag(b, item_id, label, label_id=t, n=k)
        if b.full():
            yield b.flush()
    yield b.flush()


# -- writing -------------------------------------------------------------------------------


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    save_images = sets.flag(options, sets.SAVE_IMAGES, True)
    layout = options.extra.get("layout") or ("folders" if save_images else "txt")
    if layout not in LAYOUTS:
        msg = f"{NAME}: layout must be one of {', '.join(LAYOUTS)}, not {layout!r}"
        raise LabelflowError(msg)
    if layout == "folders":
        if not save_images:
            msg = f"{NAME}: the folders layout is made of the images; use layout=txt"
            raise LabelflowError(msg)
        subsets = staging.subsets()
        return sets.plan(
            NAME,
            staging,
            options,
            per_subset=False,
            images=True,
            _layout=layout,
            _subset_dirs=len(subsets) > 1,
            _one_subset=subsets[0] if len(subsets) == 1 else None,
        )
    names = per_image.class_names(staging, (NAME,), "class_id")
    return sets.plan(NAME, staging, options, shared=True, _layout=layout, _names=names)


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    ex = task.options.extra
    if ex["_layout"] == "folders":
        return _write_folders(task, staging, out)
    if task.shard == sets.SHARED:
        result = WriteResult()
        per_image.put(out, SYNSETS, "".join(f"{n}\n" for n in ex["_names"]), result)
        return result
    if task.shard == sets.SUBSET:
        return _write_list(task, staging, out)
    return sets.copy_images(task, staging, out, lambda g: [f"{IMAGES_DIR}/{_name(g.item)}"])


def _name(item: dict[str, Any]) -> str:
    """The image's path under its label folder, with an image extension."""
    name = per_image.item_name(item)
    return name if per_image.is_image(name) else name + per_image.image_suffix(item)


def _lose_others(group: ItemGroup, result: WriteResult) -> int:
    """Count what ImageNet cannot hold; returns the number of tags kept."""
    kept = 0
    for ann in group.annotations:
        if ann["kind"] == "tag" and ann.get("label"):
            kept += 1
        elif ann["kind"] == "tag":
            result.lose("tags without a label not written")
        else:
            sets.lose_unwritten(result, ann, "ImageNet")
    return kept


def _write_folders(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    ex = task.options.extra
    result = WriteResult()
    copier = per_image.MediaCopier()
    for group in sets.groups(staging, shard=task.shard, shards=task.shards, point_columns=()):
        item = group.item
        labels = sets.tag_labels(group)
        prefix = sets.subset_name(item.get("subset")) if ex["_subset_dirs"] else ""
        written = 0
        for label in labels or [NO_LABEL]:
            rel = sets.join(prefix, label, _name(item))
            written += sets.copied(copier, item.get("media_uri"), out, rel, result)
        if not written:
            result.lose("items not written: ImageNet folders hold the images themselves")
            if group.annotations:
                result.lose("annotations of items not written", len(group.annotations))
            continue
        result.items += 1
        result.annotations += _lose_others(group, result)
        if len(labels) > 1:
            result.lose("items with several labels copied into each label's folder")
        if ex["_one_subset"] and not ex["_subset_dirs"]:
            result.lose("subset name not written (one subset, no subset folder)")
    return result


def _write_list(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    numbers = {name: i for i, name in enumerate(task.options.extra["_names"])}
    result = WriteResult()
    rel = f"{sets.subset_name(task.subset)}.txt"
    with out.open(rel) as f:
        for group in sets.groups(staging, subset=task.subset, point_columns=()):
            labels = sets.tag_labels(group)
            result.annotations += _lose_others(group, result)
            name = _name(group.item)
            if any(c.isspace() for c in name):
                stem, ext = posixpath.splitext(name)
                name = f'"{stem}"{ext}'
            f.write((" ".join([name, *(str(numbers[label]) for label in labels)]) + "\n").encode())
            result.items += 1
    result.files.append(rel)
    return result


FORMAT = Format(
    name=NAME,
    description="ImageNet 1.0: a folder of images per label (or <subset>.txt lists with "
    "synsets.txt); one tag per image",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
    boxes_suffice=lambda options: True,  # images by class: no geometry
)
