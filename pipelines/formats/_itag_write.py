"""iTAG manifest writer: one JSON line per item, into the single file the output names.

A line read from iTAG is rebuilt from its skeleton (the item's `metadata`):
each polygon goes back into the `image` result it came from, each tag into
its survey answer, under its own `label-<job id>[-check|-verify]` key.
Items from other formats get one `image` result (polygons and boxes as
image/polygon) and one `survey/multivalue` result (tags) under
`WriteOptions.extra["label_key"]` (default "label-1").

Review stages: `WriteOptions.prefer_stage` None (the default) writes every
stage under its own key; "latest" keeps per item the most reviewed stage
present (verify, check, label); a stage name keeps only that stage.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import orjson

from pipelines.docwrite import (
    STAGE_SOURCE,
    attribute_dict,
    attribute_rows,
    by_source,
    check_stage,
    json_number,
    json_pairs,
    select_stage,
)
from pipelines.formats._fragments import (
    even_bounds,
    part_count,
    part_run,
    part_tasks,
    write_joined,
)
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output

DEFAULT_LABEL_KEY = "label-1"
LABEL_KEY = re.compile(r"label-(.+?)(?:-(check|verify))?")
"""A result key: label-<job id>, with -check (review) or -verify (acceptance) stages."""
_BOOKKEEPING = ("itag", "labels", "shape", "field", "tags")
"""Attribute sources that are not a shape's own answers (or are written elsewhere)."""


def label_fields(labels: dict[str, Any]) -> tuple[str | None, str | None]:
    """(key of the OCR text, key of the label) in a shape's `labels` dict.

    Question titles are chosen by whoever built the template; the OCR answer is
    the one whose title mentions OCR ("OCR result", "OCR识别结果"), the label is
    the first other answer that is a string (or a list of strings: its first).
    """
    text_key = next(
        (k for k, v in labels.items() if "ocr" in k.lower() and isinstance(v, str)), None
    )
    for k, v in labels.items():
        if k == text_key:
            continue
        if isinstance(v, str) or (isinstance(v, list) and v and isinstance(v[0], str)):
            return text_key, k
    return text_key, None


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    """Runs of items in source order (every subset in one manifest), joined into the file."""
    check_stage(options.prefer_stage)
    items = staging.count_rows("items")
    return part_tasks("itag", None, options, even_bounds(items, part_count(items, options.workers)))


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    res = WriteResult()

    def lines() -> Iterator[bytes]:
        # Polygons are read as one array per part; no other kind has vertices here.
        groups = staging.iter_items(
            positions=part_run(task), point_columns=(), part_kinds=("polygon",)
        )
        for group in groups:
            yield orjson.dumps(manifest_line(group, task.options, res)) + b"\n"
            res.items += 1

    if write_joined(task, out, "", lines()) is not None:
        res.files.append(out.url)
    return res


def manifest_line(group: ItemGroup, options: WriteOptions, res: WriteResult) -> dict[str, Any]:
    """One item as an iTAG manifest object."""
    item = group.item
    anns, kept = select_stage(group, options.prefer_stage)
    if len(anns) < len(group.annotations):
        res.lose(
            "annotations of other review stages not written", len(group.annotations) - len(anns)
        )
    if item["source_format"] == "itag" and item["metadata"]:
        line = orjson.loads(item["metadata"])
        if options.prefer_stage is not None:
            line = {k: v for k, v in line.items() if _stage_of(k) in (None, kept)}
    else:
        line = {"data": {"source": item["media_uri"] or item["file_name"] or item["item_id"]}}
    default_key = options.extra.get("label_key", DEFAULT_LABEL_KEY)
    for a in anns:
        rows = attribute_rows(group, a["ann_id"])
        place = attribute_dict(by_source(rows, STAGE_SOURCE))
        if a["kind"] == "tag":
            result = _target(line, place, item, default_key, survey=True)
            if _answer(result, a["label"], res):
                res.annotations += 1
            continue
        shapes = _shapes(a, rows, group.parts.get(a["ann_id"], {}), res)
        if shapes:
            _target(line, place, item, default_key, survey=False)["data"].extend(shapes)
            res.annotations += 1
    return line


def _stage_of(key: str) -> str | None:
    m = LABEL_KEY.fullmatch(key)
    return None if m is None else (m.group(2) or "label")


