"""VGGFace2 1.0 (face recognition): one box and five landmarks per image, in CSV files.

    labels.txt                                  optional: <label> <class name>, a line each
    bb_landmark/loose_bb_<subset>.csv           NAME_ID,X,Y,W,H
    bb_landmark/loose_landmark_<subset>.csv     NAME_ID,P1X,P1Y,...,P5X,P5Y
    <subset>/<label>/<image>.jpg                NAME_ID = <label>/<image> (no extension)

An image is an item (`item_id` `<subset>/<NAME_ID>`); its box row a `bbox`, its
landmark row a `keypoints` annotation of five points named P1..P5 after the
columns, both labelled with the NAME_ID's folder (none for `no_label/`). A
landmark row with no numbers is a `tag` of that label. labels.txt's class
names are label attributes (`class_name`, owner `label:<label>`). Pixels.

The two CSVs are paired by NAME_ID: when both are sorted by it (the VGGFace2
release is; a first pass checks) in one streaming merge, otherwise by holding
the box rows, the smaller file, in memory. Writing: labels.txt, the two CSVs
per subset, and the images under `<subset>/<NAME_ID>`. See
docs/formats/vggface2.md.
"""

from __future__ import annotations

import csv
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.builder import BatchBuilder, is_finite
from pipelines.errors import ParseError
from pipelines.formats import _image_sets as sets
from pipelines.formats import _per_image as per_image
from pipelines.formats._mot import number_text
from pipelines.formats.base import (
    Detection,
    Format,
    ReadOptions,
    ReadTask,
    WriteOptions,
    WriteResult,
    WriteTask,
)
from pipelines.schema import Batch
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output, Source

NAME = "vggface2"
ANN_DIR = "bb_landmark"
LABELS = "labels.txt"
NO_LABEL = "no_label"
LANDMARKS = ("P1", "P2", "P3", "P4", "P5")
BOX_COLUMNS = ("X", "Y", "W", "H")
LANDMARK_COLUMNS = tuple(f"{p}{axis}" for p in LANDMARKS for axis in "XY")
_CSV = re.compile(r"^loose_(bb|landmark)_(.+)\.csv$")


# -- detection and planning ---------------------------------------------------------------


def _csvs(source: Source) -> dict[tuple[str, str], dict[str, str]]:
    """(dataset root, subset) → {"bb" | "landmark": member}."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for f in source.files:
        folder, base = posixpath.split(f)
        m = _CSV.match(base)
        if m and posixpath.basename(folder) == ANN_DIR:
            found.setdefault((posixpath.dirname(folder), m.group(2)), {})[m.group(1)] = f
    return found


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        if _CSV.match(source.name) and source.head(n=16).startswith(b"NAME_ID"):
            return Detection(0.8, "a VGGFace2 loose_bb / loose_landmark CSV")
        return None
    for files in _csvs(source).values():
        member = next(iter(files.values()))
        if sets.first_line(source, member).startswith("NAME_ID"):
            return Detection(0.95, f"VGGFace2 CSVs in {posixpath.dirname(member)}")
    return None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    if not source.is_dir:
        m = _CSV.match(source.name)
        if not m:
            return []
        ctx = {"root": None, m.group(1): "", "header": True}
        return [ReadTask(NAME, source, subset=m.group(2), context=ctx, options=options)]
    tasks = []
    seen_roots: set[str] = set()
    for (root, subset), files in sorted(_csvs(source).items()):
        ctx = {"root": root, **files, "header": root not in seen_roots}
        seen_roots.add(root)
        tasks.append(ReadTask(NAME, source, subset=subset, context=ctx, options=options))
    return tasks


# -- reading ------------------------------------------------------------------------------


@dataclass
class _Row:
    key: str
    line: int
    values: list[float] | None  # None: the row names the image only
    error: str = ""
    record: str = ""


def _rows(source: Source, member: str, columns: tuple[str, ...]) -> Iterator[_Row]:
    """A CSV's rows in file order; a row that cannot be read carries its error."""
    uri = source.uri(member)
    index: list[int] = []
    for n, line in sets.text_lines(source, member):
        if not line.strip():
            continue
        cells = next(csv.reader([line]))
        if not index:
            names = [c.strip() for c in cells]
            missing = [c for c in ("NAME_ID", *columns) if c not in names]
            if missing:
                raise ParseError(uri, f"line {n}", f"header lacks {', '.join(missing)}")
            index = [names.index(c) for c in ("NAME_ID", *columns)]
            continue
        cells = [c.strip() for c in cells] + [""] * (max(index) + 1 - len(cells))
        key, raw = cells[index[0]], [cells[i] for i in index[1:]]
        if not key:
            yield _Row("", n, None, "no NAME_ID", line)
        elif not any(raw):
            yield _Row(key, n, None)
        else:
            try:
                values = [float(v) for v in raw]
            except ValueError:
                yield _Row(key, n, None, "a value is missing or not a number", line)
                continue
            ok = is_finite(*values)
            yield _Row(key, n, values if ok else None, "" if ok else "a value is not finite", line)


