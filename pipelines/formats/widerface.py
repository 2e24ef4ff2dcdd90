"""WIDER Face 1.0 (face detection), as CVAT and datumaro lay it out.

    wider_face_split/wider_face_<subset>_bbx_gt.txt    per image: its path, the face count,
                                                       then one line per face
    wider_face_split/wider_face_<subset>_filelist.txt  image paths only (the test split)
    WIDER_<subset>/images/<n>--<event>/<image>.jpg
    labels.txt or dataset_meta.json                    optional label list

A face line is `x y w h blur expression illumination invalid occlusion pose`
(the WIDER Face release's column order; pixels, top-left corner), optionally
followed by a label (CVAT adds one for labels other than `face`); `-` marks
a missing attribute. An image without faces has count 0 and, in the release,
one line of zeros, which is skipped.

Every image is an item (`item_id` `<subset>/<path>`), with a `tag` for its
event folder (`0--Parade`: label `Parade`, `label_id` `0`; none for
`no_label/`). Every face is a `bbox` (label `face` unless the line names
one) with the six attributes as numbers, and `occluded` true when occlusion
is above 0. Writing: labels.txt, one bbx_gt file per subset, images under
`WIDER_<subset>/images/`. See docs/formats/widerface.md.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from typing import Any

import orjson

from pipelines.builder import BatchBuilder, is_finite
from pipelines.errors import ParseError
from pipelines.formats import _image_sets as sets
from pipelines.formats import _per_image as per_image
from pipelines.formats._mot import number_text
from pipelines.formats.base import (
    Detection,
    Format,
    ReadOptions,
    ReadTask,
    WriteOptions,
    WriteResult,
    WriteTask,
)
from pipelines.schema import Batch
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output, Source

NAME = "widerface"
SPLIT_DIR = "wider_face_split"
SUBSET_PREFIX = "WIDER_"
IMAGES_DIR = "images"
LABELS = "labels.txt"
META = "dataset_meta.json"
FACE = "face"
NO_LABEL = "no_label"
ATTRIBUTES = ("blur", "expression", "illumination", "invalid", "occluded", "pose")
_GT = re.compile(r"^wider_face_(.+)_(bbx_gt|filelist)\.txt$")
_EVENT = re.compile(r"^(\d+)--(.+)$")
_ANN = "annotations"


# -- detection and planning ----------------------------------------------------------------


def _lists(source: Source) -> dict[tuple[str, str], str]:
    """(root, subset) → its annotation file; a bbx_gt file wins over a filelist."""
    found: dict[tuple[str, str], tuple[str, str]] = {}
    for f in source.files:
        folder, base = posixpath.split(f)
        m = _GT.match(base)
        if m and posixpath.basename(folder) == SPLIT_DIR:
            key = (posixpath.dirname(folder), m.group(1))
            if key not in found or m.group(2) == "bbx_gt":
                found[key] = (m.group(2), f)
    return {k: v[1] for k, v in sorted(found.items())}


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _starts_with_path(source: Source, member: str) -> bool:
    tokens = sets.first_line(source, member).split()
    return not tokens or not _is_number(tokens[0])


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        if _GT.match(source.name) and _starts_with_path(source, ""):
            return Detection(0.8, "a WIDER Face annotation file")
        return None
    for member in _lists(source).values():
        if _starts_with_path(source, member):
            return Detection(0.95, f"WIDER Face annotation files in {posixpath.dirname(member)}")
    return None


def _label_list(source: Source, root: str) -> list[tuple[int, str]]:
    """(index, label name) from dataset_meta.json's label_map ({"0": "Parade"}) or labels.txt."""
    meta = sets.join(root, META)
    if meta in source.files:
        try:
            doc = orjson.loads(source.open(meta).read())
        except orjson.JSONDecodeError as exc:
            raise ParseError(source.uri(meta), "document", f"not JSON: {exc}") from exc
        label_map = doc.get("label_map") if isinstance(doc, dict) else None
        if isinstance(label_map, dict):
            return [
                (int(k) if str(k).isdigit() else i, str(v))
                for i, (k, v) in enumerate(label_map.items())
            ]
    labels = sets.join(root, LABELS)
    if labels in source.files:
        names = [line.strip() for _, line in sets.text_lines(source, labels)]
        return list(enumerate(n for n in names if n))
    return []


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    if not source.is_dir:
        m = _GT.match(source.name)
        if not m:
            return []
        ctx = {"root": None, "labels": [], "header": False}
        return [ReadTask(NAME, source, subset=m.group(1), context=ctx, options=options)]
    tasks, seen = [], set()
    for (root, subset), member in _lists(source).items():
        ctx = {"root": root, "labels": _label_list(source, root), "header": root not in seen}
        seen.add(root)
        tasks.append(
            ReadTask(NAME, source, member=member, subset=subset, context=ctx, options=options)
        )
    return tasks


# -- reading --------------------------------------------------------------------------------


def _attribute(token: str) -> Any:
    if token in ("True", "False"):
        return token == "True"
    try:
        return int(token)
    except ValueError:
        return float(token) if _is_number(token) else token


