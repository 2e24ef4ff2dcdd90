"""Datumaro 1.0 JSON (`annotations/<subset>.json`): read and written.

Each file is framed (pipelines/jsonframe.py): the small top-level values (info,
categories) are parsed whole, the `items` array in chunks, split between tasks
when no two items could want the same id. Mapping:

- categories → label attributes (owner `label:<name>`, source "datumaro"):
  `parent`, the label's `attributes` names, `points` (keypoint names and
  joints); the mask colormap → `color` "#rrggbb"; the label category's global
  attribute names and `info` → dataset attributes (owner `dataset:<subset>`).
- item → item (`item_id` = "<subset>/<id>"); `image.size` is [height, width];
  `attr` → item attributes; unknown keys → `metadata`.
- annotation → one row: bbox, polygon, polyline, points (→ keypoints when the
  label has a points category), mask (COCO RLE as is), caption, label (→ tag),
  cuboid_3d, ellipse, skeleton (→ keypoints; `elements` or x,y,v `points`).
  `label_id` is kept as given, so a null or out-of-range id loses nothing
  (the label is then empty). `attributes` → attributes (source "datumaro");
  occluded / outside / keyframe / track_id / score / a non-zero rotation fill
  their columns; unknown annotation keys → attributes (source "datumaro_field").
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipelines import jsonframe, masks
from pipelines.builder import BatchBuilder, is_finite, to_json
from pipelines.errors import ParseError
from pipelines.formats._datumaro_write import plan_write, write
from pipelines.formats.base import Detection, Format, ReadOptions, ReadTask, plan_each
from pipelines.grouping import Earlier, given_before, unique_id
from pipelines.schema import Batch
from pipelines.skeleton import POINT_OWNER, point_owner
from pipelines.storage import HEAD_BYTES, Source
from pipelines.streamjson import ijson

SOURCE = "datumaro"
FIELD_SOURCE = "datumaro_field"
"""Annotation keys Datumaro's spec does not list: kept so the writer gives them back."""
_ANN_KNOWN = {
    "id",
    "type",
    "attributes",
    "group",
    "label_id",
    "z_order",
    "points",
    "bbox",
    "rle",
    "caption",
    "position",
    "rotation",
    "scale",
    "visibility",
    "elements",
    "points_attributes",
}
_ITEM_KNOWN = {"id", "annotations", "image", "point_cloud", "attr"}
_BOOL_COLUMNS = ("occluded", "outside", "keyframe")
_MAX_DEPTH = 3


class _Bad(Exception):
    """A record that cannot be mapped; the message is the reject reason."""


def _looks_like_datumaro(head: bytes) -> bool:
    """Top-level keys of the document's beginning: a `categories` object or an `items` array.

    COCO's `categories` is an array, so the two never overlap.
    """
    keys: set[str] = set()
    events = ijson.parse(io.BytesIO(head))
    try:
        prefix, event, _ = next(events)
        if event != "start_map":
            return False
        for prefix, event, value in events:
            if prefix == "" and event == "map_key":
                keys.add(value)
            elif prefix == "categories" and event == "start_map":
                return "images" not in keys
            elif prefix == "items" and event == "start_array":
                return "images" not in keys and "annotations" not in keys
    except (ijson.IncompleteJSONError, StopIteration):
        return "dm_format_version" in keys
    except ijson.JSONError:
        return False
    return "dm_format_version" in keys


def _annotation_files(source: Source) -> list[str]:
    return [
        rel
        for rel in source.glob(".json")
        if posixpath.basename(posixpath.dirname(rel)) == "annotations"
        and rel.count("/") <= _MAX_DEPTH
        and _looks_like_datumaro(source.head(rel))
    ]


def detect(source: Source) -> Detection | None:
    if source.is_dir:
        found = _annotation_files(source)
        if found:
            return Detection(0.95, f"Datumaro JSON: {', '.join(found[:3])}")
        return None
    if source.name.lower().endswith(".json") and _looks_like_datumaro(source.head()):
        return Detection(0.9, "JSON object with a categories object / items array")
    return None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    members = _annotation_files(source) if source.is_dir else [""]
    return plan_each(source, members, "datumaro", lambda m: _plan_file(source, m, options))


