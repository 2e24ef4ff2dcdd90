"""Pascal VOC: 1-based boxes both ways, object fields, lists, masks, writer, safety."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from lxml import etree
from PIL import Image

from pipelines import formats, masks
from pipelines.errors import ParseError, UnsafePathError
from pipelines.formats.base import WriteOptions
from pipelines.runner import convert
from pipelines.storage import Source
from tests.conftest import FIXTURES, PEER
from tests.rows import parquet_rows, read_direct
from tests.test_yolo import stage

VOC1 = PEER / "voc" / "voc_dataset1"
CVAT = FIXTURES / "voc" / "cvat_export"


def boxes(rows: list[dict]) -> dict[str, tuple]:
    return {a["ann_id"]: (a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"]) for a in rows}


def xml(path: Path) -> etree._Element:
    return etree.parse(str(path)).getroot()


def bndbox(obj: etree._Element) -> tuple[str, ...]:
    return tuple(obj.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax"))


# -- reading -----------------------------------------------------------------------


def test_boxes_are_read_one_based_inclusive() -> None:
    t = read_direct(VOC1, "voc")
    got = boxes([a for a in t["annotations"] if a["kind"] == "bbox"])
    # <xmin>1 <ymin>2 <xmax>3 <ymax>4: pixels 1..3 and 2..4 → x 0, y 1, 3 wide, 3 high
    assert got == {
        "2007_000001/1": (0.0, 1.0, 3.0, 3.0),
        "2007_000001/2": (3.0, 4.0, 3.0, 3.0),
        "2007_000001/2/part/1": (4.5, 5.0, 3.0, 3.0),
    }
    whole = boxes(read_direct(CVAT, "voc")["annotations"])["frame_000000/1"]
    assert whole == (0.0, 0.0, 64.0, 48.0)  # 1..64 × 1..48 covers the whole 64×48 image


def test_object_fields_parts_and_actions() -> None:
    t = read_direct(VOC1, "voc")
    anns = {a["ann_id"]: a for a in t["annotations"]}
    cat, person, head = anns["2007_000001/1"], anns["2007_000001/2"], anns["2007_000001/2/part/1"]
    assert (cat["label"], cat["label_id"], person["label_id"]) == ("cat", "8", "15")
    assert head["label"] == "head" and head["group_id"] == person["ann_id"] == person["group_id"]
    attrs = {(a["owner_id"], a["source"], a["key"]): a["value"] for a in t["attributes"]}
    assert attrs[("2007_000001/1", "voc", "pose")] == "Unspecified"
    assert attrs[("2007_000001/1", "voc", "truncated")] == "true"
    assert attrs[("2007_000001/1", "voc", "difficult")] == "false"
    actions = {k: v for (o, s, k), v in attrs.items() if s == "voc_action"}
    assert len(actions) == 11 and actions["phoning"] == "true" and actions["jumping"] == "false"

    c = read_direct(CVAT, "voc")
    car = next(a for a in c["annotations"] if a["ann_id"] == "frame_000000/1")
    assert car["occluded"] is True and car["label_id"] == "1"
    cvat_attrs = {(a["key"], a["value"]) for a in c["attributes"] if a["source"] == "voc_attribute"}
    assert cvat_attrs == {("color", "red"), ("rotation", "0.0")}
    color = next(a for a in c["attributes"] if a["owner_id"] == "label:car" and a["key"] == "color")
    assert color["value"] == "[10,10,128]" and color["owner_kind"] == "label"


def test_images_listed_without_xml_are_kept() -> None:
    t = read_direct(VOC1, "voc")
    item = next(i for i in t["items"] if i["item_id"] == "2007_000002")
    assert (item["subset"], item["width"], item["height"]) == ("test", 20, 10)
    assert item["file_name"] == "2007_000002.jpg"
    assert (
        '"image_sets":["Main/test","Segmentation/test","Action/test","Layout/test"]'
        in (item["metadata"])
    )
    assert not [a for a in t["annotations"] if a["item_id"] == "2007_000002"]
    c = read_direct(CVAT, "voc")
    bare = next(i for i in c["items"] if i["item_id"] == "frame_000001")
    assert (bare["subset"], bare["width"], bare["file_name"]) == ("default", None, "frame_000001")


def test_segmentation_pngs_become_masks_linked_to_objects() -> None:
    t = read_direct(VOC1, "voc")
    [mask] = [a for a in t["annotations"] if a["kind"] == "mask"]
    # class PNG colour (0,128,0) = VOC class 2; object PNG colour (128,0,0) = instance 1
    assert (mask["label"], mask["label_id"], mask["native_id"]) == ("bicycle", "2", "1")
    assert mask["group_id"] == "2007_000001/1"  # instance 1 is the first <object>
    assert (mask["mask_h"], mask["mask_w"], mask["area"]) == (10, 20, 200.0)
    assert masks.decode(mask["mask"], 10, 20).all()


def test_class_lists_become_tags() -> None:
    t = read_direct(VOC1, "voc")
    tags = sorted(a["label"] for a in t["annotations"] if a["kind"] == "tag")
    assert tags == sorted(
        ["aeroplane", "bird", "bottle", "car", "chair", "diningtable", "horse", "ignored",
         "person", "sheep", "train"]
    )  # fmt: skip


def test_malformed_xml_is_rejected_with_its_place() -> None:
    t = read_direct(CVAT, "voc")
    rejects = {r["location"]: r for r in t["rejects"]}
    bad = rejects["Annotations/bad.xml: line 4, column 14"]
    assert bad["record_kind"] == "items" and bad["reason"].startswith("malformed XML")
    partial = rejects["Annotations/frame_000000.xml object 3"]
    assert partial["reason"] == "no complete <bndbox> (xmin, ymin, xmax, ymax)"
    assert "bad" not in {i["item_id"] for i in t["items"]}
    with pytest.raises(ParseError) as err:
        read_direct(CVAT, "voc", on_error="fail")
    assert err.value.location.startswith("Annotations/bad.xml: line 4")


def test_detection_keeps_to_voc() -> None:
    voc = formats.get("voc")
    assert voc.detect(Source(str(PEER / "labelme" / "labelme_dataset"))) is None
    assert voc.detect(Source(str(PEER / "cvat_images" / "project_export"))) is None
    single = voc.detect(Source(str(VOC1 / "Annotations" / "2007_000001.xml")))
    assert single is not None and single.confidence == 0.6


def test_single_xml_file_and_flat_folder(tmp_path: Path) -> None:
    t = read_direct(VOC1 / "Annotations" / "2007_000001.xml", "voc")
    assert [i["item_id"] for i in t["items"]] == ["2007_000001"]
    assert len([a for a in t["annotations"] if a["kind"] == "bbox"]) == 3
    for name in ("Annotations/2007_000001.xml", "JPEGImages/2007_000001.jpg"):
        shutil.copy(VOC1 / name, tmp_path)
    assert formats.detect(Source(str(tmp_path)))[0][0] == "voc"
    flat = read_direct(tmp_path, "voc")
    assert [(i["item_id"], i["media_uri"]) for i in flat["items"]] == [
        ("2007_000001", f"{tmp_path}/2007_000001.jpg")
    ]
    assert len(flat["annotations"]) == 3


def test_zip_is_read_in_place(tmp_path: Path) -> None:
    archive = tmp_path / "voc.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in VOC1.rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(VOC1).as_posix())
    assert formats.detect(Source(str(archive)))[0][0] == "voc"
    t = read_direct(archive, "voc")
    assert len(t["items"]) == 2 and len(t["annotations"]) == 15
    assert t["items"][1]["media_uri"] == f"{archive}!JPEGImages/2007_000002.jpg"


# -- writing ------------------------------------------------------------------------


def test_writes_boxes_one_based_and_keeps_object_fields(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert convert([str(CVAT)], "voc", str(out), workers=1).ok
    doc = xml(out / "Annotations" / "frame_000000.xml")
    car, person = doc.findall("object")
    assert bndbox(car) == ("1", "1", "64", "48")
    assert bndbox(person) == ("10.5", "20", "30", "40.25")
    assert (person.findtext("part/name"), bndbox(person.find("part"))) == (
        "head", ("12", "21", "18", "27"),
    )  # fmt: skip
    assert (car.findtext("occluded"), car.findtext("difficult")) == ("1", "1")
    assert person.findtext("pose") == "Left" and person.findtext("actions/walking") == "1"
    attrs = {a.findtext("name"): a.findtext("value") for a in car.iterfind("attributes/attribute")}
    assert attrs == {"color": "red", "rotation": "0.0"}
    assert doc.findtext("source/database") == "Unknown"
    assert (out / "labelmap.txt").read_text().splitlines() == [
        "# label:color_rgb:parts:actions",
        "background:0,0,0::",
        "car:10,10,128::",
        "person:0,128,0:head:walking,running",
    ]
    assert (out / "ImageSets/Main/default.txt").read_text() == "frame_000000\nframe_000001\n"


def test_round_trip_of_masks_tags_and_lists(tmp_path: Path) -> None:
    first, out, back = tmp_path / "a", tmp_path / "voc", tmp_path / "b"
    assert convert([str(VOC1)], "parquet", str(first), workers=1).ok
    assert convert([str(first)], "voc", str(out), workers=1).ok
    with Image.open(out / "SegmentationObject/2007_000001.png") as img:
        assert img.mode == "P" and np.asarray(img).max() == 1
    assert (out / "ImageSets/Main/aeroplane_train.txt").read_text() == "2007_000001  1\n"
    assert (out / "ImageSets/Main/aeroplane_test.txt").read_text() == "2007_000002 -1\n"
    assert (out / "ImageSets/Layout/train.txt").read_text() == "2007_000001\n"
    assert convert([str(out)], "parquet", str(back), source_format="voc", workers=1).ok
    keep = ("kind", "label", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "mask", "group_id")
    rows = [{k: a[k] for k in keep} for a in parquet_rows(back, "annotations")]
    assert rows == [{k: a[k] for k in keep} for a in parquet_rows(first, "annotations")]


def test_writer_counts_what_it_loses(tmp_path: Path) -> None:
    items = [{"item_id": "a", "file_name": "a.jpg", "width": 100, "height": 50}]
    base = {"item_id": "a", "label": "x", "units": "px"}
    box = {"bbox_x": 10.0, "bbox_y": 5.0, "bbox_w": 20.0, "bbox_h": 10.0}
    anns = [
        {"ann_id": "a/1", "kind": "rotated_bbox", "angle_deg": 30.0, **box, **base},
        {"ann_id": "a/2", "kind": "polygon", **base},
        {"ann_id": "a/3", "kind": "bbox", "outside": True, **box, **base},
        {"ann_id": "a/4", "kind": "caption", "text": "hi", **base},
    ]
    root = stage(tmp_path / "s", items, anns, points=[("a/2", "a", [0, 0, 4, 0, 4, 3])])
    out = tmp_path / "o"
    report = convert([root], "voc", str(out), source_format="parquet", workers=1)
    assert report.lossy == {
        "rotated boxes lost their angle": 1,
        "polygons written as boxes": 1,
        "outside shapes skipped": 1,
        "caption annotations not written: VOC has no place for them": 1,
    }
    objs = xml(out / "Annotations" / "a.xml").findall("object")
    assert [bndbox(o) for o in objs] == [("11", "6", "30", "15"), ("1", "1", "4", "3")]
    assert report.unaccounted() == {}


@pytest.mark.parametrize(("text", "copied"), [("false", False), ("no", False), ("true", True)])
def test_save_images_given_as_text_is_parsed(tmp_path: Path, text: str, copied: bool) -> None:
    out = tmp_path / "out"
    opts = WriteOptions(extra={"save_images": text})
    assert convert([str(VOC1)], "voc", str(out), write_options=opts, workers=1).ok
    assert (out / "JPEGImages" / "2007_000001.jpg").exists() is copied


def test_item_name_escaping_the_output_is_refused(tmp_path: Path) -> None:
    items = [{"item_id": "e", "file_name": "../../evil.jpg", "width": 10, "height": 10}]
    root = stage(tmp_path / "s", items)
    out = tmp_path / "deep" / "o"
    with pytest.raises(UnsafePathError):
        convert([root], "voc", str(out), source_format="parquet", workers=1)
    assert not out.exists() and not list(tmp_path.rglob("evil*"))
