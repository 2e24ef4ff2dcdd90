"""The staging Parquet dataset that every writer reads from: through DuckDB, or with
pyarrow alone (`Staging.scan`) where a writer needs no query.

Layout: `ROOT/<table>/dataset=<name>/part-<task>-<n>.parquet`. Rows keep
source order: part files are named in task order and DuckDB gives each row
its file and row number (`scan` reads the files in that order), so writers emit
items and annotations in the order the source had them.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
import threading
import uuid
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import LabelflowError
from pipelines.item_order import Keep, Run, item_rows, ordered_rows, per_entry, select_run
from pipelines.item_spans import ItemSpans, item_spans
from pipelines.schema import BOX, TABLES, conform
from pipelines.storage import fs_for

if TYPE_CHECKING:
    import duckdb

_REMEMBERED: dict[str, dict[Hashable, Any]] = {}
"""`Staging.remembered`: token → key → what was made."""

_FETCH_ROWS = 8_192
"""Rows `iter_items` takes from each of its four streams at a time, each row a dict:
65,536 held ~100 MB of dicts a worker. Staging → CVAT XML, 2 workers, tree PSS:
200 MB 1.25 → 0.87 GB, 1 GB 1.55 → 1.03 GB, as fast (15.75 → 15.3 s, 84.3 → 82.5 s)."""

IN_MEMORY_ITEMS = 1_000_000
"""Planning a write holds the dataset's item ids in memory (pyarrow: fast, no DuckDB;
~160 bytes an item at its peak: 96 MB for 410k items) this many at a time; past one
such window it asks DuckDB, whose aggregates spill to disk past its memory limit."""


@dataclass
class ItemGroup:
    """One item with everything attached to it, for writers that emit per item."""

    item: dict[str, Any]
    annotations: list[dict[str, Any]] = field(default_factory=list)
    points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    attributes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """owner_id → attribute rows; the item's own attributes are under its item_id."""
    parts: dict[str, dict[int, Any]] = field(default_factory=dict)
    """With `iter_items(part_kinds=...)`: annotation id → part → its vertices, in order
    (those of every annotation: a writer reads its part kinds'):
    their texts joined with ';' (`point_text`), or x, y interleaved in a float64 array
    (orjson writes it as the list of its floats)."""


MEMORY_LIMIT = "256MB"
"""DuckDB's memory for a connection: its sorts and joins spill past it to the system's
temporary folder. Staging 1 GB → CVAT XML, 2 workers: 1 GB took 89 s and 2.98 GB of
tree PSS, 256 MB 84 s and 1.55 GB; at 64 MB the iter_items streams do not fit."""


PLAN_MEMORY_LIMIT = "128MB"
"""DuckDB's memory when a write is planned (whole-table counts, window functions):
they spill sooner, and the planning process peaks lower for about the same time.
COCO planning, in-process: staging 1 GB 355-371 → 298-307 MB max RSS, 1.58-1.83 →
1.18-1.21 s; 5.2 GB (2.05M items) 578-588 → 466-473 MB, 11.5-11.7 → 13.2-13.7 s.
COCO → YOLO 5.2 GB, 2 workers: tree PSS 432 → 388 MB, 113.3 → 113.8 s."""


