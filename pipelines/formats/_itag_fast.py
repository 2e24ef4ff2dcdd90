"""iTAG manifest lines mapped a column at a time.

The row path (`itag._Line`) walks every shape of every line and adds its
annotation, its vertices and half a dozen attribute rows one dict at a time:
tens of microseconds a shape. Here a group of lines is walked once for its
skeleton and item (per line, per result: cheap) while the shapes of all its
results are gathered into one list; their columns are then built in a few
C-level passes, and the attribute rows of a result's "where it came from"
(stage, label key, ...) are laid out once per distinct result and repeated.

Checks here only *certify* shapes: a dict with exactly `id`, `type`, `value`
and `labels`, an `image/polygon` with a non-empty list of [x, y] number pairs,
a string (or null) id and only string answers. A line with any other shape is
left to the row path, in place, so its rejects and odd values come out exactly
as before.
"""

from __future__ import annotations

import functools
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.builder import BatchBuilder, attribute_text, value_type
from pipelines.formats._itag_write import label_fields
from pipelines.schema import ATTRIBUTES, Batch

SHAPE_KEYS = frozenset({"id", "type", "value", "labels"})
"""Shapes with other keys keep them as attributes: the row path's business."""

# Beyond this magnitude a sum of coordinates could overflow, which the row path's
# check (a finite sum) would reject: such shapes are left to it.
_LIMIT = 1e300
_EXACT_INT = 2**53
_GET = itemgetter("id", "type", "value", "labels")
_GETS = tuple(map(itemgetter, ("id", "type", "value", "labels")))
_POLYGON_VALUE = pa.list_(pa.list_(pa.float64()))
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)
_NONE = type(None)


@functools.cache
def _kinds_and_units() -> tuple[pa.Array, pa.Array]:
    """Kind and units by code: polygons are in pixels, a tag has no units (as in the row
    path). Made on first use, as the first Arrow array costs a process 3-5 MB: detecting
    a file need not."""
    return pa.array(["polygon", "tag"]), pa.array(["px", None])


_SOURCES = ["itag", "labels"]


