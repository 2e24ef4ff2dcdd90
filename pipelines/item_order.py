"""A table's rows for a run of items, in item order, read by pyarrow without a sort.

`Staging.iter_items` zips streams of rows sorted by item. Sorted by DuckDB, the
7.5M vertices of a 200 MB staging took 3.4 s to stream, 2.7 of them the sort. But
readers stage rows item by item, so a table is usually in item order already:
when each row group holding rows of the run holds items at or after those of the
row group before it (by its item-id dictionary, `window_spans`), the rows are read
a row group at a time and put in order there. The rows of one item keep the order
of the file, as DuckDB's `ORDER BY _pos, filename, file_row_number` keeps it, and
vertices that order by annotation, part and index; a row group out of that order
is sorted on its own. A table whose row groups interleave items is left to DuckDB.

The run itself (`select_run`) and its items' own rows (`item_rows`) are read the
same way: the subset's rows from the `subset` column, then those rows' row groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.item_spans import window_spans
from pipelines.schema import TABLES

if TYPE_CHECKING:
    from pipelines.staging import Staging


def item_run(items: int, part: int, parts: int) -> tuple[int, int]:
    """The items (positions in source order, as `Staging.iter_items(positions=...)`
    takes them) that part `part` of `parts` holds: runs of near-equal length."""
    return items * part // parts, items * (part + 1) // parts


_VERTEX_ORDER = [(key, "ascending", "at_end") for key in ("_pos", "_ann", "_part", "_idx")]
"""DuckDB's order of a vertex stream (nulls last, as there)."""
_SORT_ONLY = ("_part", "_idx")


Keep = Callable[[pa.ChunkedArray, int], pa.ChunkedArray]
"""(a row group's annotation ids, the last position it holds) → which rows to keep."""


class Run:
    """The items of a run (`item_id`, `_pos`, `width`, `height`, in `_pos` order, and
    `rows`: where each is in the items table) and, per table, the row groups holding
    their rows: found once for all of a run's streams."""

    def __init__(self, items: pa.Table, rows: np.ndarray) -> None:
        self.items = items
        self.rows = rows
        self.ids = items.column("item_id").combine_chunks()
        self.positions = items.column("_pos").to_numpy()
        self._unique = pc.count_distinct(self.ids).as_py() == len(self.ids)
        self._groups: dict[str, dict[int, tuple[int, int]] | None] = {}

    def groups(self, staging: Staging, table: str) -> dict[int, tuple[int, int]] | None:
        """Row group → the span of the run's items it may hold (`window_spans`), for the
        row groups holding any; None when they are not in item order, or the run names
        an item twice."""
        if table not in self._groups:
            self._groups[table] = self._spans(staging, table) if self._unique else None
        return self._groups[table]

    def _spans(self, staging: Staging, table: str) -> dict[int, tuple[int, int]] | None:
        known = staging.row_group_spans(table)
        if known is None:
            spans = window_spans(staging, table, self.ids, 0)
        else:  # the table's spans in the items table, as spans of the run's items
            rows = self.rows
            spans = [
                None
                if s is None
                else (
                    int(np.searchsorted(rows, s[0])),
                    int(np.searchsorted(rows, s[1], "right")) - 1,
                )
                for s in known.spans
            ]
        groups: dict[int, tuple[int, int]] = {}
        last_rank = -1
        for number, span in enumerate(spans):
            if span is not None and span[0] <= span[1]:
                if span[0] < last_rank:
                    return None
                groups[number], last_rank = span, span[1]
        return groups


def select_run(
    staging: Staging,
    subset: str | None,
    all_subsets: bool,
    positions: tuple[int, int] | None,
    shard: int,
    shards: int,
) -> Run:
    """The run of `Staging.iter_items`: the subset's items (or all), those at `positions`
    (after the first-th, through the last-th) or in `shard` of `shards` runs. Found by
    pyarrow, from the `subset` column alone and then the run's own rows: DuckDB's window
    over the whole items table and its sorted join took a part 0.08 s."""
    if shards > 1:
        count = staging.count_rows("items") if all_subsets else _subset_size(staging, subset)
        positions = item_run(count, shard, shards)
    rows = _rows_of_all(staging, positions) if all_subsets else _rows_of(staging, subset, positions)
    chunks = _items_at(staging, rows, _RUN_SCHEMA.names)
    items = pa.concat_tables(
        [_conform(chunk, _RUN_SCHEMA, False) for chunk in chunks] or [_RUN_SCHEMA.empty_table()]
    )
    # Any ascending numbers: every stream of the run is ordered by these.
    pos = pa.array(np.arange(len(rows), dtype=np.int64))
    return Run(items.append_column("_pos", pos), rows)


_RUN_SCHEMA = pa.schema([TABLES["items"].field(name) for name in ("item_id", "width", "height")])


