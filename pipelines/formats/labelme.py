"""LabelMe JSON (the wkentaro/labelme tool): one JSON file per image.

    {"version": "5.4.1", "flags": {"night": true},
     "shapes": [{"label": "car", "points": [[x, y], ...], "group_id": 1,
                 "shape_type": "polygon", "flags": {}, "description": "", "mask": null}],
     "imagePath": "img.jpg", "imageData": null, "imageHeight": 480, "imageWidth": 640}

Shapes: polygon → polygon; rectangle (two corners) → bbox; line, linestrip → polyline;
point → point; points → points; circle (centre, a rim point) → ellipse with its bounding
box (a circle is an ellipse with equal radii, so every writer of ellipses can use it);
mask (base64 PNG over the two corners' box) → mask as COCO RLE over the image. File
flags → item attributes, shape flags → annotation attributes (a boolean `occluded` flag
fills the `occluded` column), group_id → group_id, description → a `description`
attribute. imageData (the image itself, base64) is not kept.

Reading this format also reads LabelMe 3.0 XML files met in the same folder (see
`labelme_xml`); writing writes JSON.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson

from pipelines import masks
from pipelines.builder import BatchBuilder, is_finite, to_json
from pipelines.errors import ParseError
from pipelines.formats import _labelme as lm
from pipelines.formats import _per_image as per_image
from pipelines.formats.base import (
    Detection,
    Format,
    ReadOptions,
    ReadTask,
    WriteOptions,
    WriteResult,
    WriteTask,
)
from pipelines.images import image_size
from pipelines.schema import Batch
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output, Source
from pipelines.streamjson import ijson

VERSION = "5.4.1"
_KNOWN_TOP = {"version", "flags", "shapes", "imagePath", "imageData", "imageHeight", "imageWidth"}
_KNOWN_SHAPE = {"label", "points", "group_id", "shape_type", "flags", "description", "mask"}
# Vertex counts a shape needs: (at least, at most).
_POINTS = {
    "polygon": (3, None),
    "rectangle": (2, 2),
    "circle": (2, 2),
    "line": (2, 2),
    "linestrip": (2, None),
    "point": (1, 1),
    "points": (1, None),
    "mask": (2, 2),
}
_KINDS = {"polygon": "polygon", "line": "polyline", "linestrip": "polyline"}
_KINDS |= {"point": "point", "points": "points"}
_SHAPE = "shape"
"""`source` of attributes that were a shape's own keys (description, unknown keys)."""


# -- detection and planning ---------------------------------------------------


def _head_keys(head: bytes) -> tuple[set[str], set[str]]:
    """Top-level keys and first-shape keys seen in the first bytes of a JSON document."""
    top: set[str] = set()
    shape: set[str] = set()
    try:
        for prefix, event, value in ijson.parse(io.BytesIO(head)):
            if event == "map_key":
                if prefix == "":
                    top.add(value)
                elif prefix == "shapes.item":
                    shape.add(value)
    except ijson.JSONError:
        pass  # the head ends mid-document
    return top, shape


def _is_labelme_json(head: bytes) -> float:
    top, shape = _head_keys(head)
    if "shapes" not in top:
        return 0.0
    if "imagePath" in top:
        return 0.9
    # A long shapes list can push imagePath past the head: the shapes' own keys decide.
    return 0.75 if {"points", "shape_type"} <= shape else 0.0


def json_files(source: Source) -> list[str]:
    return [f for f in source.files if f.lower().endswith(".json")]


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        if not source.name.lower().endswith(".json"):
            return None
        score = _is_labelme_json(source.head())
        return Detection(score, "a LabelMe JSON file (shapes, imagePath)") if score else None
    files = json_files(source)
    scores = [_is_labelme_json(source.head(f)) for f in files[:3]]
    if scores and max(scores):
        return Detection(max(scores), f"LabelMe JSON ({len(files)} file(s): shapes, imagePath)")
    return None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    """JSON files in tasks of bounded size, plus the LabelMe 3.0 XML files beside them."""
    files = json_files(source) if source.is_dir else [""]
    tasks = [
        ReadTask("labelme", source, context={"files": group}, options=options)
        for group in per_image.chunks(files, options)
    ]
    from pipelines.formats import labelme_xml  # lxml, for a folder that has XML too

    if source.is_dir and labelme_xml.detect(source):
        tasks += labelme_xml.plan_read(source, options)
    elif not source.is_dir and source.name.lower().endswith(".xml"):
        tasks = labelme_xml.plan_read(source, options)
    return tasks