class Group:
    """The lines of one group as the column path collects them, then their Batch.

    `itag._Line` walks each line and calls `item`, `shapes` and `tags`; `odd_lines`
    then says which lines it cannot certify, and `batch` maps the rest.
    """

    def __init__(self) -> None:
        self.lines: list[int] = []
        """The caller's index of each collected line."""
        self.item_ids: list[str] = []
        self.items: dict[str, list] = {}
        # One run per result that yields annotations: its line, kind, size, place.
        self.run_line: list[int] = []
        self.run_tags: list[bool] = []
        self.run_count: list[int] = []
        self.run_place: list[int] = []
        self.shapes: list[Any] = []
        self.answers: list[str] = []
        self.places: list[list[tuple[str, str | None, str]]] = []
        self._place_ids: dict[tuple, int] = {}
        self._columns: dict[str, Any] | None = None

    # -- collection (called while walking a line) ----------------------------------

    def begin(self, line: int, item_id: str) -> None:
        self.lines.append(line)
        self.item_ids.append(item_id)

    def item(self, **fields: Any) -> None:
        for k, v in fields.items():
            self.items.setdefault(k, []).append(v)

    def shapes_of(self, data: list, place: dict) -> None:
        self._run(len(data), False, place)
        self.shapes.extend(data)

    def tags(self, answers: list[str], place: dict) -> None:
        self._run(len(answers), True, place)
        self.answers.extend(answers)

    def _run(self, n: int, tags: bool, place: dict) -> None:
        if not n:
            return
        self.run_line.append(len(self.lines) - 1)
        self.run_tags.append(tags)
        self.run_count.append(n)
        self.run_place.append(self._place(place))

    def _place(self, place: dict) -> int:
        """The index of this place's attribute rows; equal places share them."""
        types = tuple(map(type, place.values()))
        key = None
        if float not in types:  # 0.0 == -0.0 (and 1 == 1.0, hence the types) but not as text
            key = (tuple(place.items()), types)
            try:
                return self._place_ids[key]
            except KeyError:
                pass
            except TypeError:  # a list or an object: not hashable, not shared
                key = None
        self.places.append([(str(k), attribute_text(v), value_type(v)) for k, v in place.items()])
        if key is not None:
            self._place_ids[key] = len(self.places) - 1
        return len(self.places) - 1

    # -- certification ---------------------------------------------------------------

    def odd_lines(self) -> list[int]:
        """The caller's indices of the lines whose shapes the columns cannot certify."""
        try:
            self._columns = _shape_columns(self.shapes)
            return []
        except _Uncertified as exc:
            bad = exc.bad
        counts = np.asarray(self.run_count, dtype=np.int64)
        shape_runs = ~np.asarray(self.run_tags, dtype=bool)
        shape_line = np.repeat(np.asarray(self.run_line, dtype=np.int64)[shape_runs],
                               counts[shape_runs])  # fmt: skip
        return [self.lines[i] for i in np.unique(shape_line[bad]).tolist()]

    # -- emission --------------------------------------------------------------------

    def batch(self, b: BatchBuilder) -> Batch:
        """The group's Batch; every line must be certified (`odd_lines()` empty).

        `b` is an empty builder of the task: it assembles items, annotations and
        points with their constant columns; attributes are laid out here.
        """
        assert self._columns is not None, "odd_lines() first"
        n_lines = len(self.item_ids)
        line_item = pa.array(self.item_ids, pa.string())
        b.item_block({"item_id": line_item, **self.items}, n_lines)
        if not self.run_count:
            return b.flush()
        shapes = self._columns
        counts = np.asarray(self.run_count, dtype=np.int64)
        is_tag = np.repeat(np.asarray(self.run_tags, dtype=bool), counts)
        n = len(is_tag)
        ann_line = np.repeat(np.asarray(self.run_line, dtype=np.int64), counts)
        ann_place = np.repeat(np.asarray(self.run_place, dtype=np.int64), counts)
        # Annotations are numbered per line, in order: ids `<item id>/<k>`.
        per_line = np.bincount(ann_line, minlength=n_lines)
        k = np.arange(n, dtype=np.int64) - np.repeat(np.cumsum(per_line) - per_line, per_line)
        item_id = line_item.take(pa.array(ann_line))
        ann_id = pc.binary_join_element_wise(item_id, pa.array(k).cast(pa.string()), "/")
        # Shapes, then answers, put back in annotation order.
        shape_at = np.flatnonzero(~is_tag)
        order = None
        if self.answers:
            order = np.empty(n, dtype=np.int64)
            order[shape_at] = np.arange(len(shape_at))
            order[is_tag] = len(shape_at) + np.arange(len(self.answers))
            order = pa.array(order)
        answers = pa.array(self.answers, pa.string())
        no_text = pa.nulls(len(answers), pa.string())
        kind_code = pa.array(is_tag.astype(np.int8))
        kinds, units = _kinds_and_units()
        b.annotation_block(
            {
                "ann_id": ann_id,
                "item_id": item_id,
                "native_id": _in_order(shapes["native_id"], no_text, order),
                "kind": kinds.take(kind_code),
                "label": _in_order(shapes["label"], answers, order),
                "text": _in_order(shapes["text"], no_text, order),
                "units": units.take(kind_code),
            },
            n,
        )
        shape_ann = ann_id.take(pa.array(shape_at))
        shape_item = item_id.take(pa.array(shape_at))
        _points(shapes["value"], shape_ann, shape_item, b)
        batch = b.flush()
        labels_per_ann = np.zeros(n, dtype=np.int64)
        labels_per_ann[shape_at] = shapes["label_counts"]
        attrs = self._attributes(ann_id, item_id, ann_place, labels_per_ann, shapes, b.dataset)
        return batch.replace(attributes=attrs)

    def _attributes(self, ann_id, item_id, ann_place, labels_per_ann, shapes, dataset) -> pa.Table:
        """Per annotation: its place's rows (source itag), then its answers (source labels)."""
        rows_per_place = np.fromiter(map(len, self.places), np.int64, len(self.places))
        place_start = np.cumsum(rows_per_place) - rows_per_place
        n_place = rows_per_place[ann_place]
        per_ann = n_place + labels_per_ann
        first = np.cumsum(per_ann) - per_ann
        total = int(per_ann.sum())
        src = np.empty(total, dtype=np.int64)
        is_label = np.zeros(total, dtype=bool)
        owner, j = _spread(n_place)
        src[first[owner] + j] = place_start[ann_place[owner]] + j
        owner_l, j = _spread(labels_per_ann)
        dst = first[owner_l] + n_place[owner_l] + j
        src[dst] = int(rows_per_place.sum()) + np.arange(len(dst))
        is_label[dst] = True
        rows = list(chain.from_iterable(self.places))
        take = pa.array(src)
        key = pa.concat_arrays([pa.array([r[0] for r in rows], pa.string()), shapes["keys"]])
        value = pa.concat_arrays([pa.array([r[1] for r in rows], pa.string()), shapes["values"]])
        types = pa.array([r[2] for r in rows] + ["string"], pa.string()).dictionary_encode()
        type_code = np.asarray(types.indices)[np.minimum(src, len(rows))]
        owner_all = pa.array(np.repeat(np.arange(len(per_ann)), per_ann))
        columns = {
            "dataset": _constant(dataset, total),
            "item_id": item_id.take(owner_all),
            "owner_id": ann_id.take(owner_all),
            "owner_kind": _constant("annotation", total),
            "frame_index": pa.nulls(total, pa.int64()),
            "key": key.take(take),
            "value": value.take(take),
            "value_type": _dictionary(type_code, types.dictionary),
            "source": _dictionary(is_label.astype(np.int32), pa.array(_SOURCES)),
        }
        return pa.Table.from_arrays([columns[f.name] for f in ATTRIBUTES], schema=ATTRIBUTES)


