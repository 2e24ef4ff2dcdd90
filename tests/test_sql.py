"""The DuckDB scripts of sql/, run over Arrow tables on a connection kept per thread."""

from __future__ import annotations

import os

import pyarrow as pa

from transforms import sql


def _scaled(width: int) -> list[float]:
    items = pa.table({"item_id": ["i"], "width": [width], "height": [10]})
    anns = pa.table(
        {
            "ann_id": ["a"],
            "item_id": ["i"],
            "units": ["norm"],
            "bbox_x": [0.5],
            "bbox_y": [0.5],
            "bbox_w": [0.25],
            "bbox_h": [0.25],
            "area": [None],
        },
        schema=pa.schema(
            [("ann_id", pa.string()), ("item_id", pa.string()), ("units", pa.string())]
            + [(c, pa.float64()) for c in ("bbox_x", "bbox_y", "bbox_w", "bbox_h", "area")]
        ),
    )
    points = pa.table({"ann_id": ["a"], "x": [0.5], "y": [1.0]})
    out = sql.run_sql(
        "normalize_coordinates",
        ("annotations_px", "points_px"),
        items=items,
        annotations=anns,
        points=points,
    )
    return (
        out["annotations_px"].column("bbox_x").to_pylist()
        + out["points_px"].column("x").to_pylist()
    )


def test_each_call_sees_its_own_tables_on_the_kept_connection() -> None:
    assert _scaled(100) == [50.0, 50.0]
    assert _scaled(640) == [320.0, 320.0]  # not the previous call's items
    con = sql._connection()
    assert sql._connection() is con
    views = "SELECT view_name FROM duckdb_views() WHERE NOT internal"
    names = {r[0] for r in con.execute(views).fetchall()}
    assert "annotations_px" in names  # the script's own views stay, replaced next time
    assert not names & {"items", "annotations", "points"}  # the caller's tables do not


def test_a_forked_child_makes_its_own_connection() -> None:
    parent = sql._connection()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a connection shared across fork is not safe to use
        ok = sql._connection() is not parent and _scaled(200) == [100.0, 100.0]
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
