"""Column builders that readers fill row by row and flush as bounded Batches.

Rows are kept as small dicts (only the columns a format sets) and turned into
Arrow in one C++ call per table at flush time; vertices, the bulk of most
exports, are kept as flat coordinate runs and expanded with numpy. A reader
that can map many records at once hands over whole column blocks instead
(`annotation_block`, `point_block`); blocks and rows keep their call order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from pipelines.errors import ParseError
from pipelines.schema import ANNOTATIONS, ATTRIBUTES, ITEMS, POINTS, REJECTS, Batch

DEFAULT_BATCH_ROWS = 50_000
_ITEM_CONSTANTS = ("dataset", "source_format", "source_uri")
_RECORD_PREVIEW = 2_000


def to_json(value: Any) -> str:
    """Compact, key-order-preserving JSON text for metadata and attribute values."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # an integer past 64 bits, which JSON allows and orjson does not write
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def value_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "json"


def attribute_text(value: Any) -> str | None:
    """The `value` column's text: strings as they are, everything else as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return to_json(value)


def parse_attribute(value: str | None, type_name: str | None) -> Any:
    """Inverse of `attribute_text` for writers: the original Python value."""
    if value is None or type_name == "null":
        return None
    if type_name == "string" or type_name is None:
        return value
    return orjson.loads(value)


def parse_datetime(value: Any) -> datetime | None:
    """A UTC datetime from ISO 8601 or RFC 2822 text ("Thu, 09 Feb 2023 14:12:03 UTC").

    None when the text is neither; callers keep such text as an attribute.
    """
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    text = str(value).strip()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            dt = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def is_finite(*values: Any) -> bool:
    """True when every value is a real, finite number.

    One C-level sum instead of a check per value: a string raises, a NaN or an
    infinity propagates (coordinates near 1e308 would overflow too — absurd anyway).
    """
    try:
        return math.isfinite(sum(values))
    except TypeError:
        return False


def finite_float(value: Any) -> float | None:
    """`value` as a float when it is a number (not a bool) a float holds finitely."""
    if type(value) not in (int, float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


class BatchBuilder:
    """Accumulates rows of one source and flushes them as a Batch.

    `dataset`, `source_format` and `source_uri` are the same for every row of a
    source and are filled at flush time rather than per row.
    """

    def __init__(
        self,
        dataset: str,
        source_format: str,
        source_uri: str,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        on_error: str = "reject",
        boxed_vertices: bool = True,
    ) -> None:
        self.on_error = on_error
        # False: a reader may leave out the vertices of shapes that state a box, and
        # counts them with `leave_out_vertices` (`ReadOptions.boxed_vertices`).
        self.boxed_vertices = boxed_vertices
        self._left_out = 0
        self.dataset = dataset
        self.source_format = source_format
        self.source_uri = source_uri
        self.batch_rows = batch_rows
        self._items: list[dict] = []
        self._anns: list[dict] = []
        self._attrs: list[dict] = []
        self._rejects: list[dict] = []
        # Vertex runs: one entry per (annotation, part) plus a flat coordinate list.
        self._run_ann: list[str] = []
        self._run_item: list[str] = []
        self._run_part: list[int] = []
        self._run_len: list[int] = []
        self._run_dims: list[int] = []
        self._coords: list[float] = []
        self._point_extra: list[dict] = []
        # Where each named vertex goes among the plain ones (runs and blocks): after
        # the plain vertices added before it, so that vertices stay in call order.
        self._plain_rows = 0
        self._extra_at: list[int] = []
        # Column blocks, in call order with the rows above: rows pending when a block
        # arrives are sealed into a block first.
        self._item_blocks: list[pa.Table] = []
        self._ann_blocks: list[pa.Table] = []
        self._attr_blocks: list[pa.Table] = []
        self._run_blocks: list[pa.Table] = []
        self._block_rows = 0
        self.read_counts = {"items": 0, "annotations": 0}

    # -- rows ---------------------------------------------------------------

    def item(self, **row: Any) -> None:
        self._items.append(row)

    def annotation(self, **row: Any) -> None:
        self._anns.append(row)

    def points(
        self,
        ann_id: str,
        item_id: str,
        coords: Sequence[float],
        *,
        part: int = 0,
        dims: int = 2,
    ) -> None:
        """Append one ring/part as a flat coordinate run: x0, y0[, z0], x1, y1, ...

        Vertex order is kept (`idx` counts from 0 within the part).
        """
        n = len(coords) // dims
        if n == 0:
            return
        self._run_ann.append(ann_id)
        self._run_item.append(item_id)
        self._run_part.append(part)
        self._run_len.append(n)
        self._run_dims.append(dims)
        self._coords.extend(coords if len(coords) == n * dims else coords[: n * dims])
        self._plain_rows += n

    def named_points(
        self, ann_id: str, item_id: str, rows: Sequence[dict], *, part: int = 0
    ) -> None:
        """Append vertices that carry more than coordinates (name, visibility, z).

        Each row has x, y and optionally z, name, visibility; idx follows the order.
        """
        for idx, r in enumerate(rows):
            self._point_extra.append(
                {"ann_id": ann_id, "item_id": item_id, "part": part, "idx": idx, **r}
            )
        self._extra_at.extend([self._plain_rows] * len(rows))

    def item_block(self, columns: dict[str, Any], n: int) -> None:
        """Append `n` item rows given as columns (lists or Arrow arrays), as `item(**row)`
        would; `dataset`, `source_format` and `source_uri` are filled at flush."""
        self._items = self._block(self._item_blocks, ITEMS, self._items, _ITEM_CONSTANTS)
        self._item_blocks.append(_columns_table(ITEMS, columns, n, _ITEM_CONSTANTS))
        self._block_rows += n

    def annotation_block(self, columns: dict[str, Any], n: int) -> None:
        """Append `n` annotation rows given as columns (lists or Arrow arrays).

        Columns are named as in the schema (without `dataset`); absent ones are null.
        Values convert exactly as they would in `annotation(**row)`.
        """
        self._anns = self._block(self._ann_blocks, ANNOTATIONS, self._anns, ("dataset",))
        self._ann_blocks.append(_columns_table(ANNOTATIONS, columns, n))
        self._block_rows += n

    def attribute_block(self, columns: dict[str, Any], n: int) -> None:
        """Append `n` attribute rows given as columns, as `annotation_block` does."""
        self._attrs = self._block(self._attr_blocks, ATTRIBUTES, self._attrs, ("dataset",))
        self._attr_blocks.append(_columns_table(ATTRIBUTES, columns, n))
        self._block_rows += n

    def _block(self, blocks: list, schema: pa.Schema, rows: list[dict], constant: tuple) -> list:
        """Seal the rows added one by one so far into a block: rows keep call order."""
        if rows:
            blocks.append(self._plain_table(schema, rows, constant))
        return []

    def point_block(self, columns: dict[str, Any], n: int) -> None:
        """Append `n` plain vertex rows (ann_id, item_id, part, idx, x, y[, z]) as columns.

        They join the vertex runs of `points()` in call order; rows with name or
        visibility belong to `named_points()`.
        """
        if self._run_len:
            self._run_blocks.append(self._runs_table())
        self._run_blocks.append(_columns_table(POINTS, columns, n))
        self._block_rows += n
        self._plain_rows += n

    def leave_out_vertices(self, n: int) -> None:
        """`n` vertices read and not staged: the write does not read them."""
        self._left_out += n

    def attribute(
        self,
        owner_id: str,
        item_id: str,
        key: str,
        value: Any,
        *,
        owner_kind: str = "annotation",
        source: str | None = None,
        frame_index: int | None = None,
    ) -> None:
        self._attrs.append(
            {
                "item_id": item_id,
                "owner_id": owner_id,
                "owner_kind": owner_kind,
                "frame_index": frame_index,
                "key": key,
                "value": attribute_text(value),
                "value_type": value_type(value),
                "source": source,
            }
        )

    def attributes(self, owner_id: str, item_id: str, values: dict, **kw: Any) -> None:
        for key, value in values.items():
            self.attribute(owner_id, item_id, str(key), value, **kw)

    def reject(
        self,
        location: str,
        reason: str,
        *,
        record: Any = None,
        record_kind: str = "annotations",
        native_id: Any = None,
    ) -> None:
        """Set a record aside with where it was and why; it is counted as read.

        Under the `fail` policy the first such record stops the source instead.
        """
        if self.on_error == "fail":
            raise ParseError(self.source_uri, location, reason)
        text = record if isinstance(record, str) or record is None else to_json(record)
        if text is not None and len(text) > _RECORD_PREVIEW:
            text = text[:_RECORD_PREVIEW] + "…"
        self._rejects.append(
            {
                "location": location,
                "record_kind": record_kind,
                "native_id": None if native_id is None else str(native_id),
                "reason": reason,
                "record": text,
            }
        )

    # -- flushing -------------------------------------------------------------

    @property
    def pending(self) -> int:
        return (
            len(self._items)
            + len(self._anns)
            + len(self._coords) // 2
            + len(self._attrs)
            + self._block_rows
        )

    def full(self) -> bool:
        return self.pending >= self.batch_rows

    def flush(self) -> Batch:
        batch = Batch(
            items=self._blocks_table(ITEMS, self._item_blocks, self._items, _ITEM_CONSTANTS),
            annotations=self._blocks_table(ANNOTATIONS, self._ann_blocks, self._anns, ("dataset",)),
            points=self._points_table(),
            attributes=self._blocks_table(ATTRIBUTES, self._attr_blocks, self._attrs, ("dataset",)),
            rejects=self._table(REJECTS, self._rejects, ("dataset", "source_uri")),
            vertices_left_out=self._left_out,
        )
        self._left_out = 0
        self._items, self._anns, self._attrs, self._rejects = [], [], [], []
        self._item_blocks, self._ann_blocks, self._run_blocks = [], [], []
        self._attr_blocks = []
        self._block_rows = 0
        return batch

    def _constants(self, n: int, names: tuple[str, ...]) -> dict[str, pa.Array]:
        values = {
            "dataset": self.dataset,
            "source_format": self.source_format,
            "source_uri": self.source_uri,
        }
        return {
            name: pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, dtype=np.int32)), pa.array([values[name]])
            )
            for name in names
        }

    def _table(self, schema: pa.Schema, rows: list[dict], constant: tuple[str, ...]) -> pa.Table:
        if not rows:
            return schema.empty_table()
        plain = self._plain_table(schema, rows, constant)
        return _assemble(schema, plain, self._constants(len(rows), constant))

    def _plain_table(self, schema: pa.Schema, rows: list[dict], constant: tuple[str, ...]):
        """Rows as a table of the non-constant columns, dictionary columns still plain.

        Only the columns some row has are converted, the others are nulls: pyarrow
        looks up every field of the type in every row, and an annotation row states
        ~10 of 40 (a Datumaro batch's 3.5k annotations: 5 → 2.5 ms)."""
        plain = _plain_struct(schema, constant)
        present = set().union(*rows)
        fields = [f for f in plain if f.name in present]
        struct = pa.array(rows, type=pa.struct(fields))
        given = {f.name: struct.field(i) for i, f in enumerate(fields)}
        n = len(rows)
        columns = [given[f.name] if f.name in given else pa.nulls(n, f.type) for f in plain]
        return pa.Table.from_arrays(columns, names=plain.names)

    def _blocks_table(
        self, schema: pa.Schema, blocks: list[pa.Table], rows: list[dict], constant: tuple
    ) -> pa.Table:
        """The blocks, then the rows added one by one since, as one table."""
        if not blocks:
            return self._table(schema, rows, constant)
        parts = [*blocks, self._plain_table(schema, rows, constant)] if rows else blocks
        plain = pa.concat_tables(parts).combine_chunks()
        return _assemble(schema, plain, self._constants(plain.num_rows, constant))

    def _points_table(self) -> pa.Table:
        tables = []
        if self._run_blocks:
            if self._run_len:
                self._run_blocks.append(self._runs_table())
            runs = pa.concat_tables(self._run_blocks).combine_chunks()
            constants = self._constants(runs.num_rows, ("dataset",))
            tables.append(_assemble(POINTS, runs, constants))
        elif self._run_len:
            runs = self._runs_table()
            constants = self._constants(runs.num_rows, ("dataset",))
            tables.append(_assemble(POINTS, runs, constants))
        if self._point_extra:
            tables.append(self._table(POINTS, self._point_extra, ("dataset",)))
            self._point_extra = []
        at, self._extra_at, self._plain_rows = np.asarray(self._extra_at), [], 0
        if not tables:
            return POINTS.empty_table()
        if len(tables) == 1:
            return tables[0]
        # Call order, which readers keep item by item: the staging then needs no sort by
        # item to be read (`item_order`). Plain vertex i sorts at 2i + 1, a named one
        # added after j plain ones at 2j.
        plain = np.arange(tables[0].num_rows)
        order = np.argsort(np.concatenate((2 * plain + 1, 2 * at)), kind="stable")
        return pa.concat_tables(tables).take(pa.array(order))

    def _runs_table(self) -> pa.Table:
        lengths = np.asarray(self._run_len, dtype=np.int64)
        dims = np.asarray(self._run_dims, dtype=np.int64)
        coords = np.asarray(self._coords, dtype=np.float64)
        n = int(lengths.sum())
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        idx = np.arange(n, dtype=np.int64) - starts
        # Offset of each vertex's first coordinate in the flat list.
        run_offsets = np.cumsum(lengths * dims) - lengths * dims
        base = np.repeat(run_offsets, lengths) + idx * np.repeat(dims, lengths)
        x = coords[base]
        y = coords[base + 1]
        has_z = dims == 3
        z = None
        if has_z.any():
            zz = np.full(n, np.nan)
            vertex_has_z = np.repeat(has_z, lengths)
            zz[vertex_has_z] = coords[base[vertex_has_z] + 2]
            z = pa.array(zz, mask=~vertex_has_z)
        run_index = np.repeat(np.arange(len(lengths)), lengths)
        ann = pa.array(self._run_ann, pa.string()).take(pa.array(run_index))
        item = pa.array(self._run_item, pa.string()).take(pa.array(run_index))
        part = np.repeat(np.asarray(self._run_part, dtype=np.int32), lengths)
        columns = {
            "ann_id": ann,
            "item_id": item,
            "part": pa.array(part, pa.int32()),
            "idx": pa.array(idx.astype(np.int32), pa.int32()),
            "x": pa.array(x),
            "y": pa.array(y),
            "z": z if z is not None else pa.nulls(n, pa.float64()),
            "name": pa.nulls(n, pa.string()),
            "visibility": pa.nulls(n, pa.int8()),
        }
        self._run_ann, self._run_item, self._run_part = [], [], []
        self._run_len, self._run_dims, self._coords = [], [], []
        plain = _plain_struct(POINTS, ("dataset",))
        return pa.Table.from_arrays([columns[f.name] for f in plain], names=plain.names)


_PLAIN_CACHE: dict[tuple[str, tuple[str, ...]], pa.StructType] = {}


def _plain_struct(schema: pa.Schema, constant: tuple[str, ...]) -> pa.StructType:
    """The schema's non-constant columns, dictionary columns decoded to plain strings.

    Building dictionary arrays from Python is slower than encoding afterwards.
    """
    key = (schema.metadata[b"labelflow.table"].decode(), constant)
    if key not in _PLAIN_CACHE:
        fields = []
        for f in schema:
            if f.name in constant:
                continue
            t = pa.string() if pa.types.is_dictionary(f.type) else f.type
            fields.append(pa.field(f.name, t))
        _PLAIN_CACHE[key] = pa.struct(fields)
    return _PLAIN_CACHE[key]


def _columns_table(
    schema: pa.Schema, columns: dict[str, Any], n: int, constant: tuple[str, ...] = ("dataset",)
) -> pa.Table:
    plain = _plain_struct(schema, constant)
    arrays = []
    for f in plain:
        value = columns.get(f.name)
        if value is None:
            arrays.append(pa.nulls(n, f.type))
        elif isinstance(value, (pa.Array, pa.ChunkedArray)):
            arrays.append(value if value.type == f.type else value.cast(f.type))
        else:
            arrays.append(pa.array(value, type=f.type))
    return pa.Table.from_arrays(arrays, names=plain.names)


def _assemble(
    schema: pa.Schema, plain: pa.StructArray | pa.Table, constants: dict[str, pa.Array]
) -> pa.Table:
    """The schema's table from its plain columns (a struct array or a table) and constants."""
    arrays = []
    for f in schema:
        if f.name in constants:
            arrays.append(constants[f.name])
            continue
        col = plain.field(f.name) if isinstance(plain, pa.StructArray) else plain.column(f.name)
        if col.type != f.type:
            col = col.dictionary_encode() if pa.types.is_dictionary(f.type) else col.cast(f.type)
            if col.type != f.type:
                col = col.cast(f.type)
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=schema)