class _Reader:
    """The bbx_gt state machine: a path, a count, that many face lines."""

    def __init__(self, task: ReadTask, b: BatchBuilder) -> None:
        self.task, self.b = task, b
        root = task.context["root"]
        folder = sets.join(root, SUBSET_PREFIX + (task.subset or ""), IMAGES_DIR)
        self.images = sets.images_under(task.source, folder) if root is not None else {}
        self.name = task.member or task.source.name
        self.item_id: str | None = None
        self.expected = 0  # faces still to come for the current image
        self.count_line = 0
        self.faces = 0
        self.state = "path"  # path | count | faces | zeros

    def where(self, n: int) -> str:
        return f"{self.name}, line {n}"

    def line(self, n: int, tokens: list[str], text: str) -> None:
        path_like = not _is_number(tokens[0])
        if self.state == "faces" and path_like:
            self._short()
            self.state = "path"
        if self.state == "zeros" and not path_like:
            self.state = "path"
            if all(float(t) == 0 for t in tokens if _is_number(t)):
                return  # the release's placeholder line of an image without faces
        if path_like:
            self._image(text.strip())
            return
        if self.state == "count" and len(tokens) == 1 and tokens[0].isdigit():
            self.expected, self.count_line, self.faces = int(tokens[0]), n, 0
            self.state = "faces" if self.expected else "zeros"
            return
        if self.state != "faces":
            reason = "a face line without an image path and count before it"
            self.b.read_counts["annotations"] += 1
            self.b.reject(self.where(n), reason, record=text, record_kind=_ANN)
            return
        self.faces += 1
        self.expected -= 1
        if not self.expected:
            self.state = "path"
        self._face(n, tokens, text)

    def _image(self, path: str) -> None:
        self.state = "count"
        subset = self.task.subset
        self.item_id = sets.join(subset, path)
        image = self.images.get(per_image.strip_ext(path))
        sets.add_item(self.b, self.task, self.item_id, image=image, file_name=path, subset=subset)
        folder = path.split("/", 1)[0] if "/" in path else None
        if folder and folder != NO_LABEL:
            m = _EVENT.match(folder)
            label, label_id = (m.group(2), m.group(1)) if m else (folder, None)
            sets.tag(self.b, self.item_id, label, label_id=label_id)

    def _face(self, n: int, tokens: list[str], text: str) -> None:
        self.b.read_counts["annotations"] += 1
        where = self.where(n)
        if len(tokens) not in (4, 5, 10, 11):
            reason = f"{len(tokens)} values; a face line has 4 (box), 5 (+ label), 10 or 11"
            self.b.reject(where, reason, record=text, record_kind=_ANN)
            return
        try:
            x, y, w, h = (float(t) for t in tokens[:4])
        except ValueError:
            self.b.reject(where, "a box value is not a number", record=text, record_kind=_ANN)
            return
        if not is_finite(x, y, w, h) or w < 0 or h < 0:
            reason = "a box value is not finite, or the size is negative"
            self.b.reject(where, reason, record=text, record_kind=_ANN)
            return
        attrs = {}
        if len(tokens) >= 10:
            attrs = {k: _attribute(t) for k, t in zip(ATTRIBUTES, tokens[4:10], strict=True)}
            attrs = {k: v for k, v in attrs.items() if v != "-"}
        occlusion = attrs.get("occluded")
        item_id = self.item_id
        assert item_id is not None
        ann_id = f"{item_id}/{self.faces - 1}"
        self.b.annotation(
            ann_id=ann_id,
            item_id=item_id,
            kind="bbox",
            label=tokens[-1] if len(tokens) in (5, 11) else FACE,
            units="px",
            bbox_x=x,
            bbox_y=y,
            bbox_w=w,
            bbox_h=h,
            occluded=occlusion > 0 if isinstance(occlusion, (int, float)) else None,
        )
        self.b.attributes(ann_id, item_id, attrs, source=NAME)

    def _short(self) -> None:
        announced = self.expected + self.faces
        reason = f"{announced} faces announced, {self.faces} found"
        self.b.reject(self.where(self.count_line), reason, record=str(announced), record_kind=_ANN)

    def finish(self) -> None:
        if self.state == "faces":
            self._short()


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    ctx = task.context
    if ctx["header"]:
        for i, label in ctx["labels"]:
            b.attribute(f"label:{label}", None, "index", i, owner_kind="label", source=NAME)
    reader = _Reader(task, b)
    for n, text in sets.text_lines(task.source, task.member):
        tokens = text.split()
        if not tokens:
            continue
        if not _is_number(tokens[0]) and b.full():
            yield b.flush()  # only before an image path: an item and its faces share a batch
        reader.line(n, tokens, text)
    reader.finish()
    yield b.flush()


# -- writing ----------------------------------------------------------------------------------


