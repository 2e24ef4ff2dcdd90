"""The Encord export as a stream: ijson events, the drivers that feed a RowReader, and
the light pass that collects every row's small fields.

The drivers call the reader's hooks (begin_row, row_field, begin_du, du_field,
labels_entry, end_du, end_row) in file order and yield a batch whenever the
reader says one may be flushed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

from pipelines.errors import ParseError
from pipelines.schema import Batch
from pipelines.streamjson import ijson

if TYPE_CHECKING:
    from pipelines.formats._encord_read import RowReader


SKIPPED = ("data_units", "object_answers", "classification_answers", "object_actions")
"""What the light pass does not keep: the bulk of a row."""


class Events:
    """ijson basic_parse events, with whole values built on demand and errors located."""

    def __init__(self, f: IO[bytes], uri: str) -> None:
        self._it = ijson.basic_parse(f, use_float=True)
        self._f = f
        self.uri = uri
        self.where = "$"

    def next(self) -> tuple[str, Any]:
        try:
            return next(self._it)
        except StopIteration:
            raise ParseError(self.uri, self._loc(), "the file ends inside a JSON value") from None
        except ijson.JSONError as exc:
            raise ParseError(self.uri, self._loc(), f"invalid JSON: {_brief(exc)}") from exc

    def _loc(self) -> str:
        try:
            return f"{self.where} (read up to byte {self._f.tell()})"
        except (OSError, ValueError):
            return self.where

    def value(self, event: str, value: Any) -> Any:
        if event not in ("start_map", "start_array"):
            return value
        builder = ijson.ObjectBuilder()
        builder.event(event, value)
        depth = 1
        while depth:
            event, value = self.next()
            builder.event(event, value)
            if event in ("start_map", "start_array"):
                depth += 1
            elif event in ("end_map", "end_array"):
                depth -= 1
        return builder.value

    def skip(self, event: str) -> None:
        depth = 1 if event in ("start_map", "start_array") else 0
        while depth:
            event, _ = self.next()
            if event in ("start_map", "start_array"):
                depth += 1
            elif event in ("end_map", "end_array"):
                depth -= 1

    def members(self) -> Iterator[tuple[str, str, Any]]:
        """(key, first event of its value, value) for each member of the current object."""
        while True:
            event, key = self.next()
            if event == "end_map":
                return
            event, value = self.next()
            yield key, event, value


def _brief(exc: Exception) -> str:
    """yajl's message without its caret line: the error, then the text it stopped at."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    text = [ln for ln in lines[1:] if ln and not ln.startswith("(right here)")]
    return (lines[0] + (f" near {text[0][:80]!r}" if text else ""))[:300]


def key_path(loc: str, key: str) -> str:
    return f"{loc}[{key!r}]"


def stream(events: Events, reader: RowReader, first: int = 0) -> Iterator[Batch]:
    """Drive `reader` from an event stream: one row object, or a list of rows numbered from
    `first` (their index in the whole file)."""
    event, value = events.next()
    if event == "start_map":
        yield from _row(events, reader, first, "$" if first == 0 else f"$[{first}]")
    elif event == "start_array":
        index = first
        while True:
            event, value = events.next()
            if event == "end_array":
                break
            loc = f"$[{index}]"
            if event == "start_map":
                yield from _row(events, reader, index, loc)
            else:
                reader.reject_row(loc, events.value(event, value))
            index += 1
    else:
        raise ParseError(events.uri, "$", "expected a list of label rows or one label row")


def drive_row(reader: RowReader, index: int, loc: str, row: Any) -> Iterator[Batch]:
    """The same calls as the event driver, from a row already in memory (parsed whole)."""
    if not isinstance(row, dict):
        reader.reject_row(loc, row)
        return
    reader.begin_row(index, loc, whole=row)
    for key, value in row.items():
        if key != "data_units":
            reader.row_field(key, value)
            continue
        where = f"{loc}.data_units"
        units = value.items() if isinstance(value, dict) else enumerate(value or [])
        for k, du in units:
            du_loc = key_path(where, k) if isinstance(value, dict) else f"{where}[{k}]"
            if isinstance(du, dict):
                key_of = k if isinstance(value, dict) else str(du.get("data_hash", k))
                yield from drive_du(reader, key_of, du, du_loc)
            else:
                reader.reject_du(du_loc, du)
    reader.end_row()
    yield from reader.checkpoint()


