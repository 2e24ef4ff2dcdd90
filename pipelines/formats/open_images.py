"""Open Images (V5/V6 CSV layout, as CVAT exports it).

    annotations/oidv6-class-descriptions.csv        LabelName,DisplayName (V5:
      or class-descriptions[-boxable].csv           class-descriptions.csv, no header)
    annotations/bbox_labels_600_hierarchy.json      the label tree (optional)
    annotations/images.meta                         `<ImageID> <height> <width>` a line
                                                    (optional; `#` comments)
    annotations/image_ids_and_rotation.csv          ImageID, Subset, ..., Rotation (V5:
      or <subset>-images[-with-labels]-with-rotation.csv     one file a subset)
    annotations/[oidv6-]<subset>-annotations-human-imagelabels.csv   image-level labels
    annotations/[oidv6-]<subset>-annotations-bbox.csv                boxes, normalized
    annotations/<subset>-annotations-object-segmentation.csv         masks
    images/<subset>/<ImageID>.jpg, masks/<subset>/<MaskPath>

An image's rows are spread over several files, so each read task files every row of
its share of images (by a hash of ImageID) into DuckDB and reads them back sorted by
ImageID: an item and all its annotations then come out together, in bounded memory.
With more workers, more tasks each keep a smaller share.

Mapping: an item per ImageID (`item_id` = subset/ImageID; the description row's other
fields in `metadata`), sized by images.meta, else the image header. Image-level labels
→ `tag` (confidence = Confidence; 0 is a verified absence). Boxes → `bbox` in `norm`
units (the normalize transform makes pixels): IsOccluded → `occluded`, IsTruncated,
IsGroupOf, IsDepiction, IsInside → boolean attributes (−1, unknown, gives none).
Masks → `mask` scaled to the image size, linked to their box by `group_id` when the
box's label and coordinates match. Labels are the LabelNames (MIDs); DisplayName and
the hierarchy's parent are label attributes. An annotation needing the image size of
an image without one is rejected with that reason. See `_open_images_write`.
"""

from __future__ import annotations

import csv
import io
import posixpath
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from fnmatch import fnmatch
from typing import Any

import orjson
import pyarrow as pa

from pipelines.builder import BatchBuilder, is_finite, to_json
from pipelines.errors import ParseError, UnsafePathError
from pipelines.formats import _label_masks as lm
from pipelines.formats import _open_images_write
from pipelines.formats import _per_image as per_image
from pipelines.formats.base import Detection, Format, ReadOptions, ReadTask
from pipelines.schema import Batch
from pipelines.storage import Source

NAME = "open_images"
SOURCE = "open_images"
ANNOTATIONS, IMAGES, MASKS = "annotations", "images", "masks"
META = "images.meta"
HIERARCHY = "bbox_labels_600_hierarchy.json"
CLASS_FILES = ("oidv*-class-descriptions.csv", "class-descriptions-boxable.csv",
               "class-descriptions.csv")  # fmt: skip
FULL_DESCRIPTION = "image_ids_and_rotation.csv"
SUBSET_DESCRIPTIONS = ("*-images-with-rotation.csv", "*-images-with-labels-with-rotation.csv")
RANKS = {"image": 0, "label": 1, "bbox": 2, "mask": 3}
"""Row kinds in the order an image's rows are read."""
_KIND_OF_RANK = {rank: kind for kind, rank in RANKS.items()}
SUFFIXES = {
    "label": ("-annotations-human-imagelabels.csv", "-annotations-machine-imagelabels.csv"),
    "bbox": ("-annotations-bbox.csv",),
    "mask": ("-annotations-object-segmentation.csv",),
}
FLAGS = (("IsTruncated", "truncated"), ("IsGroupOf", "is_group_of"),
         ("IsDepiction", "is_depiction"), ("IsInside", "is_inside"))  # fmt: skip
_BOX = ("XMin", "XMax", "YMin", "YMax")
_MASK_BOX = ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")
_KNOWN = {
    "label": {"ImageID", "LabelName", "Confidence", "Source"},
    "bbox": {"ImageID", "LabelName", "Confidence", "Source", "IsOccluded", *_BOX}
    | {f for f, _ in FLAGS},
    "mask": {"ImageID", "LabelName", "MaskPath", "BoxID", "PredictedIoU", "Clicks", *_MASK_BOX},
}
_CHUNK = 50_000
_MAX_SHARDS = 16


# -- layout ------------------------------------------------------------------------------


