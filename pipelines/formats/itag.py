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

A manifest is streamed line by line (orjson per line). When several workers
run, a large manifest is split into byte ranges read in parallel: a range
[start, end) reads exactly the lines that begin inside it. Line numbers are
only known in the range that starts the file; elsewhere a rejected line is
located by its byte offset (counting newlines before each range would mean
reading the file twice).
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Iterator
from typing import IO, Any

import orjson

from pipelines.builder import BatchBuilder, is_finite, to_json
from pipelines.docwrite import STAGES
from pipelines.formats._itag_write import LABEL_KEY, label_fields, plan_write, write
from pipelines.formats.base import Detection, Format, ReadOptions, ReadTask
from pipelines.schema import Batch
from pipelines.storage import Source

NAME = "itag"
SPLIT_BYTES = 64 << 20
"""A manifest larger than this is read as byte ranges when more than one worker runs."""
RANGE_BYTES = 16 << 20
"""The smallest byte range worth a task of its own."""
SUFFIXES = (".manifest", ".jsonl", ".json")

_STATUS = {"label": "labeled", "check": "checked", "verify": "verified"}
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
    in_zip = source.url.lower().endswith(".zip")  # seeking in a compressed member is slow
    for member in _members(source):
        size = 0 if in_zip or options.workers <= 1 else source.size(member)
        if size <= SPLIT_BYTES:
            tasks.append(ReadTask(NAME, source, member=member, options=options))
            continue
        count = max(2, min(options.workers * 4, size // RANGE_BYTES))
        step = math.ceil(size / count)
        tasks.extend(
            ReadTask(NAME, source, member=member, start=s, end=min(s + step, size), options=options)
            for s in range(0, size, step)
        )
    return tasks


def lines(f: IO[bytes], start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for every line that begins in [start, end) of a binary file.

    A range after the first skips the end of the line in progress at `start`
    (it belongs to the range before, which reads its last line past `end`), so
    adjacent ranges read every line exactly once.
    """
    pos = 0
    if start > 0:
        f.seek(start - 1)
        pos = start - 1 + len(f.readline())
    while end is None or pos < end:
        line = f.readline()
        if not line:
            return
        yield pos, line
        pos += len(line)


# -- reading -----------------------------------------------------------------


def _stem(task: ReadTask) -> str:
    name = task.member or task.source.name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    stem = _stem(task)
    lineno = 0
    with task.source.open(task.member) as f:
        for pos, raw in lines(f, task.start, task.end):
            lineno += 1
            where = f"line {lineno} (byte {pos})" if task.start == 0 else f"byte {pos}"
            text = (raw.removeprefix(_BOM) if pos == 0 else raw).strip()
            if not text:
                continue
            try:
                obj = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                reason = f"invalid JSON at column {exc.colno}: {exc.msg}"
                b.reject(where, reason, record=text.decode(errors="replace"), record_kind="items")
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("data"), dict):
                b.reject(where, "not an object with a data object", record=obj, record_kind="items")
                continue
            _Line(b, f"{stem}/{pos}", where).map(obj)
            if b.full():
                yield b.flush()
    yield b.flush()


class _Line:
    """Maps one manifest line: an item, its shapes and answers, and its skeleton."""

    def __init__(self, b: BatchBuilder, item_id: str, where: str) -> None:
        self.b, self.item_id, self.where = b, item_id, where
        self.count = 0
        self.size: tuple[int, int] | None = None

    def map(self, obj: dict) -> None:
        skeleton: dict[str, Any] = {}
        stages = []
        for key, value in obj.items():
            m = LABEL_KEY.fullmatch(key)
            if (
                m is None
                or not isinstance(value, dict)
                or not isinstance(value.get("results"), list)
            ):
                skeleton[key] = value
                continue
            stage = m.group(2) or "label"
            stages.append(stage)
            skeleton[key] = {
                k: [self._result(r, key, stage, i) for i, r in enumerate(v)]
                if k == "results"
                else v
                for k, v in value.items()
            }
        data = obj["data"]
        media = next((data[k] for k in ("source", "picUrl") if isinstance(data.get(k), str)), None)
        latest = max(stages, key=STAGES.index) if stages else None
        width, height = self.size or (None, None)
        self.b.item(
            item_id=self.item_id,
            file_name=posixpath.basename(media) if media else None,
            media_uri=media,
            media_type="image" if media or self.size else None,
            width=width,
            height=height,
            label_status=_STATUS[latest] if latest else "unlabeled",
            metadata=to_json(skeleton),
        )

    def _result(self, r: Any, key: str, stage: str, i: int) -> Any:
        """Emit the annotations of one result; return what the skeleton keeps of it."""
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
            for j, shape in enumerate(data):
                self._shape(shape, place, f"{self.where}: {key}.results[{i}].data[{j}]")
            return {**r, "data": []}
        if typ in _SURVEYS:
            if isinstance(data, str):
                answers, empty = [data], ""
            elif isinstance(data, list) and all(isinstance(a, str) for a in data):
                answers, empty = data, []
            else:
                return r
            for answer in answers:
                ann_id = self._next_id()
                self.b.annotation(ann_id=ann_id, item_id=self.item_id, kind="tag", label=answer)
                self.b.attributes(ann_id, self.item_id, place, source="itag")
            return {**r, "data": empty}
        return r

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
