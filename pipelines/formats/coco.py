"""COCO: instances, person keypoints, captions (and the exports of CVAT and Encord).

Reading frames the file once (pipelines/jsonframe.py) and parses the
`annotations` array in chunks, one task per chunk group, so a 50 GB file is
read in parallel and in constant memory whatever the order of its top-level
keys. The usual records of a chunk are mapped a column at a time
(_coco_fast.py); the mapping below, row by row, is the reference it must match
and what every other record goes through. Mapping:

- image → item (`item_id` = "<file stem>/<image id>"); fields without a column
  → item `metadata`.
- annotation → one row, kind from its geometry: polygon (parts in
  points.part), mask (RLE, stored compressed), bbox, caption. An annotation
  with keypoints gives a `keypoints` row too (same `group_id`, points named
  from the category, COCO visibility).
- `attributes` (CVAT style) → attributes with source "attributes" (occluded,
  rotation, track_id, keyframe also fill their columns); unknown keys →
  attributes with source "coco"; `score` → confidence.
- categories (supercategory, keypoints, skeleton), `info` and `licenses` →
  attributes owned by the label or the dataset, so the writer restores them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipelines import jsonframe, memory
from pipelines.builder import BatchBuilder, is_finite, to_json
from pipelines.errors import ParseError
from pipelines.formats._coco_fast import (
    IMAGE_KNOWN,
    ColumnMapper,
    Fallback,
    ImageIds,
    attribute_values,
    image_segments,
)
from pipelines.formats.base import Detection, Format, Later, ReadOptions, ReadTask, plan_each
from pipelines.masks import from_uncompressed
from pipelines.schema import Batch
from pipelines.storage import Source

LAYOUT = "coco_layout"
"""Attribute source for how the export spelled a value, not what it means."""

BATCH_SHARE = 2
"""COCO's batches hold half the rows of others': most rows are vertices (13 an
annotation on the 200 MB corpus), held as Python floats until the batch is flushed.
COCO → YOLO, 200 MB, 2 workers: tree RSS 266–273 → 252–261 MB, the same time (ten
alternating pairs); an iTAG read, whose batches cost more each, took 30% longer so."""

_KNOWN = {
    "id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation",
    "keypoints", "num_keypoints", "score", "attributes", "caption",
}  # fmt: skip
_IMAGE_KNOWN = IMAGE_KNOWN
_COLUMN_ATTRIBUTES = {"occluded", "rotation", "track_id", "keyframe"}
_DETECT_KEYS = (b'"images"', b'"annotations"', b'"categories"')


def detect(source: Source) -> Detection | None:
    if source.is_dir:
        found = _coco_files(source)
        return Detection(0.9, f"COCO JSON files: {', '.join(found[:3])}") if found else None
    if not source.name.lower().endswith(".json"):
        return None
    return _detect_head(source.head())


def _detect_head(head: bytes) -> Detection | None:
    """COCO has an `images` list; its annotations point at images by `image_id`.

    Datumaro's files also have `annotations` and `categories`, but no `images`
    and no `image_id`, so neither key pair alone is enough.
    """
    if b'"images"' in head and (b'"annotations"' in head or b'"file_name"' in head):
        return Detection(0.8, 'JSON object with "images" and "annotations"/"file_name"')
    if b'"annotations"' in head and b'"image_id"' in head and b'"category_id"' in head:
        return Detection(0.7, 'JSON object whose "annotations" carry image_id and category_id')
    return None


def _coco_files(source: Source) -> list[str]:
    out = []
    for rel in source.glob(".json"):
        if rel.count("/") > 2:
            continue
        if _detect_head(source.head(rel)):
            out.append(rel)
    return out


def subset_of(member: str) -> str:
    """instances_train2017.json → train2017; person_keypoints_val.json → val."""
    stem = posixpath.splitext(posixpath.basename(member))[0]
    for prefix in ("instances_", "person_keypoints_", "captions_", "panoptic_", "image_info_"):
        if stem.startswith(prefix):
            return stem[len(prefix) :]
    return stem


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    members = _coco_files(source) if source.is_dir else [""]
    return plan_each(source, members, "coco", lambda m: _plan_file(source, m, options))


def _plan_file(source: Source, member: str, options: ReadOptions) -> list[ReadTask]:
    uri = source.uri(member)
    with source.open(member) as f:
        values = {v.key: v for v in jsonframe.frame(f, uri)}
        if "images" not in values or values["images"].kind != "array":
            raise ParseError(uri, "$", "no 'images' array: not a COCO file")
        cats = values.get("categories")
        categories = jsonframe.read_value(f, uri, cats, "$.categories") if cats else []
        head = {
            k: jsonframe.read_value(f, uri, v, f"$.{k}")
            for k, v in values.items()
            if k not in ("images", "annotations", "categories")
        }
    stem = posixpath.splitext(posixpath.basename(member or source.name))[0]
    base = {
        "stem": stem,
        "images": values["images"],
        "categories": categories if isinstance(categories, list) else [],
    }
    subset = subset_of(member or source.name)
    # The first task carries the images and the dataset-level fields.
    first = {**base, "head": head, "role": "images"}
    images = values["images"]
    anns = values.get("annotations")
    chunks = anns.chunks if anns and anns.kind == "array" else []
    end = max(chunks[-1].end, images.end) if chunks else images.end
    if chunks and end - images.start <= jsonframe.ONE_TASK_BYTES:
        first.update(role="all", chunks=chunks)
        return [ReadTask("coco", source, member, subset, images.start, end, first, options)]
    tasks = [ReadTask("coco", source, member, subset, images.start, images.end, first, options)]
    for group in jsonframe.task_groups(chunks, options.workers, _chunk_bytes):
        ctx = {**base, "role": "annotations", "chunks": group}
        start, end = group[0].start, group[-1].end
        tasks.append(ReadTask("coco", source, member, subset, start, end, ctx, options))
    return tasks


def _chunk_bytes(chunk: jsonframe.Chunk) -> int:
    return chunk.end - chunk.start


def read(task: ReadTask) -> Iterator[Batch]:
    ctx = task.context
    b = task.builder(share=BATCH_SHARE)
    with task.source.open(task.member) as f:
        if ctx["role"] in ("images", "all"):
            yield from _read_images(task, f, b)
        if ctx["role"] in ("annotations", "all"):
            reader = _AnnotationReader(task, b, _image_index(task))
            chunks = jsonframe.iter_chunks(f, task.uri, ctx["chunks"], "$.annotations")
            for first, elements in chunks:
                reader.add_chunk(first, elements)
                del elements
                if b.full():
                    yield b.flush()
    yield b.flush()


def _read_images(task: ReadTask, f, b: BatchBuilder) -> Iterator[Batch]:
    ctx = task.context
    stem = ctx["stem"]
    owner = f"dataset:{stem}"
    for key, value in ctx["head"].items():
        b.attribute(owner, None, key, value, owner_kind="dataset", source="coco")
    for cat in ctx["categories"]:
        if isinstance(cat, dict) and "name" in cat:
            extra = {k: v for k, v in cat.items() if k != "name"}
            b.attributes(f"label:{cat['name']}", None, extra, owner_kind="label", source="coco")
    for first, images in jsonframe.iter_chunks(f, task.uri, ctx["images"].chunks, "$.images"):
        try:
            for start, stop, columns in image_segments(stem, task.subset, first, images, to_json):
                if columns is None:
                    _add_image(task, b, first + start, images[start])
                else:
                    b.item_block(columns, stop - start)
        except Fallback:
            for i, img in enumerate(images, start=first):
                _add_image(task, b, i, img)
                if b.full():
                    yield b.flush()
        del images
        if b.full():
            yield b.flush()


def _add_image(task: ReadTask, b: BatchBuilder, i: int, img: Any) -> None:
    """One image, row by row: the reference mapping (see `image_segments`)."""
    where = f"$.images[{i}]"
    if not isinstance(img, dict) or "id" not in img:
        b.reject(where, "image without an id", record=img, record_kind="items")
        return
    w, h = img.get("width"), img.get("height")
    if not (_int_or_none(w) and _int_or_none(h)):
        b.reject(where, "width/height must be integers", record=img, record_kind="items")
        return
    extra = {k: v for k, v in img.items() if k not in _IMAGE_KNOWN}
    b.item(
        item_id=f"{task.context['stem']}/{img['id']}",
        native_id=str(img["id"]),
        file_name=img.get("file_name"),
        media_uri=img.get("coco_url") or img.get("file_name"),
        media_type="image",
        width=w,
        height=h,
        subset=task.subset,
        metadata=to_json(extra) if extra else None,
    )


def _int_or_none(v: Any) -> bool:
    return (
        v is None
        or (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    )


_IMAGE_IDS: dict[tuple, ImageIds] = {}


def _image_index(task: ReadTask) -> ImageIds:
    """The file's image ids, parsed chunk by chunk once per process (every annotation
    task of a file needs them to tell a dangling image_id)."""
    images = task.context["images"]
    key = (task.source.url, task.member, images.start, images.end)
    if key not in _IMAGE_IDS:
        # Each chunk's int ids go to an array at once: a list of the parsed ints would
        # pin them, scattered among the freed dicts, and keep that memory from the system.
        ints: list[np.ndarray] = []
        texts: set[str] = set()
        with task.source.open(task.member) as f:
            for _, chunk in jsonframe.iter_chunks(f, task.uri, images.chunks, "$.images"):
                found: list[int] = []
                for img in chunk:
                    if isinstance(img, dict):
                        v = img.get("id")
                        if type(v) is int and -(2**63) <= v < 2**63:
                            found.append(v)
                        else:
                            texts.add(str(v))
                ints.append(np.array(found, dtype=np.int64))
                del chunk, found
        _IMAGE_IDS.clear()  # one file at a time: a worker never holds two indexes
        ids = np.concatenate(ints) if ints else np.array([], dtype=np.int64)
        del ints  # each chunk's array freed before the index sorts the joined one
        _IMAGE_IDS[key] = ImageIds(ids, texts)
        del ids, texts
        memory.trim()  # the parsed images were freed among live objects
    return _IMAGE_IDS[key]


class _AnnotationReader:
    """Maps one COCO annotation dict to rows; rejects what cannot be mapped."""

    def __init__(self, task: ReadTask, b: BatchBuilder, image_ids: ImageIds) -> None:
        self.b = b
        self.stem = task.context["stem"]
        self.image_ids = image_ids
        self.cats: dict[Any, dict] = {
            c.get("id"): c for c in task.context["categories"] if isinstance(c, dict)
        }
        self.columns = ColumnMapper(self.stem, image_ids, self.cats, _check)

    def add_chunk(self, first: int, anns: list) -> None:
        """Map a parsed chunk: certified rows by columns, the others row by row, in order."""
        try:
            for start, stop, chunk in self.columns.segments(first, anns):
                if chunk is None:
                    self.add(first + start, anns[start])
                else:
                    self.columns.emit(chunk, start, stop, self.b, LAYOUT)
        except Fallback:
            for i, ann in enumerate(anns, start=first):
                self.add(i, ann)

    def add(self, i: int, ann: Any) -> None:
        b = self.b
        where = f"$.annotations[{i}]"
        if not isinstance(ann, dict):
            b.reject(where, "annotation is not an object", record=ann)
            return
        native = ann.get("id")
        image = str(ann.get("image_id"))
        if image not in self.image_ids:
            b.reject(where, f"image_id {ann.get('image_id')!r} not in images", record=ann,
                     native_id=native)  # fmt: skip
            return
        item_id = f"{self.stem}/{image}"
        ann_id = f"{self.stem}/a{i}"
        problem = _check(ann)
        if problem:
            b.reject(where, problem, record=ann, native_id=native)
            return
        cat = self.cats.get(ann.get("category_id"), {})
        bbox = ann.get("bbox") or (None,) * 4
        seg = ann.get("segmentation")
        attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
        row = {
            "ann_id": ann_id,
            "item_id": item_id,
            "native_id": None if native is None else str(native),
            "label": cat.get("name"),
            "label_id": None if ann.get("category_id") is None else str(ann["category_id"]),
            "units": "px",
            "bbox_x": bbox[0],
            "bbox_y": bbox[1],
            "bbox_w": bbox[2],
            "bbox_h": bbox[3],
            "area": ann.get("area"),
            "iscrowd": bool(ann.get("iscrowd")) if "iscrowd" in ann else None,
            "confidence": ann.get("score"),
            **attribute_values(attrs),
        }
        kpts = ann.get("keypoints")
        caption = ann.get("caption")
        if kpts:
            row["group_id"] = f"{self.stem}/g{i}"
        if seg:
            self._shape(row, seg, ann_id, item_id)
        elif isinstance(caption, str):
            b.annotation(**row, kind="caption", text=caption)
        elif not kpts:
            b.annotation(**row, kind="rotated_bbox" if row["angle_deg"] else "bbox")
        if kpts:
            self._keypoints(row, cat, kpts, f"{ann_id}k" if seg or caption else ann_id)
        if attrs:
            b.attributes(ann_id, item_id, attrs, source="attributes")
        extra = {k: v for k, v in ann.items() if k not in _KNOWN or v is None}
        if "num_keypoints" in ann and kpts and ann["num_keypoints"] != _visible(kpts):
            extra["num_keypoints"] = ann["num_keypoints"]
        if not isinstance(ann.get("attributes", {}), dict):
            extra["attributes"] = ann["attributes"]
        if extra:
            b.attributes(ann_id, item_id, extra, source="coco")

    def _shape(self, row: dict, seg: Any, ann_id: str, item_id: str) -> None:
        b = self.b
        if isinstance(seg, dict):
            h, w = (int(v) for v in seg["size"])
            counts = seg["counts"]
            if isinstance(counts, str):
                rle = counts
            else:
                rle = from_uncompressed(counts, h, w)
                # Remembered so the writer gives back the form the export used.
                b.attribute(ann_id, item_id, "rle", "uncompressed", source=LAYOUT)
            b.annotation(**row, kind="mask", mask=rle, mask_h=h, mask_w=w)
        else:
            parts = seg if isinstance(seg[0], list) else [seg]
            b.annotation(**row, kind="polygon")
            for part, coords in enumerate(parts):
                b.points(ann_id, item_id, coords, part=part)

    def _keypoints(self, row: dict, cat: dict, kpts: list, kid: str) -> None:
        names = cat.get("keypoints") if isinstance(cat.get("keypoints"), list) else []
        self.b.annotation(**{**row, "ann_id": kid, "kind": "keypoints"})
        self.b.named_points(
            kid,
            row["item_id"],
            [
                {
                    "x": kpts[j],
                    "y": kpts[j + 1],
                    "visibility": int(kpts[j + 2]),
                    "name": names[j // 3] if j // 3 < len(names) else None,
                }
                for j in range(0, len(kpts) - 2, 3)
            ],
        )


def _visible(kpts: list) -> int:
    return sum(1 for v in kpts[2::3] if v and v > 0)


def _check(ann: dict) -> str | None:
    """Why an annotation cannot be mapped, or None."""
    bbox = ann.get("bbox")
    if bbox is not None and bbox != [] and (len(bbox) != 4 or not is_finite(*bbox)):
        return f"bbox must be 4 finite numbers, got {bbox!r}"[:200]
    if ann.get("area") is not None and not is_finite(ann["area"]):
        return f"area must be a finite number, got {ann['area']!r}"
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and is_finite(*size)):
            return "RLE segmentation needs size [height, width]"
        if not isinstance(counts, (str, list)):
            return "RLE counts must be a string or a list of run lengths"
        if isinstance(counts, list) and sum(counts) != size[0] * size[1]:
            return f"RLE counts sum to {sum(counts)}, expected {size[0] * size[1]}"
    elif isinstance(seg, list) and seg:
        parts = seg if isinstance(seg[0], list) else [seg]
        for k, part in enumerate(parts):
            if not isinstance(part, list) or len(part) % 2 or len(part) < 2:
                return f"polygon part {k} must have an even number of coordinates"
            if not is_finite(*part):
                return f"polygon part {k} has a coordinate that is not a finite number"
    elif seg is not None and seg != []:
        return f"segmentation must be a list of polygons or an RLE object, got {type(seg).__name__}"
    kpts = ann.get("keypoints")
    if kpts and (not isinstance(kpts, list) or len(kpts) % 3 or not is_finite(*kpts)):
        return "keypoints must be finite x, y, v triples"
    return None


BLOCK_MAPPING = 4 << 20
"""`Format.mapped_blocks` of COCO: a part's blocks come and go by the thousand, most of
their buffers over 128 KB; mapped afresh each time, they were faulted in page by page.
From the heap they are reused, for about the same peak (staging 1 GB, alternating:
one worker 41.8-45.3 -> 39.0-42.4 s, two 24.2-25.9 -> 23.0-24.3 s; tree PSS 334-350 /
576-579 MB -> 343-358 / 563-593 MB). Set for the whole run on 200 MB with two workers,
1 MB and 32 MB were slower: 5.0-5.14 and 5.15-5.18 s; 4 MB 4.95-5.07, 128 KB 5.12-5.17."""

FORMAT = Format(
    name="coco",
    description="COCO instances, person keypoints and captions JSON (CVAT, Encord and others)",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=Later("pipelines.formats._coco_write", "plan_write"),
    write=Later("pipelines.formats._coco_write", "write"),
    mapped_blocks=BLOCK_MAPPING,
)
