"""Datumaro JSON: the peer samples' odd cases, every annotation type, errors, the writer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines import formats, jsonframe, masks
from pipelines.errors import ParseError
from pipelines.formats.base import ReadOptions
from pipelines.runner import convert
from pipelines.storage import Source
from tests.conftest import FIXTURES, PEER
from tests.rows import read_direct

DIVERSE = PEER / "datumaro" / "diverse"
SKELETON = PEER / "datumaro" / "with_skeleton"
ODD = FIXTURES / "datumaro" / "odd"


def _read(path: Path | str) -> dict[str, list[dict]]:
    return read_direct(path, "datumaro")


@pytest.fixture(scope="module")
def diverse() -> dict[str, list[dict]]:
    return _read(DIVERSE)


def test_odd_label_ids_are_kept_not_rejected(diverse) -> None:
    anns = {a["ann_id"]: a for a in diverse["annotations"]}
    null_label = anns["train/100/4"]
    assert (null_label["kind"], null_label["label"], null_label["label_id"]) == ("bbox", None, None)
    out_of_range = anns["train/21/2"]
    assert (out_of_range["label"], out_of_range["label_id"], out_of_range["group_id"]) == (
        None, "5", "42",
    )  # fmt: skip
    assert diverse["rejects"] == []


def test_duplicate_annotation_ids_stay_apart(diverse) -> None:
    fives = [a for a in diverse["annotations"] if a["native_id"] == "5"]
    assert [(a["ann_id"], a["kind"]) for a in fives] == [
        ("train/100/4", "bbox"), ("train/100/5", "keypoints"), ("train/100/6", "mask"),
    ]  # fmt: skip


def test_items_with_and_without_image_or_size(diverse) -> None:
    items = {i["item_id"]: i for i in diverse["items"]}
    assert set(items) == {
        "default/42", "default/43", "test/1", "test/42", "train/100", "train/21", "val/2",
    }  # fmt: skip
    assert (items["default/42"]["file_name"], items["default/42"]["width"]) == (None, None)
    # Datumaro's size is [height, width].
    assert (items["default/43"]["file_name"], items["default/43"]["height"],
            items["default/43"]["width"]) == ("43.qq", 2, 4)  # fmt: skip
    assert items["train/100"]["media_uri"].endswith("images/train/100.jpg")
    attr = [(a["key"], a["value"], a["value_type"]) for a in diverse["attributes"]
            if a["owner_kind"] == "item"]  # fmt: skip
    assert attr == [("a1", "5", "number"), ("a2", "42", "string")]


def test_every_type_maps_to_its_kind(diverse) -> None:
    anns = {a["ann_id"]: a for a in diverse["annotations"]}
    assert anns["train/100/0"]["text"] == "hello"
    assert (anns["train/100/2"]["kind"], anns["train/100/2"]["label"]) == ("tag", "cat2")
    box = anns["train/100/3"]
    assert (box["bbox_x"], box["bbox_y"], box["bbox_w"], box["bbox_h"]) == (1, 2, 3, 4)
    assert (box["confidence"], box["z_order"]) == (1.0, 1)  # attributes.score
    cuboid = anns["test/1/0"]
    assert (cuboid["position"], cuboid["rotation"], cuboid["size"], cuboid["occluded"]) == (
        [1, 2, 3], [2, 2, 4], [1, 3, 4], True,
    )  # fmt: skip
    mask = anns["train/100/6"]
    assert np.array_equal(masks.decode(mask["mask"], 2, 3), np.ones((2, 3), dtype=np.uint8))
    pts = [(p["x"], p["y"], p["name"], p["visibility"]) for p in diverse["points"]
           if p["ann_id"] == "train/100/5"]  # fmt: skip
    # label 0 has a points category naming two of the three points
    assert pts == [(1, 2, "cat1", 2), (2, 0, "cat2", 2), (1, 1, None, 2)]
    assert anns["train/100/5"]["kind"] == "keypoints"


def test_categories_become_label_attributes(diverse) -> None:
    labels = {(a["owner_id"], a["key"]): a["value"] for a in diverse["attributes"]
              if a["owner_kind"] == "label"}  # fmt: skip
    assert labels[("label:cat1", "color")] == "#800000"
    assert json.loads(labels[("label:cat0", "points")]) == {
        "labels": ["cat1", "cat2"], "joints": [[0, 1]],
    }  # fmt: skip


def test_skeleton_points_with_visibility_and_point_attributes() -> None:
    tables = _read(SKELETON)
    (ann,) = tables["annotations"]
    assert (ann["kind"], ann["label"], ann["occluded"], ann["keyframe"]) == (
        "keypoints", "skeleton-label", False, False,
    )  # fmt: skip
    assert [(p["name"], p["x"], p["y"], p["visibility"]) for p in tables["points"]] == [
        ("point1-label", 0.9, 3.53, 2),
        ("point3-label", 2.45, 7.6, 2),
        ("point2-label", 5.2, 2.5, 2),
    ]
    own = [(a["owner_id"], a["key"], a["value"]) for a in tables["attributes"]
           if a["owner_kind"] == "point"]  # fmt: skip
    assert own == [
        ("default/100/0#1", "point3-attribute-checkbox", "true"),
        ("default/100/0#2", "point2-attribute-text", "some text"),
    ]
    item = tables["items"][0]
    assert (item["width"], item["height"]) == (6, 10)


def test_categories_after_items_and_odd_records() -> None:
    tables = _read(ODD)
    anns = {a["native_id"]: a for a in tables["annotations"]}
    rotated = anns["1"]
    assert (rotated["kind"], rotated["label"], rotated["angle_deg"]) == ("rotated_bbox", "car", 90)
    assert (rotated["track_id"], rotated["occluded"], rotated["confidence"]) == ("3", True, 0.5)
    mask = anns["2"]  # uncompressed counts, column-major
    expected = np.zeros((4, 5), dtype=np.uint8)
    expected[1:4, 1] = 1
    assert np.array_equal(masks.decode(mask["mask"], 4, 5), expected)
    ellipse = anns["3"]
    assert (ellipse["kind"], ellipse["bbox_w"], ellipse["bbox_h"], ellipse["group_id"]) == (
        "ellipse", 4, 2, "7",
    )  # fmt: skip
    skeleton = [(p["name"], p["visibility"]) for p in tables["points"]
                if p["ann_id"] == anns["6"]["ann_id"]]  # fmt: skip
    assert skeleton == [("thumb", 1), ("index", 0)]
    custom = [(a["key"], a["source"]) for a in tables["attributes"]
              if a["owner_id"] == anns["7"]["ann_id"]]  # fmt: skip
    assert custom == [("custom", "datumaro_field")]
    assert [(r["location"], r["record_kind"], r["reason"]) for r in tables["rejects"]] == [
        ("$.items[0].annotations[3]", "annotations", "annotation type 'hash_key' has no mapping"),
        ("$.items[0].annotations[4]", "annotations", "visibility has 1 values for 2 points"),
        ("$.items[1]", "items", "item without an id"),
    ]


def test_a_truncated_file_fails_alone_naming_file_and_place(tmp_path: Path) -> None:
    folder = tmp_path / "export" / "annotations"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "datumaro" / "malformed" / "annotations" / "default.json", folder)
    shutil.copy(DIVERSE / "annotations" / "train.json", folder)
    report = convert([str(tmp_path / "export")], "parquet", str(tmp_path / "out"), workers=1)
    (failure,) = report.failures
    assert failure.startswith(f"{folder / 'default.json'}: byte 143: ")
    assert "inside 'items': truncated" in failure
    assert report.counts["items"]["written"] == 2  # train.json's items
    with pytest.raises(ParseError):  # a file alone fails as it is planned
        formats.get("datumaro").plan_read(Source(str(folder / "default.json")), ReadOptions())


def test_malformed_item_names_file_item_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "default.json"
    good = '{"id": "ü", "annotations": [{"id": 1, "type": "label"}]}, '
    path.write_text('{"categories": {}, "items": [' + good * 3 + '{"id": "b",, "x": 1}]}')
    fmt = formats.get("datumaro")
    (task,) = fmt.plan_read(Source(str(path)), ReadOptions())
    with pytest.raises(ParseError) as err:
        list(fmt.read(task))
    assert err.value.source.endswith("default.json")
    byte = path.read_bytes().index(b",,") + 1  # bytes, not characters: ü is two
    assert err.value.location == f"$.items[3], byte {byte}"


def test_detect_tells_datumaro_from_coco(tmp_path: Path) -> None:
    coco = tmp_path / "instances.json"
    coco.write_text('{"images": [], "annotations": [], "categories": [{"id": 1}]}')
    assert formats.get("datumaro").detect(Source(str(coco))) is None
    assert formats.detect(Source(str(DIVERSE)))[0][0] == "datumaro"
    single = Source(str(DIVERSE / "annotations" / "train.json"))
    assert formats.get("datumaro").detect(single).confidence > 0.5


# -- one file read by several tasks ---------------------------------------------------


@pytest.fixture
def small_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of a few kB split between tasks as a large one would be."""
    monkeypatch.setattr(jsonframe, "ONE_TASK_BYTES", 0)
    monkeypatch.setattr(jsonframe, "MIN_TASK_BYTES", 1)
    monkeypatch.setattr(jsonframe, "CHUNK_BYTES", 200)


