"""Pascal VOC: Annotations/<id>.xml, ImageSets/<task>/<subset>.txt, labelmap.txt,
SegmentationClass/ and SegmentationObject/ PNGs, JPEGImages/.

VOC pixel coordinates are 1-based and inclusive: a box covering a whole W×H
image is xmin=1, xmax=W. Read as x = xmin - 1, y = ymin - 1, w = xmax - xmin + 1,
h = ymax - ymin + 1 (so the corner x + w = xmax), and written back the same way.

Items are the images that have an XML or are listed in any ImageSets list;
the first list naming an image (Main, then Segmentation, Action, Layout)
gives its subset, and every membership is kept in `metadata.image_sets`.
An <object> is a bbox annotation: pose, truncated and difficult become
attributes (source "voc"), occluded the `occluded` column, <actions> flags
attributes (source "voc_action"), CVAT's <attributes> attributes (source
"voc_attribute"), and each <part> a bbox annotation of its own whose
`group_id` is its object's ann_id (the object carries the same group_id).
Per-class lists (ImageSets/Main/<class>_<subset>.txt) become tags (flag 1;
flag 0, VOC's "difficult", adds difficult=true). Segmentation PNGs become
mask annotations: one per instance of SegmentationObject (label from the
class PNG, group_id linking instance i to the i-th object), or one per class
when only SegmentationClass exists. See docs/formats/voc.md.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from lxml import etree

from pipelines import xmlsafe
from pipelines.builder import BatchBuilder, to_json
from pipelines.errors import ParseError
from pipelines.formats import _label_masks as lm
from pipelines.formats import _per_image as per_image
from pipelines.formats import _voc_masks as vm
from pipelines.formats import _voc_write
from pipelines.formats.base import Detection, Format, ReadOptions, ReadTask
from pipelines.schema import Batch
from pipelines.storage import Source

NAME = "voc"
LAYOUT_DIRS = ("Annotations", "ImageSets", "JPEGImages", "SegmentationClass", "SegmentationObject")
TASK_ORDER = ("Main", "Segmentation", "Action", "Layout")
_ROOT_TAG = re.compile(rb"<annotation[\s>]")
_OBJECT_KNOWN = frozenset(
    {"name", "pose", "truncated", "difficult", "occluded", "bndbox", "part", "actions",
     "attributes"}
)  # fmt: skip
_ITEM_KNOWN = frozenset({"filename", "size", "object"})


# -- detection ---------------------------------------------------------------------


def _voc_head(head: bytes) -> bool:
    """A VOC annotation, not LabelMe's (also <annotation>, but with polygons and imagesize)."""
    if not _ROOT_TAG.search(head) or b"<imagesize" in head or b"<polygon" in head:
        return False
    return b"<bndbox" in head or b"<size" in head or b"<filename" in head


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        if source.url.lower().endswith(".xml") and _voc_head(source.head()):
            return Detection(0.6, "a Pascal VOC annotation XML")
        return None
    xmls = [f for f in source.files if f.lower().endswith(".xml")]
    in_dir = [f for f in xmls if "Annotations/" in f]
    for f in (in_dir or xmls)[:3]:
        if _voc_head(source.head(f)):
            return Detection(0.9 if in_dir else 0.6, "Pascal VOC annotation XML files")
    if any("ImageSets/" in f and f.endswith(".txt") for f in source.files) and any(
        ("SegmentationClass/" in f or "JPEGImages/" in f) for f in source.files
    ):
        return Detection(0.7, "VOC ImageSets lists with JPEGImages or SegmentationClass")
    return None


# -- planning -------------------------------------------------------------------------


@dataclass
class _Item:
    id: str
    xml: str = ""
    image: str = ""
    seg_class: str = ""
    seg_object: str = ""
    sets: list[str] = field(default_factory=list)
    tags: list[tuple[str, int]] = field(default_factory=list)

    @property
    def subset(self) -> str | None:
        return self.sets[0].split("/", 1)[1] if self.sets else None


def _roots(source: Source) -> list[str]:
    roots = set()
    for f in source.files:
        parts = f.split("/")
        for i, d in enumerate(parts[:-1]):
            if d in LAYOUT_DIRS:
                roots.add("/".join(parts[:i]))
                break
    return sorted(roots) or [""]


def _under(files: list[str], root: str, folder: str) -> dict[str, str]:
    """id (path under the folder, no extension) → member."""
    prefix = posixpath.join(root, folder) + "/" if root else folder + "/"
    return {per_image.strip_ext(f[len(prefix) :]): f for f in files if f.startswith(prefix)}


