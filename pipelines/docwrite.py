"""Shared pieces of writers that rebuild one JSON document per item from staging.

AIMMO (one file per item) and iTAG (one line per item) both turn an
`ItemGroup` back into a nested document: numbers as the source wrote them,
attribute rows back into dicts, review stages filtered, and per-item file
names that stay inside the output directory.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np

from pipelines.builder import parse_attribute
from pipelines.errors import LabelflowError
from pipelines.formats.base import WriteOptions, WriteTask
from pipelines.staging import ItemGroup

STAGES = ("label", "check", "verify")
"""Review stages in the order a record passes them (iTAG: labeling, review, acceptance)."""
STAGE_KEY = "stage"
STAGE_SOURCE = "itag"
_STAGE_CHOICES = (*STAGES, "latest")

_UNSAFE = re.compile(r'[\x00-\x1f:*?"<>|\\]')


def json_number(value: Any) -> Any:
    """Whole floats back to ints: sources write 297, the staging columns hold 297.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def json_pairs(xy: np.ndarray) -> list[list[Any]]:
    """Interleaved x, y (`ItemGroup.parts`) as [[x, y], ...], whole values as ints, as
    `json_number` gives them (NaN stays a float: orjson writes null, as for None)."""
    whole = (xy == np.trunc(xy)) & (np.abs(xy) < 2**53)
    if whole.all():
        return xy.astype(np.int64).reshape(-1, 2).tolist()
    if not whole.any():
        return xy.reshape(-1, 2).tolist()
    values = [int(v) if w else v for v, w in zip(xy.tolist(), whole.tolist(), strict=True)]
    return [values[i : i + 2] for i in range(0, len(values), 2)]


def attribute_rows(group: ItemGroup, owner_id: str) -> list[dict[str, Any]]:
    return group.attributes.get(owner_id, [])


def attribute_dict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows (key, value, value_type) → {key: original value}, first row of a key wins."""
    out: dict[str, Any] = {}
    for row in rows:
        if row["key"] not in out:
            out[row["key"]] = parse_attribute(row["value"], row["value_type"])
    return out


def by_source(rows: list[dict[str, Any]], *sources: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["source"] in sources]


def check_stage(prefer: str | None) -> None:
    if prefer is not None and prefer not in _STAGE_CHOICES:
        msg = f"prefer_stage must be one of {', '.join(_STAGE_CHOICES)} (or unset), not {prefer!r}"
        raise LabelflowError(msg)


def annotation_stage(group: ItemGroup, ann_id: str) -> str | None:
    for row in group.attributes.get(ann_id, ()):
        if row["key"] == STAGE_KEY and row["source"] == STAGE_SOURCE:
            return row["value"]
    return None


def select_stage(group: ItemGroup, prefer: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The annotations a writer keeps under `prefer_stage`, and the stage kept.

    None keeps every stage; "latest" keeps, per item, the most reviewed stage
    present (verify, then check, then label); a stage name keeps that stage.
    Annotations that carry no stage (other formats) are always kept.
    """
    if prefer is None:
        return group.annotations, None
    stages = {a["ann_id"]: annotation_stage(group, a["ann_id"]) for a in group.annotations}
    target = prefer
    if prefer == "latest":
        present = [s for s in STAGES if s in stages.values()]
        target = present[-1] if present else None
    keep = [a for a in group.annotations if stages[a["ann_id"]] in (None, target)]
    return keep, target


def shard_tasks(name: str, options: WriteOptions) -> list[WriteTask]:
    """One task per worker, each a hash shard of the items."""
    shards = max(1, options.workers)
    return [WriteTask(name, shard=i, shards=shards, options=options) for i in range(shards)]


def item_path(item_id: str, suffix: str) -> str:
    """A relative file name for an item: its id, with segments that could climb or
    characters file systems refuse made harmless. A changed id gets a short hash
    so two ids never land on the same name."""
    segments = [_UNSAFE.sub("_", s) for s in item_id.split("/") if s not in ("", ".", "..")]
    rel = "/".join(segments)
    if rel != item_id or not rel:
        digest = hashlib.sha1(item_id.encode()).hexdigest()[:8]
        rel = f"{rel}-{digest}" if rel else digest
    return rel + suffix
