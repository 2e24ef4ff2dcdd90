"""LabelMe: the 3.0 XML peer sample and a JSON fixture with every shape type, exact values,
malformed files with their place, detection against other JSON formats, and both writers."""

from __future__ import annotations

import base64
import io
import json
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import formats, masks
from pipelines.errors import ParseError
from pipelines.formats import labelme
from pipelines.formats.labelme_xml import format_attributes, parse_attributes
from pipelines.runner import convert
from pipelines.storage import Source
from tests.conftest import FIXTURES, PEER
from tests.rows import read

JSON = FIXTURES / "labelme" / "json"
BAD = FIXTURES / "labelme" / "bad"


def _by_label(t: dict) -> dict[str, dict]:
    return {a["label"]: a for a in t["annotations"]}


def _points(t: dict, ann_id: str) -> list[tuple[float, float]]:
    rows = sorted((p for p in t["points"] if p["ann_id"] == ann_id), key=lambda p: p["idx"])
    return [(p["x"], p["y"]) for p in rows]


def _attrs(t: dict, owner: str) -> dict:
    return {
        a["key"]: json.loads(a["value"]) if a["value_type"] != "string" else a["value"]
        for a in t["attributes"]
        if a["owner_id"] == owner
    }


@pytest.fixture(scope="module")
def xml_tables(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return read(PEER / "labelme" / "labelme_dataset", tmp_path_factory.mktemp("xml") / "t")


# -- LabelMe 3.0 XML ------------------------------------------------------------


def test_xml_item(xml_tables: dict) -> None:
    (item,) = xml_tables["items"]
    assert (item["item_id"], item["subset"], item["file_name"]) == (
        "subset1/img1",
        "subset1",
        "img1.png",
    )
    assert (item["width"], item["height"]) == (102, 77)  # ncols, nrows
    assert item["media_uri"].endswith("Images/subset1/img1.png")


def test_xml_polygon_date_and_user(xml_tables: dict) -> None:
    window = _by_label(xml_tables)["window"]
    assert window["kind"] == "polygon"
    assert _points(xml_tables, window["ann_id"]) == [(43, 34), (45, 34), (45, 37), (43, 37)]
    assert window["created_at"] == datetime(2012, 5, 25, 0, 9, 48, tzinfo=timezone.utc)
    assert window["created_by"] == "admin"
    assert window["occluded"] is None  # the object has no <occluded>
    assert window["area"] == 6.0


def test_xml_box_masks_and_occlusion(xml_tables: dict) -> None:
    anns = _by_label(xml_tables)
    b1 = anns["b1"]  # <type>bounding_box</type>
    assert (b1["kind"], b1["bbox_x"], b1["bbox_y"], b1["bbox_w"], b1["bbox_h"]) == (
        "bbox",
        13,
        19,
        10,
        11,
    )
    assert b1["occluded"] is True
    plate = anns["license plate"]
    pixels = masks.decode(plate["mask"], plate["mask_h"], plate["mask_w"])
    expected = np.zeros((77, 102), dtype=np.uint8)
    expected[67:69, 58:63] = 1
    assert np.array_equal(pixels, expected)
    m1 = anns["m1"]
    assert (m1["kind"], m1["area"]) == ("mask", 130.0)
    assert (m1["bbox_x"], m1["bbox_y"], m1["bbox_w"], m1["bbox_h"]) == (55, 14, 15, 10)


def test_xml_parts_become_groups(xml_tables: dict) -> None:
    groups = {a["label"]: a["group_id"] for a in xml_tables["annotations"]}
    assert groups == {
        "window": None,
        "license plate": None,
        "o1": "2",
        "q1": "2",
        "b1": "2",
        "m1": "5",
        "hg": "5",
    }
    o1 = _by_label(xml_tables)["o1"]
    assert _attrs(xml_tables, o1["ann_id"]) == {"a1": True, "hasparts": "3,4"}
    hg = _by_label(xml_tables)["hg"]
    assert _attrs(xml_tables, hg["ann_id"]) == {"gfd lkj lkj hi": True, "ispartof": "5"}


def test_free_text_attributes_round_trip() -> None:
    text = 'a1, n=3, f=1.5, t=true, s=x, q="12", e=a\\=b\\, c'
    values = parse_attributes(text)
    assert values == {"a1": True, "n": 3, "f": 1.5, "t": True, "s": "x", "q": "12", "e": "a=b, c"}
    assert parse_attributes(format_attributes(values)) == values
    tricky = {"sp": " padded ", "no": False, "bs": "ends\\", "k=,": 'q"'}
    assert parse_attributes(format_attributes(tricky)) == tricky


def test_xml_rejects_deleted_and_broken_objects(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><imagesize><nrows>10</nrows><ncols>10</ncols>"
        "</imagesize>"
        "<object><name>gone</name><deleted>1</deleted><id>0</id><polygon>"
        "<pt><x>1</x><y>1</y></pt><pt><x>5</x><y>1</y></pt><pt><x>5</x><y>5</y></pt>"
        "</polygon></object>"
        "<object><name>nomask</name><deleted>0</deleted><id>1</id><segm><mask>x.png</mask>"
        "</segm></object>"
        "<object><name>nan</name><deleted>0</deleted><id>2</id><polygon>"
        "<pt><x>1</x><y>1</y></pt><pt><x>q</x><y>1</y></pt></polygon></object>"
        "<object><name>ok</name><deleted>0</deleted><id>3</id><polygon>"
        "<pt><x>1</x><y>1</y></pt><pt><x>5</x><y>1</y></pt><pt><x>5</x><y>5</y></pt>"
        "</polygon></object></annotation>"
    )
    (tmp_path / "ds" / "broken.xml").write_text("<annotation><object><name>x</name></annotation>")
    t = read(tmp_path / "ds", tmp_path / "out", source_format="labelme_xml")
    rejects = {r["location"]: r["reason"] for r in t["rejects"]}
    assert rejects["a.xml: annotation/object[1]"] == "deleted object"
    assert rejects["a.xml: annotation/object[2]/segm/mask"] == "mask file 'x.png' not found"
    assert rejects["a.xml: annotation/object[3]/polygon/pt[2]"] == "x or y is not a number"
    assert rejects["broken.xml: line 1, column 48"].startswith("malformed XML")
    assert [a["label"] for a in t["annotations"]] == ["ok"]


# -- LabelMe JSON -----------------------------------------------------------------


@pytest.fixture(scope="module")
def json_tables(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return read(JSON, tmp_path_factory.mktemp("json") / "t")


def test_json_items(json_tables: dict) -> None:
    items = {i["item_id"]: i for i in json_tables["items"]}
    street, dog = items["train/street"], items["val/sub/dog"]
    assert (street["subset"], street["file_name"], street["width"], street["height"]) == (
        "train",
        "street.jpg",
        80,
        60,
    )
    assert _attrs(json_tables, "train/street") == {"night": True, "blurry": False}
    # imagePath "..\\images\\dog.png" from val/sub/: the image's path below the subset
    assert dog["file_name"] == "images/dog.png"
    assert (dog["width"], dog["height"]) == (8, 6)  # no imageWidth: the PNG header
    assert json.loads(dog["metadata"])["lineColor"] == [0, 255, 0, 128]


def test_json_shapes(json_tables: dict) -> None:
    anns = _by_label(json_tables)
    car = anns["car"]
    assert car["kind"] == "polygon" and car["group_id"] == "1" and car["occluded"] is True
    assert _points(json_tables, car["ann_id"]) == [(10, 10), (30, 10), (30, 20), (10, 20)]
    assert _attrs(json_tables, car["ann_id"]) == {"parked": False, "description": "red car"}
    plate = anns["plate"]  # corners given bottom-right first
    assert (plate["kind"], plate["bbox_x"], plate["bbox_y"], plate["bbox_w"], plate["bbox_h"]) == (
        "bbox",
        14,
        15,
        8,
        3,
    )
    wheel = anns["wheel"]  # centre (15, 20), rim (18, 24): radius 5
    assert (wheel["kind"], wheel["bbox_x"], wheel["bbox_y"], wheel["bbox_w"]) == (
        "ellipse",
        10,
        15,
        10,
    )
    assert (wheel["bbox_h"], wheel["angle_deg"]) == (10, 0.0)
    assert (anns["lane"]["kind"], anns["curb"]["kind"]) == ("polyline", "polyline")
    assert _points(json_tables, anns["curb"]["ann_id"])[1] == (40, 57.5)
    assert (anns["light"]["kind"], anns["stars"]["kind"]) == ("point", "points")


def test_json_mask_decodes_to_its_pixels(json_tables: dict) -> None:
    puddle = _by_label(json_tables)["puddle"]
    assert (puddle["mask_h"], puddle["mask_w"]) == (60, 80)
    pixels = masks.decode(puddle["mask"], 60, 80)
    expected = np.zeros((60, 80), dtype=np.uint8)
    expected[30:33, 40:44] = [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    assert np.array_equal(pixels, expected)


def test_malformed_json_is_rejected_with_file_and_place(tmp_path: Path) -> None:
    t = read(BAD, tmp_path / "out")
    rejects = {r["location"]: (r["reason"], r["record_kind"]) for r in t["rejects"]}
    assert rejects["truncated.json: line 4, column 45"] == (
        "malformed JSON: unexpected character, expected a string key",
        "items",
    )
    assert rejects["shapes_not_list.json: $.shapes"][0].startswith("missing or not a list")
    assert rejects["bad_shapes.json: $.shapes[1].points"] == (
        "a rectangle needs 2 point(s), not 3",
        "annotations",
    )
    assert rejects["bad_shapes.json: $.shapes[2]"][0] == "unknown shape_type 'ai_blob'"
    assert rejects["bad_shapes.json: $.shapes[4]"][0] == "a shape is a JSON object"


def test_malformed_json_raises_parse_error_naming_file_and_place() -> None:
    with pytest.raises(ParseError) as err:
        labelme.load(Source(str(BAD)), "truncated.json")
    assert err.value.source.endswith("truncated.json")
    assert err.value.location == "line 4, column 45"


def test_fail_policy_fails_the_run_naming_file_and_place(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    shutil.copy(BAD / "truncated.json", tmp_path / "ds")
    out = str(tmp_path / "o")
    kw = {"source_format": "labelme", "workers": 1, "on_error": "fail"}
    report = convert([str(tmp_path / "ds")], "parquet", out, **kw)
    assert not report.ok
    assert "truncated.json: line 4, column 45: malformed JSON" in report.failures[0]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"images": [], "annotations": [], "categories": []}, None),  # COCO
        ({"info": {}, "categories": {}, "items": []}, None),  # Datumaro
        ({"label_hash": "x", "data_units": {}}, None),  # Encord
        ({"shapes": [], "imagePath": "a.jpg"}, 0.9),
    ],
)
def test_detection_looks_at_top_level_keys(tmp_path: Path, doc: dict, expected) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    hit = labelme.detect(Source(str(path)))
    assert (hit.confidence if hit else None) == expected


