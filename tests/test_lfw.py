"""LFW: pairs on the first image's tag, landmarks as points, the people list, CVAT's
flat layout, rejects with their lines, and a writer that gives the peer files back."""

from __future__ import annotations

from pathlib import Path

from pipelines.formats import lfw
from pipelines.runner import convert
from pipelines.storage import Source
from tests._image_sets import attrs, image, write
from tests.conftest import FIXTURES
from tests.rows import by_id, read

MALFORMED = FIXTURES / "lfw" / "malformed"


def test_peer_pairs_landmarks_and_people(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "lfw" / "lfw_dataset", tmp_path / "o")
    items = by_id(t["items"], "item_id")
    assert sorted(items) == [
        "test/name0/name0_0001",
        "test/name1/name1_0001",
        "test/name1/name1_0002",
    ]
    first = items["test/name1/name1_0001"]
    assert (first["subset"], first["file_name"], first["width"], first["height"]) == (
        "test",
        "name1/name1_0001.jpg",
        5,
        2,
    )  # the .jpg holds PNG data
    # `name1\t1 \t2`: the stray space does not stop the matched pair.
    assert attrs(t, "test/name1/name1_0001/tag") == {"positive_pairs": ["name1/name1_0002"]}
    assert attrs(t, "test/name0/name0_0001/tag") == {
        "negative_pairs": ["name1/name1_0001", "name1/name1_0002"]
    }
    anns = by_id(t["annotations"], "ann_id")
    assert anns["test/name1/name1_0002/tag"]["label"] == "name1"
    marks = anns["test/name0/name0_0001/points/0"]
    assert (marks["kind"], marks["label"], marks["units"]) == ("points", "name0", "px")
    pts = [(p["idx"], p["x"], p["y"]) for p in t["points"] if p["ann_id"] == marks["ann_id"]]
    assert sorted(pts) == [
        (0, 0.0, 4.0),
        (1, 3.0, 3.0),
        (2, 2.0, 2.0),
        (3, 1.0, 0.0),
        (4, 3.0, 0.0),
    ]
    # people.txt has no final newline; both people are kept with their counts.
    assert attrs(t, "dataset:test/annotations/people.txt") == {"name0": 2, "name1": 2}
    assert attrs(t, "dataset:test/annotations/pairs.txt") == {"header": [1, 2]}


def test_bad_lines_are_rejected_with_file_and_line(tmp_path: Path) -> None:
    t = read(MALFORMED, tmp_path / "o")
    rejects = {r["location"]: (r["record_kind"], r["reason"]) for r in t["rejects"]}
    assert rejects == {
        "annotations/pairs.txt, line 3": (
            "annotations",
            "6 fields; a pair has 3 (matched) or 4 (mismatched)",
        ),
        "annotations/landmarks.txt, line 2": (
            "annotations",
            "expected an image then x y pairs of finite numbers",
        ),
        "annotations/landmarks.txt, line 3": ("annotations", "a coordinate is not a number"),
        "annotations/people.txt, line 4": ("labels", "expected <person> <image count>"),
    }
    items = by_id(t["items"], "item_id")
    # Every image a good line names is an item; `-` names an image outside any person folder.
    assert sorted(items) == [
        "Abel_Pacheco/Abel_Pacheco_0001",
        "Abel_Pacheco/Abel_Pacheco_0002",
        "Abel_Pacheco/Abel_Pacheco_0004",
        "Akhmed_Zakayev/Akhmed_Zakayev_0001",
        "Jane/Jane_0001",
        "external_image",
    ]
    assert items["external_image"]["subset"] is None
    assert attrs(t, "Jane/Jane_0001/tag") == {"negative_pairs": ["external_image"]}
    assert not [a for a in t["annotations"] if a["item_id"] == "external_image"]


def test_cvat_flat_layout_and_detection(tmp_path: Path) -> None:
    src = tmp_path / "src"
    image(src / "images" / "ann" / "ann_0001.jpg")
    image(src / "images" / "ann" / "ann_0002.jpg")
    (src / "pairs.txt").write_text("ann\t1\t2\n")
    (src / "people.txt").write_text("ann\t2\n")
    assert lfw.detect(Source(str(src))) is not None
    t = read(src, tmp_path / "o")
    assert [i["item_id"] for i in t["items"]] == ["ann/ann_0001", "ann/ann_0002"]
    assert {i["subset"] for i in t["items"]} == {None}
    assert attrs(t, "ann/ann_0001/tag") == {"positive_pairs": ["ann/ann_0002"]}
    loose = tmp_path / "loose"  # a pairs.txt of something else, beside no images/
    loose.mkdir()
    (loose / "pairs.txt").write_text("a b\n")
    assert lfw.detect(Source(str(loose))) is None


def test_undecodable_pairs_names_its_line(tmp_path: Path) -> None:
    ann = tmp_path / "src" / "annotations"
    ann.mkdir(parents=True)
    (ann / "pairs.txt").write_bytes(b"a\t1\t2\nb\xfe\t1\t2\n")
    report = convert([str(tmp_path / "src")], "parquet", str(tmp_path / "o"), workers=1)
    assert not report.ok
    assert report.failures[0].endswith("annotations/pairs.txt: line 2: not UTF-8 text")


def test_writer_gives_the_peer_files_back(peer: Path, tmp_path: Path) -> None:
    src = peer / "lfw" / "lfw_dataset" / "test"
    out = tmp_path / "out"
    report = write(peer / "lfw" / "lfw_dataset", "lfw", out)
    for name in ("pairs.txt", "landmarks.txt"):
        written = (out / "test" / "annotations" / name).read_text()
        assert written == (src / "annotations" / name).read_text().replace("1 \t", "1\t")
    # people.txt as the source had it (it counts all of a person's images), with a final newline
    assert (out / "test/annotations/people.txt").read_text() == "2\nname0\t2\nname1\t2\n"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg")) == [
        "test/images/name0/name0_0001.jpg",
        "test/images/name1/name1_0001.jpg",
        "test/images/name1/name1_0002.jpg",
    ]
    assert report.counts["annotations"]["written"] == 6
    assert report.lossy == {}


def test_items_outside_any_pair_are_listed_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = write(FIXTURES / "widerface" / "with_labels", "lfw", out, save_images="false")
    pairs = (out / "default" / "annotations" / "pairs.txt").read_text().splitlines()
    assert pairs == ["label0/image1", "image2", "label1/image3"]  # no person, no folder
    assert (out / "default/annotations/people.txt").read_text() == "2\nlabel0\t1\nlabel1\t1\n"
    assert report.lossy == {"bbox annotations not written: LFW has no place for them": 3}
    again = read(out, tmp_path / "again")
    assert sorted(i["item_id"] for i in again["items"]) == [
        "default/image2",
        "default/label0/image1",
        "default/label1/image3",
    ]
