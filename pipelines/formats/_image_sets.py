"""What the image-set formats share: ImageNet, Market-1501, LFW, VGGFace2, WIDER Face.

Each is a folder of images plus, at most, small text or CSV files per subset.
Reading: text streamed line by line (a file that is not UTF-8 fails with its
line), images indexed by their path under a folder, one item row per image
with its size from the header. Writing: one task for the dataset-wide files,
one per subset for the subset's annotation file (it must be one file), and
one per shard of items copying images, so copying scales with `--workers`
while every annotation file is written whole by one task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from pipelines.builder import BatchBuilder, to_json
from pipelines.docwrite import attribute_dict
from pipelines.errors import LabelflowError, ParseError
from pipelines.formats import _per_image as per_image
from pipelines.formats.base import ReadTask, WriteOptions, WriteResult, WriteTask
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output, Source

SHARED = per_image.SHARED
SUBSET = -2
"""`WriteTask.shard` of a task writing one subset's annotation file."""
DEFAULT_SUBSET = "default"
SAVE_IMAGES = "save_images"
_ALL = object()


# -- reading ----------------------------------------------------------------------


def text_lines(source: Source, member: str) -> Iterator[tuple[int, str]]:
    """(line number, text without its line end), streamed; a BOM on line 1 is dropped."""
    with source.open(member) as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise ParseError(source.uri(member), f"line {n}", "not UTF-8 text") from exc
            yield n, line.rstrip("\r\n")


def first_line(source: Source, member: str) -> str:
    """The first non-blank line of a member, from its head only (for detection)."""
    for line in source.head(member, 4096).decode("utf-8-sig", "replace").splitlines():
        if line.strip():
            return line
    return ""


def images_under(source: Source, folder: str) -> dict[str, str]:
    """Images below `folder`, keyed by their path under it without the extension."""
    prefix = folder.rstrip("/") + "/" if folder else ""
    return {
        per_image.strip_ext(f[len(prefix) :]): f
        for f in source.files
        if f.startswith(prefix) and per_image.is_image(f)
    }


def join(*parts: str | None) -> str:
    return "/".join(p for p in parts if p)


def add_item(
    b: BatchBuilder,
    task: ReadTask,
    item_id: str,
    *,
    image: str | None,
    file_name: str,
    subset: str | None,
    native_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """One image item; its size comes from `image_sizes` or the image header."""
    size, _ = per_image.find_size(task.source, image, [image, file_name], task.options)
    b.item(
        item_id=item_id,
        native_id=native_id or file_name,
        file_name=file_name,
        media_uri=task.source.uri(image) if image else None,
        media_type="image",
        width=size[0] if size else None,
        height=size[1] if size else None,
        subset=subset,
        metadata=to_json(metadata) if metadata else None,
    )
    b.read_counts["items"] += 1


def tag(
    b: BatchBuilder, item_id: str, label: str, *, label_id: str | None = None, n: int = 0
) -> str:
    """A whole-image label (the `n`-th of its item); returns its ann_id."""
    ann_id = f"{item_id}/tag" if n == 0 else f"{item_id}/tag/{n}"
    b.annotation(ann_id=ann_id, item_id=item_id, kind="tag", label=label, label_id=label_id)
    b.read_counts["annotations"] += 1
    return ann_id


# -- writing ----------------------------------------------------------------------


def flag(options: WriteOptions, key: str, default: bool) -> bool:
    """A yes/no writer option; the CLI passes every option as text."""
    value = options.extra.get(key, default)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        msg = f"writer option {key} must be true or false, not {value!r}"
        raise LabelflowError(msg)
    return bool(value)


def plan(
    fmt: str,
    staging: Staging,
    options: WriteOptions,
    *,
    shared: bool = False,
    per_subset: bool = True,
    images: bool | None = None,
    **extra: Any,
) -> list[WriteTask]:
    """The shared task, one task per subset, then the image-copying shards.

    `extra` is computed once here so every task agrees on it (label lists,
    folder numbers). `images` defaults to the `save_images` option (true).
    """
    opts = replace(options, extra={**options.extra, **extra})
    tasks = [WriteTask(fmt, shard=SHARED, options=opts)] if shared else []
    if per_subset:
        tasks += [WriteTask(fmt, subset=s, shard=SUBSET, options=opts) for s in staging.subsets()]
    if flag(options, SAVE_IMAGES, True) if images is None else images:
        n = per_image.shard_count(staging, options)
        tasks += [WriteTask(fmt, shard=k, shards=n, options=opts) for k in range(n)]
    return tasks


def groups(staging: Staging, *, subset: Any = _ALL, **options: Any) -> Iterator[ItemGroup]:
    """Items in source order with what is attached to them: one subset (None: items
    without one) or all; `options` go to `Staging.iter_items` (a hash shard, which
    vertices)."""
    if subset is _ALL:
        return staging.iter_items(**options)
    return staging.iter_items(subset=subset, all_subsets=False, **options)


def item_attributes(group: ItemGroup) -> dict[str, Any]:
    return attribute_dict(group.attributes.get(group.item["item_id"], []))


def ann_attributes(group: ItemGroup, ann: dict[str, Any]) -> dict[str, Any]:
    return attribute_dict(group.attributes.get(ann["ann_id"], []))


def tag_labels(group: ItemGroup) -> list[str]:
    """The item's whole-image labels, first first, each once."""
    out: list[str] = []
    for ann in group.annotations:
        if ann["kind"] == "tag" and ann.get("label") and ann["label"] not in out:
            out.append(ann["label"])
    return out


def subset_name(subset: str | None) -> str:
    return subset or DEFAULT_SUBSET


def copy_images(
    task: WriteTask,
    staging: Staging,
    out: Output,
    paths: Callable[[ItemGroup], list[str]],
    result: WriteResult | None = None,
) -> WriteResult:
    """Copy the shard's images to the places `paths` gives (none: the item is skipped)."""
    result = result or WriteResult()
    copier = per_image.MediaCopier()
    for group in groups(staging, shard=task.shard, shards=task.shards, point_columns=()):
        for rel in paths(group):
            copier.copy(group.item.get("media_uri"), out, rel, result)
    return result


def copied(
    copier: per_image.MediaCopier, uri: str | None, out: Output, rel: str, result: WriteResult
) -> bool:
    """Copy one image; True when it was written (a failure is counted as lossy)."""
    before = sum(result.lossy.values())
    copier.copy(uri, out, rel, result)
    return sum(result.lossy.values()) == before


def lose_unwritten(result: WriteResult, ann: dict[str, Any], fmt: str) -> None:
    result.lose(f"{ann['kind']} annotations not written: {fmt} has no place for them")
