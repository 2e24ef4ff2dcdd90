"""YOLO detect labels for a shard of items, a column at a time.

The per-item writer (`_yolo_write._write_shard`) fetches every annotation as a
Python dict and formats it through `_Lines`; for a detect dataset whose boxes
are all stated (the usual case once the reader's transforms have filled boxes
from vertices) the same files come from two Arrow queries, numpy for the
centres and one f-string per line. Lossiness is counted under the same lines
as `_Lines` counts it. A shard with a writable annotation that has no stated
box (its box would come from vertices or a mask) returns None: the per-item
writer does it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from pipelines.formats import _per_image as per_image
from pipelines.formats.base import WriteResult, WriteTask
from pipelines.staging import Staging
from pipelines.storage import Output

ITEMS_PER_BATCH = 16_384
"""Items (with their annotations) formatted at a time: memory stays flat however large
the shard."""

_SELECT = (
    "CREATE OR REPLACE TABLE _yolo_sel AS SELECT item_id, file_name, native_id, "
    "subset, media_uri, width, height, "
    "row_number() OVER (ORDER BY filename, file_row_number) - 1 AS _pos FROM items {where}"
)
_DERIVED = (
    "SELECT count(*) FROM annotations a JOIN _yolo_sel s USING (item_id) "
    "WHERE s.width <> 0 AND s.height <> 0 AND NOT coalesce(a.outside, false) "
    "AND a.label IS NOT NULL AND a.kind IN ({kinds}) AND (a.bbox_x IS NULL "
    "OR a.bbox_y IS NULL OR a.bbox_w IS NULL OR a.bbox_h IS NULL)"
)
_ITEMS = "SELECT * EXCLUDE (_pos) FROM _yolo_sel ORDER BY _pos"
_ANNOTATIONS = (
    "SELECT s._pos, a.kind, a.label, a.outside, a.bbox_x, a.bbox_y, a.bbox_w, a.bbox_h, "
    "a.angle_deg, a.confidence FROM annotations a JOIN _yolo_sel s USING (item_id) "
    "ORDER BY s._pos, a.filename, a.file_row_number"
)


def write_boxes(
    task: WriteTask,
    staging: Staging,
    out: Output,
    dirs: Callable[[str | None], tuple[str, str]],
    classes: dict[str, int],
    save_images: bool,
) -> WriteResult | None:
    """Write the shard's label files (and images); None if some box must be derived."""
    con = staging.con
    where = f"WHERE hash(item_id) % {int(task.shards)} = {int(task.shard)}"
    con.execute(_SELECT.format(where=where if task.shards > 1 else ""))
    twice = con.execute("SELECT count(*) - count(DISTINCT item_id) FROM _yolo_sel").fetchone()
    if twice[0]:
        return None  # an item id twice: each copy gets the annotations, as a join does
    kinds = ", ".join(f"'{k}'" for k in sorted(per_image.BOXABLE))
    if con.execute(_DERIVED.format(kinds=kinds)).fetchone()[0]:
        return None
    result = WriteResult()
    collisions = per_image.colliding_stems(staging, per_subset=True)
    copier = per_image.MediaCopier()
    for first, items, anns in _batches(con):
        pos = anns.column("_pos").to_numpy() - first
        width = items.column("width").fill_null(0).to_numpy()
        height = items.column("height").fill_null(0).to_numpy()
        sized = (width != 0) & (height != 0)
        ann_sized = sized[pos]
        kind = anns.column("kind").to_pylist()
        label = anns.column("label").to_pylist()
        outside = anns.column("outside").fill_null(False).to_numpy(zero_copy_only=False)
        boxable = np.fromiter((k in per_image.BOXABLE for k in kind), bool, len(kind))
        labelled = anns.column("label").is_valid().to_numpy(zero_copy_only=False)
        writable = ann_sized & ~outside & boxable & labelled
        confident = anns.column("confidence").is_valid().to_numpy(zero_copy_only=False)
        _count_losses(result, anns, kind, sized, ann_sized, outside, boxable, writable, confident)
        lines = _lines(anns, writable, pos, width, height, label, classes)
        counts = np.bincount(pos[writable], minlength=items.num_rows)
        ends = np.cumsum(counts)
        for i, item in enumerate(items.to_pylist()):
            if not sized[i]:
                continue
            stem = per_image.output_stem(item, collisions, per_subset=True)
            label_dir, image_dir = dirs(item.get("subset"))
            text = "".join(lines[ends[i] - counts[i] : ends[i]])
            per_image.put(out, f"{label_dir}/{stem}.txt", text, result)
            if save_images:
                rel = f"{image_dir}/{stem}{per_image.image_suffix(item)}"
                copier.copy(item.get("media_uri"), out, rel, result)
            result.items += 1
        result.annotations += int(writable.sum())
    return result


