"""CVAT for images / CVAT for video XML: exact values, rejects, errors, writers, cross-format."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from lxml import etree

from pipelines import formats, masks
from pipelines.errors import ParseError
from pipelines.formats import _cvat_write, _fragments
from pipelines.formats.base import ReadOptions, WriteOptions
from pipelines.runner import convert
from pipelines.storage import Source
from tests.conftest import FIXTURES, PEER
from tests.rows import by_id, parquet_rows, read_direct

CVAT = FIXTURES / "cvat"
VIDEO = PEER / "cvat_video" / "for_video"
SKELETON = PEER / "cvat_images" / "task_export_with_skeleton"


def _read(path: Path | str) -> dict[str, list[dict]]:
    return read_direct(path, "cvat")


@pytest.fixture(scope="module")
def task() -> dict[str, list[dict]]:
    return _read(CVAT / "images_task")


def test_rotated_box_keeps_its_angle_clockwise_about_the_centre(task) -> None:
    box = by_id(task["annotations"], "ann_id")["train/street/a.jpg/0"]
    assert box["kind"] == "rotated_bbox"
    assert (box["bbox_x"], box["bbox_y"], box["bbox_w"], box["bbox_h"]) == (1.0, 1.0, 4.0, 2.0)
    assert box["angle_deg"] == 30.0
    assert (box["label"], box["z_order"], box["group_id"], box["manual"]) == ("car", 2, "1", True)
    assert box["occluded"] is False
    attrs = [a for a in task["attributes"] if a["owner_id"] == box["ann_id"]]
    assert [(a["key"], a["value"], a["source"]) for a in attrs] == [("parked", "true", "cvat")]


def test_mask_rle_over_its_box_becomes_a_full_image_coco_rle(task) -> None:
    mask = by_id(task["annotations"], "ann_id")["train/street/a.jpg/2"]
    assert (mask["mask_h"], mask["mask_w"]) == (4, 6)
    assert (mask["bbox_x"], mask["bbox_y"], mask["bbox_w"], mask["bbox_h"]) == (1, 1, 3, 2)
    expected = np.zeros((4, 6), dtype=np.uint8)
    # rle "1, 4, 1" row by row over the 3×2 box at (1, 1): 0 1 1 / 1 1 0
    expected[1, 2] = expected[1, 3] = expected[2, 1] = expected[2, 2] = 1
    assert np.array_equal(masks.decode(mask["mask"], 4, 6), expected)
    assert mask["area"] == 4.0
    assert mask["manual"] is False
    source = [a for a in task["attributes"] if a["owner_id"] == mask["ann_id"]]
    assert [(a["key"], a["value"], a["source"]) for a in source] == [
        ("source", "semi-auto", "cvat_xml")
    ]


def test_ellipse_cuboid_and_a_tag_between_shapes(task) -> None:
    anns = [a for a in task["annotations"] if a["item_id"] == "train/street/a.jpg"]
    assert [a["kind"] for a in anns] == ["rotated_bbox", "tag", "mask", "ellipse", "cuboid_2d"]
    ellipse = anns[3]
    assert (ellipse["bbox_x"], ellipse["bbox_y"], ellipse["bbox_w"], ellipse["bbox_h"]) == (
        1.0, 1.0, 4.0, 2.0,
    )  # fmt: skip
    assert ellipse["angle_deg"] == 15.0
    assert ellipse["occluded"] is True
    corners = [
        (p["name"], p["x"], p["y"]) for p in task["points"] if p["ann_id"] == anns[4]["ann_id"]
    ]
    assert corners == [
        ("tl1", 1, 1), ("bl1", 1, 3), ("tr1", 3, 1), ("br1", 3, 3),
        ("tl2", 2, 0), ("bl2", 2, 2), ("tr2", 4, 0), ("br2", 4, 2),
    ]  # fmt: skip
    assert anns[1]["label"] == "sunny"


def test_skeleton_points_carry_names_and_visibility(task) -> None:
    points = [p for p in task["points"] if p["ann_id"] == "train/street/b.jpg/0"]
    assert [(p["name"], p["x"], p["y"], p["visibility"]) for p in points] == [
        ("eye", 2.5, 3.5, 1),  # occluded
        ("nose", 4.0, 5.0, 0),  # outside
    ]
    own = [a for a in task["attributes"] if a["owner_id"] == "train/street/b.jpg/0#0"]
    assert [(a["owner_kind"], a["key"], a["value"]) for a in own] == [("point", "color", "blue")]


def test_peer_skeletons_visibility() -> None:
    tables = _read(SKELETON)
    vis = [(p["ann_id"], p["name"], p["visibility"]) for p in tables["points"] if p["name"]]
    assert vis == [
        ("train/img0.jpg/2", "1", 0), ("train/img0.jpg/2", "2", 2),
        ("train/img0.jpg/2", "3", 2), ("train/img0.jpg/2", "4", 2),
        ("train/img1.jpg/2", "1", 2), ("train/img1.jpg/2", "2", 2),
        ("train/img1.jpg/2", "3", 0), ("train/img1.jpg/2", "4", 2),
    ]  # fmt: skip
    unlabelled = [a["kind"] for a in tables["annotations"] if a["label"] is None]
    assert unlabelled == ["polyline", "polygon"]


def test_meta_becomes_label_and_dataset_attributes(task) -> None:
    labels = {
        (a["owner_id"], a["key"]): a["value"]
        for a in task["attributes"]
        if a["owner_kind"] == "label"
    }
    assert labels[("label:car", "color")] == "#fa3253"
    assert labels[("label:eye", "parent")] == "face"
    assert '"input_type":"checkbox"' in labels[("label:car", "attributes")]
    items = by_id(task["items"], "item_id")
    assert set(items) == {"train/street/a.jpg", "train/street/b.jpg"}
    assert items["train/street/a.jpg"]["subset"] == "train"  # from the task's <subset>


def test_track_shapes_with_keyframe_and_outside_flags() -> None:
    tables = _read(CVAT / "video_task")
    anns = [a for a in tables["annotations"] if a["track_id"] == "4"]
    assert [
        (a["frame_index"], a["item_id"], a["keyframe"], a["outside"], a["occluded"]) for a in anns
    ] == [
        (0, "clip.mp4/frame_000000", True, False, False),
        (1, "clip.mp4/frame_000001", False, False, True),
        (2, "clip.mp4/frame_000002", True, True, False),
    ]
    assert [(a["bbox_x"], a["bbox_w"]) for a in anns] == [(1.0, 2.0), (2.0, 2.0), (3.0, 2.0)]
    speed = [(a["frame_index"], a["value"]) for a in tables["attributes"] if a["key"] == "speed"]
    assert speed == [(0, "slow"), (1, "fast"), (2, "fast")]
    mask = next(a for a in tables["annotations"] if a["kind"] == "mask")
    assert (mask["mask_h"], mask["mask_w"], mask["area"]) == (6, 8, 2.0)
    assert masks.decode(mask["mask"], 6, 8)[4, 6:8].tolist() == [1, 1]
    tag = next(a for a in tables["annotations"] if a["kind"] == "tag")
    assert (tag["item_id"], tag["frame_index"]) == ("clip.mp4/frame_000001", 1)


def test_video_items_one_per_frame_under_the_video() -> None:
    tables = _read(VIDEO)
    items = tables["items"]
    video, frames = items[0], items[1:]
    assert (video["item_id"], video["media_type"], video["width"], video["height"]) == (
        "t.mp4", "video", 25, 20,
    )  # fmt: skip
    # start 10, stop 19, step=3 → 10, 13, 16, 19; only 10 and 13 ship an image.
    assert [f["frame_index"] for f in frames] == [10, 13, 16, 19]
    assert {f["parent_id"] for f in frames} == {"t.mp4"}
    assert {(f["width"], f["height"]) for f in frames} == {(25, 20)}
    assert [f["media_uri"] is not None for f in frames] == [True, True, False, False]


def test_old_style_skeleton_track_element_stays_outside() -> None:
    tables = _read(VIDEO)
    skel = [p for p in tables["points"] if p["ann_id"].startswith("t.mp4/track3/")]
    by_frame = {}
    for p in skel:
        by_frame.setdefault(int(p["ann_id"].rsplit("/", 1)[1]), []).append(p["visibility"])
    # Element "3" turns outside at frame 13 and has no shape at 16: it stays outside.
    assert by_frame == {10: [2, 2, 2, 2], 13: [2, 2, 0, 2], 16: [2, 2, 0, 2]}
    keyframe = [
        (a["owner_id"], a["value"]) for a in tables["attributes"] if a["owner_kind"] == "point"
    ]
    assert ("t.mp4/track3/13#2", "1") in keyframe  # the element's own keyframe at 13


def test_project_export_repeated_names_get_unique_ids(tmp_path: Path) -> None:
    xml = tmp_path / "annotations.xml"
    xml.write_text(
        "<annotations><version>1.1</version>"
        '<image id="0" name="a.jpg" subset="Train" width="4" height="4"/>'
        '<image id="1" name="a.jpg" subset="Test" width="4" height="4"/>'
        '<image id="2" name="a.jpg" subset="Test" width="4" height="4"/>'
        "</annotations>"
    )
    ids = [i["item_id"] for i in _read(xml)["items"]]
    assert ids == ["Train/a.jpg", "Test/a.jpg", "Test/a.jpg#2"]


def test_rejects_name_the_line_and_the_reason(tmp_path: Path) -> None:
    xml = tmp_path / "bad.xml"
    xml.write_text(
        "<annotations>\n<version>1.1</version>\n"
        '<image id="0" name="a.jpg" width="4" height="4">\n'
        '  <box label="x" xtl="abc" ytl="1" xbr="2" ybr="2"/>\n'
        '  <polygon label="x" points="1,2;3"/>\n'
        '  <box label="x" xtl="1" ytl="1" xbr="2" ybr="2"/>\n'
        "</image>\n"
        '<image id="1" name="b.jpg">\n'
        '  <mask label="m" rle="1, 1" left="0" top="0" width="1" height="2"/>\n'
        "</image>\n</annotations>\n"
    )
    tables = _read(xml)
    assert [(r["location"], r["reason"]) for r in tables["rejects"]] == [
        ("line 4: <box>", "xtl='abc' is not a number"),
        ("line 5: <polygon>", "point '3' is not x,y"),
        ("line 9: <mask>", "a mask needs the image size, which this image lacks"),
    ]
    assert len(tables["annotations"]) == 1


def test_malformed_xml_names_file_and_line() -> None:
    fmt = formats.get("cvat")
    (task,) = fmt.plan_read(Source(str(CVAT / "malformed.xml")), ReadOptions())
    with pytest.raises(ParseError) as err:
        list(fmt.read(task))
    assert err.value.source.endswith("malformed.xml")
    assert err.value.location.startswith("line 6")
    assert "malformed XML" in err.value.reason


def test_malformed_xml_fails_the_source_in_a_run(tmp_path: Path) -> None:
    report = convert([str(CVAT / "malformed.xml")], "parquet", str(tmp_path / "o"), workers=1)
    assert len(report.failures) == 1
    assert "malformed.xml: line 6" in report.failures[0]


def test_export_zip_is_read_in_place(tmp_path: Path) -> None:
    archive = tmp_path / "task_export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(SKELETON.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(SKELETON).as_posix())
    found = formats.detect(Source(str(archive)))
    assert found[0][0] == "cvat"
    report = convert([str(archive)], "parquet", str(tmp_path / "out"), workers=1)
    assert report.ok, report.failures
    items = parquet_rows(tmp_path / "out", "items")
    assert [i["media_uri"] for i in items] == [
        f"{archive}!images/img0.jpg",
        f"{archive}!images/img1.jpg",
    ]
    assert report.counts["annotations"]["written"] == 6


def test_detect_leaves_other_xml_alone(tmp_path: Path) -> None:
    voc = tmp_path / "a.xml"
    voc.write_text("<annotation><filename>a.jpg</filename></annotation>")
    assert formats.get("cvat").detect(Source(str(voc))) is None


# -- writers ---------------------------------------------------------------------


def _written(tmp_path: Path, source: Path, name: str = "annotations.xml") -> etree._Element:
    report = convert([str(source)], "cvat", str(tmp_path / "cvat"), source_format="cvat",
                     workers=1)  # fmt: skip
    assert report.ok, report.failures
    return etree.parse(str(tmp_path / "cvat" / name)).getroot(), report


def test_images_writer_skips_outside_shapes_and_reports_it(tmp_path: Path) -> None:
    root, report = _written(tmp_path, CVAT / "images_task")
    assert report.lossy == {"outside track shapes skipped (CVAT for images has no outside)": 1}
    box = root.find("image[@name='street/a.jpg']/box")
    assert (box.get("rotation"), box.get("xtl"), box.get("xbr"), box.get("group_id")) == (
        "30", "1", "5", "1",
    )  # fmt: skip
    mask = root.find("image[@name='street/a.jpg']/mask")
    assert (mask.get("rle"), mask.get("left"), mask.get("width"), mask.get("source")) == (
        "1, 4, 1", "1", "3", "semi-auto",
    )  # fmt: skip
    eye = root.find("image[@name='street/b.jpg']/skeleton/points[@label='eye']")
    assert (eye.get("occluded"), eye.get("outside"), eye.find("attribute").text) == (
        "1", "0", "blue",
    )  # fmt: skip
    assert root.find("image[@name='street/b.jpg']/box") is None
    labels = [lb.findtext("name") for lb in root.iterfind("meta/task/labels/label")]
    assert labels == ["car", "road", "face", "eye", "nose", "sunny"]


def test_video_writer_keeps_tracks_with_outside_shapes(tmp_path: Path) -> None:
    root, report = _written(tmp_path, CVAT / "video_task")
    assert report.lossy == {}
    track = root.find("track[@id='4']")
    assert [(b.get("frame"), b.get("keyframe"), b.get("outside")) for b in track] == [
        ("0", "1", "0"), ("1", "0", "0"), ("2", "1", "1"),
    ]  # fmt: skip
    assert root.findtext("meta/job/original_size/width") == "8"
    assert root.find("track[@id='9']/skeleton/points").get("label") == "tip"
    assert root.find("tag").get("frame") == "1"


def test_non_cvat_data_written_as_cvat(tmp_path: Path) -> None:
    """Datumaro in, CVAT out: labels and skeleton sublabels come from the annotations."""
    src = PEER / "datumaro" / "with_skeleton"
    report = convert([str(src)], "cvat", str(tmp_path / "c"), workers=1)
    assert report.ok, report.failures
    root = etree.parse(str(tmp_path / "c" / "annotations.xml")).getroot()
    skel = root.find("image/skeleton")
    assert skel.get("label") == "skeleton-label"
    assert [p.get("label") for p in skel] == ["point1-label", "point3-label", "point2-label"]
    text = skel.find("points[@label='point2-label']/attribute")
    assert (text.get("name"), text.text) == ("point2-attribute-text", "some text")
    parents = {
        lb.findtext("name"): lb.findtext("parent") for lb in root.iterfind(".//labels/label")
    }
    assert parents["point1-label"] == "skeleton-label"


# -- cross-format ------------------------------------------------------------------

_CROSS = """<annotations><version>1.1</version>
<image id="0" name="a.jpg" subset="train" width="40" height="30">
  <box label="car" xtl="1.5" ytl="2" xbr="11.25" ybr="9" z_order="0"/>
  <polygon label="road" points="0,0;20,0;20,10;0,10" z_order="0"/>
  <box label="car" xtl="5" ytl="5" xbr="15" ybr="10" rotation="45"/>
