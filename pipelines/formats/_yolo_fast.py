"""YOLO detect labels for a shard of items, a column at a time.

The per-item writer (`_yolo_write._write_shard`) fetches every annotation as a
Python dict and formats it through `_Lines`; for a detect dataset whose boxes
are all stated (the usual case once the reader's transforms have filled boxes
from vertices) the same files come from the staging Parquet read by pyarrow
alone (no DuckDB in the worker): numpy computes the centres, Arrow kernels
format every line of a batch into one buffer, and each label file is a slice of
it written with one system call. Lossiness is counted
under the same lines as `_Lines` counts it. The planner takes this path for the
whole dataset or not at all (`shard_count`): a writable annotation with no stated
box (it would come from vertices or a mask) sends every shard to the per-item
writer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.formats import _per_image as per_image
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.item_order import item_run
from pipelines.item_spans import ItemSpans
from pipelines.schema import BOX, TABLES, box_stated
from pipelines.staging import Staging, sql_strings
from pipelines.storage import Output

ITEMS_PER_BATCH = 8_192
"""Items (with their annotations) formatted at a time: memory stays flat however large
the shard."""

ITEM_COLUMNS = ("item_id", "file_name", "native_id", "subset", "media_uri", "width", "height")
_ANN_COLUMNS = (
    "item_id", "kind", "label", "outside", "bbox_x", "bbox_y", "bbox_w", "bbox_h",
    "angle_deg", "confidence",
)  # fmt: skip
_DICTIONARY_COLUMNS = ("kind", "label")
_DICTIONARY = pa.dictionary(pa.int32(), pa.string())


ANNOTATIONS_PER_SHARD = 25_000
"""A shard's annotations are held and sorted by item together (~60 bytes each, and the
formatting's working copies): this bounds a worker's memory however large the
dataset. COCO → YOLO on 200 MB, tree PSS: 300k 368 MB, 100k 306, 50k 264–269, 25k
248–256 for 1% more time (each shard decodes a whole items row group: 3 ms without
image URLs, 9 ms with them, on 1 GB)."""


def shard_count(staging: Staging, options: WriteOptions) -> int | None:
    """How many shards the column path splits the dataset into, or None when it cannot
    write them all (the per-item writer's sharding applies then).

    Shards are runs of items in source order, one per worker or more to bound
    memory; `shard_groups` tells each which row groups hold its annotations.
    """
    if not _eligible(staging):
        return None
    annotations = staging.count_rows("annotations")
    items = staging.count_rows("items")
    wanted = max(options.workers, math.ceil(annotations / ANNOTATIONS_PER_SHARD))
    return max(1, min(wanted, items))


def shard_groups(spans: ItemSpans, shards: int) -> list[list[int]]:
    """For each shard, the annotation row groups that hold its items."""
    return spans.groups([item_run(spans.items, k, shards) for k in range(shards)])


_DERIVED = (
    "SELECT count(*) FROM annotations a JOIN items s USING (item_id) "
    "WHERE s.width <> 0 AND s.height <> 0 AND NOT coalesce(a.outside, false) "
    "AND a.label IS NOT NULL AND a.kind IN ({kinds}) AND (a.bbox_x IS NULL "
    "OR a.bbox_y IS NULL OR a.bbox_w IS NULL OR a.bbox_h IS NULL)"
)


def _eligible(staging: Staging) -> bool:
    """Whether the column path can write every item of the dataset: no item id twice
    (each copy would get the annotations, as a join does) and no writable annotation
    without a stated box."""
    if not staging.items_fit():
        con = staging.con
        if con.execute("SELECT count(*) - count(DISTINCT item_id) FROM items").fetchone()[0]:
            return False
        kinds = sql_strings(sorted(per_image.BOXABLE))
        return not con.execute(_DERIVED.format(kinds=kinds)).fetchone()[0]
    parts = list(staging.scan("items", ["item_id", "width", "height"]))
    if not parts:
        return True
    items = pa.concat_tables(parts)
    ids = items.column("item_id")
    if pc.count_distinct(ids).as_py() != len(ids):
        return False
    # Boxes are usually all stated: the rest is read only where one may be missing.
    unstated_groups = staging.groups_with_nulls("annotations", BOX)
    sized = ids.filter(pa.array(per_image.sized(items)))
    boxable = pa.array(sorted(per_image.BOXABLE))
    columns = ["item_id", *_ANN_COLUMNS[1:-2]]  # through the box
    for part in staging.scan("annotations", columns, groups=unstated_groups):
        unstated = pc.invert(box_stated(part))
        writable = pc.and_(
            pc.and_(pc.invert(part.column("outside").fill_null(False)), unstated),
            pc.and_(part.column("label").is_valid(), pc.is_in(part.column("kind"), boxable)),
        )
        candidates = part.column("item_id").filter(writable)
        if len(candidates) and pc.any(pc.is_in(candidates, value_set=sized)).as_py():
            return False
    return True


def write_boxes(
    task: WriteTask,
    staging: Staging,
    out: Output,
    dirs: Callable[[str | None], tuple[str, str]],
    classes: dict[str, int],
    collisions: set[tuple[str | None, str]],
    save_images: bool,
) -> WriteResult:
    """Write the shard's label files (and images)."""
    result = WriteResult()
    copier = per_image.MediaCopier()
    folders: dict[str | None, tuple[str, str]] = {}
    # An image's URL is read only to copy it: it is most of an items row group's bytes.
    columns = ITEM_COLUMNS if save_images else tuple(c for c in ITEM_COLUMNS if c != "media_uri")
    for items, anns in _batches(staging, task, columns):
        pos = anns.column("_pos").to_numpy()
        width = items.column("width").fill_null(0).to_numpy()
        height = items.column("height").fill_null(0).to_numpy()
        sized = per_image.sized(items)
        ann_sized = sized[pos]
        kind = anns.column("kind").combine_chunks()
        outside = anns.column("outside").fill_null(False).to_numpy(zero_copy_only=False)
        boxable = _mask(pc.is_in(kind, value_set=pa.array(sorted(per_image.BOXABLE))))
        labelled = _mask(anns.column("label").is_valid())
        writable = ann_sized & ~outside & boxable & labelled
        _count_losses(result, anns, sized, ann_sized, outside, boxable, writable)
        text, bounds = _label_text(anns, writable, pos, width, height, classes)
        stems = per_image.output_stems(items, collisions, per_subset=True)
        # Decoded by Arrow first: a dictionary column's own to_pylist takes 1 µs a value.
        subsets = items.column("subset").cast(pa.string()).to_pylist()
        images: list[tuple[str | None, str]] = []
        if save_images:
            media = items.column("media_uri").to_pylist()
            images = list(zip(media, per_image.image_suffixes(items).to_pylist(), strict=True))
        for i in np.flatnonzero(sized).tolist():
            subset = subsets[i]
            label_dir, image_dir = folders.get(subset) or folders.setdefault(subset, dirs(subset))
            rel = f"{label_dir}/{stems[i]}.txt"
            out.write(rel, text[bounds[i] : bounds[i + 1]])
            result.files.append(rel)
            if images:
                media_uri, suffix = images[i]
                copier.copy(media_uri, out, f"{image_dir}/{stems[i]}{suffix}", result)
        result.items += int(sized.sum())
        result.annotations += int(writable.sum())
    return result


def _batches(
    staging: Staging, task: WriteTask, item_columns: Sequence[str]
) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(items, their annotations) of the shard, a batch of items at a time; `_pos` ties
    each annotation to its item's row in the batch, and an item's annotations keep
    source order.

    A shard is a run of items in source order. Its annotations may lie anywhere in
    the table: one pass picks them out by item id and keeps only the columns a line
    needs, labels and kinds dictionary-encoded (~60 bytes an annotation), reading a
    row group's other columns only when it holds one of them (exports often list
    annotations image by image); a stable sort by item then hands out each batch's.
    """
    rows = item_run(staging.count_rows("items"), task.shard, task.shards)
    parts = list(staging.scan("items", item_columns, rows=rows))
    if not parts:
        return
    items = pa.concat_tables(parts).combine_chunks()
    ids = items.column("item_id")
    wanted = task.options.extra.get("_groups")  # for each shard, the row groups to read
    picked = [_no_annotations()]
    for part in staging.scan(
        "annotations",
        _ANN_COLUMNS,
        dictionary=_DICTIONARY_COLUMNS,
        match=(["item_id"], lambda t: pc.is_in(t.column(0), value_set=ids)),
        groups=wanted[task.shard] if wanted else None,
    ):
        pos = pc.index_in(part.column("item_id"), value_set=ids)
        picked.append(part.drop_columns(["item_id"]).append_column("_pos", pos))
    anns = pa.concat_tables(picked).combine_chunks()
    pos = anns.column("_pos").to_numpy()
    order = np.argsort(pos, kind="stable")
    pos = pos[order]
    for first in range(0, items.num_rows, ITEMS_PER_BATCH):
        end = min(first + ITEMS_PER_BATCH, items.num_rows)
        lo, hi = np.searchsorted(pos, [first, end])
        batch = anns.take(order[lo:hi])
        batch = batch.set_column(
            batch.schema.get_field_index("_pos"), "_pos", pa.array(pos[lo:hi] - first)
        )
        for name in _DICTIONARY_COLUMNS:  # back to strings, a batch at a time
            at = batch.schema.get_field_index(name)
            batch = batch.set_column(at, name, batch.column(at).cast(pa.string()))
        yield items.slice(first, end - first), batch


def _no_annotations() -> pa.Table:
    """What a shard's pass picks out, when it picks nothing."""
    fields = [TABLES["annotations"].field(c) for c in _ANN_COLUMNS[1:]]
    fields = [f.with_type(_DICTIONARY) if f.name in _DICTIONARY_COLUMNS else f for f in fields]
    return pa.schema([*fields, pa.field("_pos", pa.int32())]).empty_table()


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return values.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _label_text(
    anns: pa.Table,
    writable: np.ndarray,
    pos: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    classes: dict[str, int],
) -> tuple[memoryview, list[int]]:
    """Every item's label file as one buffer and where each item's part starts (item i
    is `text[bounds[i]:bounds[i + 1]]`): `cls cx cy w h` per writable annotation, as
    `_Lines` formats it."""
    sel = np.flatnonzero(writable)
    box = [anns.column(c).to_numpy(zero_copy_only=False) for c in BOX]
    label = anns.column("label").combine_chunks()
    names = pa.array(list(classes), label.type)
    ids = pa.array([str(i).encode() for i in classes.values()], pa.binary())
    chunks = [pa.array([], pa.binary())]
    # A few thousand rows at a time: numpy's temporaries stay below the size write
    # tasks map afresh for each block (`memory.map_large_blocks`), and are reused.
    for rows in np.array_split(sel, -(-len(sel) // _ROWS_AT_A_TIME)) if len(sel) else ():
        x, y, bw, bh = (column[rows] for column in box)
        w = width[pos[rows]].astype(np.float64)
        h = height[pos[rows]].astype(np.float64)
        cls = pc.take(ids, pc.index_in(label.take(pa.array(rows)), value_set=names))
        # The same operations in the same order as `_centre`: the same doubles.
        tail = coordinate_text(((x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h))
        chunks.append(pc.binary_join_element_wise(cls, tail, b""))
    lines = pa.concat_arrays(chunks)
    counts = np.bincount(pos[sel], minlength=len(width))
    line_ends = np.concatenate([[0], np.cumsum(counts)])
    if not len(lines):
        return memoryview(b""), [0] * len(line_ends)
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset :]
    return memoryview(lines.buffers()[2]), offsets[line_ends].tolist()


_ROWS_AT_A_TIME = 8_192
"""Label lines formatted at a time (float arrays of 64 KB)."""
_FIELD = 9
"""A field of `coordinate_text`'s fixed layout: a space and `d.dddddd`."""
_THREE_DIGITS = np.frombuffer(b"".join(b"%03d" % i for i in range(1000)), np.uint8).reshape(-1, 3)
"""Row i: i in three ASCII digits (half of a fraction's six)."""


def coordinate_text(fields: Sequence[np.ndarray]) -> pa.Array:
    """`" " + f"{v:.6f}"` of each field in turn, then a newline, for every row (binary).

    Normalised coordinates are nearly always in [0, 10): there every line has the
    same layout, and numpy writes its digits into a byte matrix that Arrow reads
    as it is (staging 1 GB → YOLO, one worker: the label text 2.0 → 1.0 s, with
    `_label_text`'s chunks). Rows with a value outside that range are formatted
    by `fixed6`.
    """
    rounded = [_rounded(v) for v in fields]
    regular = np.logical_and.reduce(
        [
            ~odd & ~np.signbit(v) & (units < 10_000_000)
            for (units, odd), v in zip(rounded, fields, strict=True)
        ]
    )
    n = len(regular)
    matrix = np.empty((n, _FIELD * len(fields) + 1), np.uint8)
    for f, (units, _) in enumerate(rounded):
        at = _FIELD * f
        whole, rest = np.divmod(np.where(regular, units, 0), 1_000_000)
        high, low = np.divmod(rest, 1000)
        matrix[:, at] = ord(" ")
        matrix[:, at + 1] = ord("0") + whole
        matrix[:, at + 2] = ord(".")
        matrix[:, at + 3 : at + 6] = _THREE_DIGITS[high]
        matrix[:, at + 6 : at + 9] = _THREE_DIGITS[low]
    matrix[:, -1] = ord("\n")
    width = pa.binary(matrix.shape[1])
    text = pa.FixedSizeBinaryArray.from_buffers(width, n, [None, pa.py_buffer(matrix)])
    text = text.cast(pa.binary())
    if regular.all():
        return text
    other = ~regular
    parts = [fixed6(v[other]).cast(pa.binary()) for v in fields]
    spelled = pc.binary_join_element_wise(b"", *parts, b" ")
    spelled = pc.binary_join_element_wise(spelled, b"\n", b"")
    return pc.replace_with_mask(text, pa.array(other), spelled)


def fixed6(values: np.ndarray) -> pa.Array:
    """`f"{v:.6f}"` of every value, formatted by Arrow kernels."""
    units, odd = _rounded(values)
    whole = pc.cast(pa.array(units // 1_000_000), pa.string())
    part = pc.utf8_lpad(pc.cast(pa.array(units % 1_000_000), pa.string()), 6, "0")
    text = pc.binary_join_element_wise(whole, part, ".")
    negative = np.signbit(values)  # -0.0 and -1e-9 are "-0.000000" too
    if negative.any():
        text = pc.if_else(pa.array(negative), pc.binary_join_element_wise("-", text, ""), text)
    if odd.any():
        exact = pa.array([f"{v:.6f}" for v in values[odd].tolist()], pa.string())
        text = pc.replace_with_mask(text, pa.array(odd), exact)
    return text


def _rounded(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|v| in millionths, rounded as `f"{v:.6f}"` rounds; which values are odd).

    Python prints the exact binary value rounded to 6 decimals, half to even.
    Scaled by 10⁶ in two exact halves, the product's rounding error is known,
    so a product that was rounded onto a half (x / 640 is often exactly one)
    still rounds the way the exact value does. Values of 10³ and more, and
    those that are not finite, are odd: Python formats them (their units are 0).
    """
    magnitude = np.abs(values)
    odd = ~(magnitude < 1e3)
    scaled, error = _times_million(np.where(odd, 0.0, magnitude))
    below = np.floor(scaled)
    on_half = scaled - below == 0.5
    units = np.rint(scaled)  # exactly on a half: to even, as Python does
    units = np.where(on_half & (error > 0), below + 1, units)
    units = np.where(on_half & (error < 0), below, units).astype(np.int64)
    return units, odd


def _times_million(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v · 10⁶ rounded, its rounding error), so that their sum is the exact product.

    Veltkamp's split gives halves of at most 26 significant bits; 10⁶ has 14
    (15625 · 2⁶), so each half times 10⁶ is exact, and Fast2Sum of the two is
    the rounded product and what rounding took off.
    """
    t = v * 134_217_729.0  # 2²⁷ + 1
    hi = t - (t - v)
    a, b = hi * 1e6, (v - hi) * 1e6
    s = a + b
    return s, (a - s) + b


def _count_losses(result, anns, sized, ann_sized, outside, boxable, writable) -> None:
    """What `_write_shard` and `_Lines` count, under the same lines."""
    n_unsized_items = int((~sized).sum())
    if n_unsized_items:
        result.lose("items without a size skipped", n_unsized_items)
        n = int((~ann_sized).sum())
        if n:
            result.lose("annotations of items without a size", n)
    kind = anns.column("kind").combine_chunks()
    gate = ann_sized
    _lose(result, "outside shapes skipped", gate & outside)
    gate = gate & ~outside
    for k in _kinds(kind, gate & ~boxable):
        not_boxable = gate & ~boxable & _mask(pc.equal(kind, k))
        _lose(result, f"{k} annotations not written: YOLO has no place for them", not_boxable)
    _lose(result, "unlabelled annotations skipped", gate & boxable & ~writable)
    _lose(result, "confidences dropped", writable & _mask(anns.column("confidence").is_valid()))
    angle = anns.column("angle_deg").fill_null(0).to_numpy(zero_copy_only=False)
    rotated = writable & _mask(pc.equal(kind, "rotated_bbox"))
    _lose(result, "rotated boxes lost their angle", rotated & (angle != 0))
    for k in sorted(set(_kinds(kind, writable)) - {"bbox", "rotated_bbox"}):
        plural = per_image.PLURAL.get(k, k)
        _lose(result, f"{plural} written as boxes", writable & _mask(pc.equal(kind, k)))


def _kinds(kind: pa.Array, mask: np.ndarray) -> list[str]:
    """The distinct kinds of the rows in `mask`, sorted."""
    if not mask.any():
        return []
    return sorted(pc.unique(kind.filter(pa.array(mask))).to_pylist())


def _lose(result: WriteResult, what: str, mask: np.ndarray) -> None:
    n = int(mask.sum())
    if n:
        result.lose(what, n)
