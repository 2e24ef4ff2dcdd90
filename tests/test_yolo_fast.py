"""The column path of the YOLO detect writer writes the same files and counts the same
losses as the per-item path, on staged peer samples of every kind of shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import formats, runner
from pipelines import staging as staging_module
from pipelines.formats import _per_image as per_image
from pipelines.formats import _yolo_fast
from pipelines.formats.base import WriteOptions
from pipelines.item_spans import item_spans
from pipelines.runner import convert
from pipelines.staging import Staging
from tests.conftest import PEER

SOURCES = [
    "coco_instances/coco_instances",
    "coco_keypoints/coco_person_keypoints",
    "cvat_images/project_export",
    "cvat_images/task_export_with_skeleton",
    "cvat_video/for_video",
    "datumaro/diverse",
    "yolo/strict",
]


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize(("layout", "batch"), [("yolo", 3), ("ultralytics", 16_384)])
@pytest.mark.parametrize("source", SOURCES)
def test_same_files_and_losses(
    source: str, layout: str, batch: int, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(_yolo_fast, "ITEMS_PER_BATCH", batch)
    staged = tmp_path / "staged"
    assert convert([str(PEER / source)], "parquet", str(staged), workers=1).ok
    options = WriteOptions(extra={"layout": layout, "task": "detect", "save_images": "false"})
    calls = {"fast": 0}
    real = _yolo_fast.write_boxes

    def counted(*args):
        calls["fast"] += 1
        result = real(*args)
        assert args[1]._con is None  # read by pyarrow alone: no DuckDB in the worker
        return result

    monkeypatch.setattr(_yolo_fast, "write_boxes", counted)
    fast = convert([str(staged)], "yolo", str(tmp_path / "fast"), workers=1, write_options=options)
    monkeypatch.setattr(_yolo_fast, "shard_count", lambda *args: None)  # the per-item path
    slow = convert([str(staged)], "yolo", str(tmp_path / "slow"), workers=1, write_options=options)
    assert fast.ok and slow.ok
    assert calls["fast"] > 0
    assert fast.lossy == slow.lossy
    assert fast.counts == slow.counts
    assert fast.files == slow.files
    written = _files(tmp_path / "fast")
    assert any(name.endswith(".txt") and data for name, data in written.items())
    assert written == _files(tmp_path / "slow")


def _awkward_values() -> np.ndarray:
    rng = np.random.default_rng(7)
    widths = rng.choice([640.0, 480.0, 427.0, 333.0, 1024.0, 375.0], 20_000)
    values = np.concatenate(
        [
            rng.random(20_000),
            rng.integers(0, 4_000, 20_000) / widths,  # pixels over a size: many exact halves
            np.arange(-4_000, 4_000) / 2e6,  # every half at the sixth decimal, both signs
            np.arange(0, 4_000) / 128.0,
            rng.normal(0, 300, 5_000),
            [0.0, -0.0, -1e-9, 5e-7, 1.5e-6, 2.5e-6, 999.9999995, 1e3, 1e300, 5e-324],
            [np.nan, np.inf, -np.inf],
        ]
    )
    return np.concatenate([values, np.nextafter(values, np.inf), np.nextafter(values, -np.inf)])


def test_fixed6_is_pythons_formatting() -> None:
    values = _awkward_values()
    assert _yolo_fast.fixed6(values).to_pylist() == [f"{v:.6f}" for v in values.tolist()]


def test_coordinate_text_is_pythons_formatting_row_by_row() -> None:
    values = _awkward_values()
    rng = np.random.default_rng(8)
    regular = rng.random((4, 50_000)) * 1.2  # mostly in [0, 10): the byte-matrix rows
    fields = [np.concatenate([rng.permutation(values), r]) for r in regular]
    expected = [
        "".join(f" {v:.6f}" for v in row) + "\n"
        for row in zip(*(f.tolist() for f in fields), strict=True)
    ]
    assert [t.decode() for t in _yolo_fast.coordinate_text(fields).to_pylist()] == expected
    assert _yolo_fast.coordinate_text([np.array([])] * 4).to_pylist() == []


NAMES = [
    ("a/b.jpg", None, None),
    ("a\\b.PNG", "x", "s3://bucket/x.png"),
    ("", "native.TIFF", None),
    (None, "", None),
    (".jpg", None, "http://host/real.webp"),
    ("dir/..jpg", None, None),
    ("dir/.hidden.jpeg", None, None),
    ("no_ext", None, "img.bmp"),
    ("a.b.c.Gif", None, None),
    ("a.txt", None, "b.txt"),
    ("trailing/", None, "weird."),
    ("multi\nline.jpg\n", None, None),
    ("ü/ß.jpg", None, None),
    ("tricky.jp\u0130g", None, "x.j\u212apg"),
    ("dup.jpg", None, None),
    ("dup.png", None, None),
    ("DUP.gif", None, None),
]


@pytest.mark.parametrize("per_subset", [True, False])
def test_stems_and_suffixes_a_column_at_a_time_match_the_item_rules(per_subset: bool) -> None:
    rows = [
        {
            "item_id": f"id{i}",
            "file_name": f,
            "native_id": n,
            "media_uri": m,
            "subset": "val" if i % 2 else None,
        }
        for i, (f, n, m) in enumerate(NAMES)
    ]
    items = pa.Table.from_pylist(rows)
    plain = per_image.output_stems(items, set(), per_subset=per_subset)
    assert plain == [per_image.output_stem(r, set(), per_subset) for r in rows]
    collisions = {("val" if per_subset else None, "dup"), (None, "dup")}
    stems = per_image.output_stems(items, collisions, per_subset=per_subset)
    assert stems == [per_image.output_stem(r, collisions, per_subset) for r in rows]
    assert stems != plain  # some names did collide
    suffixes = per_image.image_suffixes(items).to_pylist()
    assert suffixes == [per_image.image_suffix(r) for r in rows]


def test_shards_bounded_by_annotations_write_the_same_files(tmp_path: Path, monkeypatch) -> None:
    staged = tmp_path / "staged"
    assert convert([str(PEER / SOURCES[0])], "parquet", str(staged), workers=1).ok
    options = WriteOptions(extra={"save_images": "false"})
    whole = convert(
        [str(staged)], "yolo", str(tmp_path / "whole"), workers=1, write_options=options
    )
    planned: list[int] = []
    real = _yolo_fast.shard_count

    def counted(*args):
        planned.append(real(*args))
        return planned[-1]

    monkeypatch.setattr(_yolo_fast, "ANNOTATIONS_PER_SHARD", 1)
    monkeypatch.setattr(_yolo_fast, "shard_count", counted)
    split = convert(
        [str(staged)], "yolo", str(tmp_path / "split"), workers=1, write_options=options
    )
    assert whole.ok and split.ok
    assert planned and planned[0] > 1
    staging = Staging(str(staged))
    groups = _yolo_fast.shard_groups(item_spans(staging, "annotations"), planned[0])
    holding = [n for n, part in enumerate(staging.scan("annotations", ["item_id"])) if len(part)]
    assert sorted({g for shard in groups for g in shard}) == holding  # each read by a shard
    assert (split.lossy, split.counts, split.files) == (whole.lossy, whole.counts, whole.files)
    assert _files(tmp_path / "split") == _files(tmp_path / "whole")


def test_planning_a_detect_write_needs_no_duckdb(tmp_path: Path) -> None:
    """A YOLO detect write reads staging with pyarrow alone, from planning to the last
    shard: its workers need not import DuckDB."""
    staged = tmp_path / "staged"
    assert convert([str(PEER / SOURCES[0])], "parquet", str(staged), workers=1).ok
    staging = Staging(str(staged))
    tasks = runner.plan_write("yolo", staging, WriteOptions(workers=2))
    assert tasks[1].options.extra["_columns"]
    assert runner.staged_counts(staging)["annotations"] > 0
    assert staging._con is None
    assert not formats.get("yolo").write_queries


def test_planning_closes_the_connection_it_queried_through(tmp_path: Path, monkeypatch) -> None:
    """Past `IN_MEMORY_ITEMS` planning asks DuckDB; the connection is closed with the
    plan made, so the process that runs the tasks next does not hold what it used."""
    staged = tmp_path / "staged"
    assert convert([str(PEER / SOURCES[0])], "parquet", str(staged), workers=1).ok
    monkeypatch.setattr(staging_module, "IN_MEMORY_ITEMS", 0)
    staging = Staging(str(staged))
    opened: list[Staging] = []
    connect = Staging._connect
    monkeypatch.setattr(Staging, "_connect", lambda self: opened.append(self) or connect(self))
    tasks = runner.plan_write("yolo", staging, WriteOptions(workers=2))
    assert len(tasks) > 1 and opened == [staging]  # DuckDB answered, on one database
    assert staging._con is None


@pytest.mark.parametrize("source", [SOURCES[0], SOURCES[2], SOURCES[5]])
def test_planning_past_the_in_memory_limit_writes_the_same(
    source: str, tmp_path: Path, monkeypatch
) -> None:
    """Past `IN_MEMORY_ITEMS` planning asks DuckDB (bounded memory) and finds the row
    groups of each shard a window of items at a time (here a window per item): the
    same files and losses as planning in memory."""
    staged = tmp_path / "staged"
    assert convert([str(PEER / source)], "parquet", str(staged), workers=1).ok
    options = WriteOptions(extra={"save_images": "false"})
    held = convert([str(staged)], "yolo", str(tmp_path / "held"), workers=1, write_options=options)
    monkeypatch.setattr(staging_module, "IN_MEMORY_ITEMS", 0)
    asked = convert(
        [str(staged)], "yolo", str(tmp_path / "asked"), workers=1, write_options=options
    )
    assert held.ok and asked.ok
    assert (asked.lossy, asked.counts, asked.files) == (held.lossy, held.counts, held.files)
    assert _files(tmp_path / "asked") == _files(tmp_path / "held")


def test_colliding_names_are_the_same_in_memory_and_from_duckdb(
    tmp_path: Path, monkeypatch
) -> None:
    part_dir = tmp_path / "items" / "dataset=d"
    part_dir.mkdir(parents=True)
    rows = [
        {"item_id": f"id{i}", "file_name": f, "native_id": n, "subset": "val" if i % 2 else None}
        for i, (f, n, _) in enumerate(NAMES)
    ]
    pq.write_table(pa.Table.from_pylist(rows), part_dir / "part-00000.parquet")
    for per_subset in (True, False):
        held = per_image.colliding_stems(Staging(str(tmp_path)), per_subset)
        monkeypatch.setattr(staging_module, "IN_MEMORY_ITEMS", 0)
        asked = per_image.colliding_stems(Staging(str(tmp_path)), per_subset)
        monkeypatch.undo()
        assert held and held == asked