def _rows_of_all(staging: Staging, positions: tuple[int, int] | None) -> np.ndarray:
    """The rows in the items table of the items at `positions` (all: None)."""
    count = staging.count_rows("items")
    first, last = positions or (0, count)
    return np.arange(max(first, 0), min(last, count), dtype=np.int64)


def _rows_of(staging: Staging, subset: str | None, positions: tuple[int, int] | None) -> np.ndarray:
    """The rows in the items table (ascending) of the subset's items at `positions`."""
    first, last = positions or (0, np.iinfo(np.int64).max)
    found, seen = [], 0
    for rows in _subset_rows(staging, subset):
        if seen >= last:
            break
        lo, hi = max(first - seen, 0), min(last - seen, len(rows))
        if lo < hi:
            found.append(rows[lo:hi])
        seen += len(rows)
    return np.concatenate(found) if found else np.empty(0, np.int64)


def _subset_size(staging: Staging, subset: str | None) -> int:
    return sum(len(rows) for rows in _subset_rows(staging, subset))


def _subset_rows(staging: Staging, subset: str | None) -> Iterator[np.ndarray]:
    """The rows of the subset's items in the items table (None: items without one), a
    row group at a time."""
    seen = 0
    for part in staging.scan("items", ["subset"], dictionary=["subset"]):
        column = part.column("subset")
        if subset is None:
            hit = column.is_null()
        else:
            hit = per_entry(column, lambda values: pc.equal(values, subset), pa.bool_())
        yield seen + np.flatnonzero(hit.fill_null(False).to_numpy(zero_copy_only=False))
        seen += len(part)


def _items_at(
    staging: Staging, rows: np.ndarray, columns: list[str], partitions: bool = False
) -> Iterator[pa.Table]:
    """The items table's `columns` at `rows` (ascending), a row group at a time."""
    if not len(rows):
        return
    seen = start = int(rows[0])
    window = (start, int(rows[-1]) + 1)
    for chunk in staging.scan("items", columns, rows=window, partitions=partitions):
        lo, hi = np.searchsorted(rows, [seen, seen + len(chunk)])
        if hi > lo:
            yield chunk.take(pa.array(rows[lo:hi] - seen))
        seen += len(chunk)


def item_rows(staging: Staging, run: Run, schema: pa.Schema) -> Iterator[pa.Table]:
    """The run's rows of the items table as `schema`'s columns (DuckDB's: with the `dataset`
    of each file's folder), and `_pos`, in bounded memory."""
    names = [n for n in schema.names if n != "dataset"]
    done = 0
    for chunk in _items_at(staging, run.rows, names, partitions=True):
        rows = _conform(chunk, schema, False)
        pos = run.positions[done : done + len(rows)]
        done += len(rows)
        yield rows.append_column("_pos", pa.array(pos))


def ordered_rows(
    staging: Staging,
    table: str,
    schema: pa.Schema,
    run: Run,
    vertices: bool = False,
    keep: Keep | None = None,
) -> Iterator[pa.Table] | None:
    """The rows of `table` whose item is in `run`, as `schema`'s columns and `_pos`; with
    `vertices`, also `_ann` (the vertex's annotation) and in annotation, part and index
    order within an item; with `keep`, only the vertices it keeps, a row group's other
    columns read only if it keeps one. None when the table is not in item order."""
    groups = run.groups(staging, table)
    return None if groups is None else _read(staging, table, schema, run, groups, vertices, keep)


def _read(
    staging: Staging,
    table: str,
    schema: pa.Schema,
    run: Run,
    groups: dict[int, tuple[int, int]],
    vertices: bool,
    keep: Keep | None,
) -> Iterator[pa.Table]:
    positions = run.positions
    extra = ["ann_id", "part", "idx"] if vertices else []
    columns = list(dict.fromkeys(["item_id", *schema.names, *extra]))
    # Annotation ids as each row group's dictionary: telling runs apart compares codes.
    coded = ["item_id", "ann_id"] if vertices else ["item_id"]
    held: pa.Table | None = None  # the last item's rows: the next row group may hold more
    for lo, chunk, ranks in _chunks(staging, table, columns, coded, groups, run, keep):
        if ranks.null_count:  # rows of items outside the run
            valid = ranks.is_valid()
            chunk, ranks = chunk.filter(valid), ranks.filter(valid)
        if not len(ranks):
            continue
        pos = positions[ranks.to_numpy() + lo]
        rows = _conform(chunk, schema, vertices).append_column("_pos", pa.array(pos))
        if held is not None:
            rows = pa.concat_tables([held, rows])
            pos = np.concatenate((held.column("_pos").to_numpy(), pos))
        last = pos == pos.max()
        first_last = int(np.argmax(last))
        if last[first_last:].all():  # the usual: the last item's rows come last
            done, held = rows.slice(0, first_last), rows.slice(first_last)
        else:
            done, held = rows.filter(pa.array(~last)), rows.filter(pa.array(last))
        if len(done):
            yield _in_order(done, vertices)
    if held is not None:
        yield _in_order(held, vertices)


