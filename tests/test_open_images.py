"""Open Images: boxes in pixels from images.meta or image headers, tags with confidence,
masks scaled and linked to their box, the label tree, rejects, sharding, the writer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipelines import formats
from pipelines.formats import _open_images_write
from pipelines.formats.base import ReadOptions, WriteOptions
from pipelines.runner import convert
from pipelines.staging import Staging
from pipelines.storage import Output, Source
from tests.conftest import ROOT
from tests.mask_formats import attrs, pixels, png, write
from tests.rows import by_id, read


def test_boxes_in_pixels_from_meta_or_header(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "open_images" / "v6", tmp_path / "a")
    items = by_id(t["items"], "item_id")
    assert (items["train/b"]["width"], items["train/b"]["height"]) == (8, 2)  # images.meta
    assert (items["test/c"]["width"], items["test/c"]["height"]) == (5, 10)  # c.jpg's header
    anns = by_id(t["annotations"])
    b = anns["train/b/bbox/1"]  # XMin 0.2 XMax 1 YMin 0.3 YMax 0.5 of 8 × 2
    assert (b["units"], b["label"], b["confidence"]) == ("px", "/m/0", 1.0)
    assert [round(b[k], 6) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")] == [
        1.6,
        0.6,
        6.4,
        0.4,
    ]
    c = anns["test/c/bbox/1"]  # 0.7 0.8 0 0.5, occluded, group of, confidence 0.7
    assert [round(c[k], 6) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")] == [3.5, 0, 0.5, 5]
    assert (c["occluded"], c["confidence"]) == (True, 0.7)
    assert attrs(t, c["ann_id"]) == {
        "source": "xclick", "truncated": False, "is_group_of": True, "is_depiction": False,
        "is_inside": False,
    }  # fmt: skip
    assert attrs(t, b["ann_id"]) == {"source": "xclick"}  # -1 flags are unknown: no attribute
    assert (
        items["train/a"]["metadata"] == '{"Author":"Intel","Title":"Test Image A","Rotation":"0"}'
    )


def test_tags_masks_and_label_tree(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "open_images" / "v6", tmp_path / "a")
    anns = by_id(t["annotations"])
    assert (anns["train/b/label/1"]["kind"], anns["train/b/label/1"]["confidence"]) == ("tag", 0)
    mask = anns["train/b/mask/1"]
    assert pixels(mask) == [[1, 1, 0, 0, 0, 0, 0, 0]] * 2
    assert mask["group_id"] == anns["train/b/bbox/1"]["group_id"] == "train/b/bbox/1"
    assert attrs(t, mask["ann_id"]) == {
        "mask_path": "b_m0_01234567.png", "box_id": "01234567", "predicted_iou": 0.5,
    }  # fmt: skip
    parents = {a["owner_id"]: a["value"] for a in t["attributes"] if a["key"] == "parent"}
    assert parents == {"label:/m/0": "/m/x", "label:/m/1": "/m/0"}
    names = {a["owner_id"]: a["value"] for a in t["attributes"] if a["key"] == "display_name"}
    assert names["label:/m/3"] == "Generic label #3" and len(names) == 4


def test_v5_files_without_headers_or_annotations(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "open_images" / "v5", tmp_path / "a")
    assert {i["item_id"]: i["subset"] for i in t["items"]} == {
        "train/aa": "train",
        "test/cc": "test",
    }
    assert not t["annotations"]


def _copy(peer: Path, tmp_path: Path) -> Path:
    root = tmp_path / "oi"
    shutil.copytree(peer / "open_images" / "v6", root)
    return root


def test_unsized_image_and_bad_rows_are_rejected(peer: Path, tmp_path: Path) -> None:
    root = _copy(peer, tmp_path)
    (root / "images" / "test" / "c.jpg").unlink()  # c is not in images.meta either
    bbox = root / "annotations" / "oidv6-train-annotations-bbox.csv"
    bbox.write_text(bbox.read_text() + "a,xclick,/m/0,1,0.5,0.1,0,1,0,0,0,0,0\n")
    masks = root / "annotations" / "train-annotations-object-segmentation.csv"
    masks.write_text(masks.read_text() + "../../x.png,b,/m/0,,,,,,,\n")
    t = read(root, tmp_path / "a")
    rejects = {r["location"]: r["reason"] for r in t["rejects"]}
    assert rejects == {
        "annotations/test-annotations-bbox.csv line 2": (
            "image test/c has no size (not in images.meta, image missing or unreadable, "
            "and no image_sizes entry)"
        ),
        "annotations/oidv6-train-annotations-bbox.csv line 3": (
            "no LabelName, or XMin/XMax/YMin/YMax not numbers with min <= max"
        ),
        "annotations/train-annotations-object-segmentation.csv line 3": (
            "mask masks/train/../../x.png: not a file name"
        ),
    }
    sized = read(root, tmp_path / "b", image_sizes={"c": (10, 20)})
    c = by_id(sized["annotations"])["test/c/bbox/1"]
    assert (round(c["bbox_x"], 6), c["bbox_h"]) == (7, 10)


def test_csv_without_image_ids_is_a_parse_error(peer: Path, tmp_path: Path) -> None:
    root = _copy(peer, tmp_path)
    (root / "annotations" / "test-annotations-bbox.csv").write_text("Image,Label\nc,/m/3\n")
    report = convert([str(root)], "parquet", str(tmp_path / "o"), workers=1)
    assert (
        "test-annotations-bbox.csv: line 1: no ImageID column in the header" in report.failures[0]
    )


def _task_rows(src: Path, workers: int) -> tuple[int, list[tuple]]:
    fmt = formats.get("open_images")
    tasks = fmt.plan_read(Source(str(src)), ReadOptions(dataset="d", workers=workers))
    rows = []
    for task in tasks:
        for batch in fmt.read(task):
            rows += [(a["ann_id"], a["bbox_x"], a["mask"]) for a in batch.annotations.to_pylist()]
            rows += [(i["item_id"], i["width"]) for i in batch.items.to_pylist()]
    return len(tasks), sorted(rows, key=repr)


def test_shards_read_the_same_rows(peer: Path) -> None:
    src = peer / "open_images" / "v6"
    one, two = _task_rows(src, 1), _task_rows(src, 2)
    assert (one[0], two[0]) == (1, 2)
    assert one[1] == two[1] and len(one[1]) == 11


def test_writer_csvs_and_masks(peer: Path, tmp_path: Path) -> None:
    read(peer / "open_images" / "v6", tmp_path / "a")
    report = write(tmp_path / "a", "open_images", tmp_path / "out")
    assert report.lossy == {}
    ann = tmp_path / "out" / "annotations"
    assert (ann / "train-annotations-bbox.csv").read_text().splitlines()[1] == (
        "b,xclick,/m/0,1,0.2,1,0.3,0.5,-1,-1,-1,-1,-1"
    )
    assert (ann / "test-annotations-bbox.csv").read_text().splitlines()[1] == (
        "c,xclick,/m/3,0.7,0.7,0.8,0,0.5,1,0,1,0,0"
    )
    assert (ann / "train-annotations-object-segmentation.csv").read_text().splitlines()[1] == (
        "b_m0_01234567.png,b,/m/0,01234567,0.2,1,0.3,0.5,0.5,"
    )
    assert (ann / "images.meta").read_text() == "a 8 6\nb 2 8\nc 10 5\nd 1 5\n"
    assert (ann / "class-descriptions.csv").read_text().startswith("/m/0,Generic label #0\n")
    mask = png(tmp_path / "out" / "masks" / "train" / "b_m0_01234567.png")
    assert mask.astype(int).tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]] * 2


def test_polygons_become_masks_with_a_new_box_id(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "p.jpg", "width": 4, "height": 2}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 2, 2],
                         "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}],
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(coco))
    report = write(tmp_path / "c.json", "open_images", tmp_path / "out")
    assert report.lossy == {"polygons written as masks": 1}
    rows = (tmp_path / "out" / "annotations" / "c-annotations-object-segmentation.csv").read_text()
    assert rows.splitlines()[1] == "p_cat_00000000.png,p,cat,00000000,,,,,,"
    mask = png(tmp_path / "out" / "masks" / "c" / "p_cat_00000000.png")
    assert mask.astype(int).tolist() == [[1, 1, 0, 0]] * 2


def test_a_mask_is_written_as_a_one_bit_png_of_the_whole_image() -> None:
    """`masks.png` builds the PNG from the rows the mask covers: its pixels are those
    of the whole decoded mask, wherever the mask lies, whatever the width; 1-bit, or
    8-bit 0 and 255."""
    import io

    import numpy as np
    from PIL import Image

    from pipelines import masks

    rng = np.random.default_rng(21)
    for height, width in ((1, 1), (7, 13), (64, 9), (120, 333), (40, 16)):
        whole = np.ones((height, width), dtype=bool)
        corner = np.zeros((height, width), dtype=bool)
        corner[-1, -1] = True
        shapes = [np.zeros((height, width), dtype=bool), whole, corner]
        for _ in range(6):
            top, left = rng.integers(0, height), rng.integers(0, width)
            mask = np.zeros((height, width), dtype=bool)
            mask[top:, left:] = rng.random((height - top, width - left)) < 0.4
            shapes.append(mask)
        for mask in shapes:
            img = Image.open(io.BytesIO(masks.png(masks.encode(mask), height, width)))
            assert (img.mode, img.size) == ("1", (width, height))
            assert np.array_equal(np.asarray(img), mask)
            grey = masks.png(masks.encode(mask), height, width, grey=True)  # LabelMe 3.0's
            img = Image.open(io.BytesIO(grey))
            assert (img.mode, img.size) == ("L", (width, height))
            assert np.array_equal(np.asarray(img), mask * np.uint8(255))


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root`, hidden ones included, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _write_inline(staged: Path, out: Path) -> list[int]:
    """The writer's tasks run one after another in this process; their part counts."""
    staging, output = Staging(str(staged)), Output(str(out))
    tasks = _open_images_write.plan_write(staging, WriteOptions(workers=2))
    for task in tasks:
        _open_images_write.write(task, staging, output)
    output.commit()
    return [task.shards for task in tasks]