def _batches(con) -> Iterator[tuple[int, pa.Table, pa.Table]]:
    """(position of the first item, items, their annotations) in item order, a batch of
    items at a time; annotations in source order within an item."""
    items = con.cursor().sql(_ITEMS).to_arrow_reader(ITEMS_PER_BATCH)
    anns = con.cursor().sql(_ANNOTATIONS).to_arrow_reader(ITEMS_PER_BATCH * 8)
    pending: list[pa.RecordBatch] = []
    exhausted = False
    first = 0
    for batch in items:
        end = first + batch.num_rows
        # Gather annotations until one belongs to a later batch of items.
        while not exhausted and not (
            pending and pending[-1].num_rows and pending[-1].column("_pos")[-1].as_py() >= end
        ):
            try:
                pending.append(anns.read_next_batch())
            except StopIteration:
                exhausted = True
        table = pa.Table.from_batches(pending, schema=anns.schema)
        cut = int(np.searchsorted(table.column("_pos").to_numpy(), end))
        rest = table.slice(cut)
        pending = rest.to_batches() if rest.num_rows else []
        yield first, pa.Table.from_batches([batch]), table.slice(0, cut)
        first = end


def _lines(anns, writable, pos, width, height, label, classes) -> list[str]:
    """`cls cx cy w h` per writable annotation, as `_Lines` formats it (6 decimals)."""
    sel = np.flatnonzero(writable)
    x, y, bw, bh = (
        anns.column(c).to_numpy(zero_copy_only=False)[sel]
        for c in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")
    )
    w = width[pos[sel]].astype(np.float64)
    h = height[pos[sel]].astype(np.float64)
    # The same operations in the same order as `_centre`: the same doubles.
    cx, cy = (x + bw / 2) / w, (y + bh / 2) / h
    cls = [classes[label[i]] for i in sel.tolist()]
    return [
        f"{c} {a:.6f} {b:.6f} {d:.6f} {e:.6f}\n"
        for c, a, b, d, e in zip(
            cls, cx.tolist(), cy.tolist(), (bw / w).tolist(), (bh / h).tolist(), strict=True
        )
    ]


def _count_losses(
    result, anns, kind, sized, ann_sized, outside, boxable, writable, confident
) -> None:
    """What `_write_shard` and `_Lines` count, under the same lines."""
    n_unsized_items = int((~sized).sum())
    if n_unsized_items:
        result.lose("items without a size skipped", n_unsized_items)
        n = int((~ann_sized).sum())
        if n:
            result.lose("annotations of items without a size", n)
    gate = ann_sized
    _lose(result, "outside shapes skipped", gate & outside)
    gate = gate & ~outside
    for k in sorted({kind[i] for i in np.flatnonzero(gate & ~boxable).tolist()}):
        not_boxable = gate & ~boxable & np.fromiter((x == k for x in kind), bool, len(kind))
        _lose(result, f"{k} annotations not written: YOLO has no place for them", not_boxable)
    _lose(result, "unlabelled annotations skipped", gate & boxable & ~writable)
    _lose(result, "confidences dropped", writable & confident)
    angle = anns.column("angle_deg").fill_null(0).to_numpy(zero_copy_only=False)
    kinds = np.array(kind, dtype=object)
    rotated = writable & (kinds == "rotated_bbox")
    _lose(result, "rotated boxes lost their angle", rotated & (angle != 0))
    for k in sorted(
        {kind[i] for i in np.flatnonzero(writable).tolist()} - {"bbox", "rotated_bbox"}
    ):
        plural = per_image.PLURAL.get(k, k)
        _lose(result, f"{plural} written as boxes", writable & (kinds == k))


def _lose(result: WriteResult, what: str, mask: np.ndarray) -> None:
    n = int(mask.sum())
    if n:
        result.lose(what, n)
