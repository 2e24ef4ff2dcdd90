"""Label masks as images: what CamVid, Cityscapes, KITTI, segmentation masks, ICDAR and
Open Images share.

Reading: an image (its content decides, not its suffix: exports ship PNG data named
.bmp) becomes an array of values: palette, grey and 16-bit images hold class or instance
numbers as they are, RGB ones are mapped back to class numbers through a colour table.
Each value present becomes one `mask` annotation, a COCO RLE over the whole image.

Writing: an item's annotations that cover pixels (masks; polygons and boxes are
rasterized, which is counted as lossy) are drawn in z_order, later ones on top, and
each format encodes the drawing as its PNGs. The class table (index → name, colour)
is computed once per dataset so every partition numbers classes alike.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import orjson
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as cocomask

from pipelines import masks
from pipelines.builder import BatchBuilder
from pipelines.errors import ParseError
from pipelines.formats._voc_masks import colormap
from pipelines.formats.base import WriteResult
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Source

RGB = tuple[int, int, int]
BLACK: RGB = (0, 0, 0)
DRAWN = ("mask", "polygon", "bbox", "rotated_bbox", "ellipse")
"""Kinds a mask writer draws (polygons and boxes rasterized)."""


# -- text files --------------------------------------------------------------------


def read_text(source: Source, member: str) -> str:
    """A small text file, UTF-8 (a BOM is dropped); not UTF-8 → ParseError with its line."""
    with source.open(member) as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ParseError(source.uri(member), f"line {line}", "not UTF-8 text") from exc


def parse_label_colors(text: str, uri: str) -> list[tuple[str, RGB | None]]:
    """`label_colors.txt`: `r g b name` or just `name` a line; line order is the class id.

    `#` lines and blank lines are skipped; a name may contain spaces.
    """
    out: list[tuple[str, RGB | None]] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=3)
        color = None
        if len(parts) == 4 and all(p.lstrip("-").isdigit() for p in parts[:3]):
            rgb = tuple(int(p) for p in parts[:3])
            if not all(0 <= v <= 255 for v in rgb):
                raise ParseError(uri, f"line {n}", f"colour {parts[:3]} is not 0..255")
            color, name = rgb, parts[3]
        elif parts[0].lstrip("-").isdigit() and len(parts) >= 3:
            raise ParseError(uri, f"line {n}", "expected `r g b name` or `name`")
        else:
            name = line
        if name in seen:
            raise ParseError(uri, f"line {n}", f"label {name!r} is defined twice")
        seen.add(name)
        out.append((name, color))  # type: ignore[arg-type]
    return out


def label_colors_text(table: Sequence[tuple[str, RGB | None]]) -> str:
    return "".join(
        f"{' '.join(str(v) for v in color)} {name}\n" if color else f"{name}\n"
        for name, color in table
    )


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


# -- label colours of a dataset ---------------------------------------------------------


def label_colors(staging: Staging) -> dict[str, RGB]:
    """label → colour as the sources gave it (label attribute `color`, any source)."""
    out: dict[str, RGB] = {}
    for owner, value in staging.con.execute(
        "SELECT owner_id, value FROM attributes WHERE owner_kind = 'label' AND key = 'color' "
        "ORDER BY filename, file_row_number"
    ).fetchall():
        label = owner.removeprefix("label:")
        try:
            rgb = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            continue
        if (
            label not in out
            and isinstance(rgb, list)
            and len(rgb) == 3
            and all(isinstance(v, int) and 0 <= v <= 255 for v in rgb)
        ):
            out[label] = tuple(rgb)  # type: ignore[assignment]
    return out


def voc_palette() -> tuple[RGB, ...]:
    """VOC's colour map: where these formats take colours for labels that have none."""
    return colormap()


def class_table(
    staging: Staging,
    *,
    defaults: Sequence[tuple[str, RGB | None]] = (),
    background: str = "background",
    limit: int = 255,
    distinct_colors: bool = False,
    kinds: Sequence[str] = DRAWN,
) -> list[tuple[str, RGB]]:
    """index → (name, colour) for a whole dataset; index 0 is the background.

    The labels are those of annotations of `kinds` (the ones a mask writer draws).

    Numeric `label_id`s (what these formats read) are kept when they fit, so a
    Cityscapes or KITTI source keeps its class ids; gaps take the default table's name
    for that index (or `class_<n>`). Otherwise, when every label is in the default
    table, the default numbering is used; else labels are numbered from 1 in order of
    first appearance. Colours: as the sources gave them, else the default table's,
    else the first unused colour of the VOC colour map. `distinct_colors` (for formats
    decoded by colour) gives a label whose colour is taken another one.
    """
    marks = ", ".join("?" for _ in kinds)
    first: dict[str, str | None] = {}
    for label, label_id in staging.con.execute(
        "SELECT label, label_id FROM annotations WHERE label IS NOT NULL "
        f"AND kind IN ({marks}) GROUP BY label, label_id "
        "ORDER BY min(filename), min(file_row_number)",
        list(kinds),
    ).fetchall():
        first.setdefault(label, label_id)
    given = label_colors(staging)
    default_names = [n for n, _ in defaults]
    default_color = {n: c for n, c in defaults if c is not None}
    names = _kept_ids(first, default_names, background, limit)
    if names is None:
        if first and all(n in default_names for n in first) and len(defaults) - 1 <= limit:
            names = list(default_names)
        else:
            bg = default_names[0] if default_names else background
            names = [bg] + [n for n in first if n != bg]
    colors: list[RGB | None] = []
    for i, name in enumerate(names):
        color = given.get(name) or default_color.get(name)
        if i == 0 and color is None:
            color = BLACK
        colors.append(color)
    used: set[RGB] = set()
    for i, color in enumerate(colors):
        if color is not None and distinct_colors and color in used:
            colors[i] = None
        if colors[i] is not None:
            used.add(colors[i])  # type: ignore[arg-type]
    free = (c for c in voc_palette()[1:] if c not in used)
    return [(name, color or next(free)) for name, color in zip(names, colors, strict=True)]


