"""Encord JSON label export: exact values from the seed examples and real samples, rejects,
malformed files, key order, streaming, round trips and Encord's own COCO output as an oracle."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import transforms
from pipelines import formats, masks
from pipelines.builder import parse_datetime
from pipelines.errors import ParseError
from pipelines.formats import encord as encord_format
from pipelines.formats._encord_shapes import bitmask_from_mask
from pipelines.formats.base import ReadOptions
from pipelines.runner import convert
from pipelines.schema import TABLES
from pipelines.staging import Staging
from pipelines.storage import Source
from tests.conftest import FIXTURES, PEER
from tests.rows import read_direct

SEEDS = FIXTURES / "encord"
SAMPLES = ("coco_exporter_project", "video_data_1", "image_group", "dicom", "image_skeleton")
W, H = 1920, 1080


def read(path: Path | str, **options) -> dict[str, list[dict]]:
    return read_direct(path, "encord", **options)


def by(rows: list[dict], **match) -> list[dict]:
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def one(rows: list[dict], **match) -> dict:
    found = by(rows, **match)
    assert len(found) == 1, (match, found)
    return found[0]


def attrs(t: dict, owner: str, source: str | None = None) -> dict:
    return {
        (a["key"], a["frame_index"]): a["value"]
        for a in t["attributes"]
        if a["owner_id"] == owner and (source is None or a["source"] == source)
    }


def xy(points: list[dict]) -> list[float]:
    """Vertices in order as a flat x, y list."""
    return [
        c for p in sorted(points, key=lambda p: (p["part"], p["idx"])) for c in (p["x"], p["y"])
    ]


def flat(pairs) -> list[float]:
    return [c for pair in pairs for c in pair]


def approx(a, b, tol=1e-9) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


# -- detection -------------------------------------------------------------------------


def test_detects_label_rows_and_leaves_coco_alone(peer: Path) -> None:
    for name in SAMPLES:
        assert formats.detect(Source(str(peer / "encord_json" / name)))[0][0] == "encord"
    for path in SEEDS.glob("*.json"):
        assert formats.detect(Source(str(path)))[0][0] == "encord", path
    for name in ("coco_exporter_project", "video_data_1"):
        found = dict(formats.detect(Source(str(peer / "encord_coco" / name / "coco.json"))))
        assert "encord" not in found and "coco" in found
    # The ontology next to the label rows is not a label file.
    tasks = formats.get("encord").plan_read(
        Source(str(peer / "encord_json/video_data_1")), ReadOptions()
    )
    assert [t.member for t in tasks] == ["label_row.json"]


# -- exact pixels on non-square media ------------------------------------------------------


def test_x_and_w_scale_by_width_y_and_h_by_height() -> None:
    """The documentation says x and h scale by the width; the geometry (and Encord's SDK
    and COCO exporter) scale x and w by the width, y and h by the height."""
    t = read(SEEDS / "seed_shapes.json")
    box = one(t["annotations"], native_id="box00001")
    assert (box["kind"], box["units"]) == ("bbox", "px")
    assert approx(box["bbox_x"], 0.6985 * W) and approx(box["bbox_w"], 0.1643 * W)
    assert approx(box["bbox_y"], 0.6204 * H) and approx(box["bbox_h"], 0.118 * H)
    assert approx(box["bbox_x"], 1341.12) and approx(box["bbox_y"], 670.032)
    assert approx(box["bbox_w"], 315.456) and approx(box["bbox_h"], 127.44)
    assert not approx(box["bbox_w"], 0.1643 * H)  # a swap cannot pass


def test_every_shape_in_pixels() -> None:
    t = read(SEEDS / "seed_shapes.json")
    anns, pts = t["annotations"], t["points"]

    rot = one(anns, native_id="rbox0001")
    assert rot["kind"] == "rotated_bbox" and rot["angle_deg"] == 305.7762
    assert [rot["bbox_x"], rot["bbox_y"], rot["bbox_w"], rot["bbox_h"]] == pytest.approx(
        [1341.12, 670.032, 315.456, 127.44]
    )

    ring = [
        (0.2423, 0.5115),
        (0.4167, 0.4218),
        (0.5821, 0.4641),
        (0.5808, 0.5756),
        (0.4564, 0.6397),
    ]
    for native, kind in (("poly0001", "polygon"), ("line0001", "polyline")):
        a = one(anns, native_id=native)
        assert a["kind"] == kind
        assert xy(by(pts, ann_id=a["ann_id"])) == pytest.approx(
            flat((x * W, y * H) for x, y in ring)
        )
        assert [a["bbox_x"], a["bbox_y"]] == pytest.approx([0.2423 * W, 0.4218 * H])

    point = one(anns, native_id="pnt00001")
    p = one(pts, ann_id=point["ann_id"])
    assert (point["kind"], p["x"], p["y"]) == (
        "point",
        pytest.approx(612.864),
        pytest.approx(167.076),
    )

    skel = one(anns, native_id="skel0001")
    sp = sorted(by(pts, ann_id=skel["ann_id"]), key=lambda p: p["idx"])
    assert skel["kind"] == "keypoints"
    assert [(p["name"], p["visibility"]) for p in sp] == [
        ("point_0", 2),  # visible: the key is left out
        ("point_1", 0),  # invisible
        ("point_2", 1),  # occluded
    ]
    assert xy(sp) == pytest.approx(
        [0.5719 * W, 0.7615 * H, 0.5428 * W, 0.6734 * H, 0.4865 * W, 0.6464 * H]
    )
    extras = json.loads(attrs(t, skel["ann_id"], "encord_layout")[("skeleton", None)])
    assert extras[1] == {
        "color": "#fcc400",
        "value": "point_1",
        "featureHash": "o1NKWqKP",
        "invisible": True,
    }


def test_bitmask_is_row_major_and_lands_where_it_was_drawn() -> None:
    t = read(SEEDS / "seed_shapes.json")
    m = one(t["annotations"], native_id="mask0001")
    assert (m["kind"], m["units"], m["mask_h"], m["mask_w"]) == ("mask", "px", H, W)
    # Drawn as a 200 wide, 100 tall rectangle at x=100, y=50: a transposed decode would
    # give a 100 × 200 box at (50, 100).
    assert [m["bbox_x"], m["bbox_y"], m["bbox_w"], m["bbox_h"]] == [100, 50, 200, 100]
    arr = masks.decode(m["mask"], H, W)
    assert arr[50:150, 100:300].all() and arr.sum() == m["area"] == 20_000
    # The seed document's 6 × 6 example: four 2 × 2 corners.
    tiny = one(t["annotations"], native_id="mask0002")
    expected = np.array([[1, 1, 0, 0, 1, 1]] * 2 + [[0] * 6] * 2 + [[1, 1, 0, 0, 1, 1]] * 2)
    assert (masks.decode(tiny["mask"], 6, 6) == expected).all()
    # And back: the writer's encoding is Encord's string again.
    assert bitmask_from_mask(tiny["mask"], 6, 6)["rleString"] == "02220N:0F20N"


def test_complex_polygons_keep_their_rings() -> None:
    t = read(SEEDS / "seed_shapes.json")
    a = one(t["annotations"], native_id="cplx0001")
    parts = Counter(p["part"] for p in by(t["points"], ann_id=a["ann_id"]))
    assert parts == {0: 4, 1: 3, 2: 3}  # outer, hole, second polygon
    assert attrs(t, a["ann_id"], "encord_layout") == {("polygon_rings", None): "[2,1]"}
    assert [a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"]] == pytest.approx(
        [0.1 * W, 0.1 * H, 0.8 * W, 0.3 * H]
    )


# -- every data type -----------------------------------------------------------------------


def test_single_image_with_frame_keyed_labels() -> None:
    t = read(SEEDS / "seed_image.json")
    (item,) = t["items"]
    assert (item["media_type"], item["width"], item["height"]) == ("image", W, H)
    assert item["file_name"] == "Image3.jpg" and item["parent_id"] is None
    assert item["label_status"] == "LABEL_IN_PROGRESS"
    assert item["created_at"] == datetime(2025, 1, 7, 16, 12, 23, tzinfo=timezone.utc)
    box = one(t["annotations"], kind="bbox")
    assert box["confidence"] == 1.0 and box["manual"] is True
    assert box["created_at"] == datetime(2025, 5, 28, 8, 51, 53, tzinfo=timezone.utc)
    assert approx(box["bbox_x"], 0.34688227662041876 * W)
    assert approx(box["bbox_h"], 0.41461619320558957 * H)
    assert attrs(t, box["ann_id"], "object_answers") == {("Size", None): "Medium"}
    assert attrs(t, box["ann_id"], "object")[("frame", None)] == "0"
    tag = one(t["annotations"], kind="tag")
    assert (tag["label"], tag["confidence"], tag["native_id"]) == ("Time of day", 1.0, "jiOiEq76")
    assert attrs(t, tag["ann_id"], "classification_answers") == {("Time of day", None): "Night"}
    row = attrs(t, item["item_id"], "label_row")
    assert json.loads(row[("export_history", None)])[0]["export_hash"] == "Gqh06ypx"
    assert (
        json.loads(row[("object_answers", None)])
        == json.loads((SEEDS / "seed_image.json").read_text())[0]["object_answers"]
    )


def test_image_group_and_sequence() -> None:
    t = read(SEEDS / "seed_image_group.json")
    images = by(t["items"], sequence_id="781dd0ff-e4c2-48f1-bcd1-09f2f0756701")
    assert [(i["file_name"], i["frame_index"], i["height"]) for i in images] == [
        ("rhein-hafen.jpg4", 0, 384),
        ("apple-pie.jpg", 1, 384),
    ]
    a0, a1 = sorted(by(t["annotations"], native_id="P6gqJT/3"), key=lambda a: a["bbox_x"])
    # The documentation's box keyed by its frame ({"0": {...}}) reads like a plain one.
    assert [a0["bbox_x"], a0["bbox_y"]] == pytest.approx([0.0153 * 512, 0.254 * 384])
    assert a0["confidence"] == 1.0 and a0["item_id"] != a1["item_id"]
    # The dynamic answer's range [[1, 1]] is the second image (data_sequence 1) only.
    assert ("Ripe", 1) in attrs(t, a1["ann_id"], "object_actions")
    assert not attrs(t, a0["ann_id"], "object_actions")
    seq = by(t["items"], sequence_id="881dd0ff-e4c2-48f1-bcd1-09f2f0756702")
    assert [i["frame_index"] for i in seq] == [0, 1]
    point = one(t["annotations"], native_id="Q6gqJT/4")
    p = one(t["points"], ann_id=point["ann_id"])
    assert (p["x"], p["y"], point["confidence"], point["manual"]) == (256, 96, 0.75, False)


def test_video_frames_tracks_and_dynamic_answers() -> None:
    t = read(SEEDS / "seed_video.json")
    video = one(t["items"], media_type="video")
    assert video["fps"] == pytest.approx(23.976023976023978) and video["duration_s"] == 29.0786
    frames = sorted(by(t["items"], parent_id=video["item_id"]), key=lambda i: i["frame_index"])
    assert [(f["frame_index"], f["width"], f["height"], f["media_type"]) for f in frames] == [
        (n, W, H, "frame") for n in range(3)
    ]
    assert {f["label_status"] for f in t["items"]} == {"LABELLED"}
    apples = sorted(by(t["annotations"], track_id="P6gqJT/3"), key=lambda a: a["frame_index"])
    assert [a["confidence"] for a in apples] == [1.0, 0.5, 1.0]
    assert [a["bbox_x"] for a in apples] == pytest.approx([0.0153 * W, 0.0253 * W, 0.0353 * W])
    for a in apples:
        assert attrs(t, a["ann_id"], "object_answers") == {("Size", None): "Medium"}
    # object_actions range [[1, 2]]: per frame, on the object's shape in that frame.
    assert [attrs(t, a["ann_id"], "object_actions") for a in apples] == [
        {},
        {("Peeled", 1): "yes"},
        {("Peeled", 2): "yes"},
    ]
    tags = by(t["annotations"], kind="tag")
    assert [tg["frame_index"] for tg in tags] == [0, 1]
    for tg in tags:
        assert attrs(t, tg["ann_id"], "classification_answers") == {
            ("Quality", None): "out of focus"
        }
    knife = one(t["annotations"], kind="polyline")
    assert [knife["bbox_x"], knife["bbox_y"], knife["bbox_w"], knife["bbox_h"]] == [
        960,
        270,
        480,
        270,
    ]


def test_dicom_slices_and_series_metadata() -> None:
    t = read(SEEDS / "seed_dicom.json")
    series = one(t["items"], media_type="dicom")
    meta = json.loads(series["metadata"])["data_unit"]
    assert meta["metadata"]["patient_id"] == "ENC-ORD-LUV-031023" and meta["data_links"] == {}
    sl = one(t["items"], media_type="frame")
    assert sl["native_id"] == "1.3.9.1.4.7.14219.5.2.8.1600.1202.0357967439694942"
    assert sl["media_uri"].startswith("cord-dicoms/H7sLTXjYbrou3GhfmHRiuE5m92/")
    assert (sl["width"], sl["height"]) == (512, 256)  # the slice's own size, given as text
    assert json.loads(sl["metadata"])["frame"]["metadata"]["multiframe_frame_number"] == "null"
    lungs = one(t["annotations"], kind="polygon")
    assert xy(by(t["points"], ann_id=lungs["ann_id"])) == pytest.approx(
        [0.2423 * 512, 0.5115 * 256, 0.4167 * 512, 0.4218 * 256, 0.5821 * 512, 0.4641 * 256]
    )
    state = one(t["annotations"], kind="tag")
    assert attrs(t, state["ann_id"], "classification_answers") == {("State", None): "Inhaled"}


def test_audio_text_and_data_groups() -> None:
    audio = read(SEEDS / "seed_audio.json")
    (item,) = audio["items"]
    assert (item["media_type"], item["width"], item["duration_s"]) == ("audio", None, 132.96327)
    obj = one(audio["annotations"], native_id="zcmSZzvI")
    assert (obj["kind"], obj["time_start_s"], obj["time_end_s"]) == ("time_range", 14.287, 51.843)
    song = one(audio["annotations"], native_id="yRY6RT5j")
    assert (song["label"], song["time_start_s"], song["time_end_s"]) == ("Good Song?", 0, 132.963)
    assert attrs(audio, song["ann_id"]) == {("Good Song?", None): "No "}

    text = read(SEEDS / "seed_text.json")
    span = one(text["annotations"], kind="text_span")
    html = json.loads(attrs(text, span["ann_id"])[("range_html", None)])
    assert (html["start"]["offset"], html["end"]["offset"]) == (125, 245)
    tag = one(text["annotations"], kind="tag")
    assert (tag["frame_start"], tag["frame_end"], tag["label"]) == (0, 0, "HTML Type")
    assert one(text["items"])["media_type"] == "text"

    group = read(SEEDS / "seed_data_group.json")
    (g,) = group["items"]
    assert g["media_type"] == "group" and not group["annotations"]
    children = json.loads(g["metadata"])["data_unit"]["metadata"]["children"]
    assert [c["name"] for c in children] == [
        "Blueberries-001.mp4",
        "Blueberries-002.mp4",
        "Cherries-001.mp4",
        "Cherries-002.mp4",
    ]


def test_real_samples_dates_both_ways(peer: Path) -> None:
    t = read(peer / "encord_json/coco_exporter_project")
    first = t["items"][0]
    assert first["created_at"] == parse_datetime("2023-12-01T10:29:57.901639+00:00")
    video = read(peer / "encord_json/video_data_1")
    assert one(video["items"], media_type="video")["created_at"] == datetime(
        2023, 2, 9, 14, 12, 3, tzinfo=timezone.utc
    )
    skeleton = read(peer / "encord_json/image_skeleton")
    # "visibility" given as words: visible, occluded, invisible, selfOccluded.
    assert [p["visibility"] for p in skeleton["points"]] == [2, 1, 0, 1]


# -- rejects and malformed files -------------------------------------------------------------


def test_rejects_carry_place_and_reason() -> None:
    t = read(SEEDS / "rejects.json")
    du = "$[0].data_units['bad00000-0000-4000-8000-0000000000a1'].labels.objects"
    got = [(r["location"], r["reason"], r["record_kind"]) for r in t["rejects"]]
    assert got == [
        (f"{du}[1]", "boundingBox.h is missing", "annotations"),
        (f"{du}[2]", "polygon[1].x is NaN", "annotations"),
        (
            f"{du}[3]",
            "rotatableBoundingBox.y = 6204 is absurd for a normalized coordinate (|v| > 10)",
            "annotations",
        ),
        (f"{du}[4]", "polyline object without its 'polyline' coordinates", "annotations"),
        (
            f"{du}[5]",
            "bitmask rleString cannot be decoded: run lengths cover 8 pixels, expected 6×6=36",
            "annotations",
        ),
        (
            "$[1].data_units['bad00000-0000-4000-8000-0000000000a2'].labels['first']",
            "frame key 'first' is not a number",
            "items",
        ),
    ]
    assert json.loads(t["rejects"][1]["record"])["objectHash"] == "bad00002"
    assert sorted(a["native_id"] for a in t["annotations"]) == ["good0001", "good0002"]


def test_run_report_reconciles_rejects(tmp_path: Path) -> None:
    report = convert([str(SEEDS / "rejects.json")], "parquet", str(tmp_path / "out"), workers=1)
    assert report.ok and report.rejects == 6
    assert report.counts["annotations"] == {"read": 7, "written": 2, "rejected": 5}
    assert report.counts["items"]["rejected"] == 1 and not report.unaccounted()


@pytest.fixture(params=["whole rows", "streamed rows"])
def path_mode(request, monkeypatch) -> str:
    """Rows parsed whole (orjson), or every row streamed frame by frame (ijson)."""
    if request.param == "streamed rows":
        monkeypatch.setattr(encord_format, "ROW_BYTES", 0)
    return request.param


MALFORMED = [
    # (text, mode, location starts with, reason contains)
    (
        b'[{"label_hash": "a", "data_units": {"d": {"labels": {"0": {"objects": [',
        None,
        "byte 71",
        "unexpected end of file",
    ),
    (b'"just text"', None, "byte 0", "not a JSON object or array"),
    (
        b'[{"label_hash": "a"}, {"label_hash": tru}]',
        "whole rows",
        "$[1], byte 37",
        "malformed JSON",
    ),
    (
        b'[{"label_hash": "a"}, {"label_hash": "b", "data_units": {"d": {"width": tru}}}]',
        "streamed rows",
        "$[1].data_units['d'] (read up to byte",
        "invalid JSON: lexical error",
    ),
]


MODES = ("whole rows", "streamed rows")
MALFORMED_BY_MODE = [
    (text, m, where, why) for text, mode, where, why in MALFORMED for m in (mode,) if m
] + [(text, m, where, why) for text, mode, where, why in MALFORMED if not mode for m in MODES]


@pytest.mark.parametrize(("text", "mode", "where", "why"), MALFORMED_BY_MODE)
def test_malformed_files_fail_with_file_and_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text, mode, where, why
) -> None:
    if mode == "streamed rows":
        monkeypatch.setattr(encord_format, "ROW_BYTES", 0)
    path = tmp_path / "broken.json"
    path.write_bytes(text)
    with pytest.raises(ParseError) as err:
        read(path)
    assert err.value.source == str(path) and err.value.location.startswith(where)
    assert why in err.value.reason
    report = convert(
        [str(path)], "parquet", str(tmp_path / "out"), source_format="encord", workers=1
    )
    assert len(report.failures) == 1 and str(path) in report.failures[0]


def test_bare_nan_is_a_rejected_coordinate(tmp_path: Path) -> None:
    """Python's json module writes NaN bare; in a row parsed whole it reaches the checks."""
    path = tmp_path / "nan.json"
    path.write_bytes(
        b'[{"label_hash": "a", "data_units": {"d": {"width": 10, "height": 10, "labels": '
        b'{"objects": [{"shape": "point", "point": {"0": {"x": NaN, "y": 0.5}}}]}}}}]'
    )
    (rej,) = read(path)["rejects"]
    assert rej["location"] == "$[0].data_units['d'].labels.objects[0]"
    assert rej["reason"] == "point[0].x is NaN"