def _annotation_dir(source: Source) -> str:
    return ANNOTATIONS if any(f.startswith(ANNOTATIONS + "/") for f in source.files) else ""


def _annotation_files(source: Source) -> dict[str, str]:
    """File name → member of the flat annotation folder."""
    folder = _annotation_dir(source)
    prefix = folder + "/" if folder else ""
    return {
        f[len(prefix) :]: f
        for f in source.files
        if f.startswith(prefix) and "/" not in f[len(prefix) :]
    }


def _matching(files: dict[str, str], *patterns: str) -> list[str]:
    return sorted(name for name in files if any(fnmatch(name, p) for p in patterns))


def subset_of(file_name: str) -> str:
    """The subset an annotation file is about: `oidv6-train-annotations-bbox.csv` → train."""
    parts = file_name.split("-")
    return parts[1] if parts[0].startswith("oidv") and len(parts) > 1 else parts[0]


def _layout(source: Source) -> dict[str, Any]:
    files = _annotation_files(source)
    descriptions = [FULL_DESCRIPTION] if FULL_DESCRIPTION in files else []
    descriptions = descriptions or _matching(files, *SUBSET_DESCRIPTIONS)
    csvs = [("image", name) for name in descriptions]
    for kind, suffixes in SUFFIXES.items():
        csvs += [(kind, n) for n in _matching(files, *(f"*{s}" for s in suffixes))]
    classes = next((n for p in CLASS_FILES for n in _matching(files, p)), None)
    return {
        "csvs": [(kind, files[name], subset_of(name)) for kind, name in csvs],
        "classes": files.get(classes) if classes else None,
        "hierarchy": files.get(HIERARCHY),
        "meta": files.get(META),
    }


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        return None
    files = _annotation_files(source)
    patterns = (
        FULL_DESCRIPTION,
        *SUBSET_DESCRIPTIONS,
        *(f"*{s}" for suffixes in SUFFIXES.values() for s in suffixes),
    )
    found = _matching(files, *patterns)
    for name in found[:3]:
        head = source.head(files[name], 1024).decode("utf-8-sig", "replace")
        if head.startswith(("ImageID,", "MaskPath,")):
            return Detection(0.9, f"Open Images CSVs: {', '.join(found[:3])}")
    return None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    layout = _layout(source)
    if not layout["csvs"]:
        return []
    shards = max(1, min(options.workers, _MAX_SHARDS))
    return [
        ReadTask(NAME, source, context={**layout, "shard": k, "shards": shards}, options=options)
        for k in range(shards)
    ]


# -- small files ---------------------------------------------------------------------------


def _lines(source: Source, member: str) -> Iterator[tuple[int, str]]:
    with source.open(member) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        n = 0
        try:
            for n, line in enumerate(text, 1):
                yield n, line
        except UnicodeDecodeError as exc:
            raise ParseError(source.uri(member), f"line {n + 1}", "not UTF-8 text") from exc


def _classes(source: Source, member: str | None) -> dict[str, str]:
    """LabelName → DisplayName; V5's files have no header row."""
    if member is None:
        return {}
    out: dict[str, str] = {}
    rows = csv.reader(line for _, line in _lines(source, member))
    try:
        for row in rows:
            if rows.line_num == 1 and row[:2] == ["LabelName", "DisplayName"]:
                continue
            if len(row) >= 2:
                out.setdefault(row[0], row[1])
            elif row:
                reason = "expected LabelName,DisplayName"
                raise ParseError(source.uri(member), f"line {rows.line_num}", reason)
    except csv.Error as exc:
        raise ParseError(source.uri(member), f"line {rows.line_num}", str(exc)) from exc
    return out


def _parents(source: Source, member: str | None) -> dict[str, str]:
    if member is None:
        return {}
    with source.open(member) as f:
        try:
            root = orjson.loads(f.read())
        except orjson.JSONDecodeError as exc:
            raise ParseError(source.uri(member), f"byte {exc.pos}", exc.msg) from exc
    out: dict[str, str] = {}
    stack = [root] if isinstance(root, dict) else []
    while stack:
        node = stack.pop()
        for child in node.get("Subcategory") or []:
            if isinstance(child, dict) and "LabelName" in child:
                out.setdefault(child["LabelName"], node.get("LabelName"))
                stack.append(child)
    return out


