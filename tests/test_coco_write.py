"""COCO writer from staging: parts and blocks change nothing in the file; fragments join once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines import jsonframe
from pipelines.formats import _coco_write
from pipelines.formats._fragments import Fragments, Piece
from pipelines.formats.base import WriteOptions
from pipelines.masks import encode, from_uncompressed, string_runs, to_uncompressed
from pipelines.runner import convert
from pipelines.staging import Staging
from pipelines.storage import Output
from tests.conftest import PEER

# Between them: merged groups, masks with both RLE spellings, keypoints, captions,
# video and DICOM containers, outside track shapes, kinds written as boxes or skipped,
# attributes of every source, several subsets, native ids kept and renumbered.
SAMPLES = [
    "encord_coco/coco_exporter_project",
    "encord_json/coco_exporter_project",
    "encord_json/video_data_1",
    "cvat_video/for_video",
    "datumaro/diverse",
    "labelme/labelme_dataset",
    "coco_keypoints/coco_person_keypoints",
]


def _staged(sample: str, tmp_path: Path) -> Path:
    staged = tmp_path / "staged"
    assert convert([str(PEER / sample)], "parquet", str(staged), workers=1).ok
    return staged


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("sample", SAMPLES)
def test_parts_and_blocks_write_the_same_bytes(
    sample: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = _staged(sample, tmp_path)
    whole = convert([str(staged)], "coco", str(tmp_path / "whole"), workers=1)
    assert whole.ok
    # Every item its own block, up to three parts a subset, run one after another.
    monkeypatch.setattr(_coco_write, "MIN_PART_ITEMS", 1)
    monkeypatch.setattr(_coco_write, "BLOCK_ITEMS", 1)
    split = convert([str(staged)], "coco", str(tmp_path / "split"), workers=1,
                    write_options=WriteOptions(workers=3))  # fmt: skip
    assert split.ok
    assert _files(tmp_path / "split") == _files(tmp_path / "whole")
    assert (split.counts, split.lossy, split.files) == (whole.counts, whole.lossy, whole.files)


def test_parts_on_a_process_pool_join_into_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = _staged("encord_coco/coco_exporter_project", tmp_path)
    assert convert([str(staged)], "coco", str(tmp_path / "one"), workers=1).ok
    monkeypatch.setattr(_coco_write, "MIN_PART_ITEMS", 1)  # planning runs here, not in the pool
    monkeypatch.setattr(_coco_write, "BLOCK_ITEMS", 1)
    report = convert([str(staged)], "coco", str(tmp_path / "two"), workers=2,
                     write_options=WriteOptions(workers=2))  # fmt: skip
    assert report.ok and report.files == 1
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    assert not [p for p in (tmp_path / "two").rglob(".*")]


def test_renumbered_ids_run_on_across_parts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in (5, 3, 9)],
        "annotations": [
            {"id": 1, "image_id": img, "category_id": 1, "bbox": [n, 0, 1, 1], "area": 1}
            for n, img in enumerate((9, 5, 5, 3, 9))  # ids repeat: numbered anew
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    src = tmp_path / "instances_x.json"
    src.write_text(json.dumps(doc))
    monkeypatch.setattr(_coco_write, "MIN_PART_ITEMS", 1)
    monkeypatch.setattr(_coco_write, "BLOCK_ITEMS", 1)
    out = tmp_path / "out"
    assert convert(
        [str(src)], "coco", str(out), workers=1, write_options=WriteOptions(workers=3)
    ).ok
    written = json.loads((out / "annotations/instances_x.json").read_text())
    assert [i["id"] for i in written["images"]] == [5, 3, 9]
    anns = written["annotations"]
    assert [(a["id"], a["image_id"], a["bbox"][0]) for a in anns] == [
        (1, 5, 1), (2, 5, 2), (3, 3, 3), (4, 9, 0), (5, 9, 4)
    ]  # fmt: skip


def test_parts_read_only_the_files_that_hold_their_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two subsets, their annotations listed image by image and read in several tasks:
    # staging holds several part files a table, and each part needs only some.
    for subset in ("train", "val"):
        doc = {
            "images": [{"id": i, "file_name": f"{subset}{i}.jpg", "width": 90, "height": 90}
                       for i in range(40)],
            "annotations": [
                {"id": 2 * i + k, "image_id": i, "category_id": 1, "bbox": [i, k, 2, 2],
                 "area": 4, "segmentation": [[i, k, i + 2, k, i + 2, k + 2.5]],
                 "attributes": {"occluded": bool(k), "colour": f"c{i}"}}
                for i in range(40) for k in range(2)
            ],
            "categories": [{"id": 1, "name": "a"}],
        }  # fmt: skip
        (tmp_path / f"instances_{subset}.json").write_text(json.dumps(doc))
    monkeypatch.setattr(jsonframe, "ONE_TASK_BYTES", 0)
    monkeypatch.setattr(jsonframe, "MIN_TASK_BYTES", 2000)
    monkeypatch.setattr(jsonframe, "CHUNK_BYTES", 1000)
    staged = tmp_path / "staged"
    sources = [str(tmp_path / f"instances_{s}.json") for s in ("train", "val")]
    assert convert(sources, "parquet", str(staged), workers=1).ok
    whole = convert([str(staged)], "coco", str(tmp_path / "whole"), workers=1)
    monkeypatch.setattr(_coco_write, "MIN_PART_ITEMS", 1)
    monkeypatch.setattr(_coco_write, "BLOCK_ITEMS", 4)  # ten blocks a subset
    options = WriteOptions(workers=3)
    staging = Staging(str(staged))
    plans = [t.options.extra["_coco_plan"] for t in _coco_write.plan_write(staging, options)]
    split = convert([str(staged)], "coco", str(tmp_path / "split"), workers=1,
                    write_options=options)  # fmt: skip
    assert whole.ok and split.ok
    assert _files(tmp_path / "split") == _files(tmp_path / "whole")
    for plan in plans[::3]:  # one plan a subset, three parts each
        where, params = _coco_write._where(plan.subset)
        positions = _coco_write._positions(where)
        for k, reads in enumerate(plan.reads):
            lo, hi = plan.bounds[k], plan.bounds[k + 1]
            for table in _coco_write._SPANNED:
                holding = staging.con.execute(
                    f"SELECT DISTINCT t.filename FROM {table} t JOIN ({positions}) s "
                    f"USING (item_id) WHERE s.pos > {lo} AND s.pos <= {hi}",
                    params,
                ).fetchall()
                assert {f for (f,) in holding} <= set(reads[table])  # all it needs,
                assert 0 < len(reads[table]) <= 3  # of more than six files


def test_parts_share_the_work_and_none_passes_the_block_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_coco_write, "MAX_PART_BLOCKS", 100)
    work = [50] * 20 + [1] * 300  # busy blocks first: half the work is in 13 blocks
    assert _coco_write._part_starts(work, 2) == [0, 13, 113, 213, 313]
    assert _coco_write._part_starts(work, 1) == [0, 100, 200, 300]
    assert _coco_write._part_starts([], 2) == [0]


_FEW_FILES = """
import resource, sys
from pipelines.formats import _coco_write
from pipelines.runner import convert
resource.setrlimit(resource.RLIMIT_NOFILE, (200, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
_coco_write.BLOCK_ITEMS = 1  # 600 blocks: one spill file open for each while a part is read
_coco_write.MAX_PART_BLOCKS = 64
report = convert([sys.argv[1]], "coco", sys.argv[2], workers=1)
print(report.ok, report.files)
"""


def test_a_big_subset_gets_parts_enough_to_stay_under_the_open_file_limit(
    tmp_path: Path,
) -> None:
    doc = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 9, "height": 9} for i in range(600)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 2, 2], "area": 4}
            for i in range(600)
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    src = tmp_path / "instances_x.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-c", _FEW_FILES, str(src), str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["True", "1"]
    written = json.loads((out / "annotations/instances_x.json").read_text())
    assert [a["image_id"] for a in written["annotations"]] == list(range(600))


@pytest.mark.parametrize("sample", SAMPLES)
def test_plan_keeps_annotation_ids_exactly_when_merged_annotations_have_unique_ints(
    sample: str, tmp_path: Path
) -> None:
    staging = Staging(str(_staged(sample, tmp_path)))
    for subset in staging.subsets():
        plan = _coco_write._plan_subset(staging, subset, 1, b"", [], {})
        where, params = _coco_write._where(subset)
        merged = (
            "SELECT a.native_id AS n FROM annotations a JOIN items i USING (item_id) WHERE "
            f"{where.replace('subset', 'i.subset')} "
            "GROUP BY a.native_id, coalesce(a.group_id, a.ann_id)"
        )
        assert plan.ann_ids == _coco_write._keep_native(staging, merged, params)


def test_numbering_that_disagrees_with_the_plan_fails() -> None:
    plan = _coco_write.SubsetPlan(None, "a.json", (0, 2, 4), (0, 3), True, False, {}, b"", b"[]")
    _coco_write._check_numbering(plan, [[0, 3], [3, 1]])
    with pytest.raises(RuntimeError, match="numbering"):
        _coco_write._check_numbering(plan, [[0, 2], [3, 1]])


def test_fragments_join_once_in_part_order_whatever_order_parts_finish() -> None:
    out = Output("memory://lf-fragments/out")
    frags = Fragments(out, "annotations/x.json", 3)
    for part, text in ((2, b"c"), (0, b"a"), (1, b"")):
        with frags.open("rows", part) as f:
            f.write(text)
    assert frags.finish(2, b"2") is None
    assert frags.finish(0, b"0") is None
    assert frags.finish(1, b"1") == [b"0", b"1", b"2"]
    assert frags.finish(1, b"1") is None  # the join is claimed once
    frags.join([b"[", Piece("rows", b","), b"]"])
    fs = out.fs
    assert fs.cat_file(out.path("annotations/x.json")) == b"[a,c]"  # empty fragments skipped
    assert fs.ls(out.path("annotations"), detail=False) == [out.path("annotations/x.json")]
    out.abort()


def test_uncompressed_runs_read_from_the_string_match_painting_the_mask() -> None:
    rng = np.random.default_rng(7)
    for _ in range(300):
        h, w = rng.integers(1, 40, size=2)
        mask = rng.random((h, w)) < rng.random()
        counts = encode(mask)
        assert _coco_write._uncompressed(counts, h, w) == to_uncompressed(counts, h, w)
    # Runs that are not what painting gives (an empty run inside, a short total)
    # take the painted way.
    for runs, h, w in (([2, 0, 3, 1], 2, 3), ([1, 2], 2, 3)):
        counts = from_uncompressed(runs, h, w)
        assert _coco_write._uncompressed(counts, h, w) == to_uncompressed(counts, h, w)


def test_string_runs_decode_what_pycocotools_encodes_and_name_bad_places() -> None:
    """Run lengths from the string alone, checked against pycocotools' own
    decoding: long runs (several characters a number), deltas of either sign."""
    rng = np.random.default_rng(11)
    for h, w, blocks in ((1, 1, 0), (7, 5, 3), (300, 400, 40), (480, 640, 200)):
        mask = np.zeros((h, w), bool)
        for _ in range(blocks):
            y, x = rng.integers(0, h), rng.integers(0, w)
            mask[y : y + rng.integers(1, 60), x : x + rng.integers(1, 60)] = True
        counts = encode(mask)
        assert string_runs(counts).tolist() == to_uncompressed(counts, h, w)
    assert string_runs("").tolist() == []
    for bad, reason in (
        ("0a", "the string ends inside a number"),
        ("00 0", "character ' ' at 2 is not in the codec's alphabet"),
        ("0€0", "character '€' at 1 is not in the codec's alphabet"),
        ("1O1", "negative run length at 2"),
    ):
        with pytest.raises(ValueError, match=reason):
            string_runs(bad)


def test_writers_are_planned_for_the_run_s_workers(tmp_path: Path, monkeypatch) -> None:
    """Without writer options the run's --workers reaches plan_write (it once got 1)."""
    from pipelines import runner

    staged = _staged("coco_instances/coco_instances", tmp_path)
    asked: list[int] = []
    real = runner.plan_write

    def plan_write(fmt, staging, options):
        asked.append(options.workers)
        return real(fmt, staging, options)

    monkeypatch.setattr(runner, "plan_write", plan_write)

    class Inline:
        workers = 3
        started = False

        def map(self, fn, calls, progress, what, place="auto"):
            return (fn(*args) for args in calls)

    report = runner.Report()
    out = Output(str(tmp_path / "out"))
    target = runner.formats.get("coco")
    runner._write_all(target, runner.Staging(str(staged)), out, Inline(), report, None, None)
    assert asked == [3]
