"""AIMMO JSON: exact values for every annotation type of the format document, the
count rules as rejects, the run-length mask scan order, and the round trip
AIMMO → Parquet → AIMMO compared document by document."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest

import transforms
from pipelines import formats, masks
from pipelines.docwrite import item_path
from pipelines.errors import LabelflowError, ParseError
from pipelines.formats._aimmo_rle import decode_mask, encode_mask
from pipelines.formats.base import ReadOptions, WriteOptions
from pipelines.masks import encode
from pipelines.runner import convert
from pipelines.schema import TABLES, Batch
from pipelines.storage import Source
from tests.conftest import FIXTURES

EXPORT = FIXTURES / "aimmo" / "export"
REJECTS = FIXTURES / "aimmo" / "rejects"
POLY = [
    (747, 937), (761, 867), (783, 780), (787, 719), (793, 652), (795, 587), (780, 575),
    (759, 557), (783, 588), (787, 629), (773, 768), (755, 861), (744, 923),
]  # fmt: skip


def _read(path: Path) -> dict[str, list[dict]]:
    fmt = formats.get("aimmo")
    source = Source(str(path))
    batches = [
        transforms.standard(b)
        for task in fmt.plan_read(source, ReadOptions(dataset="t"))
        for b in fmt.read(task)
    ]
    batch = Batch.concat(batches)
    for name, table in batch.tables().items():
        assert table.schema.equals(TABLES[name], check_metadata=False)
    return {name: t.to_pylist() for name, t in batch.tables().items()}


@pytest.fixture(scope="module")
def export() -> dict[str, list[dict]]:
    return _read(EXPORT)


def _ann(tables: dict, ann_id: str) -> dict:
    return next(a for a in tables["annotations"] if a["ann_id"] == ann_id)


def _item(tables: dict, item_id: str) -> dict:
    return next(i for i in tables["items"] if i["item_id"] == item_id)


def _attrs(tables: dict, owner: str) -> dict[str, tuple]:
    return {
        a["key"]: (a["value"], a["source"]) for a in tables["attributes"] if a["owner_id"] == owner
    }


def _points(tables: dict, ann_id: str) -> list[tuple]:
    rows = [p for p in tables["points"] if p["ann_id"] == ann_id]
    return [(p["x"], p["y"]) for p in sorted(rows, key=lambda p: (p["part"], p["idx"]))]


# -- detection ---------------------------------------------------------------


def test_detects_folder_and_single_document(tmp_path: Path) -> None:
    assert formats.detect(Source(str(EXPORT)))[0][0] == "aimmo"
    assert formats.get("aimmo").detect(Source(str(EXPORT / "keypoint.json"))).confidence >= 0.9
    coco = tmp_path / "instances.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert formats.get("aimmo").detect(Source(str(coco))) is None
    listing = tmp_path / "list.json"
    listing.write_text("[]")
    assert formats.get("aimmo").detect(Source(str(listing))) is None


def test_reads_a_zip_and_groups_documents_into_tasks(tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(EXPORT.glob("*.json")):
            zf.write(path, f"batch_5/{path.name}")
    tables = _read(archive)
    assert len(tables["items"]) == 16 and len(tables["annotations"]) == 18
    assert _ann(tables, "batch_5/obbox_v2/0")["angle_deg"] == 228.5
    fmt = formats.get("aimmo")
    tasks = fmt.plan_read(Source(str(EXPORT)), ReadOptions(workers=2))
    members = [m for t in tasks for m in t.context["members"]]
    assert len(tasks) == 8 and sorted(members) == sorted(p.name for p in EXPORT.glob("*.json"))
    assert len(fmt.plan_read(Source(str(EXPORT)), ReadOptions(workers=1))) == 1


# -- GT fields ---------------------------------------------------------------


def test_gt_fields_become_item_columns_metadata_and_attributes(export: dict) -> None:
    item = _item(export, "gt_fields")
    assert item["native_id"] == "620aea6c1e3c3ccd9cfd8bc9"
    assert item["file_name"] == "image (28).jpeg"
    assert item["media_uri"] == "/batch_5/20220624/daytime/image (28).jpeg"
    assert item["sequence_id"] == "620aea6c1e3c3ccd9cfd8bc8"
    assert (item["media_type"], item["width"], item["height"]) == ("image", 1920, 1080)
    meta = json.loads(item["metadata"])
    assert meta["parent_path"] == "/batch_5/20220624/daytime"
    assert meta["last_modifier_id"] == "5fc7323e8511afbb60e8554b"
    assert meta["last_workers"] == {
        "라벨링": "5fc7323e8511afbb60e8554b",
        "검수": None,
        "최종 검수": None,
    }
    attrs = _attrs(export, "gt_fields")
    assert attrs["tags"] == ('["car"]', "tags")
    assert attrs["parent_tags"] == ('["1차작업"]', "tags")
    tag = _ann(export, "gt_fields/label")
    assert (tag["kind"], tag["label"]) == ("tag", "Classification")


def test_classification_is_a_tag_with_its_attributes_and_tags_stay_absent(export: dict) -> None:
    tag = _ann(export, "classification/label")
    assert (tag["kind"], tag["label"]) == ("tag", "car")
    assert _attrs(export, "classification/label") == {
        "occlusion": ("Less than 30%", "classification")
    }
    assert _attrs(export, "classification") == {}  # no tags, no parent_tags: absent, not empty
    meta = json.loads(_item(export, "classification")["metadata"])
    assert list(meta["last_workers"]) == ["labeling", "inspection", "final inspection"]


# -- annotation types --------------------------------------------------------


def test_bbox_from_four_corners(export: dict) -> None:
    box = _ann(export, "bbox/0")
    assert box["kind"] == "bbox"
    assert box["native_id"] == "1-48f557c0-3fff-4227-bd18-8574ff7f8ad0"
    assert (box["bbox_x"], box["bbox_y"], box["bbox_w"], box["bbox_h"]) == (297, 307, 872, 223)
    assert box["units"] == "px" and box["label"] == "car"
    assert _attrs(export, "bbox/0") == {
        "is_parked": ("y", "attributes"),
        "occlusion": ("30%", "attributes"),
    }
    assert _ann(export, "gt_fields/0")["track_id"] == "1"


def test_obbox_v2_rect_and_degree(export: dict) -> None:
    rot = _ann(export, "obbox_v2/0")
    assert rot["kind"] == "rotated_bbox"
    assert (rot["bbox_x"], rot["bbox_y"], rot["bbox_w"], rot["bbox_h"]) == (1461, 570, 9, 21)
    assert rot["angle_deg"] == 228.5


def test_keypoint_names_and_visibility(export: dict) -> None:
    rows = [p for p in export["points"] if p["ann_id"] == "keypoint/0"]
    got = [(p["name"], p["x"], p["y"], p["visibility"]) for p in rows]
    assert got == [
        ("PointLabel#1", 0.0, 1.0, 2),
        ("PointLabel#2", 10.0, 231.0, 1),  # listed in invisible_keys
        ("PointLabel#3", 213.0, 322.0, 2),
    ]
    assert _ann(export, "keypoint/0")["kind"] == "keypoints"


def test_vertex_shapes_keep_every_point(export: dict) -> None:
    assert _points(export, "polygon/0") == POLY
    assert _points(export, "poly_seg/0") == POLY
    assert _ann(export, "poly_seg/0")["kind"] == "polygon"
    assert _attrs(export, "poly_seg/0")["type"] == ("poly_seg", "field")
    assert _points(export, "polyline/0") == [(747, 937), (761, 867), (783, 780)]
    cube = _points(export, "cuboid_2d/0")
    assert cube == [(0, 0), (100, 0), (100, 100), (0, 100), (200, 200), (300, 200), (300, 300),
                    (200, 300)]  # fmt: skip
    plain4, plain6 = _ann(export, "cuboid_plain/0"), _ann(export, "cuboid_plain/1")
    assert plain4["kind"] == plain6["kind"] == "cuboid_plain"
    assert len(_points(export, "cuboid_plain/1")) == 6
    # The box is the first four points; the side points stay points.
    for a in (plain4, plain6):
        assert (a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"]) == (1150, 365, 414, 226)


def test_segmentation_mask_of_the_document_example(export: dict) -> None:
    m = _ann(export, "segmentation_mask/0")
    assert (m["kind"], m["mask_h"], m["mask_w"]) == ("mask", 1080, 1920)
    canvas = masks.decode(m["mask"], 1080, 1920)
    expected = np.zeros((1080, 1920), dtype=np.uint8)
    # bound [[100, 200], [400, 300]]: rows of 300 pixels from x=100, y=200.
    expected[200, 123:400] = 1  # 23F, then 456T = 277 here ...
    expected[201, 100:279] = 1  # ... + 179 on the next row
    expected[202, 211:400] = 1  # 232F, then 234T = 189 here ...
    expected[203, 100:145] = 1  # ... + 45 on the next row; the rest is outside
    assert np.array_equal(canvas, expected)
    assert m["area"] == 690
    assert (m["bbox_x"], m["bbox_y"], m["bbox_w"], m["bbox_h"]) == (100, 200, 300, 4)
    assert _attrs(export, "segmentation_mask/0")["bound"] == ("[[100,200],[400,300]]", "field")


def test_mask_runs_are_scanned_row_by_row(export: dict) -> None:
    # "1F2T3F" over the 3 × 2 box at (2, 1): row-major sets (3, 1) and (4, 1);
    # column-major would set (2, 2) and (3, 1) instead.
    m = _ann(export, "mask_scan_order/0")
    canvas = masks.decode(m["mask"], 4, 8)
    assert sorted(zip(*np.nonzero(canvas)[::-1], strict=True)) == [(3, 1), (4, 1)]


def test_mask_codec_bounds() -> None:
    sub, left, top = decode_mask("1F3T", [[5, 6], [6, 7]])  # 4 pixels: inclusive corners
    assert (left, top) == (5, 6) and sub.tolist() == [[0, 1], [1, 1]]
    with pytest.raises(ValueError, match="runs cover 10 pixels"):
        decode_mask("10T", [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="runs at character 2"):
        decode_mask("3FT", [[0, 0], [4, 4]])
    canvas = np.zeros((6, 6), dtype=np.uint8)
    canvas[2:4, 1:5] = 1
    counts = encode(canvas)
    text, bound = encode_mask(counts, 6, 6)
    assert (text, bound) == ("8T", [[1, 2], [5, 4]])
    text, bound = encode_mask(counts, 6, 6, [[1, 2], [4, 3]])  # pixels on the corners: inclusive
    assert bound == [[1, 2], [4, 3]] and text == "8T"
    sub, left, top = decode_mask(text, bound)
    assert sub.sum() == 8 and sub.shape == (2, 4)


def test_mask_codec_round_trips_random_masks_and_bounds() -> None:
    """Whatever the bound given (around the pixels, cutting them, past the image, none,
    broken), the runs decode to the image's pixels."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 12, 2))
        canvas = (rng.random((h, w)) < rng.choice([0.0, 0.1, 0.5, 1.0])).astype(np.uint8)
        x0, y0 = (int(v) for v in rng.integers(-2, 8, 2))
        x1, y1 = x0 + int(rng.integers(0, 14)), y0 + int(rng.integers(0, 14))
        given = [None, [[x0, y0], [x1, y1]], [[x1, y1], [x0, y0]], "broken"][rng.integers(4)]
        text, bound = encode_mask(encode(canvas), h, w, given)
        sub, left, top = decode_mask(text, bound)
        back = np.zeros((h + 30, w + 30), dtype=np.uint8)  # room for a bound past the image
        rows, cols = np.nonzero(sub)
        back[rows + top + 10, cols + left + 10] = 1
        assert (back[10 : 10 + h, 10 : 10 + w] == canvas).all() and back.sum() == canvas.sum()


