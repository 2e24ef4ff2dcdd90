"""VGGFace2: boxes and named landmarks of the peer sample, labels.txt class names, the
pairing of the two CSVs (sorted or not), rejects with their lines, and the writer."""

from __future__ import annotations

from pathlib import Path

from pipelines.formats import vggface2
from pipelines.formats.vggface2 import _lookup, _merge, _Row
from pipelines.runner import convert
from tests._image_sets import attrs, write
from tests.conftest import FIXTURES
from tests.rows import by_id, read

UNSORTED = FIXTURES / "vggface2" / "unsorted"


def test_peer_boxes_landmarks_and_labels(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "vggface2" / "vgg_face2_dataset", tmp_path / "o")
    items = by_id(t["items"], "item_id")
    assert sorted(items) == [
        "test/n000003/0003_01",
        "train/n000001/0001_01",
        "train/n000002/0001_01",
        "train/n000002/0002_01",
    ]
    it = items["train/n000002/0001_01"]
    assert (it["subset"], it["file_name"], it["width"], it["height"]) == (
        "train",
        "n000002/0001_01.jpg",
        15,
        10,
    )
    anns = by_id(t["annotations"], "ann_id")
    box = anns["train/n000002/0001_01/bbox"]
    assert (box["kind"], box["label"], box["units"]) == ("bbox", "n000002", "px")
    assert (box["bbox_x"], box["bbox_y"], box["bbox_w"], box["bbox_h"]) == (2.0, 4.0, 2.0, 2.0)
    marks = anns["train/n000001/0001_01/landmarks"]
    assert (marks["kind"], marks["label"]) == ("keypoints", "n000001")
    pts = sorted(
        (p["idx"], p["name"], p["x"], p["y"]) for p in t["points"] if p["ann_id"] == marks["ann_id"]
    )
    assert pts == [
        (0, "P1", 2.787, 2.898),
        (1, "P2", 2.965, 2.79),
        (2, "P3", 2.8, 2.456),
        (3, "P4", 2.81, 2.32),
        (4, "P5", 2.89, 2.3),
    ]
    # labels.txt has no final newline: its last line still counts
    assert attrs(t, "label:n000003") == {"class_name": "Pol"}
    assert attrs(t, "label:n000001") == {"class_name": "Karl"}


def test_unsorted_files_rejects_and_bare_rows(tmp_path: Path) -> None:
    t = read(UNSORTED, tmp_path / "o")
    items = [i["item_id"] for i in t["items"]]
    assert items == [
        "train/n000002/0001_01",
        "train/n000001/0001_01",
        "train/n000001/0002_01",
        "train/no_label/0003_01",
        "train/n000003/0009_01",  # a box row without a landmark row
    ]
    kinds = {(a["item_id"], a["kind"], a["label"]) for a in t["annotations"]}
    assert kinds == {
        ("train/n000002/0001_01", "bbox", "n000002"),
        ("train/n000002/0001_01", "keypoints", "n000002"),
        ("train/n000001/0001_01", "bbox", "n000001"),
        ("train/n000001/0001_01", "tag", "n000001"),  # a landmark row with no numbers
        ("train/no_label/0003_01", "keypoints", None),
        ("train/n000003/0009_01", "bbox", "n000003"),
    }
    rejects = {r["location"]: (r["record_kind"], r["reason"]) for r in t["rejects"]}
    assert rejects == {
        "bb_landmark/loose_bb_train.csv, line 5": ("items", "no NAME_ID"),
        "bb_landmark/loose_landmark_train.csv, line 4": (
            "annotations",
            "a value is missing or not a number",
        ),
        "bb_landmark/loose_landmark_train.csv, line 6": ("items", "NAME_ID repeated in its file"),
    }
    assert attrs(t, "label:n000001") == {"class_name": "Ann Lee"}
    assert attrs(t, "label:n000002") == {"class_name": None}


def _rows(*keys: str) -> list[_Row]:
    return [_Row(k, n, [float(n)]) for n, k in enumerate(keys, 2)]


