"""Writing CVAT for images 1.1 / CVAT for video 1.1 XML, one file per subset.

A subset that is the frames of exactly one video is written as CVAT for video
(every track_id becomes a `<track>`, other shapes become one-shape tracks);
anything else as CVAT for images, where outside shapes of tracks cannot be
expressed and are skipped. The meta is the one read from CVAT when there is
one (dataset attribute `meta`), with the labels rebuilt from label attributes
and from what the annotations use. The XML is written incrementally; a subset
of images is split into runs of items written by parallel tasks as fragments of
the file, joined by the last to finish (`_fragments.py`), with image ids and
names decided by the items before each run. In video mode the shapes of each
track are held until the subset is done, because a track gathers shapes from
every frame: one task writes it.
"""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from lxml import etree

from pipelines import masks
from pipelines.builder import parse_attribute
from pipelines.formats._cvat_read import ATTR_SOURCE, CUBOID_CORNERS, LIST_TAGS, XML_SOURCE
from pipelines.formats._fragments import (
    even_bounds,
    part_count,
    part_run,
    part_tasks,
    write_joined,
)
from pipelines.formats.base import WriteOptions, WriteResult, WriteTask
from pipelines.grouping import IntGroups
from pipelines.numtext import fixed, fixed_rows
from pipelines.skeleton import flags, point_owner
from pipelines.staging import ItemGroup, Staging

_TRACK_LEVEL = ("label", "source", "group_id", "task_id", "subset")
_NOT_WRITTEN = "annotations with no CVAT shape not written ({kind})"


def _num(v: float) -> str:
    return fixed(v, trim=True)


def _vertex_text(vertices: pa.RecordBatch) -> pa.Array:
    return fixed_rows([vertices.column("x"), vertices.column("y")], ",", trim=True)


_POINTS = {
    "point_columns": ("part", "idx", "x", "y", "name", "visibility"),
    "part_kinds": ("polygon", "polyline", "points", "point"),
    "point_text": _vertex_text,
}
"""Skeletons and cuboids read their vertices one by one; the other shapes their parts'
"x,y;x,y..." spelt a whole batch at a time (`fixed_rows`): a dict and two formatted numbers
per vertex were half the writer's time (staging 200 MB → CVAT XML)."""


def _flag(v: bool | None, default: str | None = None) -> str | None:
    return default if v is None else ("1" if v else "0")


@dataclass
class Shape:
    """One XML shape element to write: tag, XML attributes, `<attribute>`s, sub-elements."""

    tag: str
    attrib: dict[str, str]
    attributes: list[tuple[str, str]] = field(default_factory=list)
    elements: list[Shape] = field(default_factory=list)

    def element(self, extra: dict[str, str] | None = None) -> etree._Element:
        el = etree.Element(self.tag, {**self.attrib, **(extra or {})})
        for sub in self.elements:
            el.append(sub.element())
        for name, value in self.attributes:
            etree.SubElement(el, "attribute", name=name).text = value
        return el


# -- plan ------------------------------------------------------------------------


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    """One task per subset, or, for a subset of images, one per run of its items (each
    writes its `<image>` elements as fragments; the last to finish joins the file)."""
    subsets = staging.subset_sizes() or {None: 0}
    tasks = []
    for subset, items in subsets.items():
        name = "annotations.xml" if len(subsets) == 1 else f"{subset or 'default'}.xml"
        video = _one_video(staging, subset)
        parts = 1 if video is not None else part_count(items, options.workers)
        bounds = even_bounds(items, parts)
        tasks += part_tasks("cvat", subset, options, bounds, cvat_file=name, _video=video)
    return tasks


_SUBSET = "subset IS NOT DISTINCT FROM ?"
_REPLAY_ROWS = 65_536


# -- what the whole dataset says --------------------------------------------------


def _stored_meta(staging: Staging) -> dict[str, Any]:
    row = staging.con.execute(
        "SELECT value, value_type FROM attributes WHERE owner_kind = 'dataset' AND key = 'meta' "
        f"AND source = '{ATTR_SOURCE}' ORDER BY filename, file_row_number LIMIT 1"
    ).fetchone()
    meta = parse_attribute(*row) if row else None
    return meta if isinstance(meta, dict) else {}


