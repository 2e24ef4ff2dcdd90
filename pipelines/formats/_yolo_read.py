"""Reading YOLO label folders: CVAT's YOLO 1.1, the loose layouts, and Ultralytics.

One label file per image, one object per line, class id then coordinates
normalized to the image size:

    5 values            box: class cx cy w h
    6 values            box with a confidence (prediction files)
    9 values            4 corners: an oriented box when they form a rectangle, else a polygon
    odd, 7 or more      polygon: class x1 y1 x2 y2 ...
    5 + N×D values      pose (data.yaml `kpt_shape: [N, D]`): box then N keypoints (x y [v])

Boxes, polygons and keypoints are recorded normalized (`units='norm'`, the box
as its top-left corner) for the normalize transform. Oriented boxes are
recorded in pixels: whether 4 corners make a rectangle, and its angle, only
mean something in pixels on a non-square image. Every annotation needs its
image's size (from `image_sizes` or the image header); without one it goes to
rejects with that reason.

Layouts are found by folder names, not by which tool wrote them:
`obj_<subset>_data/` (YOLO 1.1), `labels/<subset>/` + `images/<subset>/` and
`<subset>/labels/` + `<subset>/images/` (Ultralytics), `Annotations/` +
`Images/` (loose), or label files next to same-named images. Class names come
from obj.data's `names`, a `*.names` file, `classes.txt`, or data.yaml's
`names`. A folder holding several datasets (each with its own names file or
data.yaml) is read as all of them, item ids prefixed with each one's folder.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipelines.builder import BatchBuilder, is_finite
from pipelines.errors import ParseError
from pipelines.formats import _per_image as per_image
from pipelines.formats.base import ReadOptions, ReadTask
from pipelines.schema import Batch
from pipelines.storage import Source

LABEL_DIRS = frozenset({"labels", "annotations"})
IMAGE_DIRS = frozenset({"images"})
LIST_NAMES = frozenset({"train.txt", "valid.txt", "val.txt", "test.txt"})
NAMES_FILES = frozenset({"obj.names", "classes.txt"})
_OBJ_DIR = re.compile(r"^obj_(.+)_data$")
_NOT_LABELS = ("readme", "license", "licence", "classes", "notes")
_YAML_KEEP = frozenset({"path", "train", "val", "valid", "test", "names", "nc"})


@dataclass
class Root:
    """One dataset inside the source: the folder of its names file or data.yaml."""

    path: str
    names: list[str] | None = None
    kpt_shape: tuple[int, int] | None = None
    kpt_names: dict[int, list[str]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    lists: list[tuple[str, str | None]] = field(default_factory=list)
    """(member, subset) of image list files such as train.txt."""


def _rel(path: str, root: str) -> str:
    return path[len(root) + 1 :] if root else path


def _root_of(path: str, roots: list[str]) -> str:
    best = ""
    for r in roots:
        if (not r or path.startswith(r + "/")) and len(r) >= len(best):
            best = r
    return best


def classify(rel: str, dirs: frozenset[str]) -> tuple[str | None, str] | None:
    """(subset, name inside the subset) of a label or image path, or None if it sits
    in no folder this reader knows."""
    parts = rel.split("/")
    folders = parts[:-1]
    for i, d in enumerate(folders):
        m = _OBJ_DIR.match(d)
        if m:
            return m.group(1), "/".join(parts[i + 1 :])
    for i, d in enumerate(folders):
        if d.lower() in dirs:
            rest = parts[i + 1 :]
            if len(rest) >= 2:
                return rest[0], "/".join(rest[1:])
            return (folders[i - 1] if i else None), rest[0]
    return None


def is_label_file(name: str) -> bool:
    base = posixpath.basename(name).lower()
    return base.endswith(".txt") and not base.startswith(_NOT_LABELS)


# -- planning -------------------------------------------------------------------


def _names_file(source: Source, member: str) -> list[str]:
    return [
        line.strip() for line in per_image.read_text(source, member).splitlines() if line.strip()
    ]


def _obj_data(source: Source, member: str) -> dict[str, str]:
    out = {}
    for line in per_image.read_text(source, member).splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip().lower()] = value.split("#", 1)[0].strip()
    return out


def _resolve(present: frozenset[str], root: str, path: str) -> str | None:
    """A path written in obj.data or a list file → a member, if it exists.

    CVAT writes them under `data/` (darknet's folder), so that prefix is
    tried away; anything climbing out of the source is ignored.
    """
    path = path.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    candidates = [path]
    if path.startswith("data/"):
        candidates.append(path[5:])
    for cand in candidates:
        if cand.startswith(("/", "..")):
            continue
        member = posixpath.join(root, cand) if root else cand
        if member in present:
            return member
    return None


def _yaml(source: Source, member: str) -> dict | None:
    """A dataset YAML (one with `names` or `nc`), or None for any other YAML file.

    A malformed file fails the source only when it looks like the dataset's
    own (it mentions `names`); an unrelated broken config is not ours to judge.
    """
    text = per_image.read_text(source, member)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if "names" not in text:
            return None
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "start"
        raise ParseError(source.uri(member), where, f"malformed YAML: {exc}") from exc
    if isinstance(doc, dict) and ("names" in doc or "nc" in doc):
        return doc
    return None


def _yaml_names(names: Any) -> list[str] | None:
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            return None
        return [by_id.get(i, f"class_{i}") for i in range(max(by_id, default=-1) + 1)]
    return None


def _apply_yaml(present: frozenset[str], root: Root, doc: dict) -> None:
    root.names = _yaml_names(doc.get("names")) or root.names
    shape = doc.get("kpt_shape")
    if isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) for v in shape):
        root.kpt_shape = (shape[0], shape[1])
    kn = doc.get("kpt_names")
    if isinstance(kn, dict):
        root.kpt_names = {int(k): [str(n) for n in v] for k, v in kn.items() if isinstance(v, list)}
    elif isinstance(kn, list):
        root.kpt_names = {-1: [str(n) for n in kn]}
    root.extra = {k: v for k, v in doc.items() if k not in _YAML_KEEP}
    for key in ("train", "val", "valid", "test"):
        value = doc.get(key)
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, str) and path.lower().endswith(".txt"):
                member = _resolve(present, root.path, path)
                if member:
                    root.lists.append((member, key))


def find_roots(source: Source) -> dict[str, Root]:
    """Every dataset root in the source with its class names and settings."""
    roots: dict[str, Root] = {}
    files = source.files
    present = frozenset(files)
    for f in files:
        base = posixpath.basename(f).lower()
        folder = posixpath.dirname(f)
        if base == "obj.data" or base.endswith(".names"):
            roots.setdefault(folder, Root(folder))
        elif base.endswith((".yaml", ".yml")):
            doc = _yaml(source, f)
            if doc is not None:
                _apply_yaml(present, roots.setdefault(folder, Root(folder)), doc)
    roots.setdefault("", Root(""))
    for path, root in roots.items():
        prefix = f"{path}/" if path else ""
        data = prefix + "obj.data"
        if data in present:
            conf = _obj_data(source, data)
            names = _resolve(present, path, conf["names"]) if conf.get("names") else None
            if names:
                root.names = _names_file(source, names)
            for key, value in conf.items():
                if key not in ("names", "backup", "classes") and value.lower().endswith(".txt"):
                    member = _resolve(present, path, value)
                    if member:
                        root.lists.append((member, key))
        if root.names is None:
            for f in files:
                if posixpath.dirname(f) == path and (
                    f.lower().endswith(".names") or posixpath.basename(f).lower() in NAMES_FILES
                ):
                    root.names = _names_file(source, f)
                    break
        if root.names is None:  # LabelImg keeps classes.txt beside the labels
            for f in files:
                if (
                    posixpath.basename(f).lower() == "classes.txt"
                    and _root_of(f, list(roots)) == path
                ):
                    root.names = _names_file(source, f)
                    break
        listed = {m for m, _ in root.lists}
        for f in files:
            base = posixpath.basename(f).lower()
            if posixpath.dirname(f) == path and base in LIST_NAMES and f not in listed:
                root.lists.append((f, base[:-4]))
    return roots


@dataclass
class Entry:
    root: str
    subset: str | None
    stem: str
    label: str = ""
    image: str = ""
    file_name: str = ""


def find_entries(source: Source, roots: dict[str, Root]) -> list[Entry]:
    """Every item: label files, images in image folders, and images named by list files."""
    paths = list(roots)
    present = frozenset(source.files)
    entries: dict[tuple[str, str | None, str], Entry] = {}
    lists = {m for r in roots.values() for m, _ in r.lists}
    images_by_dir_stem: dict[str, str] = {}
    for f in source.files:
        if per_image.is_image(f):
            images_by_dir_stem.setdefault(per_image.strip_ext(f), f)

    def entry(root: str, subset: str | None, name: str) -> Entry:
        key = (root, subset, per_image.strip_ext(name))
        if key not in entries:
            entries[key] = Entry(root, subset, key[2])
        return entries[key]

    for f in source.files:
        root = _root_of(f, paths)
        rel = _rel(f, root)
        if per_image.is_image(f):
            where = classify(rel, IMAGE_DIRS)
            if where:
                e = entry(root, *where)
                e.image, e.file_name = f, where[1]
            continue
        if f in lists or not is_label_file(f):
            continue
        where = classify(rel, LABEL_DIRS)
        if where is None:
            twin = images_by_dir_stem.get(per_image.strip_ext(f))
            if not twin:
                continue
            where = (None, _rel(twin, root))
            e = entry(root, *where)
            e.image, e.file_name = twin, where[1]
        entry(root, where[0], where[1]).label = f
    for root in roots.values():
        for member, list_subset in root.lists:
            for line in per_image.read_text(source, member).splitlines():
                path = line.strip()
                if not path or not per_image.is_image(path):
                    continue
                found = _resolve(present, root.path, path)
                rel = _rel(found, root.path) if found else path.removeprefix("data/")
                where = classify(rel, IMAGE_DIRS) or (list_subset, posixpath.basename(rel))
                e = entry(root.path, *where)
                e.file_name = e.file_name or where[1]
                e.image = e.image or found or ""
    for e in entries.values():
        if not e.image and e.label:
            e.image = _image_for(e.label, images_by_dir_stem) or ""
            if e.image:
                e.file_name = e.stem + posixpath.splitext(e.image)[1]
        e.file_name = e.file_name or e.stem
    return sorted(entries.values(), key=lambda e: (e.root, e.subset or "", e.stem))


def _image_for(label: str, images: dict[str, str]) -> str | None:
    """The image of a label file: same folder, or the `images` folder for `labels`."""
    stem = per_image.strip_ext(label)
    if stem in images:
        return images[stem]
    parts = stem.split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].lower() in LABEL_DIRS:
            for swap in ("images", "Images", "JPEGImages"):
                cand = "/".join([*parts[:i], swap, *parts[i + 1 :]])
                if cand in images:
                    return images[cand]
            break
    return None


def plan(fmt: str, source: Source, options: ReadOptions) -> list:
    if not source.is_dir:
        base = posixpath.basename(source.url).lower()
        if base == "obj.data" or base.endswith((".yaml", ".yml", ".names")):
            return plan(fmt, Source(posixpath.dirname(source.url) or "."), options)
        return []
    roots = find_roots(source)
    entries = find_entries(source, roots)
    tasks = []
    for path, root in roots.items():
        mine = [e for e in entries if e.root == path]
        if not mine:
            continue
        ctx = {
            "root": path,
            "names": root.names,
            "kpt_shape": root.kpt_shape,
            "kpt_names": root.kpt_names,
            "extra": root.extra,
        }
        for n, group in enumerate(per_image.chunks(mine, options)):
            context = {**ctx, "entries": group, "header": n == 0}
            tasks.append(ReadTask(fmt, source, context=context, options=options))
    return tasks


def planner(fmt: str) -> Callable[[Source, ReadOptions], list[ReadTask]]:
    """`plan_read` of a format that reads YOLO label files (yolo, ultralytics)."""

    def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
        return plan(fmt, source, options)

    return plan_read


# -- reading ---------------------------------------------------------------------


def read(task: ReadTask) -> Iterator[Batch]:
    ctx = task.context
    b = task.builder()
    if ctx["header"]:
        _header(b, ctx, task.format)
    for e in ctx["entries"]:
        _read_entry(task, b, e)
        if b.full():
            yield b.flush()
    yield b.flush()


def _header(b: BatchBuilder, ctx: dict, fmt: str) -> None:
    """Dataset-wide facts as label and dataset attributes, so writers can keep them:
    every class name with its id (used or not), and data.yaml's other keys."""
    for i, name in enumerate(ctx["names"] or []):
        b.attribute(f"label:{name}", None, "class_id", i, owner_kind="label", source=fmt)
    owner = f"dataset:{ctx['root']}"
    if ctx["kpt_shape"]:
        b.attribute(
            owner, None, "kpt_shape", list(ctx["kpt_shape"]), owner_kind="dataset", source=fmt
        )
    for key, value in ctx["extra"].items():
        if key != "kpt_shape":
            b.attribute(owner, None, str(key), value, owner_kind="dataset", source=fmt)


def _read_entry(task: ReadTask, b: BatchBuilder, e: Entry) -> None:
    item_id = "/".join(p for p in (e.root, e.subset, e.stem) if p)
    size, why = per_image.find_size(task.source, e.image, [e.image, e.file_name], task.options)
    b.item(
        item_id=item_id,
        native_id=e.stem,
        file_name=e.file_name,
        media_uri=task.source.uri(e.image) if e.image else None,
        media_type="image",
        width=size[0] if size else None,
        height=size[1] if size else None,
        subset=e.subset,
    )
    if not e.label:
        return
    with task.source.open(e.label) as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        b.reject(f"{e.label} line {line}", "not UTF-8 text", record_kind="annotations")
        return
    lines = _Lines(b, task.context, item_id, e.label, size)
    for n, line in enumerate(text.splitlines(), 1):
        values = line.split()
        if not values:
            continue
        if size is None:
            where = f"{e.label} line {n}"
            reason = f"no image size for {e.file_name}: {why}"
            b.reject(where, reason, record=line, record_kind="annotations")
            continue
        lines.add(n, line, values)


class _Lines:
    """Turns the lines of one label file into annotation rows."""

    def __init__(
        self, b: BatchBuilder, ctx: dict, item_id: str, member: str, size: tuple[int, int] | None
    ) -> None:
        self.b = b
        self.names: list[str] | None = ctx["names"]
        self.kpt_shape: tuple[int, int] | None = ctx["kpt_shape"]
        self.kpt_names: dict[int, list[str]] = ctx["kpt_names"]
        self.item_id = item_id
        self.member = member
        self.size = size

    def add(self, n: int, line: str, tokens: list[str]) -> None:
        where = f"{self.member} line {n}"
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            self.b.reject(where, "not a number", record=line, record_kind="annotations")
            return
        problem = self._check(values)
        if problem:
            self.b.reject(where, problem, record=line, record_kind="annotations")
            return
        cls = int(values[0])
        coords = values[1:]
        label = self.names[cls] if self.names is not None else str(cls)
        row = {"ann_id": f"{self.item_id}/{n}", "item_id": self.item_id, "native_id": str(n)}
        row |= {"label": label, "label_id": str(cls), "units": "norm"}
        k = len(coords)
        if self.kpt_shape and k == 4 + self.kpt_shape[0] * self.kpt_shape[1]:
            self._keypoints(row, cls, coords)
        elif k in (4, 5):
            self._box(row, coords)
        elif k == 8:
            self._quad(row, coords)
        else:
            self.b.annotation(kind="polygon", **row)
            self.b.points(row["ann_id"], self.item_id, coords)

    def _check(self, values: list[float]) -> str | None:
        if not is_finite(*values):
            return "not a finite number"
        cls, k = values[0], len(values) - 1
        if cls < 0 or not cls.is_integer():
            return f"class id {cls:g} is not a non-negative integer"
        if self.names is not None and cls >= len(self.names):
            return f"class id {int(cls)} is not among the {len(self.names)} class names"
        pose = self.kpt_shape and k == 4 + self.kpt_shape[0] * self.kpt_shape[1]
        if not (pose or k in (4, 5, 8) or (k >= 6 and k % 2 == 0)):
            expected = "5 (box), 6 (box + confidence), 9 (oriented box) or an odd number ≥ 7"
            if self.kpt_shape:
                expected += f" or {5 + self.kpt_shape[0] * self.kpt_shape[1]} (pose)"
            return f"{k + 1} values; expected {expected}"
        if (pose or k in (4, 5)) and (values[3] < 0 or values[4] < 0):
            return "negative box size"
        return None

    def _box(self, row: dict, c: list[float]) -> None:
        cx, cy, w, h = c[:4]
        conf = c[4] if len(c) == 5 else None
        box = {"bbox_x": cx - w / 2, "bbox_y": cy - h / 2, "bbox_w": w, "bbox_h": h}
        self.b.annotation(kind="bbox", confidence=conf, **box, **row)

    def _keypoints(self, row: dict, cls: int, c: list[float]) -> None:
        cx, cy, w, h = c[:4]
        n_kpt, dims = self.kpt_shape  # type: ignore[misc]
        names = self.kpt_names.get(cls) or self.kpt_names.get(-1) or []
        rows = []
        for i in range(n_kpt):
            p = c[4 + i * dims : 4 + (i + 1) * dims]
            vis = int(p[2]) if dims >= 3 else None
            rows.append({"x": p[0], "y": p[1], "visibility": vis, "name": _at(names, i)})
        self.b.annotation(
            kind="keypoints", bbox_x=cx - w / 2, bbox_y=cy - h / 2, bbox_w=w, bbox_h=h, **row
        )
        self.b.named_points(row["ann_id"], self.item_id, rows)

    def _quad(self, row: dict, c: list[float]) -> None:
        w, h = self.size  # type: ignore[misc]
        px = [(c[i] * w, c[i + 1] * h) for i in range(0, 8, 2)]
        box = rectangle(px)
        if box is None:
            self.b.annotation(kind="polygon", **row)
            self.b.points(row["ann_id"], self.item_id, c)
            return
        x, y, bw, bh, angle = box
        kind = "bbox" if angle == 0 else "rotated_bbox"
        row |= {"kind": kind, "units": "px", "angle_deg": None if angle == 0 else angle}
        self.b.annotation(bbox_x=x, bbox_y=y, bbox_w=bw, bbox_h=bh, **row)


def _at(names: list[str], i: int) -> str | None:
    return names[i] if i < len(names) else None


def rectangle(p: list[tuple[float, float]]) -> tuple[float, float, float, float, float] | None:
    """(x, y, w, h, angle) of the unrotated box whose corners, turned clockwise by
    `angle` degrees about the centre, are p0..p3 in order; None unless p is a rectangle.

    The first edge gives the angle and width, the second the height: CVAT and
    Ultralytics write the corners as top-left, top-right, bottom-right,
    bottom-left of the unrotated box. The tolerance covers the 6-decimal
    rounding of normalized coordinates.
    """
    e = [(p[(i + 1) % 4][0] - p[i][0], p[(i + 1) % 4][1] - p[i][1]) for i in range(4)]
    w, h = math.hypot(*e[0]), math.hypot(*e[1])
    if min(w, h) < 1e-9:
        return None
    tol = 1e-3 * max(w, h) + 1e-2
    if math.hypot(e[0][0] + e[2][0], e[0][1] + e[2][1]) > tol:
        return None
    if math.hypot(e[1][0] + e[3][0], e[1][1] + e[3][1]) > tol:
        return None
    if abs(e[0][0] * e[1][0] + e[0][1] * e[1][1]) > tol * max(w, h):
        return None
    cx = sum(q[0] for q in p) / 4
    cy = sum(q[1] for q in p) / 4
    angle = round(math.degrees(math.atan2(e[0][1], e[0][0])) % 360.0, 4) % 360.0
    return cx - w / 2, cy - h / 2, w, h, angle
