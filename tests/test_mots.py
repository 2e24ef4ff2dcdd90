"""MOTS PNG: masks decoded back to pixels, class/instance split, KITTI defaults, the
writer's 16-bit PNGs, and rejects for PNGs that are not instance masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import masks
from pipelines.formats import mots
from pipelines.formats.base import WriteResult
from pipelines.runner import convert
from tests.conftest import FIXTURES
from tests.rows import read

KITTI = FIXTURES / "mot" / "mots_kitti"


def _pixels(ann: dict) -> list[list[int]]:
    return masks.decode(ann["mask"], ann["mask_h"], ann["mask_w"]).tolist()


def test_peer_masks_decode_to_their_pixels(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "mots" / "mots_dataset", tmp_path / "a")
    items = {i["item_id"]: i for i in t["items"]}
    assert sorted(items) == ["train/1", "train/2", "val/3"]
    # the PNG is 5 wide and 1 high; the JPEG beside it claims 1x5 and is not used
    assert (items["train/1"]["width"], items["train/1"]["height"]) == (5, 1)
    assert items["train/1"]["file_name"] == "1.jpg"
    anns = {a["ann_id"]: a for a in t["annotations"]}
    a = anns["train/1/4003"]  # class 4 (labels.txt line 4: "d"), instance 3
    assert (a["label"], a["label_id"], a["track_id"]) == ("d", "4", "3")
    assert _pixels(a) == [[1, 1, 0, 0, 0]]
    assert (a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"], a["area"]) == (0, 0, 2, 1, 2)
    assert _pixels(anns["train/1/3002"]) == [[0, 0, 1, 0, 0]]
    assert anns["train/1/3002"]["label"] == "c"
    assert (anns["val/3/1001"]["label"], anns["val/3/1001"]["track_id"]) == ("a", "1")
    assert anns["train/2/4002"]["frame_index"] == 2


def test_kitti_layout_without_labels_file(tmp_path: Path) -> None:
    t = read(KITTI, tmp_path / "a")
    items = {i["item_id"]: i for i in t["items"]}
    assert sorted(items) == ["0001/000000", "0001/000001"]
    assert {(i["sequence_id"], i["frame_index"]) for i in items.values()} == {
        ("0001", 0),
        ("0001", 1),
    }
    anns = {a["ann_id"]: a for a in t["annotations"]}
    assert anns["0001/000000/1001"]["label"] == "car"
    assert anns["0001/000000/2001"]["label"] == "pedestrian"
    ignore = anns["0001/000000/10000"]
    assert (ignore["label"], ignore["z_order"], ignore["track_id"]) == ("ignored", 1, "0")
    assert _pixels(ignore)[3] == [1] * 6
    assert _pixels(anns["0001/000001/2002"]) == [
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ]


def test_writer_reproduces_the_pixels(peer: Path, tmp_path: Path) -> None:
    src = peer / "mots" / "mots_dataset"
    read(src, tmp_path / "a")
    report = convert([str(tmp_path / "a")], "mots", str(tmp_path / "out"), workers=1)
    assert report.ok, report.failures
    assert report.lossy == {}
    for rel in ("train/instances/1.png", "train/instances/2.png", "val/instances/3.png"):
        written = Image.open(tmp_path / "out" / rel)
        assert written.mode == "I;16"
        original = np.array(Image.open(src / rel))
        assert np.array_equal(np.array(written), original), rel
    # class ids come from the labels' ids; the unused "b" gets a placeholder line
    labels = (tmp_path / "out" / "train" / "instances" / "labels.txt").read_text()
    assert labels == "a\nclass_2\nc\nd\n"


def test_roundtrip_by_frame(peer: Path, tmp_path: Path) -> None:
    first = read(peer / "mots" / "mots_dataset", tmp_path / "a")
    convert([str(tmp_path / "a")], "mots", str(tmp_path / "out"), workers=1)
    second = read(tmp_path / "out", tmp_path / "b")

    def key(t: dict) -> set:
        return {
            (a["item_id"], a["label"], a["track_id"], a["mask"], a["mask_h"], a["mask_w"])
            for a in t["annotations"]
        }

    assert key(second) == key(first)


def test_polygons_and_boxes_are_drawn(tmp_path: Path) -> None:
    src = FIXTURES / "labelme" / "json"
    report = convert([str(src)], "mots", str(tmp_path / "out"), workers=1)
    assert report.ok, report.failures
    assert report.lossy["polygons written as masks"] == 2
    assert report.lossy["boxes written as masks"] == 1
    assert report.lossy["polyline annotations skipped (MOTS holds masks)"] == 2
    labels = (tmp_path / "out" / "train" / "instances" / "labels.txt").read_text().splitlines()
    frame = np.array(Image.open(tmp_path / "out" / "train" / "instances" / "street.png"))
    assert frame.shape == (60, 80)
    car = labels.index("car") + 1
    assert frame[12, 12] // 1000 == car  # inside the car polygon (10..30 x 10..20)
    assert frame[16, 20] // 1000 == labels.index("plate") + 1  # the plate box, drawn later
    puddle = labels.index("puddle") + 1
    assert frame[30, 40] // 1000 == puddle and frame[30, 42] == 0  # the mask's own pattern


def test_pngs_that_are_not_instance_masks_are_rejected(tmp_path: Path) -> None:
    inst = tmp_path / "ds" / "instances"
    inst.mkdir(parents=True)
    (inst / "labels.txt").write_text("car\n")
    Image.new("RGB", (3, 2)).save(inst / "rgb.png")
    Image.fromarray(np.array([[1001, 5001]], dtype=np.uint16)).save(inst / "f.png")
    t = read(tmp_path / "ds", tmp_path / "a")
    rejects = {r["location"]: (r["reason"], r["record_kind"]) for r in t["rejects"]}
    assert rejects == {
        "instances/rgb.png": ("a RGB image, not a single-channel instance mask", "items"),
        "instances/f.png, pixel value 5001": (
            "class id 5 is not in labels.txt (1 labels)",
            "annotations",
        ),
    }
    assert [a["label"] for a in t["annotations"]] == ["car"]


@pytest.mark.parametrize(
    ("x", "y", "w", "h"),
    [(1, 1, 3, 2), (-2, -1, 4, 3), (4, 3, 9, 9), (6, 5, 2, 2), (-5, -5, 2, 2), (0, 0, 6, 5)],
)
def test_a_box_covers_its_rounded_corners_cut_to_the_frame(x, y, w, h) -> None:
    frame = np.zeros((5, 6), dtype=np.uint16)
    ann = {"kind": "bbox", "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h}
    shape = mots._shape(ann, [], 5, 6, WriteResult())
    shape.on(frame)[shape.mask] = 1
    expected = np.zeros((5, 6), dtype=np.uint16)
    expected[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)] = 1
    assert np.array_equal(frame, expected)