def _labels(staging: Staging) -> list[dict[str, Any]]:
    """Label specs: CVAT's own where read from CVAT, completed from what annotations use."""
    labels: dict[str, dict[str, Any]] = {}
    for owner, key, value, vtype, source in staging.con.execute(
        "SELECT owner_id, key, value, value_type, source FROM attributes "
        "WHERE owner_kind = 'label' ORDER BY filename, file_row_number"
    ).fetchall():
        name = owner.removeprefix("label:")
        spec = labels.setdefault(name, {"name": name})
        v = parse_attribute(value, vtype)
        if source == ATTR_SOURCE or (key == "color" and isinstance(v, str) and v[:1] == "#"):
            spec.setdefault(key, v)
        elif key == "parent" and isinstance(v, str) and v:
            spec.setdefault("parent", v)
    for label, _ in staging.labels():
        labels.setdefault(label, {"name": label})
    for label, key in staging.con.execute(
        "SELECT a.label, t.key FROM attributes t JOIN annotations a ON t.owner_id = a.ann_id "
        f"WHERE t.owner_kind = 'annotation' AND t.source IS DISTINCT FROM '{XML_SOURCE}' "
        "AND a.label IS NOT NULL GROUP BY 1, 2 ORDER BY min(t.filename), min(t.file_row_number)"
    ).fetchall():
        specs = labels[label].setdefault("attributes", [])
        if isinstance(specs, list) and key not in {s.get("name") for s in specs}:
            specs.append(
                {
                    "name": key,
                    "mutable": "False",
                    "input_type": "text",
                    "default_value": "",
                    "values": "",
                }
            )
    for label, name, idx in staging.con.execute(
        "SELECT a.label, p.name, min(p.idx) FROM points p JOIN annotations a USING (ann_id) "
        "WHERE a.kind = 'keypoints' AND a.label IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 3"
    ).fetchall():
        labels[label].setdefault("type", "skeleton")
        sub = name or str(idx + 1)
        spec = labels.setdefault(sub, {"name": sub, "type": "points"})
        spec.setdefault("parent", label)
    for spec in labels.values():
        spec.setdefault("attributes", [])
    return list(labels.values())


def _to_xml(tag: str, value: Any) -> etree._Element:
    el = etree.Element(tag)
    if isinstance(value, list) and tag in LIST_TAGS:
        for v in value:
            el.append(_to_xml(LIST_TAGS[tag], v))
    elif isinstance(value, dict):
        for key, v in value.items():
            for one in v if isinstance(v, list) and key not in LIST_TAGS else [v]:
                el.append(_to_xml(key, one))
    elif value is not None:
        el.text = str(value)
    return el


def _meta(staging: Staging, mode: str, video: dict[str, Any] | None) -> etree._Element:
    meta = _stored_meta(staging)
    labels = _labels(staging)
    kind = next((k for k in ("task", "job", "project") if isinstance(meta.get(k), dict)), None)
    if kind is None:
        kind, meta = "task", {"task": {"name": staging.scalar("SELECT min(dataset) FROM items")}}
        info = meta["task"]
        info["mode"] = mode
        if video is not None:
            info.update(video)
    meta[kind] = {**meta[kind], "labels": labels}
    return _to_xml("meta", meta)


# -- one annotation -----------------------------------------------------------------