def _plan_file(source: Source, member: str, options: ReadOptions) -> list[ReadTask]:
    """The file's items array in chunks (pipelines/jsonframe.py), one task per group of
    them. Items that repeat an id are numbered `#2`, `#3`... in file order
    (`unique_id`): each task is told how many items before it had each id it repeats
    (`_repeats`), or the file is one task when the ids cannot be counted so."""
    uri = source.uri(member)
    with source.open(member) as f:
        if not f.read(HEAD_BYTES).lstrip().startswith(b"{"):
            raise ParseError(uri, "$", "not a JSON object: not a Datumaro file")
        f.seek(0)
        values = {v.key: v for v in jsonframe.frame(f, uri, member="id")}
        items = values.pop("items", None)
        head = {key: jsonframe.read_value(f, uri, v, f"$.{key}") for key, v in values.items()}
    stem = posixpath.splitext(posixpath.basename(member or source.name))[0]
    # Categories that are not an object are kept as they are, a dataset attribute.
    categories = head.pop("categories") if isinstance(head.get("categories"), dict) else {}
    base = {"categories": categories}
    first = {**base, "head": head, "items_kind": items and items.kind, "chunks": []}
    if items is None or items.kind != "array" or not items.length:
        return [ReadTask("datumaro", source, member, stem, context=first, options=options)]
    groups = [items.chunks]
    repeats: list[list] = [[]]
    ids = items.member_hashes
    repeated = None if ids is None else _repeated(ids)
    # Ids known to be unique need no set of the ids given so far, which grows with the
    # items (one task of 826 MB: 410k ids).
    unique = repeated is not None and not repeated
    large = items.end - items.start > jsonframe.ONE_TASK_BYTES
    if options.workers > 1 and large and repeated is not None:
        split = jsonframe.task_groups(items.chunks, options.workers, _bytes, source.archive)
        counted = _repeats(source, member, split, ids, repeated)
        if counted is not None:
            groups, repeats = split, counted
    tasks = []
    for group, given in zip(groups, repeats, strict=True):
        ctx = {**(first if not tasks else base), "chunks": group, "repeats": given}
        ctx["unique_ids"] = unique
        start, end = group[0].start, group[-1].end
        tasks.append(ReadTask("datumaro", source, member, stem, start, end, ctx, options))
    return tasks


def _repeated(ids: np.ndarray) -> set[int]:
    """The id hashes (`Value.member_hashes`) more than one item has."""
    values, counts = np.unique(ids, return_counts=True)
    return set(values[counts > 1].tolist())


def _repeats(
    source: Source,
    member: str,
    groups: list[list[jsonframe.Chunk]],
    ids: np.ndarray,
    repeated: set[int],
) -> list[list[tuple[str, int]]] | None:
    """For each group of chunks, (id, items before the group with it) for each id it
    shares with an earlier item; None when a `#` in an id could make a number given to
    another spell it. Only where hashes repeat are the items parsed here, one chunk at
    a time, for their ids."""
    if not repeated:
        return [[] for _ in groups]
    hashes = ids.tolist()
    earlier = Earlier(len(groups))
    uri = source.uri(member)
    with source.open(member) as f:
        for g, group in enumerate(groups):
            for first, items in jsonframe.iter_chunks(f, uri, group, "$.items"):
                for i, item in enumerate(items, first):
                    native = str(item["id"])  # the scan vouched for an id in each
                    if "#" in native:
                        return None
                    if hashes[i] in repeated:
                        earlier.add(g, native)
    return earlier.before()


def _bytes(chunk: jsonframe.Chunk) -> int:
    return chunk.end - chunk.start