def _is_class_list(stem: str, lines: list[list[str]]) -> bool:
    first = next((t for t in lines if t), None)
    return "_" in stem and first is not None and len(first) == 2 and first[1] in ("-1", "0", "1")


def _scan_root(source: Source, root: str, files: list[str]) -> list[_Item]:
    items: dict[str, _Item] = {}

    def item(item_id: str) -> _Item:
        return items.setdefault(item_id, _Item(item_id))

    xmls = _under(files, root, "Annotations")
    dirs = {posixpath.join(root, d) + "/" if root else d + "/" for d in LAYOUT_DIRS}
    if not any(f.startswith(tuple(dirs)) for f in files):  # a flat folder of XML files
        xmls = {per_image.strip_ext(f[len(root) + 1 if root else 0 :]): f for f in files}
    for item_id, member in xmls.items():
        if member.lower().endswith(".xml"):
            item(item_id).xml = member
    lists = _under(files, root, "ImageSets")
    by_task = sorted(lists.items(), key=lambda kv: (_task_rank(kv[0]), kv[0]))
    for rel, member in by_task:
        task, _, stem = rel.rpartition("/")
        lines = [line.split() for line in per_image.read_text(source, member).splitlines()]
        if _is_class_list(stem, lines):
            if task != "Main":
                continue  # per-action / per-class lists of other tasks repeat the XML
            cls, subset = stem.rsplit("_", 1)
            for tokens in lines:
                if len(tokens) == 2 and tokens[1] in ("-1", "0", "1"):
                    it = item(tokens[0])
                    if f"Main/{subset}" not in it.sets:
                        it.sets.append(f"Main/{subset}")
                    if tokens[1] != "-1":
                        it.tags.append((cls, int(tokens[1])))
            continue
        for tokens in lines:
            if tokens:
                it = item(tokens[0])
                if f"{task}/{stem}" not in it.sets:
                    it.sets.append(f"{task}/{stem}")
    images = _under(files, root, "JPEGImages")
    if not images:
        images = {per_image.strip_ext(f): f for f in files if per_image.is_image(f)}
    seg_c = _under(files, root, "SegmentationClass")
    seg_o = _under(files, root, "SegmentationObject")
    for item_id, it in items.items():
        it.image = images.get(item_id, "")
        it.seg_class = seg_c.get(item_id, "")
        it.seg_object = seg_o.get(item_id, "")
    return [items[k] for k in sorted(items)]


def _task_rank(rel: str) -> int:
    task = rel.rpartition("/")[0]
    return TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    if not source.is_dir:
        ctx = {"root": "", "labelmap": None, "header": False}
        only = _Item(per_image.strip_ext(source.name), xml="")
        return [ReadTask(NAME, source, context={**ctx, "entries": [only]}, options=options)]
    tasks = []
    for root in _roots(source):
        files = [f for f in source.files if not root or f.startswith(root + "/")]
        lm_member = posixpath.join(root, "labelmap.txt") if root else "labelmap.txt"
        labelmap = None
        if lm_member in files:
            labelmap = vm.parse_labelmap(
                per_image.read_text(source, lm_member), source.uri(lm_member)
            )
        entries = _scan_root(source, root, files)
        for n, group in enumerate(per_image.chunks(entries, options)):
            ctx = {"root": root, "labelmap": labelmap, "header": n == 0, "entries": group}
            tasks.append(ReadTask(NAME, source, context=ctx, options=options))
    return tasks


# -- reading ----------------------------------------------------------------------------


def read(task: ReadTask) -> Iterator[Batch]:
    ctx = task.context
    b = task.builder()
    labelmap = ctx["labelmap"] or vm.default_labelmap()
    if ctx["header"] and ctx["labelmap"]:
        for i, e in enumerate(labelmap):
            values = {"index": i, "color": list(e.color) if e.color else None}
            values |= {"parts": e.parts, "actions": e.actions}
            b.attributes(f"label:{e.name}", None, values, owner_kind="label", source="voc")
    reader = _ItemReader(task, b, labelmap)
    for it in ctx["entries"]:
        reader.read(it)
        if b.full():
            yield b.flush()
    yield b.flush()


def _bool(text: str | None) -> bool | str | None:
    if text is None:
        return None
    t = text.strip().lower()
    if t in ("1", "true", "yes"):
        return True
    if t in ("0", "false", "no", ""):
        return False
    return text


def _element_value(el: etree._Element) -> Any:
    """An element without a column: its text, or its children as a dict."""
    if len(el) == 0:
        return (el.text or "").strip()
    return {child.tag: _element_value(child) for child in el if isinstance(child.tag, str)}