def test_cuboid_3d_position_size_rotation(export: dict) -> None:
    c = _ann(export, "point_cloud_cuboid/0")
    assert c["kind"] == "cuboid_3d"
    assert c["size"] == [4.760000000000003, 1.92, 1.96]
    assert c["position"] == [13.075738648931754, 4.250296285924759, -0.8600000000000001]
    assert c["rotation"] == [0.0, 0.0, 3.6739180754480634]
    assert c["track_id"] == "7"
    assert _attrs(export, "point_cloud_cuboid/0")["pointCount"] == ("6126", "field")
    item = _item(export, "point_cloud_cuboid")
    assert item["media_type"] == "point_cloud" and item["width"] is None


def test_lasso_indices_kept_verbatim(export: dict) -> None:
    lasso = _ann(export, "point_cloud_lasso/0")
    assert (lasso["kind"], lasso["text"]) == ("lasso", "111534-3-57-132-3-57-132-3-57-36-96-3")


def test_frame_range(export: dict) -> None:
    r = _ann(export, "video_frame_range/0")
    assert r["kind"] == "time_range"
    assert (r["frame_start"], r["frame_end"]) == (3028, 3159)
    assert (r["time_start_s"], r["time_end_s"]) == (101.03437770103437, 105.23858190523858)
    item = _item(export, "video_frame_range")
    assert (item["media_type"], item["fps"]) == ("video", 30.0)


