"""Runs the DuckDB scripts of `sql/*.sql` over Arrow tables, without copying them.

A script reads the tables registered under their names and leaves its results
as temporary views, which the caller fetches by name.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    import duckdb

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


@cache
def script_text(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def run_sql(name: str, outputs: tuple[str, ...], **tables: pa.Table) -> dict[str, pa.Table]:
    """Run `sql/<name>.sql` with each keyword table visible under its name.

    Returns the views named in `outputs`, row order kept as the script leaves it.
    """
    con = _connection()
    try:
        for table_name, table in tables.items():
            con.register(table_name, table)
        con.execute(script_text(name))
        return {out: con.sql(f"SELECT * FROM {out}").to_arrow_table() for out in outputs}
    finally:
        for table_name in tables:
            con.unregister(table_name)


_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    """This thread's connection, made on first use: a new one per batch cost ~12 ms,
    a fifth of normalizing an Encord batch. A forked child makes its own."""
    pid, con = getattr(_local, "con", (None, None))
    if pid != os.getpid():
        import duckdb  # on first use: most batches need no script (see `normalize`)

        con = duckdb.connect(config={"threads": 1})
        _local.con = (os.getpid(), con)
    return con
