"""How a run stages what it reads: compression by what the staging is for, encodings."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow.parquet as pq

from pipelines import runner
from pipelines.builder import BatchBuilder
from pipelines.formats.parquet import PartWriter
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


def test_a_row_group_built_from_batches_keeps_labels_dictionary_encoded(tmp_path: Path) -> None:
    labels = [f"label-with-a-long-name-{i:03d}" for i in range(50)]
    rng = random.Random(3)
    writer = PartWriter(str(tmp_path), "t", "00000", compression="none")
    for batch in range(20):  # each batch's builder numbers the labels its own way
        b = BatchBuilder("t", "test", "memory")
        b.item(item_id=f"i{batch}", file_name=f"{batch}.jpg")
        for n, label in enumerate(rng.sample(labels, len(labels)) * 10):
            b.annotation(ann_id=f"{batch}-{n}", item_id=f"i{batch}", kind="bbox", label=label)
        writer.add(b.flush())
    writer.close()
    (path,) = (tmp_path / "annotations").rglob("*.parquet")
    group = pq.ParquetFile(path).metadata.row_group(0)
    assert group.num_rows == 10_000
    chunk = next(group.column(i) for i in range(group.num_columns)
                 if group.column(i).path_in_schema == "label")  # fmt: skip
    # Indices of 6 bits a row, with the dictionary: plain pages would take 300 KB.
    assert chunk.total_uncompressed_size < 20_000
