"""Alibaba PAI iTAG manifests: JSON lines, one labeled object per line.

    {"data": {"source": "oss://.../img6.jpeg"},
     "label-<job id>":        {"results": [...]},     # labeling stage
     "label-<job id>-check":  {"results": [...]},     # review stage
     "label-<job id>-verify": {"results": [...]}}     # acceptance stage

Each line is one item (`data.source`, or `data.picUrl` in v1 manifests, is the
media URI, oss:// kept). Every stage's results are kept: an `image` result's
shapes (image/polygon, with a `labels` dict of question → answer) become
polygons, `survey/value` and `survey/multivalue` answers become tags. Each of
these annotations carries attribute rows of source "itag" (stage, label_key,
result, questionId, markTitle) saying where it came from; the `labels` dict
becomes attribute rows of source "labels", its OCR answer the `text` and its
first choice the `label`. The line without its shapes and answers is kept as
the item's `metadata` JSON, so the writer puts everything back where it was.

A manifest is streamed in groups of lines of about a batch (orjson per line).
The lines of a group whose shapes are all the usual ones are mapped a column
at a time (`_itag_fast`); any other line takes the row path below, in place.
When several workers run, a large manifest is split into byte ranges read in
parallel, largest first: a range [start, end) reads exactly the lines that
begin inside it. Line numbers are only known in the range that starts the
file; elsewhere a rejected line is located by its byte offset (counting
newlines before each range would mean reading the file twice).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import IO, Any, NamedTuple

import orjson

from pipelines.builder import BatchBuilder, is_finite, to_json
from pipelines.docwrite import STAGES
from pipelines.formats import _itag_fast
from pipelines.formats._itag_write import LABEL_KEY, label_fields, plan_write, write
from pipelines.formats.base import Detection, Format, ReadOptions, ReadTask
from pipelines.jsonframe import paused_gc
from pipelines.schema import Batch
from pipelines.storage import Source

NAME = "itag"
SPLIT_BYTES = 32 << 20
"""A manifest larger than this is read as byte ranges when more than one worker runs
(below, a pool's start-up costs about what splitting gains)."""
RANGE_BYTES = 2 << 20
"""The smallest byte range worth a task of its own."""
SUFFIXES = (".manifest", ".jsonl", ".json")
READ_BYTES = 1 << 20
BYTES_PER_ROW = 24
"""Lines are mapped in groups of about `batch_rows × BYTES_PER_ROW` bytes: a polygon
vertex, the bulk of a manifest, is about 20 bytes of JSON and one row."""
MIN_GROUP_BYTES = 64 << 10
COLUMNS = True
"""Map certified lines a column at a time (False: every line row by row)."""
MAX_ODD_LINES = 16
"""Above this many uncertified lines in a group, the whole group takes the row path."""

_STATUS = {"label": "labeled", "check": "checked", "verify": "verified"}
_RANK = {stage: i for i, stage in enumerate(STAGES)}
_SURVEYS = ("survey/value", "survey/multivalue")
_BOM = b"\xef\xbb\xbf"


# -- detection and planning ---------------------------------------------------


def _first_object(head: bytes) -> dict | None:
    for line in head.removeprefix(_BOM).split(b"\n"):
        if line.strip():
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                return None
            return obj if isinstance(obj, dict) else None
    return None


def _score(head: bytes) -> float:
    obj = _first_object(head)
    if obj is None:
        # A first line longer than the head: judge by its opening.
        return 0.5 if re.match(rb'\s*\{\s*"data"\s*:\s*\{', head.removeprefix(_BOM)) else 0.0
    if not isinstance(obj.get("data"), dict):
        return 0.0
    if any(LABEL_KEY.fullmatch(k) for k in obj):
        return 0.95
    return 0.6 if obj["data"].keys() & {"source", "picUrl"} else 0.0


def _members(source: Source) -> list[str]:
    if not source.is_dir:
        return [""]
    return [m for m in source.files if m.lower().endswith(SUFFIXES[:2])]


def detect(source: Source) -> Detection | None:
    members = _members(source)
    if not members:
        return None
    score = _score(source.head(members[0]))
    if not score:
        return None
    return Detection(score, "JSON lines with a data object (and label-<job id> results)")


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    tasks = []
    for member in _members(source):
        # Seeking in a compressed member decompresses all before it (`storage.reach`).
        size = 0 if source.archive or options.workers <= 1 else source.size(member)
        if size <= SPLIT_BYTES:
            tasks.append(ReadTask(NAME, source, member=member, options=options))
            continue
        tasks.extend(
            ReadTask(NAME, source, member=member, start=s, end=e, options=options)
            for s, e in ranges(size, options.workers)
        )
    return tasks


def ranges(size: int, workers: int) -> list[tuple[int, int]]:
    """Adjacent byte ranges covering [0, size), largest first.

    Each range is 1 / (2 × workers) of what is left, and none is under
    RANGE_BYTES (guided self-scheduling): the first ranges are long, so there
    are few tasks, and the last ones short, so workers taking the next range as
    they get free finish close together even when one of them ran slower.
    """
    out = []
    start = 0
    while start < size:
        left = size - start
        step = max(RANGE_BYTES, math.ceil(left / (2 * workers)))
        if left - step < RANGE_BYTES:  # no sliver of a task at the end
            step = left
        out.append((start, start + step))
        start += step
    return out


def lines(f: IO[bytes], start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for every line that begins in [start, end) of a binary file.

    A range after the first skips the end of the line in progress at `start`
    (it belongs to the range before, which reads its last line past `end`), so
    adjacent ranges read every line exactly once. The file is read in blocks:
    a `readline` per line costs more than parsing the line.
    """
    pos = 0
    if start > 0:
        f.seek(start - 1)
        pos = start - 1 + len(f.readline())
    rest: list[bytes] = []
    while end is None or pos < end:
        data = f.read(READ_BYTES)
        if not data:
            if rest:
                yield pos, b"".join(rest)
            return
        if b"\n" not in data:  # a line longer than a block
            rest.append(data)
            continue
        parts = b"".join([*rest, data]).split(b"\n")
        rest = [parts.pop()]
        for part in parts:
            if end is not None and pos >= end:
                return
            line = part + b"\n"
            yield pos, line
            pos += len(line)


# -- reading -----------------------------------------------------------------


def _stem(task: ReadTask) -> str:
    name = task.member or task.source.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


class _Text(NamedTuple):
    pos: int
    lineno: int
    text: bytes


def read(task: ReadTask) -> Iterator[Batch]:
    stem = _stem(task)
    done = False
    with task.source.open(task.member) as f:
        for group in _groups(f, task):
            yield _read_group(task, stem, group)
            done = True
    if not done:
        yield task.builder().flush()


def _groups(f: IO[bytes], task: ReadTask) -> Iterator[list[_Text]]:
    """The non-blank lines of the task's range, in groups of about a batch."""
    budget = max(MIN_GROUP_BYTES, task.options.batch_rows * BYTES_PER_ROW)
    group: list[_Text] = []
    size = lineno = 0
    for pos, raw in lines(f, task.start, task.end):
        lineno += 1
        text = (raw.removeprefix(_BOM) if pos == 0 else raw).strip()
        if not text:
            continue
        group.append(_Text(pos, lineno, text))
        size += len(raw)
        if size >= budget:
            yield group
            group, size = [], 0
    if group:
        yield group


def _read_group(task: ReadTask, stem: str, group: list[_Text]) -> Batch:
    # The parsed lines are many small containers that live until the group is mapped:
    # the cyclic collector would walk them over and again (no cycles can form in them).
    with paused_gc():
        parsed = [_parse(t.text) for t in group]
        batch = _map_group(task, stem, group, parsed, COLUMNS)
        del parsed
    return batch


def _parse(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return exc


def _is_line(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("data"), dict)


def _map_group(
    task: ReadTask, stem: str, group: list[_Text], parsed: list[Any], columns: bool
) -> Batch:
    """A group of lines as one Batch: columns for the certified lines, rows for the others."""
    if not columns:
        return _map_rows(task, stem, group, parsed)
    g = _itag_fast.Group()
    odd = []
    for i, (t, obj) in enumerate(zip(group, parsed, strict=True)):
        if not _is_line(obj):
            odd.append(i)
            continue
        g.begin(i, f"{stem}/{t.pos}")
        _Collect(g).map(obj)
    odd = sorted([*odd, *g.odd_lines()])
    if not odd:
        return g.batch(task.builder())
    if len(odd) > MAX_ODD_LINES:
        return _map_rows(task, stem, group, parsed)
    # Runs of certified lines between the odd ones, each mapped as columns again.
    pieces = []
    start = 0
    for k in [*odd, len(group)]:
        if k > start:
            pieces.append(_map_group(task, stem, group[start:k], parsed[start:k], True))
        if k < len(group):
            pieces.append(_map_rows(task, stem, group[k : k + 1], parsed[k : k + 1]))
        start = k + 1
    return Batch.concat(pieces)


def _map_rows(task: ReadTask, stem: str, group: list[_Text], parsed: list[Any]) -> Batch:
    b = task.builder()
    for t, obj in zip(group, parsed, strict=True):
        where = f"line {t.lineno} (byte {t.pos})" if task.start == 0 else f"byte {t.pos}"
        if isinstance(obj, orjson.JSONDecodeError):
            reason = f"invalid JSON at column {obj.colno}: {obj.msg}"
            b.reject(where, reason, record=t.text.decode(errors="replace"), record_kind="items")
        elif not _is_line(obj):
            b.reject(where, "not an object with a data object", record=obj, record_kind="items")
        else:
            _Line(b, f"{stem}/{t.pos}", where).map(obj)
    return b.flush()


class _StageOf(dict):
    """Line key → its review stage, None if it is no result key (keys repeat line after line)."""

    def __missing__(self, key: str) -> str | None:
        m = LABEL_KEY.fullmatch(key)
        stage = (m.group(2) or "label") if m else None
        if len(self) < 10_000:  # job ids are few; a manifest with many is not worth the memory
            self[key] = stage
        return stage


_STAGE_OF = _StageOf()


class _Walk:
    """Walks one manifest line: its item, its results' shapes and answers, its skeleton.

    Subclasses say what becomes of them: rows (`_Line`) or columns (`_Collect`).
    """

    def __init__(self) -> None:
        self.size: tuple[int, int] | None = None

    def map(self, obj: dict) -> None:
        skeleton: dict[str, Any] = {}
        stages = []
        for key, value in obj.items():
            stage = _STAGE_OF[key]
            if (
                stage is None
                or not isinstance(value, dict)
                or not isinstance(value.get("results"), list)
            ):
                skeleton[key] = value
                continue
            stages.append(stage)
            skeleton[key] = {
                k: [self._result(r, key, stage, i) for i, r in enumerate(v)]
                if k == "results"
                else v
                for k, v in value.items()
            }
        data = obj["data"]
        media = data.get("source")
        if not isinstance(media, str):
            media = data.get("picUrl")
            media = media if isinstance(media, str) else None
        latest = max(stages, key=_RANK.__getitem__) if stages else None
        width, height = self.size or (None, None)
        self._item(
            file_name=media.rpartition("/")[2] if media else None,
            media_uri=media,
            media_type="image" if media or self.size else None,
            width=width,
            height=height,
            label_status=_STATUS[latest] if latest else "unlabeled",
            metadata=to_json(skeleton),
        )

    def _result(self, r: Any, key: str, stage: str, i: int) -> Any:
        """Hand over the annotations of one result; return what the skeleton keeps of it."""
        if not isinstance(r, dict):
            return r
        typ, data = r.get("type"), r.get("data")
        place: dict[str, Any] = {"stage": stage, "label_key": key, "result": i}
        for k in ("questionId", "markTitle"):
            if k in r:
                place[k] = r[k]
        if typ == "image" and isinstance(data, list):
            w, h = r.get("width"), r.get("height")
            if self.size is None and is_finite(w, h) and w > 0 and h > 0:
                self.size = (int(w), int(h))
            self._shapes(data, place, key, i)
            return {**r, "data": []}
        if typ in _SURVEYS:
            if isinstance(data, str):
                answers, empty = [data], ""
            elif isinstance(data, list) and all(isinstance(a, str) for a in data):
                answers, empty = data, []
            else:
                return r
            self._tags(answers, place)
            return {**r, "data": empty}
        return r

    def _item(self, **fields: Any) -> None:
        raise NotImplementedError

    def _shapes(self, data: list, place: dict, key: str, i: int) -> None:
        raise NotImplementedError

    def _tags(self, answers: list[str], place: dict) -> None:
        raise NotImplementedError


class _Collect(_Walk):
    """Hands a line's item, shapes and answers to a column `Group`."""

    def __init__(self, group: _itag_fast.Group) -> None:
        super().__init__()
        self.group = group

    def _item(self, **fields: Any) -> None:
        self.group.item(**fields)

    def _shapes(self, data: list, place: dict, key: str, i: int) -> None:
        self.group.shapes_of(data, place)

    def _tags(self, answers: list[str], place: dict) -> None:
        self.group.tags(answers, place)


class _Line(_Walk):
    """Maps one manifest line row by row: an item, its shapes and answers, its skeleton."""

    def __init__(self, b: BatchBuilder, item_id: str, where: str) -> None:
        super().__init__()
        self.b, self.item_id, self.where = b, item_id, where
        self.count = 0

    def _item(self, **fields: Any) -> None:
        self.b.item(item_id=self.item_id, **fields)

    def _shapes(self, data: list, place: dict, key: str, i: int) -> None:
        for j, shape in enumerate(data):
            self._shape(shape, place, f"{self.where}: {key}.results[{i}].data[{j}]")

    def _tags(self, answers: list[str], place: dict) -> None:
        for answer in answers:
            ann_id = self._next_id()
            self.b.annotation(ann_id=ann_id, item_id=self.item_id, kind="tag", label=answer)
            self.b.attributes(ann_id, self.item_id, place, source="itag")

    def _next_id(self) -> str:
        self.count += 1
        return f"{self.item_id}/{self.count - 1}"

    def _shape(self, shape: Any, place: dict, where: str) -> None:
        b = self.b
        if not isinstance(shape, dict):
            b.reject(where, "shape is not an object", record=shape, record_kind="annotations")
            return
        native = shape.get("id")
        native = native if native is None or isinstance(native, str) else to_json(native)
        typ, value = shape.get("type"), shape.get("value")
        reason = None
        if typ != "image/polygon":
            reason = f"unsupported shape type {typ!r} (image/polygon is the documented shape)"
        elif not (
            isinstance(value, list)
            and value
            and all(isinstance(p, list) and len(p) == 2 and is_finite(*p) for p in value)
        ):
            reason = "image/polygon value must be a non-empty list of [x, y] points"
        if reason:
            b.reject(where, reason, record=shape, record_kind="annotations", native_id=native)
            return
        labels = shape.get("labels") if isinstance(shape.get("labels"), dict) else {}
        text_key, label_key = label_fields(labels)
        label = labels.get(label_key) if label_key else None
        ann_id = self._next_id()
        b.annotation(
            ann_id=ann_id,
            item_id=self.item_id,
            native_id=native,
            kind="polygon",
            label=label[0] if isinstance(label, list) else label,
            text=labels.get(text_key) if text_key else None,
            units="px",
        )
        b.points(ann_id, self.item_id, [float(c) for p in value for c in p])
        b.attributes(ann_id, self.item_id, place, source="itag")
        b.attributes(ann_id, self.item_id, labels, source="labels")
        extra = {k: v for k, v in shape.items() if k not in ("id", "type", "value")}
        if extra.get("labels") is labels:
            del extra["labels"]
        b.attributes(ann_id, self.item_id, extra, source="shape")


FORMAT = Format(
    name=NAME,
    description="Alibaba PAI iTAG manifest: JSON lines with label-<job id> results per stage",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
    single_file=True,
)
