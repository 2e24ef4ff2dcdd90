"""WIDER Face: the release's column order on the peer sample, images without faces, file
lists, labelled face lines with `-`, rejects with their lines, and the writer."""

from __future__ import annotations

from pathlib import Path

from pipelines.formats import widerface
from pipelines.runner import convert
from pipelines.storage import Source
from tests._image_sets import attrs, write
from tests.conftest import FIXTURES
from tests.rows import by_id, read

RELEASE = FIXTURES / "widerface" / "release"
LABELLED = FIXTURES / "widerface" / "with_labels"
GT = "wider_face_split/wider_face_train_bbx_gt.txt"


def _box(a: dict) -> tuple:
    return a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"]


def test_peer_faces_attributes_and_events(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "wider_face" / "widerface_dataset", tmp_path / "o")
    items = by_id(t["items"], "item_id")
    it = items["val/0--Parade/0_Parade_image_03.jpg"]
    assert (it["subset"], it["file_name"], it["width"], it["height"]) == (
        "val",
        "0--Parade/0_Parade_image_03.jpg",
        15,
        10,
    )
    anns = by_id(t["annotations"], "ann_id")
    tag = anns["train/1--Handshaking/1_Handshaking_image_02.jpg/tag"]
    assert (tag["kind"], tag["label"], tag["label_id"]) == ("tag", "Handshaking", "1")
    # `0 0 1 1 2 0 0 0 2 0`: blur 2, expression 0, illumination 0, invalid 0, occlusion 2, pose 0
    face = anns["val/0--Parade/0_Parade_image_03.jpg/0"]
    assert (face["kind"], face["label"], face["units"]) == ("bbox", "face", "px")
    assert _box(face) == (0.0, 0.0, 1.0, 1.0)
    assert face["occluded"] is True
    assert attrs(t, face["ann_id"]) == {
        "blur": 2,
        "expression": 0,
        "illumination": 0,
        "invalid": 0,
        "occluded": 2,
        "pose": 0,
    }
    # `3 2 1 2 0 0 0 1 0 0`: the invalid flag
    assert attrs(t, "val/0--Parade/0_Parade_image_03.jpg/1")["invalid"] == 1
    # dataset_meta.json's label map, kept as label indexes
    assert attrs(t, "label:Handshaking") == {"index": 1}


def test_release_file_with_empty_images_and_rejects(tmp_path: Path) -> None:
    t = read(RELEASE, tmp_path / "o")
    items = by_id(t["items"], "item_id")
    # An image without faces: count 0 and a line of zeros that is no face.
    empty = "train/0--Parade/0_Parade_Parade_0_904.jpg"
    assert empty in items
    assert [a["kind"] for a in t["annotations"] if a["item_id"] == empty] == ["tag"]
    face = by_id(t["annotations"], "ann_id")[
        "train/1--Handshaking/1_Handshaking_Handshaking_1_35.jpg/0"
    ]
    assert _box(face) == (10.0, 20.0, 30.0, 40.0)
    assert attrs(t, face["ann_id"]) == {
        "blur": 2,
        "expression": 1,
        "illumination": 1,
        "invalid": 0,
        "occluded": 2,
        "pose": 1,
    }
    rejects = {r["location"]: r["reason"] for r in t["rejects"]}
    assert rejects == {
        f"{GT}, line 8": "3 faces announced, 2 found",
        f"{GT}, line 14": "a box value is not a number",
        f"{GT}, line 15": "a face line without an image path and count before it",
    }
    # The test split has a file list only: its images, no faces.
    test_items = sorted(k for k, v in items.items() if v["subset"] == "test")
    assert test_items == [
        "test/0--Parade/0_Parade_marchingband_1_737.jpg",
        "test/0--Parade/0_Parade_marchingband_1_759.jpg",
    ]


