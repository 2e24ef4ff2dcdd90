"""AIMMO's run-length masks ("23F456T232F234T") to and from full-image arrays.

The string is runs of <count><F|T> (F outside, T inside) over the box given by
`bound` = [[left, top], [right, bottom]], scanned row by row: left to right,
then top to bottom, as a canvas pixel buffer is laid out. The format document
does not state the order; row-major is the inference, pinned by a test.

The box is right - left wide and bottom - top high, unless the runs cover
exactly (right - left + 1) × (bottom - top + 1) pixels, in which case the
corners are inclusive. Pixels after the last run are outside: the document's
own example ends in a T run and covers fewer pixels than its bound.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from pipelines import masks
from pipelines.builder import is_finite

_RUN = re.compile(r"(\d+)([FT])")


def decode_runs(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths and their values (True = inside) of an AIMMO mask string."""
    counts, values, pos = [], [], 0
    for m in _RUN.finditer(text):
        if m.start() != pos:
            break
        counts.append(int(m.group(1)))
        values.append(m.group(2) == "T")
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"mask is not <count>F/<count>T runs at character {pos}")
    return np.asarray(counts, dtype=np.int64), np.asarray(values, dtype=bool)


def bound_box(bound: Any) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a bound, whole pixels; raises ValueError otherwise."""
    if not (
        isinstance(bound, list)
        and len(bound) == 2
        and all(isinstance(p, list) and len(p) == 2 and is_finite(*p) for p in bound)
    ):
        raise ValueError(f"bound must be [[left, top], [right, bottom]]; found {bound!r}")
    (left, top), (right, bottom) = ((round(x), round(y)) for x, y in bound)
    if right < left or bottom < top:
        raise ValueError(f"bound {bound!r} is not [top-left, bottom-right]")
    return left, top, right, bottom


def decode_mask(text: str, bound: Any) -> tuple[np.ndarray, int, int]:
    """The mask over its bound box (rows × columns), with the box's left and top."""
    left, top, right, bottom = bound_box(bound)
    w, h = right - left, bottom - top
    counts, values = decode_runs(text)
    total = int(counts.sum())
    inclusive = (w + 1) * (h + 1)
    if total > inclusive:
        raise ValueError(f"runs cover {total} pixels; the bound holds at most {inclusive}")
    if total > w * h or total == inclusive:
        w, h = w + 1, h + 1
    flat = np.zeros(w * h, dtype=np.uint8)
    flat[:total] = np.repeat(values, counts)
    return flat.reshape((h, w)), left, top


def encode_mask(counts: str, height: int, width: int, bound: Any = None) -> tuple[str, Any]:
    """A COCO RLE mask of the image → (run string, bound), the inverse of `decode_mask`.

    The given bound is kept when every set pixel lies inside it (its corners
    read as inclusive if pixels touch them); otherwise the tight box is used.
    Runs always cover the whole box, so no reader has to guess its size. Only
    the tight box is decoded (`masks.decode_box`): finding the set pixels of
    the whole image was most of the AIMMO writer's time.
    """
    (x, y, w, h), inside = masks.tight(counts, height, width)
    pixels = None  # (left, top, right, bottom) of the set pixels, inclusive
    if w and h:
        pixels = (x, y, x + w - 1, y + h - 1)
    box = None
    if bound is not None:
        try:
            box = bound_box(bound)
        except ValueError:
            box = None
        if (
            box is not None
            and pixels is not None
            and not (
                pixels[0] >= box[0]
                and pixels[1] >= box[1]
                and pixels[2] <= box[2]
                and pixels[3] <= box[3]
            )
        ):
            box = None
    if box is None:
        box = (pixels[0], pixels[1], pixels[2] + 1, pixels[3] + 1) if pixels else (0, 0, 0, 0)
        bound = [[box[0], box[1]], [box[2], box[3]]]
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    if pixels is not None and (pixels[2] >= right or pixels[3] >= bottom):
        w, h = w + 1, h + 1
    sub = np.zeros((h, w), dtype=np.uint8)
    if pixels is not None:
        _copy(inside, y, x, sub, top, left)
    lengths = masks.runs(sub.ravel())
    return "".join(f"{n}{'T' if i % 2 else 'F'}" for i, n in enumerate(lengths) if n), bound


def _copy(src: np.ndarray, src_top: int, src_left: int, dst: np.ndarray, top: int, left: int):
    """Copy the overlap of src (placed at src_top/left) into dst (placed at top/left)."""
    y0, x0 = max(src_top, top), max(src_left, left)
    y1 = min(src_top + src.shape[0], top + dst.shape[0])
    x1 = min(src_left + src.shape[1], left + dst.shape[1])
    if y1 > y0 and x1 > x0:
        dst[y0 - top : y1 - top, x0 - left : x1 - left] = src[
            y0 - src_top : y1 - src_top, x0 - src_left : x1 - src_left
        ]
