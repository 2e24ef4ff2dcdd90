"""CamVid: class masks decoded pixel by pixel with the default colour map, custom label
tables, rejects for unknown colours and bad list lines, and the writer's PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.formats.camvid import label_table, parse_line
from pipelines.runner import convert
from tests.mask_formats import pixels, png, save, write
from tests.rows import by_id, read


def test_peer_masks_decode_to_the_default_camvid_classes(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "camvid" / "camvid_dataset", tmp_path / "a")
    items = by_id(t["items"], "item_id")
    assert sorted(items) == [
        "test/0001TP_008550", "test/0001TP_008580", "train/0001TP_006690", "val/0016E5_07959"
    ]  # fmt: skip
    item = items["test/0001TP_008580"]
    assert (item["width"], item["height"], item["subset"]) == (5, 1, "test")
    assert item["file_name"] == "0001TP_008580.png"
    assert item["media_uri"].endswith("camvid_dataset/test/0001TP_008580.png")
    anns = {a["label"]: a for a in t["annotations"] if a["item_id"] == "test/0001TP_008580"}
    # pixels (192,0,128) (192,0,128) (0,128,64) (128,128,0) (128,128,0)
    assert {k: (a["label_id"], pixels(a)) for k, a in anns.items()} == {
        "Archway": ("2", [[1, 1, 0, 0, 0]]),
        "Bridge": ("4", [[0, 0, 1, 0, 0]]),
        "Tree": ("27", [[0, 0, 0, 1, 1]]),
    }
    tree = anns["Tree"]
    assert (tree["bbox_x"], tree["bbox_w"], tree["area"], tree["units"]) == (3, 2, 2, "px")
    assert not t["rejects"]


def test_label_colors_with_names_only_get_a_background_and_voc_colours() -> None:
    assert label_table([("cat", None), ("dog", None)]) == [
        ("background", (0, 0, 0)),
        ("cat", (128, 0, 0)),
        ("dog", (0, 128, 0)),
    ]
    # the black label moves to index 0, whatever its name
    assert label_table([("sky", (1, 2, 3)), ("Void", (0, 0, 0))])[0] == ("Void", (0, 0, 0))


def test_quoted_paths_and_bad_lines() -> None:
    assert parse_line('"/train/a b.png" "/trainannot/a b.png"') == (
        "train/a b.png",
        "trainannot/a b.png",
    )
    assert parse_line("/train/a.png") == ("train/a.png", None)
    assert parse_line("   ") is None
    with pytest.raises(ValueError, match="double quotes"):
        parse_line('"/train/a.png /trainannot/a.png')
    with pytest.raises(ValueError, match="3 fields"):
        parse_line("/a.png /b.png /c.png")


def _dataset(root: Path, colors: str | None = None) -> Path:
    mask = np.zeros((2, 3, 3), np.uint8)
    mask[0, 1] = (10, 20, 30)  # "road" in the custom table
    mask[1, 2] = (9, 9, 9)  # a colour no label has
    save(root / "trainannot" / "a.png", mask)
    save(root / "train" / "a.png", np.zeros((2, 3, 3), np.uint8))
    grey = np.array([[0, 2, 2]], np.uint8)  # one channel: class indices
    save(root / "trainannot" / "b.png", grey)
    (root / "train.txt").write_text(
        "/train/a.png /trainannot/a.png\n/train/b.png /trainannot/b.png\n"
        '"/train/c.png /trainannot/c.png\n'
    )
    if colors is not None:
        (root / "label_colors.txt").write_text(colors)
    return root


def test_custom_table_unknown_colours_and_bad_lines_are_rejected(tmp_path: Path) -> None:
    src = _dataset(tmp_path / "cv", "0 0 0 background\n10 20 30 road\n40 50 60 car\n")
    t = read(src, tmp_path / "a")
    anns = by_id(t["annotations"])
    assert (anns["train/a/1"]["label"], pixels(anns["train/a/1"])) == (
        "road",
        [[0, 1, 0], [0, 0, 0]],
    )
    assert (anns["train/b/2"]["label"], pixels(anns["train/b/2"])) == ("car", [[0, 1, 1]])
    rejects = {r["location"]: r["reason"] for r in t["rejects"]}
    assert rejects == {
        "trainannot/a.png colour (9, 9, 9)": (
            "1 pixel(s) of colour (9, 9, 9) not in the label table"
        ),
        "train.txt line 3": "expected two paths, each in double quotes if quoted",
    }
    colors = {a["owner_id"]: a["value"] for a in t["attributes"] if a["key"] == "color"}
    assert colors["label:road"] == "[10,20,30]"


def test_fail_policy_and_undecodable_list_name_file_and_line(tmp_path: Path) -> None:
    src = _dataset(tmp_path / "cv", "0 0 0 background\n10 20 30 road\n40 50 60 car\n")
    report = convert([str(src)], "parquet", str(tmp_path / "o"), workers=1, on_error="fail")
    assert not report.ok and "trainannot/a.png colour (9, 9, 9)" in report.failures[0]
    (src / "label_colors.txt").write_bytes(b"0 0 0 background\n1 2 3 \xff\n")
    report = convert([str(src)], "parquet", str(tmp_path / "p"), workers=1)
    assert not report.ok
    assert "label_colors.txt: line 2: not UTF-8 text" in report.failures[0]


def test_writer_repaints_the_peer_masks_exactly(peer: Path, tmp_path: Path) -> None:
    src = peer / "camvid" / "camvid_dataset"
    read(src, tmp_path / "a")
    report = write(tmp_path / "a", "camvid", tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "test.txt").read_text() == (
        "/test/0001TP_008550.png /testannot/0001TP_008550.png\n"
        "/test/0001TP_008580.png /testannot/0001TP_008580.png\n"
    )
    for name in ("testannot/0001TP_008580.png", "trainannot/0001TP_006690.png"):
        assert np.array_equal(png(out / name), png(src / name)), name
    assert (out / "label_colors.txt").read_text().splitlines()[:2] == [
        "0 0 0 Void",
        "64 128 64 Animal",
    ]
    assert report.lossy == {}


def test_polygons_and_boxes_from_coco_are_painted_and_counted(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "x.jpg", "width": 4, "height": 3}],
        "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "tree"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [2, 0, 2, 3],
             "segmentation": [[2, 0, 4, 0, 4, 3, 2, 3]]},
        ],
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(coco))
    report = write(tmp_path / "c.json", "camvid", tmp_path / "out")
    assert report.lossy == {"boxes written as masks": 1, "polygons written as masks": 1}
    table = (tmp_path / "out" / "label_colors.txt").read_text().splitlines()
    assert table == ["0 0 0 Void", "128 0 0 car", "0 128 0 tree"]
    mask = png(tmp_path / "out" / "cannot" / "x.png")
    assert mask[:, :, 0].tolist() == [[128, 128, 0, 0], [128, 128, 0, 0], [0, 0, 0, 0]]
    assert mask[:, :, 1].tolist() == [[0, 0, 128, 128]] * 3
    # the COCO reader takes the subset from the file name: c
    assert (tmp_path / "out" / "c.txt").read_text() == "/c/x.jpg /cannot/x.png\n"


def test_save_images_copies_them_beside_the_masks(peer: Path, tmp_path: Path) -> None:
    from pipelines.formats.base import WriteOptions

    src = peer / "camvid" / "camvid_dataset"
    options = WriteOptions(extra={"save_images": "true"})
    write(src, "camvid", tmp_path / "out", write_options=options)
    copied = tmp_path / "out" / "val" / "0016E5_07959.png"
    assert copied.read_bytes() == (src / "val" / "0016E5_07959.png").read_bytes()
