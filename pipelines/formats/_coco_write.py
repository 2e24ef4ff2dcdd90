"""COCO writer: one JSON file per subset, written from the staging tables in parallel parts.

Planning splits each subset's items, in source order, into one part per worker
(weighted by annotation rows). Each part's task streams its items, annotations,
vertices and attributes from DuckDB as Arrow batches, regroups them by block of
items through files on local disk (no sort of a whole part), and writes its
slices of the `images` and `annotations` arrays as fragments, a block at a
time; the last task to finish joins them into the file
(`pipelines/formats/_fragments.py`). Memory is one block per task, whatever
the input size.

Ids are stable and global: an export's own integer ids are kept when they are
unique, otherwise images are numbered by their position in the subset and
annotations 1..N in output order, each part starting after the annotations the
plan counted for the parts before it. Category ids follow the labels' integer
`label_id`s when they are consistent, otherwise 1..N in order of first
appearance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from pipelines.builder import parse_attribute
from pipelines.formats._coco_fast import ATTRIBUTE_COLUMNS
from pipelines.formats._fragments import Fragments, Piece
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.item_spans import ItemSpans, item_spans
from pipelines.jsonframe import paused_gc
from pipelines.masks import area as rle_area
from pipelines.masks import bbox as rle_bbox
from pipelines.masks import string_runs, to_uncompressed
from pipelines.staging import Staging, sql_strings
from pipelines.storage import Output

_DIRECT = ("bbox", "polygon", "mask", "keypoints", "caption")
_AS_BOX = ("rotated_bbox", "polyline", "point", "points", "ellipse", "cuboid_2d")
_ANN_COLUMNS = ("ann_id", "native_id", "kind", "label", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
                "area", "iscrowd", "confidence", "mask", "mask_h", "mask_w", "text", "group_id",
                "outside", "occluded", "angle_deg", "track_id", "keyframe")  # fmt: skip
_PLAN = "_coco_plan"
_SPANNED = ("annotations", "points", "attributes")
"""The tables a part reads only the files of its items from (`SubsetPlan.reads`)."""
BLOCK_ITEMS = 1024
"""Items per block: a block's rows are the most a task holds at once."""
_SPILL_ROWS = 16_384
MIN_PART_ITEMS = 2048
"""Smaller subsets are one part: splitting them costs more than it saves."""
MAX_PART_BLOCKS = 128
"""Past this many blocks a subset gets more parts than workers. A part's queries keep
a spill file open for each of its blocks (1,250 blocks failed under the usual limit
of 1,024 open files: an export of 5 GB would have had 1,000 a part), and DuckDB's
joins hold a part's rows: staging 1 GB → COCO, 2 workers, 256 blocks a part: tree
PSS 677–684 MB, 128: 523–567 MB, as fast (18.4–18.5 and 18.6–19.2 s); 64: 20.6 s."""