def test_detection_when_image_path_is_past_the_head(tmp_path: Path) -> None:
    shape = {"label": "a", "points": [[1, 2]] * 10, "shape_type": "polygon"}
    doc = {"version": "5", "flags": {}, "shapes": [shape] * 1000, "imagePath": "a.jpg"}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(doc))
    assert path.stat().st_size > 65_536
    assert formats.detect(Source(str(path)))[0][0] == "labelme"


# -- writers ---------------------------------------------------------------------


def test_json_writer_document(tmp_path: Path) -> None:
    read(JSON, tmp_path / "a")
    report = convert([str(tmp_path / "a")], "labelme", str(tmp_path / "out"), workers=1)
    assert report.ok and report.lossy == {}
    doc = json.loads((tmp_path / "out" / "train" / "street.json").read_text())
    assert (doc["imagePath"], doc["imageHeight"], doc["imageWidth"]) == ("street.jpg", 60, 80)
    assert doc["flags"] == {"night": True, "blurry": False}
    shapes = {s["label"]: s for s in doc["shapes"]}
    assert shapes["plate"]["points"] == [[14.0, 15.0], [22.0, 18.0]]
    assert shapes["wheel"]["shape_type"] == "circle"
    assert shapes["wheel"]["points"] == [[15.0, 20.0], [20.0, 20.0]]
    assert shapes["car"]["flags"] == {"parked": False, "occluded": True}
    assert (shapes["car"]["group_id"], shapes["car"]["description"]) == (1, "red car")
    assert (shapes["lane"]["shape_type"], shapes["curb"]["shape_type"]) == ("line", "linestrip")
    puddle = shapes["puddle"]
    assert puddle["points"] == [[40, 30], [43, 32]]
    sub = np.asarray(Image.open(io.BytesIO(base64.b64decode(puddle["mask"]))))
    assert (sub > 0).astype(int).tolist() == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    dog = json.loads((tmp_path / "out" / "val" / "images" / "dog.json").read_text())
    assert (dog["imagePath"], dog["version"], dog["lineColor"]) == (
        "dog.png",
        "4.5.6",
        [0, 255, 0, 128],
    )


