"""LabelMe 3.0 XML (MIT CSAIL; CVAT's "LabelMe 3.0"): one `<annotation>` file per image.

    Annotations/<folder>/<image>.xml   (or <image>.xml beside the images, as CVAT writes)
    Masks/<folder>/<image>_mask_<id>.png, Scribbles/..., Images/<folder>/<image>

Objects: `<polygon>` → polygon (bbox when `<type>bounding_box</type>`), `<segm>` → mask
(the PNG's set pixels, any channel, as COCO RLE over the image). `occluded` yes/no →
occluded, `<date>` (25-May-2012 00:09:48) → created_at, the polygon's `<username>` →
created_by, the free-text `<attributes>` ("a=1, b") → attributes, `<parts>` → group_id
(the id of the part tree's root object) plus `hasparts` / `ispartof` attributes. Deleted
objects are rejected, not read. Scribbles are kept as an attribute naming their file.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from lxml import etree

from pipelines import masks, xmlsafe
from pipelines.builder import BatchBuilder, is_finite, parse_datetime, to_json
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

_DATE = "%d-%b-%Y %H:%M:%S"
_SOURCE = "labelme_xml"
# Attributes the reader makes from elements: written back as those elements, not as text.
_STRUCTURAL = {"hasparts", "ispartof", "verified", "scribbles", "segm_box", "type", "date"}
_ANN = "annotations"


# -- detection and planning ---------------------------------------------------


def _is_labelme_xml(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if b"<annotation" not in text[:512] or b"<annotations" in text[:512]:
        return False
    has_shape = b"<polygon" in head or b"<segm" in head or b"<imagesize" in head
    return has_shape and b"<bndbox" not in head


def xml_files(source: Source) -> list[str]:
    return [f for f in source.files if f.lower().endswith(".xml")]


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        if source.name.lower().endswith(".xml") and _is_labelme_xml(source.head()):
            return Detection(0.85, "a LabelMe 3.0 <annotation> with polygons")
        return None
    files = xml_files(source)
    hits = sum(1 for f in files[:5] if _is_labelme_xml(source.head(f)))
    if hits:
        return Detection(0.85, f"LabelMe 3.0 XML ({len(files)} file(s))")
    return None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    """Files grouped into tasks of bounded size: one task per tiny file costs more than it reads."""
    files = xml_files(source) if source.is_dir else [""]
    return [
        ReadTask("labelme_xml", source, context={"files": group}, options=options)
        for group in per_image.chunks(files, options)
    ]


# -- reading ------------------------------------------------------------------


def parse_attributes(text: str | None) -> dict[str, Any]:
    """LabelMe's free-text attributes: "a=1, b, c=\\"x\\"" → {"a": 1, "b": True, "c": "x"}.

    `\\,` `\\=` `\\"` `\\\\` escape those characters (as CVAT writes them).
    """
    out: dict[str, Any] = {}
    if not text or not text.strip():
        return out
    for entry in _split_unescaped(text, ","):
        entry = entry.strip()
        if not entry:
            continue
        key_value = _split_unescaped(entry, "=", maxsplit=1)
        key = _unescape(key_value[0].strip())
        if len(key_value) == 1:
            out[key] = True
            continue
        raw = key_value[1].strip()
        out[key] = _typed(raw)
    return out


def _split_unescaped(text: str, sep: str, maxsplit: int = -1) -> list[str]:
    """Split at `sep` where it is not escaped; escapes stay for `_unescape`."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if text[i] == sep and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _typed(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if len(raw) > 1 and raw[0] == raw[-1] == '"':
        return _unescape(raw[1:-1])
    for cast in (int, float):
        try:
            value = cast(raw)
        except ValueError:
            continue
        if str(value) == raw:
            return value
    return _unescape(raw)


def _date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.strptime(text.strip(), _DATE).replace(tzinfo=timezone.utc)
    except ValueError:
        return parse_datetime(text)