def test_entity_text_span(export: dict) -> None:
    e = _ann(export, "text_entity/0")
    assert (e["kind"], e["label"], e["text"]) == ("text_span", "회사명", "에이모")
    assert (e["text_start"], e["text_end"]) == (10, 20)
    assert _item(export, "text_entity")["media_type"] == "text"


# -- rejects -----------------------------------------------------------------


def test_count_rules_reject_and_the_rest_converts(tmp_path: Path) -> None:
    report = convert([str(REJECTS)], "parquet", str(tmp_path / "out"), workers=1)
    assert report.ok, report.failures
    rejects = pq.read_table(tmp_path / "out" / "rejects").to_pylist()
    got = {(r["location"], r["reason"]) for r in rejects}
    assert got == {
        ("bbox_3_points.json: annotations[0] (id bad-bbox)", "bbox has 3 points; it must have 4"),
        (
            "frame_range_backwards.json: annotations[0] (id bad-range)",
            "endFrame 3028 is before startFrame 3159",
        ),
        (
            "cuboid_2d_doc_example.json: annotations[0] "
            "(id 1-8831725a-868c-4e48-a7f7-dea7c4c7be35)",
            "cuboid_2d has 4 points; a cuboid_2d must have 8",
        ),
        (
            "cuboid_2d_doc_example.json: annotations[1] (id bad-entity)",
            "entity end 20 must be greater than start 20",
        ),
        (
            "cuboid_2d_doc_example.json: annotations[2] (id unknown)",
            "unknown annotation type 'hexagon'",
        ),
        ("broken.json: line 3 column 1", "invalid JSON: unexpected end of data"),
    }
    kinds = {r["location"].split(":")[0]: r["record_kind"] for r in rejects}
    assert kinds["broken.json"] == "items" and kinds["bbox_3_points.json"] == "annotations"
    anns = pq.read_table(tmp_path / "out" / "annotations").to_pylist()
    assert sorted(a["native_id"] for a in anns) == ["good-polygon", "good-range"]
    assert report.counts["items"] == {"read": 4, "written": 3, "rejected": 1}
    assert report.counts["annotations"]["rejected"] == 5
    assert report.unaccounted() == {}