def _kept_ids(
    first: dict[str, str | None], default_names: list[str], background: str, limit: int
) -> list[str] | None:
    ids: dict[str, int] = {}
    for label, label_id in first.items():
        if label_id is None or not label_id.isdigit():
            return None
        ids[label] = int(label_id)
    if not ids or len(set(ids.values())) != len(ids):
        return None
    top = max(ids.values())
    if top > limit or top > max(2 * len(ids) + 16, len(default_names) - 1):
        return None
    by_id = {n: label for label, n in ids.items()}
    if 0 in by_id and by_id[0] not in (background, *default_names[:1]):
        return None  # index 0 is the background in every one of these formats
    taken = set(ids)
    names = []
    for i in range(top + 1):
        if i in by_id:
            names.append(by_id[i])
        elif i < len(default_names) and default_names[i] not in taken:
            names.append(default_names[i])
        elif i == 0:
            names.append(background)
        else:
            names.append(f"class_{i}")
    return names


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


def shapes(
    group: ItemGroup,
    height: int,
    width: int,
    result: WriteResult,
    target: str,
    kinds: Sequence[str] | None = None,
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """The item's annotations that cover pixels, in drawing order, with boolean masks.

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
        m = pixels(ann, group.points.get(ann["ann_id"], []), height, width, result, target)
        if m is not None:
            out.append((ann, m))
    return out


def pixels(
    ann: dict[str, Any],
    points: list[dict[str, Any]],
    height: int,
    width: int,
    result: WriteResult,
    target: str,
) -> np.ndarray | None:
    """A boolean height × width mask of one annotation, or None (its loss counted)."""
    kind = ann["kind"]
    if ann.get("outside"):
        result.lose("outside shapes skipped")
        return None
    if kind == "mask" and ann.get("mask"):
        if (ann.get("mask_h"), ann.get("mask_w")) != (height, width):
            result.lose("masks whose size differs from the image skipped")
            return None
        return masks.decode(ann["mask"], height, width).astype(bool)
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
    rle = cocomask.merge(cocomask.frPyObjects(rings, height, width))
    return cocomask.decode(rle).astype(bool)


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
    drawn: list[tuple[dict[str, Any], np.ndarray]],
    class_of: dict[str, int],
    limit: int,
    result: WriteResult,
) -> list[tuple[dict[str, Any], np.ndarray, int, int | None]]:
    """(annotation, mask, class, instance) for labelled shapes; crowd shapes get None.

    A shape keeps a numeric `track_id` as its instance number when that number is free
    within its class and at most `limit`; the others take the lowest free numbers.
    """
    out = []
    used: dict[int, set[int]] = {}
    for ann, m in drawn:
        cls = class_of.get(ann.get("label") or "")
        if cls is None:
            result.lose("masks without a label in the class table skipped")
            continue
        taken = used.setdefault(cls, set())
        if ann.get("iscrowd"):
            out.append((ann, m, cls, None))
            continue
        track = str(ann.get("track_id") or "")
        number = int(track) if track.isdigit() and 1 <= int(track) <= limit else None
        if number is None or number in taken:
            number = next((k for k in range(1, limit + 1) if k not in taken), None)
        if number is None:
            result.lose(f"instances beyond {limit} of a class in one image skipped")
            continue
        taken.add(number)
        out.append((ann, m, cls, number))
    return out


def paint(indices: np.ndarray, colors: Sequence[RGB]) -> np.ndarray:
    """An index image in colours (indices beyond the table are black)."""
    table = np.zeros((max(len(colors), int(indices.max(initial=0)) + 1), 3), dtype=np.uint8)
    table[: len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    return table[indices]


def png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    """An array as an image file: uint16 → 16-bit grey, bool → 1-bit, H × W × 3 → RGB."""
    if arr.dtype == bool:
        img = Image.fromarray(arr.astype(np.uint8) * 255).convert("1")
    elif arr.ndim == 2 and arr.dtype != np.uint8:
        img = Image.fromarray(arr.astype(np.uint16))
    else:
        img = Image.fromarray(arr)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()