def test_xml_writer_from_json_counts_what_it_cannot_hold(tmp_path: Path) -> None:
    read(JSON, tmp_path / "a")
    report = convert([str(tmp_path / "a")], "labelme_xml", str(tmp_path / "out"), workers=1)
    assert report.ok, report.failures
    assert report.lossy == {
        "ellipses written as polygons": 1,
        "polyline annotations have no LabelMe 3.0 form": 2,
        "point annotations have no LabelMe 3.0 form": 1,
        "points annotations have no LabelMe 3.0 form": 1,
    }
    t = read(tmp_path / "out", tmp_path / "b")
    anns = _by_label(t)
    assert sorted(anns) == ["car", "dog", "plate", "puddle", "wheel"]
    assert anns["plate"]["kind"] == "bbox"
    assert anns["car"]["group_id"] == anns["plate"]["group_id"] is not None
    assert (tmp_path / "out" / "train" / "Masks" / "street_mask_7.png").is_file()
    assert (tmp_path / "out" / "train" / "street.xml").is_file()


def test_labelme_format_reads_xml_too_and_from_a_zip(peer: Path, tmp_path: Path) -> None:
    src = peer / "labelme" / "labelme_dataset"
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in src.rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(src).as_posix())
    t = read(archive, tmp_path / "out", source_format="labelme")
    assert len(t["annotations"]) == 7
    assert {i["source_format"] for i in t["items"]} == {"labelme_xml"}
    assert sum(a["kind"] == "mask" for a in t["annotations"]) == 2  # masks found in the zip