def test_malformed_single_file_is_a_parse_error_naming_file_and_place(tmp_path: Path) -> None:
    bad = tmp_path / "frame.json"
    bad.write_text('{"annotations": [], "file_id": "x",\n  "filename": }\n')
    fmt = formats.get("aimmo")
    (task,) = fmt.plan_read(Source(str(bad)), ReadOptions())
    with pytest.raises(ParseError) as err:
        list(fmt.read(task))
    assert err.value.source == str(bad) and err.value.location == "frame.json: line 2 column 15"
    report = convert([str(bad)], "parquet", str(tmp_path / "out"), workers=1)
    assert not report.ok and "frame.json: line 2 column 15: invalid JSON" in report.failures[0]


def test_fail_policy_stops_at_the_first_violation(tmp_path: Path) -> None:
    fmt = formats.get("aimmo")
    (task,) = fmt.plan_read(
        Source(str(REJECTS / "bbox_3_points.json")), ReadOptions(on_error="fail")
    )
    with pytest.raises(ParseError, match="bbox has 3 points"):
        list(fmt.read(task))


# -- writing -----------------------------------------------------------------


def test_roundtrip_aimmo_parquet_aimmo_document_by_document(tmp_path: Path) -> None:
    r1 = convert([str(EXPORT)], "parquet", str(tmp_path / "pq"), workers=1)
    r2 = convert([str(tmp_path / "pq")], "aimmo", str(tmp_path / "out"), workers=1)
    assert r1.ok and r2.ok, (r1.failures, r2.failures)
    assert r2.counts["annotations"]["written"] == 18 and r2.lossy == {}
    written = sorted(p.name for p in (tmp_path / "out").glob("*.json"))
    assert written == sorted(p.name for p in EXPORT.glob("*.json"))
    for path in EXPORT.glob("*.json"):
        before = json.loads(path.read_text())
        after = json.loads((tmp_path / "out" / path.name).read_text())
        for doc in (before, after):
            for ann in doc["annotations"]:
                if ann["type"] == "segmentation_mask":
                    # Runs are written out to the end of the bound; compare the pixels.
                    sub, left, top = decode_mask(ann.pop("mask"), ann["bound"])
                    ann["pixels"] = (left, top, sub.tolist())
        assert after == before, path.name