def test_labels_dashes_and_images_without_a_count(tmp_path: Path) -> None:
    t = read(LABELLED, tmp_path / "o")
    assert [i["item_id"] for i in t["items"]] == [
        "default/0--label0/image1.jpg",
        "default/no_label/image2.jpg",
        "default/1--label1/image3.jpg",
    ]
    anns = by_id(t["annotations"], "ann_id")
    masked = anns["default/0--label0/image1.jpg/0"]
    assert (masked["label"], masked["occluded"]) == ("mask", True)
    assert attrs(t, masked["ann_id"]) == {"occluded": 1}  # `-` marks the missing ones
    plain = anns["default/0--label0/image1.jpg/1"]
    assert (plain["label"], plain["occluded"]) == ("face", None)
    assert attrs(t, plain["ann_id"]) == {}
    assert anns["default/1--label1/image3.jpg/0"]["label"] == "car"
    assert not [a for a in t["annotations"] if a["item_id"] == "default/no_label/image2.jpg"]
    assert t["rejects"] == []


def test_wrong_number_of_values_and_undecodable_files(tmp_path: Path) -> None:
    split = tmp_path / "src" / "wider_face_split"
    split.mkdir(parents=True)
    (split / "wider_face_val_bbx_gt.txt").write_text("e/a.jpg\n1\n1 2 3 4 5 6\n")
    t = read(tmp_path / "src", tmp_path / "o")
    (reject,) = t["rejects"]
    assert reject["location"] == "wider_face_split/wider_face_val_bbx_gt.txt, line 3"
    assert reject["reason"] == "6 values; a face line has 4 (box), 5 (+ label), 10 or 11"
    (split / "wider_face_val_bbx_gt.txt").write_bytes(b"e/a.jpg\n1\n1 2 3 \xff\n")
    report = convert([str(tmp_path / "src")], "parquet", str(tmp_path / "p"), workers=1)
    assert not report.ok
    assert report.failures[0].endswith("wider_face_val_bbx_gt.txt: line 3: not UTF-8 text")


def test_detects_split_folders_only() -> None:
    assert widerface.detect(Source(str(RELEASE))) is not None
    assert widerface.detect(Source(str(FIXTURES / "imagenet" / "lists"))) is None


def test_writer_gives_the_peer_files_back(peer: Path, tmp_path: Path) -> None:
    src = peer / "wider_face" / "widerface_dataset"
    out = tmp_path / "out"
    report = write(src, "widerface", out)
    for name in ("wider_face_train_bbx_gt.txt", "wider_face_val_bbx_gt.txt"):
        written = (out / "wider_face_split" / name).read_text()
        assert written == (src / "wider_face_split" / name).read_text()
    assert (out / "labels.txt").read_text() == "Parade\nHandshaking\nface\n"
    assert (out / "WIDER_val/images/0--Parade/0_Parade_image_03.jpg").is_file()
    assert report.counts["annotations"]["written"] == 9
    assert report.lossy == {}


def test_writer_keeps_labels_and_missing_attributes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(LABELLED, "widerface", out, save_images="false")
    assert (out / "wider_face_split" / "wider_face_default_bbx_gt.txt").read_text() == (
        "0--label0/image1.jpg\n2\n1 2 3 4 - - - - 1 - mask\n5 6 7 8\n"
        "no_label/image2.jpg\n0\n0 0 0 0 0 0 0 0 0 0\n"
        "1--label1/image3.jpg\n1\n1 1 2 2 car\n"
    )
    assert not (out / "WIDER_default").exists()


def test_other_shapes_become_boxes_and_events_get_numbers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = write(FIXTURES / "lfw" / "malformed", "widerface", out, save_images="false")
    assert report.lossy == {"points annotations written as boxes": 1}
    text = (out / "wider_face_split" / "wider_face_default_bbx_gt.txt").read_text()
    # People become events numbered in order of appearance; the points' extent is the box.
    assert text.startswith("0--Abel_Pacheco/Abel_Pacheco_0001.jpg\n1\n10 20 80 80 Abel_Pacheco\n")
    assert "\n1--Akhmed_Zakayev/Akhmed_Zakayev_0001.jpg\n0\n" in text
    assert "\nno_label/external_image.jpg\n0\n" in text
