"""Reading CVAT for images 1.1 and CVAT for video 1.1 XML.

Both are one document: `<annotations>` with `<version>`, `<meta>`, then either
`<image>` elements holding shapes (images) or `<track>` elements holding one
shape per frame (video). The file is streamed with `xmlsafe.iterparse` and each
child of the root is mapped as soon as it is complete, then freed.

- meta → dataset attributes (owner `dataset:<file stem>`, key `meta`: the
  task / job / project fields as JSON; key `version`) and label attributes
  (owner `label:<name>`: color, type, parent, svg, the attribute specs).
- image → item (`item_id` = "<subset>/<name>", made unique with `#n` when a
  project repeats a name); extra XML attributes (task_id, ...) → `metadata`.
- tracks → a video item (media_type video, size from `original_size`) and one
  item per frame (`parent_id` = the video); every shape of a track is one
  annotation on its frame with track_id, frame_index, keyframe and outside.
- `<attribute>` children → attributes with source "cvat"; XML attributes of a
  shape with no column → attributes with source "cvat_xml"; skeleton elements'
  own attributes → attributes owned by the point (pipelines/skeleton.py).
"""

from __future__ import annotations

import io
import math
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from pipelines import masks, xmlsafe
from pipelines.builder import BatchBuilder, to_json
from pipelines.formats._cvat_ranges import Range, Spliced
from pipelines.formats.base import ReadTask
from pipelines.grouping import given_before, unique_id
from pipelines.schema import Batch
from pipelines.skeleton import POINT_OWNER, point_owner, visibility

SHAPES = ("box", "polygon", "polyline", "points", "cuboid", "ellipse", "mask", "skeleton")
TOP_LEVEL = ("version", "meta", "image", "track", "tag")
LIST_TAGS = {"labels": "label", "attributes": "attribute", "segments": "segment", "tasks": "task"}
"""Meta elements that hold a list of like children (an empty one is still a list)."""
CUBOID_CORNERS = ("tl1", "bl1", "tr1", "br1", "tl2", "bl2", "tr2", "br2")
"""CVAT's cuboid point order: the front face, then the rear face."""
ATTR_SOURCE = "cvat"
XML_SOURCE = "cvat_xml"
_KINDS = {
    "box": "bbox",
    "polygon": "polygon",
    "polyline": "polyline",
    "points": "points",
    "cuboid": "cuboid_2d",
    "ellipse": "ellipse",
    "mask": "mask",
    "skeleton": "keypoints",
    "tag": "tag",
}
_STEP = re.compile(r"step\s*=\s*(\d+)")
_FLAGS = ("occluded", "outside", "keyframe")
_ELEMENT_COMMON = {"label", "points", "outside", "occluded", "frame", "id"}


class _Bad(Exception):
    """A record that cannot be mapped; the message is the reject reason."""


class _Node:
    """A detached copy of an element the streaming parser is about to free."""

    __slots__ = ("attrib", "children", "sourceline", "tag", "text")

    def __init__(self, el: Any) -> None:
        self.tag = el.tag
        self.attrib = dict(el.attrib)
        self.text = el.text
        self.sourceline = el.sourceline
        self.children = [_Node(c) for c in el if isinstance(c.tag, str)]

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrib.get(key, default)

    def items(self) -> list[tuple[str, str]]:
        return list(self.attrib.items())

    def __iter__(self) -> Iterator[_Node]:
        return iter(self.children)


def top_level(
    f: IO[bytes], uri: str, line: Callable[[int], int] | None = None
) -> Iterator[tuple[Any, list]]:
    """Each child of the root with its children, nested matches folded back in.

    `tag` (inside an image) and `track` (inside a skeleton track) are also
    top-level names, so the parser reports them on their own and frees them
    with their earlier siblings; those are copied first and handed over with
    their top-level element.
    """
    held: list[Any] = []
    last = None
    for el in xmlsafe.iterparse(f, uri, TOP_LEVEL, line):
        parent = el.getparent()
        if parent is None:
            continue
        if parent.getparent() is not None:
            for sib in parent:
                if sib is el:
                    break
                if sib is not last and isinstance(sib.tag, str):
                    held.append(_Node(sib))
            held.append(_Node(el))
            last = el
            continue
        children = held + [c for c in el if c is not last and isinstance(c.tag, str)]
        held, last = [], None
        yield el, children