def test_mask_written_with_complete_runs(tmp_path: Path) -> None:
    convert([str(EXPORT / "segmentation_mask.json")], "parquet", str(tmp_path / "pq"), workers=1)
    convert([str(tmp_path / "pq")], "aimmo", str(tmp_path / "out"), workers=1)
    (ann,) = json.loads((tmp_path / "out" / "segmentation_mask.json").read_text())["annotations"]
    assert ann["mask"] == "23F456T232F234T29055F"  # 300 × 100 = 30000 pixels
    assert ann["bound"] == [[100, 200], [400, 300]]


def test_writes_other_formats_items(tmp_path: Path) -> None:
    itag = FIXTURES / "itag" / "templates" / "ocr.manifest"
    convert([str(itag)], "parquet", str(tmp_path / "pq"), workers=1)
    report = convert([str(tmp_path / "pq")], "aimmo", str(tmp_path / "out"), workers=1)
    assert report.ok, report.failures
    files = sorted((tmp_path / "out").rglob("*.json"))
    second = len(itag.read_bytes().split(b"\n")[0]) + 1  # item ids are byte offsets
    names = [f.relative_to(tmp_path / "out").as_posix() for f in files]
    assert names == ["ocr/0.json", f"ocr/{second}.json"]
    doc = orjson.loads(files[0].read_bytes())
    (poly,) = doc["annotations"]
    assert poly["type"] == "polygon" and poly["label"] == "Label 1"
    assert poly["points"][0] == [368.1112214498511, 71.72740814299901]
    assert poly["attributes"] == {"OCR result": "Financial consultant", "Single-choice": "Label 1"}
    assert doc["filename"] == "img6.jpeg"
    assert doc["parent_path"] == "oss://****.oss-cn-hangzhou.aliyuncs.com/demo_test/ocr_pic"
    assert doc["metadata"] == {"height": 1024, "width": 1024}


def test_sharded_write_tasks_and_stage_option() -> None:
    fmt = formats.get("aimmo")
    tasks = fmt.plan_write(None, WriteOptions(workers=3))
    assert [(t.shard, t.shards) for t in tasks] == [(0, 3), (1, 3), (2, 3)]
    with pytest.raises(LabelflowError, match="prefer_stage"):
        fmt.plan_write(None, WriteOptions(prefer_stage="final"))


def test_output_names_cannot_escape() -> None:
    assert item_path("batch/image (28).jpeg", ".json") == "batch/image (28).jpeg.json"
    climbed = item_path("../../etc/passwd", ".json")
    assert climbed.startswith("etc/passwd-") and ".." not in climbed
    assert ":" not in item_path("c:/x", ".json")
    assert item_path("a:b", ".json") != item_path("a_b", ".json")


def test_write_shards_cover_every_item_once(tmp_path: Path) -> None:
    convert([str(EXPORT)], "parquet", str(tmp_path / "pq"), workers=1)
    from pipelines.staging import Staging
    from pipelines.storage import Output

    fmt = formats.get("aimmo")
    staging, out = Staging(str(tmp_path / "pq")), Output(str(tmp_path / "out"))
    results = [fmt.write(t, staging, out) for t in fmt.plan_write(staging, WriteOptions(workers=3))]
    out.commit()
    files = [f for r in results for f in r.files]
    assert len(files) == len(set(files)) == 16
    assert sum(r.annotations for r in results) == 18