def test_colliding_stems_get_distinct_files(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    for name, image in (("a.json", "a.jpg"), ("a_png.json", "a.png")):
        shape = {"label": "x", "points": [[0, 0], [1, 1]], "shape_type": "rectangle"}
        doc = {"shapes": [shape], "imagePath": image, "imageHeight": 2, "imageWidth": 2}
        (ds / name).write_text(json.dumps(doc))
    read(ds, tmp_path / "a")
    report = convert([str(tmp_path / "a")], "labelme", str(tmp_path / "out"), workers=1)
    assert report.ok and report.counts["items"]["written"] == 2
    written = sorted(p.name for p in (tmp_path / "out").glob("*.json"))
    assert len(written) == 2 and all(n.startswith("a_") for n in written)


def test_size_from_embedded_image_data(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (7, 3)).save(buf, format="PNG")
    doc = {
        "shapes": [],
        "imagePath": "x.png",
        "imageData": base64.b64encode(buf.getvalue()).decode(),
    }
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "x.json").write_text(json.dumps(doc))
    t = read(tmp_path / "ds", tmp_path / "out")
    (item,) = t["items"]
    assert (item["width"], item["height"]) == (7, 3)
    assert "imageData" not in (item["metadata"] or "")  # the image itself is not kept


def test_xml_polygons_text_and_a_name_that_spells_their_marker(tmp_path: Path) -> None:
    """Polygons' vertices are spliced in as text after serializing: a label or attribute
    spelling the marker is escaped by lxml, so it is never taken for one, and every
    vertex lands in its own polygon."""
    from lxml import etree

    odd = "      <_pts/>\n"
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}],
        "categories": [{"id": 1, "name": odd}, {"id": 2, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12,
             "segmentation": [[1.5, 2, 4, 2, 4, 6.25]], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [5, 5, 10, 10], "area": 100,
             "segmentation": [], "iscrowd": 0},
        ],
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(coco))
    assert convert([str(tmp_path / "c.json")], "labelme_xml", str(tmp_path / "out"), workers=1).ok
    (doc,) = (tmp_path / "out").rglob("*.xml")
    objects = etree.parse(str(doc)).getroot().findall("object")
    assert [o.findtext("name") for o in objects] == [odd, "car"]
    points = [[(p.findtext("x"), p.findtext("y")) for p in o.find("polygon").findall("pt")]
              for o in objects]  # fmt: skip
    assert points == [
        [("1.5", "2"), ("4", "2"), ("4", "6.25")],
        [("5", "5"), ("15", "5"), ("15", "15"), ("5", "15")],
    ]
    assert [o.find("polygon")[0].tag for o in objects] == ["username", "username"]
