"""iTAG manifests: the three image templates of the format document (OCR, object
detection, classification) with exact values, review stages, a broken line,
byte-range splitting of a large manifest, the round trip iTAG → Parquet → iTAG
compared line by line, and the column path against the row path, table by table,
on a manifest full of odd lines."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import transforms
from pipelines import formats
from pipelines.docwrite import STAGES
from pipelines.errors import LabelflowError
from pipelines.formats import itag
from pipelines.formats._itag_write import label_fields, manifest_line
from pipelines.formats.base import ReadOptions, WriteOptions, WriteResult
from pipelines.runner import convert
from pipelines.schema import TABLES, Batch
from pipelines.staging import ItemGroup
from pipelines.storage import Source
from tests.conftest import FIXTURES

ROOT = FIXTURES / "itag"
TEMPLATES = ROOT / "templates"
OCR_KEY = "label-144863699223676****"


def _read(path: Path) -> dict[str, list[dict]]:
    fmt = formats.get("itag")
    batches = [
        transforms.standard(b)
        for task in fmt.plan_read(Source(str(path)), ReadOptions(dataset="t"))
        for b in fmt.read(task)
    ]
    batch = Batch.concat(batches)
    for name, table in batch.tables().items():
        assert table.schema.equals(TABLES[name], check_metadata=False)
    return {name: t.to_pylist() for name, t in batch.tables().items()}


def _attrs(tables: dict, owner: str, source: str) -> dict:
    return {
        a["key"]: a["value"]
        for a in tables["attributes"]
        if a["owner_id"] == owner and a["source"] == source
    }


def _points(tables: dict, ann_id: str) -> list[list[float]]:
    rows = sorted((p for p in tables["points"] if p["ann_id"] == ann_id), key=lambda p: p["idx"])
    return [[p["x"], p["y"]] for p in rows]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- detection ---------------------------------------------------------------


def test_detects_manifests_and_not_other_json(tmp_path: Path) -> None:
    assert formats.detect(Source(str(TEMPLATES)))[0][0] == "itag"
    found = formats.get("itag").detect(Source(str(ROOT / "stages.manifest")))
    assert found is not None and found.confidence >= 0.9
    unlabeled = tmp_path / "input.manifest"
    unlabeled.write_text('{"data":{"source":"oss://bucket/a.jpg"}}\n')
    assert formats.get("itag").detect(Source(str(unlabeled))).confidence == 0.6
    aimmo = FIXTURES / "aimmo" / "export" / "bbox.json"
    assert formats.get("itag").detect(Source(str(aimmo))) is None
    other = tmp_path / "rows.jsonl"
    other.write_text('{"image": "a.jpg", "label": "cat"}\n')
    assert formats.get("itag").detect(Source(str(other))) is None


# -- the three templates -------------------------------------------------------


def test_ocr_template(tmp_path: Path) -> None:
    t = _read(TEMPLATES / "ocr.manifest")
    labeled, unlabeled = t["items"]
    assert labeled["media_uri"] == (
        "oss://****.oss-cn-hangzhou.aliyuncs.com/demo_test/ocr_pic/img6.jpeg"
    )
    assert (labeled["file_name"], labeled["width"], labeled["height"]) == ("img6.jpeg", 1024, 1024)
    assert labeled["label_status"] == "labeled"
    (poly,) = t["annotations"]
    assert (poly["kind"], poly["label"], poly["text"]) == (
        "polygon",
        "Label 1",
        "Financial consultant",
    )
    assert poly["native_id"] == "ecdb7552-2a4e-4d0e-8abb-0f1a2dc0****"
    assert _points(t, poly["ann_id"]) == [
        [368.1112214498511, 71.72740814299901],
        [444.34359483614696, 71.72740814299901],
        [444.34359483614696, 106.26762661370405],
        [368.1112214498511, 106.26762661370405],
    ]
    assert _attrs(t, poly["ann_id"], "labels") == {
        "OCR result": "Financial consultant",
        "Single-choice": "Label 1",
    }
    assert _attrs(t, poly["ann_id"], "itag") == {
        "stage": "label",
        "label_key": OCR_KEY,
        "result": "0",
        "questionId": "1",
        "markTitle": "OCR label configuration",
    }
    # The input line (no label key) is an unlabeled item of the same image.
    assert unlabeled["media_uri"] == labeled["media_uri"]
    assert unlabeled["label_status"] == "unlabeled" and unlabeled["width"] is None


def test_detection_template() -> None:
    t = _read(TEMPLATES / "detection.manifest")
    (poly,) = t["annotations"]
    assert (poly["label"], poly["text"]) == ("Label 1", None)
    assert _points(t, poly["ann_id"])[1] == [911.0109090909091, 255.0981818181818]
    assert poly["bbox_x"] == 499.93454545454546
    assert poly["bbox_w"] == 911.0109090909091 - 499.93454545454546
    assert len(t["items"]) == 2


def test_classification_template_gives_tags() -> None:
    t = _read(TEMPLATES / "classification.manifest")
    tags = [(a["kind"], a["label"]) for a in t["annotations"]]
    assert tags == [("tag", "Label 1"), ("tag", "Label 2")]
    for a in t["annotations"]:
        assert _attrs(t, a["ann_id"], "itag")["markTitle"] == "Multiple-choice"
    assert t["points"] == []


def test_label_fields_rule() -> None:
    assert label_fields({"OCR识别结果": "理财顾问", "单选": "标签1"}) == ("OCR识别结果", "单选")
    assert label_fields({"boundingbox": "标签2"}) == (None, "boundingbox")
    assert label_fields({"multi": ["a", "b"], "n": 3}) == (None, "multi")
    assert label_fields({}) == (None, None)


# -- stages, v1 manifests ----------------------------------------------------


def test_every_review_stage_is_kept() -> None:
    t = _read(ROOT / "stages.manifest")
    first, v1 = t["items"]
    assert first["label_status"] == "verified" and v1["label_status"] == "labeled"
    assert v1["media_uri"] == "oss://itag-demo/pics/fruit/apple-2.jpg"  # data.picUrl
    polys = [a for a in t["annotations"] if a["kind"] == "polygon"]
    got = [(_attrs(t, a["ann_id"], "itag")["stage"], a["text"]) for a in polys]
    assert got == [
        ("label", "Financial consultant"),
        ("check", "Financial advisor"),
        ("verify", "Financial advisor"),
    ]
    key = _attrs(t, polys[1]["ann_id"], "itag")["label_key"]
    assert key == "label-1435504604476547072-check"
    approved = next(a for a in t["annotations"] if a["label"] == "Approved")
    assert _attrs(t, approved["ann_id"], "itag")["stage"] == "verify"


@pytest.fixture(scope="module")
def stages_parquet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stages") / "pq"
    assert convert([str(ROOT / "stages.manifest")], "parquet", str(out), workers=1).ok
    return out


@pytest.mark.parametrize(
    ("prefer", "keys", "dropped"),
    [
        ("latest", ["label-1435504604476547072-verify"], 2),
        ("check", ["label-1435504604476547072-check"], 2 + 1 + 1),
        ("label", ["label-1435504604476547072"], 2 + 1),
    ],
)
def test_prefer_stage(
    tmp_path: Path, stages_parquet: Path, prefer: str, keys: list[str], dropped: int
) -> None:
    out = tmp_path / "out.manifest"
    report = convert(
        [str(stages_parquet)],
        "itag",
        str(out),
        workers=1,
        write_options=WriteOptions(prefer_stage=prefer),
    )
    assert report.ok, report.failures
    first = _lines(out)[0]
    assert [k for k in first if k.startswith("label-")] == keys
    assert report.lossy == {"annotations of other review stages not written": dropped}
    assert report.unaccounted() == {}


def test_unknown_stage_preference_is_refused() -> None:
    with pytest.raises(LabelflowError, match="prefer_stage"):
        formats.get("itag").plan_write(None, WriteOptions(prefer_stage="final"))
    assert STAGES == ("label", "check", "verify")


# -- a broken line -----------------------------------------------------------


def test_broken_line_is_rejected_and_the_rest_converts(tmp_path: Path) -> None:
    manifest = ROOT / "broken.manifest"
    offset = len(manifest.read_bytes().split(b"\n")[0]) + 1
    report = convert([str(manifest)], "parquet", str(tmp_path / "out"), workers=1)
    assert report.ok, report.failures
    (reject,) = pq.read_table(tmp_path / "out" / "rejects").to_pylist()
    assert reject["location"] == f"line 2 (byte {offset})"
    assert reject["reason"] == "invalid JSON at column 76: unexpected end of data"
    assert reject["record_kind"] == "items"
    assert reject["record"].startswith('{"data": {"source": "oss://itag-demo/broken.jpg"}')
    assert report.counts["items"] == {"read": 3, "written": 2, "rejected": 1}
    assert report.counts["annotations"]["written"] == 3


# -- byte ranges -------------------------------------------------------------


@pytest.mark.parametrize("block", [3, 1 << 20])  # lines longer than a block, and not
def test_byte_ranges_read_every_line_exactly_once(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(itag, "READ_BYTES", block)
    data = b'{"a":1}\n\n{"b":22}\r\n{"c":333}\n{"d":4444}'  # a blank line, CRLF, no final newline
    expected = [(0, b'{"a":1}\n'), (8, b"\n"), (9, b'{"b":22}\r\n'), (19, b'{"c":333}\n'),
                (29, b'{"d":4444}')]  # fmt: skip
    size = len(data)
    assert list(itag.lines(io.BytesIO(data))) == expected
    for cut in range(size + 1):
        got = list(itag.lines(io.BytesIO(data), 0, cut))
        got += list(itag.lines(io.BytesIO(data), cut, size))
        assert got == expected, cut
    for a in range(0, size + 1, 3):
        for b in range(a, size + 1, 4):
            got = [
                line
                for s, e in ((0, a), (a, b), (b, None))
                for line in itag.lines(io.BytesIO(data), s, e)
            ]
            assert got == expected, (a, b)


def test_plan_splits_a_large_manifest_into_adjacent_ranges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.manifest"
    path.write_text("".join(f'{{"data":{{"source":"oss://b/{i}.jpg"}}}}\n' for i in range(100)))
    size = path.stat().st_size
    monkeypatch.setattr(itag, "SPLIT_BYTES", 1000)
    monkeypatch.setattr(itag, "RANGE_BYTES", 300)
    source = Source(str(path))
    tasks = itag.plan_read(source, ReadOptions(workers=2))
    spans = [(t.start, t.end) for t in tasks]
    assert spans == itag.ranges(size, 2)
    assert spans[0] == (0, -(-size // 4))  # a quarter of the file: half a worker's share
    assert len(itag.plan_read(source, ReadOptions(workers=1))) == 1


@pytest.mark.parametrize("workers", [2, 3, 8])
def test_ranges_cover_the_file_largest_first(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    monkeypatch.setattr(itag, "RANGE_BYTES", 100)
    for size in [100, 101, 250, 999, 1000, 12_345, 1_000_003]:
        spans = itag.ranges(size, workers)
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
        lengths = [e - s for s, e in spans]
        assert min(lengths) >= 100
        assert lengths[:-1] == sorted(lengths[:-1], reverse=True)
        assert lengths[-1] < 200 or len(spans) == 1  # the last one takes what is left
    # Far fewer tasks than fixed-size ranges of the smallest size would make.
    assert len(itag.ranges(1_000_003, 2)) < 40


def test_parallel_byte_ranges_convert_every_line_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        f'{{"data":{{"source":"oss://b/{i}.jpg"}},"label-7":{{"results":[]}}}}\n'
        for i in range(300)
    ]
    lines[200] = '{"data": {"source": "oss://b/broken.jpg"}\n'
    path = tmp_path / "big.manifest"
    path.write_text("".join(lines))
    offsets = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
    monkeypatch.setattr(itag, "SPLIT_BYTES", 1000)
    monkeypatch.setattr(itag, "RANGE_BYTES", 1000)
    report = convert([str(path)], "parquet", str(tmp_path / "out"), workers=2)
    assert report.ok, report.failures
    items = pq.read_table(tmp_path / "out" / "items").to_pylist()
    want = {f"big/{o}" for i, o in enumerate(offsets) if i != 200}
    assert len(items) == 299 and {i["item_id"] for i in items} == want
    (reject,) = pq.read_table(tmp_path / "out" / "rejects").to_pylist()
    # Past the first range the line number is unknown without re-reading: the byte offset.
    assert reject["location"] == f"byte {offsets[200]}"


# -- writing -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["templates", "stages.manifest"])
def test_roundtrip_itag_parquet_itag_line_by_line(tmp_path: Path, name: str) -> None:
    source = ROOT / name
    r1 = convert([str(source)], "parquet", str(tmp_path / "pq"), workers=1)
    out = tmp_path / "out.manifest"
    r2 = convert([str(tmp_path / "pq")], "itag", str(out), workers=1)
    assert r1.ok and r2.ok, (r1.failures, r2.failures)
    assert r2.lossy == {} and r2.unaccounted() == {}
    files = sorted(source.glob("*.manifest")) if source.is_dir() else [source]
    before = [line for f in files for line in _lines(f)]
    assert _lines(out) == before


def test_writes_boxes_polygons_and_tags_from_other_formats(tmp_path: Path) -> None:
    aimmo = FIXTURES / "aimmo" / "export"
    convert([str(aimmo)], "parquet", str(tmp_path / "pq"), workers=1)
    out = tmp_path / "out.manifest"
    report = convert([str(tmp_path / "pq")], "itag", str(out), workers=1)
    assert report.ok, report.failures
    by_source = {line["data"]["source"].rsplit("/", 1)[1]: line for line in _lines(out)}
    (result,) = by_source["bbox.jpeg"]["label-1"]["results"]
    assert (result["type"], result["width"], result["height"]) == ("image", 1920, 1080)
    (shape,) = result["data"]
    assert shape["type"] == "image/polygon"
    assert shape["value"] == [[297, 307], [1169, 307], [1169, 530], [297, 530]]
    assert shape["labels"] == {"Single-choice": "car", "is_parked": "y", "occlusion": "30%"}
    (tags,) = by_source["image (29).jpeg"]["label-1"]["results"]
    assert (tags["type"], tags["data"]) == ("survey/multivalue", ["car"])
    assert report.lossy["rotated boxes written as polygons"] == 1
    assert report.lossy["mask annotations not written (iTAG manifests hold polygons and answers)"]
    assert report.unaccounted() == {}
    assert len(by_source) == 16


def _group(kind: str, **ann: object) -> ItemGroup:
    base = {k: None for k in ("native_id", "label", "text", "bbox_x", "bbox_y", "bbox_w", "bbox_h")}
    base.update(ann_id="i/0", kind=kind, angle_deg=None)
    base.update(ann)
    item = {"item_id": "i", "source_format": "coco", "metadata": None, "media_uri": "a.jpg"}
    item.update(file_name="a.jpg", width=10, height=10)
    return ItemGroup(item=item, annotations=[base])


def test_rotated_box_corners_turn_clockwise() -> None:
    group = _group("rotated_bbox", bbox_x=0.0, bbox_y=0.0, bbox_w=4.0, bbox_h=2.0, angle_deg=90.0)
    line = manifest_line(group, WriteOptions(), WriteResult())
    (shape,) = line["label-1"]["results"][0]["data"]
    # Centre (2, 1); the top-left corner turns a quarter clockwise (y down) to the top-right.
    assert [[round(x, 9), round(y, 9)] for x, y in shape["value"]] == [
        [3.0, -1.0],
        [3.0, 3.0],
        [1.0, 3.0],
        [1.0, -1.0],
    ]


def test_edited_label_and_text_replace_the_answers_they_came_from() -> None:
    group = _group("polygon", label="Label 2", text="Financial advisor")
    group.parts["i/0"] = {0: np.array([0.0, 0.0, 1.0, 0.0, 2.0, 0.0])}
    group.attributes["i/0"] = [
        {"key": "OCR result", "value": "Financial consultant", "value_type": "string",
         "source": "labels"},
        {"key": "Single-choice", "value": "Label 1", "value_type": "string", "source": "labels"},
    ]  # fmt: skip
    line = manifest_line(group, WriteOptions(), WriteResult())
    (shape,) = line["label-1"]["results"][0]["data"]
    assert shape["labels"] == {"OCR result": "Financial advisor", "Single-choice": "Label 2"}
    assert shape["value"] == [[0, 0], [1, 0], [2, 0]]


# -- the column path ---------------------------------------------------------


def _shape(value: object, labels: object = None, **other: object) -> dict:
    shape = {"id": "s", "type": "image/polygon", "value": value}
    shape["labels"] = {"Single-choice": "car"} if labels is None else labels
    return {**shape, **other}


def _manifest_line(i: int, shapes: list | None = None, results: list | None = None) -> str:
    if shapes is None:
        shapes = [
            _shape([[i + k, 2.5], [3, 4.25 * k], [k, 0]], {"Single-choice": "car", "OCR": "x"}
                   if k % 3 == 0 else None, id=f"{i}-{k}")
            for k in range(1 + i % 4)
        ]  # fmt: skip
    image = {"questionId": "1", "data": shapes, "markTitle": "T", "width": 640,
             "type": "image", "height": 480}  # fmt: skip
    line: dict = {
        "data": {"source": f"oss://b/{i}.jpg"},
        "label-9": {"results": results or [image]},
    }
    if i % 2:
        survey = {"questionId": "2", "data": "car", "type": "survey/value", "markTitle": "S"}
        line["label-9-check"] = {"results": [image, survey]}
    return json.dumps(line, ensure_ascii=False)


P = [[1.5, 2], [3, 4]]
ODD_LINES = [
    '{"data": {"source": "oss://b/broken.jpg"}, "label-9": {"results": [',
    "[1, 2]",
    '{"data": 1}',
    _manifest_line(1, [_shape([[True, 1], [2, 3]])]),
    _manifest_line(1, [_shape([[2**60, 1], [2, 3]])]),
    _manifest_line(1, [_shape(P, rotation=0)]),
    _manifest_line(1, [_shape(P, {"multi": ["a", "b"], "n": 3})]),
    _manifest_line(1, [_shape(P, "not answers")]),
    _manifest_line(1, [{"type": "image/polygon", "value": P, "labels": {"a": "b"}}]),
    _manifest_line(1, [_shape(P, id=7)]),
    _manifest_line(1, ["not a shape", _shape(P)]),
    _manifest_line(1, [_shape(P, type="image/rect")]),
    _manifest_line(1, [_shape([])]),
    _manifest_line(1, [_shape([[1, 2, 3]])]),
    _manifest_line(1, [_shape([[1e308, 1e308]])]),
    _manifest_line(1, [_shape([None, [1, 2]])]),
    _manifest_line(1, [_shape([[None, 1]])]),
    _manifest_line(
        1,
        results=[
            {"questionId": 2, "data": ["a", "b"], "type": "survey/multivalue"},
            {"questionId": 1.0, "data": "c", "type": "survey/value", "markTitle": "S"},
            {"questionId": True, "data": [1], "type": "survey/multivalue"},
            {"questionId": [1], "data": [_shape(P)], "type": "image", "width": 6.5, "height": "x"},
            {"questionId": -0.0, "data": [_shape(P, id=None)], "type": "image"},
            {"questionId": 0.0, "data": "d", "type": "survey/value"},
            5,
            {"type": "image", "data": "not shapes"},
        ],
    ),
    json.dumps({"data": {"picUrl": "oss://b/v1.jpg"}, "label-9": {"results": 3}, "label-8": 4}),
    json.dumps({"data": {"source": 5}, "label-9": {"results": [], "x": 1}}),
]
"""Lines the columns do not certify (and a few odd ones they do): every one the row
path maps, rejects or keeps in the skeleton in its own way."""


@pytest.fixture(scope="module")
def mixed_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = ["\ufeff" + _manifest_line(0)]
    for i in range(1, 400):
        lines.append(_manifest_line(i, [_shape(P, {"OCR result": "x"})] if i % 13 == 0 else None))
        if i % 11 == 0:
            lines.append(ODD_LINES[(i // 11) % len(ODD_LINES)])
        if i % 50 == 0:
            lines.append("  ")
    path = tmp_path_factory.mktemp("mixed") / "mixed.manifest"
    path.write_bytes(("\n".join(lines) + "\r\n" + _manifest_line(400)).encode())
    return path


def _direct(path: Path, **options: object) -> dict[str, pa.Table]:
    fmt = formats.get("itag")
    batches = [
        transforms.standard(b)
        for task in fmt.plan_read(Source(str(path)), ReadOptions(dataset="t", **options))
        for b in fmt.read(task)
    ]
    return {name: _plain(t) for name, t in Batch.concat(batches).tables().items()}


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns decoded: two paths may build different dictionaries."""
    cols = [c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pa.Table.from_arrays(cols, names=table.column_names)


@pytest.mark.parametrize(
    "options", [{}, {"batch_rows": 500}, {"batch_rows": 3000, "workers": 2}], ids=str
)
def test_columns_and_rows_give_the_same_tables(
    mixed_manifest: Path, monkeypatch: pytest.MonkeyPatch, options: dict
) -> None:
    monkeypatch.setattr(itag, "SPLIT_BYTES", 10_000)
    monkeypatch.setattr(itag, "RANGE_BYTES", 5_000)
    monkeypatch.setattr(itag, "MAX_ODD_LINES", 10_000)
    by_rows = itag._map_rows
    row_lines = []

    def counted(task, stem, group, parsed):
        row_lines.extend(t.pos for t in group)
        return by_rows(task, stem, group, parsed)

    monkeypatch.setattr(itag, "_map_rows", counted)
    columns = _direct(mixed_manifest, **options)
    # Only the odd lines took the row path (and a certified one never did).
    n_odd = sum(1 for i in range(1, 400) if i % 11 == 0)
    assert 0 < len(row_lines) <= n_odd
    assert len(set(row_lines)) == len(row_lines)
    monkeypatch.setattr(itag, "COLUMNS", False)
    rows = _direct(mixed_manifest, **options)
    for name, table in rows.items():
        assert columns[name].equals(table), name
    assert rows["rejects"].num_rows >= 15 and rows["items"].num_rows > 400
    kinds = set(rows["annotations"].column("kind").to_pylist())
    assert kinds == {"polygon", "tag"}


def test_a_group_with_many_odd_lines_is_mapped_row_by_row(
    mixed_manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(itag, "MAX_ODD_LINES", 0)
    columns = _direct(mixed_manifest)
    monkeypatch.setattr(itag, "COLUMNS", False)
    rows = _direct(mixed_manifest)
    for name, table in rows.items():
        assert columns[name].equals(table), name
