"""`iter_items` reads a table in item order without DuckDB's sort (`item_order`): what it
gives is what the sort gave, for tables in order, out of order within row groups, and
shuffled across them (then the sort runs)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines import item_order, runner
from pipelines import staging as staging_module
from pipelines.staging import Staging


def _coco(path: Path) -> None:
    """60 images: boxes, polygons of one to three parts, keypoints, attributes."""
    rng = random.Random(7)
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480} for i in range(60)]
    anns: list[dict[str, Any]] = []
    for image in images:
        for _ in range(rng.randint(0, 6)):
            attributes = {"occluded": rng.random() < 0.5, "color": rng.choice("rgb")}
            ann = {
                "id": len(anns) + 1,
                "image_id": image["id"],
                "category_id": rng.randint(1, 2),
                "iscrowd": 0,
                "bbox": [1.0, 2.0, 30.0, 40.0],
                "attributes": attributes,
            }
            shape = rng.random()
            if shape < 0.6:
                ann["segmentation"] = [
                    [round(rng.uniform(0, 600), 2) for _ in range(2 * rng.randint(3, 30))]
                    for _ in range(rng.randint(1, 3))
                ]
            elif shape < 0.8:
                ann["category_id"] = 3
                ann["keypoints"] = [v for _ in range(4) for v in (rng.randint(0, 99), 5, 2)]
                ann["num_keypoints"] = 4
            anns.append(ann)
    person = {"id": 3, "name": "p", "keypoints": ["h", "l", "r", "t"], "skeleton": [[1, 2]]}
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, person]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("order")
    _coco(root / "coco.json")
    assert runner.convert([str(root / "coco.json")], "parquet", str(root / "staged"), workers=1).ok
    return root / "staged"


def _rewrite(staged: Path, to: Path, how: str) -> None:
    """A copy of the staging whose annotation, vertex and attribute files have row groups
    of 23 rows, their rows `how`: as staged, some row groups' rows reversed, some
    annotations' vertices reversed, or all shuffled."""
    rng = np.random.default_rng(5)
    for path in staged.rglob("*.parquet"):
        table = pq.read_table(path)
        target = to / path.relative_to(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        name = path.relative_to(staged).parts[0]
        if name == "annotations":  # a third state no box: their vertices are asked for
            i = table.schema.get_field_index("bbox_w")
            box = pa.array(np.arange(len(table)) % 3 == 0)
            table = table.set_column(i, "bbox_w", pc.if_else(box, None, table["bbox_w"]))
        if name in ("annotations", "points", "attributes"):
            order = np.arange(len(table))
            if how == "groups reversed":
                for start in range(0, len(order), 69):
                    order[start : start + 23] = order[start : start + 23][::-1]
            elif how == "vertices reversed" and name == "points":
                ann = table["ann_id"].to_numpy(False)
                run = np.concatenate(([0], np.cumsum(ann[1:] != ann[:-1])))
                order = np.lexsort((-order, run))  # each annotation's vertices backwards
            elif how == "shuffled":
                order = rng.permutation(len(order))
            table = table.take(pa.array(order))
        pq.write_table(table, target, row_group_size=23)


def _plain(groups: list) -> list:
    """Groups as plain values: arrays of parts as lists."""
    return [
        (g.item, g.annotations, g.points, g.attributes,
         {a: {k: getattr(v, "tolist", lambda v=v: v)() for k, v in p.items()}
          for a, p in g.parts.items()})
        for g in groups
    ]  # fmt: skip


_ASKS: list[dict[str, Any]] = [
    {},
    {"part_kinds": ("polygon",), "point_columns": ("part", "idx", "x", "y", "name")},
    {"positions": (7, 31), "point_columns": ("x", "y", "visibility")},
    {"shard": 2, "shards": 3, "part_kinds": ("polygon",), "point_columns": ()},
    {"subset": "coco", "all_subsets": False, "ann_columns": ("ann_id", "kind", "label")},
    {"subset": None, "all_subsets": False},
    {"boxed_vertices": False, "point_columns": ("x", "y")},
    {"vertex_kinds": ("keypoints",), "positions": (20, 60)},
    {"vertex_kinds": (), "boxed_vertices": False},
    {
        "part_kinds": ("polygon",),
        "point_columns": (),
        "positions": (3, 50),
        "point_text": lambda v: pc.binary_join_element_wise(
            v["x"].cast(pa.string()),
            pc.divide(v["y"], v["width"].cast(pa.float64())).cast(pa.string()),
            ",",
        ),
    },
]


@pytest.mark.parametrize("how", ["as staged", "groups reversed", "vertices reversed", "shuffled"])
def test_rows_come_as_duckdb_s_sort_gave_them(
    staged: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    _rewrite(staged, tmp_path, how)
    staging = Staging(str(tmp_path))
    read: list[bool] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        found = item_order.ordered_rows(*args, **kwargs)
        read.append(found is not None)
        return found

    monkeypatch.setattr(staging_module, "ordered_rows", spy)
    for ask in _ASKS:
        fast = _plain(list(staging.iter_items(**ask)))
        monkeypatch.setattr(staging_module, "ordered_rows", lambda *a, **k: None)
        sorted_ = _plain(list(staging.iter_items(**ask)))
        monkeypatch.setattr(staging_module, "ordered_rows", spy)
        assert fast == sorted_
        if ask.get("subset", "") is None:  # items without a subset: there are none
            assert fast == []
            continue
        assert sum(len(g[1]) for g in fast) > 0
        vertices = sum(len(v) for g in fast for v in g[2].values())
        assert vertices > 0 or ask.get("point_columns") == () or ask.get("vertex_kinds") == ()
    # As staged, polygons' vertices and keypoints' named ones in call order, every table
    # is read in order; shuffled, a table interleaves items across row groups and DuckDB
    # sorts (a small run's rows may still lie in order).
    assert read and all(read) == (how != "shuffled")


def test_named_vertices_stay_in_call_order_among_plain_ones() -> None:
    from pipelines.builder import BatchBuilder

    b = BatchBuilder("d", "coco", "x.json")
    b.points("a1", "i1", [0, 0, 1, 1])
    b.named_points("a2", "i1", [{"x": 5.0, "y": 5.0, "name": "nose"}])
    b.points("a3", "i2", [2, 2, 3, 3, 4, 4], part=1)
    b.point_block({"ann_id": ["a4", "a4"], "item_id": ["i2", "i2"], "part": [0, 0],
                   "idx": [0, 1], "x": [1.0, 2.0], "y": [1.0, 2.0]}, 2)  # fmt: skip
    b.named_points("a5", "i3", [{"x": 1.0, "y": 1.0}, {"x": 2.0, "y": 2.0}])
    b.named_points("a6", "i3", [{"x": 3.0, "y": 3.0}])
    points = b.flush().points
    assert points["ann_id"].to_pylist() == ["a1"] * 2 + ["a2"] + ["a3"] * 3 + ["a4"] * 2 + [
        "a5", "a5", "a6"]  # fmt: skip
    assert points["idx"].to_pylist() == [0, 1, 0, 0, 1, 2, 0, 1, 0, 1, 0]


def _interleaved(staged: Path, to: Path) -> None:
    """A copy of the staging whose items are in two files of row groups of 7 rows, their
    subsets interleaved: "val", "train" and none in turn."""
    for path in staged.rglob("*.parquet"):
        target = to / path.relative_to(staged)
        target.parent.mkdir(parents=True, exist_ok=True)
        table = pq.read_table(path)
        if path.relative_to(staged).parts[0] != "items":
            pq.write_table(table, target)
            continue
        turn = np.arange(len(table)) % 3
        subsets = pa.array(np.where(turn == 0, "val", "train")).to_pylist()
        subsets = [None if t == 2 else s for s, t in zip(subsets, turn, strict=True)]
        table = table.set_column(table.schema.get_field_index("subset"), "subset",
                                 pa.array(subsets, pa.string()))  # fmt: skip
        half = len(table) // 2
        for k, rows in enumerate((table.slice(0, half), table.slice(half))):
            pq.write_table(rows, target.with_name(f"{target.stem}-{k}.parquet"), row_group_size=7)


@pytest.mark.parametrize(
    "ask",
    [
        {},
        {"subset": "val", "all_subsets": False},
        {"subset": None, "all_subsets": False, "positions": (2, 13)},
        {"subset": "train", "all_subsets": False, "positions": (5, 17)},
        {"subset": "train", "all_subsets": False, "shard": 1, "shards": 3},
        {"positions": (6, 45)},
        {"positions": (55, 90)},
        {"subset": "val", "all_subsets": False, "positions": (12, 40)},
    ],
)
def test_a_run_holds_the_items_duckdb_s_window_numbers_so(
    staged: Path, tmp_path: Path, ask: dict[str, Any]
) -> None:
    """The run is found by pyarrow (`select_run`): the items, every column and the
    `dataset` of their folder, are those DuckDB gives the same positions of the subset."""
    _interleaved(staged, tmp_path)
    staging = Staging(str(tmp_path))
    assert len(staging._parts("items")) == 2
    got = [g.item for g in staging.iter_items(**ask)]
    where = ""
    if "subset" in ask:
        where = (
            "WHERE subset IS NULL" if ask["subset"] is None else f"WHERE subset = '{ask['subset']}'"
        )
    sql = (f"SELECT * EXCLUDE (filename, file_row_number), row_number() OVER "
           f"(ORDER BY filename, file_row_number) AS _pos FROM items {where}")  # fmt: skip
    every = list(Staging._rows(iter(staging.con.sql(sql).to_arrow_table().to_batches())))
    if "shards" in ask:
        first, last = item_order.item_run(len(every), ask["shard"], ask["shards"])
    else:
        first, last = ask.get("positions", (0, len(every)))
    want = [row for row in every if first < row.pop("_pos") <= last]
    assert got == want
    assert want and all(item["dataset"] for item in got)