@dataclass(frozen=True)
class SubsetPlan:
    """What every part of one subset's file needs to know, computed once when planning."""

    subset: str | None
    name: str
    bounds: tuple[int, ...]
    """Item positions (1-based, source order) part k writes: bounds[k] < pos <= bounds[k + 1]."""
    ann_offsets: tuple[int, ...] | None
    """Annotations the parts before part k write: where its numbering starts (None
    when the export's own ids are kept)."""
    image_ids: bool
    ann_ids: bool
    cat_ids: dict[str, int]
    head: bytes
    categories: bytes
    edges: tuple[tuple[str, int, str, int], ...] = ()
    """Per part, the file and row of its first item and of its last (none: no items)."""
    reads: tuple[dict[str, tuple[str, ...]], ...] | None = None
    """Per part, for each table in `_SPANNED`, the part files that hold rows of its items
    (`_part_reads`); a table not named, or None: every file."""


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    # Planning counts over whole tables; the runner closes its connection once the plan
    # is made, which hands that memory back before the tasks run.
    with ThreadPoolExecutor(len(_SPANNED)) as pool:
        # Found while DuckDB plans, for the subsets split into parts.
        big = staging.count_rows("items") > MAX_PART_BLOCKS * BLOCK_ITEMS
        spanned = _SPANNED if options.workers > 1 or big else ()
        spans = {t: pool.submit(item_spans, staging, t) for t in spanned}
        head = b"".join(
            orjson.dumps(k) + b":" + orjson.dumps(v) + b"," for k, v in _head(staging).items()
        )
        categories = _categories(staging)
        cat_ids = {c["name"]: c["id"] for c in categories}
        tasks = []
        found: dict[str, tuple[ItemSpans, list[str] | None]] = {}
        for subset in staging.subsets():
            plan = _plan_subset(staging, subset, options.workers, head, categories, cat_ids)
            parts = len(plan.bounds) - 1
            if parts > 1 and spans:
                found = found or {
                    t: (future.result(), staging.group_files(t)) for t, future in spans.items()
                }
                plan = dataclasses.replace(plan, reads=_part_reads(staging, plan, found))
            opts = dataclasses.replace(options, extra={**options.extra, _PLAN: plan})
            tasks += [WriteTask("coco", subset, k, parts, opts) for k in range(parts)]
    return tasks


def _where(subset: str | None) -> tuple[str, list]:
    return ("subset IS NULL", []) if subset is None else ("subset = ?", [subset])


def _positions(where: str, first: int = 0, columns: str = "") -> str:
    """The subset's items (those `where` keeps) with their 1-based position in source
    order, counted from `first`, where they are, and `columns` (", a, b") of theirs."""
    return (
        f"SELECT item_id, filename, file_row_number{columns}, {int(first)} + row_number() "
        f"OVER (ORDER BY filename, file_row_number) AS pos FROM items WHERE {where}"
    )


def _part_reads(
    staging: Staging, plan: SubsetPlan, found: dict[str, tuple[ItemSpans, list[str] | None]]
) -> tuple[dict[str, tuple[str, ...]], ...]:
    """`SubsetPlan.reads`: each part's queries then read only the files that hold its
    rows, where each read every table whole. Staged 1 GB, 2 parts: the vertex query
    of a part took 3.6–3.9 s with every file, 2.7 s with the files of its items."""
    # A part's items lie between the items table's rows of its edges (with, between
    # them, another subset's).
    start = staging.first_rows("items")
    runs = [(start[f0] + r0, start[f1] + r1 + 1) for f0, r0, f1, r1 in plan.edges]
    reads: list[dict[str, tuple[str, ...]]] = [{} for _ in runs]
    for table, (spans, files) in found.items():  # files: `Staging.group_files`
        if files is not None:
            for k, groups in enumerate(spans.groups(runs)):
                reads[k][table] = tuple(dict.fromkeys(files[g] for g in groups))
    return tuple(reads)


