"""Segmentation mask 1.1: instances labelled by the class PNG, class-only and grey masks,
custom label maps, rejects, and the writer's palette PNGs and lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines import formats, masks
from pipelines.formats import _label_masks
from pipelines.formats import _voc_masks as vm
from pipelines.runner import convert
from pipelines.storage import Source
from tests.conftest import FIXTURES
from tests.mask_formats import pixels, png, save, write
from tests.rows import by_id, read

EXPORT = FIXTURES / "segmentation_mask" / "cvat_export"


def test_instances_take_the_class_under_them(tmp_path: Path) -> None:
    t = read(EXPORT, tmp_path / "a")
    anns = by_id(t["annotations"])
    plane, boat = anns["image1/1"], anns["image1/2"]
    assert (plane["label"], plane["label_id"], plane["native_id"]) == ("aeroplane", "1", "1")
    assert pixels(plane) == [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0] * 6, [0] * 6]
    assert (boat["label"], boat["area"]) == ("boat", 6)
    assert pixels(boat)[2:] == [[0, 0, 0, 1, 1, 1]] * 2
    item = by_id(t["items"], "item_id")["image1"]
    assert (item["width"], item["height"], item["subset"]) == (6, 4, "default")


def test_grey_class_png_holds_indices_into_the_label_map(tmp_path: Path) -> None:
    t = read(EXPORT, tmp_path / "a")
    bus = by_id(t["annotations"])["image2/class/6"]
    assert (bus["label"], pixels(bus)) == ("bus", [[0] * 5, [0, 1, 1, 1, 0], [0] * 5])


def test_colours_missing_from_the_label_map_are_rejected(tmp_path: Path) -> None:
    t = read(EXPORT, tmp_path / "a")
    assert [(r["location"], r["reason"]) for r in t["rejects"]] == [
        (
            "SegmentationClass/image1.png colour (1, 2, 3)",
            "1 pixel(s) of colour (1, 2, 3) not in the label table",
        )
    ]
    report = convert([str(EXPORT)], "parquet", str(tmp_path / "o"), workers=1, on_error="fail")
    assert "SegmentationClass/image1.png colour (1, 2, 3)" in report.failures[0]


def test_voc_export_reads_its_pngs_and_stays_voc_on_detection(peer: Path, tmp_path: Path) -> None:
    src = peer / "voc" / "voc_dataset1"
    found = dict(formats.detect(Source(str(src))))
    assert found["voc"].confidence > found["segmentation_mask"].confidence
    assert formats.detect(Source(str(EXPORT)))[0][0] == "segmentation_mask"
    t = read(src, tmp_path / "a", source_format="segmentation_mask")
    [mask] = t["annotations"]
    assert (mask["label"], mask["area"], mask["item_id"]) == ("bicycle", 200, "2007_000001")
    assert {i["item_id"]: i["subset"] for i in t["items"]} == {
        "2007_000001": "train",
        "2007_000002": "test",
    }


def test_malformed_png_and_labelmap(tmp_path: Path) -> None:
    root = tmp_path / "sm"
    (root / "SegmentationClass").mkdir(parents=True)
    (root / "SegmentationClass" / "x.png").write_bytes(b"\x89PNG broken")
    t = read(root, tmp_path / "a")
    assert [r["location"] for r in t["rejects"]] == ["SegmentationClass/x.png"]
    (root / "labelmap.txt").write_text("cat:1,2:\n")
    report = convert([str(root)], "parquet", str(tmp_path / "b"), workers=1)
    assert "labelmap.txt: line 1: bad colour '1,2'" in report.failures[0]


def test_writer_round_trips_the_fixture(tmp_path: Path) -> None:
    read(EXPORT, tmp_path / "a")
    report = write(tmp_path / "a", "segmentation_mask", tmp_path / "out")
    assert report.lossy == {}
    out = tmp_path / "out"
    assert (out / "ImageSets" / "Segmentation" / "default.txt").read_text() == "image1\nimage2\n"
    labelmap = (out / "labelmap.txt").read_text().splitlines()
    assert labelmap[:3] == [
        "# label:color_rgb:parts:actions",
        "background:0,128,0::",
        "aeroplane:10,10,128::",
    ]
    cls = png(out / "SegmentationClass" / "image1.png")  # palette indices
    assert cls.tolist()[0] == [1, 1, 0, 0, 0, 0] and cls.tolist()[3] == [0, 0, 0, 4, 4, 4]
    assert png(out / "SegmentationObject" / "image1.png").tolist()[0] == [1, 1, 0, 0, 0, 0]


def test_writer_draws_polygons_and_numbers_new_labels(tmp_path: Path) -> None:
    coco = {
        "images": [{"id": 1, "file_name": "p.jpg", "width": 4, "height": 2}],
        "categories": [{"id": 7, "name": "zebra"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 2, 2],
             "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]},
        ],
    }  # fmt: skip
    (tmp_path / "c.json").write_text(json.dumps(coco))
    report = write(tmp_path / "c.json", "segmentation_mask", tmp_path / "out")
    assert report.lossy == {"polygons written as masks": 1}
    labelmap = (tmp_path / "out" / "labelmap.txt").read_text().splitlines()
    # the COCO category id is kept as the class index; gaps take the VOC names
    assert labelmap[8] == f"zebra:{','.join(map(str, vm.colormap()[7]))}::"
    assert png(tmp_path / "out" / "SegmentationClass" / "p.png").tolist() == [[7, 7, 0, 0]] * 2


def test_rgb_object_png_with_void_border(tmp_path: Path) -> None:
    root = tmp_path / "sm"
    obj = np.zeros((1, 4, 3), np.uint8)
    obj[0, 0] = vm.colormap()[1]
    obj[0, 1] = (224, 224, 192)  # void border: no instance
    save(root / "SegmentationObject" / "x.png", obj)
    t = read(root, tmp_path / "a")
    [inst] = t["annotations"]
    assert (inst["native_id"], inst["label"], pixels(inst)) == ("1", None, [[1, 0, 0, 0]])
    assert not t["rejects"]


def test_a_shape_paints_the_pixels_of_its_whole_mask_through_its_box() -> None:
    """`place` decodes a mask in its box alone; painting through `on` sets exactly the
    pixels of the mask decoded whole, wherever it lies (edges, empty, whole image)."""
    rng = np.random.default_rng(7)
    for height, width in ((1, 1), (9, 14), (50, 33)):
        cases = [np.zeros((height, width), bool), np.ones((height, width), bool)]
        for _ in range(8):
            top, left = rng.integers(0, height), rng.integers(0, width)
            mask = np.zeros((height, width), bool)
            mask[top:, left:] = rng.random((height - top, width - left)) < 0.5
            cases.append(mask)
        for mask in cases:
            shape = _label_masks.place({}, masks.encode(mask), height, width)
            canvas = np.zeros((height, width), np.int32)
            shape.on(canvas)[shape.mask] = 3
            assert np.array_equal(canvas == 3, mask)


def test_an_index_image_is_painted_in_its_colours_above_256_indices_too() -> None:
    """`paint` goes through a PIL palette up to 256 indices, through numpy beyond."""
    rng = np.random.default_rng(3)
    for top in (0, 7, 255, 256, 900):
        indices = rng.integers(0, top + 1, (23, 31))
        colors = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(min(top + 1, 40))]
        expected = np.zeros((top + 2, 3), np.uint8)  # beyond the colours: black
        expected[: len(colors)] = colors
        assert np.array_equal(_label_masks.paint(indices, colors), expected[indices])


def test_an_index_image_png_decodes_to_its_indices_and_palette() -> None:
    """`masks.image_png`: 8-bit grey or with a palette, 16-bit grey, RGB; any width,
    runs and noise alike."""
    import io

    from PIL import Image

    rng = np.random.default_rng(11)
    palette = bytes(int(v) for v in rng.integers(0, 256, 768))
    for height, width in ((1, 1), (7, 13), (50, 333)):
        runs = np.repeat(rng.integers(0, 256, (height, 1)), width, axis=1)
        for indices in (runs, rng.integers(0, 256, (height, width))):
            indices = indices.astype(np.uint8)
            grey = Image.open(io.BytesIO(masks.image_png(indices)))
            assert grey.mode == "L" and np.array_equal(np.asarray(grey), indices)
            coloured = Image.open(io.BytesIO(masks.image_png(indices, palette)))
            assert coloured.mode == "P" and coloured.getpalette() == list(palette)
            assert np.array_equal(np.asarray(coloured), indices)
            wide = indices.astype(np.uint16) * 257
            deep = Image.open(io.BytesIO(masks.image_png(wide)))
            assert np.array_equal(np.asarray(deep), wide)
            rgb = np.stack([indices, 255 - indices, indices // 2], axis=-1)
            colour = Image.open(io.BytesIO(masks.image_png(rgb)))
            assert colour.mode == "RGB" and np.array_equal(np.asarray(colour), rgb)