# -- key order and streaming ---------------------------------------------------------------


def _canonical(t: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Tables as sorted row texts (floats to 9 digits), so row order does not count."""

    def text(row: dict) -> str:
        row = {k: round(v, 9) if isinstance(v, float) else v for k, v in row.items()}
        row.pop("source_uri", None)
        # Verbatim JSON (metadata, raw answers) keeps the source's key order: compare meaning.
        for k in ("metadata", "value"):
            if row.get(k) and row.get("value_type", "json") == "json":
                row[k] = orjson.loads(row[k])
        return orjson.dumps(row, default=str, option=orjson.OPT_SORT_KEYS).decode()

    return {name: sorted(text(r) for r in rows) for name, rows in t.items()}


def _reorder(value, *, sort: bool):
    """The same JSON with every object's keys reversed (or sorted, as `sort_keys` exports do)."""
    if isinstance(value, list):
        return [_reorder(v, sort=sort) for v in value]
    if isinstance(value, dict):
        keys = sorted(value) if sort else list(reversed(value))
        return {k: _reorder(value[k], sort=sort) for k in keys}
    return value


@pytest.mark.parametrize("name", ["seed_video.json", "seed_image_group.json", "seed_shapes.json"])
def test_key_order_does_not_change_the_tables(tmp_path: Path, path_mode: str, name: str) -> None:
    source = json.loads((SEEDS / name).read_text())
    du = next(iter(source[0]["data_units"].values()))
    keys = list(du)
    assert keys.index("width") > keys.index("labels") or name != "seed_video.json"
    expected = _canonical(read(SEEDS / name))
    for sort in (False, True):
        path = tmp_path / f"{sort}-{name}"
        path.write_text(json.dumps(_reorder(source, sort=sort)))
        assert _canonical(read(path)) == expected, sort


def test_data_units_as_a_list_read_like_a_map(tmp_path: Path, path_mode: str) -> None:
    """Older exports list the data units; width/height still come after the labels."""
    rows = json.loads((SEEDS / "seed_video.json").read_text())
    rows[0]["data_units"] = list(rows[0]["data_units"].values())
    path = tmp_path / "listed.json"
    path.write_text(json.dumps(rows))
    t = read(path)
    assert {(i["width"], i["height"]) for i in t["items"]} == {(W, H)}
    assert _canonical(t) == _canonical(read(SEEDS / "seed_video.json"))


def _long_video(path: Path, frames: int) -> None:
    labels = {
        str(n): {
            "objects": [
                {
                    "name": "car",
                    "shape": "bounding_box",
                    "objectHash": "car00001",
                    "color": "#fff",
                    "boundingBox": {"x": n / (2 * frames), "y": 0.5, "w": 0.1, "h": 0.2},
                }
            ],
            "classifications": [],
        }
        for n in range(frames)
    }
    row = {
        "label_hash": "long",
        "data_type": "video",
        "data_units": {
            "v": {
                "data_hash": "v",
                "data_type": "video/mp4",
                "labels": labels,
                "width": W,
                "height": H,
            }
        },
        "label_status": "LABELLED",
    }
    path.write_text(json.dumps([row]))


def test_long_rows_stream_in_bounded_batches(tmp_path: Path, path_mode: str) -> None:
    """A row whose width/height and label_status come after thousands of frames is not
    held whole: the light pass completes it and it is flushed between frames."""
    path = tmp_path / "long.json"
    _long_video(path, 150)
    fmt = formats.get("encord")
    (task,) = fmt.plan_read(Source(str(path)), ReadOptions(dataset="t", batch_rows=40))
    batches = [transforms.standard(b) for b in fmt.read(task)]
    sizes = [b.annotations.num_rows for b in batches]
    assert len(batches) >= 3 and max(sizes) <= 4 * 40 + 2
    streamed: dict[str, list[dict]] = {name: [] for name in TABLES}
    for b in batches:  # every annotation's item is in its batch, so pixels everywhere
        assert set(b.annotations.column("units").to_pylist()) <= {"px"}
        assert set(b.annotations.column("item_id").to_pylist()) <= set(
            b.items.column("item_id").to_pylist()
        )
        for name, table in b.tables().items():
            streamed[name].extend(table.to_pylist())
    assert _canonical(streamed) == _canonical(read(path))


# -- round trips -------------------------------------------------------------------------------


def _parquet(root: Path) -> dict[str, list[dict]]:
    out = {}
    for name in ("items", "annotations", "points", "attributes"):
        files = sorted((root / name).rglob("*.parquet"))
        out[name] = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []
    return out


ROW_KEYS = {
    "items": ("item_id",),
    "annotations": ("ann_id",),
    "points": ("ann_id", "part", "idx"),
    "attributes": ("owner_id", "source", "key", "frame_index"),
}


@pytest.mark.parametrize("case", ["peer samples", "seed examples"])
def test_roundtrip_field_by_field(tmp_path: Path, case: str) -> None:
    """Encord → Parquet → Encord → Parquet gives the same four tables, field by field."""
    if case == "peer samples":
        sources = [str(PEER / "encord_json" / name) for name in SAMPLES]
    else:
        sources = [str(p) for p in sorted(SEEDS.glob("seed_*.json"))]
    a, enc, b = tmp_path / "a", tmp_path / "enc", tmp_path / "b"
    assert convert(sources, "parquet", str(a), source_format="encord", workers=1).ok
    written = convert([str(a)], "encord", str(enc), workers=1)
    assert written.ok and not written.lossy
    assert written.counts["items"]["written"] == written.counts["items"]["read"]
    assert convert([str(enc)], "parquet", str(b), source_format="encord", workers=1).ok
    before, after = _parquet(a), _parquet(b)
    for table in before:
        assert len(after[table]) == len(before[table]), table
        keys = ROW_KEYS[table]
        x_rows = sorted(before[table], key=lambda r: tuple(str(r[k]) for k in keys))
        y_rows = sorted(after[table], key=lambda r: tuple(str(r[k]) for k in keys))
        for x, y in zip(x_rows, y_rows, strict=True):
            for column in x:
                if column == "source_uri":
                    continue
                if isinstance(x[column], float):
                    assert approx(x[column], y[column]), (table, column, x, y)
                else:
                    assert x[column] == y[column], (table, column, x[column], y[column])


def _same_json(a, b, path="$") -> list[str]:
    """Differences that matter: dates compared as instants, numbers within 1e-9."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k} missing" for k in a if k not in b]
        out += [f"{path}.{k} added" for k in b if k not in a and k != "polygons"]
        for k in a.keys() & b.keys():
            out += _same_json(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _same_json(x, y, f"{path}[{i}]")
        ]
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        return [] if approx(a, b) else [f"{path}: {a} != {b}"]
    if isinstance(a, str) and isinstance(b, str) and a != b and parse_datetime(a):
        return [] if parse_datetime(a) == parse_datetime(b) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_written_json_is_the_export_again(peer: Path, tmp_path: Path) -> None:
    """Every sample's label rows come back as they were: dates as the same instants, numbers
    within 1e-9; the one addition is `polygons` beside the legacy `polygon`."""
    sources = [peer / "encord_json" / name for name in SAMPLES]
    out = tmp_path / "enc"
    assert convert(
        [str(s) for s in sources], "encord", str(out), source_format="encord", workers=1
    ).ok
    original = []
    for src in sources:
        rows = json.loads(next(src.glob("label_row*.json")).read_text())
        original += rows if isinstance(rows, list) else [rows]
    written = json.loads((out / "label_rows.json").read_text())
    assert _same_json(original, written) == []


def test_writes_other_formats_as_encord(peer: Path, tmp_path: Path) -> None:
    coco = peer / "coco_instances/coco_instances"
    assert convert([str(coco)], "parquet", str(tmp_path / "a"), source_format="coco", workers=1).ok
    out = convert([str(tmp_path / "a")], "encord", str(tmp_path / "enc"), workers=1)
    assert out.ok and sorted(p.name for p in (tmp_path / "enc").iterdir()) == [
        "train.json",
        "val.json",
    ]
    rows = json.loads((tmp_path / "enc" / "val.json").read_text())
    (du,) = rows[0]["data_units"].values()
    objects = du["labels"]["objects"]
    assert {o["shape"] for o in objects} == {"polygon", "bitmask"}
    poly = next(o for o in objects if o["shape"] == "polygon")
    assert all(0 <= v["x"] <= 1 and 0 <= v["y"] <= 1 for v in poly["polygon"].values())
    assert convert(
        [str(tmp_path / "enc")], "parquet", str(tmp_path / "b"), source_format="encord", workers=1
    ).ok
    before = {a["kind"]: a for a in _parquet(tmp_path / "a")["annotations"]}
    after = {a["kind"]: a for a in _parquet(tmp_path / "b")["annotations"]}
    assert after["polygon"]["label"] == before["polygon"]["label"]
    for c in ("bbox_x", "bbox_y", "bbox_w", "bbox_h", "area"):
        assert approx(after["polygon"][c], before["polygon"][c]), c
    # The sample's crowd box ([0, 0, 1, 9]) disagrees with its own mask; through Encord the
    # box is the mask's, and the mask is the same.
    for c in ("mask", "mask_h", "mask_w"):
        assert after["mask"][c] == before["mask"][c], c
    assert [after["mask"][c] for c in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")] == [0, 0, 2, 10]
    # COCO's per-annotation attributes become the object's answers.
    answers = rows[0]["object_answers"][poly["objectHash"]]["classifications"]
    assert [(c["name"], c["answers"]) for c in answers] == [("x", 1), ("y", "hello")]


# -- Encord's own COCO exporter as an oracle --------------------------------------------------


def _our_images(staged: Path) -> dict[int, tuple]:
    """COCO image id → (data unit hash, frame) for our items, in the order the COCO writer
    numbers them (staging order, 1..N)."""
    groups = list(Staging(str(staged)).iter_items())
    by_id = {g.item["item_id"]: g.item for g in groups}
    out = {}
    for n, g in enumerate(groups, start=1):
        item = g.item
        if item["parent_id"]:
            du = json.loads(by_id[item["parent_id"]]["metadata"])["data_unit"]["data_hash"]
            out[n] = (du, str(item["frame_index"]), item["native_id"])
        else:
            out[n] = (
                json.loads(item["metadata"])["data_unit"]["data_hash"],
                None,
                item["media_type"],
            )
    return out


def _their_image(image: dict) -> tuple:
    parts = image["file_name"].split("/")
    if parts[0] == "images":
        return parts[1].rsplit(".", 1)[0], None
    return parts[1], parts[2].removesuffix(".jpg")  # videos/dicom/nifti: hash, frame or SOP uid


@pytest.mark.parametrize("name", ["coco_exporter_project", "video_data_1"])
def test_coco_agrees_with_encords_own_exporter(peer: Path, tmp_path: Path, name: str) -> None:
    if "coco" not in formats.available() or isinstance(formats.available()["coco"], str):
        pytest.fail("the COCO format is not available")
    staged, out = tmp_path / "staged", tmp_path / "coco"
    assert convert(
        [str(peer / "encord_json" / name)],
        "parquet",
        str(staged),
        source_format="encord",
        workers=1,
    ).ok
    assert convert([str(staged)], "coco", str(out), workers=1).ok
    ours = json.loads(next(out.rglob("*.json")).read_text())
    theirs = json.loads((peer / "encord_coco" / name / "coco.json").read_text())

    # Images: every one of Encord's has ours with the same size. Ours also lists the
    # video / DICOM / NIfTI items the frames belong to (they carry the media's fields).
    images = _our_images(staged)
    key_of = {}
    for img in ours["images"]:
        du, frame, extra = images[img["id"]]
        key_of[img["id"]] = (du, frame)
        if frame is not None:
            key_of.setdefault(("alias", img["id"]), (du, extra))  # a DICOM slice's SOP uid
    where = {k: i for i, k in key_of.items() if not isinstance(i, tuple)}
    where |= {k: i[1] for i, k in key_of.items() if isinstance(i, tuple)}
    our_images = {i["id"]: i for i in ours["images"]}
    matched = set()
    for img in theirs["images"]:
        mine = our_images[where[_their_image(img)]]
        assert (mine["width"], mine["height"]) == (img["width"], img["height"])
        matched.add(mine["id"])
    extra = {images[i][2] for i in our_images if i not in matched}
    assert extra <= {"video", "dicom", "nifti"}

    # Annotations: matched by image, category name and Encord's object hash.
    cats = {c["id"]: c for c in theirs["categories"]}
    our_cats = {c["id"]: c["name"] for c in ours["categories"]}
    mine = {
        (key_of[a["image_id"]], our_cats[a["category_id"]], a["attributes"]["track_id"]): a
        for a in ours["annotations"]
    }
    assert len(mine) == len(ours["annotations"]) == len(theirs["annotations"])
    for t in theirs["annotations"]:
        image = next(i for i in theirs["images"] if i["id"] == t["image_id"])
        key = (
            key_of[where[_their_image(image)]],
            cats[t["category_id"]]["name"],
            t["attributes"]["encord_track_uuid"],
        )
        o = mine[key]
        shape = cats[t["category_id"]]["supercategory"]
        if shape == "skeleton":
            assert o["keypoints"] == pytest.approx(t["keypoints"])
            hidden = t["keypoints"][2::3].count(0)
            if hidden:
                # Encord's box spans invisible points too; ours follows COCO, where v = 0
                # means "not labelled", and spans the labelled points only.
                xs = [
                    x for x, v in zip(t["keypoints"][0::3], t["keypoints"][2::3], strict=True) if v
                ]
                assert o["bbox"][0] == pytest.approx(min(xs))
                continue
        assert o["bbox"] == pytest.approx(t["bbox"]), (shape, key)
        if shape == "polygon":
            assert flat(o["segmentation"]) == pytest.approx(flat(t["segmentation"]))
            assert o["area"] == pytest.approx(t["area"])
        elif shape == "bitmask":
            assert o["segmentation"] == t["segmentation"] and o["area"] == t["area"]
        elif shape == "rotatable_bounding_box":
            assert o["attributes"]["rotation"] == t["attributes"]["rotation"]
        elif shape == "point":
            # Encord gives a point as a one-keypoint annotation; our COCO writer writes a
            # point as a zero-size box at the same place.
            assert o["bbox"][:2] == pytest.approx(t["keypoints"][:2])
        # polyline: Encord writes the path there and back as a "segmentation"; our COCO
        # writer writes polylines as their boxes, which agree above.


def test_a_polygon_with_a_vertex_without_coordinates_is_counted_lost(tmp_path: Path) -> None:
    """Its parts come as arrays, where the missing coordinate is NaN: the polygon is
    counted lost, not written with a null coordinate."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.conftest import ROOT

    source = ROOT / "tests/fixtures/example/annotations/instances_demo.json"
    staged = tmp_path / "staged"
    assert convert([str(source)], "parquet", str(staged), workers=1).ok
    path = next((staged / "points").rglob("*.parquet"))
    points = pq.read_table(path)
    x = points["x"].to_pylist()
    x[3] = None
    pq.write_table(points.set_column(points.schema.get_field_index("x"), "x", pa.array(x)), path)
    report = convert([str(staged)], "encord", str(tmp_path / "out"), workers=1)
    assert report.lossy["polygon annotations without their coordinates"] == 1
    [written] = (tmp_path / "out").glob("*.json")
    assert '"x":null' not in written.read_text().replace(" ", "")
