"""Encord label objects and classifications ↔ table rows.

Shared by the Encord reader and writer: which Encord shape is which `kind`,
how coordinates are checked, how answers read as attribute values, and the
bitmask codec. Encord's coordinates are fractions of the media size
(x and w of the width, y and h of the height); they are recorded with
`units = 'norm'` and turned into pixels by sql/normalize_coordinates.sql.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from pipelines import masks
from pipelines.builder import parse_datetime

SHAPES: dict[str, tuple[str, str]] = {
    "bounding_box": ("boundingBox", "bbox"),
    "rotatable_bounding_box": ("rotatableBoundingBox", "rotated_bbox"),
    "polygon": ("polygon", "polygon"),
    "polyline": ("polyline", "polyline"),
    "point": ("point", "point"),
    "skeleton": ("skeleton", "keypoints"),
    "bitmask": ("bitmask", "mask"),
}
"""Encord shape → (the object's coordinate key, our kind)."""

KIND_SHAPE = {kind: shape for shape, (_, kind) in SHAPES.items()}
_KEY_SHAPE = {key: shape for shape, (key, _) in SHAPES.items()} | {"polygons": "polygon"}

NORM_LIMIT = 10.0
"""A normalized coordinate beyond ±10 media sizes is corrupt, not an object off-screen."""

LAYOUT = "encord_layout"
"""Attribute source for how Encord spelled a shape (per-point fields, polygon rings)."""

COMMON_KEYS = (
    "name",
    "featureHash",
    "shape",
    "confidence",
    "manualAnnotation",
    "createdBy",
    "createdAt",
    "lastEditedBy",
    "lastEditedAt",
)

# Skeleton point states → COCO visibility (0 not visible, 1 occluded, 2 visible),
# as Encord's own COCO exporter maps them.
_VISIBILITY = {"visible": 2, "occluded": 1, "selfoccluded": 1, "invisible": 0}


class Reject(ValueError):
    """A record that cannot be mapped; the message is the reject reason."""


@dataclass
class Shape:
    """One Encord object as table values: annotation columns, vertices, extra fields."""

    kind: str
    columns: dict[str, Any] = field(default_factory=dict)
    parts: list[list[float]] = field(default_factory=list)
    """Flat x, y runs, one per ring or component (normalized)."""
    named: list[dict[str, Any]] | None = None
    """Skeleton vertices with name and visibility, instead of `parts`."""
    layout: dict[str, Any] = field(default_factory=dict)
    consumed: tuple[str, ...] = ()


# -- numbers -------------------------------------------------------------------


def number(value: Any, what: str) -> float:
    """A finite float from a JSON number or numeric text; Reject otherwise."""
    if value is None:
        raise Reject(f"{what} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Reject(f"{what} is not a number: {value!r}"[:200])
    try:
        v = float(value)
    except ValueError:
        raise Reject(f"{what} is not a number: {value!r}"[:200]) from None
    if math.isnan(v):
        raise Reject(f"{what} is NaN")
    if math.isinf(v):
        raise Reject(f"{what} is infinite")
    return v


def coord(value: Any, what: str) -> float:
    if type(value) is float or type(value) is int:  # the common case, checked fast
        v = float(value)
        if -NORM_LIMIT <= v <= NORM_LIMIT:  # False for NaN, which goes the long way
            return v
    v = number(value, what)
    if abs(v) > NORM_LIMIT:
        raise Reject(f"{what} = {v:g} is absurd for a normalized coordinate (|v| > {NORM_LIMIT:g})")
    return v


def optional_number(value: Any) -> float | None:
    """Confidence and the like: a number or numeric text, else None."""
    try:
        return number(value, "")
    except Reject:
        return None


def as_int(value: Any) -> int | None:
    """Sizes and sequence numbers, which exports give as numbers or text."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return int(v) if math.isfinite(v) and v.is_integer() else None


def is_frame_key(key: str) -> bool:
    return key.isascii() and key.isdigit()


# -- objects -------------------------------------------------------------------


def parse_object(obj: dict[str, Any]) -> Shape:
    """The geometry of one label object; Reject when it has none or it is corrupt."""
    shape = obj.get("shape")
    if shape not in SHAPES:
        shape = next((_KEY_SHAPE[k] for k in obj if k in _KEY_SHAPE), None)
        if shape is None:
            raise Reject(f"object has no coordinates (shape {obj.get('shape')!r})")
    key, kind = SHAPES[shape]
    if kind == "polygon":
        return _polygon(obj)
    value = obj.get(key)
    if value is None or value == {} or value == []:
        raise Reject(f"{shape} object without its '{key}' coordinates")
    if not isinstance(value, (dict, list)):
        raise Reject(f"'{key}' must be an object, got {type(value).__name__}")
    out = Shape(kind=kind, consumed=(key,))
    if kind in ("bbox", "rotated_bbox", "mask"):
        value = _unwrap(value)
    if kind in ("bbox", "rotated_bbox"):
        box = _box(value, key)
        out.columns.update(units="norm", **box)
        if kind == "rotated_bbox":
            out.columns["angle_deg"] = number(_get(value, "theta", key), f"{key}.theta")
    elif kind == "mask":
        out.columns.update(bitmask_columns(value))
    elif kind == "keypoints":
        out.named = _skeleton(value, out.layout)
        out.columns["units"] = "norm"
    else:
        vertices = _vertices(value, key)
        if kind == "point":
            vertices = vertices[:1]
        out.parts = [[c for v in vertices for c in v]]
        out.columns["units"] = "norm"
    return out


def _unwrap(value: Any) -> Any:
    """`{"0": {...}}` → `{...}`: the documentation shows boxes of groups and videos keyed
    by their frame."""
    if isinstance(value, dict) and len(value) == 1:
        ((k, v),) = value.items()
        if is_frame_key(k) and isinstance(v, dict):
            return v
    return value


def _get(value: Any, name: str, key: str) -> Any:
    if not isinstance(value, dict):
        raise Reject(f"'{key}' must be an object with {name}")
    return value.get(name)


def _box(value: Any, key: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise Reject(f"'{key}' must be an object with x, y, w and h")
    return {
        "bbox_x": coord(value.get("x"), f"{key}.x"),
        "bbox_y": coord(value.get("y"), f"{key}.y"),
        "bbox_w": coord(value.get("w"), f"{key}.w"),
        "bbox_h": coord(value.get("h"), f"{key}.h"),
    }


def _ordered(value: Any, key: str) -> list[tuple[str, Any]]:
    """Vertices keyed "0", "1", ... (or a plain list) in numeric order."""
    if isinstance(value, list):
        return [(str(i), v) for i, v in enumerate(value)]
    if "x" in value and "y" in value:
        return [("0", value)]
    bad = [k for k in value if not is_frame_key(k)]
    if bad:
        raise Reject(f"'{key}' vertex key {bad[0]!r} is not a number")
    return sorted(value.items(), key=lambda kv: int(kv[0]))


def _vertices(value: Any, key: str) -> list[tuple[float, float]]:
    out = []
    for k, v in _ordered(value, key):
        if not isinstance(v, dict):
            raise Reject(f"{key}[{k}] must be an object with x and y")
        out.append((coord(v.get("x"), f"{key}[{k}].x"), coord(v.get("y"), f"{key}[{k}].y")))
    if not out:
        raise Reject(f"'{key}' has no vertices")
    return out


def _skeleton(value: Any, layout: dict[str, Any]) -> list[dict[str, Any]]:
    points, extras = [], []
    for k, v in _ordered(value, "skeleton"):
        if not isinstance(v, dict):
            raise Reject(f"skeleton[{k}] must be an object with x and y")
        x = coord(v.get("x"), f"skeleton[{k}].x")
        y = coord(v.get("y"), f"skeleton[{k}].y")
        points.append({"x": x, "y": y, "name": v.get("name"), "visibility": visibility(v)})
        extras.append({n: w for n, w in v.items() if n not in ("x", "y", "name")})
    if not points:
        raise Reject("'skeleton' has no points")
    if any(extras):
        layout["skeleton"] = extras
    return points


def visibility(point: dict[str, Any]) -> int:
    state = point.get("visibility")
    if isinstance(state, str) and state.lower() in _VISIBILITY:
        return _VISIBILITY[state.lower()]
    if point.get("invisible") is True:
        return 0
    if point.get("occluded") is True:
        return 1
    return 2


def _polygon(obj: dict[str, Any]) -> Shape:
    multi, legacy = obj.get("polygons"), obj.get("polygon")
    out = Shape(kind="polygon", columns={"units": "norm"}, consumed=("polygon", "polygons"))
    if multi:
        if not isinstance(multi, list):
            raise Reject(f"'polygons' must be a list, got {type(multi).__name__}")
        if isinstance(multi[0], list) and multi[0] and not isinstance(multi[0][0], list):
            multi = [multi]  # a single polygon given as its list of rings
        rings = []
        for p, polygon in enumerate(multi):
            if not isinstance(polygon, list) or not polygon:
                raise Reject(f"polygons[{p}] must be a non-empty list of rings")
            rings.append(len(polygon))
            for r, ring in enumerate(polygon):
                where = f"polygons[{p}][{r}]"
                if not isinstance(ring, list) or len(ring) < 2 or len(ring) % 2:
                    raise Reject(f"{where} must be an even-length list of x, y")
                out.parts.append([coord(c, f"{where}[{i}]") for i, c in enumerate(ring)])
        if any(n != 1 for n in rings):
            out.layout["polygon_rings"] = rings
        if legacy and _flat(legacy) != out.parts[0]:
            out.layout["polygon"] = legacy  # the legacy field says something else: keep it
        return out
    if legacy is None or legacy == {} or legacy == []:
        raise Reject("polygon object without its 'polygon' coordinates")
    if not isinstance(legacy, (dict, list)):
        raise Reject(f"'polygon' must be an object, got {type(legacy).__name__}")
    out.parts = [[c for v in _vertices(legacy, "polygon") for c in v]]
    return out


def _flat(legacy: Any) -> list[float] | None:
    try:
        return [c for v in _vertices(legacy, "polygon") for c in v]
    except Reject:
        return None


def common_columns(obj: dict[str, Any]) -> dict[str, Any]:
    """Columns every object and classification instance has."""
    manual = obj.get("manualAnnotation")
    confidence = obj.get("confidence")
    if type(confidence) is not float:
        confidence = optional_number(confidence)
    return {
        "label": _text(obj.get("name")),
        "label_id": _text(obj.get("featureHash")),
        "confidence": confidence,
        "manual": manual if isinstance(manual, bool) else None,
        "created_by": _text(obj.get("createdBy")),
        "created_at": date(obj.get("createdAt")),
        "edited_by": _text(obj.get("lastEditedBy")),
        "edited_at": date(obj.get("lastEditedAt")),
    }


def date(value: Any) -> datetime | None:
    """parse_datetime, remembered: an export repeats the same few thousand timestamps."""
    return _date(value) if isinstance(value, str) else parse_datetime(value)


@lru_cache(maxsize=1 << 16)
def _date(value: str) -> datetime | None:
    return parse_datetime(value)


def leftovers(obj: dict[str, Any], consumed: tuple[str, ...], columns: dict[str, Any]) -> dict:
    """Fields without a column, kept as attributes (a value that did not parse stays as text)."""
    out = {k: v for k, v in obj.items() if k not in COMMON_KEYS and k not in consumed}
    for key, column in (
        ("confidence", "confidence"),
        ("createdAt", "created_at"),
        ("lastEditedAt", "edited_at"),
        ("manualAnnotation", "manual"),
    ):
        if obj.get(key) is not None and columns.get(column) is None:
            out[key] = obj[key]
    return out


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def answer_value(answers: Any) -> Any:
    """An answer as users query it: text as is, one option by name, several as a list."""
    if isinstance(answers, list):
        names = [a.get("name", a.get("value")) if isinstance(a, dict) else a for a in answers]
        return names[0] if len(names) == 1 else names
    return answers


# -- bitmasks --------------------------------------------------------------------


def bitmask_columns(bm: Any) -> dict[str, Any]:
    """Encord's bitmask (COCO's string codec over a row-major scan) → mask columns.

    The mask covers (top + height) × (left + width): Encord writes top = left = 0
    and the media size, so that is the whole image.
    """
    if not isinstance(bm, dict):
        raise Reject("'bitmask' must be an object")
    rle = bm.get("rleString")
    if not isinstance(rle, str):
        raise Reject("bitmask without an rleString")
    dims = {}
    for name in ("top", "left", "width", "height"):
        v = as_int(bm.get(name))
        if v is None or v < 0 or (name in ("width", "height") and v == 0):
            raise Reject(f"bitmask.{name} must be a non-negative integer, got {bm.get(name)!r}")
        dims[name] = v
    try:
        sub = masks.from_runs(masks.string_runs(rle), dims["height"], dims["width"], order="C")
    except ValueError as exc:
        raise Reject(f"bitmask rleString cannot be decoded: {exc}") from None
    h, w = dims["top"] + dims["height"], dims["left"] + dims["width"]
    counts = masks.encode_placed(sub, dims["left"], dims["top"], h, w)[0]
    x, y, bw, bh = masks.bbox(counts, h, w)
    return {
        "units": "px",
        "mask": counts,
        "mask_h": h,
        "mask_w": w,
        "bbox_x": x,
        "bbox_y": y,
        "bbox_w": bw,
        "bbox_h": bh,
        "area": masks.area(counts, h, w),
    }


def bitmask_from_mask(counts: str, height: int, width: int) -> dict[str, Any]:
    """A stored mask (COCO RLE, column-major) → Encord's bitmask object.

    Encord's string is COCO's codec over the image's rows: the column-major runs
    of the transposed image. Only the mask's box is decoded and placed, transposed,
    in the width × height image (`masks.encode_placed`): decoding, transposing and
    encoding the whole image took a fifth of the Encord writer's time.
    """
    (left, top, _, _), pixels = masks.tight(counts, height, width)
    rle, _ = masks.encode_placed(pixels.T, top, left, width, height)
    return {"rleString": rle, "top": 0, "left": 0, "width": width, "height": height}
