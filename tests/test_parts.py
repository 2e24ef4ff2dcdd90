"""Writers in parts (iTAG, Encord, Datumaro, MOT, MOTS): runs of items in source order, each
written by a task of its own (and a file's fragments joined by the last), give the bytes
one task gives."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import formats
from pipelines.formats import _datumaro_write, _encord_write, _fragments, mot, mots
from pipelines.formats._mot import frame_stem
from pipelines.formats.base import WriteOptions, WriteTask
from pipelines.runner import convert
from pipelines.schema import TABLES
from pipelines.staging import Staging, splitext_root_sql
from pipelines.storage import Output
from tests.conftest import FIXTURES, PEER

SAMPLES = [
    PEER / "encord_json/coco_exporter_project",
    PEER / "encord_json/video_data_1",
    PEER / "encord_json/image_group",
    FIXTURES / "encord/seed_image_group.json",
    FIXTURES / "encord/seed_video.json",
    PEER / "cvat_video/for_video",
    PEER / "mot",
    PEER / "mots",
    PEER / "datumaro/diverse",
    PEER / "labelme/labelme_dataset",
    FIXTURES / "itag/stages.manifest",
    FIXTURES / "example/annotations/instances_demo.json",
]
WRITERS = ["itag", "encord", "datumaro", "mots", "mot"]


def _staged(sample: Path, tmp_path: Path) -> Path:
    staged = tmp_path / "staged"
    if not staged.exists():
        assert convert([str(sample)], "parquet", str(staged), workers=1).ok
    return staged


def _files(out: Path) -> dict[str, bytes]:
    if out.is_file():
        return {"": out.read_bytes()}
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", WRITERS)
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_parts_write_the_bytes_one_task_writes(
    fmt: str, sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = _staged(sample, tmp_path)
    whole = convert([str(staged)], fmt, str(tmp_path / "whole"), workers=1)
    assert whole.ok, whole.failures
    monkeypatch.setattr(_fragments, "MIN_PART_ITEMS", 1)  # up to three parts a subset
    monkeypatch.setattr(mots, "PART_FRAMES", 1)  # up to six
    options = WriteOptions(workers=3)
    tasks = formats.get(fmt).plan_write(Staging(str(staged)), options)
    split = convert([str(staged)], fmt, str(tmp_path / "split"), workers=1, write_options=options)
    assert split.ok, split.failures
    assert _files(tmp_path / "split") == _files(tmp_path / "whole")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no fragments
    if fmt == "itag" and Staging(str(staged)).count_rows("items") > 1:
        assert max(t.shards for t in tasks) > 1  # Encord and Datumaro: tests below


@pytest.mark.parametrize("sample", [s for s in SAMPLES if "encord" in str(s)], ids=lambda p: p.name)
def test_encord_parts_begin_where_a_label_row_begins(
    sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = Staging(str(_staged(sample, tmp_path)))
    monkeypatch.setattr(_fragments, "MIN_PART_ITEMS", 1)
    for subset, items in staging.subset_sizes().items():
        groups = staging.iter_items(subset=subset, all_subsets=False)
        starts, at = [], 0
        for row in _encord_write._rows(groups):
            starts.append(at)
            at += len(row)
        for parts in range(1, items + 1):
            bounds = _encord_write._row_bounds(staging, subset, items, parts)
            assert bounds[0] == 0 and bounds[-1] == items and bounds == sorted(set(bounds))
            assert set(bounds[:-1]) <= set(starts)
            assert len(bounds) - 1 <= parts
        # A target at every item: every row begins a part.
        assert _encord_write._row_bounds(staging, subset, items, items) == [*starts, items]


NAMES = [
    "a.jpg", "a.b.c", "a.", ".profile", "..b", "...", "a/.b.c", "a.b/c", "a.b/c.d",
    "dir/.hidden", "x/..y.z", "plain", "/abs/p.png", "a b.tar.gz", "é.ü", "new\nline.png",
    "./a", "a/.", "", "trail/", "x.y/", "a/b.c/.d",
]  # fmt: skip


def test_repeated_id_query_takes_the_ids_the_writer_takes() -> None:
    """`splitext_root_sql` (`_REPEATED_IDS`, MOTS' frame names) spells splitext's rule."""
    con = duckdb.connect()
    for name in NAMES:
        root = con.execute(f"SELECT {splitext_root_sql('?')}", [name]).fetchone()[0]
        assert root == posixpath.splitext(name)[0], name
        item = {"file_name": name, "native_id": None, "item_id": "i"}
        assert _datumaro_write.wanted_id(item) == (root or "i")
        stem = con.execute(f"SELECT {mots._FRAME_NAME} FROM (SELECT ? AS file_name, "
                           "NULL AS native_id, 'i' AS item_id)", [name]).fetchone()[0]  # fmt: skip
        assert stem == frame_stem(item), name


@pytest.mark.parametrize(
    ("names", "ids", "parts"),
    [
        # The second `a` is numbered: that needs every id before it, so one task.
        (["a.jpg", "b.jpg", "a.png", "c.jpg"], ["a", "b", "a_2", "c"], [1]),
        (["a.jpg", "b.jpg", "a_2.png", "c.jpg"], ["a", "b", "a_2", "c"], [3, 3, 3]),
    ],
)
def test_datumaro_subset_is_split_unless_two_items_want_one_id(
    names: list[str], ids: list[str], parts: list[int], tmp_path: Path, monkeypatch
) -> None:
    images = [{"id": i, "file_name": n, "width": 4, "height": 4} for i, n in enumerate(names, 1)]
    (tmp_path / "c.json").write_text(json.dumps({"images": images, "annotations": []}))
    staged = _staged(tmp_path / "c.json", tmp_path)
    monkeypatch.setattr(_fragments, "MIN_PART_ITEMS", 1)
    options = WriteOptions(workers=3)
    tasks = _datumaro_write.plan_write(Staging(str(staged)), options)
    assert [t.shards for t in tasks] == parts
    out = tmp_path / "out"
    assert convert([str(staged)], "datumaro", str(out), workers=1, write_options=options).ok
    doc = json.loads(next((out / "annotations").iterdir()).read_bytes())
    assert [i["id"] for i in doc["items"]] == ids


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize(
    "chunks",
    [[[], [b"a"], [], [b"b", b"c"]], [[b"a", b"b"], [], [b"c"], []], [[], [], [], []]],
    ids=["first-empty", "last-empty", "all-empty"],
)
def test_joined_parts_give_one_tasks_bytes_in_any_order_they_finish(
    chunks: list[list[bytes]], where: str, tmp_path: Path
) -> None:
    """Part 0 begins the file (renamed into place on a local disk, copied elsewhere); `lead`
    comes before the first chunk of any part, `sep` between two."""

    def frame() -> tuple[bytes, bytes]:
        return b"<", b">"

    def write(name: str, order: list[int]) -> bytes:
        url = str(tmp_path / name) if where == "local" else f"memory://joined/{name}"
        out = Output(url)
        for k in order:
            task = WriteTask("itag", None, k, len(chunks))
            _fragments.write_joined(task, out, "x.txt", chunks[k], frame, lead=b"[", sep=b",")
        out.commit()
        data = out.fs.cat_file(f"{out.final}/x.txt")
        out.fs.rm(out.final, recursive=True)
        return data

    flat = [c for part in chunks for c in part]
    expected = b"<" + (b"[" + b",".join(flat) if flat else b"") + b">"
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        assert write(f"o{''.join(map(str, order))}", order) == expected


def test_a_single_file_output_keeps_its_fragments_beside_it_until_the_run_ends(
    tmp_path: Path,
) -> None:
    out = Output(str(tmp_path / "out.manifest"))
    fragments = _fragments.Fragments(out, "", 2)
    with fragments.open("chunks", 0) as f:
        f.write(b"x")
    assert fragments.finish(0) is None
    assert Path(out.side).is_dir() and not Path(out.tmp).exists()
    out.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("names", "tracks", "parts"),
    [
        (["a.png", "b.png", "c.png"], ["1", "2", None], 3),
        (["a.png", "b.png", "c.png"], ["1", "car", None], 1),  # numbered as it appears
        (["a.png", "a.jpg", "c.png"], ["1", "2", None], 1),  # a.jpg is renamed
        (["a.png", "x/a.jpg", "c.png"], [None, None, None], 1),
    ],
)
def test_mots_subset_is_split_unless_a_frame_depends_on_those_before(
    names: list[str], tracks: list[str | None], parts: int, tmp_path: Path, monkeypatch
) -> None:
    images = [{"id": i, "file_name": n, "width": 4, "height": 4} for i, n in enumerate(names, 1)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4,
             "segmentation": [[0, 0, 2, 0, 2, 2]], "iscrowd": 0,
             **({"attributes": {"track_id": t}} if t else {})}
            for i, t in enumerate(tracks, 1)]  # fmt: skip
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "car"}]}
    (tmp_path / "c.json").write_text(json.dumps(doc))
    staging = Staging(str(_staged(tmp_path / "c.json", tmp_path)))
    staged_tracks = staging.con.execute("SELECT track_id FROM annotations").fetchall()
    assert [t for (t,) in staged_tracks] == tracks
    monkeypatch.setattr(mots, "PART_FRAMES", 1)
    tasks = mots.plan_write(staging, WriteOptions(workers=3))
    assert [t.shards for t in tasks] == [parts] * parts


@pytest.mark.parametrize(
    ("frames", "parts", "length"),
    [
        ([None, None, None, None], 3, 4),  # counted
        ([0, 0, 1, 5], 3, 6),
        ([0, 2, 1, 3], 1, 4),  # gt.txt is in frame order
        ([0, None, None, 3], 1, 4),  # counted from the one before
    ],
)
def test_mot_sequence_is_split_unless_a_frame_depends_on_those_before(
    frames: list[int | None], parts: int, length: int, tmp_path: Path, monkeypatch
) -> None:
    rows = [{"item_id": f"i{k}", "subset": "s", "sequence_id": "seq", "frame_index": f,
             "width": 8, "height": 8} for k, f in enumerate(frames)]  # fmt: skip
    staged = tmp_path / "staged"
    (staged / "items").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, TABLES["items"]), staged / "items" / "part-0.parquet")
    for table in ("annotations", "points", "attributes"):
        (staged / table).mkdir()
        pq.write_table(TABLES[table].empty_table(), staged / table / "part-0.parquet")
    monkeypatch.setattr(_fragments, "MIN_PART_ITEMS", 1)
    options = WriteOptions(workers=3)
    tasks = mot.plan_write(Staging(str(staged)), options)
    assert [t.shards for t in tasks] == [parts] * parts
    whole = convert([str(staged)], "mot", str(tmp_path / "whole"), workers=1)
    split = convert([str(staged)], "mot", str(tmp_path / "split"), workers=1, write_options=options)
    assert whole.ok and split.ok
    assert _files(tmp_path / "split") == _files(tmp_path / "whole")
    seqinfo = (tmp_path / "split" / "s" / "seq" / "seqinfo.ini").read_text()
    assert f"seqLength={length}" in seqinfo


def test_mot_subset_of_several_sequences_keeps_every_frame(tmp_path: Path) -> None:
    """A task of a subset of several sequences reads the whole subset, not its sequence's
    count of items from the subset's start."""
    staged = _staged(PEER / "mot", tmp_path)
    assert convert([str(staged)], "mot", str(tmp_path / "out"), workers=1).ok
    assert convert([str(tmp_path / "out")], "parquet", str(tmp_path / "again"), workers=1).ok
    query = "SELECT count(*), count(DISTINCT sequence_id) FROM items"
    before = Staging(str(staged)).con.execute(query).fetchone()
    assert before[1] > 1
    assert Staging(str(tmp_path / "again")).con.execute(query).fetchone() == before
    count = "SELECT count(*) FROM annotations"
    assert Staging(str(tmp_path / "again")).scalar(count) == Staging(str(staged)).scalar(count) > 0