def _ids(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _roots(parts: dict[str, tuple[list[str], list[str]]]) -> dict[str, str]:
    """object id → the id of its part tree's root, for objects in a tree."""
    out = {}
    for oid, (children, parents) in parts.items():
        if not children and not parents:
            continue
        node, seen = oid, {oid}
        while parts.get(node, ([], []))[1]:
            parent = parts[node][1][0]
            if parent in seen:  # a cycle: the lowest id stands for the tree
                node = min(seen)
                break
            seen.add(parent)
            node = parent
        out[oid] = node
    return out


def _mask_member(source: Source, member: str, folder: str | None, name: str) -> str | None:
    """The mask PNG: Masks/<folder>/ beside Annotations/ (MIT layout), <subset>/Masks/ (CVAT),
    or Masks/ beside the XML."""
    xml_dir = posixpath.dirname(member)
    parts = member.split("/")
    candidates = []
    if lm.ANNOTATIONS_DIR in parts:
        at = parts.index(lm.ANNOTATIONS_DIR)
        masks_dir = "/".join([*parts[:at], "Masks"])
        inner = "/".join(parts[at + 1 : -1])
        candidates += [posixpath.join(masks_dir, sub, name) for sub in (folder or "", inner, "")]
    elif len(parts) > 1:  # CVAT's layout: <subset>/Masks/<mask> for every XML of the subset
        candidates.append(posixpath.join(parts[0], "Masks", name))
    candidates += [posixpath.join(xml_dir, "Masks", name), posixpath.join(xml_dir, name)]
    return lm.image_member(source, [posixpath.normpath(c) for c in candidates])


def _image(source: Source, member: str, folder: str | None, filename: str) -> str | None:
    """The image: Images/<folder>/ beside Annotations/ (MIT layout), or beside the XML."""
    parts = member.split("/")
    candidates = [posixpath.join(posixpath.dirname(member), filename)]
    if lm.ANNOTATIONS_DIR in parts:
        images_dir = "/".join([*parts[: parts.index(lm.ANNOTATIONS_DIR)], "Images"])
        candidates.insert(0, posixpath.join(images_dir, folder or "", filename))
    return lm.image_member(source, [posixpath.normpath(c) for c in candidates])


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder("labelme_xml")
    for member in task.context["files"]:
        read_file(task.source, member, b)
        if b.full():
            yield b.flush()
    yield b.flush()


def _parse(source: Source, member: str) -> etree._Element:
    with source.open(member) as f:
        root = xmlsafe.parse(f, source.uri(member))
    if root.tag != "annotation":
        raise ParseError(source.uri(member), f"<{root.tag}>", "not a LabelMe <annotation> file")
    return root


def read_file(source: Source, member: str, b: BatchBuilder) -> None:
    """One XML file: an item and its objects (a file that cannot be parsed: a reject)."""
    name = member or source.name
    root = lm.parse_or_reject(b, source, member, _parse)
    if root is None:
        return
    subset, item_id, inner = lm.item_place(name, ".xml")
    filename = xmlsafe.text(root, "filename") or ""
    folder = xmlsafe.text(root, "folder")
    image = _image(source, member, folder, filename) if filename and member else None
    height = _int(xmlsafe.text(root, "imagesize/nrows"))
    width = _int(xmlsafe.text(root, "imagesize/ncols"))
    if (not width or not height) and image:
        width, height = image_size(source, image) or (width, height)
    metadata = {k: v for k, v in (("folder", folder), ("source", _source(root))) if v}
    b.item(
        item_id=item_id,
        native_id=filename or None,
        file_name=lm.image_name(inner, filename),
        media_uri=source.uri(image) if image else None,
        media_type="image",
        width=width or None,
        height=height or None,
        subset=subset,
        metadata=to_json(metadata) if metadata else None,
    )
    b.read_counts["items"] += 1
    objects = root.findall("object")
    parts = {}
    for n, obj in enumerate(objects):
        oid = xmlsafe.text(obj, "id") or str(n)
        parts[oid] = (
            _ids(xmlsafe.text(obj, "parts/hasparts")),
            _ids(xmlsafe.text(obj, "parts/ispartof")),
        )
    roots = _roots(parts)
    file = _File(source, member, name, item_id, folder, width, height, roots)
    for n, obj in enumerate(objects):
        b.read_counts["annotations"] += 1
        _object(b, file, obj, n)


@dataclass(frozen=True)
class _File:
    """What every object of one XML file needs to know about it."""

    source: Source
    member: str
    name: str
    item_id: str
    folder: str | None
    width: int | None
    height: int | None
    roots: dict[str, str]


def _int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


def _source(root: etree._Element) -> dict[str, str] | None:
    src = root.find("source")
    if src is None:
        return None
    return {c.tag: (c.text or "").strip() for c in src if isinstance(c.tag, str)} or None


def _object(b: BatchBuilder, file: _File, obj: etree._Element, n: int) -> None:
    where = f"{file.name}: annotation/object[{n + 1}]"
    item_id = file.item_id
    oid = xmlsafe.text(obj, "id") or str(n)
    if xmlsafe.text(obj, "deleted") in ("1", "true", "yes"):
        b.reject(
            where,
            "deleted object",
            record=etree.tostring(obj).decode(),
            native_id=oid,
            record_kind=_ANN,
        )
        return
    poly, segm = obj.find("polygon"), obj.find("segm")
    shape_type = xmlsafe.text(obj, "type")
    ann_id = f"{item_id}/{n}"
    row: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    if poly is not None:
        coords = []
        for k, pt in enumerate(poly.findall("pt")):
            x, y = _float(xmlsafe.text(pt, "x")), _float(xmlsafe.text(pt, "y"))
            if not is_finite(x, y):
                b.reject(
                    f"{where}/polygon/pt[{k + 1}]",
                    "x or y is not a number",
                    native_id=oid,
                    record_kind=_ANN,
                )
                return
            coords += [x, y]
        if (len(coords) < 6 and shape_type != "bounding_box") or len(coords) < 4:
            b.reject(
                f"{where}/polygon",
                f"{len(coords) // 2} point(s) are no shape",
                native_id=oid,
                record_kind=_ANN,
            )
            return
        user = xmlsafe.text(poly, "username")
        if shape_type == "bounding_box":
            xs, ys = coords[0::2], coords[1::2]
            row = {"kind": "bbox", "bbox_x": min(xs), "bbox_y": min(ys)}
            row |= {"bbox_w": max(xs) - min(xs), "bbox_h": max(ys) - min(ys)}
        else:
            row = {"kind": "polygon"}
            b.points(ann_id, item_id, coords)
    elif segm is not None:
        user = xmlsafe.text(segm, "username")
        w, h = file.width, file.height
        name = xmlsafe.text(segm, "mask")
        member = _mask_member(file.source, file.member, file.folder, name) if name else None
        if member is None:
            b.reject(
                f"{where}/segm/mask",
                f"mask file {name!r} not found",
                native_id=oid,
                record_kind=_ANN,
            )
            return
        with file.source.open(member) as f:
            mask = lm.mask_from_png(f.read())
        if isinstance(mask, str) or not (w and h) or mask.shape != (h, w):
            reason = (
                mask if isinstance(mask, str) else f"mask {member} does not match the image size"
            )
            b.reject(f"{where}/segm/mask", reason, native_id=oid, record_kind=_ANN)
            return
        counts = masks.encode(mask)
        x, y, bw, bh = masks.bbox(counts, h, w)
        row = {"kind": "mask", "mask": counts, "mask_h": h, "mask_w": w, "bbox_x": x, "bbox_y": y}
        row |= {"bbox_w": bw, "bbox_h": bh, "area": masks.area(counts, h, w)}
        box = segm.find("box")
        if box is not None:
            attrs["segm_box"] = {c.tag: _float(c.text) for c in box if isinstance(c.tag, str)}
        if shape_type:
            attrs["type"] = shape_type
        scribbles = segm.find("scribbles")
        if scribbles is not None:
            attrs["scribbles"] = {
                c.tag: (c.text or "").strip() for c in scribbles if isinstance(c.tag, str)
            }
    else:
        b.reject(where, "object has neither <polygon> nor <segm>", native_id=oid, record_kind=_ANN)
        return
    occluded = xmlsafe.text(obj, "occluded")
    date_text = xmlsafe.text(obj, "date")
    created = _date(date_text)
    if date_text and created is None:
        attrs["date"] = date_text
    verified = xmlsafe.text(obj, "verified")
    if verified and verified != "0":
        attrs["verified"] = verified
    hasparts, ispartof = xmlsafe.text(obj, "parts/hasparts"), xmlsafe.text(obj, "parts/ispartof")
    b.annotation(
        ann_id=ann_id,
        item_id=item_id,
        native_id=oid,
        label=xmlsafe.text(obj, "name") or None,
        units="px",
        occluded=None if occluded is None else occluded.lower() == "yes",
        group_id=file.roots.get(oid),
        created_by=user or None,
        created_at=created,
        **row,
    )
    b.attributes(ann_id, item_id, parse_attributes(xmlsafe.text(obj, "attributes")), source=_SOURCE)
    b.attributes(ann_id, item_id, attrs, source=_SOURCE)
    if hasparts:
        b.attribute(ann_id, item_id, "hasparts", hasparts, source="parts")
    if ispartof:
        b.attribute(ann_id, item_id, "ispartof", ispartof, source="parts")


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


# -- writing ------------------------------------------------------------------


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    return lm.plan_write("labelme_xml", staging, options)


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    def render(group: ItemGroup, stem: str, result: WriteResult) -> bytes:
        folder, name = posixpath.split(stem)
        vertices: list[bytes] = []
        root = _document(group, task.subset, folder, name, out, result, vertices)
        text = etree.tostring(root, encoding="utf-8", pretty_print=True)
        return _with_vertices(text, vertices)

    return lm.write_files(task, staging, out, ".xml", render)


def _sub(parent: etree._Element, tag: str, text: Any = None) -> etree._Element:
    elem = etree.SubElement(parent, tag)
    if text is not None:
        elem.text = str(text)
    return elem


def _document(
    group: ItemGroup,
    subset: str | None,
    folder: str,
    name: str,
    out: Output,
    result: WriteResult,
    vertices: list[bytes],
) -> etree._Element:
    """One item's <annotation>; its mask PNGs go to `<subset>/Masks/<folder>/`, and the
    `<pt>` elements of its polygons, as text, to `vertices` (`_with_vertices`)."""
    item = group.item
    masks_dir = "/".join(p for p in (subset, "Masks") if p)
    root = etree.Element("annotation")
    _sub(root, "filename", posixpath.basename(item.get("file_name") or "") or name)
    _sub(root, "folder", folder)
    source = _sub(root, "source")
    _sub(source, "sourceImage", "")
    _sub(source, "sourceAnnotation", "labelflow")
    if item.get("width") and item.get("height"):
        size = _sub(root, "imagesize")
        _sub(size, "nrows", item["height"])
        _sub(size, "ncols", item["width"])
    ids = _object_ids(group)
    parts = _parts(group, ids)
    for ann in group.annotations:
        mask = posixpath.join(folder, f"{name}_mask_{ids[ann['ann_id']]}.png")
        shape = _shape(ann, group, masks_dir, mask, out, result)
        if shape is None:
            continue
        if isinstance(shape, bytes):
            vertices.append(shape)
            shape = etree.Element("polygon")
            etree.SubElement(shape, _VERTICES)
        obj = _sub(root, "object")
        values = lm.annotation_values(group, ann["ann_id"])
        extra = {k: v for k, v, src in values if k not in _STRUCTURAL and src != "parts"}
        given = {k: v for k, v, _ in values}
        _sub(obj, "name", ann.get("label") or "")
        _sub(obj, "deleted", "0")
        _sub(obj, "verified", given.get("verified", "0"))
        if ann.get("occluded") is not None:
            _sub(obj, "occluded", "yes" if ann["occluded"] else "no")
        _sub(obj, "attributes", format_attributes(extra))
        hasparts, ispartof = parts.get(ann["ann_id"], ("", ""))
        elem = _sub(obj, "parts")
        _sub(elem, "hasparts", hasparts)
        _sub(elem, "ispartof", ispartof)
        created = ann.get("created_at")
        _sub(obj, "date", created.strftime(_DATE) if created else given.get("date", ""))
        _sub(obj, "id", ids[ann["ann_id"]])
        if (shape.tag == "polygon" and ann["kind"] == "bbox") or "type" in given:
            _sub(obj, "type", given.get("type", "bounding_box"))
        user = etree.Element("username")
        user.text = ann.get("created_by") or ""
        shape.insert(0, user)  # username comes first
        obj.append(shape)
        result.annotations += 1
    return root


def _object_ids(group: ItemGroup) -> dict[str, str]:
    """The source's object ids when they are unique numbers (parts refer to them), else 0..n."""
    native = [a.get("native_id") for a in group.annotations]
    if all(n is not None and n.isdigit() for n in native) and len(set(native)) == len(native):
        return {a["ann_id"]: a["native_id"] for a in group.annotations}
    return {a["ann_id"]: str(n) for n, a in enumerate(group.annotations)}


def _parts(group: ItemGroup, ids: dict[str, str]) -> dict[str, tuple[str, str]]:
    """ann_id → (hasparts, ispartof): as read when the ids are the source's, else from groups.

    A group from another format becomes a tree of depth one: its first object holds the rest.
    """
    kept = all(ids[a["ann_id"]] == a.get("native_id") for a in group.annotations)
    out: dict[str, tuple[str, str]] = {}
    if kept:
        for a in group.annotations:
            given = {
                k: str(v)
                for k, v, src in lm.annotation_values(group, a["ann_id"])
                if src == "parts"
            }
            if given:
                out[a["ann_id"]] = (given.get("hasparts", ""), given.get("ispartof", ""))
        if out:
            return out
    members: dict[str, list[str]] = {}
    for a in group.annotations:
        if a.get("group_id") is not None:
            members.setdefault(a["group_id"], []).append(a["ann_id"])
    for anns in members.values():
        if len(anns) < 2:
            continue
        head, rest = anns[0], anns[1:]
        out[head] = (",".join(ids[r] for r in rest), "")
        for r in rest:
            out[r] = ("", ids[head])
    return out


def format_attributes(values: dict[str, Any]) -> str:
    """Inverse of `parse_attributes`: true flags as bare names, the rest as name=value."""
    entries = []
    for key, value in values.items():
        name = _escape(str(key))
        if value is True:
            entries.append(name)
        elif isinstance(value, bool):
            entries.append(f"{name}=false")
        elif isinstance(value, (int, float)):
            entries.append(f"{name}={value}")
        elif isinstance(value, str):
            # Quoted when the bare text would read back as something else (a number, spaces).
            bare = value and value == value.strip() and _typed(value) == value
            entries.append(f"{name}={_escape(value)}" if bare else f'{name}="{_escape(value)}"')
        else:
            entries.append(f'{name}="{_escape(to_json(value))}"')
    return ", ".join(entries)


def _escape(text: str) -> str:
    return re.sub(r'([\\=",])', r"\\\1", text)


def _shape(
    ann: dict[str, Any],
    group: ItemGroup,
    masks_dir: str,
    mask_name: str,
    out: Output,
    result: WriteResult,
) -> etree._Element | bytes | None:
    """The object's <segm>, its polygon's vertices (`_polygon`), or None if lost; the
    caller adds the username."""
    kind = ann["kind"]
    parts = group.parts.get(ann["ann_id"])
    if kind == "polygon" and parts:
        rings = lm.rings(parts)
        if len(rings) > 1:
            result.lose("polygon parts after the first dropped", len(rings) - 1)
        return _polygon(rings[0])
    if kind in ("bbox", "rotated_bbox") and ann.get("bbox_w") is not None:
        if kind == "rotated_bbox" and ann.get("angle_deg"):
            result.lose("rotated boxes written as polygons")
            return _polygon(lm.box_corners(ann))
        return _polygon(lm.box_corners({**ann, "angle_deg": 0.0}))
    if kind == "ellipse" and ann.get("bbox_w") is not None:
        result.lose("ellipses written as polygons")
        return _polygon(lm.ellipse_polygon(ann))
    if kind == "mask" and ann.get("mask"):
        counts, h, w = ann["mask"], ann["mask_h"], ann["mask_w"]
        rel = posixpath.join(masks_dir, mask_name)
        per_image.put(out, rel, masks.png(counts, h, w, grey=True), result)
        segm = etree.Element("segm")
        given = {k: v for k, v, _ in lm.annotation_values(group, ann["ann_id"])}
        box = _given_box(given.get("segm_box")) or lm.mask_box(counts, h, w)
        if "scribbles" in given:
            result.lose("scribble references dropped (their PNGs are not read)")
        if box:
            elem = _sub(segm, "box")
            for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
                _sub(elem, tag, _num(v))
        _sub(segm, "mask", mask_name)
        return segm
    result.lose(f"{kind} annotations have no LabelMe 3.0 form")
    return None


def _given_box(value: Any) -> tuple[float, ...] | None:
    """The source's own <segm><box>, kept as an attribute, if it is complete."""
    if not isinstance(value, dict):
        return None
    box = tuple(value.get(k) for k in ("xmin", "ymin", "xmax", "ymax"))
    return box if is_finite(*box) else None


_VERTICES = "_pts"
"""Where a polygon's `<pt>` elements go: an element no document has (names starting
with an underscore are not LabelMe's), replaced by their text once the document is
serialized. Three elements a vertex made with SubElement took 3 µs, and parsing
them from text still half of that."""
_VERTICES_LINE = f"      <{_VERTICES}/>\n".encode()
"""The marker as lxml pretty-prints it, in a polygon of an object of the annotation."""


def _polygon(vertices: Iterable[Sequence[float]]) -> bytes:
    """A polygon's `<pt>` elements, pretty-printed as lxml prints them at that depth."""
    return "".join(
        f"      <pt>\n        <x>{_num(x)}</x>\n        <y>{_num(y)}</y>\n      </pt>\n"
        for x, y in vertices
    ).encode()


def _with_vertices(text: bytes, vertices: list[bytes]) -> bytes:
    """The serialized document with each polygon's marker replaced by its vertices. Text
    content cannot hold the marker: lxml writes its `<` as `&lt;`."""
    pieces = text.split(_VERTICES_LINE)
    if len(pieces) != len(vertices) + 1:
        raise AssertionError(f"{len(pieces) - 1} polygon markers for {len(vertices)} polygons")
    joined = [pieces[0]]
    for pts, piece in zip(vertices, pieces[1:], strict=True):
        joined += (pts, piece)
    return b"".join(joined)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


FORMAT = Format(
    name="labelme_xml",
    description="LabelMe 3.0 XML (MIT CSAIL, CVAT's LabelMe 3.0): polygons, boxes, PNG masks",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
)
