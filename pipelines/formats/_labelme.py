"""What the LabelMe JSON and LabelMe 3.0 XML flavours share: paths, masks, partitions.

Both flavours keep one annotation file per image. A file below a folder takes the
first folder as its subset (LabelMe 3.0's `Annotations/` prefix is not a subset), and
`file_name` is the image's path relative to that subset folder, so a writer puts each
file back where it was: `<subset>/<dir>/<stem>.<ext>`.
"""

from __future__ import annotations

import hashlib
import io
import math
import posixpath
from collections.abc import Callable
from typing import Any

import numpy as np

from pipelines import masks
from pipelines.builder import BatchBuilder, parse_attribute
from pipelines.errors import ParseError
from pipelines.formats import _per_image as per_image
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output, Source

ANNOTATIONS_DIR = "Annotations"


def item_place(rel: str, suffix: str) -> tuple[str | None, str, str]:
    """(subset, item_id, folder below the subset) of an annotation file's relative path."""
    parts = rel.split("/")
    if len(parts) > 1 and parts[0] == ANNOTATIONS_DIR:
        parts = parts[1:]
    stem = parts[-1][: -len(suffix)] if parts[-1].lower().endswith(suffix) else parts[-1]
    subset = parts[0] if len(parts) > 1 else None
    inner = "/".join(parts[1:-1]) if len(parts) > 1 else ""
    return subset, "/".join([*parts[:-1], stem]), inner


def image_name(inner: str, image_path: str | None) -> str | None:
    """The image's path relative to the subset folder; its base name if it would climb out."""
    if not image_path:
        return None
    clean = image_path.replace("\\", "/")
    joined = posixpath.normpath(posixpath.join(inner, clean)) if inner else clean
    joined = posixpath.normpath(joined)
    if joined.startswith(("../", "/")) or joined == "..":
        return posixpath.basename(clean) or None
    return joined