def _plan_subset(
    staging: Staging,
    subset: str | None,
    workers: int,
    head: bytes,
    categories: list[dict[str, Any]],
    cat_ids: dict[str, int],
) -> SubsetPlan:
    where, params = _where(subset)
    i_where = where.replace("subset", "i.subset")
    image_ids = _keep_native(staging, f"SELECT native_id AS n FROM items i WHERE {i_where}", params)
    # One pass answers the usual case: every annotation row has an integer id of its
    # own, so the annotations they merge into do too. Only otherwise is the merging
    # counted (1 GB: 0.68 → 0.30 s with the kinds).
    subset_anns = f"FROM annotations a JOIN items i USING (item_id) WHERE {i_where}"
    rows, distinct, ints, kind_list = staging.con.execute(
        "SELECT count(*), count(DISTINCT TRY_CAST(a.native_id AS BIGINT)), "
        f"count(TRY_CAST(a.native_id AS BIGINT)), list(DISTINCT a.kind) {subset_anns}",
        params,
    ).fetchone()
    ann_ids = rows > 0 and rows == distinct == ints
    if not ann_ids:
        ann_ids = _keep_native(
            staging,
            f"SELECT a.native_id AS n {subset_anns} "
            "GROUP BY a.native_id, coalesce(a.group_id, a.ann_id)",
            params,
        )
    kinds = set(kind_list or ())
    prefix = (
        "person_keypoints"
        if "keypoints" in kinds
        else ("captions" if kinds == {"caption"} else "instances")
    )
    # Per item: its annotation rows (the work) and, for numbering, the annotations it
    # writes, counted as `_annotations` does: kept rows, merged by key.
    kept = f"NOT coalesce(a.outside, false) AND a.kind IN ({sql_strings(_DIRECT + _AS_BOX)})"
    key = (
        "CASE WHEN coalesce(a.group_id, '') <> '' THEN {'g': a.group_id, 'n': a.native_id} "
        "ELSE {'g': NULL, 'n': a.ann_id} END"
    )
    # Kept ids need no numbering: then the costly distinct count is skipped.
    written = "0" if ann_ids else f"count(DISTINCT CASE WHEN {kept} THEN {key} END)"
    # Sums per block of items, not per item: what comes to Python stays small however
    # many items (~30 bytes an item before: 600 MB for 20M images).
    blocks = staging.con.execute(
        f"WITH c AS (SELECT item_id, count(a.ann_id) AS rows, {written} AS written "
        f"FROM annotations a GROUP BY item_id), s AS ({_positions(where)}) "
        f"SELECT (s.pos - 1) // {BLOCK_ITEMS} AS block, count(*), sum(coalesce(c.rows, 0)), "
        "sum(coalesce(c.written, 0)), arg_min(s.filename, s.pos), arg_min(s.file_row_number, "
        "s.pos), arg_max(s.filename, s.pos), arg_max(s.file_row_number, s.pos) "
        "FROM s LEFT JOIN c USING (item_id) GROUP BY block ORDER BY block",
        params,
    ).fetchall()
    n = sum(b[1] for b in blocks)
    # As many parts as workers, or a multiple of them when the cap on blocks asks for more.
    capped = -(-len(blocks) // MAX_PART_BLOCKS)
    workers = max(1, workers)
    parts = max(min(workers, n // MIN_PART_ITEMS), -(-capped // workers) * workers)
    starts = _part_starts([int(b[1] + b[2]) for b in blocks], parts)
    bounds = (*(k * BLOCK_ITEMS for k in starts), n)
    # Where each part's first and last item are: a part finds its own items there,
    # without numbering every item of the subset again.
    ends = [*starts[1:], len(blocks)]
    edges = tuple(
        (*blocks[k][4:6], *blocks[e - 1][6:8]) for k, e in zip(starts, ends, strict=True) if e > k
    )
    written_before = np.concatenate(([0], np.cumsum([int(b[3]) for b in blocks])))
    offsets = None if ann_ids else tuple(int(written_before[k]) for k in starts)
    return SubsetPlan(
        subset=subset,
        name=f"annotations/{prefix}_{subset or 'default'}.json",
        bounds=bounds,
        ann_offsets=offsets,
        edges=edges,
        image_ids=image_ids,
        ann_ids=ann_ids,
        cat_ids=cat_ids,
        head=head,
        categories=orjson.dumps(categories),
    )


def _part_starts(work: list[int], parts: int) -> list[int]:
    """The first block of each part, given each block's work (items plus annotation
    rows): `parts` of about equal work, more where one would exceed MAX_PART_BLOCKS."""
    share = sum(work) / max(1, parts)
    starts, done = [0], 0
    for k, w in enumerate(work):
        if k > starts[-1] and (done >= share * len(starts) or k - starts[-1] >= MAX_PART_BLOCKS):
            starts.append(k)
        done += w
    return starts


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    plan: SubsetPlan = task.options.extra[_PLAN]
    part = task.shard
    fragments = Fragments(out, plan.name, len(plan.bounds) - 1)
    start = plan.ann_offsets[part] if plan.ann_offsets else 0
    writer = _PartWriter(plan, start)
    with fragments.open("images", part) as images, fragments.open("annotations", part) as anns:
        for block in _blocks(staging, plan, part):
            with paused_gc():  # a block's lists and dicts hold no cycles
                writer.block(block, images, anns)
    infos = fragments.finish(part, orjson.dumps([start, writer.written]))
    if infos is not None:
        if plan.ann_offsets is not None:
            _check_numbering(plan, [orjson.loads(i) for i in infos])
        fragments.join(
            [
                b"{" + plan.head + b'"images":[',
                Piece("images", b","),
                b'],"annotations":[',
                Piece("annotations", b","),
                b'],"categories":' + plan.categories + b"}",
            ]
        )
        writer.result.files.append(plan.name)
    return writer.result


def _check_numbering(plan: SubsetPlan, parts: list[list[int]]) -> None:
    """Each part numbered its annotations from where the plan said the previous part ended."""
    for (start, count), (following, _) in itertools.pairwise(parts):
        if start + count != following:
            msg = f"{plan.name}: annotation numbering of the parts disagrees with the plan"
            raise RuntimeError(msg)


@dataclass
class _Block:
    """A block of items with their annotation rows, vertices and attributes."""

    items: list[dict[str, Any]]
    anns: SimpleNamespace
    """The annotation rows as one list per column (`anns.kind[row]`): no dict per row."""
    first: list[int]
    """Per item, the index of its first annotation row (and one past the last at the end)."""
    geometry: _Geometry
    attributes: dict[int, list[tuple]]
    """Annotation row index in the block → its attribute rows (key, value, type, source)."""


def _blocks(staging: Staging, plan: SubsetPlan, part: int) -> Iterator[_Block]:
    where, params = _where(plan.subset)
    lo, hi = plan.bounds[part], plan.bounds[part + 1]
    reads = plan.reads[part] if plan.reads else {}
    con = staging.con
    sel, files = f"_coco_items_{part}", f"_coco_files_{part}"
    if plan.edges:  # the part's own items: numbered from lo, the subset's others unread
        span = (
            " AND filename BETWEEN ? AND ? AND (filename, file_row_number) >= (?, ?) "
            "AND (filename, file_row_number) <= (?, ?)"
        )
        f0, r0, f1, r1 = plan.edges[part]
        params = [*params, f0, f1, f0, r0, f1, r1]
        where += span
    # The part's items with what the images array needs of them: no query of the
    # part reads the whole items table.
    image = ", native_id, file_name, width, height, metadata"
    con.execute(
        f"CREATE OR REPLACE TABLE {sel} AS SELECT item_id, (pos - {int(lo)} - 1) // "
        f"{BLOCK_ITEMS} AS block, pos{image} FROM ({_positions(where, lo, image)}) "
        f"WHERE pos > {int(lo)} AND pos <= {int(hi)}",
        params,
    )
    # An annotation row's place in the source as one integer (file, then row): rows
    # of a block are put in output order by it, and vertices and attributes find
    # their row by it, without a sort of the whole part.
    con.execute(
        f"CREATE OR REPLACE TABLE {files} AS SELECT filename, row_number() OVER "
        "(ORDER BY filename) AS fid FROM (SELECT DISTINCT filename FROM annotations)"
    )
    key = f"f.fid * {1 << 40} + a.file_row_number AS akey"
    owners = (
        f"{_read('annotations', reads)} a JOIN {sel} s ON a.item_id = s.item_id "
        f"JOIN {files} f ON a.filename = f.filename"
    )
    blocks = -(-(hi - lo) // BLOCK_ITEMS)
    ann_cols = ", ".join(f"a.{c}" for c in _ANN_COLUMNS)
    try:
        with tempfile.TemporaryDirectory(prefix="labelflow-coco-") as folder:
            streams = [
                _Buckets(staging, sql, blocks, folder)
                for sql in (
                    f"SELECT block, pos{image}, item_id IN (SELECT parent_id FROM items "
                    f"WHERE parent_id IS NOT NULL) AS container FROM {sel}",
                    f"SELECT s.block, s.pos, {key}, {ann_cols} FROM {owners}",
                    f"SELECT s.block, {key}, coalesce(p.part, -1) AS part, p.idx, p.x, p.y, "
                    f"p.visibility FROM {owners} JOIN {_read('points', reads)} p "
                    "ON p.ann_id = a.ann_id AND p.item_id = a.item_id "
                    "WHERE a.kind IN ('polygon', 'keypoints')",
                    f"SELECT s.block, {key}, t.filename, t.file_row_number, t.key, t.value, "
                    f"t.value_type, t.source FROM {owners} JOIN {_read('attributes', reads)} t "
                    "ON t.owner_id = a.ann_id AND t.item_id = a.item_id",
                )
            ]
            for k in range(blocks):
                yield _block(*(stream.take(k) for stream in streams))
    finally:
        con.execute(f"DROP TABLE IF EXISTS {sel}; DROP TABLE IF EXISTS {files}")


def _read(table: str, reads: dict[str, tuple[str, ...]]) -> str:
    """The table, or the rows of only the files `reads` names for it."""
    if table not in reads:
        return table
    names = sql_strings(reads[table])
    return f"(SELECT * FROM {table} WHERE filename IN ({names or 'NULL'}))"


def _block(items: pa.Table, anns: pa.Table, points: pa.Table, attrs: pa.Table) -> _Block:
    """One block from its rows as they came: put in output order here."""
    items = items.sort_by("pos")
    anns = anns.sort_by([("pos", "ascending"), ("akey", "ascending")])
    akeys = anns.column("akey").to_numpy()
    by_key = np.argsort(akeys)

    def rows(table: pa.Table) -> np.ndarray:
        """The annotation row each vertex or attribute belongs to."""
        return by_key[np.searchsorted(akeys[by_key], table.column("akey").to_numpy())]

    point_rows = rows(points)
    # Vertices by row, then part, then index (NaN for a null index sorts last, as NULLS LAST).
    order = np.lexsort(
        (points.column("idx").to_numpy(zero_copy_only=False),
         points.column("part").to_numpy(), point_rows)
    )  # fmt: skip
    attrs = attrs.append_column("row", pa.array(rows(attrs))).sort_by(
        [("row", "ascending"), ("filename", "ascending"), ("file_row_number", "ascending")]
    )
    attributes: dict[int, list[tuple]] = {}
    names = ("row", "key", "value", "value_type", "source")
    for row, *values in zip(*(attrs.column(c).to_pylist() for c in names), strict=True):
        attributes.setdefault(row, []).append(tuple(values))
    first = np.searchsorted(anns.column("pos").to_numpy(), items.column("pos").to_numpy())
    return _Block(
        items=items.to_pylist(),
        anns=SimpleNamespace(**{c: anns.column(c).to_pylist() for c in _ANN_COLUMNS}),
        first=[*first.tolist(), anns.num_rows],
        geometry=_Geometry(points.take(order), point_rows[order]),
        attributes=attributes,
    )


class _Buckets:
    """A query's rows regrouped by block through files on local disk: memory is one
    batch and one block, where an ORDER BY would sort the whole part at once."""

    def __init__(self, staging: Staging, sql: str, blocks: int, folder: str) -> None:
        self._paths = [os.path.join(folder, f"{id(self)}-{k}.arrow") for k in range(blocks)]
        # Each query gets its own cursor: a new query on a connection ends the previous one.
        reader = staging.con.cursor().sql(sql).to_arrow_reader(_SPILL_ROWS)
        self._schema = reader.schema
        writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        try:
            for batch in reader:
                block = batch.column("block").to_numpy()
                by_block = np.argsort(block, kind="stable")
                block = block[by_block]
                batch = batch.take(by_block)
                cuts = [0, *(np.flatnonzero(np.diff(block)) + 1).tolist(), len(block)]
                for start, end in itertools.pairwise(cuts):
                    k = int(block[start])
                    if k not in writers:
                        writers[k] = pa.ipc.new_file(self._paths[k], self._schema)
                    writers[k].write_batch(batch.slice(start, end - start))
        finally:
            for w in writers.values():
                w.close()

    def take(self, k: int) -> pa.Table:
        path = self._paths[k]
        if not os.path.exists(path):
            return self._schema.empty_table()
        with pa.OSFile(path) as f:
            table = pa.ipc.open_file(f).read_all()
        os.remove(path)
        return table


class _Geometry:
    """A block's vertices, looked up by annotation row."""

    def __init__(self, points: pa.Table, rows: np.ndarray) -> None:
        n = int(rows[-1]) + 1 if len(rows) else 0
        self._points = points
        self._start = np.searchsorted(rows, np.arange(n + 1), side="left").tolist()
        # Nulls come out of numpy as NaN, which orjson writes as null, as it writes None.
        self.x = points.column("x").to_numpy(zero_copy_only=False)
        self.y = points.column("y").to_numpy(zero_copy_only=False)
        # Polygons stay numpy slices of this (`_PartWriter._write`): orjson writes a
        # float64 array as it writes the list of its floats, without making them.
        self.xy = np.empty(2 * len(self.x))
        self.xy[0::2], self.xy[1::2] = self.x, self.y
        # A polygon's parts: runs of one (row, part).
        part = points.column("part").to_numpy()
        change = np.flatnonzero((np.diff(rows) != 0) | (np.diff(part) != 0)) + 1
        starts = np.concatenate(([0], change)) if len(rows) else np.array([], np.int64)
        self._runs = [*starts.tolist(), len(rows)]
        self._run_of = np.searchsorted(starts, self._start).tolist()

    @functools.cached_property
    def idx(self) -> list[int | None]:
        return self._points.column("idx").to_pylist()  # keypoints only

    @functools.cached_property
    def visibility(self) -> list[int | None]:
        return self._points.column("visibility").to_pylist()

    def _range(self, row: int) -> tuple[int, int]:
        if row + 1 >= len(self._start):
            return 0, 0
        return self._start[row], self._start[row + 1]

    def polygon(self, row: int) -> list[np.ndarray]:
        if row + 1 >= len(self._start):
            return []
        runs, r0, r1 = self._runs, self._run_of[row], self._run_of[row + 1]
        return [self.xy[2 * runs[r] : 2 * runs[r + 1]] for r in range(r0, r1)]

    def keypoints(self, row: int) -> list[float]:
        start, end = self._range(row)
        x, y = self.x[start:end].tolist(), self.y[start:end].tolist()
        flat: list[float] = []
        for p in sorted(range(end - start), key=self.idx[start:end].__getitem__):
            v = self.visibility[start + p]
            flat.extend((x[p], y[p], v if v is not None else 2))
        return flat


class _PartWriter:
    """Turns blocks into JSON for the images and annotations fragments of one part."""

    def __init__(self, plan: SubsetPlan, start: int) -> None:
        self.plan = plan
        self.next_ann = start
        self.written = 0
        self.result = WriteResult()
        self._started = {"images": False, "annotations": False}

    def block(self, block: _Block, images_out, anns_out) -> None:
        images: list[dict[str, Any]] = []
        anns: list[dict[str, Any]] = []
        for n, item in enumerate(block.items):
            a0, a1 = block.first[n], block.first[n + 1]
            if item["container"] and a0 == a1:
                self.result.lose("video/series items written only as their frames")
                continue
            image_id = int(item["native_id"]) if self.plan.image_ids else item["pos"]
            images.append(_image(item, image_id))
            for ann in _annotations(block, a0, a1, image_id, self.plan.cat_ids, self.result):
                self.next_ann += 1
                self.written += 1
                ann["id"] = int(ann["id"]) if self.plan.ann_ids else self.next_ann
                anns.append(ann)
        self.result.items += len(images)
        self._write("images", images, images_out)
        self._write("annotations", anns, anns_out)

    def _write(self, piece: str, values: list[dict[str, Any]], f) -> None:
        if not values:
            return
        # One dumps per block; its brackets dropped, blocks are joined with commas.
        text = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
        f.write((b"," if self._started[piece] else b"") + text[1:-1])
        self._started[piece] = True


def _keep_native(staging: Staging, sql: str, params: list) -> bool:
    """True when every native id is an integer and none repeats: keep them as they are."""
    total, distinct, ints = staging.con.execute(
        f"SELECT count(*), count(DISTINCT n), count(TRY_CAST(n AS BIGINT)) FROM ({sql})", params
    ).fetchone()
    return total > 0 and total == distinct == ints


def _head(staging: Staging) -> dict[str, Any]:
    rows = staging.con.execute(
        "SELECT key, value, value_type FROM attributes WHERE owner_kind = 'dataset' "
        "AND source = 'coco' ORDER BY filename, file_row_number"
    ).fetchall()
    head: dict[str, Any] = {}
    for key, value, vtype in rows:
        head.setdefault(key, parse_attribute(value, vtype))
    return head


def _categories(staging: Staging) -> list[dict[str, Any]]:
    props: dict[str, dict[str, Any]] = {}
    for owner, key, value, vtype in staging.con.execute(
        "SELECT owner_id, key, value, value_type FROM attributes WHERE owner_kind = 'label' "
        "AND source = 'coco' ORDER BY filename, file_row_number"
    ).fetchall():
        props.setdefault(owner.removeprefix("label:"), {}).setdefault(
            key, parse_attribute(value, vtype)
        )
    labels: dict[str, str | None] = {name: None for name in props}
    for label, label_id in staging.labels():
        labels.setdefault(label, label_id)
        if labels[label] is None:
            labels[label] = label_id
    given = [props.get(n, {}).get("id", lid) for n, lid in labels.items()]
    numeric = all(_is_int(g) for g in given) and len({int(g) for g in given}) == len(given)
    cats = []
    for n, (name, g) in enumerate(zip(labels, given, strict=True)):
        extra = {k: v for k, v in props.get(name, {}).items() if k != "id"}
        cats.append({"id": int(g) if numeric else n + 1, "name": name, **extra})
    if not any("keypoints" in c for c in cats):
        _keypoint_names(staging, cats)
    return sorted(cats, key=lambda c: c["id"]) if numeric else cats


def _keypoint_names(staging: Staging, cats: list[dict[str, Any]]) -> None:
    """Categories from other formats: keypoint names as the points name them."""
    rows = staging.con.execute(
        "SELECT a.label, p.idx, any_value(p.name) FROM points p JOIN annotations a USING (ann_id) "
        "WHERE a.kind = 'keypoints' GROUP BY a.label, p.idx ORDER BY a.label, p.idx"
    ).fetchall()
    names: dict[str, list[str]] = {}
    for label, _, name in rows:
        names.setdefault(label, []).append(name or "")
    for c in cats:
        if c["name"] in names:
            c["keypoints"] = names[c["name"]]
            c.setdefault("skeleton", [])


def _is_int(v: Any) -> bool:
    try:
        return int(v) == float(v)
    except (TypeError, ValueError):
        return False


def _image(item: dict[str, Any], image_id: int) -> dict[str, Any]:
    image = {"id": image_id, "width": item["width"], "height": item["height"],
             "file_name": item["file_name"] or item["native_id"]}  # fmt: skip
    if item.get("metadata"):
        image.update(orjson.loads(item["metadata"]))
    return image


def _annotations(
    block: _Block, a0: int, a1: int, image_id: int, cat_ids: dict[str, int], result: WriteResult
) -> Iterator[dict[str, Any]]:
    """One item's annotation rows [a0, a1) of the block as COCO annotations, merged by key."""
    a = block.anns
    merged: dict[Any, dict[str, Any]] = {}
    for row in range(a0, a1):
        kind = a.kind[row]
        if a.outside[row]:
            result.lose("outside track shapes skipped")
            continue
        if kind not in _DIRECT and kind not in _AS_BOX:
            result.lose(f"{kind} annotations have no COCO form: skipped")
            continue
        if kind in _AS_BOX:
            result.lose(f"{kind} written as boxes")
        result.annotations += 1
        group = a.group_id[row]
        key = (group, a.native_id[row]) if group else a.ann_id[row]
        ann = merged.get(key)
        if ann is None:
            ann = merged[key] = _base(a, row, image_id, cat_ids, block.attributes.get(row, ()))
        _geometry(ann, a, row, block.geometry)
    for ann in merged.values():
        if "segmentation" not in ann and "caption" not in ann:
            ann["segmentation"] = []
        yield ann


def _base(a: SimpleNamespace, row: int, image_id: int, cat_ids: dict[str, int], attrs) -> dict:
    ann: dict[str, Any] = {"id": a.native_id[row] or 0, "image_id": image_id,
                           "category_id": cat_ids.get(a.label[row], 0)}  # fmt: skip
    if a.bbox_x[row] is not None:
        ann["bbox"] = [a.bbox_x[row], a.bbox_y[row], a.bbox_w[row], a.bbox_h[row]]
    if a.area[row] is not None:
        ann["area"] = a.area[row]
    elif a.bbox_w[row] is not None and a.kind[row] in ("bbox", "rotated_bbox", "ellipse"):
        ann["area"] = a.bbox_w[row] * a.bbox_h[row]
    ann["iscrowd"] = int(bool(a.iscrowd[row]))
    if a.confidence[row] is not None:
        ann["score"] = a.confidence[row]
    named: dict[str, Any] = {}
    top: dict[str, Any] = {}
    layout: dict[str, Any] = {}
    for key, value, value_type, source in attrs:
        source = source or ""
        if source.endswith("_layout") and source != "coco_layout":
            continue  # another format's spelling detail
        target = {"coco": top, "coco_layout": layout}.get(source, named)
        target[key] = parse_attribute(value, value_type)
    for column, key, _ in ATTRIBUTE_COLUMNS:
        value = getattr(a, column)[row]
        if value is not None and key not in named:
            named[key] = value
    if named:
        ann["attributes"] = named
    ann.update(top)
    if layout.get("rle") == "uncompressed":
        ann["_uncompressed"] = True
    return ann


def _geometry(ann: dict[str, Any], a: SimpleNamespace, row: int, geometry: _Geometry) -> None:
    kind = a.kind[row]
    if kind == "polygon":
        ann["segmentation"] = geometry.polygon(row)
    elif kind == "mask":
        h, w, mask = a.mask_h[row], a.mask_w[row], a.mask[row]
        plain = ann.pop("_uncompressed", False)
        counts: Any = _uncompressed(mask, h, w) if plain else mask
        ann["segmentation"] = {"size": [h, w], "counts": counts}
        # Decoding a mask is costly: only when the export stated no box or area.
        if "bbox" not in ann:
            ann["bbox"] = rle_bbox(mask, h, w)
        if "area" not in ann:
            ann["area"] = rle_area(mask, h, w)
    elif kind == "keypoints":
        flat = geometry.keypoints(row)
        ann["keypoints"] = flat
        ann.setdefault("num_keypoints", sum(1 for v in flat[2::3] if v > 0))
    elif kind == "caption":
        ann["caption"] = a.text[row]


def _uncompressed(counts: str, height: int, width: int) -> list[int]:
    """`masks.to_uncompressed` without painting the mask: the run lengths the string
    encodes, when they are already the runs the painted mask would give (they cover
    it exactly and none after the first is empty); otherwise the painted way."""
    with contextlib.suppress(ValueError):  # not a string pycocotools wrote: paint it
        lengths = string_runs(counts)
        if lengths.sum() == height * width > 0 and lengths[1:].all():
            return lengths.tolist()
    return to_uncompressed(counts, height, width)