@pytest.mark.parametrize("source", ["peer", "example"])
def test_a_subset_written_in_parts_is_the_subset_written_whole(
    source: str, peer: Path, tmp_path: Path, monkeypatch
) -> None:
    """Each part writes its masks and its rows of the CSVs; joined, they are the files
    one task writes, and no fragment is left behind."""
    if source == "peer":
        read(peer / "open_images" / "v6", tmp_path / "staged")
    else:
        example = ROOT / "tests/fixtures/example/annotations/instances_demo.json"
        convert([str(example)], "parquet", str(tmp_path / "staged"))
    assert set(_write_inline(tmp_path / "staged", tmp_path / "whole")) == {1}
    monkeypatch.setattr(_open_images_write, "PART_ITEMS", 1)
    parts = _write_inline(tmp_path / "staged", tmp_path / "parts")
    assert max(parts) == (2 if source == "peer" else 8)  # a part an item, or four a worker
    assert _tree(tmp_path / "parts") == _tree(tmp_path / "whole")


def test_items_in_different_parts_never_share_a_mask_name(tmp_path: Path, monkeypatch) -> None:
    """`img 1` and `img_1` would both name their mask `img_1_...`: written by two parts,
    one would replace the other. A name cut from an ImageID carries its digest."""
    square = [[0, 0, 2, 0, 2, 2, 0, 2]]
    coco = {
        "images": [{"id": i, "file_name": name, "width": 4, "height": 2}
                   for i, name in ((1, "img 1.jpg"), (2, "img_1.jpg"))],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 2, 2],
                         "segmentation": square} for i in (1, 2)],
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(coco))
    convert([str(tmp_path / "c.json")], "parquet", str(tmp_path / "staged"))
    monkeypatch.setattr(_open_images_write, "PART_ITEMS", 1)
    assert max(_write_inline(tmp_path / "staged", tmp_path / "out")) == 2
    rows = tmp_path / "out" / "annotations" / "c-annotations-object-segmentation.csv"
    names = [line.split(",")[0] for line in rows.read_text().splitlines()[1:]]
    assert names[1] == "img_1_cat_00000000.png" and names[0].startswith("img_1_")
    assert sorted(p.name for p in (tmp_path / "out" / "masks" / "c").iterdir()) == sorted(names)
