"""KITTI: label_2 boxes with their truncation, occlusion and 3D fields, instance PNGs
(class × 256 + instance), rejects with file and line, and the writer's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines import formats
from pipelines.runner import convert
from pipelines.storage import Source
from tests.mask_formats import attrs, pixels, png, save, write
from tests.rows import by_id, read


def test_peer_detection_boxes_and_fields(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "kitti" / "kitti_detection", tmp_path / "a")
    item = by_id(t["items"], "item_id")["training/000030_10"]
    assert (item["subset"], item["width"], item["height"]) == ("training", 10, 10)
    assert item["file_name"] == "000030_10.png"
    anns = by_id(t["annotations"])
    truck = anns["training/000030_10/1"]  # Truck 1.0 0 -1 0 1 2 3 -1 ... -1
    assert (truck["kind"], truck["label"], truck["units"]) == ("bbox", "Truck", "px")
    assert (truck["bbox_x"], truck["bbox_y"], truck["bbox_w"], truck["bbox_h"]) == (0, 1, 2, 2)
    assert (truck["occluded"], truck["confidence"]) == (False, None)
    assert attrs(t, truck["ann_id"]) == {
        "truncated": 1.0, "occlusion": 0, "alpha": -1.0, "dimensions": [-1.0, -1.0, -1.0],
        "location": [-1.0, -1.0, -1.0], "rotation_y": -1.0,
    }  # fmt: skip
    van = anns["training/000030_11/3"]  # Van 0.0 1 -1 6 6 7 9
    assert (van["bbox_x"], van["bbox_y"], van["bbox_w"], van["bbox_h"], van["occluded"]) == (
        6, 6, 1, 3, True,
    )  # fmt: skip


def test_peer_instance_masks(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "kitti" / "kitti_segmentation", tmp_path / "a")
    anns = by_id(t["annotations"])
    # 000030_11: 7937 7937 3073 768 768 → train#1, wall#1, outofroi (class level)
    train = anns["training/000030_11/instance/7937"]
    assert (train["label"], train["label_id"], train["track_id"], train["iscrowd"]) == (
        "train", "31", "1", False,
    )  # fmt: skip
    assert pixels(train) == [[1, 1, 0, 0, 0]]
    region = anns["training/000030_11/instance/768"]
    assert (region["label"], region["iscrowd"], region["track_id"]) == ("outofroi", True, None)
    assert pixels(region) == [[0, 0, 0, 1, 1]]


def _labels(root: Path, text: str) -> Path:
    path = root / "train" / "label_2" / "a.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return root


def test_scores_and_bad_lines(tmp_path: Path) -> None:
    src = _labels(
        tmp_path / "k",
        "Car 0.5 2 1.5 10 20 30 40 1.5 1.6 3.9 1 2 30 0.1 0.87\n"
        "Car 0 0 0 1 2 3\n"
        "Car 0 0 x 1 2 3 4 1 1 1 1 1 1 1\n"
        "Car 0 0 0 5 2 3 4 1 1 1 1 1 1 1\n",
    )
    t = read(src, tmp_path / "a")
    [car] = t["annotations"]
    assert (car["bbox_x"], car["bbox_y"], car["bbox_w"], car["bbox_h"]) == (10, 20, 20, 20)
    assert (car["confidence"], car["occluded"]) == (0.87, True)
    a = attrs(t, car["ann_id"])
    assert (a["occlusion"], a["dimensions"], a["location"], a["rotation_y"]) == (
        2, [1.5, 1.6, 3.9], [1.0, 2.0, 30.0], 0.1,
    )  # fmt: skip
    assert {r["location"]: r["reason"] for r in t["rejects"]} == {
        "train/label_2/a.txt line 2": "expected 15 or 16 fields, got 7",
        "train/label_2/a.txt line 3": "fields after the type must be numbers",
        "train/label_2/a.txt line 4": "x2 < x1 or y2 < y1",
    }
    report = convert([str(src)], "parquet", str(tmp_path / "o"), workers=1, on_error="fail")
    assert "train/label_2/a.txt line 2: expected 15 or 16 fields" in report.failures[0]


def test_undecodable_label_file_is_a_parse_error(tmp_path: Path) -> None:
    src = _labels(tmp_path / "k", "Car 0 0 0 1 2 3 4 1 1 1 1 1 1 1\n")
    (src / "train" / "label_2" / "a.txt").write_bytes(b"Car 0 0 0 1 2 3 4 1 1 1 1 1 1 1\n\xff\n")
    report = convert([str(src)], "parquet", str(tmp_path / "o"), workers=1)
    assert "label_2/a.txt: line 2: not UTF-8 text" in report.failures[0]


def test_writer_lines_and_instance_png(peer: Path, tmp_path: Path) -> None:
    read(peer / "kitti" / "kitti_detection", tmp_path / "d")
    write(tmp_path / "d", "kitti", tmp_path / "out")
    lines = (tmp_path / "out" / "training" / "label_2" / "000030_10.txt").read_text()
    assert lines.splitlines() == [
        "Truck 1 0 -1 0 1 2 3 -1 -1 -1 -1 -1 -1 -1",
        "Van 0 0 -1 0 5 1 8 -1 -1 -1 -1 -1 -1 -1",
    ]
    assert (tmp_path / "out" / "labels.txt").read_text() == "Truck\nVan\n"
    src = peer / "kitti" / "kitti_segmentation"
    read(src, tmp_path / "s")
    report = write(tmp_path / "s", "kitti", tmp_path / "out2")
    assert report.lossy == {}
    rel = "training/instance/000030_11.png"
    assert png(tmp_path / "out2" / rel).tolist() == png(src / rel).tolist()
    assert png(tmp_path / "out2" / "training/semantic/000030_11.png").tolist() == [
        [31, 31, 12, 3, 3]
    ]


def test_polygons_go_to_the_masks_boxes_to_label_2(tmp_path: Path) -> None:
    root = tmp_path / "k"
    _labels(root, "Car 0 0 0 0 0 2 2 1 1 1 1 1 1 1\n")
    save(root / "train" / "instance" / "a.png", np.array([[0, 256 * 26 + 1, 0]], np.uint16))
    t = read(root, tmp_path / "a")
    assert sorted(a["kind"] for a in t["annotations"]) == ["bbox", "mask"]
    write(tmp_path / "a", "kitti", tmp_path / "out")
    assert png(tmp_path / "out" / "train" / "instance" / "a.png").tolist() == [[0, 6657, 0]]
    assert (tmp_path / "out" / "train" / "label_2" / "a.txt").read_text().startswith("Car 0 0 ")


def test_detection_does_not_take_other_instance_folders(peer: Path, tmp_path: Path) -> None:
    found = formats.detect(Source(str(peer / "mots" / "mots_dataset")))
    assert found[0][0] == "mots"
    assert formats.detect(Source(str(peer / "kitti" / "kitti_segmentation")))[0][0] == "kitti"