def _target(line: dict, place: dict, item: dict, default_key: str, survey: bool) -> dict:
    """The result an annotation goes into: where it came from, else a default one."""
    stage = line.get(place.get("label_key"))
    results = stage.get("results") if isinstance(stage, dict) else None
    idx = place.get("result")
    if isinstance(results, list) and isinstance(idx, int) and 0 <= idx < len(results):
        r = results[idx]
        if isinstance(r, dict) and (
            r.get("type", "").startswith("survey/")
            if survey
            else (r.get("type") == "image" and isinstance(r.get("data"), list))
        ):
            return r
    if not isinstance(line.get(default_key), dict):
        line[default_key] = {"results": []}
    results = line[default_key].setdefault("results", [])
    want = "survey/multivalue" if survey else "image"
    for r in results:
        if isinstance(r, dict) and r.get("type") == want and r.get("questionId") == "labelflow":
            return r
    if survey:
        new = {"questionId": "labelflow", "data": [], "markTitle": "Tags", "type": want}
    else:
        new = {"questionId": "labelflow", "data": [], "rotation": 0, "markTitle": "Shapes"}
        new.update({"width": item["width"], "type": want, "height": item["height"]})
    results.append(new)
    return new


def _answer(result: dict, label: str | None, res: WriteResult) -> bool:
    if label is None:
        res.lose("tags without a label not written")
        return False
    data = result.get("data")
    if isinstance(data, list):
        data.append(label)
    elif data == "" or data is None:
        result["data"] = label
    else:
        res.lose("extra answers to a single-value question not written")
        return False
    return True


def _shapes(a: dict, rows: list, parts: dict[int, Any], res: WriteResult) -> list[dict[str, Any]]:
    kind = a["kind"]
    if kind == "polygon":
        rings = [json_pairs(xy) for xy in parts.values()]
    elif kind in ("bbox", "rotated_bbox") and a["bbox_x"] is not None:
        rings = [_corners(a)]
        if kind == "rotated_bbox" and a["angle_deg"]:
            res.lose("rotated boxes written as polygons")
    else:
        res.lose(f"{kind} annotations not written (iTAG manifests hold polygons and answers)")
        return []
    labels = _labels(a, rows)
    extra = attribute_dict(by_source(rows, "shape"))
    native = a["native_id"] or a["ann_id"]
    out = []
    for n, ring in enumerate(rings):
        shape = {"id": native if n == 0 else f"{native}#{n}", "type": "image/polygon"}
        shape.update(value=ring, labels=labels)
        for k, v in extra.items():
            shape.setdefault(k, v)
        out.append(shape)
    if len(out) > 1:
        res.lose("multi-part polygons written as one shape per part")
    return out


def _corners(a: dict) -> list[list[Any]]:
    """TL, TR, BR, BL as iTAG's detection template draws a box, turned by angle_deg."""
    x, y, w, h = a["bbox_x"], a["bbox_y"], a["bbox_w"], a["bbox_h"]
    angle = math.radians(a["angle_deg"] or 0.0)
    if not angle:
        return [
            [json_number(px), json_number(py)]
            for px, py in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))
        ]
    cx, cy, c, s = x + w / 2, y + h / 2, math.cos(angle), math.sin(angle)
    out = []
    for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        out.append([cx + dx * c - dy * s, cy + dx * s + dy * c])  # clockwise with y down
    return out


def _labels(a: dict, rows: list) -> dict[str, Any]:
    """The shape's `labels`: as read, with label/text edits applied, or built afresh."""
    labels = attribute_dict(by_source(rows, "labels"))
    text_key, label_key = label_fields(labels)
    if a["text"] is not None:
        if text_key is None:
            labels = {"OCR result": a["text"], **labels}
        else:
            labels[text_key] = a["text"]
    if a["label"] is not None:
        current = labels.get(label_key) if label_key else None
        if label_key is None:
            labels["Single-choice"] = a["label"]
        elif isinstance(current, list):
            if current[0] != a["label"]:
                labels[label_key] = [a["label"], *current[1:]]
        else:
            labels[label_key] = a["label"]
    for row in rows:
        if row["source"] not in _BOOKKEEPING and row["key"] not in labels:
            labels[row["key"]] = attribute_dict([row])[row["key"]]
    return labels
