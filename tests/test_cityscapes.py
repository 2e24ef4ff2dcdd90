"""Cityscapes: 8- and 16-bit instance PNGs split into class and instance, train-id and
colour masks, rejects, and the writer's three PNGs per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines import formats
from pipelines.runner import convert
from pipelines.storage import Source
from tests.mask_formats import pixels, png, save, write
from tests.rows import by_id, read

CITY = "defaultcity"


def test_16_bit_instances_split_into_class_and_instance(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "cityscapes" / "train_dataset", tmp_path / "a")
    item_id = f"test/{CITY}/{CITY}_000001_000031"
    item = by_id(t["items"], "item_id")[item_id]
    assert (item["subset"], item["native_id"]) == ("test", f"{CITY}/{CITY}_000001_000031")
    assert item["file_name"] == f"{CITY}/{CITY}_000001_000031_leftImg8bit.png"
    assert (item["width"], item["height"]) == (5, 1)
    anns = by_id(t["annotations"])
    # pixels: 3, 3, 27001, 27002, 27002
    region = anns[f"{item_id}/3"]
    assert (region["label"], region["label_id"], region["iscrowd"], region["track_id"]) == (
        "outofroi", "3", True, None,
    )  # fmt: skip
    assert pixels(region) == [[1, 1, 0, 0, 0]]
    first, second = anns[f"{item_id}/27001"], anns[f"{item_id}/27002"]
    assert (first["label"], first["iscrowd"], first["track_id"]) == ("truck", False, "1")
    assert (pixels(first), pixels(second)) == ([[0, 0, 1, 0, 0]], [[0, 0, 0, 1, 1]])
    ego = anns[f"val/{CITY}/{CITY}_000001_000019/1024"]  # class 1, instance 24
    assert (ego["label"], ego["track_id"], pixels(ego)) == ("egovehicle", "24", [[0, 1, 1, 0, 0]])


def test_8_bit_masks_hold_class_regions(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "cityscapes" / "dataset", tmp_path / "a")
    anns = [a for a in t["annotations"] if a["item_id"].endswith("000032")]
    assert {a["label"]: pixels(a) for a in anns} == {
        "wall": [[0, 0, 1, 0, 0]],
        "outofroi": [[0, 0, 0, 1, 1]],
        "train": [[1, 1, 0, 0, 0]],
    }
    assert all(a["iscrowd"] for a in t["annotations"])


def _gt(root: Path, name: str, arr: np.ndarray) -> None:
    save(root / "gtFine" / "train" / "city" / f"x_gtFine_{name}.png", arr)


def test_train_ids_colour_masks_and_rejects(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    _gt(root, "labelTrainIds", np.array([[13, 19, 255, 40]], np.uint8))  # car, bg, void, ?
    t = read(root, tmp_path / "a")
    [car] = t["annotations"]
    assert (car["label"], car["label_id"], car["iscrowd"], pixels(car)) == (
        "car", "13", None, [[1, 0, 0, 0]],
    )  # fmt: skip
    assert {r["location"]: r["reason"] for r in t["rejects"]} == {
        "gtFine/train/city/x_gtFine_labelTrainIds.png value 40": (
            "class id 40 is not in the label table (20 labels)"
        )
    }
    color = np.zeros((1, 3, 3), np.uint8)
    color[0, 1] = (0, 0, 142)  # car
    color[0, 2] = (1, 1, 1)
    root2 = tmp_path / "cs2"
    _gt(root2, "color", color)
    (root2 / "label_colors.txt").write_text("0 0 0 background\n0 0 142 car\n")
    t = read(root2, tmp_path / "b")
    [car] = t["annotations"]
    assert (car["label"], car["label_id"], pixels(car)) == ("car", "1", [[0, 1, 0]])
    assert [r["reason"] for r in t["rejects"]] == [
        "1 pixel(s) of colour (1, 1, 1) not in the label table"
    ]


def test_unreadable_mask_is_rejected_with_its_file(tmp_path: Path) -> None:
    path = tmp_path / "cs" / "gtFine" / "val" / "c" / "y_gtFine_instanceIds.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a png")
    t = read(tmp_path / "cs", tmp_path / "a")
    [reject] = t["rejects"]
    assert reject["location"] == "gtFine/val/c/y_gtFine_instanceIds.png"
    assert reject["reason"].startswith("not a readable image")
    report = convert(
        [str(tmp_path / "cs")], "parquet", str(tmp_path / "o"), on_error="fail", workers=1
    )
    assert "gtFine/val/c/y_gtFine_instanceIds.png" in report.failures[0]


def test_writer_gives_back_the_instance_ids(peer: Path, tmp_path: Path) -> None:
    src = peer / "cityscapes" / "train_dataset"
    read(src, tmp_path / "a")
    report = write(tmp_path / "a", "cityscapes", tmp_path / "out")
    assert report.lossy == {}
    rel = f"gtFine/test/{CITY}/{CITY}_000001_000031_gtFine_instanceIds.png"
    written = png(tmp_path / "out" / rel)
    assert written.dtype == np.uint16
    assert written.tolist() == png(src / rel).tolist() == [[3, 3, 27001, 27002, 27002]]
    base = tmp_path / "out" / f"gtFine/val/{CITY}/{CITY}_000001_000019_gtFine"
    assert png(Path(f"{base}_labelIds.png")).tolist() == [[3, 1, 1, 3, 3]]
    assert png(Path(f"{base}_color.png"))[0, 0].tolist() == [0, 0, 0]
    table = (tmp_path / "out" / "label_colors.txt").read_text().splitlines()
    assert table[27] == "0 0 70 truck" and len(table) == 32  # ids kept up to train (31)


def test_detection_needs_gtfine_masks(peer: Path, tmp_path: Path) -> None:
    assert formats.detect(Source(str(peer / "cityscapes" / "dataset")))[0][0] == "cityscapes"
    save(tmp_path / "leftImg8bit" / "a" / "b_leftImg8bit.png", np.zeros((2, 2, 3), np.uint8))
    assert not any(n == "cityscapes" for n, _ in formats.detect(Source(str(tmp_path))))
