"""One contract, every format: each case file under tests/fixtures/contract/ names a
sample, its format and what reading it must give. A new format adds case files,
not test code.

Case file (JSON):

    {"format": "coco",
     "path": "peer/coco_instances/coco_instances",   # or "fixtures/<dir under tests/fixtures>"
     "detect": true,                                 # auto-detection must pick `format`
     "counts": {"items": 2, "annotations": 3, "points": 12, "attributes": 4, "rejects": 0},
     "kinds": {"polygon": 2, "mask": 1},
     "roundtrip": true}                              # or {"columns": [...], "points": false}

Round trip: source → Parquet → `format` → Parquet, and the two Parquet outputs
must hold the same annotations per item (matched by file name), field by field.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import transforms
from pipelines import formats
from pipelines.formats.base import ReadOptions
from pipelines.runner import convert
from pipelines.schema import TABLES
from pipelines.staging import Staging
from pipelines.storage import Source
from tests.conftest import FIXTURES, PEER

CASES = sorted((FIXTURES / "contract").glob("*.json"))
ROUNDTRIP_COLUMNS = (
    "kind",
    "label",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "angle_deg",
    "iscrowd",
    "mask",
    "frame_index",
    "track_id",
    "text",
)


def _case(path: Path) -> dict:
    case = json.loads(path.read_text())
    prefix, _, rest = case["path"].partition("/")
    case["source"] = str((PEER if prefix == "peer" else FIXTURES) / rest)
    return case


def _read(case: dict) -> dict[str, pa.Table]:
    source = Source(case["source"])
    fmt = formats.get(case["format"])
    tables: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
    for task in fmt.plan_read(source, ReadOptions(dataset="contract")):
        for batch in fmt.read(task):
            batch = transforms.standard(batch)
            for name, table in batch.tables().items():
                assert table.schema.equals(TABLES[name], check_metadata=False), (name, table.schema)
                tables[name].append(table)
    return {n: pa.concat_tables(ts) if ts else TABLES[n].empty_table() for n, ts in tables.items()}


@pytest.mark.parametrize("case_path", CASES, ids=[p.stem for p in CASES])
def test_detects(case_path: Path) -> None:
    case = _case(case_path)
    if not case.get("detect", True):
        return
    found = formats.detect(Source(case["source"]))
    assert found, f"no format detected {case['source']}"
    assert found[0][0] == case["format"], found


@pytest.mark.parametrize("case_path", CASES, ids=[p.stem for p in CASES])
def test_reads_expected_tables(case_path: Path) -> None:
    case = _case(case_path)
    tables = _read(case)
    counts = {name: t.num_rows for name, t in tables.items()}
    for name, expected in case.get("counts", {}).items():
        assert counts[name] == expected, (name, counts)
    if "kinds" in case:
        kinds = Counter(tables["annotations"].column("kind").to_pylist())
        assert dict(kinds) == case["kinds"]
    ids = tables["annotations"].column("ann_id").to_pylist()
    assert len(ids) == len(set(ids)), "ann_id must be unique"
    item_ids = tables["items"].column("item_id").to_pylist()
    assert len(item_ids) == len(set(item_ids)), "item_id must be unique"
    assert set(tables["annotations"].column("item_id").to_pylist()) <= set(item_ids)


def _annotations_by_file(out: Path, columns: tuple[str, ...], with_points: bool) -> dict:
    def load(name: str) -> list[dict]:
        files = sorted((out / name).rglob("*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []

    files = {i["item_id"]: (i["file_name"] or i["native_id"]) for i in load("items")}
    pts: dict[str, list] = {}
    for p in load("points") if with_points else []:
        pts.setdefault(p["ann_id"], []).append(
            (p["part"], p["idx"], round(p["x"], 3), round(p["y"], 3), p["visibility"] or 0)
        )
    out_map: dict[str, list] = {}
    for a in load("annotations"):
        row = (*(_norm(a.get(c)) for c in columns), tuple(sorted(pts.get(a["ann_id"], []))))
        out_map.setdefault(files[a["item_id"]], []).append(row)
    return {k: sorted(v, key=repr) for k, v in out_map.items()}


def _norm(v):
    if isinstance(v, float):
        return round(v, 3)
    return v


@pytest.mark.parametrize("case_path", CASES, ids=[p.stem for p in CASES])
def test_roundtrip(case_path: Path, tmp_path: Path) -> None:
    case = _case(case_path)
    rt = case.get("roundtrip", False)
    if not rt:
        return
    rt = rt if isinstance(rt, dict) else {}
    columns = tuple(rt.get("columns", ROUNDTRIP_COLUMNS))
    first, native, second = tmp_path / "a", tmp_path / "native", tmp_path / "b"
    src_fmt = case["format"]
    r1 = convert([case["source"]], "parquet", str(first), source_format=src_fmt, workers=1)
    assert r1.ok, r1.failures
    r2 = convert([str(first)], src_fmt, str(native), workers=1)
    assert r2.ok, r2.failures
    r3 = convert([str(native)], "parquet", str(second), source_format=src_fmt, workers=1)
    assert r3.ok, r3.failures
    with_points = rt.get("points", True)
    before = _annotations_by_file(first, columns, with_points)
    after = _annotations_by_file(second, columns, with_points)
    assert after == before


def test_staging_with_empty_tables_iterates_items(tmp_path: Path) -> None:
    from pipelines.builder import BatchBuilder
    from pipelines.formats.parquet import PartWriter

    b = BatchBuilder("ds", "coco", "x.json")
    b.item(item_id="i1", native_id="1", file_name="a.jpg", width=4, height=3)
    writer = PartWriter(str(tmp_path), "ds", "00000")
    writer.add(b.flush())
    writer.close()
    groups = list(Staging(str(tmp_path)).iter_items())
    assert [(g.item["item_id"], g.annotations, g.points) for g in groups] == [("i1", [], {})]


def test_staging_scan_reads_what_duckdb_reads_in_the_same_order(tmp_path: Path) -> None:
    part_dir = tmp_path / "annotations" / "dataset=d"
    part_dir.mkdir(parents=True)
    rows = [{"ann_id": f"a{i}", "item_id": f"i{i % 7}", "label": f"l{i % 3}"} for i in range(50)]
    # Written out of order, in row groups of 6: source order is the part files' order.
    for name, lo, hi in [("part-00010", 20, 50), ("part-00002", 0, 20)]:
        pq.write_table(pa.Table.from_pylist(rows[lo:hi]), part_dir / f"{name}.parquet", 6)
    staging = Staging(str(tmp_path))
    columns = ["ann_id", "item_id", "label"]
    whole = staging.con.sql(
        "SELECT ann_id, item_id, label FROM annotations ORDER BY filename, file_row_number"
    ).to_arrow_table()
    assert whole.to_pylist() == rows
    assert staging.count_rows("annotations") == 50

    def scanned(**kwargs) -> list[dict]:
        return pa.concat_tables(staging.scan("annotations", columns, **kwargs)).to_pylist()

    assert scanned() == rows
    assert scanned(rows=(7, 31)) == rows[7:31]
    assert scanned(groups=[1, 4]) == rows[6:12] + rows[20:26]  # groups of 6, then of the next file
    assert list(staging.scan("annotations", columns, groups=[])) == []
    wanted = pa.array(["i2", "i5"])
    picked = list(
        staging.scan(
            "annotations",
            columns,
            dictionary=["label"],
            match=(["item_id"], lambda rows: pc.is_in(rows.column(0), value_set=wanted)),
        )
    )
    assert all(pa.types.is_dictionary(t.schema.field("label").type) for t in picked)
    assert pa.concat_tables(picked).to_pylist() == [r for r in rows if r["item_id"] in ("i2", "i5")]
    # A task's copy knows the files' sizes: it opens none before or after the rows it wants.
    copy = pickle.loads(pickle.dumps(staging))

    def copied(**kwargs) -> list[dict]:
        return pa.concat_tables(copy.scan("annotations", columns, **kwargs)).to_pylist()

    (part_dir / "part-00010.parquet").rename(tmp_path / "away.parquet")
    assert copied(rows=(2, 20)) == rows[2:20]
    (tmp_path / "away.parquet").rename(part_dir / "part-00010.parquet")
    (part_dir / "part-00002.parquet").unlink()
    assert copied(groups=[4]) == rows[20:26]
    assert copied(rows=(25, 30)) == rows[25:30]


def test_staging_finds_row_groups_that_may_hold_nulls_from_their_footers(tmp_path: Path) -> None:
    part_dir = tmp_path / "annotations" / "dataset=d"
    part_dir.mkdir(parents=True)
    boxes = [None if i in (7, 20) else float(i) for i in range(24)]
    table = pa.table({"ann_id": [f"a{i}" for i in range(24)], "bbox_x": boxes})
    pq.write_table(table, part_dir / "part-00000.parquet", 6)  # groups 0-3: nulls in 1, 3
    pq.write_table(table.slice(0, 6), part_dir / "part-00001.parquet", 6)  # 4: none
    # 5: no statistics, 6: no such column; either may hold nulls for all the footer says.
    pq.write_table(table.slice(0, 6), part_dir / "part-00002.parquet", write_statistics=False)
    pq.write_table(table.select(["ann_id"]), part_dir / "part-00003.parquet")
    staging = Staging(str(tmp_path))
    assert staging.groups_with_nulls("annotations", ["bbox_x"]) == [1, 3, 5, 6]
    numbered = [n for n, g in enumerate(staging.scan("annotations", ["ann_id"])) if len(g)]
    assert len(numbered) == 7  # `scan` numbers the same row groups


def test_a_mask_placed_on_its_image_encodes_as_the_full_canvas_would() -> None:
    from pipelines import masks

    rng = np.random.default_rng(7)
    for _ in range(500):
        height, width = (int(v) for v in rng.integers(1, 30, 2))
        h, w = (int(v) for v in rng.integers(1, 35, 2))
        left, top = (int(v) for v in rng.integers(-3, 35, 2))  # past the edges too
        sub = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        canvas = np.zeros((height + 160, width + 160), dtype=np.uint8)  # room on every side
        canvas[top + 80 : top + 80 + h, left + 80 : left + 80 + w] = sub
        full = canvas[80 : 80 + height, 80 : 80 + width]
        assert masks.encode_placed(sub, left, top, height, width) == (
            masks.encode(full),
            int(full.sum()),
        )