def meta_object(el: Any) -> Any:
    """A meta element as plain JSON: text for leaves, lists for LIST_TAGS, dicts otherwise."""
    kids = [c for c in el if isinstance(c.tag, str)]
    if el.tag in LIST_TAGS:
        return [meta_object(c) for c in kids]
    if not kids:
        return (el.text or "").strip()
    out: dict[str, Any] = {}
    for c in kids:
        value = meta_object(c)
        if c.tag in out:
            prev = out[c.tag]
            out[c.tag] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[c.tag] = value
    return out


def _float(a: dict, key: str) -> float:
    raw = a.pop(key, None)
    if raw is None:
        raise _Bad(f"missing {key}")
    try:
        v = float(raw)
    except ValueError:
        raise _Bad(f"{key}={raw!r} is not a number") from None
    if not math.isfinite(v):
        raise _Bad(f"{key}={raw!r} is not finite")
    return v


def _floats(a: dict, keys: tuple[str, ...]) -> list[float]:
    """Several numbers at once; the one-by-one path only to name what is wrong."""
    try:
        values = [float(a[k]) for k in keys]
    except (KeyError, ValueError):
        values = []
    if len(values) != len(keys) or not all(map(math.isfinite, values)):
        return [_float(a, k) for k in keys]
    for k in keys:
        del a[k]
    return values


def _int(raw: str | None, key: str) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not v.is_integer():
        raise _Bad(f"{key}={raw!r} is not an integer")
    return int(v)


def _flag(raw: str | None) -> bool | None:
    return None if raw is None else raw.strip().lower() in ("1", "true")


def coords(text: str | None) -> list[float]:
    """CVAT's "x0,y0;x1,y1;..." as a flat list of floats."""
    if not text or not text.strip():
        raise _Bad("no points")
    out: list[float] = []
    for pair in text.strip().split(";"):
        xy = pair.split(",")
        if len(xy) != 2:
            raise _Bad(f"point {pair!r} is not x,y")
        try:
            x, y = float(xy[0]), float(xy[1])
        except ValueError:
            raise _Bad(f"point {pair!r} is not numeric") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise _Bad(f"point {pair!r} is not finite")
        out += (x, y)
    return out


def _attribute_children(el: Any) -> list[tuple[str, str]]:
    return [(c.get("name", ""), c.text or "") for c in el if c.tag == "attribute"]


@dataclass
class _Element:
    """One skeleton element at one frame: its XML attributes and its `<attribute>`s."""

    attrib: dict[str, str]
    attributes: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _Rows:
    """Everything one annotation gives, built before any of it is committed."""

    row: dict[str, Any]
    flat: list[float] | None = None
    named: list[dict[str, Any]] | None = None
    attrs: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    """(owner_id, owner_kind, key, value, source)"""


@dataclass
class _Video:
    item_id: str
    width: int | None
    height: int | None
    subset: str | None
    emitted: set[int] = field(default_factory=set)
    pending: set[int] = field(default_factory=set)
    ann_ids: set[str] = field(default_factory=set)