Pair = tuple[str, list["_Row | None"], str]
"""(NAME_ID, [landmark row, box row], problem): the rows of one image, or a row set aside."""


def _alone(side: int, row: _Row, problem: str = "") -> Pair:
    pair: list[_Row | None] = [None, None]
    pair[side] = row
    return row.key, pair, problem if row.key else (problem or row.error)


def _is_sorted(rows: Iterable[_Row]) -> bool:
    last = None
    for row in rows:
        if row.key:
            if last is not None and row.key < last:
                return False
            last = row.key
    return True


def _merge(landmarks: Iterator[_Row], boxes: Iterator[_Row]) -> Iterator[Pair]:
    """Both files sorted by NAME_ID (as the VGGFace2 release is): one pass, two rows held."""
    its = (landmarks, boxes)
    heads = [next(landmarks, None), next(boxes, None)]
    last: list[str | None] = [None, None]

    def advance(side: int) -> _Row:
        row = heads[side]
        assert row is not None
        heads[side] = next(its[side], None)
        return row

    while heads[0] is not None or heads[1] is not None:
        keys = [h.key if h is not None else None for h in heads]
        side = next((s for s in (0, 1) if heads[s] is not None and not keys[s]), None)
        if side is None:
            side = next((s for s in (0, 1) if keys[s] is not None and keys[s] == last[s]), None)
            if side is not None:
                yield _alone(side, advance(side), "NAME_ID repeated in its file")
                continue
        if side is not None:
            yield _alone(side, advance(side))
        elif keys[0] == keys[1]:
            last = [keys[0], keys[1]]
            row = advance(0)
            yield row.key, [row, advance(1)], ""
        else:
            side = 0 if keys[1] is None or (keys[0] is not None and keys[0] < keys[1]) else 1
            last[side] = keys[side]
            yield _alone(side, advance(side))


def _lookup(landmarks: Iterator[_Row], boxes: Iterator[_Row]) -> Iterator[Pair]:
    """Files in any order: the box rows (the smaller file) are held by NAME_ID."""
    held: dict[str, _Row] = {}
    for row in boxes:
        if not row.key:
            yield _alone(1, row)
        elif row.key in held:
            yield _alone(1, row, "NAME_ID repeated in its file")
        else:
            held[row.key] = row
    seen: set[str] = set()
    for row in landmarks:
        if not row.key:
            yield _alone(0, row)
        elif row.key in seen:
            yield _alone(0, row, "NAME_ID repeated in its file")
        else:
            seen.add(row.key)
            yield row.key, [row, held.pop(row.key, None)], ""
    for row in held.values():
        yield _alone(1, row)


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    ctx, src = task.context, task.source
    root = ctx["root"]
    if ctx["header"] and root is not None:
        _labels(b, src, sets.join(root, LABELS))
    images = sets.images_under(src, sets.join(root, task.subset)) if root is not None else {}
    prefix = sets.join(root, task.subset) + "/"

    def rows(kind: str, columns: tuple[str, ...]) -> Iterator[_Row]:
        return _rows(src, ctx[kind], columns) if kind in ctx else iter(())

    args = ("landmark", LANDMARK_COLUMNS), ("bb", BOX_COLUMNS)
    ordered = all(_is_sorted(rows(*a)) for a in args)
    pairs = (_merge if ordered else _lookup)(rows(*args[0]), rows(*args[1]))
    for key, (lm_row, bb_row), problem in pairs:
        if problem:
            for row, member in ((lm_row, ctx.get("landmark")), (bb_row, ctx.get("bb"))):
                if row is not None:
                    where = f"{member or src.name}, line {row.line}"
                    b.reject(where, problem, record=row.record or row.key, record_kind="items")
            continue
        _item(task, b, key, lm_row, bb_row, images.get(key), prefix)
        if b.full():
            yield b.flush()
    yield b.flush()


