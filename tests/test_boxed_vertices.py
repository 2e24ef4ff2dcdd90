"""Staging that only feeds a box-reading write (YOLO detect, obb) and is deleted after
leaves out the vertices of shapes that state a box (the COCO reader as it reads, the
runner once the transforms have filled boxes): the same files, the same report."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import formats, runner
from pipelines.formats import _coco_fast
from pipelines.formats.base import WriteOptions
from tests.conftest import PEER

_POLYGONS = [
    # (image, segmentation, bbox or None): vertices 3, 4, 0, 3 + 3
    (1, [[10, 10, 30, 10, 30, 30]], [10, 10, 20, 20]),
    (1, [[5, 5, 20, 5, 20, 25, 5, 25]], None),
    (2, [], [1, 2, 3, 4]),
    (2, [[1, 1, 9, 1, 9, 9], [20, 20, 30, 20, 30, 30]], [1, 1, 29, 29]),
]


def _coco(tmp_path: Path) -> Path:
    anns = []
    for n, (image, seg, bbox) in enumerate(_POLYGONS, 1):
        ann = {"id": n, "image_id": image, "category_id": 1, "segmentation": seg}
        if bbox is not None:
            ann["bbox"] = bbox
        anns.append(ann)
    doc = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "b.jpg", "width": 64, "height": 64},
        ],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": anns,
    }
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(doc))
    return path


_READ = runner.run_read_task


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _convert_watching_reads(source: Path, out: Path, monkeypatch, **kwargs) -> tuple:
    """The run's report, and what its read tasks staged and left out of the vertices."""
    seen = {"staged": 0, "left_out": 0, "boxed_vertices": set()}

    def spy(task, staging_url, part, compression):
        result = _READ(task, staging_url, part, compression)
        seen["boxed_vertices"].add(task.options.boxed_vertices)
        points = [f for f in result.files if "/points/" in f]
        seen["staged"] += sum(pq.ParquetFile(f).metadata.num_rows for f in points)
        seen["left_out"] += result.vertices_left_out
        return result

    monkeypatch.setattr(runner, "run_read_task", spy)
    report = runner.convert([str(source)], "yolo", str(out), workers=1, **kwargs)
    assert report.ok
    return report, seen


def _lean_and_full(source: Path, tmp_path: Path, monkeypatch, extra: dict) -> tuple[dict, dict]:
    """Converts to YOLO with transient staging (lean) and with kept staging (full): the
    same files and the same report. Returns what each run's reads staged."""
    options = WriteOptions(extra={"save_images": "false", **extra})
    lean, lean_seen = _convert_watching_reads(
        source, tmp_path / "lean", monkeypatch, write_options=options
    )
    kept = str(tmp_path / "kept")
    full, full_seen = _convert_watching_reads(
        source, tmp_path / "full", monkeypatch, write_options=options, staging=kept
    )
    assert lean.counts == full.counts
    assert lean.lossy == full.lossy
    assert _files(tmp_path / "lean") == _files(tmp_path / "full")
    return lean_seen, full_seen


def _no_columns(*args):
    raise _coco_fast.Fallback
    yield  # pragma: no cover - a generator, as the real one is


@pytest.mark.parametrize("path", ["columns", "rows"])
@pytest.mark.parametrize(
    "extra",
    [{}, {"layout": "ultralytics", "task": "detect"}, {"layout": "ultralytics", "task": "obb"}],
)
def test_box_writes_stage_only_the_vertices_they_read(
    extra: dict, path: str, tmp_path: Path, monkeypatch
) -> None:
    emitted = []
    real_emit = _coco_fast.ColumnMapper.emit
    monkeypatch.setattr(
        _coco_fast.ColumnMapper, "emit", lambda *a: emitted.append(1) or real_emit(*a)
    )
    if path == "rows":
        monkeypatch.setattr(_coco_fast.ColumnMapper, "segments", _no_columns)
    lean, full = _lean_and_full(_coco(tmp_path), tmp_path, monkeypatch, extra)
    # The polygon without a bbox gets one from its vertices as it is read; then no
    # vertex is left that the write would read.
    assert lean == {"staged": 0, "left_out": 13, "boxed_vertices": {False}}
    assert full == {"staged": 13, "left_out": 0, "boxed_vertices": {True}}
    assert bool(emitted) == (path == "columns")
    (label,) = (tmp_path / "lean").rglob("a.txt")
    assert len(label.read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "sample",
    [
        "coco_instances/coco_instances/annotations/instances_val.json",
        "encord_coco/coco_exporter_project/coco.json",
        "cvat_images/project_export",
        "labelme/labelme_dataset",
    ],
)
def test_peer_samples_write_the_same_with_vertices_left_out(
    sample: str, tmp_path: Path, monkeypatch
) -> None:
    lean, full = _lean_and_full(PEER / sample, tmp_path, monkeypatch, {})
    assert lean["left_out"] > 0
    assert lean["staged"] + lean["left_out"] == full["staged"]


@pytest.mark.parametrize(
    ("fmt", "extra", "suffice"),
    [
        ("yolo", {}, True),
        ("yolo", {"task": "obb", "layout": "ultralytics"}, True),
        ("yolo", {"layout": "ultralytics"}, False),  # the task is chosen from the data
        ("ultralytics", {}, False),
        ("ultralytics", {"task": "detect"}, True),
        ("ultralytics", {"task": "segment"}, False),
        ("ultralytics", {"task": "pose"}, False),
        ("coco", {}, False),
    ],
)
def test_only_writes_known_to_read_boxes_leave_vertices_out(
    fmt: str, extra: dict, suffice: bool
) -> None:
    assert formats.get(fmt).boxes_suffice(WriteOptions(extra=extra)) is suffice
