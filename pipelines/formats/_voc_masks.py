"""Pascal VOC's label map and segmentation PNGs (also CVAT's Segmentation mask format).

labelmap.txt (CVAT): one `label:r,g,b:part1,part2:action1,action2` line per
class; a class's line number is its index in SegmentationClass PNGs. Without
the file the 21 VOC classes apply. SegmentationObject PNGs hold instance
numbers: instance i is the i-th <object> of the image's XML. Both come as
palette PNGs (pixel = index) or as RGB drawn with the VOC colour map; 255 is
the "void" border and belongs to nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image

from pipelines import masks
from pipelines.errors import ParseError
from pipelines.formats.base import WriteResult

if TYPE_CHECKING:
    from pipelines.formats._label_masks import Drawn

VOID = 255

VOC_LABELS = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_PARTS = {"person": ["head", "hand", "foot"]}
VOC_ACTIONS = {
    "person": [
        "jumping", "phoning", "playinginstrument", "reading", "ridingbike", "ridinghorse",
        "running", "takingphoto", "usingcomputer", "walking", "other",
    ]
}  # fmt: skip


@cache
def colormap() -> tuple[tuple[int, int, int], ...]:
    """The VOC colour of each index 0..255 (bits of the index spread over r, g, b)."""
    out = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


@dataclass
class LabelEntry:
    name: str
    color: tuple[int, int, int] | None = None
    parts: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)


def default_labelmap() -> list[LabelEntry]:
    return [
        LabelEntry(n, colormap()[i], VOC_PARTS.get(n, []), VOC_ACTIONS.get(n, []))
        for i, n in enumerate(VOC_LABELS)
    ]


def parse_labelmap(text: str, uri: str) -> list[LabelEntry]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) > 4:
            raise ParseError(uri, f"line {n}", "expected label:color:parts:actions")
        fields += [""] * (4 - len(fields))
        color = None
        if fields[1].strip():
            try:
                rgb = tuple(int(v) for v in fields[1].split(","))
            except ValueError as exc:
                raise ParseError(uri, f"line {n}", f"bad colour {fields[1]!r}") from exc
            if len(rgb) != 3:
                raise ParseError(uri, f"line {n}", f"bad colour {fields[1]!r}")
            color = rgb
        parts = [p.strip() for p in fields[2].split(",") if p.strip()]
        actions = [a.strip() for a in fields[3].split(",") if a.strip()]
        out.append(LabelEntry(fields[0].strip(), color, parts, actions))  # type: ignore[arg-type]
    return out


def labelmap_text(entries: list[LabelEntry]) -> str:
    lines = ["# label:color_rgb:parts:actions"]
    for i, e in enumerate(entries):
        color = e.color or colormap()[i % 256]
        rgb = ",".join(str(v) for v in color)
        lines.append(f"{e.name}:{rgb}:{','.join(e.parts)}:{','.join(e.actions)}")
    return "\n".join(lines) + "\n"


def read_indices(f: IO[bytes], colors: list[tuple[int, int, int] | None]) -> tuple[np.ndarray, int]:
    """A segmentation PNG → (indices as uint16, pixels whose colour maps to no index).

    Palette and grey PNGs hold indices already; RGB ones are mapped back
    through `colors` (index → colour). Unknown colours become VOID.
    """
    with Image.open(f) as img:
        if img.mode in ("P", "L", "I", "I;16"):
            return np.asarray(img).astype(np.uint16), 0
        rgb = np.asarray(img.convert("RGB")).astype(np.uint32)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    lookup = {(c[0] << 16) | (c[1] << 8) | c[2]: i for i, c in enumerate(colors) if c}
    lookup.setdefault((224 << 16) | (224 << 8) | 192, VOID)  # VOC's void colour
    out = np.full(code.shape, VOID, dtype=np.uint16)
    unknown = np.ones(code.shape, dtype=bool)
    for value in np.unique(code):
        if int(value) in lookup:
            hit = code == value
            out[hit] = lookup[int(value)]
            unknown &= ~hit
    return out, int(unknown.sum())


def write_png(f: IO[bytes], indices: np.ndarray, colors: list[tuple[int, int, int]]) -> None:
    """An index image as a palette PNG whose palette is `colors` (VOC map beyond them)."""
    palette = list(colormap())
    for i, c in enumerate(colors[:256]):
        palette[i] = c
    f.write(masks.image_png(indices.astype(np.uint8), bytes(int(v) for c in palette for v in c)))


@dataclass(frozen=True)
class Segment:
    """One mask of an image's segmentation PNGs."""

    instance: int | None
    """Its number in SegmentationObject; None for a mask of SegmentationClass alone."""
    index: int | None
    """Its class index: the most frequent class under an instance (None when only
    background or void lies under it)."""
    mask: np.ndarray


def segments(cls: np.ndarray | None, obj: np.ndarray | None) -> Iterator[Segment]:
    """The instances of SegmentationObject, or, without it, the classes of SegmentationClass.

    Background (0) and void (255) are never a segment.
    """
    if obj is not None:
        for inst in (int(v) for v in np.unique(obj) if v not in (0, VOID)):
            m = obj == inst
            index = None
            if cls is not None:
                vals = cls[m]
                vals = vals[(vals != 0) & (vals != VOID)]
                if vals.size:
                    index = int(np.bincount(vals).argmax())
            yield Segment(inst, index, m)
    elif cls is not None:
        for c in (int(v) for v in np.unique(cls) if v not in (0, VOID)):
            yield Segment(None, c, cls == c)


def draw(
    shapes: Iterable[Drawn],
    height: int,
    width: int,
    class_index: dict[str, int],
    objects: dict[str, int],
    result: WriteResult,
) -> tuple[np.ndarray, np.ndarray]:
    """(SegmentationObject, SegmentationClass) index arrays of one image, later shapes on top.

    A shape whose `group_id` is a written object's ann_id takes that object's number
    (`objects`: ann_id → number), so instance i stays the i-th <object>; the others
    take the next free numbers.
    """
    obj = np.zeros((height, width), dtype=np.uint8)
    cls = np.zeros((height, width), dtype=np.uint8)
    used = set(objects.values())
    next_free = len(objects) + 1
    for shape in shapes:
        a = shape.ann
        label = a.get("label")
        if label not in class_index or class_index[label] >= VOID:
            result.lose("unlabelled annotations skipped")
            continue
        inst = objects.get(a.get("group_id") or "")
        if inst is None:
            while next_free in used:
                next_free += 1
            inst = next_free
            used.add(inst)
        if inst >= VOID:
            result.lose("masks beyond 254 instances per image skipped")
            continue
        shape.paint(obj, inst)
        shape.paint(cls, class_index[label])
        result.annotations += 1
    return obj, cls
