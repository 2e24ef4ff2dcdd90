#!/usr/bin/env python3
# ruff: noqa: UP031, SIM115 - kept as the corpora were first generated: the bytes must not change
"""Deterministic synthetic COCO "instances" generator (standard library only).

Writes a COCO object-detection / instance-segmentation export that looks like
the real thing, for benchmarking and testing converters:

* the 80 real COCO categories with their real, non-contiguous ids (1..90) and
  supercategories, so a converter must remap ids (e.g. to YOLO's 0..79);
* a skewed class distribution ("person" is about a quarter of all objects);
* varying image sizes (mostly <= 640 px like COCO, some HD, some small),
  sparse increasing image ids, 0..2K annotations per image (mean K), so some
  images have no annotation at all;
* per annotation: float ``bbox`` [x, y, w, h], float ``area``, and a polygon
  ``segmentation`` with 6-20 vertices (about 5% of objects have 2 parts);
* about 1% of annotations are ``iscrowd: 1`` with an uncompressed RLE
  ``{"counts": [...], "size": [h, w]}`` whose counts sum to h*w (column-major,
  as pycocotools expects);
* top-level keys in the usual order: info, licenses, images, annotations,
  categories -- note that ``categories`` comes *after* ``annotations``, as in
  the official files, which matters to streaming readers.

Output is a pure function of the arguments: the same ``--images``,
``--anns-per-image``, ``--seed`` and options give a byte-identical file on any
platform and Python 3 version (only ``random.Random.random()`` is used, and
every image and annotation has its own seeded stream, so the content of an
annotation does not depend on ``--order``).

The file is written as a stream; memory stays small (a few arrays of ints,
plus one permutation list with ``--order random``).

Examples::

    # ~10 MB, ~30k annotations
    python bench/make_coco.py --images 4000 --anns-per-image 7 --seed 1 --out small.json
    # annotations in random order (the official COCO files are not grouped by image)
    python bench/make_coco.py --images 4000 --anns-per-image 7 --order random --out small_rand.json
    # JSON Lines: one image with its annotations per line, categories in a side file
    python bench/make_coco.py --images 4000 --anns-per-image 7 --format jsonl --out small.jsonl

Sizes
-----
About 360 bytes per annotation (images included) at the default K=7:

    --images 4000   -> ~10 MB,   28k annotations,  ~2 s
    --images 80000  -> ~200 MB, 558k annotations, ~30 s
    --images 410000 -> ~1 GB,   2.9M annotations, ~2.5 min

Formats
-------
``--format coco`` (default): one JSON object, compact separators, no newlines
except one after each top-level section.

``--format jsonl``: one line per image::

    {"image": {...}, "annotations": [{...}, ...]}

and the categories list in ``<out>.categories.json`` (or ``--categories-out``).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import sys
import time
from array import array
from collections.abc import Iterator, Sequence
from typing import IO

# (id, name, supercategory): the 80 categories of COCO 2017, real ids.
COCO_CATEGORIES: Sequence[tuple[int, str, str]] = (
    (1, "person", "person"),
    (2, "bicycle", "vehicle"),
    (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"),
    (5, "airplane", "vehicle"),
    (6, "bus", "vehicle"),
    (7, "train", "vehicle"),
    (8, "truck", "vehicle"),
    (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"),
    (11, "fire hydrant", "outdoor"),
    (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"),
    (15, "bench", "outdoor"),
    (16, "bird", "animal"),
    (17, "cat", "animal"),
    (18, "dog", "animal"),
    (19, "horse", "animal"),
    (20, "sheep", "animal"),
    (21, "cow", "animal"),
    (22, "elephant", "animal"),
    (23, "bear", "animal"),
    (24, "zebra", "animal"),
    (25, "giraffe", "animal"),
    (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"),
    (31, "handbag", "accessory"),
    (32, "tie", "accessory"),
    (33, "suitcase", "accessory"),
    (34, "frisbee", "sports"),
    (35, "skis", "sports"),
    (36, "snowboard", "sports"),
    (37, "sports ball", "sports"),
    (38, "kite", "sports"),
    (39, "baseball bat", "sports"),
    (40, "baseball glove", "sports"),
    (41, "skateboard", "sports"),
    (42, "surfboard", "sports"),
    (43, "tennis racket", "sports"),
    (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"),
    (47, "cup", "kitchen"),
    (48, "fork", "kitchen"),
    (49, "knife", "kitchen"),
    (50, "spoon", "kitchen"),
    (51, "bowl", "kitchen"),
    (52, "banana", "food"),
    (53, "apple", "food"),
    (54, "sandwich", "food"),
    (55, "orange", "food"),
    (56, "broccoli", "food"),
    (57, "carrot", "food"),
    (58, "hot dog", "food"),
    (59, "pizza", "food"),
    (60, "donut", "food"),
    (61, "cake", "food"),
    (62, "chair", "furniture"),
    (63, "couch", "furniture"),
    (64, "potted plant", "furniture"),
    (65, "bed", "furniture"),
    (67, "dining table", "furniture"),
    (70, "toilet", "furniture"),
    (72, "tv", "electronic"),
    (73, "laptop", "electronic"),
    (74, "mouse", "electronic"),
    (75, "remote", "electronic"),
    (76, "keyboard", "electronic"),
    (77, "cell phone", "electronic"),
    (78, "microwave", "appliance"),
    (79, "oven", "appliance"),
    (80, "toaster", "appliance"),
    (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"),
    (84, "book", "indoor"),
    (85, "clock", "indoor"),
    (86, "vase", "indoor"),
    (87, "scissors", "indoor"),
    (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"),
    (90, "toothbrush", "indoor"),
)

LICENSES = (
    {
        "url": "http://creativecommons.org/licenses/by-nc-sa/2.0/",
        "id": 1,
        "name": "Attribution-NonCommercial-ShareAlike License",
    },
    {
        "url": "http://creativecommons.org/licenses/by-nc/2.0/",
        "id": 2,
        "name": "Attribution-NonCommercial License",
    },
    {"url": "http://creativecommons.org/licenses/by/2.0/", "id": 3, "name": "Attribution License"},
)

CROWD_FRACTION = 0.01  # share of iscrowd=1 (RLE) annotations
MULTIPART_FRACTION = 0.05  # share of polygons made of 2 parts
MIN_VERTICES, MAX_VERTICES = 6, 20

# Stream ids, so that images, annotations and the shuffle never share a stream.
_STREAM_IMAGE, _STREAM_ANN, _STREAM_ORDER = 1, 2, 3


def _rng(seed: int, stream: int, index: int) -> random.Random:
    """An independent, reproducible random stream for (seed, stream, index)."""
    return random.Random((seed << 40) + (stream << 36) + index)


def _category_cdf() -> list[float]:
    """Cumulative weights: person ~25%, the rest Zipf-like by COCO order."""
    weights = [1.0 / (rank**0.8) for rank in range(1, len(COCO_CATEGORIES) + 1)]
    rest = sum(weights[1:])
    weights[0] = rest / 3.0  # person = 1/4 of all objects
    total = sum(weights)
    cdf, acc = [], 0.0
    for w in weights:
        acc += w / total
        cdf.append(acc)
    cdf[-1] = 1.0
    return cdf


_CAT_CDF = _category_cdf()


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def image_size(r: random.Random) -> tuple[int, int]:
    """(width, height): 70% COCO-like (long side 640), 20% HD, 10% small."""
    u = r.random()
    if u < 0.70:
        long_side, short_side = 640, 360 + int(r.random() * 281)  # 360..640
    elif u < 0.90:
        long_side = (1280, 1920)[int(r.random() * 2)]
        short_side = int(long_side * (0.5 + r.random() * 0.25))
    else:
        long_side = 160 + int(r.random() * 321)  # 160..480
        short_side = int(long_side * (0.6 + r.random() * 0.4))
    if r.random() < 0.75:  # landscape more common than portrait
        return long_side, short_side
    return short_side, long_side


def _polygon(
    r: random.Random, cx: float, cy: float, rx: float, ry: float, width: int, height: int
) -> list[float]:
    """A simple (star-shaped) polygon around (cx, cy), clipped to the image."""
    n = MIN_VERTICES + int(r.random() * (MAX_VERTICES - MIN_VERTICES + 1))
    step = 2.0 * math.pi / n
    phase = r.random() * step
    pts: list[float] = []
    for k in range(n):
        a = phase + k * step + (r.random() - 0.5) * 0.8 * step
        rho = 0.65 + 0.35 * r.random()
        x = min(max(cx + rx * rho * math.cos(a), 0.0), float(width))
        y = min(max(cy + ry * rho * math.sin(a), 0.0), float(height))
        pts.append(round(x, 2))
        pts.append(round(y, 2))
    return pts


def _shoelace(pts: Sequence[float]) -> float:
    n = len(pts) // 2
    s = 0.0
    for k in range(n):
        x1, y1 = pts[2 * k], pts[2 * k + 1]
        x2, y2 = pts[(2 * k + 2) % (2 * n)], pts[(2 * k + 3) % (2 * n)]
        s += x1 * y2 - x2 * y1
    return abs(s) * 0.5


def _object_box(r: random.Random, width: int, height: int) -> tuple[float, float, float, float]:
    """Centre and half-axes of an object: log-uniform size, aspect 1/3..3."""
    max_side = 0.9 * min(width, height)
    side = 4.0 * (max_side / 4.0) ** r.random()  # log-uniform 4..max_side
    aspect = 3.0 ** (2.0 * r.random() - 1.0)
    w = min(side * math.sqrt(aspect), 0.95 * width)
    h = min(side / math.sqrt(aspect), 0.95 * height)
    cx = w / 2 + r.random() * (width - w)
    cy = h / 2 + r.random() * (height - h)
    return cx, cy, w / 2, h / 2


def _crowd_rle(r: random.Random, width: int, height: int):
    """Uncompressed column-major RLE of a blob; returns (counts, bbox, area)."""
    bw = max(2, min(width - 1, int(width * (0.15 + 0.45 * r.random()))))
    bw = min(bw, 400)  # keep counts bounded
    bh = max(2, min(height - 1, int(height * (0.15 + 0.5 * r.random()))))
    x0 = int(r.random() * (width - bw))
    y0 = int(r.random() * (height - bh))
    counts: list[int] = []
    background = x0 * height  # whole empty columns before the blob
    top, bottom = y0 + bh // 4, y0 + 3 * bh // 4
    area = 0
    ymin, ymax = height, 0
    for _ in range(bw):
        # random walk of the blob's top and bottom edges, kept inside the box
        top = min(max(top + int(r.random() * 5) - 2, y0), y0 + bh - 2)
        bottom = min(max(bottom + int(r.random() * 5) - 2, top + 1), y0 + bh)
        counts.append(background + top)
        counts.append(bottom - top)
        area += bottom - top
        ymin, ymax = min(ymin, top), max(ymax, bottom)
        background = height - bottom
    background += (width - x0 - bw) * height
    counts.append(background)
    bbox = (float(x0), float(ymin), float(bw), float(ymax - ymin))
    return counts, bbox, float(area)


def annotation_json(
    seed: int, ann_index: int, ann_id: int, image_id: int, width: int, height: int
) -> str:
    """One annotation object as compact JSON text."""
    r = _rng(seed, _STREAM_ANN, ann_index)
    cat_id = COCO_CATEGORIES[bisect.bisect_left(_CAT_CDF, r.random())][0]
    if r.random() < CROWD_FRACTION:
        counts, (x, y, w, h), area = _crowd_rle(r, width, height)
        seg = '{"counts":[%s],"size":[%d,%d]}' % (",".join(map(str, counts)), height, width)
        iscrowd = 1
    else:
        cx, cy, rx, ry = _object_box(r, width, height)
        parts = [_polygon(r, cx, cy, rx, ry, width, height)]
        if r.random() < MULTIPART_FRACTION:
            # a second, smaller part next to the first (an occluded object)
            dx = (r.random() - 0.5) * 2.0 * rx
            dy = ry * (0.8 + 0.4 * r.random())
            ncx = min(max(cx + dx, 1.0), width - 1.0)
            ncy = min(max(cy + dy, 1.0), height - 1.0)
            parts.append(_polygon(r, ncx, ncy, rx * 0.4, ry * 0.3, width, height))
        xs = [v for p in parts for v in p[0::2]]
        ys = [v for p in parts for v in p[1::2]]
        x, y = min(xs), min(ys)
        w, h = max(xs) - x, max(ys) - y
        area = sum(_shoelace(p) for p in parts)
        seg = "[{}]".format(",".join("[{}]".format(",".join(map(_fmt, p))) for p in parts))
        iscrowd = 0
    return (
        '{"id":%d,"image_id":%d,"category_id":%d,"segmentation":%s,'
        '"area":%s,"bbox":[%s,%s,%s,%s],"iscrowd":%d}'
        % (ann_id, image_id, cat_id, seg, _fmt(area), _fmt(x), _fmt(y), _fmt(w), _fmt(h), iscrowd)
    )


def image_json(image_id: int, width: int, height: int, license_id: int, day: int) -> str:
    name = "%012d.jpg" % image_id
    return (
        '{"id":%d,"width":%d,"height":%d,"file_name":"%s","license":%d,'
        '"coco_url":"http://images.example.com/synthetic/%s",'
        '"date_captured":"2013-%02d-%02d 12:%02d:00"}'
        % (image_id, width, height, name, license_id, name, 1 + day % 12, 1 + day % 28, day % 60)
    )


class Plan:
    """Per-image facts drawn once: id, size and number of annotations."""

    def __init__(self, n_images: int, anns_per_image: float, seed: int):
        self.ids = array("q")
        self.widths = array("i")
        self.heights = array("i")
        self.licenses = array("b")
        self.n_anns = array("i")
        next_id = 1
        for i in range(n_images):
            r = _rng(seed, _STREAM_IMAGE, i)
            next_id += int(r.random() * 8)  # sparse, increasing ids
            w, h = image_size(r)
            self.ids.append(next_id)
            self.widths.append(w)
            self.heights.append(h)
            self.licenses.append(1 + int(r.random() * len(LICENSES)))
            # 0..2K annotations, mean K
            self.n_anns.append(int(r.random() * (2 * anns_per_image + 1)))
            next_id += 1
        self.total_anns = sum(self.n_anns)

    def ann_owner(self) -> array:
        """Image index of every annotation, in image order."""
        owner = array("i")
        for i, n in enumerate(self.n_anns):
            owner.extend([i] * n)
        return owner


def _permutation(n: int, seed: int) -> list[int]:
    """Fisher-Yates with random() only, so it is the same on every Python."""
    r = _rng(seed, _STREAM_ORDER, 0)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(r.random() * (i + 1))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def iter_annotations(plan: Plan, seed: int, order: str) -> Iterator[str]:
    if order == "image":
        k = 0
        for i, n in enumerate(plan.n_anns):
            for _ in range(n):
                yield annotation_json(seed, k, k + 1, plan.ids[i], plan.widths[i], plan.heights[i])
                k += 1
    else:
        owner = plan.ann_owner()
        for k in _permutation(plan.total_anns, seed):
            i = owner[k]
            yield annotation_json(seed, k, k + 1, plan.ids[i], plan.widths[i], plan.heights[i])


def categories_json() -> str:
    return json.dumps(
        [{"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES],
        separators=(",", ":"),
    )


def write_coco(out: IO[str], plan: Plan, seed: int, order: str) -> None:
    info = {
        "description": "Synthetic COCO-style dataset",
        "version": "1.0",
        "year": 2024,
        "contributor": "make_coco.py",
        "date_created": "2024/01/01",
        "url": "",
    }
    out.write(
        '{{"info":{},\n"licenses":{},\n"images":['.format(
            json.dumps(info, separators=(",", ":")),
            json.dumps(list(LICENSES), separators=(",", ":")),
        )
    )
    for i in range(len(plan.ids)):
        if i:
            out.write(",")
        out.write(image_json(plan.ids[i], plan.widths[i], plan.heights[i], plan.licenses[i], i))
    out.write('],\n"annotations":[')
    first = True
    for text in iter_annotations(plan, seed, order):
        if not first:
            out.write(",")
        out.write(text)
        first = False
    out.write(f'],\n"categories":{categories_json()}}}\n')


def write_jsonl(out: IO[str], plan: Plan, seed: int) -> None:
    k = 0
    for i in range(len(plan.ids)):
        anns = []
        for _ in range(plan.n_anns[i]):
            anns.append(
                annotation_json(seed, k, k + 1, plan.ids[i], plan.widths[i], plan.heights[i])
            )
            k += 1
        out.write(
            '{{"image":{},"annotations":[{}]}}\n'.format(
                image_json(plan.ids[i], plan.widths[i], plan.heights[i], plan.licenses[i], i),
                ",".join(anns),
            )
        )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a deterministic synthetic COCO instances file.")
    p.add_argument("--images", type=int, required=True, help="number of images")
    p.add_argument(
        "--anns-per-image",
        type=float,
        default=7.0,
        help="mean annotations per image (each image gets 0..2K); default 7, close to COCO's 7.3",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
    p.add_argument("--out", required=True, help="output file, '-' for stdout")
    p.add_argument("--format", choices=("coco", "jsonl"), default="coco")
    p.add_argument(
        "--order",
        choices=("image", "random"),
        default="image",
        help="annotation order in --format coco: grouped by image (default) or shuffled",
    )
    p.add_argument(
        "--categories-out",
        default=None,
        help="with --format jsonl: where to write the categories (default <out>.categories.json)",
    )
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    args = p.parse_args(argv)
    if args.images < 0 or args.anns_per_image < 0 or args.seed < 0:
        p.error("--images, --anns-per-image and --seed must be >= 0")

    t0 = time.perf_counter()
    plan = Plan(args.images, args.anns_per_image, args.seed)
    out = (
        sys.stdout
        if args.out == "-"
        else open(args.out, "w", encoding="ascii", newline="\n", buffering=1 << 20)
    )
    try:
        if args.format == "coco":
            write_coco(out, plan, args.seed, args.order)
        else:
            write_jsonl(out, plan, args.seed)
            if args.out != "-" or args.categories_out:
                cat_path = args.categories_out or args.out + ".categories.json"
                with open(cat_path, "w", encoding="ascii") as f:
                    f.write(categories_json() + "\n")
        out.flush()
        size = out.tell() if out is not sys.stdout else -1
    finally:
        if out is not sys.stdout:
            out.close()
    if not args.quiet:
        print(
            "images=%d annotations=%d bytes=%d seconds=%.1f"
            % (len(plan.ids), plan.total_anns, size, time.perf_counter() - t0),
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