class _Shapes:
    """Turns staged annotation rows into CVAT shapes, recording what cannot be written."""

    def __init__(self, result: WriteResult, video: bool) -> None:
        self.result = result
        self.video = video

    def common(self, ann: dict, attrs: list[dict], group: int) -> tuple[dict[str, str], list]:
        a: dict[str, str] = {"label": ann.get("label") or ""}
        xml = {r["key"]: r["value"] or "" for r in attrs if r["source"] == XML_SOURCE}
        if "source" in xml:
            a["source"] = xml.pop("source")
        elif ann.get("manual") is not None:
            a["source"] = "manual" if ann["manual"] else "auto"
        for key, value in (
            ("occluded", _flag(ann.get("occluded"))),
            ("z_order", None if ann.get("z_order") is None else str(ann["z_order"])),
            ("group_id", str(group) if group else None),
        ):
            if value is not None:
                a[key] = value
        if not self.video:
            if ann.get("track_id") is not None:
                a["track_id"] = str(ann["track_id"])
            if ann.get("keyframe") is not None:
                a["keyframe"] = _flag(ann["keyframe"])
        a.update(xml)
        user = [(r["key"], r["value"] or "") for r in attrs if _user_source(r["source"])]
        return a, user

    def shapes(self, ann: dict, group: ItemGroup, groups: IntGroups) -> list[Shape]:
        kind = ann.get("kind")
        pts = group.points.get(ann["ann_id"], [])
        rings = group.parts.get(ann["ann_id"], {})
        attrs = group.attributes.get(ann["ann_id"], [])
        a, user = self.common(ann, attrs, groups.of(ann.get("group_id")))
        box = [ann.get(k) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")]
        if kind in ("bbox", "rotated_bbox", "ellipse") and None in box:
            self.result.lose(f"{kind} annotations without a box skipped")
            return []
        if kind in ("bbox", "rotated_bbox"):
            x, y, w, h = box
            a.update(xtl=_num(x), ytl=_num(y), xbr=_num(x + w), ybr=_num(y + h))
            if ann.get("angle_deg"):
                a["rotation"] = _num(ann["angle_deg"])
            return [Shape("box", a, user)]
        if kind == "ellipse":
            x, y, w, h = box
            a.update(cx=_num(x + w / 2), cy=_num(y + h / 2), rx=_num(w / 2), ry=_num(h / 2))
            if ann.get("angle_deg"):
                a["rotation"] = _num(ann["angle_deg"])
            return [Shape("ellipse", a, user)]
        if kind in ("polygon", "polyline", "points", "point"):
            return self._vertices(kind, a, user, rings)
        if kind == "keypoints":
            return [self._skeleton(ann, a, user, pts, group)]
        if kind == "cuboid_2d":
            return self._cuboid(a, user, pts)
        if kind == "mask":
            return self._mask(ann, a, user)
        if kind == "tag":
            return [Shape("tag", a, user)]
        self.result.lose(_NOT_WRITTEN.format(kind=kind))
        return []

    def _vertices(self, kind: str, a: dict, user: list, rings: dict[int, str]) -> list[Shape]:
        if not rings:
            self.result.lose(f"{kind} annotations without points skipped")
            return []
        tag = "points" if kind == "point" else kind
        if kind == "point":
            self.result.lose("single points written as CVAT points shapes")
        if kind == "points" or len(rings) == 1:
            return [Shape(tag, {**a, "points": ";".join(rings.values())}, user)]
        self.result.lose(f"multi-part {kind}s written as one {kind} per part")
        return [Shape(tag, {**a, "points": ring}, user) for ring in rings.values()]

    def _skeleton(self, ann: dict, a: dict, user: list, pts: list[dict], g: ItemGroup) -> Shape:
        elements = []
        for p in pts:
            outside, occluded = flags(p.get("visibility"))
            ea = {"label": p.get("name") or str(p["idx"] + 1)}
            if self.video:
                ea["keyframe"] = _flag(ann.get("keyframe"), "1")
            ea.update(
                outside=_flag(outside),
                occluded=_flag(occluded),
                points=f"{_num(p['x'])},{_num(p['y'])}",
            )
            if not self.video:
                ea["source"] = a.get("source", "manual")
            own = g.attributes.get(point_owner(ann["ann_id"], p["idx"]), [])
            ea.update({r["key"]: r["value"] or "" for r in own if r["source"] == XML_SOURCE})
            sub = [(r["key"], r["value"] or "") for r in own if r["source"] != XML_SOURCE]
            elements.append(Shape("points", ea, sub))
        return Shape("skeleton", a, user, elements)

    def _cuboid(self, a: dict, user: list, pts: list[dict]) -> list[Shape]:
        if len(pts) != 8:
            self.result.lose("cuboids without 8 points skipped")
            return []
        named = {p.get("name"): p for p in pts}
        ordered = [named[c] for c in CUBOID_CORNERS] if set(CUBOID_CORNERS) <= named.keys() else pts
        for corner, p in zip(CUBOID_CORNERS, ordered, strict=True):
            a[f"x{corner}"], a[f"y{corner}"] = _num(p["x"]), _num(p["y"])
        return [Shape("cuboid", a, user)]

    def _mask(self, ann: dict, a: dict, user: list) -> list[Shape]:
        h, w = ann.get("mask_h"), ann.get("mask_w")
        if not ann.get("mask") or not h or not w:
            self.result.lose("masks without an image size skipped")
            return []
        box = _mask_box(ann, h, w)
        if box is None:
            self.result.lose("empty masks skipped")
            return []
        left, top, bw, bh = box
        crop = masks.decode_box(ann["mask"], h, w, box)
        runs = masks.runs(crop.ravel(order="C"))
        a.update(
            rle=", ".join(str(r) for r in runs),
            left=str(left),
            top=str(top),
            width=str(bw),
            height=str(bh),
        )
        return [Shape("mask", a, user)]


def _user_source(source: str | None) -> bool:
    """Attributes that mean something, not how some format laid a value out."""
    return source != XML_SOURCE and not (source or "").endswith("_layout")


def _mask_box(ann: dict, h: int, w: int) -> tuple[int, int, int, int] | None:
    """The stated box when it is whole pixels inside the image and holds every set
    pixel, else the tight one; None for an empty mask. From the RLE alone: summing
    and searching the decoded image took 1.1 s of the 3.8 s the 5,608 masks of
    staging 200 MB cost the writer."""
    tx, ty, tw, th = masks.box(ann["mask"], h, w)
    if not tw:
        return None
    box = [ann.get(k) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h")]
    if None not in box and all(float(v).is_integer() for v in box):
        x, y, bw, bh = (int(v) for v in box)
        inside = x >= 0 and y >= 0 and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
        if inside and x <= tx and y <= ty and tx + tw <= x + bw and ty + th <= y + bh:
            return x, y, bw, bh
    return tx, ty, tw, th


# -- one file -----------------------------------------------------------------------


def write(task: WriteTask, staging: Staging, out: Any) -> WriteResult:
    result = WriteResult()
    extra = task.options.extra
    name = extra.get("cvat_file", "annotations.xml")
    video = extra["_video"]  # found when planning
    if video is None:
        return _write_images(task, staging, out, name, result)
    groups = staging.iter_items(subset=task.subset, all_subsets=False, **_POINTS)
    with out.open(name, "wb") as f, etree.xmlfile(f, encoding="utf-8") as xf:
        xf.write_declaration()
        with xf.element("annotations"):
            xf.write("\n  ")
            xf.write(_to_xml("version", "1.1"))
            xf.write("\n  ")
            _write_video(xf, staging, groups, video, result)
            xf.write("\n")
    result.files.append(name)
    return result


def _write_images(
    task: WriteTask, staging: Staging, out: Any, name: str, result: WriteResult
) -> WriteResult:
    """CVAT for images: this task's run of the subset's items as `<image>` elements,
    straight into the file when it is the only task, else as its fragment."""
    first, last = part_run(task)
    names = _ImageNames()
    columns = ("item_id", "native_id", "file_name", "media_type")
    before = staging.con.cursor().execute(  # the items before this run decide its ids and names
        f"SELECT {', '.join(columns)} FROM items "
        f"WHERE {_SUBSET} ORDER BY filename, file_row_number LIMIT ?",
        [task.subset, first],
    )
    while rows := before.fetchmany(_REPLAY_ROWS):
        for row in rows:
            names.assign(dict(zip(columns, row, strict=True)))
    groups = staging.iter_items(
        subset=task.subset, all_subsets=False, positions=(first, last), **_POINTS
    )
    joined = write_joined(
        task, out, name, _images(groups, names, result), lambda: _skeleton(staging)
    )
    if joined is not None:
        result.files.append(name)
    return result


_MARK = b"<!--images-->"


def _skeleton(staging: Staging) -> tuple[bytes, bytes]:
    """The file's bytes before and after its `<image>` elements."""
    buf = io.BytesIO()
    with etree.xmlfile(buf, encoding="utf-8") as xf:
        xf.write_declaration()
        with xf.element("annotations"):
            xf.write("\n  ")
            xf.write(_to_xml("version", "1.1"))
            xf.write("\n  ")
            xf.write(_meta(staging, "annotation", None), pretty_print=True)
            xf.write(etree.Comment(_MARK[4:-3].decode()))
            xf.write("\n")
    head, tail = buf.getvalue().split(_MARK)
    return head, tail


class _ImageNames:
    """Image ids and names as CVAT needs them, unique in the file: an item's own
    integer id and file name unless an earlier item took them."""

    def __init__(self) -> None:
        self.used_ids: set[int] = set()
        self.used_names: set[str] = set()
        self.next_id = 0

    def assign(self, item: dict[str, Any]) -> tuple[int, str] | None:
        """(id, name) of the item's image; None for a video item (not written)."""
        if item.get("media_type") == "video":
            return None
        native = item.get("native_id")
        if native is not None and native.isdigit() and int(native) not in self.used_ids:
            image_id = int(native)
        else:
            while self.next_id in self.used_ids:
                self.next_id += 1
            image_id = self.next_id
        self.used_ids.add(image_id)
        name = item.get("file_name") or native or item["item_id"]
        if name in self.used_names:
            name = item["item_id"]
        self.used_names.add(name)
        return image_id, name


def _images(groups: Iterable[ItemGroup], names: _ImageNames, result) -> Iterator[bytes]:
    shapes = _Shapes(result, video=False)
    for g in groups:
        item = g.item
        assigned = names.assign(item)
        if assigned is None:
            result.lose("video items not written (CVAT for images holds their frames)")
            continue
        image_id, name = assigned
        attrib = {"id": str(image_id), "name": name}
        if item.get("subset") is not None:
            attrib["subset"] = item["subset"]
        if item.get("source_format") == "cvat":
            for key, value in _scalar_metadata(item.get("metadata")).items():
                attrib.setdefault(key, value)
        if item.get("width") is not None and item.get("height") is not None:
            attrib["width"], attrib["height"] = str(item["width"]), str(item["height"])
        if g.attributes.get(item["item_id"]):
            result.lose("item attributes not written (CVAT images have none)")
        el = etree.Element("image", attrib)
        groups = IntGroups(a.get("group_id") for a in g.annotations)
        for ann in g.annotations:
            if ann.get("outside"):
                result.lose("outside track shapes skipped (CVAT for images has no outside)")
                continue
            made = shapes.shapes(ann, g, groups)
            for shape in made:
                el.append(shape.element())
            result.annotations += 1 if made else 0
        yield etree.tostring(el, pretty_print=True, encoding="utf-8")
        result.items += 1


def _scalar_metadata(text: str | None) -> dict[str, str]:
    """Extra image attributes (task_id, ...) that the reader kept in metadata."""
    value = parse_attribute(text, "json") if text else None
    if not isinstance(value, dict):
        return {}
    return {k: str(v) for k, v in value.items() if isinstance(v, (str, int, float))}


@dataclass
class _Track:
    attrib: dict[str, str]
    from_cvat: bool
    shapes: list[etree._Element] = field(default_factory=list)


def _one_video(staging: Staging, subset: str | None) -> tuple | None:
    """(id, file name, width, height) when the subset is the frames of one video, else None.

    The video is a video item, or, for sources that only number frames (MOT),
    the one sequence every item of the subset belongs to when there are tracks.
    """
    sql = "FROM items WHERE subset IS NOT DISTINCT FROM ?"
    videos = staging.con.execute(
        f"SELECT item_id, file_name, width, height {sql} AND media_type = 'video' "
        "ORDER BY filename, file_row_number",
        [subset],
    ).fetchall()
    if len(videos) == 1:
        return videos[0]
    if videos:
        return None
    seqs, loose, width, height = staging.con.execute(
        "SELECT count(DISTINCT coalesce(parent_id, sequence_id)), "
        "count(*) FILTER (WHERE coalesce(parent_id, sequence_id) IS NULL OR frame_index IS NULL),"
        f" max(width), max(height) {sql}",
        [subset],
    ).fetchone()
    tracked = staging.scalar(
        "SELECT count(*) FROM annotations a JOIN items i USING (item_id) "
        "WHERE i.subset IS NOT DISTINCT FROM ? AND a.track_id IS NOT NULL",
        [subset],
    )
    if seqs != 1 or loose or not tracked:
        return None
    seq = staging.scalar(f"SELECT any_value(coalesce(parent_id, sequence_id)) {sql}", [subset])
    return seq, None, width, height


def _write_video(xf: Any, staging: Staging, groups, video: tuple, result) -> None:
    video_id, file_name, width, height = video
    frames = staging.con.execute(
        "SELECT min(frame_index), max(frame_index), count(*) FROM items "
        "WHERE coalesce(parent_id, sequence_id) = ?",
        [video_id],
    ).fetchone()
    info: dict[str, Any] = {"size": str(frames[2] or 0)}
    if frames[0] is not None:
        info.update(start_frame=str(frames[0]), stop_frame=str(frames[1]))
    if width is not None and height is not None:
        info["original_size"] = {"width": str(width), "height": str(height)}
    meta = _meta(staging, "interpolation", info)
    if file_name and meta.find("source") is None:
        etree.SubElement(meta, "source").text = file_name
    xf.write(meta, pretty_print=True)
    shapes = _Shapes(result, video=True)
    tracks: dict[str, _Track] = {}
    tags: list[etree._Element] = []
    singles = 0
    for position, g in enumerate(groups):
        item = g.item
        if item["item_id"] == video_id:
            result.items += 1
            continue
        if video_id not in (item.get("parent_id"), item.get("sequence_id")):
            result.lose("items outside the video not written (CVAT for video)")
            continue
        result.items += 1
        frame = item.get("frame_index")
        frame = position if frame is None else frame
        groups = IntGroups(a.get("group_id") for a in g.annotations)
        for ann in g.annotations:
            made = shapes.shapes(ann, g, groups)
            if not made:
                continue
            result.annotations += 1
            if ann.get("kind") == "tag":
                tags.append(made[0].element({"frame": str(frame)}))
                continue
            key = ann.get("track_id")
            if key is None:
                singles += 1
                key = f"\0{singles}"
            for shape in made:
                _add_to_track(tracks, key, shape, ann, frame, item.get("source_format") == "cvat")
    if singles:
        result.lose("shapes without a track written as one-shape tracks", singles)
    numbered = sorted(
        zip(_track_ids(list(tracks)), tracks.values(), strict=True), key=lambda pair: int(pair[0])
    )
    frame_list = [
        r[0]
        for r in staging.con.execute(
            "SELECT DISTINCT frame_index FROM items WHERE coalesce(parent_id, sequence_id) = ? "
            "AND frame_index IS NOT NULL ORDER BY 1",
            [video_id],
        ).fetchall()
    ]
    for tid, track in numbered:
        el = etree.Element("track", {"id": tid, **track.attrib})
        el.extend(_closed(track, frame_list))
        xf.write(el, pretty_print=True)
    for el in tags:
        xf.write(el, pretty_print=True)


def _closed(track: _Track, frames: list[int]) -> list[etree._Element]:
    """The track's shapes in frame order, with an outside keyframe wherever it stops.

    In CVAT a track lasts until an outside keyframe: a shape followed by a gap
    (or, for tracks from other formats, by the end of the video) would
    otherwise be carried on to frames where the source had nothing. A track
    read from CVAT already says where it ends.
    """
    ordered = sorted(track.shapes, key=lambda el: int(el.get("frame")))
    following = dict(itertools.pairwise(frames))
    out = []
    for i, el in enumerate(ordered):
        out.append(el)
        nxt = following.get(int(el.get("frame")))
        if nxt is None or el.get("outside") == "1":
            continue
        if i + 1 < len(ordered):
            if int(ordered[i + 1].get("frame")) == nxt:
                continue
        elif track.from_cvat:
            continue
        gone = copy.deepcopy(el)
        gone.set("frame", str(nxt))
        gone.set("keyframe", "1")
        for part in (gone, *gone.findall("points")):
            part.set("outside", "1")
        out.append(gone)
    return out


def _add_to_track(
    tracks: dict[str, _Track], key: str, shape: Shape, ann: dict, frame: int, from_cvat: bool
) -> None:
    attrib = dict(shape.attrib)
    level = {k: attrib.pop(k) for k in _TRACK_LEVEL if k in attrib}
    track = tracks.setdefault(key, _Track(level, from_cvat))
    track.from_cvat = track.from_cvat and from_cvat
    single = key.startswith("\0")
    shape_attrib = {
        "frame": str(frame),
        "keyframe": _flag(ann.get("keyframe"), "1"),
        "outside": _flag(ann.get("outside"), "0"),
        "occluded": attrib.pop("occluded", "0"),
    }
    if single:
        shape_attrib["keyframe"] = "1"
    if shape.tag == "skeleton":
        # CVAT states these per element; the skeleton's own flags only when known.
        for key in ("outside", "occluded"):
            if ann.get(key) is None:
                del shape_attrib[key]
    track.shapes.append(
        Shape(shape.tag, {**shape_attrib, **attrib}, shape.attributes, shape.elements).element()
    )


def _track_ids(keys: list[str]) -> list[str]:
    """Numeric track ids stay; others (and one-shape tracks) get the next free numbers."""
    numeric = {int(k) for k in keys if k.isdigit()}
    out, nxt = [], 0
    for k in keys:
        if k.isdigit():
            out.append(str(int(k)))
            continue
        while nxt in numeric:
            nxt += 1
        numeric.add(nxt)
        out.append(str(nxt))
    return out
