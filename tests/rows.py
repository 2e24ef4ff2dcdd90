"""Rows to assert on, for every format's tests: a reader's tables read directly, or a
run staged as Parquet and read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import transforms
from pipelines import formats
from pipelines.formats.base import ReadOptions
from pipelines.runner import convert
from pipelines.schema import TABLES
from pipelines.storage import Source


def read_direct(path: Path | str, fmt: str, **options: Any) -> dict[str, list[dict]]:
    """Every table a reader yields for a source, after the runner's standard transforms
    (no staging: a reader's own output, batch by batch)."""
    reader = formats.get(fmt)
    out: dict[str, list[pa.Table]] = {name: [] for name in TABLES}
    opts = ReadOptions(dataset="t", **options)
    for task in reader.plan_read(Source(str(path)), opts):
        for batch in reader.read(task):
            for name, table in transforms.standard(batch).tables().items():
                out[name].append(table)
    return {n: pa.concat_tables(ts).to_pylist() if ts else [] for n, ts in out.items()}


def parquet_rows(root: Path, table: str) -> list[dict]:
    """One staged table of a Parquet output folder (all its parts, in order)."""
    files = sorted((root / table).rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []


def tables(out: Path) -> dict[str, list[dict]]:
    return {name: parquet_rows(out, name) for name in TABLES}


def read(src: Path | str, out: Path, **kw: Any) -> dict[str, list[dict]]:
    """`src` staged as Parquet into `out` (one worker unless told); the run must succeed."""
    report = convert([str(src)], "parquet", str(out), workers=kw.pop("workers", 1), **kw)
    assert report.ok, report.failures
    return tables(out)


def by_id(rows: list[dict], key: str = "ann_id") -> dict[str, dict]:
    return {r[key]: r for r in rows}