def test_sorted_files_merge_as_they_stream() -> None:
    lm = _rows("a/1", "a/2", "b/1", "b/1")
    bb = _rows("a/1", "a/3", "b/1")
    got = [
        (key, [r.line if r else None for r in pair], why)
        for key, pair, why in _merge(iter(lm), iter(bb))
    ]
    assert got == [
        ("a/1", [2, 2], ""),
        ("a/2", [3, None], ""),
        ("a/3", [None, 3], ""),
        ("b/1", [4, 4], ""),
        ("b/1", [5, None], "NAME_ID repeated in its file"),
    ]


def test_unsorted_files_pair_through_the_held_boxes() -> None:
    got = [
        (key, [r.line if r else None for r in pair], why)
        for key, pair, why in _lookup(iter(_rows("b", "a", "b")), iter(_rows("a", "c", "a")))
    ]
    assert got == [
        ("a", [None, 4], "NAME_ID repeated in its file"),
        ("b", [2, None], ""),
        ("a", [3, 2], ""),
        ("b", [4, None], "NAME_ID repeated in its file"),
        ("c", [None, 3], ""),
    ]


def test_header_without_its_columns_fails_with_the_line(tmp_path: Path) -> None:
    ann = tmp_path / "src" / "bb_landmark"
    ann.mkdir(parents=True)
    (ann / "loose_bb_train.csv").write_text("NAME_ID,X,Y,W\nn1/a,1,2,3\n")
    report = convert([str(tmp_path / "src")], "parquet", str(tmp_path / "o"), workers=1)
    assert not report.ok
    assert report.failures[0].endswith("loose_bb_train.csv: line 1: header lacks H")


def test_writer_gives_the_peer_files_back(peer: Path, tmp_path: Path) -> None:
    src = peer / "vggface2" / "vgg_face2_dataset"
    out = tmp_path / "out"
    report = write(src, "vggface2", out)
    for name in ("loose_bb_train.csv", "loose_landmark_train.csv", "loose_landmark_test.csv"):
        assert (out / "bb_landmark" / name).read_text() == (src / "bb_landmark" / name).read_text()
    assert (out / "labels.txt").read_text() == "n000001 Karl\nn000002 Jay\nn000003 Pol\n"
    assert (out / "train" / "n000002" / "0002_01.jpg").read_bytes() == (
        src / "train" / "n000002" / "0002_01.jpg"
    ).read_bytes()
    assert report.counts["annotations"]["written"] == 8
    assert report.lossy == {}


def test_round_trip_keeps_bare_rows_and_unlabelled_images(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(UNSORTED, "vggface2", out, save_images="false")
    assert (out / "bb_landmark" / "loose_landmark_train.csv").read_text() == (
        "NAME_ID,P1X,P1Y,P2X,P2Y,P3X,P3Y,P4X,P4Y,P5X,P5Y\n"
        "n000002/0001_01,1,2,3,4,5,6,7,8,9,10\n"
        "n000001/0001_01\n"
        "n000001/0002_01\n"
        "no_label/0003_01,1,1,2,2,3,3,4,4,5,5\n"
    )
    again = read(out, tmp_path / "again")
    assert len(again["items"]) == 5
    assert {a["kind"] for a in again["annotations"]} == {"bbox", "keypoints", "tag"}


def test_one_face_per_image_is_counted_as_lossy(tmp_path: Path) -> None:
    report = write(FIXTURES / "widerface" / "with_labels", "vggface2", tmp_path / "out")
    assert report.lossy["annotations with a second label per image not written"] == 3
    report = write(FIXTURES / "lfw" / "malformed", "vggface2", tmp_path / "lfw")
    assert report.lossy == {"images not copied: the item names no image file": 6}
    text = (tmp_path / "lfw" / "bb_landmark" / "loose_landmark_default.csv").read_text()
    assert "Abel_Pacheco/Abel_Pacheco_0001,10,20,30,40,50,60,70,80,90,100\n" in text


def test_detects_a_single_csv() -> None:
    from pipelines.storage import Source

    src = Source(str(UNSORTED / "bb_landmark" / "loose_bb_train.csv"))
    assert vggface2.detect(src) is not None