class Staging:
    """A read-only view of a staging dataset, local or on object storage."""

    def __init__(
        self, url: str, memory_limit: str = MEMORY_LIMIT, threads: int = 1, token: str = ""
    ) -> None:
        self.url = url.rstrip("/")
        self.memory_limit = memory_limit
        self.threads = threads
        self._con: duckdb.DuckDBPyConnection | None = None
        self._owner = 0  # the thread that opened `_con`
        self._cursors: dict[int, duckdb.DuckDBPyConnection] = {}  # other threads'
        self._lock = threading.Lock()
        # Staging is read-only while it is read: each table is listed, and its footers
        # read, once per instance (planning asked for the item count five times).
        self._part_files: dict[str, list[str]] = {}
        self._file_sizes: dict[str, list[tuple[int, int]]] = {}
        """Per table, each part file's (rows, row groups)."""
        self.token = token or uuid.uuid4().hex
        """This view of the staging and those made of it (`view`, the copies a run's tasks
        get): what a process works out about the files is kept for them (`remembered`)."""
        self._selected: Run | None = None  # the run `_sel` holds

    def __getstate__(self) -> dict[str, Any]:
        # What is known of the files travels with the instance to the tasks of a run:
        # each would otherwise list the tables and open part files to count their row
        # groups again (a YOLO shard opened ~15 before its own: 0.3 s of CPU on 1 GB).
        known = (self._part_files, self._file_sizes)
        return {"url": self.url, "memory_limit": self.memory_limit, "threads": self.threads,
                "token": self.token, "known": known}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        known = state.pop("known", ({}, {}))
        self.__init__(**state)
        self._part_files, self._file_sizes = known

    def view(self, threads: int | None = None, memory_limit: str | None = None) -> Staging:
        """Another view of the same staging, with a DuckDB connection of its own (on
        `threads`, within `memory_limit`), that knows what this one knows of the files."""
        other = Staging(
            self.url,
            memory_limit or self.memory_limit,
            self.threads if threads is None else threads,
            self.token,
        )
        other._part_files, other._file_sizes = self._part_files, self._file_sizes
        return other

    def close(self) -> None:
        """Close the DuckDB connections, if any were opened: what their queries held goes
        back (a later query opens another)."""
        with self._lock:
            for cursor in self._cursors.values():
                cursor.close()
            self._cursors.clear()
            if self._con is not None:
                self._con.close()
                self._con = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The calling thread's connection. A connection runs one query at a time, and
        planning queries from threads: each thread after the first gets a cursor of its
        own on the same database."""
        me = threading.get_ident()
        with self._lock:
            if self._con is None:
                self._con, self._owner = self._connect(), me
            if me == self._owner:
                return self._con
            if me not in self._cursors:
                self._cursors[me] = self._con.cursor()
            return self._cursors[me]

    def _connect(self) -> duckdb.DuckDBPyConnection:
        import duckdb  # on first use: reading into staging never queries it

        # Sorts larger than memory_limit spill to the system's temporary folder,
        # never into the working directory.
        spill = os.path.join(tempfile.gettempdir(), f"labelflow-duckdb-{os.getpid()}")
        con = duckdb.connect(
            config={
                "memory_limit": self.memory_limit,
                "threads": self.threads,
                "temp_directory": spill,
            }
        )
        fs, root = fs_for(self.url)
        fs.invalidate_cache()
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        local = protocol in ("file", "local")
        if not local:
            con.register_filesystem(fs)
        for name in TABLES:
            table_dir = posixpath.join(root, name)
            if self._parts(name):
                glob = table_dir if local else f"{protocol}://{table_dir}"
                con.execute(
                    f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{glob}/**/*.parquet', "
                    "hive_partitioning=true, union_by_name=true, filename=true, "
                    "file_row_number=true)"
                )
            else:
                empty = (
                    TABLES[name]
                    .empty_table()
                    .append_column("filename", pa.array([], pa.string()))
                    .append_column("file_row_number", pa.array([], pa.int64()))
                )
                # A real (empty) table: registered Arrow objects are invisible to the
                # cursors that iter_items opens.
                con.register("_arrow_empty", empty)
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM _arrow_empty")
                con.unregister("_arrow_empty")
        return con

    def scan(
        self,
        table: str,
        columns: Sequence[str],
        rows: tuple[int, int] | None = None,
        dictionary: Sequence[str] = (),
        match: tuple[Sequence[str], Callable[[pa.Table], pa.Array]] | None = None,
        groups: Collection[int] | None = None,
        partitions: bool = False,
    ) -> Iterator[pa.Table]:
        """The table's `columns` in source order, a row group at a time, read by pyarrow
        alone: a task that needs no query is spared DuckDB (~45 MB a worker).

        `rows`: only rows [start, stop) of the whole table; row groups outside it are
        not read. `dictionary`: string columns kept dictionary-encoded (labels and
        kinds repeat: a few bytes a row instead of the string). `match`: (columns,
        test): only the rows whose values in those columns pass the test (a table of
        them → a boolean array); the other columns of a row group are read only when
        a row passes.
        `groups`: only these row groups, numbered across the part files in order.
        `partitions`: with the `dataset` each file's folder names, as DuckDB gives it.
        """
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        fs = fs_for(self.url)[0]
        start, stop = rows or (0, None)
        chosen = None if groups is None else set(groups)
        # Past the last chosen row group, no more part files are opened (~0.2 ms each).
        last = -1 if not chosen else max(chosen)
        sizes = self._file_sizes.get(table)  # known: files without a wanted row are not opened
        seen = numbered = 0
        for i, path in enumerate(self._parts(table)):
            if chosen is not None and numbered > last:
                return
            if sizes is not None:
                if stop is not None and seen >= stop:
                    return
                file_rows, file_groups = sizes[i]
                here = range(numbered, numbered + file_groups)
                if seen + file_rows <= start or (chosen is not None and chosen.isdisjoint(here)):
                    seen, numbered = seen + file_rows, numbered + file_groups
                    continue
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f, read_dictionary=dictionary)
                for group in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(group).num_rows
                    first, seen = seen, seen + n
                    numbered += 1
                    if seen <= start or (chosen is not None and numbered - 1 not in chosen):
                        continue
                    if stop is not None and first >= stop:
                        return
                    lo = max(start - first, 0)
                    hi = n if stop is None else min(stop - first, n)
                    window = (lo, hi - lo) if (lo, hi) != (0, n) else None
                    if match is None:
                        part = _row_group(pf, group, columns, window)
                    else:
                        passed = match[1](_row_group(pf, group, match[0], window))
                        if not pc.any(passed).as_py():
                            continue
                        part = _row_group(pf, group, columns, window).filter(passed)
                    yield _with_dataset(part, path) if partitions else part

    def remembered(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """`make()`, made once a process for this staging's views and copies (`token`): a
        run's tasks each get a copy, and a worker takes several. The files do not change
        while a run reads them; a process keeps what it made for the last run only."""
        known = _REMEMBERED.get(self.token)
        if known is None:
            _REMEMBERED.clear()
            known = _REMEMBERED[self.token] = {}
        if key not in known:
            known[key] = make()
        return known[key]

    def row_group_spans(self, table: str) -> ItemSpans | None:
        """Where each row group's items lie in the items table (`item_spans`), once a
        process; None past `IN_MEMORY_ITEMS` (a pass over the table per window)."""
        if not self.items_fit():
            return None
        return self.remembered(("spans", table), lambda: item_spans(self, table))

    def items_fit(self) -> bool:
        """Whether planning may hold every item id in memory (`IN_MEMORY_ITEMS`)."""
        return self.count_rows("items") <= IN_MEMORY_ITEMS

    def item_windows(self) -> list[tuple[int, int]]:
        """The items table's rows in ranges of at most `IN_MEMORY_ITEMS` (at least one)."""
        total, step = self.count_rows("items"), max(1, IN_MEMORY_ITEMS)
        return [(start, min(start + step, total)) for start in range(0, total, step)]

    def count_rows(self, table: str) -> int:
        """The table's rows, from the Parquet footers alone."""
        return sum(rows for rows, _ in self._sizes(table))

    def _sizes(self, table: str) -> list[tuple[int, int]]:
        """Each part file's (rows, row groups), in `_parts` order."""
        if table not in self._file_sizes:
            self._file_sizes[table] = [(m.num_rows, m.num_row_groups) for m in self._footers(table)]
        return self._file_sizes[table]

    def groups_with_nulls(self, table: str, columns: Sequence[str]) -> list[int]:
        """The row groups (numbered as `scan` numbers them) where one of `columns` may
        hold a null, from the footers' statistics alone: a column chunk that states no
        null count, or a file without the column, may."""
        groups: list[int] = []
        number = 0
        for meta in self._footers(table):
            names = meta.schema.names
            at = [names.index(c) for c in columns if c in names]
            missing = len(at) < len(columns)
            for group in range(meta.num_row_groups):
                chunks = meta.row_group(group)
                if missing or any(_may_hold_nulls(chunks.column(i).statistics) for i in at):
                    groups.append(number)
                number += 1
        return groups

    def group_files(self, table: str) -> list[str] | None:
        """The part file of each row group (numbered as `scan` numbers them), as the
        table's `filename` column names it: a query that filters on those names has
        DuckDB open only those files. None if a file's name is not found there."""
        files: list[str] = []
        for name, (rows, groups) in zip(self._names(table), self._sizes(table), strict=True):
            if name is None and rows:
                return None
            files += [name or ""] * groups
        return files

    def first_rows(self, table: str) -> dict[str, int]:
        """The row of the whole table (source order, as `scan` counts) where each part
        file starts, by the name the `filename` column gives the file."""
        starts, seen = {}, 0
        for name, (rows, _) in zip(self._names(table), self._sizes(table), strict=True):
            if name is not None:
                starts[name] = seen
            seen += rows
        return starts

    def _names(self, table: str) -> list[str | None]:
        """Each part file as the table's `filename` column names it (None: no row does)."""
        # DuckDB names a file by its URL (s3://bucket/key), fsspec by its path.
        named = self.con.execute(f"SELECT DISTINCT filename FROM {table}").fetchall()
        by_path = {name.split("://", 1)[-1]: name for (name,) in named}
        return [by_path.get(path.split("://", 1)[-1]) for path in self._parts(table)]

    def _footers(self, table: str) -> Iterator[Any]:
        """The footers of the table's part files, in `_parts` order, one at a time."""
        import pyarrow.parquet as pq

        fs = fs_for(self.url)[0]
        for path in self._parts(table):
            with fs.open(path, "rb") as f:
                yield pq.ParquetFile(f).metadata

    def _parts(self, table: str) -> list[str]:
        """The table's part files in source order: DuckDB's `filename` order."""
        if table not in self._part_files:
            fs, root = fs_for(self.url)
            table_dir = posixpath.join(root, table)
            fs.invalidate_cache(table_dir)  # other processes wrote it: no stale listing
            found = fs.find(table_dir) if fs.exists(table_dir) else []
            self._part_files[table] = sorted(p for p in found if p.endswith(".parquet"))
        return self._part_files[table]

    def table(self, name: str, where: str = "", params: Sequence[Any] = ()) -> pa.Table:
        """A whole table (or a filtered part of it) in source order, with the schema's types."""
        condition = f"WHERE {where}" if where else ""
        sql = f"SELECT * FROM {name} {condition} ORDER BY filename, file_row_number"
        return conform(self.con.sql(sql, params=list(params)).to_arrow_table(), name)

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.con.execute(sql, list(params)).fetchone()
        return row[0] if row else None

    def subsets(self) -> list[str | None]:
        return list(self.subset_sizes())

    def subset_sizes(self) -> dict[str | None, int]:
        """Items per subset, the subsets in the order they first appear."""
        rows = self.con.execute(
            "SELECT subset, count(*), min(filename), min(file_row_number) FROM items "
            "GROUP BY subset ORDER BY 3, 4"
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def labels(self) -> list[tuple[str | None, str | None]]:
        """Every (label, label_id) pair, in order of first appearance."""
        seen: dict[tuple[str | None, str | None], None] = {}
        for part in self.scan("annotations", ["label", "label_id"], dictionary=_LABEL):
            part = part.filter(part.column("label").is_valid())
            # Without threads, groups come out in the order they first appear.
            pairs = part.group_by(["label", "label_id"], use_threads=False).aggregate([])
            labels, ids = pairs.column("label").to_pylist(), pairs.column("label_id").to_pylist()
            seen.update(dict.fromkeys(zip(labels, ids, strict=True)))
        return list(seen)

    def iter_items(
        self,
        *,
        subset: str | None = None,
        all_subsets: bool = True,
        shard: int = 0,
        shards: int = 1,
        ann_columns: Sequence[str] | None = None,
        point_columns: Sequence[str] | None = None,
        with_attributes: bool = True,
        positions: tuple[int, int] | None = None,
        part_kinds: Collection[str] = (),
        point_text: Callable[[pa.RecordBatch], pa.Array] | None = None,
        boxed_vertices: bool = True,
        vertex_kinds: Collection[str] | None = None,
    ) -> Iterator[ItemGroup]:
        """Items in source order with their annotations, points and attributes.

        `all_subsets=False` restricts to `subset` (None meaning items without
        one); `positions` (first, last) keeps the items after the first-th and
        through the last-th of those, a run in source order; `shard`/`shards`
        split them into such runs, one per task (`item_run`): a run's rows lie in
        a few row groups (`item_order`), where a hash of the item id spread every
        task's over all of them. Only the listed columns are fetched.

        With `part_kinds`, vertices also come a row per part (`ItemGroup.parts`): as
        arrays, or as text where `point_text`, given vertices (`x`, `y`) and their items'
        sizes (`width`, `height`) as a batch, spells each vertex as the writer does;
        `points` then holds only the vertices of annotations of other kinds.
        Without `boxed_vertices`, it leaves out those of annotations that state their
        box (all four `BOX` columns), for a writer that reads the box alone; with
        `vertex_kinds`, those of annotations of other kinds.
        """
        if shards > 1:
            assert positions is None, "a shard is a run of positions"
        run = select_run(self, subset, all_subsets, positions, shard, shards)
        items_schema = self._schema("items", "* EXCLUDE (filename, file_row_number)")
        items = self._rows(_batches(item_rows(self, run, items_schema)))
        a_cols = _select(ann_columns, "a")
        anns = self._rows(
            _batches(self._stream("annotations a", a_cols, run))
            or self._joined(
                run,
                f"SELECT {a_cols}, s._pos FROM annotations a JOIN _sel s USING (item_id) "
                "ORDER BY s._pos, a.filename, a.file_row_number",
            )
        )
        p_cols = _select(point_columns, "p")
        # Vertex rows only for the other kinds: a semi-join on the kind (a join would
        # repeat vertices if an (item, annotation) pair ever repeated; NOT EXISTS on
        # the part kinds was 1 s slower on YOLO segment, 200 MB). The parts come for
        # every vertex, unfiltered: the same semi-join there cost more than parts
        # nobody reads (2 workers: CVAT XML 11.2 → 12.6 s, YOLO segment 8.4 → 11.5 s).
        wanted = [f"a.kind NOT IN ({sql_strings(part_kinds)})"] if part_kinds else []
        if not boxed_vertices:
            wanted.append(f"NOT ({' AND '.join(f'a.{c} IS NOT NULL' for c in BOX)})")
        if vertex_kinds is not None:
            wanted.append(f"a.kind IN ({sql_strings(vertex_kinds)})")
        as_row = (
            "WHERE EXISTS (SELECT 1 FROM annotations a WHERE a.ann_id = p.ann_id AND "
            f"a.item_id = p.item_id AND {' AND '.join(wanted)})"
            if wanted
            else ""
        )
        pts: Iterator[dict[str, Any]] = iter(())
        if point_columns != ():
            vertices, keep = None, None
            if wanted:  # the vertices of the annotations `wanted` keeps
                owners = self._stream("annotations a", f"a.ann_id, a.kind, {_BOX}", run)
                if owners is not None:
                    keep = _Owners(owners, self.con.cursor(), " AND ".join(wanted))
            if not wanted or keep is not None:
                vertices = self._stream("points p", p_cols, run, True, keep)
            pts = self._rows(
                _batches(vertices)
                or self._joined(
                    run,
                    f"SELECT {p_cols}, p.ann_id AS _ann, s._pos FROM points p "
                    f"JOIN _sel s USING (item_id) {as_row} "
                    "ORDER BY s._pos, p.ann_id, p.part, p.idx",
                )
            )
        # In the order of the vertex stream above; a vertex without a part belongs to
        # part 0 (`_merge` puts it after part 0's own).
        parts: Iterator[dict[str, Any]] = iter(())
        if part_kinds:
            xy = self._stream("points p", "p.part, p.x, p.y", run, True)
            sizes = ", s.width, s.height" if point_text else ""
            batches = (
                _batches(_sized(t, run) if point_text else t for t in map(_part_zero, xy))
                if xy is not None
                else self._joined(
                    run,
                    f"SELECT s._pos, p.ann_id AS _ann, coalesce(p.part, 0) AS part, p.x, p.y"
                    f"{sizes} FROM points p JOIN _sel s USING (item_id) "
                    "ORDER BY s._pos, p.ann_id, p.part, p.idx",
                )
            )
            if point_text:
                batches = (_spelt(b, point_text) for b in batches)
            parts = self._runs(batches)
        attrs = (
            self._rows(
                _batches(self._stream("attributes t", _select(None, "t"), run))
                or self._joined(
                    run,
                    f"SELECT {_select(None, 't')}, s._pos FROM attributes t JOIN _sel s "
                    "USING (item_id) ORDER BY s._pos, t.filename, t.file_row_number",
                )
            )
            if with_attributes
            else iter(())
        )
        yield from _merge(items, anns, pts, attrs, parts, _join_text if point_text else _join_xy)

    def _joined(self, run: Run, sql: str) -> Iterator[pa.RecordBatch]:
        """A stream DuckDB sorts (its table is not in item order), joined to the run's
        items as `_sel` (`item_id`, `_pos`, `width`, `height`)."""
        con = self.con
        if self._selected is not run:  # once a run: its other streams may be reading it
            con.register("_run", run.items)
            # A real table: registered Arrow objects are invisible to other cursors.
            con.execute("CREATE OR REPLACE TABLE _sel AS SELECT * FROM _run")
            con.unregister("_run")
            self._selected = run
        # Each stream gets its own cursor: a new query on a connection ends the previous one.
        return iter(con.cursor().sql(sql).to_arrow_reader(_FETCH_ROWS))

    def _schema(self, table: str, columns: str) -> pa.Schema:
        """The schema DuckDB gives `columns` of `table` (with its alias): once a process
        for a run's staging (`remembered`)."""
        sql = f"SELECT {columns} FROM {table} LIMIT 0"

        def ask() -> pa.Schema:
            # A cursor: the connection may hold a result its caller did not fetch to the end.
            with self.con.cursor() as cursor:
                return cursor.sql(sql).to_arrow_table().schema

        return self.remembered(("schema", sql), ask)

    def _stream(
        self,
        table: str,
        columns: str,
        run: Run,
        vertices: bool = False,
        keep: Keep | None = None,
    ) -> Iterator[pa.Table] | None:
        """`columns` of `table` (with its alias) for the items of `run`, read in item order
        without DuckDB's sort, if the table is in that order (`item_order`); else None."""
        schema = self._schema(table, columns)
        return ordered_rows(self, table.split()[0], schema, run, vertices, keep)

    @staticmethod
    def _rows(batches: Iterator[pa.RecordBatch]) -> Iterator[dict[str, Any]]:
        """Each row as a dict, as `RecordBatch.to_pylist` gives it, in 70% of its time: a
        column with only nulls (most of an annotation's 40, for most formats) is not
        converted, and rows are zipped from whole columns."""
        for batch in batches:
            n = len(batch)
            columns = [c.to_pylist() if c.null_count < n else repeat(None, n) for c in batch]
            rows = zip(*columns, strict=True)
            yield from map(dict, map(zip, repeat(batch.schema.names), rows))

    def _runs(self, batches: Iterator[pa.RecordBatch]) -> Iterator[dict[str, Any]]:
        """The rows of `batches` (_pos, _ann, part, then text, or x and y; sorted so), one
        per run of equal (_pos, _ann, part) in a batch: its texts joined with
        ';' by Arrow, or its x, y interleaved in one array (`_merge` joins a run cut
        by a batch's end). In DuckDB, an ordered `string_agg` per group ran out of
        its memory on 200 MB."""
        for batch in batches:
            pos, part = batch.column("_pos").to_numpy(), batch.column("part").to_numpy()
            ann = batch.column("_ann")
            change = (pos[1:] != pos[:-1]) | (part[1:] != part[:-1])
            differs = pc.not_equal(ann.slice(1), ann.slice(0, len(ann) - 1))
            change |= differs.fill_null(True).to_numpy(zero_copy_only=False)
            starts = np.concatenate(([0], np.flatnonzero(change) + 1)).astype(np.int32)
            bounds = np.append(starts, len(batch)).astype(np.int32)
            rows = batch.select(["_pos", "_ann", "part"]).take(starts).to_pylist()
            if "text" in batch.schema.names:
                runs = pa.ListArray.from_arrays(pa.array(bounds), batch.column("text"))
                texts = pc.binary_join(runs, ";")
                if texts.null_count:  # a vertex without coordinates: no text to give it
                    ann_id = rows[int(texts.is_null().to_numpy(False).argmax())]["_ann"]
                    msg = f"{self.url}: annotation {ann_id!r} has a vertex without coordinates"
                    raise LabelflowError(msg)
                for row, text in zip(rows, texts.to_pylist(), strict=True):
                    row["value"] = text
                    yield row
                continue
            # Nulls come out as NaN, which orjson writes as null, as it writes None.
            xy = np.empty(2 * len(batch))
            xy[0::2] = batch.column("x").to_numpy(zero_copy_only=False)
            xy[1::2] = batch.column("y").to_numpy(zero_copy_only=False)
            for row, start, end in zip(rows, bounds[:-1], bounds[1:], strict=True):
                row["value"] = xy[2 * start : 2 * end]
                yield row


_LABEL = ("label", "label_id")  # repeating strings: grouped by their codes, half the time


def _may_hold_nulls(statistics: Any) -> bool:
    return statistics is None or not statistics.has_null_count or statistics.null_count > 0


def _row_group(pf: Any, group: int, columns: Sequence[str], window: tuple | None) -> pa.Table:
    part = pf.read_row_group(group, columns=list(columns))
    return part.slice(*window) if window else part


def _with_dataset(part: pa.Table, path: str) -> pa.Table:
    """The rows with the `dataset` their file's folder names (`dataset=<name>`), which no
    Parquet file holds: DuckDB's hive partitioning reads it from the path too."""
    folder = posixpath.basename(posixpath.dirname(path))
    value = folder.removeprefix("dataset=") if folder.startswith("dataset=") else None
    return part.append_column("dataset", pa.repeat(pa.scalar(value, pa.string()), len(part)))


def _select(columns: Sequence[str] | None, alias: str) -> str:
    if not columns:  # the dataset is the item's
        return f"{alias}.* EXCLUDE (filename, file_row_number, dataset)"
    return ", ".join(f"{alias}.{c}" for c in columns)


def sql_strings(values: Collection[str]) -> str:
    """Values as a list of SQL string literals, for `IN (...)`."""
    return ", ".join("'{}'".format(v.replace("'", "''")) for v in values)


_SPLITEXT_ROOT = r"(?s)^((?:.*/)?\.*[^/.][^/]*?)\.[^/.]*$"


def splitext_root_sql(expr: str) -> str:
    """SQL for `posixpath.splitext(expr)[0]`: the path less the extension of its last
    name, where a character other than a dot comes before it (`.profile` has none)."""
    return f"regexp_replace({expr}, '{_SPLITEXT_ROOT}', '\\1')"


_BOX = ", ".join(f"a.{c}" for c in BOX)


class _Owners:
    """`item_order.Keep` for vertices: the annotations that pass `condition` (the SQL
    test of `iter_items`' semi-join, on `a`), read in item order in step with the
    vertices. Annotation ids are unique within a dataset, and a row group's items are a
    few of one dataset."""

    def __init__(self, owners: Iterator[pa.Table], cursor: Any, condition: str) -> None:
        self.owners, self.cursor, self.condition = owners, cursor, condition
        self.kept = pa.table({"ann_id": pa.array([], pa.string()),
                              "_pos": pa.array([], pa.int64())})  # fmt: skip
        self.read_to = -1  # the last item whose annotations are all read

    def __call__(self, ann_ids: pa.ChunkedArray, top: int) -> pa.ChunkedArray:
        while self.read_to < top:
            anns = next(self.owners, None)
            if anns is None:
                self.read_to = top
                break
            self.cursor.register("_owners", anns)
            passed = self.cursor.sql(
                f"SELECT ann_id, _pos FROM _owners a WHERE {self.condition}"
            ).to_arrow_table()
            self.kept = pa.concat_tables([self.kept, passed])
            self.read_to = anns.column("_pos")[len(anns) - 1].as_py()
        wanted = self.kept.column("ann_id")
        found = per_entry(ann_ids, lambda ids: pc.is_in(ids, value_set=wanted), pa.bool_())
        # Later row groups start at `top` or after: what comes before it is done with.
        self.kept = self.kept.filter(pc.greater_equal(self.kept.column("_pos"), top))
        return found


def _batches(tables: Iterator[pa.Table] | None) -> Iterator[pa.RecordBatch] | None:
    """Tables as batches of at most `_FETCH_ROWS`, as DuckDB's reader gives them."""
    if tables is None:
        return None
    return (batch for t in tables for batch in t.to_batches(_FETCH_ROWS))


def _sized(vertices: pa.Table, run: Run) -> pa.Table:
    """Vertices with their items' `width` and `height` (from the run, by position)."""
    at = pa.array(np.searchsorted(run.positions, vertices.column("_pos").to_numpy()))
    sizes = run.items.select(["width", "height"]).take(at)
    return pa.Table.from_arrays(
        [*vertices.columns, *sizes.columns], [*vertices.schema.names, *sizes.schema.names]
    )


def _spelt(vertices: pa.RecordBatch, text: Callable[[pa.RecordBatch], pa.Array]) -> pa.RecordBatch:
    """The vertices with `x`, `y`, `width` and `height` replaced by their `text`."""
    spelt = text(vertices)
    return vertices.drop_columns(["x", "y", "width", "height"]).append_column("text", spelt)


def _part_zero(table: pa.Table) -> pa.Table:
    """Vertices as `_runs` takes them: one without a part in part 0."""
    i = table.schema.get_field_index("part")
    return table.set_column(i, "part", pc.fill_null(table.column(i), 0))


def _join_text(a: str, b: str) -> str:
    return f"{a};{b}"


def _join_xy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate((a, b))


def _merge(items, anns, pts, attrs, parts, join: Callable[[Any, Any], Any]) -> Iterator[ItemGroup]:
    """Zip five streams sorted by item position into one group per item; `join` puts
    together two runs of one part."""
    streams = [anns, pts, attrs, parts]
    heads = [next(s, None) for s in streams]
    for item in items:
        pos = item.pop("_pos")
        group = ItemGroup(item=item)
        while heads[0] is not None and heads[0]["_pos"] == pos:
            row = heads[0]
            del row["_pos"]
            group.annotations.append(row)
            heads[0] = next(anns, None)
        while heads[1] is not None and heads[1]["_pos"] == pos:
            row = heads[1]
            del row["_pos"]
            group.points.setdefault(row.pop("_ann"), []).append(row)
            heads[1] = next(pts, None)
        while heads[2] is not None and heads[2]["_pos"] == pos:
            row = heads[2]
            del row["_pos"]
            group.attributes.setdefault(row["owner_id"], []).append(row)
            heads[2] = next(attrs, None)
        while heads[3] is not None and heads[3]["_pos"] == pos:
            # One part may come as several runs (cut by a batch's end, or vertices
            # without a part after the part-0 ones): joined in the order they come.
            row = heads[3]
            ann_parts, part = group.parts.setdefault(row["_ann"], {}), row["part"]
            value = row["value"]
            ann_parts[part] = join(ann_parts[part], value) if part in ann_parts else value
            heads[3] = next(parts, None)
        yield group
