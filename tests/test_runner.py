"""How a run stages what it reads: compression by what the staging is for."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipelines import runner
from tests.conftest import PEER

SOURCE = PEER / "coco_instances" / "coco_instances"


def _codecs(root: Path) -> set[str]:
    files = sorted(root.rglob("*.parquet"))
    assert files
    return {
        pq.ParquetFile(f).metadata.row_group(0).column(0).compression
        for f in files
        if pq.ParquetFile(f).metadata.num_row_groups
    }


def test_staging_deleted_after_the_write_is_lz4_output_and_kept_staging_zstd(
    tmp_path: Path, monkeypatch
) -> None:
    asked: list[str] = []
    real = runner.run_read_task

    def spy(task, staging_url, part, compression):
        asked.append(compression)
        return real(task, staging_url, part, compression)

    monkeypatch.setattr(runner, "run_read_task", spy)
    assert runner.convert([str(SOURCE)], "yolo", str(tmp_path / "yolo"), workers=1).ok
    assert set(asked) == {"lz4"}

    asked.clear()
    kept = tmp_path / "kept"
    assert runner.convert(
        [str(SOURCE)], "yolo", str(tmp_path / "yolo2"), workers=1, staging=str(kept)
    ).ok
    assert set(asked) == {"zstd"}
    assert _codecs(kept) == {"ZSTD"}

    assert runner.convert([str(SOURCE)], "parquet", str(tmp_path / "pq"), workers=1).ok
    assert _codecs(tmp_path / "pq") == {"ZSTD"}
