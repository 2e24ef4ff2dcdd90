"""Label masks as images: what CamVid, Cityscapes, KITTI, segmentation masks, ICDAR and
Open Images share.

Reading: an image (its content decides, not its suffix: exports ship PNG data named
.bmp) becomes an array of values: palette, grey and 16-bit images hold class or instance
numbers as they are, RGB ones are mapped back to class numbers through a colour table.
Each value present becomes one `mask` annotation, a COCO RLE over the whole image.

Writing: an item's annotations that cover pixels (masks; polygons and boxes are
rasterized, which is counted as lossy) are drawn in z_order, later ones on top, and
each format encodes the drawing as its PNGs, numbering classes by the dataset's class
table (_class_table.py).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as cocomask

from pipelines import masks
from pipelines.builder import BatchBuilder
from pipelines.formats import _per_image as per_image
from pipelines.formats._class_table import RGB
from pipelines.formats.base import ReadOptions, WriteResult
from pipelines.staging import ItemGroup
from pipelines.storage import Source

# -- reading pixels ------------------------------------------------------------------


def load(source: Source, member: str) -> np.ndarray | str:
    """The image as an array: 2-D integers for one channel, H × W × 3 for colour.

    Returns the reason instead when the file is not a readable image.
    """
    try:
        with source.open(member) as f, Image.open(f) as img:
            if img.mode in ("RGB", "RGBA", "RGBX", "LA", "PA", "CMYK", "YCbCr"):
                return np.asarray(img.convert("RGB"))
            if img.mode in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.asarray(img)
                return arr.astype(np.int64) if arr.ndim == 2 else f"{arr.ndim}-D pixel array"
            return f"a {img.mode} image, not a label mask"
    except FileNotFoundError:
        return "file not found"
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        return f"not a readable image: {exc}"


def color_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def code_color(code: int) -> RGB:
    return ((code >> 16) & 255, (code >> 8) & 255, code & 255)


def to_indices(
    arr: np.ndarray, colors: Sequence[RGB | None], *, unknown: int = -1
) -> tuple[np.ndarray, dict[RGB, int]]:
    """Class indices of a label image, and the pixel count of each colour not in `colors`.

    One-channel images hold indices already. In an RGB image each pixel's colour is
    looked up (the first index with a colour wins); unknown colours become `unknown`.
    """
    if arr.ndim == 2:
        return arr, {}
    code = color_codes(arr)
    lookup: dict[int, int] = {}
    for i, c in enumerate(colors):
        if c is not None:
            lookup.setdefault((c[0] << 16) | (c[1] << 8) | c[2], i)
    out = np.full(code.shape, unknown, dtype=np.int64)
    missing: dict[RGB, int] = {}
    values, counts = np.unique(code, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        if value in lookup:
            out[code == value] = lookup[value]
        else:
            missing[code_color(value)] = count
    return out, missing


def reject_colors(b: BatchBuilder, where: str, unknown: dict[RGB, int]) -> None:
    """One reject per colour of a mask that its label table lacks."""
    for color, count in unknown.items():
        reason = f"{count} pixel(s) of colour {color} not in the label table"
        b.reject(f"{where} colour {color}", reason, record=list(color), record_kind="annotations")


def load_or_reject(
    b: BatchBuilder, source: Source, member: str, native_id: str
) -> np.ndarray | None:
    """The mask of an item, or None after rejecting the item with the reason it is unreadable."""
    arr = load(source, member)
    if isinstance(arr, str):
        b.reject(member, arr, record_kind="items", native_id=native_id)
        return None
    return arr


def size_of(
    arr: np.ndarray | None,
    source: Source,
    image: str | None,
    names: list[str],
    options: ReadOptions,
) -> tuple[int, int] | None:
    """(width, height) of an item: its mask's, else its image's (`image_sizes` or header)."""
    if arr is not None:
        return arr.shape[1], arr.shape[0]
    return per_image.find_size(source, image, names, options)[0]


def in_table(
    b: BatchBuilder,
    where: str,
    value: int,
    cls: int,
    table: Sequence[Any],
    what: str = "class id",
) -> bool:
    """Whether the class of a mask value is in the label table; if not, the value is rejected."""
    if cls < len(table):
        return True
    reason = f"{what} {cls} is not in the label table ({len(table)} labels)"
    b.reject(f"{where} value {value}", reason, record=value, record_kind="annotations")
    return False


def values(arr: np.ndarray, skip: Sequence[int] = (0,)) -> Iterator[tuple[int, np.ndarray]]:
    """(value, boolean mask) for each distinct value of a 2-D array, ascending."""
    for value in np.unique(arr).tolist():
        if value not in skip:
            yield int(value), arr == value


def mask_fields(m: np.ndarray) -> dict[str, Any]:
    """The annotation columns of a boolean mask: RLE, its size, area and box."""
    h, w = m.shape
    rle = masks.encode(m)
    x, y, bw, bh = masks.bbox(rle, h, w)
    return {
        "kind": "mask",
        "units": "px",
        "mask": rle,
        "mask_h": h,
        "mask_w": w,
        "area": masks.area(rle, h, w),
        "bbox_x": x,
        "bbox_y": y,
        "bbox_w": bw,
        "bbox_h": bh,
    }


def resize_nearest(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask drawn at another resolution, scaled to height × width (nearest neighbour)."""
    if m.shape == (height, width):
        return m
    img = Image.fromarray(m.astype(np.uint8))
    return np.asarray(img.resize((width, height), Image.Resampling.NEAREST))