class _ItemReader:
    def __init__(self, task: ReadTask, b: BatchBuilder, labelmap: list[vm.LabelEntry]) -> None:
        self.task = task
        self.b = b
        self.labelmap = labelmap
        self.index = {e.name: i for i, e in enumerate(labelmap)}
        self.root = task.context["root"]

    @cached_property
    def present(self) -> frozenset[str]:
        """The source's files, for images named by <filename> rather than by id."""
        return frozenset(self.task.source.files)

    def _label_id(self, label: str | None) -> str | None:
        return str(self.index[label]) if label in self.index else None

    def read(self, it: _Item) -> None:
        src = self.task.source
        item_id = "/".join(p for p in (self.root, it.id) if p)
        doc = None
        if it.xml or not src.is_dir:
            member = it.xml
            try:
                with src.open(member) as f:
                    doc = xmlsafe.parse(f, src.uri(member))
            except ParseError as exc:
                where = f"{member or src.name}: {exc.location}"
                self.b.reject(where, exc.reason, record_kind="items", native_id=it.id)
                return
            if doc.tag != "annotation":
                where = member or src.name
                reason = f"root element <{doc.tag}> is not a VOC <annotation>"
                self.b.reject(where, reason, record_kind="items", native_id=it.id)
                return
        meta: dict[str, Any] = {}
        file_name = xmlsafe.text(doc, "filename") if doc is not None else None
        image = it.image
        if not image and file_name and src.is_dir:
            cand = posixpath.join(self.root, "JPEGImages", file_name)
            image = cand if cand in self.present else ""
        file_name = file_name or (posixpath.basename(image) if image else it.id)
        size = self._size(doc, meta)
        if size is None:
            size, _ = per_image.find_size(src, image, [image, file_name], self.task.options)
        if doc is not None:
            for el in doc:
                if isinstance(el.tag, str) and el.tag not in _ITEM_KNOWN:
                    meta[el.tag] = _element_value(el)
        if len(it.sets) > 1 or (it.sets and not it.sets[0].startswith("Main/")):
            meta["image_sets"] = it.sets
        rows: list[dict[str, Any]] = []
        objects: dict[int, dict[str, Any]] = {}
        for n, obj in enumerate(doc.findall("object") if doc is not None else [], 1):
            row = self._object(rows, item_id, it.xml or src.name, n, obj)
            if row is not None:
                objects[n] = row
        self._masks(rows, item_id, it, objects)
        for cls, flag in it.tags:
            attrs = {("voc", "difficult"): True} if flag == 0 else {}
            rows.append({"ann_id": f"{item_id}/tag/{cls}", "kind": "tag", "label": cls})
            rows[-1]["_attrs"] = attrs
        self.b.item(
            item_id=item_id,
            native_id=it.id,
            file_name=file_name,
            media_uri=src.uri(image) if image else None,
            media_type="image",
            width=size[0] if size else None,
            height=size[1] if size else None,
            subset=it.subset,
            metadata=to_json(meta) if meta else None,
        )
        for row in rows:
            attrs = row.pop("_attrs")
            row.setdefault("label_id", self._label_id(row.get("label")))
            units = None if row["kind"] == "tag" else "px"
            self.b.annotation(item_id=item_id, units=units, **row)
            for (source, key), value in attrs.items():
                self.b.attribute(row["ann_id"], item_id, key, value, source=source)

    def _size(self, doc: etree._Element | None, meta: dict) -> tuple[int, int] | None:
        if doc is None:
            return None
        size = doc.find("size")
        if size is None:
            return None
        try:
            w = int(float(xmlsafe.text(size, "width", "0")))  # type: ignore[arg-type]
            h = int(float(xmlsafe.text(size, "height", "0")))  # type: ignore[arg-type]
        except ValueError:
            return None
        depth = xmlsafe.text(size, "depth")
        if depth:
            meta["depth"] = int(depth) if depth.isdigit() else depth
        return (w, h) if w > 0 and h > 0 else None

    def _box(self, el: etree._Element | None, where: str, record: Any) -> tuple | None:
        """(x, y, w, h) in 0-based pixels from a 1-based inclusive <bndbox>."""
        try:
            vals = [float(xmlsafe.text(el, k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[arg-type]
        except (TypeError, ValueError):
            reason = "no complete <bndbox> (xmin, ymin, xmax, ymax)"
            self.b.reject(where, reason, record=record, record_kind="annotations")
            return None
        xmin, ymin, xmax, ymax = vals
        if xmax < xmin or ymax < ymin:
            reason = "xmax < xmin or ymax < ymin"
            self.b.reject(where, reason, record=record, record_kind="annotations")
            return None
        return xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1

    def _object(
        self, rows: list, item_id: str, xml: str, n: int, obj: etree._Element
    ) -> dict[str, Any] | None:
        where = f"{xml} object {n}"
        record = etree.tostring(obj, encoding="unicode")
        box = self._box(obj.find("bndbox"), where, record)
        if box is None:
            return None
        ann_id = f"{item_id}/{n}"
        attrs: dict[tuple[str, str], Any] = {}
        for key in ("pose", "truncated", "difficult"):
            value = xmlsafe.text(obj, key)
            if value is not None:
                attrs[("voc", key)] = value if key == "pose" else _bool(value)
        actions = obj.find("actions")
        for act in actions if actions is not None else []:
            if isinstance(act.tag, str):
                attrs[("voc_action", act.tag)] = _bool(act.text)
        for attr in obj.iterfind("attributes/attribute"):
            key = xmlsafe.text(attr, "name")
            if key:
                attrs[("voc_attribute", key)] = xmlsafe.text(attr, "value", "")
        for el in obj:
            if isinstance(el.tag, str) and el.tag not in _OBJECT_KNOWN:
                attrs[("voc", el.tag)] = _element_value(el)
        occluded = _bool(xmlsafe.text(obj, "occluded"))
        x, y, w, h = box
        row = {
            "ann_id": ann_id,
            "native_id": str(n),
            "kind": "bbox",
            "label": xmlsafe.text(obj, "name"),
        }
        row |= {"bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h, "_attrs": attrs}
        row["occluded"] = occluded if isinstance(occluded, bool) else None
        if isinstance(occluded, str):
            attrs[("voc", "occluded")] = occluded
        rows.append(row)
        for j, part in enumerate(obj.findall("part"), 1):
            pbox = self._box(part.find("bndbox"), f"{where} part {j}", record)
            if pbox is None:
                continue
            row["group_id"] = ann_id
            px, py, pw, ph = pbox
            part_row = {"ann_id": f"{ann_id}/part/{j}", "kind": "bbox", "group_id": ann_id}
            part_row |= {"label": xmlsafe.text(part, "name"), "_attrs": {}}
            part_row |= {"bbox_x": px, "bbox_y": py, "bbox_w": pw, "bbox_h": ph}
            rows.append(part_row)
        return row

    def _masks(self, rows: list, item_id: str, it: _Item, objects: dict[int, dict]) -> None:
        if not (it.seg_class or it.seg_object):
            return
        src = self.task.source
        colors = [e.color for e in self.labelmap]
        cls = obj = None
        if it.seg_class:
            with src.open(it.seg_class) as f:
                cls, _ = vm.read_indices(f, colors)
        if it.seg_object:
            with src.open(it.seg_object) as f:
                obj, _ = vm.read_indices(f, list(vm.colormap()))
        for seg in vm.segments(cls, obj):
            label = None
            if seg.index is not None:
                label = self._class_label(seg.index, it, rows)
                if label is None:
                    continue
            elif cls is None and seg.instance in objects:
                label = objects[seg.instance]["label"]
            if seg.instance is None:
                ann_id = f"{item_id}/class/{seg.index}"
                rows.append(self._mask_row(ann_id, None, label, seg.mask, None))
                continue
            inst = seg.instance
            group = objects[inst]["ann_id"] if inst in objects else None
            if group:
                objects[inst]["group_id"] = group
            rows.append(self._mask_row(f"{item_id}/mask/{inst}", str(inst), label, seg.mask, group))

    def _class_label(self, c: int, it: _Item, rows: list) -> str | None:
        if c < len(self.labelmap):
            return self.labelmap[c].name
        reason = f"class index {c} is not in the label map ({len(self.labelmap)} labels)"
        self.b.reject(it.seg_class, reason, record_kind="annotations")
        return None

    def _mask_row(
        self, ann_id: str, native: str | None, label: str | None, m: np.ndarray, group: str | None
    ) -> dict:
        row = {"ann_id": ann_id, "native_id": native, "label": label, **lm.mask_fields(m)}
        del row["units"]  # set for every row when it is written
        return row | {"group_id": group, "_attrs": {}}


FORMAT = Format(
    name=NAME,
    description="Pascal VOC (Annotations/*.xml, ImageSets, labelmap.txt, segmentation PNGs); "
    "1-based pixel boxes",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=_voc_write.plan_write,
    write=_voc_write.write,
    boxes_suffice=lambda options: True,  # objects are boxes; masks come as masks
)
