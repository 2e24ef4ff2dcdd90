"""MOT 1.1: exact values from the peer sequences and a multi-track fixture, rejects with
their lines, the writer's files, and lossiness when other shapes become boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import formats
from pipelines.formats._mot import TrackNumbers, class_ids, labels_text
from pipelines.formats.mot import _box
from pipelines.runner import convert
from pipelines.staging import Staging
from pipelines.storage import Source
from tests.conftest import FIXTURES
from tests.rows import read

TRACKS = FIXTURES / "mot" / "mot_tracks"


def _read(src: Path | str, tmp_path: Path, **kw) -> dict[str, list[dict]]:
    return read(src, tmp_path / "read", **kw)


def _attrs(tables: dict, owner: str) -> dict:
    return {
        a["key"]: json.loads(a["value"]) if a["value_type"] != "string" else a["value"]
        for a in tables["attributes"]
        if a["owner_id"] == owner
    }


def test_peer_sequence_box_label_and_frame(peer: Path, tmp_path: Path) -> None:
    t = _read(peer / "mot" / "mot_seq", tmp_path)
    (item,) = t["items"]
    assert (item["item_id"], item["file_name"], item["frame_index"]) == (
        "mot_seq/000001",
        "000001.jpg",
        0,
    )
    assert (item["width"], item["height"]) == (16, 16)  # from the JPEG header
    assert item["sequence_id"] == "mot_seq"
    (ann,) = t["annotations"]
    box = (ann["bbox_x"], ann["bbox_y"], ann["bbox_w"], ann["bbox_h"])
    assert box == (0.0, 4.0, 4.0, 8.0)
    # class 3 is the third line of labels.txt; track id -1 means "no track"
    assert (ann["label"], ann["label_id"], ann["track_id"]) == ("label_2", "3", None)
    assert ann["frame_index"] == 0
    assert ann["occluded"] is False
    assert _attrs(t, ann["ann_id"]) == {"ignored": False, "visibility": 1.0}


def test_seqinfo_gives_size_rate_and_names(peer: Path, tmp_path: Path) -> None:
    t = _read(peer / "mot" / "mot_seq_with_seqinfo", tmp_path)
    (item,) = t["items"]
    assert (item["width"], item["height"], item["fps"]) == (16, 16, 10.0)
    assert item["file_name"] == "000001.jpg"  # imExt, no image present
    assert item["media_uri"] is None
    assert json.loads(item["metadata"])["seqinfo"]["name"] == "Test"


def test_tracks_frames_and_flags(tmp_path: Path) -> None:
    t = _read(TRACKS, tmp_path)
    items = {i["item_id"]: i for i in t["items"]}
    assert sorted(items) == [f"train/SEQ-01/00000{n}" for n in range(1, 5)]
    assert {i["subset"] for i in items.values()} == {"train"}
    assert {i["sequence_id"] for i in items.values()} == {"SEQ-01"}
    assert items["train/SEQ-01/000004"]["fps"] == 25.0
    anns = {a["ann_id"]: a for a in t["annotations"]}
    assert len(anns) == 6
    # line 3: track 1 in frame 3, visibility 0 → occluded
    a = anns["train/SEQ-01/000003/3"]
    assert (a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"]) == (108.0, 204.5, 50.0, 120.0)
    assert (a["track_id"], a["frame_index"], a["keyframe"], a["label"]) == ("1", 2, True, "person")
    assert a["occluded"] is True
    assert _attrs(t, a["ann_id"]) == {"ignored": False, "visibility": 0.0}
    # line 4: "not ignored" flag 0
    b = anns["train/SEQ-01/000001/4"]
    assert (b["track_id"], b["label"]) == ("2", "car")
    assert _attrs(t, b["ann_id"])["ignored"] is True
    # line 6: a detection without a track
    assert anns["train/SEQ-01/000002/6"]["track_id"] is None
    assert anns["train/SEQ-01/000002/6"]["label"] == "bicycle"


def test_bad_rows_are_rejected_with_file_and_line(tmp_path: Path) -> None:
    t = _read(TRACKS, tmp_path)
    rejects = {r["location"]: r["reason"] for r in t["rejects"]}
    assert rejects == {
        "train/SEQ-01/gt/gt.txt, line 7": (
            "5 column(s); a MOT row needs at least 6 (frame, id, x, y, w, h)"
        ),
        "train/SEQ-01/gt/gt.txt, line 8": "a number column is not a number",
        "train/SEQ-01/gt/gt.txt, line 10": "class id 9 is not in labels.txt (3 labels)",
    }
    assert {r["record_kind"] for r in t["rejects"]} == {"annotations"}


def test_fail_policy_stops_at_the_first_bad_line(tmp_path: Path) -> None:
    report = convert([str(TRACKS)], "parquet", str(tmp_path / "o"), workers=1, on_error="fail")
    assert not report.ok
    assert "gt/gt.txt, line 7" in report.failures[0]


def test_undecodable_gt_is_a_parse_error_with_its_line(tmp_path: Path) -> None:
    seq = tmp_path / "seq" / "gt"
    seq.mkdir(parents=True)
    (seq / "gt.txt").write_bytes(b"1,1,0,0,1,1,1,1,1\n2,1,\xff\xfe,0,1,1,1,1,1\n")
    report = convert([str(tmp_path / "seq")], "parquet", str(tmp_path / "o"), workers=1)
    assert not report.ok
    assert "gt/gt.txt: line 2: not UTF-8 text" in report.failures[0]


def test_single_gt_file_uses_motchallenge_classes(tmp_path: Path) -> None:
    gt = tmp_path / "gt.txt"
    gt.write_text("5,7,1,2,3,4,1,3,0.5\n")
    found = formats.detect(Source(str(gt)))
    assert found[0][0] == "mot"
    t = _read(gt, tmp_path)
    (ann,) = t["annotations"]
    assert (ann["label"], ann["track_id"], ann["frame_index"]) == ("car", "7", 4)


def test_writer_files(tmp_path: Path) -> None:
    _read(TRACKS, tmp_path)
    report = convert([str(tmp_path / "read")], "mot", str(tmp_path / "out"), workers=1)
    assert report.ok, report.failures
    assert report.lossy == {}
    seq = tmp_path / "out" / "train" / "SEQ-01"
    assert (seq / "gt" / "gt.txt").read_text().splitlines() == [
        "1,1,100,200,50,120,1,1,1",
        "1,2,300,250,80,40,0,2,1",
        "2,1,104,202,50,120,1,1,0.5",
        "2,-1,10,10,5,5,1,3,1",
        "3,1,108,204.5,50,120,1,1,0",
        "3,2,310,252,80,40,1,2,0.75",
    ]
    assert (seq / "gt" / "labels.txt").read_text() == "person\ncar\nbicycle\n"
    assert (seq / "seqinfo.ini").read_text().splitlines() == [
        "[Sequence]",
        "name=SEQ-01",
        "imDir=img1",
        "frameRate=25",
        "seqLength=4",
        "imWidth=640",
        "imHeight=480",
        "imExt=.jpg",
    ]


def test_other_shapes_become_boxes_and_are_counted(tmp_path: Path) -> None:
    src = FIXTURES / "labelme" / "json"
    report = convert([str(src)], "mot", str(tmp_path / "out"), workers=1)
    assert report.ok, report.failures
    assert report.lossy["polygons written as boxes"] == 2
    assert report.lossy["masks written as boxes"] == 1
    assert report.lossy["ellipses written as boxes"] == 1
    assert report.lossy["frames renamed to their MOT frame number"] == 2
    # no sequences: each subset is one sequence folder, frames numbered in order
    train = (tmp_path / "out" / "train" / "gt" / "gt.txt").read_text().splitlines()
    val = (tmp_path / "out" / "val" / "gt" / "gt.txt").read_text().splitlines()
    assert len(train) == 8 and len(val) == 1
    labels = (tmp_path / "out" / "train" / "gt" / "labels.txt").read_text().splitlines()
    puddle = labels.index("puddle") + 1
    assert f"1,-1,40,30,4,3,1,{puddle},1" in train  # the mask's box
    assert val[0].startswith("1,-1,1,1,5,4,1,")  # the dog polygon's box


def test_rotated_box_becomes_its_upright_enclosure() -> None:
    ann = {"kind": "rotated_bbox", "bbox_x": 0.0, "bbox_y": 0.0, "bbox_w": 4.0, "bbox_h": 2.0}
    x, y, w, h = _box({**ann, "angle_deg": 90.0})
    assert (round(x, 6), round(y, 6), round(w, 6), round(h, 6)) == (1.0, -1.0, 2.0, 4.0)


def test_track_numbers_keep_numeric_ids() -> None:
    tracks = TrackNumbers(["3", "abc", "1"])
    assert tracks.number("abc") == 2
    assert tracks.number("3") == 3
    assert tracks.number("1") == 1
    assert tracks.number("zz") == 4
    assert tracks.number(None) is None


def test_class_ids_keep_small_label_ids(tmp_path: Path) -> None:
    _read(TRACKS, tmp_path)
    ids = class_ids(Staging(str(tmp_path / "read")))
    assert ids == {"person": 1, "car": 2, "bicycle": 3}
    assert labels_text({"b": 3}) == "class_1\nclass_2\nb\n"


@pytest.mark.parametrize("name", ["mot_seq", "mot_seq_with_seqinfo"])
def test_peer_roundtrip_keeps_the_box(peer: Path, tmp_path: Path, name: str) -> None:
    _read(peer / "mot" / name, tmp_path)
    convert([str(tmp_path / "read")], "mot", str(tmp_path / "mot"), workers=1)
    t = _read(tmp_path / "mot", tmp_path / "again")
    (ann,) = t["annotations"]
    assert (ann["bbox_x"], ann["bbox_y"], ann["bbox_w"], ann["bbox_h"], ann["label"]) == (
        0.0,
        4.0,
        4.0,
        8.0,
        "label_2",
    )


def test_whole_file_and_line_by_line_parsing_agree(tmp_path: Path) -> None:
    rows = "2,1,5,6,7,8,1,1,0.5\n1,1,1.5,2,3,4,0,2,1\n1,2,9,9,1,1,1,1,0\n"
    for name, text in (("fast", rows), ("slow", rows + "\n")):  # a blank line: line by line
        gt = tmp_path / name / "gt"
        gt.mkdir(parents=True)
        (gt / "gt.txt").write_text(text)
    fast = _read(tmp_path / "fast", tmp_path / "a")
    slow = _read(tmp_path / "slow", tmp_path / "b")

    def key(t: dict) -> list:
        cols = ("frame_index", "track_id", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "label")
        return [(a["ann_id"].split("/", 1)[1], *(a[c] for c in cols)) for a in t["annotations"]]

    assert key(fast) == key(slow)
    assert key(fast)[0] == ("000001/2", 0, "1", 1.5, 2.0, 3.0, 4.0, "person on vehicle")
    assert len(fast["attributes"]) == len(slow["attributes"]) == 6


def test_columns_past_the_ninth_are_kept(tmp_path: Path) -> None:
    gt = tmp_path / "seq" / "gt"
    gt.mkdir(parents=True)
    (gt / "gt.txt").write_text("1,1,1,2,3,4,1,1,1,-1\n")  # MOT15 adds world coordinates
    t = _read(tmp_path / "seq", tmp_path / "a")
    (ann,) = t["annotations"]
    assert _attrs(t, ann["ann_id"])["extra_columns"] == ["-1"]