def output_stem(item: dict[str, Any]) -> str:
    """`<dir>/<stem>` of an item's annotation file below its subset folder."""
    name = item.get("file_name") or item.get("native_id") or item["item_id"]
    parts = [p for p in str(name).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        parts = [item["item_id"].replace("/", "_")]
    stem, ext = posixpath.splitext(parts[-1])
    parts[-1] = stem if stem and ext else parts[-1]
    return "/".join(parts)


class OutputNames:
    """Output stems for one write task; items whose stems collide (a.jpg and a.png) get a
    suffix from their item id, decided over the whole dataset so every shard agrees."""

    def __init__(self, staging: Staging) -> None:
        self.colliding = per_image.colliding_stems(staging, per_subset=True)

    def stem(self, item: dict[str, Any]) -> str:
        stem = output_stem(item)
        name = str(item.get("file_name") or item.get("native_id") or item["item_id"])
        key = (item.get("subset"), per_image.strip_ext(name.replace("\\", "/")).lower())
        if key in self.colliding:
            digest = hashlib.sha1(item["item_id"].encode()).hexdigest()[:8]
            return f"{stem}_{digest}"
        return stem


def parse_or_reject(
    b: BatchBuilder, source: Source, member: str, parse: Callable[[Source, str], Any]
) -> Any:
    """One annotation file parsed, or None after rejecting it as an item that names the
    file and the place (under the `fail` policy, the error): one bad file of thousands
    should not stop the read."""
    try:
        return parse(source, member)
    except ParseError as exc:
        b.read_counts["items"] += 1
        b.reject(f"{member or source.name}: {exc.location}", exc.reason, record_kind="items")
        return None


def mask_from_png(data: bytes) -> np.ndarray | str:
    """A boolean mask from PNG bytes (any non-zero channel is set), or why there is none."""
    from PIL import Image  # imported where pixels are read: detection needs none (~2 MB)

    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img)
    except (OSError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        return f"not a readable image: {exc}"
    return arr.any(axis=2) if arr.ndim == 3 else arr.astype(bool)


def png_bytes(mask: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def image_member(source: Source, candidates: list[str]) -> str | None:
    """The first candidate path that is a file of the source."""
    for rel in candidates:
        try:
            if rel and source.exists(rel):
                return rel
        except Exception:  # a candidate that would escape the source is just not there
            continue
    return None


def plan_write(name: str, staging: Staging, options: WriteOptions) -> list[WriteTask]:
    """One task per subset and shard: every item is its own file, so shards never collide."""
    shards = per_image.shard_count(staging, options)
    return [
        WriteTask(name, subset=subset, shard=shard, shards=shards, options=options)
        for subset in staging.subsets()
        for shard in range(shards)
    ]


def write_files(
    task: WriteTask,
    staging: Staging,
    out: Output,
    suffix: str,
    render: Callable[[ItemGroup, str, WriteResult], bytes],
) -> WriteResult:
    """The task's items, one file each at `<subset>/<dir>/<stem><suffix>`.

    `render(group, stem, result)` makes a file's bytes and counts what it cannot hold.
    """
    result = WriteResult()
    names = OutputNames(staging)
    for group in staging.iter_items(
        subset=task.subset,
        all_subsets=False,
        point_columns=(),
        part_kinds=VERTEX_KINDS,
        shard=task.shard,
        shards=task.shards,
    ):
        stem = names.stem(group.item)
        rel = "/".join(p for p in (task.subset, stem + suffix) if p)
        per_image.put(out, rel, render(group, stem, result), result)
        result.items += 1
    return result


def annotation_values(group: ItemGroup, owner_id: str) -> list[tuple[str, Any, str | None]]:
    """(key, original value, source) of an owner's attribute rows."""
    return [
        (a["key"], parse_attribute(a["value"], a["value_type"]), a.get("source"))
        for a in group.attributes.get(owner_id, [])
    ]


def group_numbers(group: ItemGroup) -> dict[str, int]:
    """group_id → a small integer per item: numeric ids are kept, others numbered after."""
    ids = [a["group_id"] for a in group.annotations if a.get("group_id") is not None]
    out = {g: int(g) for g in ids if g.isdigit()}
    nxt = max(out.values(), default=0) + 1
    for g in ids:
        if g not in out:
            out[g] = nxt
            nxt += 1
    return out


VERTEX_KINDS = ("polygon", "polyline", "point", "points", "keypoints")
"""The kinds whose vertices the LabelMe writers read, as one array per part (`rings`)."""


def rings(parts: dict[int, np.ndarray]) -> list[list[list[float]]]:
    """An annotation's vertices (`ItemGroup.parts`) as [x, y] pairs, part by part."""
    return [xy.reshape(-1, 2).tolist() for xy in parts.values()]


def box_corners(ann: dict[str, Any]) -> list[tuple[float, float]]:
    """The four corners of a (possibly rotated) box, clockwise from its top-left."""
    x, y, w, h = ann["bbox_x"], ann["bbox_y"], ann["bbox_w"], ann["bbox_h"]
    corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
    angle = ann.get("angle_deg") or 0.0
    if not angle:
        return corners
    a = math.radians(angle)
    cx, cy = x + w / 2, y + h / 2
    return [
        (
            cx + (px - cx) * math.cos(a) - (py - cy) * math.sin(a),
            cy + (px - cx) * math.sin(a) + (py - cy) * math.cos(a),
        )
        for px, py in corners
    ]


def ellipse_polygon(ann: dict[str, Any], n: int = 32) -> list[tuple[float, float]]:
    """An ellipse's outline as n vertices (for flavours without ellipses)."""
    x, y, w, h = ann["bbox_x"], ann["bbox_y"], ann["bbox_w"], ann["bbox_h"]
    cx, cy, rx, ry = x + w / 2, y + h / 2, w / 2, h / 2
    a = math.radians(ann.get("angle_deg") or 0.0)
    out = []
    for k in range(n):
        t = 2 * math.pi * k / n
        ex, ey = rx * math.cos(t), ry * math.sin(t)
        out.append(
            (cx + ex * math.cos(a) - ey * math.sin(a), cy + ex * math.sin(a) + ey * math.cos(a))
        )
    return out


def mask_box(counts: str, height: int, width: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), inclusive, of the set pixels of a COCO RLE mask; None for an
    empty one. From the runs: the decoded image need not be searched."""
    x, y, w, h = masks.box(counts, height, width)
    return (x, y, x + w - 1, y + h - 1) if w else None
