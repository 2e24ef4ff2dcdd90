"""The column path of the COCO reader gives the same tables as the row path.

Every case is read twice, once with the column mapper and once row by row, and
the five tables are compared whole: values, nulls, order.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipelines import jsonframe
from pipelines.errors import ParseError
from pipelines.formats import _coco_fast, coco
from pipelines.formats.base import ReadOptions
from pipelines.schema import TABLES, Batch
from pipelines.storage import Source
from tests.conftest import PEER
from tests.test_coco import SAMPLES


def _tables(path: Path, *, fast: bool, monkeypatch, on_error: str = "reject") -> dict:
    calls = {"emit": 0, "images": 0}
    real_emit = _coco_fast.ColumnMapper.emit

    def emit(self, *args, **kw):
        calls["emit"] += 1
        return real_emit(self, *args, **kw)

    def no_columns(*args):
        raise _coco_fast.Fallback
        yield  # pragma: no cover - makes this a generator like the real one

    real_images = coco.image_segments

    def image_segments(*args):
        for start, stop, columns in real_images(*args):
            calls["images"] += columns is not None
            yield start, stop, columns

    with monkeypatch.context() as m:
        m.setattr(_coco_fast.ColumnMapper, "emit", emit)
        m.setattr(coco, "image_segments", image_segments)
        if not fast:
            m.setattr(_coco_fast.ColumnMapper, "segments", no_columns)
            m.setattr(coco, "image_segments", no_columns)
        source = Source(str(path))
        options = ReadOptions(dataset="d", on_error=on_error)
        batches = [b for t in coco.plan_read(source, options) for b in coco.read(t)]
    out = {}
    for name, table in Batch.concat(batches).tables().items():
        cols = [c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c for c in table.columns]
        out[name] = pa.table(cols, names=table.column_names)
    out["_emits"] = calls["emit"]
    out["_image_blocks"] = calls["images"]
    return out


def _assert_same(path: Path, monkeypatch, *, expect_fast: bool | None = True) -> dict:
    fast = _tables(path, fast=True, monkeypatch=monkeypatch)
    rows = _tables(path, fast=False, monkeypatch=monkeypatch)
    assert rows["_emits"] == 0
    if expect_fast is not None:
        assert (fast["_emits"] > 0) == expect_fast
    for name in TABLES:
        assert fast[name].schema == rows[name].schema, name
        assert fast[name].num_rows == rows[name].num_rows, name
        for col in fast[name].column_names:
            a, b = fast[name].column(col), rows[name].column(col)
            assert a.equals(b), f"{name}.{col}: {a.to_pylist()[:5]} != {b.to_pylist()[:5]}"
    return fast


@pytest.mark.parametrize("sample", SAMPLES)
def test_peer_samples_same_tables(sample: str, monkeypatch) -> None:
    paths = sorted((PEER / sample).rglob("*.json"))
    assert paths
    for path in paths:
        _assert_same(path, monkeypatch, expect_fast=None)


def _odd_corpus(seed: int) -> dict:
    """Mostly ordinary annotations with every kind of odd record sprinkled in."""
    rng = random.Random(seed)
    images: list = [
        {"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48, "license": i % 3,
         "coco_url": rng.choice(["", None, f"http://x/{i}.jpg"]), "extra": {"k": [i]}}
        for i in range(1, 40)
    ]  # fmt: skip
    images.append({"id": "s7", "file_name": "s7.jpg", "width": 8, "height": 8})
    images += [
        {"file_name": "no-id.jpg", "width": 8, "height": 8},
        {"id": None, "file_name": "null-id.jpg"},
        {"id": 901, "file_name": "float.jpg", "width": 64.0, "height": 48},
        {"id": 902, "file_name": "bool.jpg", "width": True, "height": 48},
        {"id": 903, "file_name": "text.jpg", "width": "64", "height": 48},
        {"id": 904, "file_name": "half.jpg", "width": 64.5, "height": 48},
        {"id": 905},
        "not an image",
        {"id": 906.0, "file_name": "float-id.jpg", "width": None, "height": None},
    ]
    rng.shuffle(images)
    categories = [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in (1, 2, 5)]
    categories.append({"id": 9})  # no name

    def poly() -> list:
        return [round(rng.uniform(0, 60), 2) for _ in range(2 * rng.randint(3, 8))]

    def plain(i: int) -> dict:
        a = {
            "id": i,
            "image_id": rng.randint(1, 39),
            "category_id": rng.choice([1, 2, 5, 9]),
            "segmentation": [poly() for _ in range(rng.choice([1, 1, 1, 2]))],
            "area": round(rng.uniform(1, 900), 3),
            "bbox": [rng.randint(0, 9), 1.5, 20, 10.25],
            "iscrowd": 0,
        }
        r = rng.random()
        if r < 0.1:
            a["segmentation"] = {"size": [48, 64], "counts": [100, 20, 3072 - 120]}
            a["iscrowd"] = 1
        elif r < 0.15:
            a["segmentation"] = {"size": [48, 64], "counts": "P3c0"}
        elif r < 0.2:
            del a["segmentation"]
        elif r < 0.25:
            a["segmentation"] = []
        elif r < 0.3:
            a["bbox"] = []
        elif r < 0.33:
            del a["area"], a["bbox"]
        elif r < 0.36:
            a["segmentation"] = poly()  # a flat list: one part
        return a

    odd = [
        lambda a: a.update(bbox=[1, 2, 3]),
        lambda a: a.update(bbox=[1, 2, "3", 4]),
        lambda a: a.update(bbox="1,2,3,4"),
        lambda a: a.update(bbox=[1, None, 3, 4]),
        lambda a: a.update(area="big"),
        lambda a: a.update(area=None),
        lambda a: a.update(image_id=10_000),
        lambda a: a.update(image_id="s7"),
        lambda a: a.update(image_id="3"),
        lambda a: a.update(category_id=2.0),
        lambda a: a.update(category_id="1"),
        lambda a: a.pop("category_id"),
        lambda a: a.update(id="x-1"),
        lambda a: a.update(id=None),
        lambda a: a.pop("id"),
        lambda a: a.update(iscrowd=True),
        lambda a: a.update(iscrowd="no"),
        lambda a: a.update(segmentation=[[1, 2, 3]]),
        lambda a: a.update(segmentation=[[1, 2], []]),
        lambda a: a.update(segmentation=[[1, 2], 5]),
        lambda a: a.update(segmentation=[[1, "2"]]),
        lambda a: a.update(segmentation=[[1, None]]),
        lambda a: a.update(segmentation=[None, [1, 2, 3, 4]]),
        lambda a: a.update(segmentation=[[1, 2, 3, 4], None]),
        lambda a: a.update(segmentation=[[True, 2, 3, 4]]),
        lambda a: a.update(segmentation=[[1e308, 1e308, 1, 1]]),
        lambda a: a.update(segmentation={"size": [48, 64], "counts": [1, 2]}),
        lambda a: a.update(segmentation={"counts": "x"}),
        lambda a: a.update(segmentation={}),
        lambda a: a.update(segmentation="poly"),
        lambda a: a.update(segmentation=0),
        lambda a: a.update(score=0.5),
        lambda a: a.update(attributes={"occluded": True, "rotation": 30, "color": "red"}),
        lambda a: a.update(keypoints=[1, 2, 2, 3, 4, 0], num_keypoints=1),
        lambda a: a.update(caption="two dogs"),
        lambda a: a.update(extra_key={"nested": [1]}),
        lambda a: a.update(bbox=[0, 0, -1e308, -1e308]),
    ]
    annotations: list = []
    for i in range(600):
        a = plain(i + 1)
        if rng.random() < 0.08:
            rng.choice(odd)(a)
        annotations.append(a)
    annotations.insert(17, "not an object")
    annotations.insert(300, None)
    annotations.insert(301, [1, 2])
    return {"info": {"v": 1}, "images": images, "annotations": annotations,
            "categories": categories}  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("chunk_bytes", [700, 5000, 1 << 20])
def test_odd_records_same_tables(seed: int, chunk_bytes: int, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "instances_odd.json"
    path.write_text(json.dumps(_odd_corpus(seed)))
    monkeypatch.setattr(jsonframe, "CHUNK_BYTES", chunk_bytes)
    if seed != 1:  # images and annotations in tasks of their own, as for a big file
        monkeypatch.setattr(jsonframe, "ONE_TASK_BYTES", 0)
        monkeypatch.setattr(jsonframe, "MIN_TASK_BYTES", 2000)
    fast = _assert_same(path, monkeypatch)
    tasks = coco.plan_read(Source(str(path)), ReadOptions(dataset="d"))
    roles = [t.context["role"] for t in tasks]
    if seed == 1:
        assert roles == ["all"]
    else:
        assert roles[0] == "images"
        assert set(roles[1:]) == {"annotations"}
        assert len(roles) > (2 if chunk_bytes < 2000 else 1)
    assert fast["rejects"].num_rows > 0
    assert "items" in fast["rejects"].column("record_kind").to_pylist()
    assert fast["_image_blocks"] > 0
    assert fast["annotations"].num_rows > 500
    assert set(fast["annotations"].column("kind").to_pylist()) >= {"polygon", "mask", "bbox"}


def test_too_many_odd_rows_take_the_row_path(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "instances_odd.json"
    path.write_text(json.dumps(_odd_corpus(4)))
    monkeypatch.setattr(_coco_fast, "MAX_ODD_ROWS", 0)
    _assert_same(path, monkeypatch, expect_fast=False)


def test_nan_chunk_parsed_by_the_standard_parser(tmp_path: Path, monkeypatch) -> None:
    doc = _odd_corpus(5)
    doc["annotations"][3]["bbox"] = [math.nan, 1, 2, 3]
    doc["annotations"][40]["segmentation"] = [[1, 2, math.inf, 4]]
    path = tmp_path / "instances_nan.json"
    path.write_text(json.dumps(doc))
    fast = _assert_same(path, monkeypatch)
    reasons = fast["rejects"].column("reason").to_pylist()
    assert any("bbox must be 4 finite numbers" in r for r in reasons)
    assert any("not a finite number" in r for r in reasons)


def test_fail_policy_stops_at_the_same_record(tmp_path: Path, monkeypatch) -> None:
    doc = _odd_corpus(6)
    doc["annotations"][250]["bbox"] = [1, 2]
    path = tmp_path / "instances_fail.json"
    path.write_text(json.dumps(doc))
    errors = []
    for fast in (True, False):
        with pytest.raises(ParseError) as err:
            _tables(path, fast=fast, monkeypatch=monkeypatch, on_error="fail")
        errors.append(str(err.value))
    assert errors[0] == errors[1]


def test_image_ids_compare_as_text() -> None:
    raw = [7, 12, -3, 7, "5", "007", "abc", "1.0", None, 2**70]
    ints = [v for v in raw if type(v) is int and abs(v) < 2**63]
    texts = {str(v) for v in raw if not (type(v) is int and abs(v) < 2**63)}
    ids = _coco_fast.ImageIds(np.array(ints, dtype=np.int64), texts)
    reference = {str(v) for v in raw}
    for text in ["7", "12", "-3", "5", "007", "7.0", "abc", "1.0", "None", "8", "-0", "0", ""]:
        assert (text in ids) == (text in reference), text
    probe = [7, 5, 8, 12, -3, 0, 2**62]
    expected = [str(v) in reference for v in probe]
    assert ids.has_ints(np.array(probe, dtype=np.int64)).tolist() == expected
    assert ids.ints.tolist() == [-3, 5, 7, 12]  # sorted, each once


_CVAT_ATTRIBUTES = [
    {"occluded": False},
    {"occluded": True, "rotation": 30.5},
    {"occluded": False, "rotation": 0.0},
    {"rotation": 15},
    {"rotation": "12"},
    {"track_id": 3, "keyframe": True},
    {"track_id": "t1", "keyframe": "yes", "occluded": 1},
    {"track_id": None, "rotation": None},
    {},
    {"color": "red", "size": [1, 2], "n": 2.5, "none": None, "flag": False},
    {"rotation": True},
    {"rotation": 2**60},
    {"rotation": 10**400},
]
_ODD_ATTRIBUTES = [None, [1, 2], "occluded"]


@pytest.mark.parametrize("seed", [1, 2])
def test_cvat_attributes_same_tables(seed: int, tmp_path: Path, monkeypatch) -> None:
    """CVAT writes `attributes` on every annotation: those rows are mapped by columns
    too, with the same columns, kinds and attribute rows (in the same order)."""
    rng = random.Random(seed)
    doc = _odd_corpus(seed)
    for a in doc["annotations"]:
        if isinstance(a, dict) and "attributes" not in a:
            odd = rng.random() < 0.04
            a["attributes"] = rng.choice(_ODD_ATTRIBUTES if odd else _CVAT_ATTRIBUTES)
    path = tmp_path / "instances_cvat.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setattr(jsonframe, "CHUNK_BYTES", 5000)
    fast = _assert_same(path, monkeypatch)
    kinds = set(fast["annotations"].column("kind").to_pylist())
    assert {"rotated_bbox", "bbox", "polygon", "mask"} <= kinds
    sources = fast["attributes"].column("source").to_pylist()
    assert sources.count("attributes") > 500
    assert "coco" in sources  # an odd `attributes` value, kept by the row path