class _Uncertified(Exception):
    def __init__(self, bad: np.ndarray) -> None:
        super().__init__(f"{int(bad.sum())} shapes left to the row path")
        self.bad = bad


def _shape_columns(shapes: list) -> dict[str, Any]:
    """The shapes' columns, or `_Uncertified` with the shapes that are not certified."""
    if not shapes:
        return _columns([], [], [], None)
    if (
        set(map(type, shapes)) != {dict}
        or set(map(len, shapes)) != {4}
        or not set().union(*shapes) <= SHAPE_KEYS
    ):
        raise _Uncertified(_flags(not _certifiable(s) for s in shapes))
    ids, types, values, labels = (list(map(get, shapes)) for get in _GETS)
    if (
        set(map(type, types)) != {str}
        or set(types) != {"image/polygon"}
        or not set(map(type, ids)) <= {str, _NONE}
        or set(map(type, labels)) != {dict}
    ):
        raise _Uncertified(_flags(not _certifiable(s) for s in shapes))
    answers = list(chain.from_iterable(map(dict.values, labels)))
    if set(map(type, answers)) - {str}:
        raise _Uncertified(_flags(not _certifiable(s) for s in shapes))
    try:
        polygons = pa.array(values, _POLYGON_VALUE)
    except _ARROW_ERRORS:
        raise _Uncertified(_flags(not _certifiable(s) for s in shapes)) from None
    vertices = polygons.flatten()
    bad = pc.fill_null(pc.list_value_length(polygons), 0).to_numpy() == 0
    bad_vertex = pc.fill_null(pc.list_value_length(vertices), 0).to_numpy() != 2
    coords = vertices.flatten()
    bad_coord = ~(np.abs(coords.to_numpy(zero_copy_only=False)) < _LIMIT)  # NaN: bad too
    if coords.null_count:
        bad_coord |= np.asarray(coords.is_null())
    if bad_coord.any():
        bad_vertex |= _any_per_list(bad_coord, vertices.offsets.to_numpy())
    if bad_vertex.any():
        bad |= _any_per_list(bad_vertex, polygons.offsets.to_numpy())
    if bad.any():
        raise _Uncertified(bad)
    return _columns(ids, labels, answers, polygons)