# -- reading ------------------------------------------------------------------


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    for member in task.context["files"]:
        read_file(task.source, member, b)
        if b.full():
            yield b.flush()
    yield b.flush()


def load(source: Source, member: str) -> dict[str, Any]:
    """The document of one file; ParseError naming the file and the place if it is not one."""
    uri = source.uri(member)
    with source.open(member) as f:
        raw = f.read()
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise ParseError(uri, where, f"malformed JSON: {exc.msg}") from exc
    if not isinstance(doc, dict):
        raise ParseError(uri, "$", f"a LabelMe file is a JSON object, not {type(doc).__name__}")
    if not isinstance(doc.get("shapes"), list):
        raise ParseError(uri, "$.shapes", "missing or not a list: not a LabelMe JSON file")
    return doc


def read_file(source: Source, member: str, b: BatchBuilder) -> None:
    """One JSON file: an item and its shapes (a file that cannot be parsed: a reject)."""
    name = member or source.name
    doc = lm.parse_or_reject(b, source, member, load)
    if doc is None:
        return
    subset, item_id, inner = lm.item_place(name, ".json")
    image_path = doc.get("imagePath") if isinstance(doc.get("imagePath"), str) else None
    file_name = lm.image_name(inner, image_path)
    image = None
    if image_path and member:
        rel = posixpath.join(posixpath.dirname(member), image_path.replace("\\", "/"))
        image = lm.image_member(source, [posixpath.normpath(rel)])
    width, height = (_size(doc.get(k)) for k in ("imageWidth", "imageHeight"))
    if not (width and height) and image:
        width, height = image_size(source, image) or (width, height)
    if not (width and height) and isinstance(doc.get("imageData"), str):
        width, height = _embedded_size(doc["imageData"]) or (width, height)
    metadata = {k: v for k, v in doc.items() if k not in _KNOWN_TOP}
    if doc.get("version") is not None:
        metadata["version"] = doc["version"]
    if image_path and image_path != file_name:
        metadata["imagePath"] = image_path
    b.item(
        item_id=item_id,
        native_id=posixpath.basename(item_id),
        file_name=file_name,
        media_uri=source.uri(image) if image else None,
        media_type="image",
        width=width,
        height=height,
        subset=subset,
        metadata=to_json(metadata) if metadata else None,
    )
    b.read_counts["items"] += 1
    flags = doc.get("flags")
    if isinstance(flags, dict):
        b.attributes(item_id, item_id, flags, owner_kind="item", source="flags")
    for n, shape in enumerate(doc["shapes"]):
        b.read_counts["annotations"] += 1
        _shape(b, f"{name}: $.shapes[{n}]", f"{item_id}/{n}", item_id, shape, (width, height))


def _embedded_size(data: str) -> tuple[int, int] | None:
    """(width, height) from the header of the base64 image a file embeds."""
    from PIL import Image  # not for detection

    try:
        with Image.open(io.BytesIO(base64.b64decode(data[: 1 << 17]))) as img:
            return img.size
    except (binascii.Error, ValueError, OSError):  # UnidentifiedImageError is an OSError
        return None


def _size(value: Any) -> int | None:
    return int(value) if is_finite(value) and value > 0 else None


def _vertices(points: Any) -> list[float] | None:
    """[[x, y], ...] flattened, or None if it is not a list of finite pairs."""
    if not isinstance(points, list):
        return None
    flat: list[float] = []
    for p in points:
        if not (isinstance(p, list) and len(p) == 2 and is_finite(*p)):
            return None
        flat += [float(p[0]), float(p[1])]
    return flat