def _chunks(
    staging: Staging,
    table: str,
    columns: list[str],
    coded: list[str],
    groups: dict[int, tuple[int, int]],
    run: Run,
    keep: Keep | None,
) -> Iterator[tuple[int, pa.Table, pa.ChunkedArray]]:
    """Each row group's rows with their items' ranks (`_ranks`) and its first rank; with
    `keep`, only the rows it keeps (`Staging.scan`'s match: item and annotation ids
    first, the other columns of a row group only where a row is kept)."""
    if keep is None:
        chunks = staging.scan(table, columns, dictionary=coded, groups=groups)
        for (lo, hi), chunk in zip(groups.values(), chunks, strict=True):
            yield lo, chunk, _ranks(chunk.column("item_id"), run.ids[lo : hi + 1])
        return
    for number, (lo, hi) in groups.items():
        span = run.ids[lo : hi + 1]

        def kept(keys: pa.Table, span: pa.Array = span, lo: int = lo) -> pa.Array:
            ranks = _ranks(keys.column("item_id"), span)
            top = int(run.positions[lo + int(pc.max(ranks).as_py() or 0)])
            return pc.and_(ranks.is_valid(), keep(keys.column("ann_id"), top))

        match = (["item_id", "ann_id"], kept)
        for chunk in staging.scan(table, columns, dictionary=coded, groups=[number], match=match):
            yield lo, chunk, _ranks(chunk.column("item_id"), span)


def _ranks(item_ids: pa.ChunkedArray, span: pa.Array) -> pa.ChunkedArray:
    """Each row's item as its index in `span` (null: not there), among the few ids the
    row group may hold (`window_spans`), not among the whole run's."""
    return per_entry(item_ids, lambda ids: pc.index_in(ids, value_set=span), pa.int32())


def per_entry(
    coded: pa.ChunkedArray, compute: Callable[[pa.Array], pa.Array], out_type: pa.DataType
) -> pa.ChunkedArray:
    """`compute` of a dictionary-encoded column's values, computed once a dictionary
    entry (a row group's ids repeat a row each) and handed to each row."""
    return pa.chunked_array([compute(c.dictionary).take(c.indices) for c in coded.chunks], out_type)


def _conform(chunk: pa.Table, schema: pa.Schema, vertices: bool) -> pa.Table:
    """The columns as DuckDB gives them (its types; a column a file lacks as nulls), and
    a vertex's annotation, part and index to order by."""
    names = chunk.schema.names
    arrays = [
        chunk.column(f.name).cast(f.type) if f.name in names else pa.nulls(len(chunk), f.type)
        for f in schema
    ]
    out = pa.table(arrays, schema=schema)
    if vertices:
        for name, column in (("_ann", "ann_id"), ("_part", "part"), ("_idx", "idx")):
            out = out.append_column(name, chunk.column(column))
    return out


def _in_order(rows: pa.Table, vertices: bool) -> pa.Table:
    pos = rows.column("_pos").to_numpy()
    ordered = bool(np.all(pos[1:] >= pos[:-1]))
    if vertices:
        ordered = ordered and _vertices_in_order(rows, pos)
        ann = rows.schema.get_field_index("_ann")  # as DuckDB gives it: a string
        rows = rows.set_column(ann, "_ann", rows.column(ann).cast(pa.string()))
    if not ordered:
        keys = _VERTEX_ORDER if vertices else _VERTEX_ORDER[:1]
        rows = rows.take(pc.sort_indices(rows, keys))  # stable: file order within an item
    return rows.drop_columns(list(_SORT_ONLY)) if vertices else rows


def _vertices_in_order(rows: pa.Table, pos: np.ndarray) -> bool:
    """Whether each annotation's vertices are one run, in part (nulls last), then index
    order: items already are (`pos` ascends)."""
    codes = rows.select(["_ann"]).unify_dictionaries().column(0).combine_chunks()
    ann = codes.indices.to_numpy()
    same = (ann[1:] == ann[:-1]) & (pos[1:] == pos[:-1])
    if len(ann) - int(same.sum()) != np.count_nonzero(np.bincount(ann)):  # one in two runs
        return False
    part = rows.column("_part").fill_null(np.iinfo(np.int32).max).to_numpy()
    idx = rows.column("_idx").fill_null(np.iinfo(np.int32).max).to_numpy()
    later = (part[1:] > part[:-1]) | ((part[1:] == part[:-1]) & (idx[1:] >= idx[:-1]))
    return bool(np.all(later | ~same))