class _Reader:
    def __init__(self, task: ReadTask) -> None:
        self.task = task
        self.b: BatchBuilder = task.builder()
        self.subset = task.subset
        self.owner = f"dataset:{task.subset}"
        self.labels: list[str | None] | None = None
        self.point_names: dict[int, list] = {}
        self.child_names: dict[int, list[str]] = {}
        self.ids: set[str] = set()
        self.numbered: dict[str, int] = {}  # `unique_id`'s last number for each id
        self.unique_ids = bool(task.context.get("unique_ids"))  # none to number: no set
        for native, count in task.context.get("repeats", ()):  # items before this task's
            given_before(self.ids, self.numbered, f"{self.subset}/{native}", count)
        root = posixpath.dirname(posixpath.dirname(task.member)) if task.member else ""
        self.images = posixpath.join(root, "images") + "/" if root else "images/"
        self.files = frozenset(task.source.files) if task.source.is_dir else frozenset()

    def batches(self) -> Iterator[Batch]:
        ctx = self.task.context
        # The file's first task records its dataset and label attributes.
        first = "head" in ctx
        self._categories(ctx["categories"], record=first)
        if first:
            for key, value in ctx["head"].items():
                if value not in ({}, None):
                    self.b.attribute(
                        self.owner, None, key, value, owner_kind="dataset", source=SOURCE
                    )
            if ctx["items_kind"] not in ("array", None):
                self.b.reject("$.items", "items is not an array", record_kind="items")
        with self.task.source.open(self.task.member) as f:
            chunks = jsonframe.iter_chunks(f, self.task.uri, ctx["chunks"], "$.items")
            for start, items in chunks:
                for i, item in enumerate(items, start):
                    self._item(i, item)
                    if self.b.full():
                        yield self.b.flush()
                del items
        yield self.b.flush()

    def _categories(self, cats: dict, record: bool) -> None:
        """The labels' names and points for the items; `record`: their attributes too."""
        b = self.b
        label_cat = cats.get("label") if isinstance(cats.get("label"), dict) else {}
        labels = [x for x in label_cat.get("labels") or [] if isinstance(x, dict)]
        self.labels = [x.get("name") for x in labels]
        props: dict[str, dict[str, Any]] = {}
        for x in labels:
            if x.get("name") is None:
                continue
            props[x["name"]] = {k: v for k, v in x.items() if k != "name"}
            props[x["name"]].setdefault("parent", "")
        if label_cat.get("attributes") and record:
            b.attribute(
                self.owner,
                None,
                "label_attributes",
                label_cat["attributes"],
                owner_kind="dataset",
                source=SOURCE,
            )
        rest = {k: v for k, v in cats.items() if k not in ("label", "mask", "points")}
        mask_cat = cats.get("mask") if isinstance(cats.get("mask"), dict) else {}
        stray = []
        for c in mask_cat.get("colormap") or []:
            name = self._label(c.get("label_id")) if isinstance(c, dict) else None
            rgb = [c.get(k) for k in ("r", "g", "b")] if isinstance(c, dict) else []
            if name in props and all(isinstance(v, int) and 0 <= v < 256 for v in rgb):
                props[name]["color"] = "#{:02x}{:02x}{:02x}".format(*rgb)
            else:
                stray.append(c)
        if stray:
            rest["mask"] = {"colormap": stray}
        pts_cat = cats.get("points") if isinstance(cats.get("points"), dict) else {}
        for p in pts_cat.get("items") or []:
            name = self._label(p.get("label_id")) if isinstance(p, dict) else None
            if name in props:
                props[name]["points"] = {
                    "labels": p.get("labels") or [],
                    "joints": p.get("joints") or [],
                }
                self.point_names[p["label_id"]] = list(p.get("labels") or [])
            else:
                rest.setdefault("points", {"items": []})["items"].append(p)
        for x in labels:
            parent = x.get("parent")
            if parent and parent in self.labels:
                self.child_names.setdefault(self.labels.index(parent), []).append(x.get("name"))
        if not record:
            return
        for name, p in props.items():
            b.attributes(f"label:{name}", None, p, owner_kind="label", source=SOURCE)
        if rest:
            b.attribute(self.owner, None, "categories", rest, owner_kind="dataset", source=SOURCE)

    def _label(self, label_id: Any) -> str | None:
        if isinstance(label_id, bool) or not isinstance(label_id, int) or self.labels is None:
            return None
        return self.labels[label_id] if 0 <= label_id < len(self.labels) else None

    # -- items --------------------------------------------------------------------

    def _media(self, path: str | None) -> str | None:
        if not path or not self.files:
            return None
        for rel in (f"{self.images}{self.subset}/{path}", f"{self.images}{path}"):
            if rel in self.files:
                return self.task.source.uri(rel)
        return None

    def _item(self, i: int, item: Any) -> None:
        b = self.b
        where = f"$.items[{i}]"
        if not isinstance(item, dict) or item.get("id") is None:
            b.reject(where, "item without an id", record=item, record_kind="items")
            anns = item.get("annotations") if isinstance(item, dict) else None
            for j, ann in enumerate(anns if isinstance(anns, list) else []):
                b.reject(
                    f"{where}.annotations[{j}]",
                    "its item was rejected",
                    record=ann,
                    record_kind="annotations",
                )
            return
        native = str(item["id"])
        item_id = f"{self.subset}/{native}"
        if not self.unique_ids:
            item_id = unique_id(item_id, self.ids, self.numbered)
        extra = {k: v for k, v in item.items() if k not in _ITEM_KNOWN}
        row: dict[str, Any] = {"item_id": item_id, "native_id": native, "subset": self.subset}
        image, pcd = item.get("image"), item.get("point_cloud")
        if isinstance(image, dict):
            row.update(media_type="image", file_name=image.get("path"))
            size = image.get("size")
            if (
                isinstance(size, list)
                and len(size) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)
            ):
                row.update(height=size[0], width=size[1])
            elif size is not None:
                extra["image"] = image
        elif isinstance(pcd, dict):
            row.update(media_type="point_cloud", file_name=pcd.get("path"))
        elif image is not None or pcd is not None:
            extra.update({k: item[k] for k in ("image", "point_cloud") if item.get(k) is not None})
        if isinstance(extra.get("media"), dict) and not row.get("file_name"):
            row["file_name"] = extra["media"].get("path")
        row["media_uri"] = self._media(row.get("file_name"))
        b.item(**row, metadata=to_json(extra) if extra else None)
        attr = item.get("attr")
        if isinstance(attr, dict):
            b.attributes(item_id, item_id, attr, owner_kind="item", source=SOURCE)
        elif attr is not None:
            b.attribute(item_id, item_id, "attr", attr, owner_kind="item", source=FIELD_SOURCE)
        anns = item.get("annotations") or []
        for j, ann in enumerate(anns if isinstance(anns, list) else []):
            self._annotation(f"{where}.annotations[{j}]", item_id, f"{item_id}/{j}", ann)

    # -- annotations --------------------------------------------------------------

    def _annotation(self, where: str, item_id: str, ann_id: str, ann: Any) -> None:
        b = self.b
        native = ann.get("id") if isinstance(ann, dict) else None
        try:
            if not isinstance(ann, dict):
                raise _Bad("annotation is not an object")
            row, named, flat, point_attrs = self._shape(ann, item_id, ann_id)
        except _Bad as exc:
            b.reject(where, str(exc), record=ann, native_id=native, record_kind="annotations")
            return
        b.annotation(**row)
        if flat:
            b.points(ann_id, item_id, flat)
        if named:
            b.named_points(ann_id, item_id, named)
        attrs = ann.get("attributes")
        if attrs and isinstance(attrs, dict):
            b.attributes(ann_id, item_id, _without_columns(attrs, row), source=SOURCE)
        extra = {k: v for k, v in ann.items() if k not in _ANN_KNOWN}
        if attrs is not None and not isinstance(attrs, dict):
            extra["attributes"] = attrs
        if extra:
            b.attributes(ann_id, item_id, extra, source=FIELD_SOURCE)
        for idx, values in point_attrs:
            b.attributes(
                point_owner(ann_id, idx), item_id, values, owner_kind=POINT_OWNER, source=SOURCE
            )

    @staticmethod
    def _attribute_columns(attrs: dict, row: dict) -> None:
        for key in _BOOL_COLUMNS:
            if isinstance(attrs.get(key), bool):
                row[key] = attrs[key]
        track = attrs.get("track_id")
        if isinstance(track, (int, str)) and not isinstance(track, bool):
            row["track_id"] = str(track)
        if is_finite(attrs.get("score")):
            row["confidence"] = float(attrs["score"])

    def _shape(self, ann: dict, item_id: str, ann_id: str) -> tuple:
        kind = ann.get("type")
        label_id = ann.get("label_id")
        attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
        group, z = ann.get("group"), ann.get("z_order")
        # Only the columns the annotation states: fewer keys make rows cheaper to build.
        row: dict[str, Any] = {"ann_id": ann_id, "item_id": item_id, "units": "px"}
        if ann.get("id") is not None:
            row["native_id"] = str(ann["id"])
        if label_id is not None:
            row["label_id"] = str(label_id)
            row["label"] = self._label(label_id)
        if group not in (None, 0, ""):
            row["group_id"] = str(group)
        if isinstance(z, int) and not isinstance(z, bool):
            row["z_order"] = z
        if attrs:
            self._attribute_columns(attrs, row)
        named = flat = None
        point_attrs: list[tuple[int, dict]] = []
        if kind in ("bbox", "ellipse"):
            box = ann.get("bbox") if kind == "bbox" else _corners(ann.get("points"))
            if not (isinstance(box, list) and len(box) == 4 and is_finite(*box)):
                raise _Bad(f"{kind} needs four finite numbers")
            row.update(kind=kind, bbox_x=box[0], bbox_y=box[1], bbox_w=box[2], bbox_h=box[3])
            angle = attrs.get("rotation")
            if is_finite(angle) and angle:
                row["angle_deg"] = float(angle)
                row["kind"] = "rotated_bbox" if kind == "bbox" else kind
        elif kind in ("polygon", "polyline"):
            flat = _flat(ann.get("points"), kind)
            row["kind"] = kind
        elif kind == "points":
            flat_pts = _flat(ann.get("points"), kind)
            names = self.point_names.get(label_id) if isinstance(label_id, int) else None
            row["kind"] = "keypoints" if names is not None else "points"
            named = _named(flat_pts, ann.get("visibility"), names or [])
        elif kind == "skeleton":
            row["kind"] = "keypoints"
            named, point_attrs = self._skeleton(ann, label_id)
        elif kind == "mask":
            row.update(kind="mask", **_mask(ann.get("rle")))
        elif kind == "caption":
            if not isinstance(ann.get("caption"), str):
                raise _Bad("caption without text")
            row.update(kind="caption", text=ann["caption"])
        elif kind == "label":
            row["kind"] = "tag"
        elif kind == "cuboid_3d":
            vecs = [ann.get(k) for k in ("position", "rotation", "scale")]
            if not all(isinstance(v, list) and len(v) == 3 and is_finite(*v) for v in vecs):
                raise _Bad("cuboid_3d needs position, rotation and scale of three numbers")
            row.update(kind="cuboid_3d", position=vecs[0], rotation=vecs[1], size=vecs[2])
        else:
            raise _Bad(f"annotation type {kind!r} has no mapping")
        return row, named, flat, point_attrs

    def _skeleton(self, ann: dict, label_id: Any) -> tuple[list[dict], list[tuple[int, dict]]]:
        elements = ann.get("elements")
        point_attrs: list[tuple[int, dict]] = []
        if isinstance(elements, list):
            named = []
            for idx, el in enumerate(elements):
                if not isinstance(el, dict):
                    raise _Bad(f"skeleton element {idx} is not an object")
                xy = _flat(el.get("points"), "skeleton element")
                vis = el.get("visibility") if isinstance(el.get("visibility"), list) else [2]
                named.append(
                    {
                        "x": xy[0],
                        "y": xy[1],
                        "name": self._label(el.get("label_id")),
                        "visibility": _visibility(vis[0] if vis else 2),
                    }
                )
                own = el.get("attributes") if isinstance(el.get("attributes"), dict) else {}
                if own:
                    point_attrs.append((idx, own))
            return named, point_attrs
        flat = ann.get("points")
        if not (isinstance(flat, list) and len(flat) % 3 == 0 and is_finite(*flat)):
            raise _Bad("skeleton needs elements or x, y, visibility triples")
        names = self.point_names.get(label_id) if isinstance(label_id, int) else None
        if names is None and isinstance(label_id, int):
            names = self.child_names.get(label_id, [])
        names = names or []
        named = [
            {
                "x": flat[i],
                "y": flat[i + 1],
                "visibility": _visibility(flat[i + 2]),
                "name": names[i // 3] if i // 3 < len(names) else None,
            }
            for i in range(0, len(flat), 3)
        ]
        for idx, values in enumerate(ann.get("points_attributes") or []):
            if isinstance(values, dict) and values:
                point_attrs.append((idx, values))
        return named, point_attrs


def _without_columns(attrs: dict, row: dict) -> dict:
    """Attributes minus those moved into columns (they come back from the columns)."""
    out = dict(attrs)
    for key in (*_BOOL_COLUMNS, "track_id"):
        if row.get(key) is not None:
            out.pop(key, None)
    if row.get("confidence") is not None:
        out.pop("score", None)
    if row.get("angle_deg") is not None:
        out.pop("rotation", None)
    return out


def _corners(points: Any) -> list | None:
    if not (isinstance(points, list) and len(points) == 4 and is_finite(*points)):
        return None
    x0, y0, x1, y1 = points
    return [x0, y0, x1 - x0, y1 - y0]


def _flat(points: Any, what: str) -> list[float]:
    if not (isinstance(points, list) and points and len(points) % 2 == 0 and is_finite(*points)):
        raise _Bad(f"{what} needs an even, non-empty list of finite coordinates")
    return points


def _visibility(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) not in (0, 1, 2):
        raise _Bad(f"visibility {v!r} is not 0, 1 or 2")
    return int(v)


def _named(flat: list[float], vis: Any, names: list) -> list[dict]:
    n = len(flat) // 2
    if vis is None:
        vis = [2] * n
    if not isinstance(vis, list) or len(vis) != n:
        raise _Bad(
            f"visibility has {len(vis) if isinstance(vis, list) else 'no'} values for {n} points"
        )
    return [
        {
            "x": flat[2 * k],
            "y": flat[2 * k + 1],
            "visibility": _visibility(vis[k]),
            "name": names[k] if k < len(names) else None,
        }
        for k in range(n)
    ]


def _mask(rle: Any) -> dict[str, Any]:
    if not isinstance(rle, dict):
        raise _Bad("mask without an rle object")
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise _Bad("mask rle size must be [height, width]")
    h, w = size
    try:
        text = counts if isinstance(counts, str) else masks.from_uncompressed(counts, h, w)
        area = masks.area(text, h, w)
        box = masks.bbox(text, h, w)
    except (TypeError, ValueError) as exc:
        raise _Bad(f"mask rle cannot be decoded: {exc}") from None
    return {
        "mask": text,
        "mask_h": h,
        "mask_w": w,
        "area": area,
        "bbox_x": box[0],
        "bbox_y": box[1],
        "bbox_w": box[2],
        "bbox_h": box[3],
    }


def read(task: ReadTask) -> Iterator[Batch]:
    yield from _Reader(task).batches()


FORMAT = Format(
    name="datumaro",
    description="Datumaro 1.0 JSON (annotations/<subset>.json; categories, every annotation type)",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
)