def _columns(
    ids: list, labels: list[dict], answer_list: list[str], polygons: pa.ListArray | None
) -> dict[str, Any]:
    """Certified shapes' columns: native id, label, text, answers (`answer_list`: the
    values of every `labels` dict, in order), vertices."""
    n = len(ids)
    # Few distinct answer-key sequences ("Single-choice", then maybe "OCR result"):
    # keys and the label and text positions are looked up per sequence.
    sets = _KeySets()
    which = np.fromiter(map(sets.__getitem__, map(tuple, labels)), np.int64, n)
    key_count, key_start, text_at, label_at = (np.asarray(c, np.int64)[which] for c in sets.columns)
    owner, j = _spread(key_count)
    keys = pa.array(sets.keys, pa.string()).take(pa.array(key_start[owner] + j))
    answers = pa.array(answer_list, pa.string())
    # Positions -1 (no such answer) point past the answers, at a null: a take without
    # null indices is much faster than one with them.
    first = np.cumsum(key_count) - key_count
    none = len(answers)
    padded = pa.concat_arrays([answers, pa.nulls(1, pa.string())])
    return {
        "native_id": pa.array(ids, pa.string()),
        "text": padded.take(pa.array(np.where(text_at < 0, none, first + text_at))),
        "label": padded.take(pa.array(np.where(label_at < 0, none, first + label_at))),
        "label_counts": key_count,
        "keys": keys,
        "values": answers,
        "value": polygons if polygons is not None else pa.array([], _POLYGON_VALUE),
    }


class _KeySets(dict):
    """Distinct answer-key sequences → their number; `columns` describes each one:
    its length, its first key in `keys`, and the positions of the OCR text and of the
    label (-1 if none).

    Certified answers are all strings, so `label_fields` depends on the keys alone.
    """

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []
        self.columns: tuple[list[int], ...] = ([], [], [], [])

    def __missing__(self, keys: tuple[str, ...]) -> int:
        text_key, label_key = label_fields(dict.fromkeys(keys, ""))
        found = (
            len(keys),
            len(self.keys),
            keys.index(text_key) if text_key is not None else -1,
            keys.index(label_key) if label_key is not None else -1,
        )
        for column, value in zip(self.columns, found, strict=True):
            column.append(value)
        self.keys.extend(keys)
        self[keys] = len(self)
        return self[keys]


def _certifiable(shape: Any) -> bool:
    """One shape, checked as the columns would certify it (used to find the odd ones)."""
    if type(shape) is not dict or len(shape) != 4 or not shape.keys() <= SHAPE_KEYS:
        return False
    ids, typ, value, labels = _GET(shape)
    if typ != "image/polygon" or type(ids) not in (str, _NONE) or type(labels) is not dict:
        return False
    if not all(type(v) is str for v in labels.values()):
        return False
    return (
        type(value) is list
        and bool(value)
        and all(type(p) is list and len(p) == 2 and all(map(_plain_number, p)) for p in value)
    )


def _plain_number(c: Any) -> bool:
    t = type(c)
    return (t is float and abs(c) < _LIMIT) or (t is int and abs(c) <= _EXACT_INT)


def _flags(values) -> np.ndarray:
    return np.fromiter(values, dtype=bool)


def _any_per_list(bad: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """For lists given by value offsets, whether any of their values is flagged."""
    offsets = offsets - offsets[0]
    counts = np.concatenate([[0], np.cumsum(bad, dtype=np.int64)])
    return counts[offsets[1:]] > counts[offsets[:-1]]


def _spread(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For `counts[i]` slots per owner i: each slot's owner and its index within the owner."""
    owner = np.repeat(np.arange(len(counts)), counts)
    j = np.arange(len(owner), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, j


def _in_order(shape_values: pa.Array, tag_values: pa.Array, order: pa.Array | None) -> pa.Array:
    if order is None:
        return shape_values
    return pa.concat_arrays([shape_values, tag_values]).take(order)


def _points(polygons: pa.ListArray, ann_id: pa.Array, item_id: pa.Array, b: BatchBuilder) -> None:
    """One vertex row per [x, y], numbered per shape as `BatchBuilder.points` does."""
    if not len(polygons):
        return
    vertices = polygons.flatten()
    coords = vertices.flatten().to_numpy(zero_copy_only=False)
    per_shape = pc.list_value_length(polygons).to_numpy().astype(np.int64)
    owner, idx = _spread(per_shape)
    owner = pa.array(owner)
    b.point_block(
        {
            "ann_id": ann_id.take(owner),
            "item_id": item_id.take(owner),
            "part": pa.array(np.zeros(len(idx), dtype=np.int32)),
            "idx": pa.array(idx.astype(np.int32)),
            "x": pa.array(coords[0::2]),
            "y": pa.array(coords[1::2]),
        },
        len(idx),
    )


def _constant(value: str, n: int) -> pa.DictionaryArray:
    return _dictionary(np.zeros(n, dtype=np.int32), pa.array([value]))


def _dictionary(codes: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), dictionary)