def _labels(b: BatchBuilder, source: Source, member: str) -> None:
    if member not in source.files:
        return
    for _, line in sets.text_lines(source, member):
        parts = line.split(maxsplit=1)
        if parts:
            class_name = parts[1].strip() if len(parts) > 1 else None
            b.attribute(
                f"label:{parts[0]}", None, "class_name", class_name, owner_kind="label", source=NAME
            )


def _item(
    task: ReadTask,
    b: BatchBuilder,
    key: str,
    lm: _Row | None,
    bb: _Row | None,
    image: str | None,
    prefix: str,
) -> None:
    item_id = sets.join(task.subset, key)
    file_name = image[len(prefix) :] if image else key + ".jpg"
    sets.add_item(
        b, task, item_id, image=image, file_name=file_name, subset=task.subset, native_id=key
    )
    folder = key.split("/", 1)[0] if "/" in key else None
    label = None if folder == NO_LABEL else folder
    for row, member in ((lm, task.context.get("landmark")), (bb, task.context.get("bb"))):
        if row is not None and row.error:
            b.read_counts["annotations"] += 1
            where = f"{member or task.source.name}, line {row.line}"
            b.reject(where, row.error, record=row.record, record_kind="annotations")
    if bb is not None and bb.values:
        x, y, w, h = bb.values
        b.annotation(
            ann_id=f"{item_id}/bbox",
            item_id=item_id,
            kind="bbox",
            label=label,
            units="px",
            bbox_x=x,
            bbox_y=y,
            bbox_w=w,
            bbox_h=h,
        )
        b.read_counts["annotations"] += 1
    if lm is not None and lm.values:
        ann_id = f"{item_id}/landmarks"
        b.annotation(ann_id=ann_id, item_id=item_id, kind="keypoints", label=label, units="px")
        v = lm.values
        pts = [{"x": v[2 * i], "y": v[2 * i + 1], "name": n} for i, n in enumerate(LANDMARKS)]
        b.named_points(ann_id, item_id, pts)
        b.read_counts["annotations"] += 1
    elif lm is not None and not lm.error and label:
        sets.tag(b, item_id, label)


# -- writing ---------------------------------------------------------------------------------


_LANDMARK_KINDS = ("keypoints", "points")
"""A landmark row comes from these kinds: the only vertices the writer reads."""


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    return sets.plan(NAME, staging, options, shared=True)


def _label(group: ItemGroup) -> str | None:
    for ann in group.annotations:
        if ann["kind"] in ("bbox", "keypoints", "points", "tag") and ann.get("label"):
            return ann["label"]
    return None


def name_id(group: ItemGroup) -> str:
    """NAME_ID: `<label>/<image>`; an image already under its label folder keeps its path.

    A VGGFace2 image whose rows were all rejected keeps its NAME_ID too: its
    folder still names the person.
    """
    name = per_image.strip_ext(per_image.item_name(group.item))
    label = _label(group)
    if label is None and group.item.get("source_format") == NAME and "/" in name:
        return name
    label = label or NO_LABEL
    return name if name.split("/", 1)[0] == label and "/" in name else f"{label}/{name}"


