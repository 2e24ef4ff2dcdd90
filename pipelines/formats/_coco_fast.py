"""COCO annotations mapped a column at a time.

The row path (`coco._AnnotationReader.add`) builds a dict per annotation and
validates it value by value: a few microseconds each, most of a read. Here the
common records of a parsed chunk — polygons, RLE masks and boxes with the seven
standard keys and CVAT's `attributes` object — become Arrow columns in a few
C-level passes; validation is vectorised and only *certifies* rows. A row it
cannot certify (an unknown key, an explicit null, a value the row path would
reject or map differently) is left to the row path, in place, so rejects,
attributes and every odd record come out exactly as before; the two paths emit
rows in source order.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.builder import BatchBuilder, attribute_text, finite_float, value_type
from pipelines.masks import from_uncompressed
from pipelines.schema import ANNOTATIONS, box_stated

FAST_KEYS = frozenset({"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"})
"""Every certified annotation has these keys, and at most `attributes` besides (CVAT
writes it on every annotation); others (keypoints, score, ...) take the row path."""
_ALLOWED = FAST_KEYS | {"attributes"}
_NO_ATTRIBUTES: dict = {}

MAX_ODD_ROWS = 64
"""Above this many uncertified rows in a chunk, the whole chunk takes the row path."""

# Beyond this magnitude a sum of coordinates could overflow, which the row path's
# check (a finite sum) would reject: such rows are left to it.
_LIMIT = 1e300
_CANONICAL_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)
_NUMBER_TYPES = frozenset({int, float, bool})
_F64_LIST = pa.list_(pa.float64())
_F64_LIST_LIST = pa.list_(_F64_LIST)
_NONE = type(None)


_KEY_ORDER = tuple(sorted(FAST_KEYS))
_GET_ALL = itemgetter(*_KEY_ORDER)
_BOX, _POLYGON, _MASK, _OTHER, _ROTATED = 0, 1, 2, 3, 4


@functools.cache
def _kinds() -> pa.Array:
    """`kind` by code: a shapeless annotation (no segmentation) is a box, turned when its
    `rotation` attribute is not 0. Made on first use: the first Arrow array a process
    makes costs it 3-5 MB (Arrow's start), which a command line that only plans never
    pays."""
    return pa.array(["bbox", "polygon", "mask", "bbox", "rotated_bbox"])


class _SegCodes(dict):
    def __missing__(self, key: type) -> int:
        return _OTHER


_SEG_CODE = _SegCodes({list: _POLYGON, dict: _MASK, type(None): _BOX})


class Fallback(Exception):
    """The chunk cannot be mapped by columns: map it row by row."""


@dataclass
class _Chunk:
    """One parsed chunk: its columns, which rows are certified, and their geometry."""

    first: int
    anns: list
    odd: np.ndarray
    columns: dict[str, Any]
    kind: np.ndarray
    """Kind codes: _BOX, _POLYGON, _MASK, _ROTATED."""
    attributes: list[dict] | None
    """Each row's `attributes` object; None when no row of the chunk has one."""
    polygons: pa.ListArray | None
    polygon_rows: np.ndarray
    rle_rows: np.ndarray


class ImageIds:
    """The images' ids as the row path compares them: as text (`str(id)`).

    Int ids, the usual case, are kept as one sorted int64 array (8 bytes an image,
    not a Python string each); other ids as a set of their text.
    """

    def __init__(self, ints: np.ndarray, texts: set[str]) -> None:
        """`ints`: the ids that are ints within int64 (sorted in place: the index takes
        the array over); `texts`: `str(id)` of all the others.

        No copy beside the array unless ids repeat (`np.unique` made two: with 2.05M
        images a worker's peak was 79 MB above its steady size, now 11 MB)."""
        canonical = [int(t) for t in texts if _CANONICAL_INT.fullmatch(t)]
        canonical = [v for v in canonical if _INT64_MIN <= v <= _INT64_MAX]
        if canonical:
            ints = np.concatenate([ints, np.array(canonical, dtype=np.int64)])
        ints.sort()
        repeated = ints[1:] == ints[:-1]
        self.ints = ints[np.concatenate(([True], ~repeated))] if repeated.any() else ints
        self.texts = frozenset(texts)

    def __contains__(self, text: object) -> bool:
        if text in self.texts:
            return True
        if isinstance(text, str) and _CANONICAL_INT.fullmatch(text):
            v = int(text)
            if _INT64_MIN <= v <= _INT64_MAX:
                return bool(self.has_ints(np.array([v], dtype=np.int64))[0])
        return False

    def has_ints(self, ids: np.ndarray) -> np.ndarray:
        """For int ids: whether `str(id)` is an image id."""
        at = np.searchsorted(self.ints, ids)
        at[at == len(self.ints)] = 0
        return (self.ints[at] == ids) if len(self.ints) else np.zeros(len(ids), dtype=bool)


class ColumnMapper:
    """Maps the certified rows of a chunk to column blocks of a BatchBuilder."""

    def __init__(
        self, stem: str, image_ids: ImageIds, categories: dict[Any, dict], check: Callable
    ) -> None:
        self.stem = stem
        self.image_ids = image_ids
        self.names = {k: c.get("name") for k, c in categories.items()}
        self.check = check
        # Labels are written as strings; anything else is the row path's business.
        self.enabled = all(v is None or isinstance(v, str) for v in self.names.values())

    def segments(self, first: int, anns: list) -> Iterator[tuple[int, int, _Chunk | None]]:
        """Yield (start, stop, chunk) runs in order: chunk None means "row by row".

        Raises `Fallback` before yielding anything when the chunk is too unusual.
        """
        chunk = self._prepare(first, anns)
        odd = np.flatnonzero(chunk.odd).tolist()
        start = 0
        for k in [*odd, len(anns)]:
            if k > start:
                yield start, k, chunk
            if k < len(anns):
                yield k, k + 1, None
            start = k + 1

    # -- certification ------------------------------------------------------------

    def _prepare(self, first: int, anns: list) -> _Chunk:
        if not self.enabled or not anns:
            raise Fallback
        n = len(anns)
        odd = np.zeros(n, dtype=bool)
        if set(map(type, anns)) != {dict}:
            odd |= _flags(type(a) is not dict for a in anns)
            anns = [a if type(a) is dict else {} for a in anns]
        keys = set().union(*anns)
        if not keys <= _ALLOWED:
            odd |= _flags(not a.keys() <= _ALLOWED for a in anns)
        raw_attrs = None
        if "attributes" in keys:
            raw_attrs = list(map(dict.get, anns, repeat("attributes")))
        try:  # every row has every key: one pass, then a transpose
            cols = dict(zip(_KEY_ORDER, zip(*map(_GET_ALL, anns), strict=True), strict=True))
            complete = True
        except KeyError:
            cols = {k: list(map(dict.get, anns, repeat(k))) for k in FAST_KEYS}
            complete = False
        types = {k: set(map(type, col)) for k, col in cols.items()}
        # An explicit null is kept as an attribute by the row path. With every key in
        # every row a null shows as a None value; otherwise count keys against values.
        stated_attrs = n - raw_attrs.count(None) if raw_attrs is not None else 0
        if complete:
            nulls = any(_NONE in t for t in types.values())
            if raw_attrs is not None:  # an explicit null shows as one key too many
                nulls = nulls or sum(map(len, anns)) != len(FAST_KEYS) * n + stated_attrs
        else:
            nonnull = sum(n - col.count(None) for col in cols.values()) + stated_attrs
            nulls = sum(map(len, anns)) != nonnull
        if nulls:
            odd |= _flags(None in a.values() for a in anns)
        try:
            columns = {
                "native_id": _strings(cols["id"], types["id"]),
                "label": pa.array(list(map(self.names.get, cols["category_id"])), pa.string()),
                "label_id": _strings(cols["category_id"], types["category_id"]),
                "iscrowd": _flags_or_null(cols["iscrowd"], types["iscrowd"]),
            }
            columns["item_id"] = self._items(cols["image_id"], types["image_id"], odd)
            columns.update(_boxes(cols["bbox"], types["bbox"], odd))
            columns["area"] = _numbers(cols["area"], types["area"], odd)
            attrs = None if raw_attrs is None else _objects(raw_attrs, odd)
            if attrs is not None:
                columns.update(_attribute_columns(attrs))
        except _ARROW_ERRORS as exc:
            raise Fallback from exc
        kind, polygons, polygon_rows, rle_rows = self._shapes(anns, cols["segmentation"], odd)
        if "angle_deg" in columns:  # as the row path: a box turned by its rotation
            angle = columns["angle_deg"].fill_null(0).to_numpy(zero_copy_only=False)
            kind[(kind == _BOX) & (angle != 0)] = _ROTATED
        if int(odd.sum()) > MAX_ODD_ROWS:
            raise Fallback
        return _Chunk(first, anns, odd, columns, kind, attrs, polygons, polygon_rows, rle_rows)

    def _items(self, image_ids: Sequence, types: set, odd: np.ndarray) -> pa.Array:
        """item_id strings; rows whose image is not in the file are the row path's rejects."""
        if types == {int}:
            ids = np.array(image_ids, dtype=np.int64)
            odd |= ~self.image_ids.has_ints(ids)
            text = pa.array(ids).cast(pa.string())
        else:
            strs = [str(v) for v in image_ids]
            odd |= _flags(s not in self.image_ids for s in strs)
            text = pa.array(strs, pa.string())
        return pc.binary_join_element_wise(f"{self.stem}/", text, "")

    def _shapes(self, anns: list, segs: Sequence, odd: np.ndarray):
        """Kind codes (see `_kinds`), the polygon rows' geometry, the RLE rows."""
        n = len(segs)
        code = np.fromiter(map(_SEG_CODE.__getitem__, map(type, segs)), np.int8, n)
        odd |= code == _OTHER
        if segs.count([]):  # an empty list is no shape at all: a box
            code[[i for i in np.flatnonzero(code == _POLYGON).tolist() if not segs[i]]] = _BOX
        rle = np.flatnonzero(code == _MASK)
        for i in rle.tolist():
            if self.check(anns[i]):
                odd[i] = True
        poly = np.flatnonzero(code == _POLYGON)
        polygons, rows = _polygons(anns, segs, poly, odd, self.check)
        code[code == _OTHER] = _BOX  # odd rows: never emitted
        return code, polygons, rows, rle

    # -- emission -----------------------------------------------------------------

    def emit(self, chunk: _Chunk, start: int, stop: int, b: BatchBuilder, layout: str) -> None:
        """Append the certified rows [start, stop) of `chunk` to the builder."""
        n = stop - start
        first = chunk.first
        idx = pa.array(np.arange(first + start, first + stop, dtype=np.int64)).cast(pa.string())
        ann_id = pc.binary_join_element_wise(f"{self.stem}/a", idx, "")
        cols = {k: v.slice(start, n) for k, v in chunk.columns.items()}
        cols["ann_id"] = ann_id
        cols["units"] = pa.repeat("px", n)
        cols["kind"] = _kinds().take(pa.array(chunk.kind[start:stop]))
        lo, hi = np.searchsorted(chunk.rle_rows, [start, stop])
        uncompressed: list[int] = []
        if hi > lo:
            cols.update(self._masks(chunk, chunk.rle_rows[lo:hi], start, n, uncompressed))
        b.annotation_block(cols, n)
        attrs = chunk.attributes[start:stop] if chunk.attributes is not None else None
        if uncompressed or attrs:
            _attribute_rows(attrs, uncompressed, n, ann_id, cols["item_id"], b, layout)
        lo, hi = np.searchsorted(chunk.polygon_rows, [start, stop])
        if hi > lo:
            rows = chunk.polygon_rows[lo:hi] - start
            polygons = chunk.polygons.slice(lo, hi - lo)
            if not b.boxed_vertices:
                boxed = np.asarray(box_stated(cols))[rows]
                b.leave_out_vertices(len(polygons.filter(boxed).flatten().flatten()) // 2)
                polygons, rows = polygons.filter(~boxed), rows[~boxed]
            if len(rows):
                _points(polygons, ann_id, cols["item_id"], rows, b)

    def _masks(self, chunk, rows, start, n, uncompressed: list[int]) -> dict[str, Any]:
        """The mask columns of rows [start, start + n); `uncompressed` gets the rows
        whose counts were a list (see `_attribute_rows`)."""
        mask: list = [None] * n
        mask_h: list = [None] * n
        mask_w: list = [None] * n
        for r in rows.tolist():
            seg = chunk.anns[r]["segmentation"]
            h, w = (int(v) for v in seg["size"])
            counts = seg["counts"]
            k = r - start
            if isinstance(counts, str):
                mask[k] = counts
            else:
                mask[k] = from_uncompressed(counts, h, w)
                uncompressed.append(k)
            mask_h[k], mask_w[k] = h, w
        return {"mask": mask, "mask_h": mask_h, "mask_w": mask_w}


def _objects(values: list, odd: np.ndarray) -> list[dict]:
    """`attributes` per row: an object, `_NO_ATTRIBUTES` where the row has none; an
    explicit null (already odd) or anything but an object is the row path's."""
    if not set(map(type, values)) <= {dict, _NONE}:
        odd |= _flags(type(v) not in (dict, _NONE) for v in values)
    return [v if type(v) is dict else _NO_ATTRIBUTES for v in values]


def _flag(value: Any) -> bool | None:
    return value if type(value) is bool else None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


ATTRIBUTE_COLUMNS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("occluded", "occluded", _flag),
    ("angle_deg", "rotation", finite_float),
    ("track_id", "track_id", _text),
    ("keyframe", "keyframe", _flag),
)
"""(column, key of CVAT's `attributes`, the value's conversion): what both COCO read
paths fill from that object (null where the value does not convert), and what the
COCO writer gives back under the key."""


def attribute_values(attrs: dict) -> dict[str, Any]:
    """The columns one annotation's `attributes` object fills (the row path)."""
    return {column: convert(attrs.get(key)) for column, key, convert in ATTRIBUTE_COLUMNS}


def _attribute_columns(attrs: list[dict]) -> dict[str, pa.Array]:
    """`attribute_values` of every row, a column at a time, for the keys present."""
    present = set().union(*attrs)
    return {
        column: pa.array([convert(a.get(key)) for a in attrs], ANNOTATIONS.field(column).type)
        for column, key, convert in ATTRIBUTE_COLUMNS
        if key in present
    }


def _attribute_rows(
    attrs: list[dict] | None,
    uncompressed: list[int],
    n: int,
    ann_id: pa.Array,
    item_id: pa.Array,
    b: BatchBuilder,
    layout: str,
) -> None:
    """The rows' attribute rows in the row path's order: each row's `rle` marker (its
    counts were a list: remembered so the writer gives back the form the export
    used), then its attributes."""
    owners: list[int] = []
    keys: list[str] = []
    values: list[str | None] = []
    types: list[str] = []
    sources: list[str] = []
    marked = set(uncompressed)
    for k in range(n):
        if k in marked:
            owners.append(k)
            keys.append("rle")
            values.append("uncompressed")
            types.append("string")
            sources.append(layout)
        for key, value in (attrs[k] if attrs else _NO_ATTRIBUTES).items():
            owners.append(k)
            keys.append(str(key))
            values.append(attribute_text(value))
            types.append(value_type(value))
            sources.append("attributes")
    if owners:
        at = pa.array(owners, pa.int64())
        columns = {
            "owner_id": ann_id.take(at), "item_id": item_id.take(at), "key": keys,
            "value": values, "value_type": types, "source": sources,
            "owner_kind": pa.repeat("annotation", len(owners)),
        }  # fmt: skip
        b.attribute_block(columns, len(owners))


def _flags(values) -> np.ndarray:
    return np.fromiter(values, dtype=bool)


def _strings(values: Sequence, types: set) -> pa.Array:
    """str(v) for each value, None kept: what the row path writes for ids."""
    if types <= {int, _NONE}:
        try:
            return pa.array(values, pa.int64()).cast(pa.string())
        except _ARROW_ERRORS:
            pass
    return pa.array([v if v is None else str(v) for v in values], pa.string())


def _bad_values(flat: pa.Array) -> np.ndarray:
    """Per value: null, not finite, or too large to sum safely."""
    values = flat.to_numpy(zero_copy_only=False)
    bad = ~(np.abs(values) < _LIMIT)  # NaN compares false: bad too
    if flat.null_count:
        bad |= np.asarray(flat.is_null())
    return bad


def _any_per_list(bad: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """For lists given by value offsets, whether any of their values is flagged."""
    counts = np.concatenate([[0], np.cumsum(bad, dtype=np.int64)])
    return counts[offsets[1:]] > counts[offsets[:-1]]


def _flags_or_null(values: Sequence, types: set) -> pa.Array:
    """bool(v), None kept: what the row path writes for iscrowd."""
    if types <= {int, bool}:
        with contextlib.suppress(OverflowError):
            return pa.array(np.asarray(values, dtype=bool))
    return pa.array([v if v is None else bool(v) for v in values], pa.bool_())


def _numbers(values: Sequence, types: set, odd: np.ndarray) -> pa.Array:
    """A float column; rows with anything but a finite number are left to the row path."""
    if not types <= _NUMBER_TYPES | {_NONE}:
        bad = _flags(type(v) not in _NUMBER_TYPES and v is not None for v in values)
        odd |= bad
        values = [None if f else v for v, f in zip(values, bad.tolist(), strict=True)]
    arr = pa.array(values, pa.float64())
    odd |= _bad_values(arr.fill_null(0.0))
    return arr


def _boxes(values: Sequence, types: set, odd: np.ndarray) -> dict[str, pa.Array]:
    """bbox_x/y/w/h; a missing or empty bbox is null, anything but 4 numbers is odd."""
    if not types <= {list, _NONE}:
        bad = _flags(type(v) is not list and v is not None for v in values)
        odd |= bad
        values = [None if f else v for v, f in zip(values, bad.tolist(), strict=True)]
    try:
        arr = pa.array(values, _F64_LIST)
    except _ARROW_ERRORS:
        # Some box holds a non-number: those rows are the row path's rejects.
        bad = _flags(v is not None and not set(map(type, v)) <= _NUMBER_TYPES for v in values)
        odd |= bad
        values = [None if f else v for v, f in zip(values, bad.tolist(), strict=True)]
        arr = pa.array(values, _F64_LIST)
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy()
    odd |= (lengths != 0) & (lengths != 4)
    offsets = arr.offsets.to_numpy()
    offsets = offsets - offsets[0]
    flat = arr.flatten()
    odd |= _any_per_list(_bad_values(flat), offsets)
    has = lengths == 4
    grid = np.zeros((len(values), 4))
    if has.all():
        grid = flat.to_numpy(zero_copy_only=False).reshape(-1, 4)
    elif has.any():
        starts = offsets[:-1][has]
        data = flat.to_numpy(zero_copy_only=False)
        grid[has] = data[starts[:, None] + np.arange(4)]
    mask = ~has
    return {
        name: pa.array(grid[:, j], mask=mask)
        for j, name in enumerate(("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
    }


def _polygons(
    anns: list, segs: Sequence, poly: np.ndarray, odd: np.ndarray, check: Callable
) -> tuple[pa.ListArray | None, np.ndarray]:
    """Polygon rows as one nested Arrow array (row → parts → coordinates).

    A flat list of numbers is one part, as in the row path. Parts must hold an
    even number (≥ 2) of finite numbers; other rows are odd.
    """
    if not poly.size:
        return None, np.zeros(0, dtype=np.int64)
    rows = poly.tolist()
    try:
        arr = pa.array(
            segs if len(rows) == len(segs) else list(map(segs.__getitem__, rows)),
            _F64_LIST_LIST,
        )
    except _ARROW_ERRORS:
        arr = None
    if arr is None:
        nested = [s if type(s[0]) is list else [s] for s in (segs[i] for i in rows)]
        try:
            arr = pa.array(nested, _F64_LIST_LIST)
        except _ARROW_ERRORS:
            arr = None
    if arr is None:
        # Some part is not a list of numbers: let the row path's own check say which.
        for i in rows:
            if check(anns[i]):
                odd[i] = True
        rows = [i for i in rows if not odd[i]]
        if not rows:
            return None, np.zeros(0, dtype=np.int64)
        nested = [s if type(s[0]) is list else [s] for s in (segs[i] for i in rows)]
        try:
            arr = pa.array(nested, _F64_LIST_LIST)
        except _ARROW_ERRORS as exc:
            raise Fallback from exc
    row_index = np.array(rows, dtype=np.int64)
    parts = arr.flatten()
    part_offsets = arr.offsets.to_numpy()
    part_len = pc.list_value_length(parts).fill_null(0).to_numpy()
    bad_part = (part_len < 2) | (part_len % 2 == 1)  # a null part has length 0 here
    bad_part |= _any_per_list(_bad_values(parts.flatten()), parts.offsets.to_numpy())
    odd[row_index] |= _any_per_list(bad_part, part_offsets)
    return arr, row_index


def _points(
    polygons: pa.ListArray, ann_id: pa.Array, item_id: pa.Array, rows: np.ndarray, b: BatchBuilder
) -> None:
    """One vertex row per coordinate pair, numbered per part as `BatchBuilder.points` does."""
    parts_per_row = pc.list_value_length(polygons).to_numpy().astype(np.int64)
    parts = polygons.flatten()
    coords = parts.flatten().to_numpy(zero_copy_only=False)
    vertices = pc.list_value_length(parts).to_numpy().astype(np.int64) // 2
    n_parts = len(parts)
    part_start = np.cumsum(parts_per_row) - parts_per_row
    part_number = np.arange(n_parts, dtype=np.int64) - np.repeat(part_start, parts_per_row)
    part_row = np.repeat(rows, parts_per_row)
    of_vertex = np.repeat(np.arange(n_parts), vertices)
    total = int(vertices.sum())
    idx = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(vertices) - vertices, vertices)
    owner = pa.array(part_row[of_vertex])
    b.point_block(
        {
            "ann_id": ann_id.take(owner),
            "item_id": item_id.take(owner),
            "part": pa.array(part_number[of_vertex].astype(np.int32)),
            "idx": pa.array(idx.astype(np.int32)),
            "x": pa.array(coords[0::2]),
            "y": pa.array(coords[1::2]),
        },
        total,
    )


# -- images -------------------------------------------------------------------------

IMAGE_KNOWN = frozenset({"id", "file_name", "width", "height"})
"""Image fields with a column; the others go to the item's `metadata` JSON."""
_SIZE_TYPES = {int, _NONE}


def image_segments(
    stem: str, subset: str | None, first: int, images: list, to_json: Callable
) -> Iterator[tuple[int, int, dict[str, Any] | None]]:
    """Yield (start, stop, columns) runs in order; columns None means "row by row".

    Certified images — an object with an id, int (or no) width and height — become
    item columns; the others (rejects, float sizes) are left to the row path.
    Raises `Fallback` before yielding anything when the chunk is too unusual.
    """
    n = len(images)
    if not n:
        raise Fallback
    odd = np.zeros(n, dtype=bool)
    if set(map(type, images)) != {dict}:
        odd |= _flags(type(a) is not dict for a in images)
        images = [a if type(a) is dict else {} for a in images]
    odd |= ~np.fromiter(map(dict.__contains__, images, repeat("id")), bool, n)
    cols = {k: list(map(dict.get, images, repeat(k))) for k in (*IMAGE_KNOWN, "coco_url")}
    for key in ("width", "height"):
        if not set(map(type, cols[key])) <= _SIZE_TYPES:
            odd |= _flags(type(v) not in _SIZE_TYPES for v in cols[key])
    ids = cols["id"]
    try:
        if set(map(type, ids)) == {int}:
            native = pa.array(ids, pa.int64()).cast(pa.string())
        else:
            native = pa.array([str(v) for v in ids], pa.string())
        names = cols["file_name"]
        media = [c or f for c, f in zip(cols["coco_url"], names, strict=True)]
        columns = {
            "item_id": pc.binary_join_element_wise(f"{stem}/", native, ""),
            "native_id": native,
            "file_name": pa.array(names, pa.string()),
            "media_uri": pa.array(media, pa.string()),
            "width": _sizes(cols["width"], odd),
            "height": _sizes(cols["height"], odd),
            "metadata": pa.array(
                [
                    to_json(e) if e else None
                    for e in ({k: v for k, v in a.items() if k not in IMAGE_KNOWN} for a in images)
                ],
                pa.string(),
            ),
        }
    except _ARROW_ERRORS as exc:
        raise Fallback from exc
    if int(odd.sum()) > MAX_ODD_ROWS:
        raise Fallback
    columns["media_type"] = pa.repeat("image", n)
    if subset is not None:
        columns["subset"] = pa.repeat(pa.scalar(subset, pa.string()), n)
    start = 0
    for k in [*np.flatnonzero(odd).tolist(), n]:
        if k > start:
            yield start, k, {name: col.slice(start, k - start) for name, col in columns.items()}
        if k < n:
            yield k, k + 1, None
        start = k + 1


def _sizes(values: list, odd: np.ndarray) -> pa.Array:
    if odd.any():  # odd rows are never emitted; keep their values out of the conversion
        values = [None if f else v for v, f in zip(values, odd.tolist(), strict=True)]
    return pa.array(values, pa.int32())
