"""Staging's DuckDB connections: one database, a connection per querying thread,
closed on demand."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.staging import Staging


def _staging(root: Path) -> Staging:
    folder = root / "items" / "dataset=d"
    folder.mkdir(parents=True)
    ids = [f"img-{i}" for i in range(5000)]
    pq.write_table(pa.table({"item_id": ids}), folder / "part-00000.parquet")
    return Staging(str(root))


def test_threads_query_on_connections_of_their_own(tmp_path: Path) -> None:
    staging = _staging(tmp_path)

    together = threading.Barrier(4)  # four threads hold a connection at once

    def count(_: int) -> tuple[int, int, int]:
        con = staging.con
        together.wait(timeout=30)
        total = con.execute("SELECT count(DISTINCT item_id) FROM items").fetchone()[0]
        return threading.get_ident(), id(con), total

    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(count, range(4)))
    assert {total for *_, total in found} == {5000}
    by_thread = {thread: con for thread, con, _ in found}
    assert len(set(by_thread.values())) == len(by_thread) == 4  # none shared
    assert id(staging.con) not in by_thread.values()


def test_close_lets_go_of_every_connection_and_a_query_opens_one_again(tmp_path: Path) -> None:
    staging = _staging(tmp_path)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: staging.con.execute("SELECT 1").fetchall(), range(4)))
    assert staging._con is not None and staging._cursors
    staging.close()
    assert staging._con is None and not staging._cursors
    assert staging.con.execute("SELECT count(*) FROM items").fetchone()[0] == 5000


def test_a_write_is_planned_within_the_planning_limit_and_written_within_the_usual(
    tmp_path: Path, monkeypatch
) -> None:
    """Planning's whole-table queries get `PLAN_MEMORY_LIMIT`; the write tasks keep
    `MEMORY_LIMIT` for their joins."""
    from pipelines import runner, staging
    from tests.conftest import PEER

    limits: dict[str, str] = {}
    real_plan, real_write = runner.plan_write, runner.run_write_task

    def setting(view: Staging) -> str:
        return view.con.execute("SELECT current_setting('memory_limit')").fetchone()[0]

    def plan_write(fmt, view, options):
        limits["plan"] = setting(view)
        return real_plan(fmt, view, options)

    def run_write_task(task, view, out):
        limits["write"] = setting(view)
        return real_write(task, view, out)

    monkeypatch.setattr(runner, "plan_write", plan_write)
    monkeypatch.setattr(runner, "run_write_task", run_write_task)
    source = PEER / "coco_instances" / "coco_instances"
    assert runner.convert([str(source)], "cvat", str(tmp_path / "cvat"), workers=1).ok
    assert limits == {
        "plan": _as_duckdb_states(staging.PLAN_MEMORY_LIMIT),
        "write": _as_duckdb_states(staging.MEMORY_LIMIT),
    }


def _as_duckdb_states(limit: str) -> str:
    """How DuckDB states a memory limit once set."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{limit}'")
    return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_point_text_joins_each_part_s_vertices_as_the_vertex_rows_give_them(
    tmp_path: Path,
) -> None:
    """A row per part (`part_kinds`) against the vertex rows: a polygon longer than
    a fetched batch, several parts, and vertices without a part (they go with part
    0, after its own)."""
    import json

    from pipelines import runner

    ring = [float(v) for v in range(40_000)]  # 20,000 vertices: across fetched batches
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 50_000, "height": 50_000}],
        "categories": [{"id": 1, "name": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [ring], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "segmentation": [[0, 0, 5, 0, 5, 5], [9, 9, 12, 9, 12, 12], [1, 1, 2, 2, 3, 1]]},
        ],
    }  # fmt: skip
    source = tmp_path / "coco.json"
    source.write_text(json.dumps(coco))
    staged = tmp_path / "staged"
    assert runner.convert([str(source)], "parquet", str(staged), workers=1).ok
    # Some vertices of the second annotation lose their part.
    for path in (staged / "points").rglob("*.parquet"):
        points = pq.read_table(path)
        lose = pc.and_(pc.is_in(points["idx"], pa.array([0, 1])), pc.equal(points["part"], 2))
        part = pc.if_else(lose, pa.scalar(None, points["part"].type), points["part"])
        pq.write_table(points.set_column(points.schema.get_field_index("part"), "part", part), path)

    def text(v: pa.RecordBatch) -> pa.Array:
        xy = zip(v["x"].to_pylist(), v["y"].to_pylist(), strict=True)
        return pa.array([f"{x},{y}" for x, y in xy])

    staging = Staging(str(staged))
    [by_vertex] = staging.iter_items(point_columns=("part", "x", "y"))
    [by_part] = staging.iter_items(point_columns=(), part_kinds=("polygon",), point_text=text)
    expected: dict[str, dict[int, str]] = {}
    for ann, vertices in by_vertex.points.items():
        parts: dict[int, list[str]] = {}
        for v in vertices:  # in order: part (nulls last), then index
            parts.setdefault(v["part"] or 0, []).append(f"{v['x']},{v['y']}")
        expected[ann] = {k: ";".join(texts) for k, texts in parts.items()}
    assert by_part.parts == expected
    assert [len(t.split(";")) for t in expected[next(iter(expected))].values()] == [20_000]
    assert list(by_part.points) == []
    [split] = staging.iter_items(point_columns=("part",), part_kinds=("polygon",))
    assert split.points == {}  # a vertex of a part kind comes as a part, not as a row
    # The same parts as arrays, x and y interleaved.
    [by_array] = staging.iter_items(point_columns=(), part_kinds=("polygon",))
    arrays = {
        ann: {
            k: [float(v) for t in text.split(";") for v in t.split(",")]
            for k, text in parts.items()
        }
        for ann, parts in expected.items()
    }
    got = {ann: {k: a.tolist() for k, a in parts.items()} for ann, parts in by_array.parts.items()}
    assert got == arrays


