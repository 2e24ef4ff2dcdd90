"""Boxes and areas derived from vertices, against a reference written out row by row:
vertices in any order, parts, hidden keypoints, ids given twice, vertices whose
annotation is in another batch, null coordinates, values the source stated."""

from __future__ import annotations

import math
import random

import pyarrow as pa
import pytest

from pipelines.schema import ANNOTATIONS, POINTS, Batch
from transforms.geometry import fill_geometry

KINDS = ["polygon", "polyline", "keypoints", "points", "bbox", "mask", "cuboid_2d"]


def _batch(seed: int) -> Batch:
    rng = random.Random(seed)
    anns, points = [], []
    ids = [f"a{i}" for i in range(rng.randint(1, 40))]
    for ann_id in ids + rng.sample(ids, min(3, len(ids))):  # some ids twice
        stated = rng.random() < 0.2
        anns.append(
            {
                "dataset": "t", "ann_id": ann_id, "item_id": "i", "kind": rng.choice(KINDS),
                "units": "px", "bbox_x": 1.0 if stated else None, "bbox_y": 2.0 if stated else None,
                "bbox_w": 3.0 if stated else None, "bbox_h": 4.0 if stated else None,
                "area": 5.0 if stated else None,
            }
        )  # fmt: skip
    for ann_id in [*ids, "elsewhere"]:
        for part in range(rng.randint(0, 3)):
            for idx in range(rng.randint(1, 7)):
                x = None if rng.random() < 0.03 else rng.uniform(-50, 500)
                points.append(
                    {
                        "dataset": "t", "ann_id": ann_id, "item_id": "i", "part": part,
                        "idx": idx, "x": x, "y": rng.uniform(-50, 500),
                        "visibility": rng.choice([None, 0, 1, 2]),
                    }
                )  # fmt: skip
    if seed % 2:
        rng.shuffle(points)
    return Batch(
        annotations=pa.Table.from_pylist(anns, schema=ANNOTATIONS),
        points=pa.Table.from_pylist(points, schema=POINTS),
    )


def _expected(batch: Batch) -> list[dict]:
    points = batch.points.to_pylist()
    out = []
    for ann in batch.annotations.to_pylist():
        mine = [p for p in points if p["ann_id"] == ann["ann_id"]]
        seen = [p for p in mine if p["visibility"] is None or p["visibility"] > 0]
        xs = [p["x"] for p in seen if p["x"] is not None]
        ys = [p["y"] for p in seen if p["y"] is not None]
        if ann["bbox_x"] is None and ann["kind"] in ("polygon", "polyline", "keypoints",
                                                    "points", "cuboid_2d"):  # fmt: skip
            ann["bbox_x"] = min(xs) if xs else None
            ann["bbox_y"] = min(ys) if ys else None
            ann["bbox_w"] = max(xs) - min(xs) if xs else None
            ann["bbox_h"] = max(ys) - min(ys) if ys else None
        if ann["area"] is None and ann["kind"] == "polygon" and mine:
            total = 0.0
            for part in sorted({p["part"] for p in mine}):
                ring = sorted((p for p in mine if p["part"] == part), key=lambda p: p["idx"])
                twice = 0.0
                for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
                    if None not in (a["x"], b["x"]):
                        twice += a["x"] * b["y"] - b["x"] * a["y"]
                total += abs(twice) / 2
            ann["area"] = total
        out.append(ann)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_boxes_and_areas_match_a_row_by_row_reference(seed: int) -> None:
    batch = _batch(seed)
    got = fill_geometry(batch).annotations.to_pylist()
    expected = _expected(batch)
    for g, e in zip(got, expected, strict=True):
        for key in ("bbox_x", "bbox_y", "bbox_w", "bbox_h", "area"):
            assert (g[key] is None) == (e[key] is None), (key, g, e)
            if e[key] is not None:
                assert math.isclose(g[key], e[key], rel_tol=1e-12, abs_tol=1e-9), (key, g, e)
        assert g == {**e, **{k: g[k] for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h", "area")}}


def test_nothing_to_fill_returns_the_batch_itself() -> None:
    batch = _batch(3)
    stated = batch.annotations
    for name in ("bbox_x", "bbox_y", "bbox_w", "bbox_h", "area"):
        i = stated.schema.get_field_index(name)
        stated = stated.set_column(i, name, pa.array([1.0] * stated.num_rows))
    batch = batch.replace(annotations=stated)
    assert fill_geometry(batch) is batch