def _meta(source: Source, member: str | None, keep: Any) -> dict[str, tuple[int, int]]:
    """ImageID → (width, height) from images.meta (`id height width` a line)."""
    out: dict[str, tuple[int, int]] = {}
    for n, line in _lines(source, member) if member else ():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 3 or not (fields[1].isdigit() and fields[2].isdigit()):
            raise ParseError(
                source.uri(member), f"line {n}", "expected `<image id> <height> <width>`"
            )
        if keep(fields[0]):
            out[fields[0]] = (int(fields[2]), int(fields[1]))
    return out


def _image_index(source: Source) -> dict[str, dict[str, str]]:
    """ImageID → {subset folder: member}, for images/<subset>/<ImageID>.<ext>."""
    out: dict[str, dict[str, str]] = {}
    for f in source.files:
        parts = f.split("/")
        if len(parts) >= 3 and parts[0] == IMAGES and per_image.is_image(f):
            out.setdefault(per_image.strip_ext("/".join(parts[2:])), {})[parts[1]] = f
    return out


# -- the rows of a share of images, sorted by image -----------------------------------------


def _sorted_rows(task: ReadTask, headers: dict[int, list[str]]) -> Iterator[list[tuple]]:
    """Every CSV row of the task's images, grouped by ImageID, in (kind, file, line) order.

    Rows are (rank, file index, line, fields); `headers` is filled with each file's header.
    """
    ctx, src = task.context, task.source
    import duckdb  # here: detecting formats imports this module, and needs no DuckDB

    spill = tempfile.mkdtemp(prefix="labelflow-oid-")
    con = duckdb.connect(config={"memory_limit": "512MB", "threads": 1, "temp_directory": spill})
    try:
        con.execute(
            "CREATE TABLE rows (image_id VARCHAR, rank INTEGER, file INTEGER, line BIGINT, "
            "data VARCHAR)"
        )
        for f, (kind, member, _) in enumerate(ctx["csvs"]):
            headers[f] = _file_rows(con, src, member, RANKS[kind], f, ctx)
        reader = con.sql("SELECT * FROM rows ORDER BY image_id, rank, file, line").to_arrow_reader(
            _CHUNK
        )
        image, group = None, []
        for batch in reader:
            columns = [c.to_pylist() for c in batch.columns]
            for image_id, rank, f, line, data in zip(*columns, strict=True):
                if group and image_id != image:
                    yield group
                    group = []
                image = image_id
                group.append((rank, f, line, orjson.loads(data)))
        if group:
            yield group
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _file_rows(con: Any, src: Source, member: str, rank: int, f: int, ctx: dict) -> list[str]:
    """Files the task's rows of one CSV into DuckDB; returns the CSV's header."""
    shard, shards = ctx["shard"], ctx["shards"]
    cols: dict[str, list] = {"image_id": [], "rank": [], "file": [], "line": [], "data": []}
    reader = csv.reader(line for _, line in _lines(src, member))
    try:
        header = next(reader, None)
        if not header or "ImageID" not in header:
            raise ParseError(src.uri(member), "line 1", "no ImageID column in the header")
        key = header.index("ImageID")
        for row in reader:
            if not row:
                continue
            image_id = row[key] if key < len(row) else ""
            if shards > 1 and zlib.crc32(image_id.encode()) % shards != shard:
                continue
            cols["image_id"].append(image_id)
            cols["line"].append(reader.line_num)
            cols["data"].append(to_json(row))
            if len(cols["data"]) >= _CHUNK:
                _insert(con, cols, rank, f)
    except csv.Error as exc:
        raise ParseError(src.uri(member), f"line {reader.line_num}", str(exc)) from exc
    _insert(con, cols, rank, f)
    return header


def _insert(con: Any, cols: dict[str, list], rank: int, f: int) -> None:
    n = len(cols["data"])
    if n == 0:
        return
    table = pa.table(
        {
            "image_id": pa.array(cols["image_id"], pa.string()),
            "rank": pa.array([rank] * n, pa.int32()),
            "file": pa.array([f] * n, pa.int32()),
            "line": pa.array(cols["line"], pa.int64()),
            "data": pa.array(cols["data"], pa.string()),
        }
    )
    con.register("_chunk", table)
    con.execute("INSERT INTO rows SELECT * FROM _chunk")
    con.unregister("_chunk")
    for values in cols.values():
        values.clear()


# -- reading -------------------------------------------------------------------------------