def test_a_vertex_without_coordinates_is_named_not_written_as_text(tmp_path: Path) -> None:
    from pipelines import runner
    from pipelines.errors import LabelflowError
    from tests.conftest import ROOT

    source = ROOT / "tests/fixtures/example/annotations/instances_demo.json"
    staged = tmp_path / "staged"
    assert runner.convert([str(source)], "parquet", str(staged), workers=1).ok
    path = next((staged / "points").rglob("*.parquet"))
    points = pq.read_table(path)
    x = points["x"].to_pylist()
    x[3] = None
    pq.write_table(points.set_column(points.schema.get_field_index("x"), "x", pa.array(x)), path)
    owner = points["ann_id"][3].as_py()
    texts = Staging(str(staged)).iter_items(
        point_columns=(), part_kinds=("polygon",), point_text=lambda v: v["x"].cast(pa.string())
    )
    with pytest.raises(LabelflowError, match=f"annotation '{owner}' has a vertex without"):
        list(texts)


def test_a_writer_gets_only_the_vertices_it_reads(tmp_path: Path) -> None:
    """A box-reading writer (VOC, WIDER Face) gets the vertices of a shape that states
    no box, and none of those that state one; with `part_kinds`, its parts still come."""
    import json

    from pipelines import runner

    sq = [[0, 0, 5, 0, 5, 5, 0, 5]]
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "c"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": sq, "bbox": [0, 0, 5, 5]},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": sq},
        ],
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert runner.convert([str(tmp_path / "c.json")], "parquet", str(tmp_path / "s")).ok
    for path in (tmp_path / "s" / "annotations").rglob("*.parquet"):  # the reader filled
        anns = pq.read_table(path)  # annotation 2's box from its vertices: unstate it
        unboxed = pc.equal(anns["native_id"], "2")
        for column in ("bbox_x", "bbox_w"):
            nulls = pc.if_else(unboxed, pa.scalar(None, anns[column].type), anns[column])
            anns = anns.set_column(anns.schema.get_field_index(column), column, nulls)
        pq.write_table(anns, path)
    staging = Staging(str(tmp_path / "s"))
    [every] = staging.iter_items()
    boxed = {a["ann_id"] for a in every.annotations if a["bbox_w"] is not None}
    [lean] = staging.iter_items(boxed_vertices=False)
    assert len(boxed) == 1 and set(every.points) == {a["ann_id"] for a in every.annotations}
    assert set(lean.points) == set(every.points) - boxed
    assert all(lean.points[a] == every.points[a] for a in lean.points)
    [parts] = staging.iter_items(boxed_vertices=False, part_kinds=("polygon",))
    assert parts.points == {} and set(parts.parts) == set(every.points)
    # `vertex_kinds`: a writer that reads landmarks alone (LFW, VGGFace2).
    [polygons] = staging.iter_items(vertex_kinds=("polygon",))
    [landmarks] = staging.iter_items(vertex_kinds=("keypoints",))
    assert polygons.points == every.points and landmarks.points == {}


def test_rows_are_what_arrow_gives_for_every_type_and_nulls() -> None:
    """`_rows` skips converting all-null columns: the dicts must not tell."""
    when = pa.array([None, 1_700_000_000_000_000, None], pa.timestamp("us", tz="UTC"))
    batch = pa.record_batch(
        {
            "s": pa.array(["a", None, "c"]),
            "d": pa.array(["x", "y", None]).dictionary_encode(),
            "f": pa.array([1.5, None, float("nan")]),
            "i": pa.array([None, None, None], pa.int32()),
            "b": pa.array([True, False, None]),
            "t": when,
            "v": pa.array([[1.0, 2.0, 3.0], None, []], pa.list_(pa.float64())),
            "n": pa.nulls(3, pa.string()),
        }
    )
    got = list(Staging._rows(iter([batch, batch.slice(0, 0), batch.slice(1)])))
    want = batch.to_pylist() + batch.slice(1).to_pylist()
    assert repr(got) == repr(want)  # repr: NaN is not equal to itself
    assert [list(row) for row in got] == [batch.schema.names] * 5
