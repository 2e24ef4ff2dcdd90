"""Staging's DuckDB connections: one database, a connection per querying thread,
closed on demand."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

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