def read(task: ReadTask) -> Iterator[Batch]:
    ctx, src = task.context, task.source
    b = task.builder()
    classes = _classes(src, ctx["classes"])
    parents = _parents(src, ctx["hierarchy"])
    if ctx["shard"] == 0:
        for label in dict.fromkeys([*classes, *parents]):
            values = {"display_name": classes.get(label), "parent": parents.get(label)}
            values = {k: v for k, v in values.items() if v is not None}
            b.attributes(f"label:{label}", None, values, owner_kind="label", source=SOURCE)
    shard, shards = ctx["shard"], ctx["shards"]
    meta = _meta(
        src,
        ctx["meta"],
        lambda i: shards == 1 or zlib.crc32(i.encode()) % shards == shard,
    )
    reader = _ImageReader(task, b, meta, _image_index(src))
    headers: dict[int, list[str]] = {}
    for group in _sorted_rows(task, headers):
        reader.read(group, headers)
        if b.full():
            yield b.flush()
    yield b.flush()


def _file_name(image: str | None, prefix: str, image_id: str) -> str:
    """The image's path below images/<subset>/, or the name Open Images would give it."""
    if image is None:
        return f"{image_id}.jpg"
    return image[len(prefix) :] if image.startswith(prefix) else posixpath.basename(image)


def _flag(value: str | None) -> bool | None:
    """Open Images' 1 / 0 / -1 (unknown)."""
    return {"1": True, "0": False}.get((value or "").strip())


def _float(value: str | None) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if is_finite(v) else None


