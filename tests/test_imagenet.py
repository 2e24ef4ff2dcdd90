"""ImageNet: label folders (the peer sample: nested folder, image at the root), subset
folders, the synsets.txt lists with their rejects, and both writer layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import formats
from pipelines.errors import LabelflowError
from pipelines.formats import imagenet
from pipelines.runner import convert
from pipelines.storage import Source
from tests._image_sets import image, write
from tests.conftest import FIXTURES
from tests.rows import by_id, read

LISTS = FIXTURES / "imagenet" / "lists"


def test_peer_label_folders(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "imagenet" / "imagenet_dataset", tmp_path / "o")
    items = by_id(t["items"], "item_id")
    assert sorted(items) == [
        "label_0/label_0_1.jpg",
        "label_0_2.jpg",
        "label_1/label_1_1.jpg",
        "label_1/label_1_1/label_1_1.jpg",
    ]
    # A folder below a label folder is part of the name, as torchvision reads it.
    nested = items["label_1/label_1_1/label_1_1.jpg"]
    assert nested["file_name"] == "label_1_1/label_1_1.jpg"
    assert (nested["width"], nested["height"], nested["subset"]) == (8, 8, None)
    assert items["label_0_2.jpg"]["width"] == 10
    tags = {a["item_id"]: (a["kind"], a["label"], a["label_id"]) for a in t["annotations"]}
    assert tags == {
        "label_0/label_0_1.jpg": ("tag", "label_0", "0"),
        "label_1/label_1_1.jpg": ("tag", "label_1", "1"),
        "label_1/label_1_1/label_1_1.jpg": ("tag", "label_1", "1"),
    }  # the root image has no label


def test_subset_folders_and_no_label(tmp_path: Path) -> None:
    src = tmp_path / "src"
    image(src / "train" / "cat" / "1.jpg")
    image(src / "train" / "no_label" / "2.jpg")
    image(src / "val" / "dog" / "3.jpg", (7, 5))
    assert formats.detect(Source(str(src)))[0][0] == "imagenet"
    t = read(src, tmp_path / "o")
    items = by_id(t["items"], "item_id")
    assert {k: (v["subset"], v["file_name"]) for k, v in items.items()} == {
        "train/cat/1.jpg": ("train", "1.jpg"),
        "train/no_label/2.jpg": ("train", "2.jpg"),
        "val/dog/3.jpg": ("val", "3.jpg"),
    }
    assert items["val/dog/3.jpg"]["width"] == 7
    assert {(a["item_id"], a["label"]) for a in t["annotations"]} == {
        ("train/cat/1.jpg", "cat"),
        ("val/dog/3.jpg", "dog"),
    }


def test_detection_leaves_other_image_layouts_alone(tmp_path: Path) -> None:
    deep = tmp_path / "deep"  # like Cityscapes or KITTI: images three folders down
    image(deep / "training" / "image_2" / "1.png")
    image(deep / "gtFine" / "train" / "city" / "2.png")
    assert imagenet.detect(Source(str(deep))) is None
    mixed = tmp_path / "mixed"  # annotation files beside the images: another format's
    image(mixed / "cat" / "1.jpg")
    (mixed / "cat" / "1.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert imagenet.detect(Source(str(mixed))) is None
    hit = imagenet.detect(Source(str(FIXTURES / "imagenet" / "lists")))
    assert hit is not None and hit.confidence == 0.8


def test_lists_with_synsets_and_their_rejects(tmp_path: Path) -> None:
    t = read(LISTS, tmp_path / "o")
    assert [i["item_id"] for i in t["items"]] == [
        "train/img_1.jpg",
        "train/img_2.jpg",
        "train/my photo.jpg",
        "train/img_3.jpg",
    ]
    assert {i["subset"] for i in t["items"]} == {"train"}
    tags = [(a["ann_id"], a["label"], a["label_id"]) for a in t["annotations"]]
    assert tags == [
        ("train/img_1.jpg/tag", "cat", "0"),
        ("train/img_2.jpg/tag", "dog", "1"),
        ("train/img_2.jpg/tag/1", "bird", "2"),
        ("train/my photo.jpg/tag", "dog", "1"),
    ]
    rejects = {r["location"]: r["reason"] for r in t["rejects"]}
    assert rejects == {
        "train.txt, line 6": "label number 'x' is not a whole number from 0",
        "train.txt, line 7": "label number 7 is not in synsets.txt (3 labels)",
        "train.txt, line 8": "no image name (unbalanced quotes?)",
    }
    assert {r["record_kind"] for r in t["rejects"]} == {"items"}


def test_undecodable_list_names_its_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "synsets.txt").write_text("cat\n")
    (src / "train.txt").write_bytes(b"a.jpg 0\nb\xff.jpg 0\n")
    report = convert([str(src)], "parquet", str(tmp_path / "o"), workers=1)
    assert not report.ok
    assert report.failures[0].endswith("train.txt: line 2: not UTF-8 text")


def test_writes_label_folders_and_reads_them_back(peer: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = write(peer / "imagenet" / "imagenet_dataset", "imagenet", out)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "label_0/label_0_1.jpg",
        "label_1/label_1_1.jpg",
        "label_1/label_1_1/label_1_1.jpg",
        "no_label/label_0_2.jpg",  # unlabelled images go where CVAT and datumaro put them
    ]
    assert report.counts["items"]["written"] == 4
    assert report.counts["annotations"]["written"] == 3
    assert report.lossy == {}
    again = read(out, tmp_path / "again")
    assert {(a["item_id"], a["label"]) for a in again["annotations"]} == {
        ("label_0/label_0_1.jpg", "label_0"),
        ("label_1/label_1_1.jpg", "label_1"),
        ("label_1/label_1_1/label_1_1.jpg", "label_1"),
    }


def test_several_subsets_get_a_folder_each(tmp_path: Path) -> None:
    src = tmp_path / "src"
    image(src / "train" / "cat" / "1.jpg")
    image(src / "val" / "cat" / "1.jpg")
    out = tmp_path / "out"
    write(src, "imagenet", out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg")) == [
        "train/cat/1.jpg",
        "val/cat/1.jpg",
    ]


def test_writes_lists_without_images(peer: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(peer / "imagenet" / "imagenet_dataset", "imagenet", out, save_images="false")
    assert sorted(p.name for p in out.iterdir()) == ["default.txt", "synsets.txt"]
    assert (out / "synsets.txt").read_text() == "label_0\nlabel_1\n"
    assert (out / "default.txt").read_text() == (
        "label_0_1.jpg 0\nlabel_0_2.jpg\nlabel_1_1.jpg 1\nlabel_1_1/label_1_1.jpg 1\n"
    )


def test_list_round_trip_keeps_quoted_names_and_several_labels(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = write(LISTS, "imagenet", out, layout="txt", save_images="no")
    assert report.counts["annotations"]["written"] == 4
    assert (out / "train.txt").read_text() == (
        'img_1.jpg 0\nimg_2.jpg 1 2\n"my photo".jpg 1\nimg_3.jpg\n'
    )
    assert (out / "synsets.txt").read_text() == "cat\ndog\nbird\n"


def test_lossiness_and_bad_options(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = write(FIXTURES / "widerface" / "with_labels", "imagenet", out, save_images="0")
    assert report.lossy["bbox annotations not written: ImageNet has no place for them"] == 3
    # Without its image, an item has nothing to be in a label folder.
    report = write(FIXTURES / "widerface" / "with_labels", "imagenet", tmp_path / "folders")
    assert report.lossy["items not written: ImageNet folders hold the images themselves"] == 3
    assert report.lossy["annotations of items not written"] == 5
    with pytest.raises(LabelflowError, match="save_images must be true or false"):
        write(LISTS, "imagenet", tmp_path / "x", save_images="maybe")
    with pytest.raises(LabelflowError, match="layout must be one of"):
        write(LISTS, "imagenet", tmp_path / "y", layout="csv")


def test_lists_without_synsets_name_labels_by_number(tmp_path: Path) -> None:
    src = tmp_path / "src"
    image(src / "images" / "1.jpg", (6, 8))
    (src / "train.txt").write_text("1 0\n2 5")  # names without extension, no final newline
    hit = imagenet.detect(Source(str(src)))
    assert hit is not None and hit.confidence == 0.4
    t = read(src, tmp_path / "o")
    items = by_id(t["items"], "item_id")
    assert (items["train/1"]["file_name"], items["train/1"]["width"]) == ("1.jpg", 6)
    assert (items["train/2"]["file_name"], items["train/2"]["media_uri"]) == ("2", None)
    assert [(a["item_id"], a["label"], a["label_id"]) for a in t["annotations"]] == [
        ("train/1", "class-0", "0"),
        ("train/2", "class-5", "5"),
    ]