# -- writing pixels ----------------------------------------------------------------------


def item_size(group: ItemGroup) -> tuple[int, int] | None:
    """(height, width) of an item: its own, else its first mask's."""
    h, w = group.item.get("height"), group.item.get("width")
    if h and w:
        return int(h), int(w)
    for a in group.annotations:
        if a["kind"] == "mask" and a.get("mask_h") and a.get("mask_w"):
            return int(a["mask_h"]), int(a["mask_w"])
    return None


def lose_text_annotations(group: ItemGroup, result: WriteResult, target: str) -> None:
    """Tags and captions: `shapes` leaves them to the caller, and a mask format drops them."""
    for a in group.annotations:
        if a["kind"] in ("tag", "caption"):
            result.lose(f"{a['kind']} annotations not written: {target} holds pixel masks")


def draw_instances(
    group: ItemGroup,
    size: tuple[int, int],
    class_of: dict[str, int],
    limit: int,
    result: WriteResult,
    target: str,
    code: Callable[[int, int | None], int],
    kinds: Sequence[str] | None = None,
) -> np.ndarray:
    """An instance-id image: each shape's pixels hold `code(class, instance)`, later on top.

    Instance numbers are those of `number_instances` (None for a crowd region).
    """
    h, w = size
    ids = np.zeros((h, w), dtype=np.int32)
    drawn = shapes(group, h, w, result, target, kinds=kinds)
    for shape, cls, number in number_instances(drawn, class_of, limit, result):
        if shape.paint(ids, code(cls, number)):
            result.lose("masks partly hidden by an overlapping mask")
        result.annotations += 1
    return ids


def shapes(
    group: ItemGroup,
    height: int,
    width: int,
    result: WriteResult,
    target: str,
    kinds: Sequence[str] | None = None,
) -> list[Drawn]:
    """The item's annotations that cover pixels, in drawing order.

    Order: z_order, then source order. Only `kinds` are drawn when given; tags and
    captions never are (the caller decides about them); everything else without
    pixels is counted as lost.
    """
    order = sorted(
        (
            a
            for a in group.annotations
            if a["kind"] not in ("tag", "caption") and (kinds is None or a["kind"] in kinds)
        ),
        key=lambda a: a.get("z_order") or 0,
    )
    out = []
    for ann in order:
        counts = coverage(ann, group.points.get(ann["ann_id"], []), height, width, result, target)
        if counts is not None:
            out.append(place(ann, counts, height, width))
    return out


DRAWN_WEIGHT = 100
"""`Format.annotation_weight` of a writer that draws each image whole and writes it as
PNGs: an annotation costs it 1.2-3.9 ms (COCO, 300 images, 1 worker: Segmentation
mask 1.2, CamVid 2.4, KITTI 3.5, Cityscapes 3.9), a YOLO line ~10 µs."""


class Drawn(NamedTuple):
    """An annotation's pixels: `mask` over the box of its image at (`top`, `left`).
    Drawing in the box alone: a whole-image mask per annotation, and painting through
    it, was most of a mask writer's time (Cityscapes, 1,000 images: 47 s)."""

    ann: dict[str, Any]
    top: int
    left: int
    mask: np.ndarray

    def on(self, image: np.ndarray) -> np.ndarray:
        """The part of `image` (of the annotation's image size) under the box: a view."""
        height, width = self.mask.shape
        return image[self.top : self.top + height, self.left : self.left + width]

    def paint(self, image: np.ndarray, value: Any) -> bool:
        """Set the shape's pixels of `image` to `value`; whether any of them was painted
        before (not zero): a shape drawn over part of another."""
        under = self.on(image)
        covered = bool(under[self.mask].any())
        under[self.mask] = value
        return covered


