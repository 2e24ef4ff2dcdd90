"""YOLO 1.1, the loose layouts and Ultralytics: exact values, rejects, writers, safety."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from pipelines import formats
from pipelines.builder import BatchBuilder
from pipelines.errors import ParseError, UnsafePathError
from pipelines.formats.base import ReadOptions, WriteOptions
from pipelines.formats.parquet import PartWriter
from pipelines.runner import convert
from pipelines.storage import Source
from tests.conftest import FIXTURES, PEER
from tests.rows import parquet_rows, read_direct

YOLO = FIXTURES / "yolo"
VARIANTS = PEER / "yolo" / "ultralytics_variants"


def stage(root: Path, items: list[dict], anns: list[dict] = (), points: list = ()) -> str:
    """A staging dataset written from rows, for writer tests that need odd input."""
    b = BatchBuilder("t", "test", "memory")
    for row in items:
        b.item(**row)
    for row in anns:
        b.annotation(**row)
    for ann_id, item_id, coords in points:
        b.points(ann_id, item_id, coords)
    writer = PartWriter(str(root), "t", "00000")
    writer.add(b.flush())
    writer.close()
    return str(root)


def rounded(rows: list[tuple]) -> list[tuple]:
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in rows]


# -- reading -----------------------------------------------------------------------


def test_line_on_a_non_square_image_becomes_pixels() -> None:
    t = read_direct(YOLO / "nonsquare", "yolo")
    wide = next(a for a in t["annotations"] if a["item_id"] == "train/wide")
    # "1 0.5 0.5 0.25 0.2" on 200 x 100: centre (100, 50), size 50 x 20
    assert (wide["bbox_x"], wide["bbox_y"], wide["bbox_w"], wide["bbox_h"]) == (75, 40, 50, 20)
    assert (wide["kind"], wide["label"], wide["label_id"], wide["units"]) == (
        "bbox", "dog", "1", "px",
    )  # fmt: skip
    item = next(i for i in t["items"] if i["item_id"] == "train/wide")
    # the .jpg holds PNG data: the header decides, not the suffix
    assert (item["width"], item["height"], item["file_name"], item["subset"]) == (
        200, 100, "wide.jpg", "train",
    )  # fmt: skip


def test_annotation_without_image_size_is_rejected_not_guessed() -> None:
    t = read_direct(YOLO / "nonsquare", "yolo")
    assert [i["item_id"] for i in t["items"]] == ["train/nosize", "train/wide"]
    nosize = t["items"][0]
    assert nosize["width"] is None and nosize["file_name"] == "nosize.jpg"
    assert [a["item_id"] for a in t["annotations"]] == ["train/wide", "train/wide"]
    [rej] = t["rejects"]
    assert rej["location"] == "obj_train_data/nosize.txt line 1"
    assert rej["reason"] == (
        "no image size for nosize.jpg: no image file found and no entry in image_sizes"
    )
    assert rej["record_kind"] == "annotations" and rej["record"] == "0 0.5 0.5 0.5 0.5"


def test_image_sizes_option_supplies_the_missing_size() -> None:
    t = read_direct(YOLO / "nonsquare", "yolo", image_sizes={"nosize.jpg": (30, 10)})
    assert not t["rejects"]
    a = next(a for a in t["annotations"] if a["item_id"] == "train/nosize")
    assert (a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"]) == (7.5, 2.5, 15, 5)
    assert t["items"][0]["width"] == 30


def test_bad_and_odd_lines() -> None:
    t = read_direct(YOLO / "lines", "yolo")
    rejects = {r["location"]: r["reason"] for r in t["rejects"]}
    where = "labels/train/odd.txt line"
    assert rejects == {
        f"{where} 3": "not a number",
        f"{where} 4": "class id 7 is not among the 2 class names",
        f"{where} 5": "4 values; expected 5 (box), 6 (box + confidence), 9 (oriented box) "
        "or an odd number ≥ 7",
        f"{where} 6": "negative box size",
    }
    anns = {a["native_id"]: a for a in t["annotations"]}
    assert sorted(anns) == ["1", "7", "8", "9"]
    assert anns["7"]["kind"] == "polygon"  # 4 corners that are not a rectangle
    quad = anns["8"]  # an axis-aligned rectangle of corners is a plain box
    assert quad["kind"] == "bbox" and quad["angle_deg"] is None
    assert (quad["bbox_x"], quad["bbox_y"], quad["bbox_w"], quad["bbox_h"]) == (10, 5, 20, 10)
    assert anns["9"]["confidence"] == 0.9
    poly = [(p["x"], p["y"]) for p in t["points"] if p["ann_id"] == anns["7"]["ann_id"]]
    assert rounded(poly) == [(4, 2), (36, 2), (36, 18), (8, 18)]


def test_fail_policy_raises_parse_error_with_file_and_line() -> None:
    with pytest.raises(ParseError) as err:
        read_direct(YOLO / "lines", "yolo", on_error="fail")
    assert err.value.location == "labels/train/odd.txt line 3"
    assert err.value.reason == "not a number"


def test_malformed_data_yaml_names_file_and_line(tmp_path: Path) -> None:
    shutil.copytree(VARIANTS / "yolov8_detection", tmp_path / "d")
    (tmp_path / "d" / "data.yaml").write_text("names:\n  0: a\n  - b\n")
    with pytest.raises(ParseError) as err:
        formats.get("ultralytics").plan_read(Source(str(tmp_path / "d")), ReadOptions())
    assert err.value.source.endswith("d/data.yaml")
    assert err.value.location.startswith("line 3")


def test_readme_and_list_files_are_not_labels() -> None:
    t = read_direct(PEER / "yolo" / "labels", "yolo")
    assert not t["rejects"]
    assert sorted(i["item_id"] for i in t["items"]) == ["train/1", "val/1"]


def test_oriented_boxes_are_rotated_boxes_in_pixels() -> None:
    t = read_direct(VARIANTS / "yolov8_oriented_boxes", "ultralytics")
    got = [
        (a["kind"], a["label"], *(round(a[k], 3) for k in ("bbox_x", "bbox_y", "bbox_w")),
         round(a["bbox_h"], 3), a["angle_deg"], a["units"])
        for a in t["annotations"]
    ]  # fmt: skip
    assert got == [
        ("rotated_bbox", "label_2", 1.0, 2.0, 3.0, 4.0, 30.0, "px"),
        ("rotated_bbox", "label_4", 3.0, 2.0, 6.0, 2.0, 120.0, "px"),
    ]


def test_segmentation_and_pose_in_pixels() -> None:
    seg = read_direct(VARIANTS / "yolov8_segmentation", "ultralytics")
    first = [(p["x"], p["y"]) for p in seg["points"] if p["ann_id"] == "train/1/1"]
    assert rounded(first) == [(1.5, 1.0), (6.0, 1.0), (6.0, 5.0)]
    assert seg["annotations"][0]["area"] == pytest.approx(9.0)
    pose = read_direct(VARIANTS / "yolov8_pose", "ultralytics")
    [kp] = pose["annotations"]
    assert kp["kind"] == "keypoints" and kp["label"] == "skeleton_label"
    pts = [(p["idx"], p["x"], p["y"], p["visibility"]) for p in pose["points"]]
    assert rounded(pts) == [(0, 1.5, 2.0, 2), (1, 4.5, 4.0, 2), (2, 7.5, 6.0, 2)]
    shape = [a for a in pose["attributes"] if a["key"] == "kpt_shape"]
    assert shape[0]["value"] == "[3,3]" and shape[0]["owner_kind"] == "dataset"


def test_two_dimensional_keypoints_with_names() -> None:
    t = read_direct(YOLO / "pose2d", "ultralytics")
    pts = [(p["name"], p["x"], p["y"], p["visibility"]) for p in t["points"]]
    assert pts == [("nose", 10.0, 5.0, None), ("tail", 30.0, 15.0, None)]
    assert t["items"][0]["subset"] == "val"


def test_zip_is_read_in_place(tmp_path: Path) -> None:
    archive = tmp_path / "strict.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in (PEER / "yolo" / "strict").rglob("*"):
            if f.is_file():
                z.write(f, f.relative_to(PEER / "yolo" / "strict").as_posix())
    assert formats.detect(Source(str(archive)))[0][0] == "yolo"
    t = read_direct(archive, "yolo")
    assert [i["width"] for i in t["items"]] == [15]
    assert t["items"][0]["media_uri"] == f"{archive}!obj_train_data/1.jpg"
    assert len(t["annotations"]) == 2
    out = tmp_path / "out"
    report = convert([str(archive)], "yolo", str(out), workers=1)
    assert (
        report.ok
        and (out / "obj_train_data" / "1.jpg").read_bytes()
        == (PEER / "yolo" / "strict" / "obj_train_data" / "1.jpg").read_bytes()
    )


def test_zip_member_climbing_out_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("obj.names", "a\n")
        z.writestr("../evil/obj_train_data/1.txt", "0 0.5 0.5 0.5 0.5\n")
    report = convert(
        [str(archive)], "parquet", str(tmp_path / "o"), source_format="yolo", workers=1
    )
    assert not report.ok and "escapes its root" in report.failures[0]


# -- writing ------------------------------------------------------------------------


def test_writes_yolo_1_1_as_cvat_does(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = convert([str(YOLO / "nonsquare")], "yolo", str(out), workers=1)
    assert report.ok
    assert (out / "obj_train_data" / "wide.txt").read_text() == (
        "1 0.500000 0.500000 0.250000 0.200000\n0 0.100000 0.200000 0.100000 0.200000\n"
    )
    assert (out / "obj.names").read_text() == "cat\ndog\n"
    assert (out / "obj.data").read_text() == (
        "classes = 2\ntrain = data/train.txt\nnames = data/obj.names\nbackup = backup/\n"
    )
    assert (out / "train.txt").read_text() == "data/obj_train_data/wide.jpg\n"
    assert (out / "obj_train_data" / "wide.jpg").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "obj_train_data" / "nosize.txt").exists()  # its size is unknown
    assert report.counts["items"]["written"] == 1
    assert report.lossy == {"items without a size skipped": 1}


def test_class_ids_and_unused_names_survive_a_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert convert([str(PEER / "yolo" / "labels")], "yolo", str(out), workers=1).ok
    assert (out / "obj.names").read_text().splitlines() == [f"label_{i}" for i in range(10)]
    assert (out / "obj_val_data" / "1.txt").read_text().split("\n")[0].startswith("2 ")


def test_save_images_false_as_text_copies_no_image(tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = WriteOptions(extra={"save_images": "false"})
    assert convert(
        [str(PEER / "yolo" / "strict")], "yolo", str(out), write_options=opts, workers=1
    ).ok
    assert (out / "obj_train_data" / "1.txt").exists()
    assert not (out / "obj_train_data" / "1.jpg").exists()


def test_ultralytics_layout_by_option_and_task(tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = WriteOptions(extra={"layout": "ultralytics", "save_images": False})
    report = convert(
        [str(PEER / "yolo" / "strict")], "yolo", str(out), write_options=opts, workers=1
    )
    assert report.ok
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "data.yaml",
        "labels/train/1.txt",
    ]
    out2 = tmp_path / "pose"
    assert convert([str(YOLO / "pose2d")], "ultralytics", str(out2), workers=1).ok
    assert (out2 / "labels/val/p.txt").read_text() == (
        "0 0.500000 0.500000 0.500000 0.500000 0.250000 0.250000 2 0.750000 0.750000 2\n"
    )
    data = (out2 / "data.yaml").read_text()
    assert "kpt_shape: [2, 3]\n" in data and "flip_idx: [1, 0]\n" in data
    assert "kpt_names:\n  0: [nose, tail]\n" in data


def test_oriented_box_corners_written_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert convert([str(VARIANTS / "yolov8_oriented_boxes")], "ultralytics", str(out), workers=1).ok
    line = (out / "labels/train/1.txt").read_text().splitlines()[0]
    src = (VARIANTS / "yolov8_oriented_boxes/labels/train/1.txt").read_text().splitlines()[0]
    assert [float(v) for v in line.split()] == pytest.approx(
        [float(v) for v in src.split()], abs=2e-6
    )


def test_detection_counts_what_it_loses(tmp_path: Path) -> None:
    seg = convert([str(VARIANTS / "yolov8_segmentation")], "yolo", str(tmp_path / "a"), workers=1)
    assert seg.lossy == {"polygons written as boxes": 2}
    assert (tmp_path / "a/obj_train_data/1.txt").read_text().splitlines()[0] == (
        "2 0.250000 0.300000 0.300000 0.400000"
    )
    obb = convert([str(VARIANTS / "yolov8_oriented_boxes")], "yolo", str(tmp_path / "b"), workers=1)
    assert obb.lossy == {"rotated boxes lost their angle": 2}
    assert obb.unaccounted() == {}


def test_outside_unsized_and_unlabelled_are_skipped_and_counted(tmp_path: Path) -> None:
    items = [
        {"item_id": "a", "file_name": "a.jpg", "width": 100, "height": 50, "subset": "train"},
        {"item_id": "b", "file_name": "b.jpg", "subset": "train"},
    ]
    box = {"kind": "bbox", "units": "px", "bbox_x": 10, "bbox_y": 5, "bbox_w": 20, "bbox_h": 10}
    anns = [
        {"ann_id": "a/1", "item_id": "a", "label": "x", **box},
        {"ann_id": "a/2", "item_id": "a", "label": "x", "outside": True, **box},
        {"ann_id": "a/3", "item_id": "a", "label": None, **box},
        {"ann_id": "a/4", "item_id": "a", "kind": "tag", "label": "x"},
        {"ann_id": "b/1", "item_id": "b", "label": "x", **box},
    ]
    root = stage(tmp_path / "s", items, anns)
    report = convert([root], "yolo", str(tmp_path / "o"), source_format="parquet", workers=1)
    assert report.lossy == {
        "outside shapes skipped": 1,
        "unlabelled annotations skipped": 1,
        "tag annotations not written: YOLO has no place for them": 1,
        "items without a size skipped": 1,
        "annotations of items without a size": 1,
        "images not copied: the item names no image file": 1,
    }
    assert (tmp_path / "o/obj_train_data/a.txt").read_text() == (
        "0 0.200000 0.200000 0.200000 0.200000\n"
    )
    assert (tmp_path / "o/train.txt").read_text() == "data/obj_train_data/a.jpg\n"


def test_colliding_names_get_a_suffix(tmp_path: Path) -> None:
    items = [
        {"item_id": "p", "file_name": "1.png", "width": 10, "height": 10, "subset": "train"},
        {"item_id": "j", "file_name": "1.jpg", "width": 10, "height": 10, "subset": "train"},
    ]
    root = stage(tmp_path / "s", items)
    out = tmp_path / "o"
    assert convert([root], "yolo", str(out), source_format="parquet", workers=1).ok
    listed = (out / "train.txt").read_text().split()
    assert len(set(listed)) == 2 and all(p.startswith("data/obj_train_data/1_") for p in listed)
    assert len(list((out / "obj_train_data").glob("1_*.txt"))) == 2


def test_image_lists_follow_subsets_in_order_of_first_sized_item(tmp_path: Path) -> None:
    rows = [("a.jpg", "val", 8), ("b.png", None, 8), ("c.jpg", "", 8), ("d.jpg", "val", None),
            ("e.jpg", "test", None), ("f.bmp", "val", 8)]  # fmt: skip
    items = [
        {"item_id": name, "file_name": name, "width": size, "height": size, "subset": subset}
        for name, subset, size in rows
    ]
    out = tmp_path / "o"
    options = WriteOptions(extra={"save_images": "false"})
    staged = stage(tmp_path / "s", items)
    assert convert([staged], "yolo", str(out), workers=1, write_options=options).ok
    assert (out / "obj.data").read_text().splitlines()[1:3] == [
        "val = data/val.txt", "train = data/train.txt"
    ]  # fmt: skip
    assert (out / "val.txt").read_text() == "data/obj_val_data/a.jpg\ndata/obj_val_data/f.bmp\n"
    assert (out / "train.txt").read_text() == (
        "data/obj_train_data/b.png\ndata/obj_train_data/c.jpg\n"
    )
    assert not (out / "test.txt").exists()


def test_item_name_escaping_the_output_is_refused(tmp_path: Path) -> None:
    items = [{"item_id": "e", "file_name": "../../evil.jpg", "width": 10, "height": 10}]
    root = stage(tmp_path / "s", items)
    out = tmp_path / "deep" / "o"
    with pytest.raises(UnsafePathError):
        convert([root], "yolo", str(out), source_format="parquet", workers=1)
    assert not out.exists()
    assert not list(tmp_path.rglob("evil*"))


def test_shards_with_two_workers_write_each_file_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "obj_train_data").mkdir(parents=True)
    (src / "obj.names").write_text("a\nb\n")
    for i in range(12):
        Image.new("L", (20 + i, 10)).save(src / "obj_train_data" / f"{i:02d}.png")
        (src / "obj_train_data" / f"{i:02d}.txt").write_text(f"{i % 2} 0.5 0.5 0.5 0.5\n")
    one, two = tmp_path / "one", tmp_path / "two"
    assert convert([str(src)], "yolo", str(one), workers=1).ok
    report = convert([str(src)], "yolo", str(two), workers=2)
    assert report.ok and report.counts["items"]["written"] == 12
    assert report.files == 3 + 12 + 12  # obj.names, obj.data, train.txt; labels; images
    files = sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    for f in files:
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    back = tmp_path / "back"
    assert convert([str(two)], "parquet", str(back), workers=1).ok
    assert len(parquet_rows(back, "annotations")) == 12


def test_task_is_the_one_that_loses_least(tmp_path: Path) -> None:
    # boxes 2, rotated boxes 2, polygons 2, keypoints 1: segmentation keeps 6 of 7
    out = tmp_path / "o"
    report = convert([str(VARIANTS)], "ultralytics", str(out), workers=1)
    assert report.lossy == {"keypoint sets written as boxes": 1}
    labels = sorted((out / "labels" / "train").glob("*.txt"))
    assert len(labels) == 4  # four datasets' 1.txt, told apart by a suffix
    lines = sorted(len(line.split()) for f in labels for line in f.read_text().splitlines())
    assert lines == [7, 9, 9, 9, 9, 9, 11]  # triangle, 4 boxes as corners, 1 pose box, pentagon


def test_labelimg_flat_folder_with_classes_txt(tmp_path: Path) -> None:
    Image.new("L", (10, 10)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("1 0.5 0.5 1 1\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    (tmp_path / "notes.txt").write_text("not labels\n")
    assert formats.detect(Source(str(tmp_path)))[0][0] == "yolo"
    t = read_direct(tmp_path, "yolo")
    assert [(i["item_id"], i["file_name"]) for i in t["items"]] == [("a", "a.png")]
    assert [(a["label"], a["bbox_w"]) for a in t["annotations"]] == [("dog", 10.0)]
    assert not t["rejects"]


def test_a_server_that_cannot_be_reached_is_asked_once_per_task(
    tmp_path: Path, monkeypatch
) -> None:
    import socket

    from pipelines.formats import _per_image

    with socket.socket() as s:  # a port nothing listens on: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = f"127.0.0.1:{port}"
    items = [
        {"item_id": f"i{k}", "file_name": f"{k}.jpg", "width": 10, "height": 10,
         "media_uri": f"http://{server}/images/{k}.jpg"}
        for k in range(3)
    ]  # fmt: skip
    items.append({"item_id": "local", "file_name": "l.jpg", "width": 10, "height": 10,
                  "media_uri": str(tmp_path / "missing.jpg")})  # fmt: skip
    asked: list[str] = []
    real_open = _per_image.MediaCopier._open
    monkeypatch.setattr(
        _per_image.MediaCopier, "_open", lambda self, uri: asked.append(uri) or real_open(self, uri)
    )
    report = convert([stage(tmp_path / "s", items)], "yolo", str(tmp_path / "o"), workers=1)
    assert report.lossy == {
        f"images not copied: {server} could not be reached": 3,
        "images not copied: not found": 1,
    }
    assert asked == [items[0]["media_uri"], items[3]["media_uri"]]


def test_segment_vertex_text_spelt_by_arrays_is_what_the_writer_formats() -> None:
    """A segment polygon's vertices are spelt a batch at a time (`_segment_text`), boxes'
    corners in Python (`_coords`): alike on every magnitude, at the rounding edges,
    -0, NaN and the infinities; empty for an item without a size."""
    import numpy as np
    import pyarrow as pa

    from pipelines.formats import _yolo_write

    rng = np.random.default_rng(17)
    n = 60_000
    xs = np.concatenate([rng.random(n) * 4000, [0.0, -0.0, 5e-7, -5e-7, 1.5e-6, np.nan, np.inf]])
    ys = np.concatenate([np.round(rng.random(n) * 3000, 2), [-0.0, 0.0, -5e-7, 2.5e-6, 1, 2, 3]])
    sizes = rng.integers(1, 5000, len(xs))
    widths, heights = sizes.copy(), sizes[::-1].copy()
    widths[:50], heights[50:100] = 0, 0  # no size: no lines
    widths[100:900] = 640  # x / 640 is often a tie at the seventh decimal
    xs[100:900] = np.arange(800) * 2.5
    vertices = pa.record_batch({"x": xs, "y": ys, "width": widths, "height": heights})
    got = _yolo_write._segment_text(vertices).to_pylist()
    expected = [
        _yolo_write._coords([(x, y)], float(w), float(h)) if w and h else ""
        for x, y, w, h in zip(
            xs.tolist(), ys.tolist(), widths.tolist(), heights.tolist(), strict=True
        )
    ]
    assert got == expected
    gaps = pa.record_batch(
        {"x": [None, None, 1.0], "y": [1.0, 1.0, 1.0], "width": [2, 0, None], "height": [2, 2, 2]},
        schema=pa.schema(
            [
                ("x", pa.float64()),
                ("y", pa.float64()),
                ("width", pa.int32()),
                ("height", pa.int32()),
            ]
        ),
    )
    # A vertex without coordinates has no text (the writer names it); no size, no line.
    assert _yolo_write._segment_text(gaps).to_pylist() == [None, "", ""]