class _ImageReader:
    """One image's rows → an item and its annotations (emitted together)."""

    def __init__(self, task: ReadTask, b: BatchBuilder, meta: dict, images: dict) -> None:
        self.task, self.b, self.meta, self.images = task, b, meta, images
        self.csvs = task.context["csvs"]

    def _where(self, f: int, line: int) -> str:
        return f"{self.csvs[f][1]} line {line}"

    def read(self, group: list[tuple], headers: dict[int, list[str]]) -> None:
        rows = [(rank, f, line, dict(zip(headers[f], fields, strict=False)), fields)
                for rank, f, line, fields in group]  # fmt: skip
        image_id = rows[0][3]["ImageID"]
        if not image_id:
            for _, f, line, _, fields in rows:
                where = self._where(f, line)
                self.b.reject(where, "no ImageID", record=fields, record_kind="annotations")
            return
        described = [r for r in rows if r[0] == RANKS["image"]]
        for _, f, line, _, fields in described[1:]:
            reason = f"image {image_id} is described twice"
            self.b.reject(self._where(f, line), reason, record=fields, record_kind="items")
        desc = described[0][3] if described else {}
        subset = desc.get("Subset") or self.csvs[rows[0][1]][2]
        item_id = f"{subset}/{image_id}" if subset else image_id
        found = self.images.get(image_id, {})
        image = found.get(subset) or next(iter(found.values()), None)
        size = self.meta.get(image_id)
        if size is None:
            size, _ = per_image.find_size(self.task.source, image, [image_id], self.task.options)
        extra = {k: v for k, v in desc.items() if k not in ("ImageID", "Subset") and v}
        prefix = f"{IMAGES}/{subset}/"
        self.b.item(
            item_id=item_id,
            native_id=image_id,
            file_name=_file_name(image, prefix, image_id),
            media_uri=self.task.source.uri(image) if image else None,
            media_type="image",
            width=size[0] if size else None,
            height=size[1] if size else None,
            subset=subset,
            metadata=to_json(extra) if extra else None,
        )
        self.item_id, self.size, self.subset = item_id, size, subset
        self.boxes: list[tuple[str, str, tuple[float, ...]]] = []
        self.rows: list[tuple[dict, dict]] = []
        counts = {"label": 0, "bbox": 0, "mask": 0}
        for rank, f, line, rec, fields in rows:
            kind = _KIND_OF_RANK[rank]
            if kind == "image":
                continue
            counts[kind] += 1
            where = self._where(f, line)
            ann_id = f"{item_id}/{kind}/{counts[kind]}"
            getattr(self, f"_{kind}")(ann_id, rec, where, fields)
        for row, attrs in self.rows:
            self.b.annotation(item_id=item_id, **row)
            self.b.attributes(row["ann_id"], item_id, attrs, source=SOURCE)

    def _extra(self, kind: str, rec: dict) -> dict[str, Any]:
        return {k: v for k, v in rec.items() if k not in _KNOWN[kind] and v}

    def _unsized(self, where: str, fields: list) -> bool:
        if self.size is None:
            reason = (
                f"image {self.item_id} has no size (not in {META}, image missing or "
                "unreadable, and no image_sizes entry)"
            )
            self.b.reject(where, reason, record=fields, record_kind="annotations")
        return self.size is None

    def _label(self, ann_id: str, rec: dict, where: str, fields: list) -> None:
        confidence = _float(rec.get("Confidence"))
        if not rec.get("LabelName") or (rec.get("Confidence") and confidence is None):
            reason = "no LabelName, or a Confidence that is not a number"
            self.b.reject(where, reason, record=fields, record_kind="annotations")
            return
        row = {"ann_id": ann_id, "kind": "tag", "label": rec["LabelName"]}
        attrs = {"source": rec.get("Source")} if rec.get("Source") else {}
        self.rows.append((row | {"confidence": confidence}, attrs | self._extra("label", rec)))

    def _bbox(self, ann_id: str, rec: dict, where: str, fields: list) -> None:
        box = [_float(rec.get(k)) for k in _BOX]
        if not rec.get("LabelName") or None in box or box[1] < box[0] or box[3] < box[2]:  # type: ignore[operator]
            reason = "no LabelName, or XMin/XMax/YMin/YMax not numbers with min <= max"
            self.b.reject(where, reason, record=fields, record_kind="annotations")
            return
        if self._unsized(where, fields):
            return
        x0, x1, y0, y1 = box  # type: ignore[misc]
        row = {"ann_id": ann_id, "kind": "bbox", "label": rec["LabelName"], "units": "norm"}
        row |= {"bbox_x": x0, "bbox_y": y0, "bbox_w": x1 - x0, "bbox_h": y1 - y0}
        row |= {
            "occluded": _flag(rec.get("IsOccluded")),
            "confidence": _float(rec.get("Confidence")),
        }
        attrs: dict[str, Any] = {"source": rec["Source"]} if rec.get("Source") else {}
        for column, key in FLAGS:
            if _flag(rec.get(column)) is not None:
                attrs[key] = _flag(rec.get(column))
        self.boxes.append((ann_id, rec["LabelName"], (x0, x1, y0, y1)))
        self.rows.append((row, attrs | self._extra("bbox", rec)))

    def _mask(self, ann_id: str, rec: dict, where: str, fields: list) -> None:
        path = rec.get("MaskPath") or ""
        if not rec.get("LabelName") or not path:
            reason = "no LabelName or MaskPath"
            self.b.reject(where, reason, record=fields, record_kind="annotations")
            return
        if self._unsized(where, fields):
            return
        src = self.task.source
        member = posixpath.join(MASKS, self.subset, path)
        try:
            arr = lm.load(src, member) if "/" not in path else "not a file name"
        except UnsafePathError as exc:
            arr = str(exc)
        if isinstance(arr, str):
            self.b.reject(where, f"mask {member}: {arr}", record=fields, record_kind="annotations")
            return
        w, h = self.size  # type: ignore[misc]
        m = lm.resize_nearest((arr.any(axis=2) if arr.ndim == 3 else arr != 0), h, w)
        row = {"ann_id": ann_id, "label": rec["LabelName"], **lm.mask_fields(m.astype(bool))}
        attrs: dict[str, Any] = {"mask_path": path}
        if rec.get("BoxID"):
            attrs["box_id"] = rec["BoxID"]
        iou = _float(rec.get("PredictedIoU"))
        if iou is not None or rec.get("PredictedIoU"):
            attrs["predicted_iou"] = iou if iou is not None else rec["PredictedIoU"]
        if rec.get("Clicks"):
            attrs["clicks"] = rec["Clicks"]
        coords = [_float(rec.get(k)) for k in _MASK_BOX]
        box = self._box_of(rec["LabelName"], coords) if None not in coords else None
        if box is not None:
            row["group_id"] = box["ann_id"]
            box["group_id"] = box["ann_id"]
        elif any(rec.get(k) for k in _MASK_BOX):
            attrs["box"] = [rec.get(k) for k in _MASK_BOX]
        self.rows.append((row, attrs | self._extra("mask", rec)))

    def _box_of(self, label: str, coords: list) -> dict | None:
        """The box row of the same label within 1e-6 of the mask's box (the CSVs' precision)."""
        for ann_id, box_label, box in self.boxes:
            if box_label == label and all(
                abs(a - b) <= 1e-6 for a, b in zip(box, coords, strict=True)
            ):
                return next(row for row, _ in self.rows if row["ann_id"] == ann_id)
        return None


FORMAT = Format(
    name=NAME,
    description="Open Images V5/V6 CSVs: image-level labels, normalized boxes, masks",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=_open_images_write.plan_write,
    write=_open_images_write.write,
    annotation_weight=25,  # a mask PNG at the image size: 0.26 ms (28k masks of 10 MB: 7.3 s)
)