def place(ann: dict[str, Any], counts: str, height: int, width: int) -> Drawn:
    """The pixels of `counts` (COCO RLE over a height × width image), decoded in their
    box alone."""
    (left, top, _, _), pixels = masks.tight(counts, height, width)
    return Drawn(ann, top, left, pixels.astype(bool))


def coverage(
    ann: dict[str, Any],
    points: list[dict[str, Any]],
    height: int,
    width: int,
    result: WriteResult,
    target: str,
) -> str | None:
    """The pixels of one annotation as a COCO RLE string over a height × width image,
    or None (its loss counted)."""
    kind = ann["kind"]
    if ann.get("outside"):
        result.lose("outside shapes skipped")
        return None
    if kind == "mask" and ann.get("mask"):
        if (ann.get("mask_h"), ann.get("mask_w")) != (height, width):
            result.lose("masks whose size differs from the image skipped")
            return None
        return ann["mask"]
    rings: list[list[float]] = []
    if kind == "polygon":
        parts: dict[int, list[float]] = {}
        for p in points:
            parts.setdefault(p.get("part") or 0, []).extend((p["x"], p["y"]))
        rings = [r for r in parts.values() if len(r) >= 6]
    elif kind in ("bbox", "rotated_bbox", "ellipse") and ann.get("bbox_w") is not None:
        rings = [outline(ann)]
    if not rings:
        result.lose(f"{kind} annotations not written: {target} holds pixel masks")
        return None
    name = {"polygon": "polygons", "bbox": "boxes", "rotated_bbox": "rotated boxes"}
    result.lose(f"{name.get(kind, kind + 's')} written as masks")
    return cocomask.merge(cocomask.frPyObjects(rings, height, width))["counts"].decode("ascii")


def outline(ann: dict[str, Any]) -> list[float]:
    """The corners of a (rotated) box, or 32 points of an ellipse, as x0, y0, x1, y1, ..."""
    x, y, w, h = ann["bbox_x"], ann["bbox_y"], ann["bbox_w"], ann["bbox_h"]
    cx, cy = x + w / 2, y + h / 2
    if ann["kind"] == "ellipse":
        steps = [2 * math.pi * k / 32 for k in range(32)]
        local = [(w / 2 * math.cos(t), h / 2 * math.sin(t)) for t in steps]
    else:
        local = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    a = math.radians(ann.get("angle_deg") or 0.0)
    cos, sin = math.cos(a), math.sin(a)
    ring = []
    for dx, dy in local:
        ring += [cx + dx * cos - dy * sin, cy + dx * sin + dy * cos]
    return ring


def number_instances(
    drawn: list[Drawn],
    class_of: dict[str, int],
    limit: int,
    result: WriteResult,
) -> list[tuple[Drawn, int, int | None]]:
    """(shape, class, instance) for labelled shapes; crowd shapes get None.

    A shape keeps a numeric `track_id` as its instance number when that number is free
    within its class and at most `limit`; the others take the lowest free numbers.
    """
    out = []
    used: dict[int, set[int]] = {}
    for shape in drawn:
        ann = shape.ann
        cls = class_of.get(ann.get("label") or "")
        if cls is None:
            result.lose("masks without a label in the class table skipped")
            continue
        taken = used.setdefault(cls, set())
        if ann.get("iscrowd"):
            out.append((shape, cls, None))
            continue
        track = str(ann.get("track_id") or "")
        number = int(track) if track.isdigit() and 1 <= int(track) <= limit else None
        if number is None or number in taken:
            number = next((k for k in range(1, limit + 1) if k not in taken), None)
        if number is None:
            result.lose(f"instances beyond {limit} of a class in one image skipped")
            continue
        taken.add(number)
        out.append((shape, cls, number))
    return out


def paint(indices: np.ndarray, colors: Sequence[RGB]) -> np.ndarray:
    """An index image in colours (indices beyond the table are black). Up to 256
    indices (a class table's), a PIL palette image does it: 505 × 640, 8.0 → 1.6 ms."""
    top = int(indices.max(initial=0))
    table = np.zeros((max(len(colors), top + 1, 256), 3), dtype=np.uint8)
    table[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if top > 255:
        return table[indices]
    img = Image.fromarray(indices.astype(np.uint8))
    img.putpalette(table[:256].tobytes())
    return np.asarray(img.convert("RGB"))


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    """An array as an image file: uint8 → 8-bit grey, other integers → 16-bit grey,
    H × W × 3 → RGB; a PNG through `masks.image_png` (a 1-bit mask: `masks.png`)."""
    if arr.ndim == 2 and arr.dtype != np.uint8:
        arr = arr.astype(np.uint16)
    if fmt == "PNG":
        return masks.image_png(arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()