class CvatReader:
    def __init__(self, task: ReadTask) -> None:
        self.task = task
        self.b: BatchBuilder = task.builder()
        self.uri = task.uri
        name = task.member or task.source.name
        self.stem = posixpath.splitext(posixpath.basename(name))[0]
        self.base = posixpath.dirname(task.member)
        self.subset = None if self.stem.lower() == "annotations" else self.stem
        self.meta: dict[str, Any] = {}
        self.info: dict[str, Any] = {}
        self.ids: set[str] = set()
        self.numbered: dict[str, int] = {}  # `unique_id`'s last number for each name
        self.video: _Video | None = None
        self.images = 0
        self.tags = 0
        self._media: dict[str, str] | None = None
        self._frames: dict[str, str] | None = None
        self.part: Range | None = task.context.get("range")
        """A range of the file's images (`_cvat_ranges`), or None: the whole file."""
        self._repeats = self.part.repeats if self.part else ()

    def _line(self, el: Any) -> int:
        """The file's line of an element (a range's document has the head's lines
        before its own)."""
        return self._file_line(el.sourceline)

    def _file_line(self, line: int) -> int:
        part = self.part
        return line + part.lines - part.head_lines if part and line > part.head_lines else line

    @property
    def _records_head(self) -> bool:
        """Whether this task records the document's own attributes (version, meta,
        labels): the whole file's, or its first range's."""
        return self.part is None or self.part.start == self.part.head

    # -- the document -----------------------------------------------------------

    def batches(self) -> Iterator[Batch]:
        with self.task.source.open(self.task.member) as whole:
            f = io.BufferedReader(Spliced(whole, self.part)) if self.part else whole
            for el, children in top_level(f, self.uri, self._file_line):
                tag = el.tag
                if tag == "version" and self._records_head:
                    self.b.attribute(
                        self._dataset_owner,
                        None,
                        "version",
                        (el.text or "").strip(),
                        owner_kind="dataset",
                        source=ATTR_SOURCE,
                    )
                elif tag == "meta":
                    self._meta(el)
                elif tag == "image":
                    self._image(el, children)
                elif tag == "track":
                    yield from self._track(el, children)
                elif tag == "tag":
                    yield from self._frame_tag(el)
                if self.b.full():
                    yield self.b.flush()
        if self.video is None and not self.images and self.info.get("mode") == "interpolation":
            yield from self._ensure_video()
        if self.video is not None:
            for frame in sorted(self.video.pending):
                self._frame_item(frame)
                if self.b.full():
                    yield self.b.flush()
        yield self.b.flush()

    @property
    def _dataset_owner(self) -> str:
        return f"dataset:{self.stem}"

    def _meta(self, el: Any) -> None:
        meta = meta_object(el)
        if not isinstance(meta, dict):
            return
        self.meta = meta
        for kind in ("task", "job", "project"):
            if isinstance(meta.get(kind), dict):
                self.info = meta[kind]
                break
        if self.info.get("subset"):
            self.subset = self.info["subset"]
        if not self._records_head:
            return
        labels = self.info.get("labels", [])
        stored = {**meta}
        for kind in ("task", "job", "project"):
            if isinstance(stored.get(kind), dict):
                stored[kind] = {k: v for k, v in stored[kind].items() if k != "labels"}
        self.b.attribute(
            self._dataset_owner, None, "meta", stored, owner_kind="dataset", source=ATTR_SOURCE
        )
        for label in labels if isinstance(labels, list) else []:
            if not isinstance(label, dict) or not label.get("name"):
                continue
            props = {k: v for k, v in label.items() if k != "name"}
            props.setdefault("attributes", [])
            self.b.attributes(
                f"label:{label['name']}", None, props, owner_kind="label", source=ATTR_SOURCE
            )

    def _media_index(self) -> dict[str, str]:
        """Image files shipped beside the XML (images/...), by their path under images/."""
        if self._media is None:
            self._media = {}
            if self.task.source.is_dir:
                prefix = posixpath.join(self.base, "images") + "/"
                for rel in self.task.source.files:
                    if rel.startswith(prefix):
                        self._media[rel[len(prefix) :]] = rel
        return self._media

    # -- images -----------------------------------------------------------------

    def _image(self, el: Any, children: list) -> None:
        b = self.b
        a = dict(el.attrib)
        where = f"line {self._line(el)}: <image>"
        name = a.pop("name", None)
        native = a.pop("id", None)
        subset = a.pop("subset", None) or self.subset
        try:
            width = _int(a.pop("width", None), "width")
            height = _int(a.pop("height", None), "height")
            if not (name or native):
                raise _Bad("image without name or id")
        except _Bad as exc:
            b.reject(where, str(exc), record=dict(el.attrib), record_kind="items", native_id=native)
            for child in children:
                if child.tag in SHAPES or child.tag == "tag":
                    b.reject(
                        f"line {self._line(child)}: <{child.tag}>",
                        "its image was rejected",
                        record=dict(child.attrib),
                        record_kind="annotations",
                    )
            return
        name = name or native
        self.images += 1
        if self._repeats:
            self._given_before()
        item_id = unique_id(f"{subset}/{name}" if subset else name, self.ids, self.numbered)
        media = self._media_index()
        member = media.get(name) or (media.get(f"{subset}/{name}") if subset else None)
        b.item(
            item_id=item_id,
            native_id=native,
            file_name=name,
            media_uri=self.task.source.uri(member) if member else None,
            media_type="image",
            width=width,
            height=height,
            subset=subset,
            metadata=to_json(a) if a else None,
        )
        n = 0
        for child in children:
            if child.tag in SHAPES or child.tag == "tag":
                self._annotation(child, item_id, f"{item_id}/{n}", (width, height))
                n += 1

    def _given_before(self) -> None:
        """The ids that images before this range gave the names it repeats (`Range.repeats`),
        now that the document's subset is known."""
        for subset, name, count in self._repeats:
            subset = subset or self.subset
            given_before(self.ids, self.numbered, f"{subset}/{name}" if subset else name, count)
        self._repeats = ()

    # -- one shape ----------------------------------------------------------------

    def _annotation(
        self,
        el: Any,
        item_id: str,
        ann_id: str,
        size: tuple[int | None, int | None],
        track: dict[str, str] | None = None,
        elements: list[_Element] | None = None,
    ) -> None:
        try:
            rows = self._shape(el, item_id, ann_id, size, track, elements)
        except _Bad as exc:
            self.b.reject(
                f"line {self._line(el)}: <{el.tag}>",
                str(exc),
                record=dict(el.attrib),
                native_id=(track or {}).get("id"),
                record_kind="annotations",
            )
            return
        b = self.b
        b.annotation(**rows.row)
        if rows.flat:
            b.points(ann_id, item_id, rows.flat)
        if rows.named:
            b.named_points(ann_id, item_id, rows.named)
        frame = rows.row.get("frame_index")
        for owner, kind, key, value, source in rows.attrs:
            b.attribute(
                owner,
                item_id,
                key,
                value,
                owner_kind=kind,
                source=source,
                frame_index=frame if source == ATTR_SOURCE else None,
            )

    def _shape(
        self,
        el: Any,
        item_id: str,
        ann_id: str,
        size: tuple[int | None, int | None],
        track: dict[str, str] | None,
        elements: list[_Element] | None,
    ) -> _Rows:
        tag = el.tag
        a = dict(el.items()) if track is None else {**track, **dict(el.items())}
        whole = dict(a) if tag == "skeleton" else a
        track_id = a.pop("id", None) if track else a.pop("track_id", None)
        # Only the columns the shape states: fewer keys make the rows cheaper to build.
        row: dict[str, Any] = {
            "ann_id": ann_id,
            "item_id": item_id,
            "kind": _KINDS[tag],
            "units": "px",
        }
        label = a.pop("label", None)
        if label:
            row["label"] = label
        if track_id is not None:
            row["track_id"] = track_id
        for key in _FLAGS:
            value = a.pop(key, None)
            if value is not None:
                row[key] = _flag(value)
        for key, column in (("frame", "frame_index"), ("z_order", "z_order")):
            value = a.pop(key, None)
            if value is not None:
                row[column] = int(value) if value.isdigit() else _int(value, key)
        group = a.pop("group_id", None)
        if group:
            row["group_id"] = group
        source = a.pop("source", None)
        if source is not None:
            row["manual"] = source == "manual"
            if source != "manual":
                a["source"] = source
        rows = _Rows(row)
        if tag == "box":
            x0, y0, x1, y1 = _floats(a, ("xtl", "ytl", "xbr", "ybr"))
            row.update(bbox_x=x0, bbox_y=y0, bbox_w=x1 - x0, bbox_h=y1 - y0)
            self._rotation(a, row, "rotated_bbox")
        elif tag == "ellipse":
            cx, cy, rx, ry = _floats(a, ("cx", "cy", "rx", "ry"))
            row.update(bbox_x=cx - rx, bbox_y=cy - ry, bbox_w=2 * rx, bbox_h=2 * ry)
            self._rotation(a, row, "ellipse")
        elif tag in ("polygon", "polyline", "points"):
            rows.flat = coords(a.pop("points", None))
        elif tag == "cuboid":
            rows.named = [
                {"x": _float(a, f"x{c}"), "y": _float(a, f"y{c}"), "name": c}
                for c in CUBOID_CORNERS
            ]
        elif tag == "mask":
            self._mask(a, row, size)
        elif tag == "skeleton":
            a.pop("points", None)
            if a.get("rotation") in ("0", "0.0", "0.00", ""):
                a.pop("rotation")
            rows.named = self._elements(el, whole, ann_id, rows, elements)
        for key, value in a.items():
            rows.attrs.append((ann_id, "annotation", key, value, XML_SOURCE))
        for key, value in _attribute_children(el):
            rows.attrs.append((ann_id, "annotation", key, value, ATTR_SOURCE))
        return rows

    @staticmethod
    def _rotation(a: dict, row: dict, kind: str) -> None:
        if a.get("rotation") is None:
            return
        angle = _float(a, "rotation")
        if angle:
            row["angle_deg"] = angle
            row["kind"] = kind

    @staticmethod
    def _mask(a: dict, row: dict, size: tuple[int | None, int | None]) -> None:
        width, height = size
        if not (width and height):
            raise _Bad("a mask needs the image size, which this image lacks")
        left, top, w, h = (_int(a.pop(k, None), k) for k in ("left", "top", "width", "height"))
        rle = a.pop("rle", None)
        if None in (left, top, w, h) or not rle:
            raise _Bad("mask needs rle, left, top, width and height")
        try:
            runs = [int(v) for v in rle.split(",")]
            sub = masks.from_runs(runs, h, w, order="C")
        except ValueError as exc:
            raise _Bad(f"mask rle: {exc}") from None
        counts, area = masks.encode_placed(sub, left, top, height, width)
        row.update(
            mask=counts,
            mask_h=height,
            mask_w=width,
            bbox_x=float(left),
            bbox_y=float(top),
            bbox_w=float(w),
            bbox_h=float(h),
            area=float(area),
        )

    @staticmethod
    def _elements(
        el: Any, whole: dict, ann_id: str, rows: _Rows, given: list[_Element] | None
    ) -> list[dict[str, Any]]:
        """The skeleton's points; what an element states differently from it is kept."""
        if given is None:
            given = [
                _Element(dict(c.attrib), _attribute_children(c)) for c in el if c.tag in SHAPES
            ]
        out = []
        for idx, element in enumerate(given):
            ea = element.attrib
            xy = coords(ea.get("points"))
            out.append(
                {
                    "x": xy[0],
                    "y": xy[1],
                    "name": ea.get("label") or None,
                    "visibility": visibility(
                        bool(_flag(ea.get("outside"))), bool(_flag(ea.get("occluded")))
                    ),
                }
            )
            owner = point_owner(ann_id, idx)
            for key, value in ea.items():
                if key not in _ELEMENT_COMMON and whole.get(key) != value:
                    rows.attrs.append((owner, POINT_OWNER, key, value, XML_SOURCE))
            for key, value in element.attributes:
                rows.attrs.append((owner, POINT_OWNER, key, value, ATTR_SOURCE))
        return out

    # -- video ------------------------------------------------------------------

    def _task_frames(self) -> list[int]:
        info = self.info
        try:
            start = int(info.get("start_frame") or 0)
            stop = int(info["stop_frame"]) if info.get("stop_frame") not in (None, "") else None
            size = int(info["size"]) if info.get("size") not in (None, "") else None
        except (TypeError, ValueError):
            return []
        m = _STEP.search(info.get("frame_filter") or "") if isinstance(info, dict) else None
        step = max(1, int(m.group(1))) if m else 1
        if stop is not None:
            frames = range(start, stop + 1, step)
            return list(frames[:size] if size is not None else frames)
        return list(range(start, start + size * step, step)) if size is not None else []

    def _ensure_video(self) -> Iterator[Batch]:
        if self.video is not None:
            return
        info = self.info
        source = self.meta.get("source") if isinstance(self.meta.get("source"), str) else None
        name = source or info.get("name") or self.stem
        orig = info.get("original_size") if isinstance(info.get("original_size"), dict) else {}
        try:
            width = _int(orig.get("width"), "width")
            height = _int(orig.get("height"), "height")
        except _Bad:
            width = height = None
        vid = unique_id(f"{self.subset}/{name}" if self.subset else name, self.ids)
        self.video = _Video(vid, width, height, self.subset)
        self.b.item(
            item_id=vid,
            native_id=info.get("id") or None,
            file_name=source,
            media_type="video",
            width=width,
            height=height,
            subset=self.subset,
        )
        for frame in self._task_frames():
            self._frame_item(frame)
            if self.b.full():
                yield self.b.flush()

    def _frame_id(self, frame: int) -> str:
        v = self.video
        assert v is not None
        if frame not in v.emitted:
            v.pending.add(frame)
        return f"{v.item_id}/frame_{frame:06d}"

    def _frame_item(self, frame: int) -> None:
        v = self.video
        assert v is not None
        if frame in v.emitted:
            return
        v.emitted.add(frame)
        v.pending.discard(frame)
        if self._frames is None:
            self._frames = {posixpath.splitext(k)[0]: m for k, m in self._media_index().items()}
        stem = f"frame_{frame:06d}"
        member = self._frames.get(stem)
        item_id = f"{v.item_id}/{stem}"
        self.ids.add(item_id)
        self.b.item(
            item_id=item_id,
            parent_id=v.item_id,
            sequence_id=v.item_id,
            native_id=str(frame),
            file_name=posixpath.basename(member) if member else f"{stem}.png",
            media_uri=self.task.source.uri(member) if member else None,
            media_type="image",
            width=v.width,
            height=v.height,
            frame_index=frame,
            subset=v.subset,
        )

    def _frame_ann_id(self, base: str) -> str:
        v = self.video
        assert v is not None
        return unique_id(base, v.ann_ids)

    def _track(self, el: Any, children: list) -> Iterator[Batch]:
        yield from self._ensure_video()
        v = self.video
        assert v is not None
        attrs = dict(el.attrib)
        attrs.setdefault("id", str(len(v.ann_ids)))
        shapes = [c for c in children if c.tag in SHAPES]
        subtracks = [c for c in children if c.tag == "track"]
        for shape in shapes:
            try:
                frame = _int(shape.get("frame"), "frame")
                if frame is None:
                    raise _Bad("track shape without a frame")
            except _Bad as exc:
                self.b.reject(
                    f"line {self._line(shape)}: <{shape.tag}>",
                    str(exc),
                    record=dict(shape.attrib),
                    native_id=attrs["id"],
                    record_kind="annotations",
                )
                continue
            item_id = self._frame_id(frame)
            ann_id = self._frame_ann_id(f"{v.item_id}/track{attrs['id']}/{frame}")
            elements = _old_style_elements(shape, subtracks, frame) if subtracks else None
            self._annotation(shape, item_id, ann_id, (v.width, v.height), attrs, elements)
            if self.b.full():
                yield self.b.flush()

    def _frame_tag(self, el: Any) -> Iterator[Batch]:
        yield from self._ensure_video()
        v = self.video
        assert v is not None
        try:
            frame = _int(el.get("frame"), "frame")
            if frame is None:
                raise _Bad("tag without a frame outside any image")
        except _Bad as exc:
            self.b.reject(
                f"line {self._line(el)}: <tag>",
                str(exc),
                record=dict(el.attrib),
                record_kind="annotations",
            )
            return
        self.tags += 1
        ann_id = self._frame_ann_id(f"{v.item_id}/tag{self.tags}")
        self._annotation(el, self._frame_id(frame), ann_id, (v.width, v.height))


