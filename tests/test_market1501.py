"""Market-1501: the fields of the peer sample's file names, image lists with their
rejects, and the writer's names (kept, rebuilt from attributes, or made up and counted)."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.formats import market1501
from pipelines.staging import ItemGroup
from pipelines.storage import Source
from tests._image_sets import attrs, image, write
from tests.conftest import FIXTURES
from tests.rows import by_id, read

LISTS = FIXTURES / "market1501" / "lists"


def test_peer_file_names_become_attributes_and_a_person_tag(peer: Path, tmp_path: Path) -> None:
    t = read(peer / "market1501" / "market1501_dataset", tmp_path / "o")
    items = by_id(t["items"], "item_id")
    assert {k: v["subset"] for k, v in items.items()} == {
        "bounding_box_test/0001_c1s1_001051_00.jpg": "test",
        "bounding_box_train/0002_c1s3_000151_00.jpg": "train",
        "query/0001_c2s3_000111_00.jpg": "query",
    }
    q = items["query/0001_c2s3_000111_00.jpg"]
    assert (q["file_name"], q["width"], q["height"]) == (
        "0001_c2s3_000111_00.jpg",
        5,
        2,
    )  # PNG data
    assert attrs(t, q["item_id"]) == {
        "person_id": 1,
        "camera_id": 2,
        "sequence": 3,
        "frame": 111,
        "bbox_index": 0,
        "query": True,
    }
    assert attrs(t, "bounding_box_test/0001_c1s1_001051_00.jpg")["query"] is False
    tags = {a["item_id"]: (a["kind"], a["label"]) for a in t["annotations"]}
    assert tags["bounding_box_train/0002_c1s3_000151_00.jpg"] == ("tag", "0002")


def test_lists_give_subsets_and_reject_what_they_cannot_name(tmp_path: Path) -> None:
    t = read(LISTS, tmp_path / "o")
    items = by_id(t["items"], "item_id")
    # A query image listed for the test subset stays in that subset.
    assert items["test/query/0001_c2s3_000111_00.jpg"]["subset"] == "test"
    assert attrs(t, "test/query/0001_c2s3_000111_00.jpg")["query"] is True
    distractor = "bounding_box_test/-1_c3s2_000100_01.jpg"
    assert attrs(t, distractor)["person_id"] == -1
    assert attrs(t, distractor)["bbox_index"] == 1
    assert attrs(t, "bounding_box_train/0002_c6s1_012345_02.jpg")["frame"] == 12345
    assert "bounding_box_test/not_a_market_name.jpg" in items  # the image stays, unlabelled
    rejects = {r["location"]: (r["record_kind"], r["reason"]) for r in t["rejects"]}
    assert rejects == {
        "images_test.txt, line 4": (
            "annotations",
            "file name is not <person>_c<camera>s<sequence>_<frame>_<box>: no person id",
        ),
        "images_test.txt, line 5": ("items", "path escapes its root: '../outside.jpg'"),
    }


def test_detects_folders_and_lists_but_not_plain_label_folders(tmp_path: Path) -> None:
    assert market1501.detect(Source(str(LISTS))) is not None
    other = tmp_path / "other"
    image(other / "query" / "cat.jpg")  # a folder named query, without Market names
    assert market1501.detect(Source(str(other))) is None


def test_writer_copies_images_and_lists_each_subset(peer: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = write(peer / "market1501" / "market1501_dataset", "market1501", out)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "bounding_box_test/0001_c1s1_001051_00.jpg",
        "bounding_box_train/0002_c1s3_000151_00.jpg",
        "images_query.txt",
        "images_test.txt",
        "images_train.txt",
        "query/0001_c2s3_000111_00.jpg",
    ]
    assert (out / "images_query.txt").read_text() == "query/0001_c2s3_000111_00.jpg\n"
    assert report.counts["annotations"]["written"] == 3
    assert report.lossy == {}


def test_list_round_trip_keeps_query_images_in_their_subset(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(LISTS, "market1501", out)
    assert (out / "images_test.txt").read_text() == (
        "bounding_box_test/0001_c1s1_001051_00.jpg\n"
        "query/0001_c2s3_000111_00.jpg\n"
        "bounding_box_test/-1_c3s2_000100_01.jpg\n"
        "bounding_box_test/not_a_market_name.jpg\n"
    )
    assert (out / "images_train.txt").read_text() == "bounding_box_train/0002_c6s1_012345_02.jpg\n"


def _group(name: str, subset: str | None, tags=(), **values) -> ItemGroup:
    item = {"item_id": f"x/{name}", "file_name": name, "subset": subset}
    anns = [{"ann_id": f"t{i}", "kind": "tag", "label": label} for i, label in enumerate(tags)]
    rows = [
        {
            "key": k,
            "value": json.dumps(v),
            "value_type": "bool" if isinstance(v, bool) else "number",
        }
        for k, v in values.items()
    ]
    return ItemGroup(item=item, annotations=anns, attributes={item["item_id"]: rows})


def test_names_are_rebuilt_from_the_person_tag_and_attributes() -> None:
    kept = _group("0007_c2s1_000100_01.png", "train")
    assert market1501.image_path(kept) == ("bounding_box_train/0007_c2s1_000100_01.png", "")
    # The tag's person wins over the name; other fields come from the attributes.
    g = _group("img.jpg", "test", ["12"], camera_id=3, sequence=2, frame=45, bbox_index=1)
    assert market1501.image_path(g) == ("bounding_box_test/0012_c3s2_000045_01.jpg", "")
    g = _group("img.jpg", None, person_id=-1, query=True, camera_id=1, sequence=1, frame=0)
    path, made = market1501.image_path(g)
    assert path.startswith("query/-1_c1s1_000000_") and made == "numbers"
    assert market1501.image_path(_group("cat.jpg", "val", ["cat"])) == (
        "bounding_box_val/cat.jpg",
        "person",
    )


def test_lossiness_of_other_formats(tmp_path: Path) -> None:
    report = write(FIXTURES / "widerface" / "with_labels", "market1501", tmp_path / "out")
    assert report.lossy["items without a person id written under their own name"] == 3
    assert report.lossy["tags other than the person id not written"] == 2
    assert report.lossy["bbox annotations not written: Market-1501 has no place for them"] == 3