</image>
<image id="1" name="a.jpg" subset="val" width="40" height="30">
  <polygon label="road" points="1,1;9.5,1;5,7.25"/>
</image>
</annotations>
"""


def _shapes(out: Path) -> list[tuple]:
    items = {i["item_id"]: (i["subset"], i["file_name"]) for i in parquet_rows(out, "items")}
    pts: dict[str, list] = {}
    for p in parquet_rows(out, "points"):
        pts.setdefault(p["ann_id"], []).append((p["part"], p["idx"], p["x"], p["y"]))
    return sorted(
        (
            *items[a["item_id"]], a["kind"], a["label"], a["bbox_x"], a["bbox_y"],
            a["bbox_w"], a["bbox_h"], a["angle_deg"], tuple(sorted(pts.get(a["ann_id"], []))),
        )
        for a in parquet_rows(out, "annotations")
        if a["kind"] in ("bbox", "rotated_bbox", "polygon")
    )  # fmt: skip


@pytest.mark.parametrize("source", ["inline", "concretenet"])
def test_cvat_to_coco_to_parquet_keeps_boxes_and_polygons(tmp_path: Path, source: str) -> None:
    if source == "inline":
        src = tmp_path / "annotations.xml"
        src.write_text(_CROSS)
    else:
        src = PEER / "cvat_images" / "concretenet_task_export"
    direct, coco, back = tmp_path / "direct", tmp_path / "coco", tmp_path / "back"
    assert convert([str(src)], "parquet", str(direct), source_format="cvat", workers=1).ok
    assert convert([str(src)], "coco", str(coco), source_format="cvat", workers=1).ok
    assert convert([str(coco)], "parquet", str(back), source_format="coco", workers=1).ok
    expected = _shapes(direct)
    assert len(expected) == (4 if source == "inline" else 1030)
    assert _shapes(back) == expected


def test_named_groups_become_numbers_and_layout_attributes_stay_out(tmp_path: Path) -> None:
    src = PEER / "coco_keypoints" / "coco_person_keypoints"
    report = convert([str(src)], "cvat", str(tmp_path / "c"), workers=1)
    assert report.ok, report.failures
    image = etree.parse(str(tmp_path / "c" / "val.xml")).getroot().find("image")
    assert [(el.tag, el.get("group_id")) for el in image] == [
        ("polygon", "1"), ("skeleton", "1"), ("mask", "2"), ("skeleton", "2"),
    ]  # fmt: skip
    # COCO's "this RLE was uncompressed" is layout, not a user attribute.
    assert image.find("mask/attribute") is None
    assert set(image.attrib) == {"id", "name", "subset", "width", "height"}


def test_frames_of_one_sequence_are_written_as_video_with_closed_tracks(tmp_path: Path) -> None:
    """MOT numbers frames of a sequence (no video item): tracks become CVAT tracks, and a
    track absent from a frame gets an outside keyframe so CVAT does not carry it on."""
    seq = tmp_path / "mot" / "seq"
    (seq / "gt").mkdir(parents=True)
    (seq / "seqinfo.ini").write_text(
        "[Sequence]\nname=seq\nimDir=img1\nframeRate=10\nseqLength=3\n"
        "imWidth=16\nimHeight=12\nimExt=.jpg\n"
    )
    (seq / "gt" / "labels.txt").write_text("person\ncar\n")
    (seq / "gt" / "gt.txt").write_text(
        "1,1,1,1,4,4,1,1,1.0\n2,1,2,1,4,4,1,1,1.0\n3,1,3,1,4,4,1,1,1.0\n"
        "1,2,5,5,3,3,1,2,1.0\n3,2,6,5,3,3,1,2,1.0\n"
    )
    report = convert([str(tmp_path / "mot")], "cvat", str(tmp_path / "c"), source_format="mot",
                     workers=1)  # fmt: skip
    assert report.ok, report.failures
    root = etree.parse(str(tmp_path / "c" / "annotations.xml")).getroot()
    assert root.find("image") is None
    assert root.findtext("meta/task/original_size/height") == "12"
    tracks = {
        t.get("label"): [(b.get("frame"), b.get("outside")) for b in t]
        for t in root.iterfind("track")
    }
    assert tracks["person"] == [("0", "0"), ("1", "0"), ("2", "0")]
    assert tracks["car"] == [("0", "0"), ("1", "1"), ("2", "0")]


@pytest.mark.parametrize(
    "source",
    [
        "cvat_images/project_export",
        "cvat_images/task_export_with_skeleton",
        "coco_instances/coco_instances",
        "datumaro/diverse",
    ],
)
def test_images_written_in_parts_give_the_same_file(
    source: str, tmp_path: Path, monkeypatch
) -> None:
    """A subset split between tasks (fragments joined by the last) is byte for byte the
    file one task writes: image ids and names are decided by the items before each
    run, and a name or id taken earlier is not reused."""
    whole = tmp_path / "whole"
    assert convert([str(PEER / source)], "cvat", str(whole), workers=1).ok
    monkeypatch.setattr(_fragments, "MIN_PART_ITEMS", 1)
    parts = tmp_path / "parts"
    split = WriteOptions(workers=3)
    assert convert([str(PEER / source)], "cvat", str(parts), workers=1, write_options=split).ok
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(parts) for p in parts.rglob("*") if p.is_file())
    for rel in files:
        assert (parts / rel).read_bytes() == (whole / rel).read_bytes(), rel


def test_repeated_ids_and_names_stay_unique_across_parts(tmp_path: Path, monkeypatch) -> None:
    images = "".join(
        f'<image id="{k % 3}" name="{"a" if k % 2 else "b"}.jpg" width="4" height="4"/>'
        for k in range(7)
    )
    xml = tmp_path / "annotations.xml"
    xml.write_text(f"<annotations><version>1.1</version>{images}</annotations>")
    monkeypatch.setattr(_fragments, "MIN_PART_ITEMS", 1)
    out = tmp_path / "out"
    split = WriteOptions(workers=3)
    assert convert([str(xml)], "cvat", str(out), workers=1, write_options=split).ok
    written = etree.parse(str(out / "annotations.xml")).getroot().findall("image")
    ids = [int(i.get("id")) for i in written]
    names = [i.get("name") for i in written]
    assert len(written) == 7 and len(set(ids)) == 7 and len(set(names)) == 7
    assert not list(out.rglob(".annotations.xml.parts"))


def test_a_mask_s_box_found_from_its_rle_is_the_one_its_pixels_give() -> None:
    """The stated box when it holds every set pixel (whole pixels, inside the image),
    else the tight box of the set pixels, as the decoded image would give them."""
    rng = np.random.default_rng(5)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 30, size=2))
        full = np.zeros((h, w), np.uint8)
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        full[y0 : y0 + int(rng.integers(1, 8)), x0 : x0 + int(rng.integers(1, 8))] = 1
        full &= (rng.random((h, w)) < 0.7).astype(np.uint8)
        rows, cols = np.nonzero(full)
        tight = None
        if rows.size:
            x0, y0 = cols.min(), rows.min()
            tight = (x0, y0, cols.max() - x0 + 1, rows.max() - y0 + 1)
        x, y = int(rng.integers(-2, w)), int(rng.integers(-2, h))
        bw, bh = int(rng.integers(0, w + 2)), int(rng.integers(0, h + 2))
        if tight is not None and rng.random() < 0.4:  # a box around the pixels
            x, y = int(rng.integers(0, tight[0] + 1)), int(rng.integers(0, tight[1] + 1))
            bw = int(rng.integers(tight[0] + tight[2] - x, w - x + 2))
            bh = int(rng.integers(tight[1] + tight[3] - y, h - y + 2))
        stated = [(x, y, bw, bh), (x + 0.5, y, bw, bh), (None,) * 4][int(rng.integers(0, 3))]
        ann = dict(zip(("bbox_x", "bbox_y", "bbox_w", "bbox_h"), stated, strict=True))
        ann["mask"] = masks.encode(full)
        whole = None not in stated and all(float(v).is_integer() for v in stated)
        inside = whole and x >= 0 and y >= 0 and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
        holds = inside and full[y : y + bh, x : x + bw].sum() == full.sum()
        expected = None if tight is None else ((x, y, bw, bh) if holds else tight)
        got = _cvat_write._mask_box(ann, h, w)
        assert got == (None if expected is None else tuple(int(v) for v in expected)), ann


def test_vertex_text_spelt_by_arrays_is_what_the_writer_formats() -> None:
    """Vertices (spelt a batch at a time by numpy, `_vertex_text`) and boxes (`_num`, a
    number at a time in Python) must spell every number alike: on every magnitude, at
    the rounding edges and exact ties, past exact integers, -0, NaN and the infinities."""
    import pyarrow as pa

    rng = np.random.default_rng(9)
    edges = [0.0, -0.0, 5e-7, -5e-7, np.nextafter(-5e-7, -1), np.nextafter(-5e-7, 1), -4.9e-7,
             1234.5678905, 0.1234565, 0.9999995, 1.5e9, 4503599627.370496, 1e15, 1e300, 5e-324,
             np.nan, np.inf, -np.inf]  # fmt: skip
    values = np.concatenate([
        rng.random(50_000) * 4000,
        np.round(rng.random(20_000) * 4000, 2),
        rng.integers(-5000, 5000, 20_000).astype(float),
        10.0 ** rng.uniform(-9, 15, 20_000) * rng.choice([-1, 1], 20_000),
        np.arange(-20_000, 20_000) / 128,  # ties at the seventh decimal
        edges,
    ])  # fmt: skip
    ys = rng.permutation(values)
    got = _cvat_write._vertex_text(pa.record_batch({"x": values, "y": ys})).to_pylist()
    want = [f"{_cvat_write._num(x)},{_cvat_write._num(y)}" for x, y in zip(values, ys, strict=True)]
    assert got == want
    # Whole parts of ten digits that fit 32-bit integers, alone in a batch.
    large = pa.record_batch({"x": [1.5e9, 2e9 + 0.125], "y": [3.25, -0.0]})
    assert _cvat_write._vertex_text(large).to_pylist() == ["1500000000,3.25", "2000000000.125,0"]
    with_null = pa.record_batch({"x": [1.0, None, 2.5], "y": [0.5, 1.0, None]})
    assert _cvat_write._vertex_text(with_null).to_pylist() == ["1,0.5", None, None]


def test_a_mask_decoded_in_its_box_is_the_box_of_the_decoded_image() -> None:
    rng = np.random.default_rng(13)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        counts = masks.encode(rng.random((h, w)) < rng.random())
        left, top = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (left, top, int(rng.integers(1, w - left + 1)), int(rng.integers(1, h - top + 1)))
        whole = masks.decode(counts, h, w)[top : top + box[3], left : left + box[2]]
        assert np.array_equal(masks.decode_box(counts, h, w, box), whole), (h, w, box)