def _shape(
    b: BatchBuilder,
    where: str,
    ann_id: str,
    item_id: str,
    shape: Any,
    size: tuple[int | None, int | None],
) -> None:
    if not isinstance(shape, dict):
        b.reject(where, "a shape is a JSON object", record=shape, record_kind="annotations")
        return
    shape_type = shape.get("shape_type") or "polygon"  # files before labelme 3 had no type
    if shape_type not in _POINTS:
        b.reject(
            where, f"unknown shape_type {shape_type!r}", record=shape, record_kind="annotations"
        )
        return
    coords = _vertices(shape.get("points"))
    if coords is None:
        reason = "points must be a list of [x, y] number pairs"
        b.reject(f"{where}.points", reason, record=shape, record_kind="annotations")
        return
    low, high = _POINTS[shape_type]
    n = len(coords) // 2
    if n < low or (high is not None and n > high):
        wanted = f"{low}" if low == high else f"at least {low}"
        reason = f"a {shape_type} needs {wanted} point(s), not {n}"
        b.reject(f"{where}.points", reason, record=shape, record_kind="annotations")
        return
    row = _geometry(shape_type, coords, shape, size)
    if isinstance(row, str):
        b.reject(where, row, record=shape, record_kind="annotations")
        return
    flags = shape.get("flags") if isinstance(shape.get("flags"), dict) else {}
    occluded = flags.get("occluded")
    label = shape.get("label")
    group = shape.get("group_id")
    b.annotation(
        ann_id=ann_id,
        item_id=item_id,
        label=None if label is None else str(label),
        units="px",
        group_id=None if group is None else str(group),
        occluded=occluded if isinstance(occluded, bool) else None,
        **row,
    )
    if row["kind"] in ("polygon", "polyline", "point", "points"):
        b.points(ann_id, item_id, coords)
    rest = {k: v for k, v in flags.items() if not (k == "occluded" and isinstance(v, bool))}
    b.attributes(ann_id, item_id, rest, source="flags")
    own = {k: v for k, v in shape.items() if k not in _KNOWN_SHAPE and v is not None}
    if shape.get("description"):
        own["description"] = shape["description"]
    b.attributes(ann_id, item_id, own, source=_SHAPE)


