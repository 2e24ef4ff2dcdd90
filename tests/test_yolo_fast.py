"""The column path of the YOLO detect writer writes the same files and counts the same
losses as the per-item path, on staged peer samples of every kind of shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.formats import _yolo_fast
from pipelines.formats.base import WriteOptions
from pipelines.runner import convert
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
        done = real(*args)
        calls["fast"] += done is not None
        return done

    monkeypatch.setattr(_yolo_fast, "write_boxes", counted)
    fast = convert([str(staged)], "yolo", str(tmp_path / "fast"), workers=1, write_options=options)
    monkeypatch.setattr(_yolo_fast, "write_boxes", lambda *args: None)
    slow = convert([str(staged)], "yolo", str(tmp_path / "slow"), workers=1, write_options=options)
    assert fast.ok and slow.ok
    assert calls["fast"] > 0
    assert fast.lossy == slow.lossy
    assert fast.counts == slow.counts
    assert fast.files == slow.files
    written = _files(tmp_path / "fast")
    assert any(name.endswith(".txt") and data for name, data in written.items())
    assert written == _files(tmp_path / "slow")
