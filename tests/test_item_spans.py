"""`item_spans` finds, for every row group, the first and last item row it holds rows of:
checked against a count made row by row, in one window of items and in many."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import staging as staging_module
from pipelines.item_spans import item_spans
from pipelines.staging import Staging


def _staging(root: Path) -> Staging:
    """Items in two files; annotations in two files of row groups of 7 rows, most in
    item order, some shuffled, one pointing at no item."""
    rng = random.Random(3)
    ids = [f"img-{i:03d}" for i in range(120)]
    for name, chunk in (("part-00000", ids[:50]), ("part-00001", ids[50:])):
        folder = root / "items" / "dataset=d"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"item_id": chunk}), folder / f"{name}.parquet")
    rows = [ids[i // 3] for i in range(len(ids) * 3)]
    rows[200:260] = rng.sample(rows[200:260], 60)
    rows[91:98] = ["nowhere"] * 7  # the 14th row group
    folder = root / "annotations" / "dataset=d"
    folder.mkdir(parents=True)
    for name, chunk in (("part-00000", rows[:150]), ("part-00001", rows[150:])):
        pq.write_table(pa.table({"item_id": chunk}), folder / f"{name}.parquet", row_group_size=7)
    return Staging(str(root))


def _counted(staging: Staging) -> list[tuple[int, int] | None]:
    items = [v for part in staging.scan("items", ["item_id"]) for v in part["item_id"].to_pylist()]
    row = {item: n for n, item in enumerate(items)}
    spans: list[tuple[int, int] | None] = []
    for part in staging.scan("annotations", ["item_id"]):
        found = [row[v] for v in part["item_id"].to_pylist() if v in row]
        spans.append((min(found), max(found)) if found else None)
    return spans


@pytest.mark.parametrize("window", [None, 1, 17])
def test_spans_match_a_row_by_row_count(tmp_path: Path, monkeypatch, window: int | None) -> None:
    staging = _staging(tmp_path)
    expected = _counted(staging)
    if window is not None:
        monkeypatch.setattr(staging_module, "IN_MEMORY_ITEMS", window)
    found = item_spans(Staging(str(tmp_path)), "annotations")
    assert found.items == 120
    assert len(found.spans) == len(expected) > 40
    assert found.spans == expected
    assert None in expected  # the row group of ids that name no item