def _image_rel(group: ItemGroup) -> list[str]:
    item = group.item
    suffix = posixpath.splitext(per_image.item_name(item))[1]
    suffix = suffix if per_image.is_image(suffix) else per_image.image_suffix(item)
    return [f"{sets.subset_name(item.get('subset'))}/{name_id(group)}{suffix}"]


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    if task.shard >= 0:
        return sets.copy_images(task, staging, out, _image_rel)
    if task.shard == sets.SHARED:
        return _write_labels(staging, out)
    result = WriteResult()
    subset = sets.subset_name(task.subset)
    lm_rel = f"{ANN_DIR}/loose_landmark_{subset}.csv"
    bb_rel = f"{ANN_DIR}/loose_bb_{subset}.csv"
    with out.open(lm_rel) as lm_file, out.open(bb_rel) as bb_file:
        lm_file.write(_csv_line(["NAME_ID", *LANDMARK_COLUMNS]))
        bb_file.write(_csv_line(["NAME_ID", *BOX_COLUMNS]))
        for group in sets.groups(staging, subset=task.subset, vertex_kinds=_LANDMARK_KINDS):
            result.items += 1
            key = name_id(group)
            box, marks, tags = _pick(group, result)
            if box is not None:
                bb_file.write(_csv_line([key, *box]))
            if marks is not None:
                lm_file.write(_csv_line([key, *marks]))
            elif box is None or tags:
                lm_file.write(_csv_line([key]))  # keeps the image (and its label)
    result.files += [lm_rel, bb_rel]
    return result


def _pick(group: ItemGroup, result: WriteResult) -> tuple[list | None, list | None, int]:
    """The item's one box and one landmark set; tags written as a bare landmark row."""
    box = marks = None
    tags = 0
    label = _label(group)
    for ann in group.annotations:
        kind = ann["kind"]
        if ann.get("label") not in (None, label) and kind != "tag":
            result.lose("annotations with a second label per image not written")
        elif kind == "bbox" and box is None and ann.get("bbox_w") is not None:
            box = [ann[k] for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")]
            result.annotations += 1
        elif kind in _LANDMARK_KINDS and marks is None:
            pts = group.points.get(ann["ann_id"], [])
            if len(pts) != len(LANDMARKS):
                result.lose("landmark sets that are not 5 points not written")
                continue
            order = {n: i for i, n in enumerate(LANDMARKS)}
            pts = sorted(pts, key=lambda p: (order.get(p.get("name"), p["idx"]), p["idx"]))
            marks = [v for p in pts for v in (p["x"], p["y"])]
            result.annotations += 1
        elif kind == "tag" and ann.get("label") == label and not tags:
            tags = 1
            result.annotations += 1
        elif kind in ("bbox", "keypoints", "points", "tag"):
            result.lose(f"{kind} annotations past the first per image not written")
        else:
            sets.lose_unwritten(result, ann, "VGGFace2")
    return box, marks, tags


def _csv_line(cells: list[Any]) -> bytes:
    text = ",".join(c if isinstance(c, str) else number_text(c) for c in cells)
    return (text + "\n").encode()


def _write_labels(staging: Staging, out: Output) -> WriteResult:
    names: dict[str, str | None] = {}
    for owner, value in staging.con.execute(
        "SELECT owner_id, value FROM attributes WHERE owner_kind = 'label' AND key = 'class_name' "
        "AND source = ? ORDER BY filename, file_row_number",
        [NAME],
    ).fetchall():
        names.setdefault(owner.removeprefix("label:"), value)
    for label, _ in staging.labels():
        names.setdefault(label, None)
    result = WriteResult()
    text = "".join(f"{k} {v}\n" if v else f"{k}\n" for k, v in names.items())
    per_image.put(out, LABELS, text, result)
    return result


FORMAT = Format(
    name=NAME,
    description="VGGFace2 1.0: a box (loose_bb CSV) and 5 landmarks (loose_landmark CSV) per "
    "face image, labels from folders and labels.txt",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
)
