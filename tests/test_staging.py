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
