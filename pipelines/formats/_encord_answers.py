"""The label row's answers: attributes of the annotations they describe, and labels of
their own where an answer has a range and no shape (audio, text, frame spans).

Run when a row ends, whatever the order of its keys: by then every annotation
of the row is indexed by its object or classification hash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipelines.builder import BatchBuilder
from pipelines.formats._encord_shapes import answer_value, as_int, common_columns

_ANSWERS = ("object_answers", "classification_answers", "object_actions")
_TEXT_ROWS = {"plain_text", "text", "html"}


def answers(b: BatchBuilder, row: Any, anchor: str, next_ann: Callable[[str], str]) -> None:
    """Attributes from the row's answers, and labels that only the answers hold."""
    f = row.fields
    objects, classes, actions = (_dict(f.get(k)) for k in _ANSWERS)
    sequences = {du.key: as_int(du.fields.get("data_sequence")) for du in row.dus}
    for h, refs in row.objects.items():
        entry = objects.get(h)
        for c in _entries(entry, "classifications"):
            for ann_id, item_id, _, _ in refs:
                b.attribute(ann_id, item_id, *_answer(c), source="object_answers")
        for act in _entries(actions.get(h), "actions"):
            spans = _spans(act.get("range"))
            for ann_id, item_id, du_key, frame in refs:
                at = frame if frame is not None else (sequences.get(du_key) or 0)
                if any(s <= at <= e for s, e in spans):
                    b.attribute(
                        ann_id, item_id, *_answer(act), source="object_actions", frame_index=at
                    )
    for h, refs in row.tags.items():
        for c in _entries(classes.get(h), "classifications"):
            for ann_id, item_id in refs:
                b.attribute(ann_id, item_id, *_answer(c), source="classification_answers")
    kind_of = str(f.get("data_type"))
    for h, entry in objects.items():
        if h not in row.objects and isinstance(entry, dict):
            _ranged(b, next_ann, anchor, h, entry, kind_of, "object_answers")
    for h, entry in classes.items():
        if h not in row.tags and isinstance(entry, dict):
            _ranged(b, next_ann, anchor, h, entry, kind_of, "classification_answers")


def _ranged(
    b: BatchBuilder,
    next_ann: Callable[[str], str],
    anchor: str,
    h: str,
    entry: dict,
    data_type: str,
    source: str,
) -> None:
    """An answer entry with a range (audio, text, frame spans) is a label of its own."""
    spans = _spans(entry.get("range"))
    html = entry.get("range_html") if isinstance(entry.get("range_html"), list) else []
    if not spans and not html:
        return
    columns = common_columns(entry)
    answers = _entries(entry, "classifications")
    if columns["label"] is None and source == "classification_answers" and answers:
        columns["label"] = _text(answers[0].get("name"))
    rows: list[tuple[dict[str, Any], Any]] = []  # (columns, range_html part)
    for s, e in spans:
        if data_type == "audio":  # milliseconds
            rows.append(
                ({"kind": "time_range", "time_start_s": s / 1000, "time_end_s": e / 1000}, None)
            )
        elif data_type in _TEXT_ROWS and source == "object_answers":  # characters
            rows.append(({"kind": "text_span", "text_start": s, "text_end": e}, None))
        else:  # frames
            kind = "tag" if source == "classification_answers" else "time_range"
            rows.append(({"kind": kind, "frame_start": s, "frame_end": e}, None))
    # An HTML span is two xpath positions: kept whole as an attribute.
    rows += [({"kind": "text_span"}, part) for part in html]
    for extra, part in rows:
        ann_id = next_ann(anchor)
        b.annotation(ann_id=ann_id, item_id=anchor, native_id=h, track_id=h, **columns, **extra)
        if part is not None:
            b.attribute(ann_id, anchor, "range_html", part, source=source)
        for c in answers:
            b.attribute(ann_id, anchor, *_answer(c), source=source)


def _entries(entry: Any, key: str) -> list[dict]:
    values = entry.get(key) if isinstance(entry, dict) else None
    return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []


def _answer(c: dict) -> tuple[str, Any]:
    key = c.get("name") or c.get("value") or c.get("featureHash") or "answer"
    return str(key), answer_value(c.get("answers"))


def _spans(value: Any) -> list[tuple[int, int]]:
    out = []
    for r in value if isinstance(value, list) else []:
        if isinstance(r, list) and len(r) == 2:
            s, e = as_int(r[0]), as_int(r[1])
            if s is not None and e is not None:
                out.append((s, e))
    return out


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}
