"""COCO: every peer sample round-trips field by field; bad input is rejected or named."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.errors import LabelflowError, ParseError
from pipelines.formats import coco
from pipelines.formats.base import ReadOptions
from pipelines.runner import convert
from pipelines.schema import Batch
from pipelines.storage import Source
from tests.conftest import PEER

SAMPLES = [
    "coco_instances/coco_instances",
    "coco_keypoints/coco_person_keypoints",
    "encord_coco/coco_exporter_project",
    "encord_coco/video_data_1",
]


def _plain(x):
    """JSON values compared as numbers: 2 and 2.0 are the same coordinate."""
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def _by_id(values: list[dict]) -> dict:
    return {v["id"]: _plain(v) for v in values}


@pytest.mark.parametrize("sample", SAMPLES)
def test_peer_sample_roundtrips_field_by_field(sample: str, tmp_path: Path) -> None:
    src = PEER / sample
    staged, out = tmp_path / "staged", tmp_path / "out"
    assert convert([str(src)], "parquet", str(staged), workers=1).ok
    report = convert([str(staged)], "coco", str(out), workers=1)
    assert report.ok and not report.lossy
    originals = sorted(src.rglob("*.json"))
    assert originals
    for original in originals:
        written = next((out / "annotations").glob(f"*{coco.subset_of(original.name)}.json"))
        a, b = json.loads(original.read_text()), json.loads(written.read_text())
        assert _by_id(b["images"]) == _by_id(a["images"])
        assert _by_id(b["annotations"]) == _by_id(a["annotations"])
        assert _by_id(b["categories"]) == _by_id(a["categories"])
        for key in set(a) - {"images", "annotations", "categories"}:
            assert _plain(b[key]) == _plain(a[key]), key


def _read(path: Path) -> Batch:
    source = Source(str(path))
    batches = [b for t in coco.plan_read(source, ReadOptions(dataset="t")) for b in coco.read(t)]
    return Batch.concat(batches)


def _doc(**over) -> dict:
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 1920, "height": 1080}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 3, "bbox": [10.5, 20.25, 30, 40],
             "area": 1200.0, "iscrowd": 0,
             "segmentation": [[10.5, 20.25, 40.5, 20.25, 40.5, 60.25], [0, 0, 1, 0, 1, 1]],
             "score": 0.9, "attributes": {"occluded": True, "color": "red"}, "extra": {"k": 1}},
        ],
        "categories": [{"id": 3, "name": "car", "supercategory": "vehicle"}],
    }  # fmt: skip
    doc.update(over)
    return doc


def test_polygon_parts_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "instances_train.json"
    path.write_text(json.dumps(_doc()))
    batch = _read(path)
    (ann,) = batch.annotations.to_pylist()
    assert (ann["kind"], ann["label"], ann["label_id"], ann["native_id"]) == (
        "polygon", "car", "3", "7"
    )  # fmt: skip
    assert (ann["bbox_x"], ann["bbox_y"], ann["bbox_w"], ann["bbox_h"]) == (10.5, 20.25, 30, 40)
    assert ann["confidence"] == 0.9 and ann["occluded"] is True and ann["iscrowd"] is False
    pts = batch.points.to_pylist()
    assert [(p["part"], p["idx"], p["x"], p["y"]) for p in pts[:4]] == [
        (0, 0, 10.5, 20.25), (0, 1, 40.5, 20.25), (0, 2, 40.5, 60.25), (1, 0, 0.0, 0.0)
    ]  # fmt: skip
    attrs = {(a["source"], a["key"]): a["value"] for a in batch.attributes.to_pylist()}
    assert attrs[("attributes", "color")] == "red"
    assert attrs[("coco", "extra")] == '{"k":1}'
    assert attrs[("coco", "supercategory")] == "vehicle"
    (item,) = batch.items.to_pylist()
    assert (item["width"], item["height"], item["subset"]) == (1920, 1080, "train")


def test_top_level_key_order_does_not_matter(tmp_path: Path) -> None:
    doc = _doc()
    first, second = tmp_path / "instances_a.json", tmp_path / "x" / "instances_a.json"
    second.parent.mkdir()
    first.write_text(json.dumps(doc))
    reordered = {k: doc[k] for k in ("annotations", "categories", "images")}
    second.write_text(json.dumps(reordered, indent=2))
    a, b = _read(first), _read(second)
    for name in ("items", "annotations", "points", "attributes"):
        ta, tb = getattr(a, name), getattr(b, name)
        if "source_uri" in ta.column_names:
            ta, tb = ta.drop_columns(["source_uri"]), tb.drop_columns(["source_uri"])
        assert ta.equals(tb), name


def test_uncompressed_rle_is_stored_compressed(tmp_path: Path) -> None:
    rle = {"size": [3, 2], "counts": [1, 2, 3]}  # column-major: 0, 1 1, 0 0 0
    doc = _doc(annotations=[{"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 1,
                             "segmentation": rle, "bbox": [0, 0, 1, 2], "area": 2}])  # fmt: skip
    path = tmp_path / "instances_x.json"
    path.write_text(json.dumps(doc))
    (ann,) = _read(path).annotations.to_pylist()
    from pipelines.masks import decode

    assert ann["kind"] == "mask" and ann["iscrowd"] is True
    assert decode(ann["mask"], 3, 2).ravel(order="F").tolist() == [0, 1, 1, 0, 0, 0]


def test_bad_records_go_to_rejects_with_place_and_reason(tmp_path: Path) -> None:
    text = json.dumps(
        _doc(
            annotations=[
                {"id": 1, "image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1]},
                {"id": 2, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 1]]},
                {"id": 3, "image_id": 1, "category_id": 3, "bbox": "wide"},
                {"id": 4, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]},
                {"id": 5, "image_id": 1, "category_id": 3, "bbox": [0, "NaNPLACEHOLDER", 1, 1]},
            ]
        )
    ).replace('"NaNPLACEHOLDER"', "NaN")
    src = tmp_path / "instances_bad.json"
    src.write_text(text)
    report = convert([str(src)], "parquet", str(tmp_path / "out"), workers=1)
    assert report.ok
    assert report.counts["annotations"] == {"read": 5, "written": 1, "rejected": 4}
    rejects = pq.read_table(tmp_path / "out" / "rejects").to_pylist()
    reasons = {r["location"]: r["reason"] for r in rejects}
    assert "image_id 99 not in images" in reasons["$.annotations[0]"]
    assert "even number" in reasons["$.annotations[1]"]
    assert "bbox must be 4 finite numbers" in reasons["$.annotations[2]"]
    assert "bbox must be 4 finite numbers" in reasons["$.annotations[4]"]
    assert all(r["source_uri"] == str(src) for r in rejects)


def test_truncated_file_names_file_and_offset(tmp_path: Path) -> None:
    src = tmp_path / "instances_t.json"
    text = json.dumps(_doc())
    src.write_text(text[: len(text) // 2])
    with pytest.raises(ParseError) as err:
        _read(src)
    assert str(src) in str(err.value) and f"byte {len(text) // 2}" in str(err.value)
    assert "truncated" in str(err.value)


def test_malformed_value_names_byte_offset(tmp_path: Path) -> None:
    src = tmp_path / "instances_m.json"
    text = json.dumps(_doc()).replace('"area": 1200.0', '"area": 12x0')
    src.write_text(text)
    with pytest.raises(ParseError) as err:
        _read(src)
    assert f"byte {text.index('12x0') + 2}" in str(err.value)


def test_failed_source_does_not_stop_the_others(tmp_path: Path) -> None:
    good, bad = tmp_path / "instances_good.json", tmp_path / "instances_bad.json"
    good.write_text(json.dumps(_doc()))
    bad.write_text(json.dumps(_doc())[:-40])
    out = tmp_path / "out"
    report = convert([str(bad), str(good)], "parquet", str(out), workers=1)
    assert not report.ok and str(bad) in report.failures[0]
    assert report.counts["annotations"]["written"] == 1
    assert pq.read_table(out / "annotations").num_rows == 1
    with pytest.raises(LabelflowError, match="truncated"):
        convert([str(bad), str(good)], "parquet", str(tmp_path / "o2"), workers=1, strict=True)
    assert not (tmp_path / "o2").exists()


def test_rerun_replaces_output(tmp_path: Path) -> None:
    src = tmp_path / "instances_a.json"
    src.write_text(json.dumps(_doc()))
    out = tmp_path / "out"
    for _ in range(2):
        assert convert([str(src)], "parquet", str(out), workers=1).ok
    assert pq.read_table(out / "annotations").num_rows == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_run_where_every_source_fails_keeps_previous_output(tmp_path: Path) -> None:
    good, bad = tmp_path / "instances_a.json", tmp_path / "instances_b.json"
    good.write_text(json.dumps(_doc()))
    bad.write_text(json.dumps(_doc())[:-40])
    out = tmp_path / "out"
    assert convert([str(good)], "parquet", str(out), workers=1).ok
    report = convert([str(bad)], "parquet", str(out), workers=1)
    assert not report.ok
    assert pq.read_table(out / "annotations").num_rows == 1


def test_captions_round_trip(tmp_path: Path) -> None:
    doc = {
        "images": [{"id": 3, "file_name": "c.jpg", "width": 4, "height": 2}],
        "annotations": [
            {"id": 11, "image_id": 3, "caption": "A cat on a mat."},
            {"id": 12, "image_id": 3, "caption": "Un chat \u00e9tendu."},
        ],
    }
    src = tmp_path / "captions_val.json"
    src.write_text(json.dumps(doc))
    batch = _read(src)
    assert [(a["kind"], a["text"]) for a in batch.annotations.to_pylist()] == [
        ("caption", "A cat on a mat."),
        ("caption", "Un chat \u00e9tendu."),
    ]
    out = tmp_path / "out"
    assert convert([str(src)], "coco", str(out), workers=1).ok
    written = json.loads((out / "annotations/captions_val.json").read_text())
    assert [(a["id"], a["image_id"], a["caption"]) for a in written["annotations"]] == [
        (11, 3, "A cat on a mat."),
        (12, 3, "Un chat \u00e9tendu."),
    ]


def test_memory_urls_in_and_out() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/lf-test/in/instances_m.json", json.dumps(_doc()).encode())
    report = convert(["memory://lf-test/in/instances_m.json"], "parquet", "memory://lf-test/out",
                     workers=1)  # fmt: skip
    assert report.ok, report.failures
    files = fs.find("/lf-test/out/annotations")
    assert len(files) == 1
    with fs.open(files[0], "rb") as f:
        assert pq.read_table(f).column("native_id").to_pylist() == ["7"]
