"""ICDAR 13/15: transcriptions, quadrilaterals and boxes, character masks with their
colour and centre, line parsing edge cases, rejects, and the three writer layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import LabelflowError
from pipelines.formats.icdar import parse_character, parse_localization, parse_recognition
from pipelines.runner import convert
from tests.mask_formats import attrs, pixels, png, save, write
from tests.rows import by_id, read


def test_recognition_captions(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "icdar" / "word_recognition", tmp_path / "a")
    item = by_id(t["items"], "item_id")["train/word_1"]
    assert (item["file_name"], item["subset"], item["width"], item["height"]) == (
        "word_1.png", "train", 15, 10,  # the .png holds JPEG data: its header still gives the size
    )  # fmt: skip
    assert [(a["item_id"], a["kind"], a["text"]) for a in t["annotations"]] == [
        ("train/word_1", "caption", "PROPER"),
        ("train/word_2", "caption", "Canon"),
    ]


def test_localization_polygon_and_boxes(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "icdar" / "text_localization", tmp_path / "a")
    anns = by_id(t["annotations"])
    food = anns["train/img_1/1"]
    assert (food["kind"], food["label"], food["text"]) == ("polygon", "icdar", "FOOD")
    points = [(p["x"], p["y"]) for p in t["points"] if p["ann_id"] == food["ann_id"]]
    assert points == [(0, 0), (3, 1), (4, 6), (1, 7)]
    lion = anns["train/img_2/2"]  # 3 3 5 6 "LION"
    assert (lion["kind"], lion["text"]) == ("bbox", "LION")
    assert (lion["bbox_x"], lion["bbox_y"], lion["bbox_w"], lion["bbox_h"]) == (3, 3, 2, 3)


def test_segmentation_characters(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "icdar" / "text_segmentation", tmp_path / "a")
    anns = by_id(t["annotations"])
    f, tee, h = anns["train/1/1"], anns["train/1/3"], anns["train/1/4"]
    assert [a["text"] for a in (f, tee, h)] == ["F", "T", "h"]
    assert pixels(f) == [[0, 1, 1, 0, 0], [0, 0, 0, 0, 0]]  # colour 108 225 132 in 1_GT.bmp
    assert pixels(tee) == [[0, 0, 0, 1, 0], [0, 0, 0, 1, 0]]
    assert pixels(h) == [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
    assert f["group_id"] != tee["group_id"] == h["group_id"]  # a blank line ends a word
    assert attrs(t, tee["ann_id"]) == {
        "index": 1, "color": "82 174 214", "center": "1 3", "box": "0 2 1 4",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("line", "coords", "text"),
    [
        ("7,1,6,1,6,3,7,3,Genaxis Theatre", [7, 1, 6, 1, 6, 3, 7, 3], "Genaxis Theatre"),
        ("1,2,3,4,5,6,7,8,###", [1, 2, 3, 4, 5, 6, 7, 8], "###"),
        ("1,2,3,4,5,6,7,8,2019", [1, 2, 3, 4, 5, 6, 7, 8], "2019"),
        ("1,2,3,4,5,6,7,8,a,b", [1, 2, 3, 4, 5, 6, 7, 8], "a,b"),
        ('38, 43, 920, 215, "Tiredness"', [38, 43, 920, 215], "Tiredness"),
        ('0 0 2 3 "say \\"hi\\""', [0, 0, 2, 3], 'say "hi"'),
        ("1 2 3 4", [1, 2, 3, 4], None),
    ],
)  # fmt: skip
def test_localization_lines(line: str, coords: list, text: str | None) -> None:
    assert parse_localization(line) == (coords, text)


def test_other_line_forms() -> None:
    with pytest.raises(ValueError, match="at least 4 coordinates"):
        parse_localization('1 2 "x"')
    with pytest.raises(ValueError, match="unbalanced"):
        parse_localization('1 2 3 4 "x')
    assert parse_recognition('a.png, "x, y"') == ("a.png", "x, y")
    assert parse_recognition("a.png,") == ("a.png", None)
    assert parse_character('#255 0 0 1 1 0 0 2 2 " "') == ((255, 0, 0), "1 1", "0 0 2 2", " ")
    with pytest.raises(ValueError, match=r"0\.\.255"):
        parse_character('300 0 0 1 1 0 0 2 2 "a"')


def test_bad_lines_and_stray_colours_are_rejected(tmp_path: Path) -> None:
    root = tmp_path / "ic" / "train"
    root.mkdir(parents=True)
    (root / "gt_a.txt").write_text('1,2,3,4,5,6,7,8,"ok"\n1 2 "short"\n')
    bmp = np.full((1, 3, 3), 255, np.uint8)
    bmp[0, 0] = (1, 2, 3)
    bmp[0, 2] = (9, 9, 9)  # described by no line
    save(root / "b_GT.bmp", bmp)
    (root / "b_GT.txt").write_text(
        '1 2 3 0 0 0 0 1 1 "x"\n1 2 3 0 0 0 0 1 1 "y"\n4 5 6 - - 0 0 2 1 "z"\n'
    )
    t = read(tmp_path / "ic", tmp_path / "a")
    assert {r["location"]: r["reason"] for r in t["rejects"]} == {
        "train/gt_a.txt line 2": "expected at least 4 coordinates, got 2",
        "train/b_GT.txt line 2": "colour (1, 2, 3) is already taken by line 1",
        "train/b_GT.bmp colour (9, 9, 9)": "1 pixel(s) of colour (9, 9, 9) not in the label table",
    }
    z = by_id(t["annotations"])["train/b/3"]  # no pixels of its colour: its box instead
    assert (z["kind"], z["text"], z["bbox_w"], z["bbox_h"]) == ("bbox", "z", 2, 1)
    report = convert(
        [str(tmp_path / "ic")], "parquet", str(tmp_path / "o"), on_error="fail", workers=1
    )
    assert "train/b_GT.txt line 2" in report.failures[0] or "gt_a.txt line 2" in report.failures[0]


def test_writers_give_the_peer_files_back(peer: Path, tmp_path: Path) -> None:
    for name in ("word_recognition", "text_localization", "text_segmentation"):
        read(peer / "icdar" / name, tmp_path / name)
        assert write(tmp_path / name, "icdar", tmp_path / "out").lossy == {}
        out = tmp_path / "out" / name / "train"
        if name == "word_recognition":
            assert (out / "gt.txt").read_text() == 'word_1.png, "PROPER"\nword_2.png, "Canon"\n'
        elif name == "text_localization":
            assert (out / "gt_img_1.txt").read_text() == '0,0,3,1,4,6,1,7,"FOOD"\n'
            assert (out / "gt_img_2.txt").read_text() == '0 0 2 3 "RED"\n3 3 5 6 "LION"\n'
        else:
            assert (out / "1_GT.txt").read_text().splitlines() == [
                '108 225 132 0 1 1 0 3 1 "F"',  # centre as given, box from the pixels
                "",
                '82 174 214 1 3 3 0 4 2 "T"',
                '241 73 144 1 4 4 1 5 2 "h"',
            ]
            assert (out / "1_GT.bmp").read_bytes()[:2] == b"BM"
            assert (
                png(out / "1_GT.bmp")[0].tolist()
                == png(peer / "icdar" / "text_segmentation" / "train" / "1_GT.bmp")[0].tolist()
            )


def test_writer_task_option(peer: Path, tmp_path: Path) -> None:
    read(peer / "icdar" / "text_localization", tmp_path / "a")
    options = _options(task="word_recognition")
    report = write(tmp_path / "a", "icdar", tmp_path / "out", write_options=options)
    lost = "annotations not written: word recognition holds transcriptions"
    assert report.lossy == {f"polygon {lost}": 1, f"bbox {lost}": 2}
    assert (tmp_path / "out" / "word_recognition" / "train" / "gt.txt").read_text() == (
        "img_1.png,\nimg_2.png,\n"
    )
    with pytest.raises(LabelflowError, match="task must be one of"):
        convert(
            [str(tmp_path / "a")], "icdar", str(tmp_path / "x"), workers=1,
            write_options=_options(task="ocr"),
        )  # fmt: skip


def _options(**extra: str):
    from pipelines.formats.base import WriteOptions

    return WriteOptions(extra=extra)