def _synthetic(path: Path, ids: list) -> Path:
    categories = {"label": {"labels": [{"name": "car"}, {"name": "dog"}], "attributes": ["a"]}}
    items = []
    for n, i in enumerate(ids):
        box = [1, 2, 3, "x" if n == 23 else 4]  # one annotation to reject, far in
        anns = [
            {"id": 1, "type": "bbox", "label_id": n % 2, "bbox": box, "attributes": {"o": n}},
            {"id": 2, "type": "polygon", "label_id": 0, "points": [0, 0, n, 1, 2, 2]},
        ]
        image = {"path": f"{i}.jpg", "size": [48, 64]}
        items.append({"id": i, "annotations": anns, "image": image, "attr": {"frame": n}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": {"v": 1}, "categories": categories, "items": items}))
    return path


def _plan(path: Path, workers: int = 2) -> list:
    return formats.get("datumaro").plan_read(Source(str(path)), ReadOptions(workers=workers))


@pytest.mark.parametrize("source", [DIVERSE / "annotations" / "train.json", "synthetic", "zipped"])
def test_tasks_give_the_whole_file_s_tables(small_tasks, tmp_path: Path, source) -> None:
    if source in ("synthetic", "zipped"):
        source = _synthetic(tmp_path / "dm" / "annotations" / "default.json", list(range(40)))
    if source == "zipped":
        source = Path(shutil.make_archive(str(tmp_path / "dm"), "zip", tmp_path / "dm"))
    tasks = _plan(source)
    assert len(tasks) > 1
    assert [t.context["chunks"][0].first_index for t in tasks] == sorted(
        {t.context["chunks"][0].first_index for t in tasks}
    )
    assert read_direct(source, "datumaro", workers=2) == read_direct(source, "datumaro")


def test_repeated_ids_are_numbered_across_tasks_as_in_the_whole_file(
    small_tasks, tmp_path: Path
) -> None:
    path = _synthetic(tmp_path / "default.json", ["a", 7, "b", "7", *(i % 6 for i in range(36))])
    tasks = _plan(path)
    assert len(tasks) > 2 and any(t.context["repeats"] for t in tasks)
    whole, split = read_direct(path, "datumaro"), read_direct(path, "datumaro", workers=2)
    assert split == whole
    items = [i["item_id"] for i in whole["items"]]
    assert items[:5] == ["default/a", "default/7", "default/b", "default/7#2", "default/0"]
    assert items.count("default/5#6") == 1 and len(set(items)) == len(items)
    path = _synthetic(path, ["a", "a#2", *range(10, 40), "a"])  # a number an id spells
    assert len(_plan(path)) == 1
    assert len(_plan(_synthetic(path, ["a", 7, "b", "8", *range(10, 40)]))) > 2
    assert len(_plan(path, workers=1)) == 1


def test_items_not_an_array_are_rejected_and_categories_not_an_object_kept(tmp_path: Path) -> None:
    path = tmp_path / "default.json"
    path.write_text('{"categories": {"label": {"labels": [{"name": "car"}]}}, "items": {}}')
    tables = read_direct(path, "datumaro")
    assert [(r["location"], r["reason"]) for r in tables["rejects"]] == [
        ("$.items", "items is not an array")
    ]
    assert [a["owner_id"] for a in tables["attributes"]] == ["label:car"]
    path.write_text('{"categories": ["car"], "items": [{"id": "a"}]}')  # not an object: kept
    (kept,) = read_direct(path, "datumaro")["attributes"]
    assert (kept["owner_id"], kept["key"], kept["value"]) == ("dataset:default", "categories",
                                                             '["car"]')  # fmt: skip


# -- writer ------------------------------------------------------------------------


def test_writer_one_file_per_subset_with_categories(tmp_path: Path) -> None:
    report = convert([str(DIVERSE)], "datumaro", str(tmp_path / "dm"), workers=1)
    assert report.ok, report.failures
    files = sorted(p.name for p in (tmp_path / "dm" / "annotations").iterdir())
    assert files == ["default.json", "test.json", "train.json", "val.json"]
    train = json.loads((tmp_path / "dm" / "annotations" / "train.json").read_text())
    original = json.loads((DIVERSE / "annotations" / "train.json").read_text())
    assert train["categories"] == original["categories"]
    assert train["items"][1]["annotations"][2] == original["items"][1]["annotations"][2]


def test_cvat_skeletons_written_as_datumaro_skeletons(tmp_path: Path) -> None:
    src = FIXTURES / "cvat" / "images_task"
    report = convert([str(src)], "datumaro", str(tmp_path / "dm"), workers=1)
    assert report.ok, report.failures
    doc = json.loads((tmp_path / "dm" / "annotations" / "train.json").read_text())
    labels = [(lb["name"], lb["parent"]) for lb in doc["categories"]["label"]["labels"]]
    assert ("eye", "face") in labels
    colormap = {
        c["label_id"]: (c["r"], c["g"], c["b"]) for c in doc["categories"]["mask"]["colormap"]
    }
    assert colormap[0] == (0xFA, 0x32, 0x53)
    b = next(i for i in doc["items"] if i["id"] == "street/b")
    skel = next(a for a in b["annotations"] if a["type"] == "skeleton")
    names = [labels[e["label_id"]][0] for e in skel["elements"]]
    assert names == ["eye", "nose"]
    assert [e["visibility"] for e in skel["elements"]] == [[1], [0]]
    assert skel["elements"][0]["attributes"] == {"color": "blue"}
    a = next(i for i in doc["items"] if i["id"] == "street/a")
    box = a["annotations"][0]
    assert (box["type"], box["bbox"], box["attributes"]["rotation"]) == ("bbox", [1, 1, 4, 2], 30)
    assert report.lossy == {"cuboid_2d written as points": 1}
