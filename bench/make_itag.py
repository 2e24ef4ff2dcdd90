#!/usr/bin/env python3
"""Deterministic synthetic Alibaba PAI iTAG manifest (JSON lines, standard library only).

One line per image, as iTAG exports an object-detection / OCR job: the media
under `data.source`, then one to three stages (`label-<job>`, `-check`,
`-verify`), each with an `image` result holding 1-12 `image/polygon` shapes
(4-8 vertices, a `labels` dict with a class and sometimes an OCR text), and
about one line in five with a `survey/value` answer. About 430 bytes per shape.

    python bench/make_itag.py --lines 100000 --seed 1 --out itag.manifest

The output is a pure function of the arguments (each line has its own seeded
random stream).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys

JOB = "1435504604476547072"
CLASSES = ["car", "person", "sign", "text", "bicycle", "truck", "tree", "door"]
WORDS = ["exit", "open", "sale", "bus stop", "pharmacy", "café", "No. 7", "入口"]


def _polygon(r: random.Random, w: int, h: int) -> list[list[float]]:
    cx, cy = r.uniform(0, w), r.uniform(0, h)
    rx, ry = r.uniform(4, w / 6), r.uniform(4, h / 6)
    n = r.randint(4, 8)
    pts = []
    for k in range(n):
        a = 6.283185307179586 * k / n
        x = min(max(cx + rx * r.uniform(0.7, 1.0) * math.cos(a), 0.0), w)
        y = min(max(cy + ry * r.uniform(0.7, 1.0) * math.sin(a), 0.0), h)
        pts.append([round(x, 4), round(y, 4)])
    return pts


def line(seed: int, i: int) -> str:
    r = random.Random(seed * 1_000_003 + i)
    w, h = r.choice([(1024, 1024), (1920, 1080), (640, 480), (800, 600)])
    shapes = []
    for k in range(r.randint(1, 12)):
        labels = {"Single-choice": r.choice(CLASSES)}
        if r.random() < 0.3:
            labels["OCR result"] = r.choice(WORDS)
        shapes.append(
            {
                "id": f"{seed:04x}{i:08x}-{k:04x}-4e0e-8abb-0f1a2dc0{k:04x}",
                "type": "image/polygon",
                "value": _polygon(r, w, h),
                "labels": labels,
            }
        )
    result = {
        "questionId": "1",
        "data": shapes,
        "rotation": 0,
        "markTitle": "Object detection label configuration",
        "width": w,
        "type": "image",
        "height": h,
    }
    obj: dict = {"data": {"source": f"oss://itag-bench/pics/{i:08d}.jpg"}}
    for stage in ("", "-check", "-verify")[: r.randint(1, 3)]:
        results = [result]
        if r.random() < 0.2:
            results = [*results, {"questionId": "2", "data": r.choice(CLASSES),
                                  "markTitle": "Scene", "type": "survey/value"}]  # fmt: skip
        obj[f"label-{JOB}{stage}"] = {"results": results}
    return json.dumps(obj, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for i in range(args.lines):
            f.write(line(args.seed, i))
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
