#!/usr/bin/env python3
"""Deterministic synthetic Encord label export (one JSON array of label rows, stdlib only).

One label row per image, as Encord's `label_rows` export writes an image
project: the data unit with its size and link, `labels.objects` with 1-12
shapes in normalized coordinates (about half bounding boxes, a third
polygons of 6-24 vertices as Encord's `{"0": {"x", "y"}, ...}` maps, the rest
rotatable boxes and points), one frame-level classification in four rows, and
`object_answers` with a radio answer for a third of the objects. Pretty-printed
with two-space indents, as the export is; about 1.7 KB per shape.

    python bench/make_encord.py --rows 40000 --seed 1 --out encord.json

The output is a pure function of the arguments (each row has its own seeded
random stream).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys

CLASSES = ["car", "person", "sign", "bicycle", "truck", "tree", "door", "dog"]
SIZES = [(1920, 1080), (1280, 720), (1024, 1024), (640, 480)]
WHEN = "Thu, 01 Dec 2022 13:37:01 UTC"
WHO = "annotator@example.com"


def _hash(r: random.Random, n: int = 8) -> str:
    return "".join(
        r.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(n)
    )


def _uuid(r: random.Random) -> str:
    h = f"{r.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _round(v: float) -> float:
    return round(min(max(v, 0.0), 1.0), 4)


def _shape(r: random.Random, k: int) -> dict:
    name = r.choice(CLASSES)
    obj = {
        "name": name,
        "color": "#D33115",
        "value": name,
        "createdAt": WHEN,
        "createdBy": WHO,
        "confidence": 1,
        "objectHash": _hash(r),
        "featureHash": f"feat{CLASSES.index(name):04d}",
        "manualAnnotation": True,
    }
    x, y = r.uniform(0, 0.9), r.uniform(0, 0.9)
    w, h = r.uniform(0.01, 1 - x), r.uniform(0.01, 1 - y)
    roll = r.random()
    if roll < 0.5:
        obj["shape"] = "bounding_box"
        obj["boundingBox"] = {"h": _round(h), "w": _round(w), "x": _round(x), "y": _round(y)}
    elif roll < 0.83:
        obj["shape"] = "polygon"
        n = r.randint(6, 24)
        cx, cy = x + w / 2, y + h / 2
        obj["polygon"] = {
            str(i): {
                "x": _round(cx + w / 2 * r.uniform(0.7, 1) * math.cos(2 * math.pi * i / n)),
                "y": _round(cy + h / 2 * r.uniform(0.7, 1) * math.sin(2 * math.pi * i / n)),
            }
            for i in range(n)
        }
    elif roll < 0.95:
        obj["shape"] = "rotatable_bounding_box"
        obj["rotatableBoundingBox"] = {
            "h": _round(h), "w": _round(w), "x": _round(x), "y": _round(y),
            "theta": round(r.uniform(0, 360), 4),
        }  # fmt: skip
    else:
        obj["shape"] = "point"
        obj["point"] = {"0": {"x": _round(x), "y": _round(y)}}
    obj["reviews"] = []
    return obj


def row(seed: int, i: int) -> dict:
    r = random.Random(seed * 1_000_003 + i)
    width, height = r.choice(SIZES)
    data_hash = _uuid(r)
    title = f"img_{i:08d}.jpg"
    objects = [_shape(r, k) for k in range(r.randint(1, 12))]
    classifications = []
    classification_answers = {}
    if i % 4 == 0:
        c_hash = _hash(r)
        classifications.append({
            "name": "weather", "value": "weather", "createdAt": WHEN, "createdBy": WHO,
            "confidence": 1, "featureHash": "weather0", "classificationHash": c_hash,
            "manualAnnotation": True, "reviews": [],
        })  # fmt: skip
        classification_answers[c_hash] = {
            "classificationHash": c_hash,
            "classifications": [{
                "name": "weather", "value": "weather", "answers": [
                    {"name": r.choice(["sunny", "rain", "fog"]), "value": "w", "featureHash": "w1"}
                ], "featureHash": "weather0", "manualAnnotation": True,
            }],
        }  # fmt: skip
    object_answers = {}
    for obj in objects:
        answers = []
        if r.random() < 0.33:
            answers.append({
                "name": "occluded", "value": "occluded", "featureHash": "occl0000",
                "answers": [{"name": r.choice(["yes", "no"]), "value": "v", "featureHash": "o1"}],
                "manualAnnotation": True,
            })  # fmt: skip
        object_answers[obj["objectHash"]] = {
            "objectHash": obj["objectHash"],
            "classifications": answers,
        }
    return {
        "label_hash": _uuid(r),
        "branch_name": "main",
        "created_at": WHEN,
        "last_edited_at": WHEN,
        "dataset_hash": "d9f19c3c-5cd0-4f8c-b98c-6c0e24676224",
        "dataset_title": "synthetic",
        "data_title": title,
        "data_hash": data_hash,
        "data_type": "image",
        "annotation_task_status": "COMPLETED",
        "is_shadow_data": False,
        "data_units": {
            data_hash: {
                "data_hash": data_hash,
                "data_title": title,
                "data_link": f"https://storage.example.com/synthetic/{title}",
                "data_type": "image/jpeg",
                "data_sequence": 0,
                "width": width,
                "height": height,
                "labels": {"objects": objects, "classifications": classifications},
            }
        },
        "object_answers": object_answers,
        "classification_answers": classification_answers,
        "object_actions": {},
        "label_status": "LABELLED",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="-")
    args = ap.parse_args()
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    shapes = 0
    with out:
        out.write("[\n")
        for i in range(args.rows):
            r = row(args.seed, i)
            shapes += len(next(iter(r["data_units"].values()))["labels"]["objects"])
            text = json.dumps(r, indent=2, ensure_ascii=False)
            out.write(("  " if i == 0 else ",\n  ") + text.replace("\n", "\n  "))
        out.write("\n]\n")
    print(f"{args.rows} label rows, {shapes} objects", file=sys.stderr)


if __name__ == "__main__":
    main()