def _geometry(
    shape_type: str, coords: list[float], shape: dict, size: tuple[int | None, int | None]
) -> dict[str, Any] | str:
    """The annotation columns of a shape's geometry, or why it has none."""
    if shape_type in _KINDS:
        return {"kind": _KINDS[shape_type]}
    (x0, y0, x1, y1) = coords
    if shape_type == "rectangle":
        return _box("bbox", min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0))
    if shape_type == "circle":
        r = math.hypot(x1 - x0, y1 - y0)
        return _box("ellipse", x0 - r, y0 - r, 2 * r, 2 * r) | {"angle_deg": 0.0}
    width, height = size
    if not (width and height):
        return "a mask shape needs imageWidth and imageHeight"
    data = shape.get("mask")
    if not isinstance(data, str):
        return "a mask shape without its base64 PNG mask"
    try:
        sub = lm.mask_from_png(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as exc:
        return f"mask is not base64: {exc}"
    if isinstance(sub, str):
        return f"mask {sub}"
    # labelme draws the sub-mask from the first corner (integer pixel), rows then columns.
    left, top = int(min(x0, x1)), int(min(y0, y1))
    counts = masks.encode_placed(sub.astype(np.uint8), left, top, height, width)[0]
    bx, by, bw, bh = masks.bbox(counts, height, width)
    return _box("mask", bx, by, bw, bh) | {
        "mask": counts,
        "mask_h": height,
        "mask_w": width,
        "area": masks.area(counts, height, width),
    }


def _box(kind: str, x: float, y: float, w: float, h: float) -> dict[str, Any]:
    return {"kind": kind, "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h}


# -- writing ------------------------------------------------------------------


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    return lm.plan_write("labelme", staging, options)


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    return lm.write_files(task, staging, out, ".json", _render)


def _render(group: ItemGroup, stem: str, result: WriteResult) -> bytes:
    return orjson.dumps(document(group, result), option=orjson.OPT_INDENT_2)


def document(group: ItemGroup, result: WriteResult) -> dict[str, Any]:
    """One item as a LabelMe JSON document; what it cannot hold is counted in `result`."""
    item = group.item
    # A LabelMe source's version and unknown top-level keys come back; imagePath is recomputed.
    meta = _metadata(item.get("metadata")) if item.get("source_format") == "labelme" else {}
    flags = {k: v for k, v, _ in lm.annotation_values(group, item["item_id"])}
    numbers = lm.group_numbers(group)
    shapes = []
    for ann in group.annotations:
        if ann["kind"] == "tag" and ann.get("label"):
            flags[ann["label"]] = True
            result.lose("tags written as file flags")
            continue
        shape = _shape_json(ann, group.parts.get(ann["ann_id"], {}), result)
        if shape is None:
            continue
        values = lm.annotation_values(group, ann["ann_id"])
        own = {k: v for k, v, src in values if src == _SHAPE and k not in _KNOWN_SHAPE}
        shape_flags = {k: v for k, v, src in values if src != _SHAPE}
        if ann.get("occluded") is not None:
            shape_flags["occluded"] = ann["occluded"]
        description = next((v for k, v, src in values if (k, src) == ("description", _SHAPE)), "")
        shapes.append(
            {
                "label": ann.get("label") or "",
                "points": shape["points"],
                "group_id": numbers.get(ann.get("group_id")),
                "description": description if isinstance(description, str) else str(description),
                "shape_type": shape["shape_type"],
                "flags": shape_flags,
                "mask": shape.get("mask"),
                **own,
            }
        )
        result.annotations += 1
    image = posixpath.basename(item.get("file_name") or "")
    extra = {k: v for k, v in meta.items() if k not in _KNOWN_TOP}
    return {
        "version": meta.get("version", VERSION),
        "flags": flags,
        "shapes": shapes,
        "imagePath": image,
        "imageData": None,
        "imageHeight": item.get("height"),
        "imageWidth": item.get("width"),
        **extra,
    }


def _metadata(text: str | None) -> dict[str, Any]:
    try:
        meta = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _pairs(vertices: list[tuple[float, float]]) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in vertices]


def _shape_json(
    ann: dict[str, Any], parts: dict[int, Any], result: WriteResult
) -> dict[str, Any] | None:
    """shape_type, points (and mask) of an annotation, or None with its lossiness counted."""
    kind = ann["kind"]
    has_box = ann.get("bbox_w") is not None and ann.get("bbox_h") is not None
    if ann.get("outside"):
        result.lose("track frames outside the image skipped")
        return None
    if kind in lm.VERTEX_KINDS and parts:
        rings = lm.rings(parts)
        if len(rings) > 1:
            result.lose(f"{kind} parts after the first dropped", len(rings) - 1)
        vertices = rings[0]
        if kind == "keypoints":
            result.lose("keypoints written as points (names and visibility dropped)")
            return {"shape_type": "points", "points": _pairs(vertices)}
        shape_type = {"polygon": "polygon", "point": "point", "points": "points"}.get(kind)
        if kind == "polyline":
            shape_type = "line" if len(vertices) == 2 else "linestrip"
        return {"shape_type": shape_type, "points": _pairs(vertices)}
    if kind == "bbox" and has_box:
        x, y, w, h = ann["bbox_x"], ann["bbox_y"], ann["bbox_w"], ann["bbox_h"]
        return {"shape_type": "rectangle", "points": [[x, y], [x + w, y + h]]}
    if kind == "rotated_bbox" and has_box:
        if not ann.get("angle_deg"):
            return _shape_json({**ann, "kind": "bbox"}, parts, result)
        result.lose("rotated boxes written as polygons")
        return {"shape_type": "polygon", "points": _pairs(lm.box_corners(ann))}
    if kind == "ellipse" and has_box:
        w, h = ann["bbox_w"], ann["bbox_h"]
        if math.isclose(w, h, rel_tol=1e-9, abs_tol=1e-9):  # a circle: the angle is moot
            cx, cy = ann["bbox_x"] + w / 2, ann["bbox_y"] + h / 2
            return {"shape_type": "circle", "points": [[cx, cy], [cx + w / 2, cy]]}
        result.lose("ellipses written as polygons")
        return {"shape_type": "polygon", "points": _pairs(lm.ellipse_polygon(ann))}
    if kind == "mask" and ann.get("mask"):
        counts, h, w = ann["mask"], ann["mask_h"], ann["mask_w"]
        box = lm.mask_box(counts, h, w)
        if box is None:
            result.lose("empty masks skipped")
            return None
        x0, y0, x1, y1 = box
        crop = masks.decode_box(counts, h, w, (x0, y0, x1 - x0 + 1, y1 - y0 + 1)).astype(bool)
        data = base64.b64encode(lm.png_bytes(crop)).decode()
        return {"shape_type": "mask", "points": [[x0, y0], [x1, y1]], "mask": data}
    result.lose(f"{kind} annotations have no LabelMe shape")
    return None


FORMAT = Format(
    name="labelme",
    description="LabelMe JSON (wkentaro/labelme): shapes per image; also reads LabelMe 3.0 XML",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
)