class Window:
    """Bytes start..end of a file (whole array elements) read as the JSON array around them,
    so a long row can be streamed by ijson where it lies."""

    def __init__(self, f: IO[bytes], start: int, end: int) -> None:
        self._f = f
        self._start = self._pos = start
        self._end = end
        self._state = 0  # 0: "[" not yet given, 1: inside, 2: "]" given
        f.seek(start)

    def read(self, n: int = -1) -> bytes:
        if n == 0:  # ijson probes the stream's type with read(0)
            return b""
        out = b""
        if self._state == 0:
            out, self._state = b"[", 1
            n = n - 1 if n > 0 else n
        take = self._end - self._pos if n < 0 else max(0, min(n, self._end - self._pos))
        if take:
            data = self._f.read(take)
            self._pos += len(data)
            out += data
        if self._state == 1 and self._pos >= self._end and (n < 0 or n > take):
            out, self._state = out + b"]", 2
        return out

    def tell(self) -> int:
        return self._pos


def _row(events: Events, reader: RowReader, index: int, loc: str) -> Iterator[Batch]:
    reader.begin_row(index, loc)
    for key, event, value in events.members():
        events.where = f"{loc}.{key}"
        if key == "data_units":
            yield from _data_units(events, reader, event, value, f"{loc}.data_units")
        else:
            reader.row_field(key, events.value(event, value))
    reader.end_row()
    yield from reader.checkpoint()


def _data_units(events: Events, reader: RowReader, event: str, value: Any, loc: str):
    if event == "start_array":
        for i, du in enumerate(events.value(event, value)):
            key = str(du.get("data_hash", i)) if isinstance(du, dict) else str(i)
            if isinstance(du, dict):
                yield from drive_du(reader, key, du, f"{loc}[{i}]")
            else:
                reader.reject_du(f"{loc}[{i}]", du)
        return
    if event != "start_map":
        if events.value(event, value) is not None:
            reader.reject_du(loc, value)
        return
    for key, event, value in events.members():
        where = key_path(loc, key)
        events.where = where
        if event != "start_map":
            reader.reject_du(where, events.value(event, value))
            continue
        reader.begin_du(key, where)
        for k, ev, val in events.members():
            if k != "labels":
                reader.du_field(k, events.value(ev, val))
            elif ev == "start_map":
                for frame, ev2, val2 in events.members():
                    events.where = key_path(f"{where}.labels", frame)
                    reader.labels_entry(frame, events.value(ev2, val2))
                    yield from reader.checkpoint()
            else:
                reader.labels_value(events.value(ev, val))
        reader.end_du()


def drive_du(reader: RowReader, key: str, du: dict, loc: str) -> Iterator[Batch]:
    """The same calls as the event driver, from a data unit already in memory."""
    reader.begin_du(key, loc)
    for k, v in du.items():
        if k != "labels":
            reader.du_field(k, v)
        elif isinstance(v, dict):
            for frame, value in v.items():
                reader.labels_entry(frame, value)
                yield from reader.checkpoint()
        else:
            reader.labels_value(v)
    reader.end_du()


def prescan(events: Events, first: int = 0) -> dict[int, tuple[dict, dict]]:
    """Every row's small fields and every data unit's fields (labels and answers skipped),
    by row index in the whole file."""
    event, _ = events.next()
    rows: dict[int, tuple[dict, dict]] = {}
    if event == "start_map":
        rows[first] = _scan_row(events)
    elif event == "start_array":
        index = first
        while True:
            event, _ = events.next()
            if event == "end_array":
                break
            if event == "start_map":
                rows[index] = _scan_row(events)
            else:
                events.skip(event)
            index += 1
    return rows


def _scan_row(events: Events) -> tuple[dict, dict]:
    fields: dict[str, Any] = {}
    dus: dict[str, dict] = {}
    for key, event, value in events.members():
        if key == "data_units" and event == "start_map":
            for du_key, ev, _ in events.members():
                if ev != "start_map":
                    events.skip(ev)
                    continue
                du: dict[str, Any] = {}
                for k, ev2, val2 in events.members():
                    if k == "labels":
                        events.skip(ev2)
                    else:
                        du[k] = events.value(ev2, val2)
                dus[du_key] = du
        elif key == "data_units" and event == "start_array":  # older exports: a list
            dus.update(unit_fields(events.value(event, value)))
        elif key in SKIPPED:
            events.skip(event)
        else:
            fields[key] = events.value(event, value)
    return fields, dus


def unit_fields(units: Any) -> dict[str, dict]:
    """Each data unit's fields but its labels, by the key the drivers give it (a list's
    units by their data_hash, else their position)."""
    if isinstance(units, dict):
        pairs = units.items()
    elif isinstance(units, list):
        pairs = ((str(du.get("data_hash", i)) if isinstance(du, dict) else str(i), du)
                 for i, du in enumerate(units))  # fmt: skip
    else:
        return {}
    return {k: {f: v for f, v in du.items() if f != "labels"} for k, du in pairs
            if isinstance(du, dict)}  # fmt: skip
