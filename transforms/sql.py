"""Runs the DuckDB scripts of `sql/*.sql` over Arrow tables, without copying them.

A script reads the tables registered under their names and leaves its results
as temporary views, which the caller fetches by name.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pyarrow as pa

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


@cache
def script_text(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def run_sql(name: str, outputs: tuple[str, ...], **tables: pa.Table) -> dict[str, pa.Table]:
    """Run `sql/<name>.sql` with each keyword table visible under its name.

    Returns the views named in `outputs`, row order kept as the script leaves it.
    """
    import duckdb  # on first use: most batches need no script (see `normalize`)

    con = duckdb.connect(config={"threads": 1})
    try:
        for table_name, table in tables.items():
            con.register(table_name, table)
        con.execute(script_text(name))
        return {out: con.sql(f"SELECT * FROM {out}").to_arrow_table() for out in outputs}
    finally:
        con.close()