def _event_numbers(staging: Staging) -> dict[str, int]:
    """Event label → folder number, the same for every partition.

    A WIDER source's folder numbers (the tags' label_id) are kept, then its
    label list's index for an event without one; other labels take the lowest
    free numbers in order of appearance.
    """
    rows = staging.con.execute(
        "SELECT label, label_id FROM annotations WHERE kind = 'tag' AND label IS NOT NULL "
        "GROUP BY label, label_id ORDER BY min(filename), min(file_row_number)"
    ).fetchall()
    listed = {
        owner.removeprefix("label:"): int(value)
        for owner, value in staging.con.execute(
            "SELECT owner_id, value FROM attributes WHERE owner_kind = 'label' AND key = 'index' "
            "AND source = ? ORDER BY filename, file_row_number",
            [NAME],
        ).fetchall()
        if value.isdigit()
    }
    numbers: dict[str, int] = {}
    for label, label_id in rows:
        number = int(label_id) if label_id and label_id.isdigit() else None
        if label not in numbers and number is not None and number not in numbers.values():
            numbers[label] = number
    for label, _ in rows:
        if label not in numbers and label in listed and listed[label] not in numbers.values():
            numbers[label] = listed[label]
    used, free = set(numbers.values()), 0
    for label, _ in rows:
        if label not in numbers:
            while free in used:
                free += 1
            numbers[label] = free
            used.add(free)
    return numbers


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    return sets.plan(NAME, staging, options, shared=True, _events=_event_numbers(staging))


def image_path(group: ItemGroup, events: dict[str, int]) -> str:
    """`<n>--<event>/<image>` under images/ (`no_label/` without an event)."""
    name = per_image.item_name(group.item)
    if not per_image.is_image(name):
        name += per_image.image_suffix(group.item)
    labels = sets.tag_labels(group)
    folder = f"{events[labels[0]]}--{labels[0]}" if labels else NO_LABEL
    if name.split("/", 1)[0] == folder and "/" in name:
        return name
    return f"{folder}/{posixpath.basename(name)}"


def _images_dir(subset: str | None) -> str:
    return f"{SUBSET_PREFIX}{sets.subset_name(subset)}/{IMAGES_DIR}"


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    events = task.options.extra["_events"]
    if task.shard >= 0:
        return sets.copy_images(
            task,
            staging,
            out,
            lambda g: [f"{_images_dir(g.item.get('subset'))}/{image_path(g, events)}"],
        )
    if task.shard == sets.SHARED:
        return _write_labels(staging, events, out)
    result = WriteResult()
    rel = f"{SPLIT_DIR}/wider_face_{sets.subset_name(task.subset)}_bbx_gt.txt"
    with out.open(rel) as f:
        # A face's vertices matter only where it states no box (`per_image.pixel_box`).
        for group in sets.groups(staging, subset=task.subset, boxed_vertices=False):
            result.items += 1
            lines = []
            event = sets.tag_labels(group)[:1]
            for ann in group.annotations:
                if ann["kind"] == "tag":
                    if event and ann.get("label") == event.pop():
                        result.annotations += 1
                    else:
                        result.lose("tags past the event label not written")
                    continue
                line = _face(ann, group, result)
                if line is not None:
                    lines.append(line)
                    result.annotations += 1
            text = [image_path(group, events), str(len(lines))]
            text += lines or ["0 0 0 0 0 0 0 0 0 0"]
            f.write(("\n".join(text) + "\n").encode())
    result.files.append(rel)
    return result


def _face(ann: dict[str, Any], group: ItemGroup, result: WriteResult) -> str | None:
    kind = ann["kind"]
    if ann.get("outside"):
        result.lose("outside shapes skipped")
        return None
    box = per_image.pixel_box(ann, group.points.get(ann["ann_id"], []))
    if box is None:
        sets.lose_unwritten(result, ann, "WIDER Face")
        return None
    if kind != "bbox":
        result.lose(f"{kind} annotations written as boxes")
    values = sets.ann_attributes(group, ann)
    attrs = {k: values[k] for k in ATTRIBUTES if k in values}
    if "occluded" not in attrs and ann.get("occluded") is not None:
        attrs["occluded"] = int(bool(ann["occluded"]))
    cells = [number_text(v) for v in box]
    if attrs:
        cells += [_cell(attrs.get(k, "-")) for k in ATTRIBUTES]
    label = ann.get("label")
    if label and label != FACE:
        if any(c.isspace() for c in label):
            result.lose("labels with spaces written as face")
        else:
            cells.append(label)
    return " ".join(cells)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return number_text(value)
    return str(value).replace(" ", "_") or "-"


def _write_labels(staging: Staging, events: dict[str, int], out: Output) -> WriteResult:
    by_number = {n: label for label, n in events.items()}
    names = [by_number.get(n, f"event_{n}") for n in range(max(by_number, default=-1) + 1)]
    for label, _ in staging.labels():
        if label not in names:
            names.append(label)
    result = WriteResult()
    per_image.put(out, LABELS, "".join(f"{n}\n" for n in names), result)
    return result


FORMAT = Format(
    name=NAME,
    description="WIDER Face 1.0: face boxes with blur, expression, illumination, invalid, "
    "occlusion and pose; event folders as image labels",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
    boxes_suffice=lambda options: True,  # faces are boxes
)