def _old_style_elements(shape: Any, subtracks: list, frame: int) -> list[_Element]:
    """A skeleton's elements at `frame` when they are nested tracks (CVAT before 2.4).

    An element with no shape at this frame keeps the state of its latest
    earlier shape (CVAT's track semantics), at the position the skeleton's own
    `points` list gives for it.
    """
    try:
        listed = coords(shape.get("points"))
    except _Bad:
        listed = []
    out = []
    for i, sub in enumerate(subtracks):
        sub_attrs = {k: v for k, v in sub.attrib.items() if k != "id"}
        by_frame = {}
        for s in sub:
            if s.tag in SHAPES and s.get("frame") is not None:
                by_frame[int(float(s.get("frame")))] = s
        here = by_frame.get(frame)
        if here is not None:
            out.append(_Element({**sub_attrs, **here.attrib}, _attribute_children(here)))
            continue
        before = [f for f in by_frame if f < frame]
        state = by_frame[max(before)].attrib if before else {"outside": "1"}
        xy = listed[2 * i : 2 * i + 2] or coords(state.get("points", "0,0"))
        out.append(
            _Element(
                {
                    **sub_attrs,
                    "outside": state.get("outside", "0"),
                    "occluded": state.get("occluded", "0"),
                    "keyframe": "0",
                    "points": f"{xy[0]},{xy[1]}",
                }
            )
        )
    return out


def read(task: ReadTask) -> Iterator[Batch]:
    yield from CvatReader(task).batches()
