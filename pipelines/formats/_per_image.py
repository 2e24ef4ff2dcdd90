"""What formats with one annotation file per image share (YOLO, Pascal VOC).

Reading: thousands of tiny files are grouped into read tasks of bounded size,
so the runner neither starts a task nor writes a Parquet part per image.
Image sizes come from the run's `image_sizes` table or from image headers,
never from a guess.

Writing: one task per shard of items (each writes only its own items' files)
plus one task for the files the whole dataset shares (name lists, index
files), so `--workers` scales and no two tasks write the same file.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import masks
from pipelines.errors import ParseError
from pipelines.formats.base import ReadOptions, WriteOptions, WriteResult, WriteTask
from pipelines.images import IMAGE_SUFFIXES, image_size
from pipelines.staging import ItemGroup, Staging
from pipelines.storage import Output, Source, copy_stream

MAX_FILES_PER_TASK = 2_000
SHARED = -1
"""`WriteTask.shard` of the task that writes the dataset-wide files."""

_EXT = re.compile(r"\.[^./]*$")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def strip_ext(name: str) -> str:
    """`a/b.jpg` → `a/b`; the same rule as the SQL in `colliding_stems`."""
    return _EXT.sub("", name)


def read_text(source: Source, member: str) -> str:
    """A small text file, UTF-8 (a BOM is dropped); not UTF-8 → ParseError with its line."""
    with source.open(member) as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ParseError(source.uri(member), f"line {line}", "not UTF-8 text") from exc


def chunks(entries: Sequence[Any], options: ReadOptions) -> list[list[Any]]:
    """Split per-image entries into read tasks: about four per worker, at most 2,000 each."""
    if not entries:
        return []
    workers = max(1, options.workers)
    per = MAX_FILES_PER_TASK if workers == 1 else math.ceil(len(entries) / (workers * 4))
    per = max(1, min(per, MAX_FILES_PER_TASK))
    return [list(entries[i : i + per]) for i in range(0, len(entries), per)]


def given_size(options: ReadOptions, names: Iterable[str | None]) -> tuple[int, int] | None:
    """The size the run was given for an image, tried under each of its names.

    Names are tried as they are, then by base name, then by base name without
    extension, so a sizes table keyed `1.jpg` serves `obj_train_data/1.jpg`.
    """
    sizes = options.image_sizes
    if not sizes:
        return None
    tried: list[str] = []
    for name in names:
        if name:
            base = posixpath.basename(name)
            tried += [name, base, strip_ext(base)]
    for key in tried:
        if key in sizes:
            w, h = sizes[key]
            return int(w), int(h)
    return None


def find_size(
    source: Source, image: str | None, names: Iterable[str | None], options: ReadOptions
) -> tuple[tuple[int, int] | None, str]:
    """(width, height) of an item and where it came from, or (None, why not)."""
    size = given_size(options, names)
    if size:
        return size, "image_sizes"
    if not image:
        return None, "no image file found and no entry in image_sizes"
    size = image_size(source, image)
    if size:
        return size, "header"
    return None, f"{image} is not a readable image and has no entry in image_sizes"


# -- writing ------------------------------------------------------------------


def shard_count(staging: Staging, options: WriteOptions) -> int:
    workers = max(1, options.workers)
    if workers == 1:
        return 1
    items = int(staging.scalar("SELECT count(*) FROM items") or 0)
    return max(1, min(workers * 4, items))


def plan_sharded(
    fmt: str, staging: Staging, options: WriteOptions, shards: int | None = None, **extra: Any
) -> list[WriteTask]:
    """One task for the shared files, then one per shard of items: `shards` of them, or
    about four per worker.

    `extra` (computed once here, e.g. the class list) reaches every task, so
    all partitions agree on it.
    """
    opts = replace(options, extra={**options.extra, **extra})
    n = shards or shard_count(staging, options)
    return [WriteTask(fmt, shard=SHARED, shards=n, options=opts)] + [
        WriteTask(fmt, shard=k, shards=n, options=opts) for k in range(n)
    ]


def item_groups(staging: Staging, task: WriteTask, **options: Any) -> Iterator[ItemGroup]:
    """The write task's shard of items, each with what is attached to it; `options` go
    to `Staging.iter_items` (which columns, which vertices)."""
    return staging.iter_items(shard=task.shard, shards=task.shards, **options)


def rows(staging: Staging, sql: str, batch: int = 10_000) -> Iterator[dict[str, Any]]:
    """Rows of a query as dicts, fetched a batch at a time (index files span every item)."""
    cur = staging.con.cursor()
    cur.execute(sql)
    names = [d[0] for d in cur.description]
    while chunk := cur.fetchmany(batch):
        for row in chunk:
            yield dict(zip(names, row, strict=True))


def sized(items: pa.Table) -> np.ndarray:
    """Which rows of `items` have a width and a height (neither null nor zero)."""
    width = items.column("width").fill_null(0).to_numpy()
    height = items.column("height").fill_null(0).to_numpy()
    return (width != 0) & (height != 0)


def put(out: Output, rel: str, data: bytes | str, result: WriteResult) -> None:
    """Write one whole file (text as UTF-8) and list it among the files written."""
    out.write(rel, data.encode() if isinstance(data, str) else data)
    result.files.append(rel)


class LineFiles:
    """Text files written line by line as rows stream past, one open handle per file.

    Index files (image lists, per-class flags) grow with the dataset; keeping
    their lines in memory would not.
    """

    def __init__(self, out: Output, result: WriteResult) -> None:
        self.out = out
        self.result = result
        self._open: dict[str, Any] = {}

    def add(self, rel: str, line: str) -> None:
        self._file(rel).write(f"{line}\n".encode())

    def extend(self, rel: str, lines: Iterable[str]) -> None:
        """Add several lines with one write."""
        text = "".join(f"{line}\n" for line in lines)
        if text:
            self._file(rel).write(text.encode())

    def touch(self, rel: str) -> None:
        self._file(rel)

    def _file(self, rel: str) -> Any:
        f = self._open.get(rel)
        if f is None:
            f = self._open[rel] = self.out.open(rel)
            self.result.files.append(rel)
        return f

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()


def item_name(item: dict[str, Any]) -> str:
    """The relative image name an item is written under (may contain folders)."""
    name = item.get("file_name") or item.get("native_id") or item["item_id"]
    return str(name).replace("\\", "/")


def colliding_stems(staging: Staging, per_subset: bool) -> set[tuple[str | None, str]]:
    """(subset, stem) keys that more than one item would be written under.

    `1.jpg` and `1.png` share the label file `1.txt`; writers give such items
    a suffix from their item id instead of letting one overwrite the other.
    With `per_subset=False` the subset is not part of the key (VOC keeps every
    subset's files in one folder).
    """
    if not staging.items_fit():
        subset = "subset" if per_subset else "NULL"
        names = "coalesce(nullif(file_name, ''), nullif(native_id, ''), item_id)"
        rows = staging.con.execute(
            f"SELECT {subset} AS s, lower(regexp_replace(replace({names}, '\\', '/'), ?, "
            "'')) AS k FROM items GROUP BY s, k HAVING count(*) > 1",
            [_EXT.pattern],
        ).fetchall()
        return {(r[0], r[1]) for r in rows}
    keys = []
    for items in staging.scan("items", ["item_id", "file_name", "native_id", "subset"]):
        stems = pc.replace_substring_regex(_item_names(items), _EXT.pattern, "")
        subset = items.column("subset").cast(pa.string())  # staged dictionary-encoded
        subsets = subset if per_subset else pa.nulls(len(items), pa.string())
        keys.append(pa.table({"s": subsets, "k": pc.utf8_lower(stems)}))
    if not keys:
        return set()
    # Sorted, a key that repeats is equal to the one before it. A `group_by` held a
    # third as much again (staging 1 GB, 410k items: +71-80 MB vs +25-28 MB, and
    # 0.33-0.39 s vs 0.27-0.30 s), in a plan whose other scans run beside it.
    table = pa.concat_tables(keys).combine_chunks()
    del keys
    table = table.take(pc.sort_indices(table, [("s", "ascending"), ("k", "ascending")]))
    s, k = table.column("s"), table.column("k")
    repeats = table.slice(1).filter(pc.and_(_same(k[1:], k[:-1]), _same(s[1:], s[:-1])))
    return set(zip(repeats.column("s").to_pylist(), repeats.column("k").to_pylist(), strict=True))


def _same(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    """Element-wise equality where two nulls are the same (items without a subset)."""
    return pc.fill_null(pc.equal(a, b), pc.and_(pc.is_null(a), pc.is_null(b)))


def output_stem(
    item: dict[str, Any], collisions: set[tuple[str | None, str]], per_subset: bool
) -> str:
    """The item's name without extension, made unique when it collides (see above)."""
    stem = strip_ext(item_name(item))
    key = (item.get("subset") if per_subset else None, stem.lower())
    if key in collisions:
        digest = hashlib.sha1(item["item_id"].encode()).hexdigest()[:8]
        stem = f"{stem}_{digest}"
    return stem


def output_stems(
    items: pa.Table, collisions: set[tuple[str | None, str]], per_subset: bool
) -> list[str]:
    """`output_stem` of every row of `items` (a batch with file_name, native_id, item_id
    and subset), a column at a time."""
    names = _item_names(items)
    stems = pc.replace_substring_regex(names, _EXT.pattern, "").to_pylist()
    if collisions:
        subset = items.column("subset").cast(pa.string())  # staged dictionary-encoded
        subsets = subset.to_pylist() if per_subset else [None] * len(stems)
        ids = items.column("item_id").to_pylist()
        for i, (subset, stem) in enumerate(zip(subsets, stems, strict=True)):
            if (subset, stem.lower()) in collisions:
                stems[i] = f"{stem}_{hashlib.sha1(ids[i].encode()).hexdigest()[:8]}"
    return stems


def _item_names(items: pa.Table) -> pa.ChunkedArray:
    """`item_name` a column at a time: the first non-empty name, `\\` as `/`."""

    def given(column: str) -> pa.ChunkedArray:
        values = items.column(column)
        return pc.if_else(pc.equal(values, ""), pa.scalar(None, values.type), values)

    names = pc.coalesce(given("file_name"), given("native_id"), items.column("item_id"))
    return pc.replace_substring(names, "\\", "/")


def image_suffix(item: dict[str, Any]) -> str:
    return _image_suffix(item_name(item), item.get("media_uri"))


def image_suffixes(items: pa.Table) -> pa.ChunkedArray:
    """`image_suffix` of every row of `items` (a batch that also has media_uri)."""
    names = _item_names(items)
    image = pc.fill_null(pc.match_substring_regex(names, _IMAGE_NAME), False)
    if pc.all(image).as_py():  # the usual case: media_uri is not needed
        return _last_suffix(names)
    media = items.column("media_uri")
    media_image = pc.fill_null(pc.match_substring_regex(media, _IMAGE_NAME), False)
    fallback = pc.if_else(media_image, _last_suffix(media), pa.scalar(".jpg"))
    return pc.if_else(image, _last_suffix(names), fallback)


def _last_suffix(names: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.struct_field(pc.extract_regex(names, r"(?P<ext>\.[^./]*)$"), [0])


def _any_case(suffix: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in suffix)


_IMAGE_NAME = r"(?s)(?:^|/)\.*[^./][^/]*(?:" + "|".join(_any_case(s) for s in IMAGE_SUFFIXES) + ")$"
"""A path whose `posixpath.splitext` extension `is_image`: the last name has a character
other than a dot before its last dot. The suffixes are ASCII: only ASCII letters
lower-case to their letters."""


def _image_suffix(name: str, media_uri: str | None) -> str:
    for candidate in (name, media_uri or ""):
        ext = posixpath.splitext(candidate)[1]
        if ext and is_image(ext):
            return ext
    return ".jpg"


class MediaCopier:
    """Copies items' images next to the labels; one instance per write task.

    `media_uri` is what readers recorded: a plain fsspec URL, or
    `archive.zip!member` for an image read from inside a zip.

    A server that could not be reached (no such host, refused, timed out) is not
    asked again by this task: COCO exports name every image by URL, and without
    the network each of 80k images would wait for its own failure.
    """

    def __init__(self) -> None:
        self._archives: dict[str, Source] = {}
        self._unreachable: set[str] = set()

    def copy(self, media_uri: str | None, out: Output, rel: str, result: WriteResult) -> None:
        if not media_uri:
            result.lose("images not copied: the item names no image file")
            return
        server = _server(media_uri)
        if server in self._unreachable:
            result.lose(f"images not copied: {server} could not be reached")
            return
        try:
            with self._open(media_uri) as src, out.open(rel) as dst:
                copy_stream(src, dst)
        except (OSError, ValueError) as exc:
            if server and _unreachable(exc):
                self._unreachable.add(server)
                result.lose(f"images not copied: {server} could not be reached")
            else:
                result.lose("images not copied: not found")
            return
        result.files.append(rel)

    def _open(self, uri: str):
        archive, sep, member = uri.partition("!")
        if sep and archive.lower().endswith(".zip"):
            if archive not in self._archives:
                self._archives[archive] = Source(archive)
            return self._archives[archive].open(member)
        return fsspec.open(uri, "rb").open()


def _server(uri: str) -> str:
    """The host (and port) of a network URL; "" for a local path."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme in ("file", "local", "memory"):
        return ""
    return rest.split("/", 1)[0]


def _unreachable(exc: BaseException) -> bool:
    """Whether the failure was reaching the server, not the file: a name that does
    not resolve, a refused or timed-out connection (fsspec raises FileNotFoundError
    for all of them; aiohttp's error, its cause, carries the OSError as `os_error`)."""
    seen: BaseException | None = exc
    while seen is not None:
        for error in (seen, getattr(seen, "os_error", None)):
            if isinstance(error, (ConnectionError, socket.gaierror, TimeoutError)):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


BOXABLE = frozenset(
    {"bbox", "rotated_bbox", "polygon", "polyline", "point", "points", "keypoints", "mask",
     "ellipse", "cuboid_2d"}
)  # fmt: skip
"""Kinds that have a box: their own, or the extent of their vertices or mask."""
PLURAL = {
    "bbox": "boxes",
    "rotated_bbox": "rotated boxes",
    "polygon": "polygons",
    "polyline": "polylines",
    "point": "points",
    "points": "point sets",
    "keypoints": "keypoint sets",
    "mask": "masks",
    "ellipse": "ellipses",
    "cuboid_2d": "2D cuboids",
}


def writable(ann: dict[str, Any], result: WriteResult, target: str) -> bool:
    """The gate of box-based writers: outside shapes, kinds with no box and unlabelled
    annotations are skipped, each counted under its own lossiness line."""
    if ann.get("outside"):
        result.lose("outside shapes skipped")
        return False
    if ann["kind"] not in BOXABLE:
        result.lose(f"{ann['kind']} annotations not written: {target} has no place for them")
        return False
    if ann.get("label") is None:
        result.lose("unlabelled annotations skipped")
        return False
    return True


def count_box_loss(ann: dict[str, Any], result: WriteResult) -> None:
    """Count what writing `ann` as an axis-aligned box loses (nothing for a box)."""
    kind = ann["kind"]
    if kind == "rotated_bbox":
        if ann.get("angle_deg"):
            result.lose("rotated boxes lost their angle")
    elif kind != "bbox":
        result.lose(f"{PLURAL.get(kind, kind)} written as boxes")


def pixel_box(ann: dict[str, Any], pts: list[dict[str, Any]]) -> tuple[float, ...] | None:
    """(x, y, w, h) in pixels: the stated box, else the points' extent, else the mask's."""
    if ann.get("bbox_x") is not None and ann.get("bbox_w") is not None:
        return ann["bbox_x"], ann["bbox_y"], ann["bbox_w"], ann["bbox_h"]
    if pts:
        xs = [p["x"] for p in pts if (p.get("visibility") is None or p["visibility"] > 0)]
        ys = [p["y"] for p in pts if (p.get("visibility") is None or p["visibility"] > 0)]
        if xs:
            return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    if ann.get("mask") and ann.get("mask_h") and ann.get("mask_w"):
        return tuple(masks.bbox(ann["mask"], ann["mask_h"], ann["mask_w"]))
    return None


def class_names(staging: Staging, sources: tuple[str, ...], key: str) -> list[str]:
    """Class names by position (class id = index), the same for every partition.

    A source of this family numbers its classes (label attributes `key` from
    `source` in `sources`): when every label has such a number, no two alike
    and no large gaps, the numbers are kept and gaps hold `class_<n>`, so a
    YOLO dataset keeps its class ids and its unused class names. Otherwise
    numbered labels come first by number, then labels with a numeric
    `label_id` by that id, then the rest by first appearance; ids are 0..n-1.
    """
    given: dict[str, int] = {}
    columns = ["owner_kind", "key", "source", "owner_id", "value"]
    for part in staging.scan("attributes", columns, match=(["owner_kind"], _is_label)):
        for _, k, source, owner, value in zip(*part.to_pydict().values(), strict=True):
            label = owner.removeprefix("label:")
            if k == key and source in sources and label not in given and _is_int(value):
                given[label] = int(value)
    seen: dict[str, str | None] = {}
    for label, label_id in staging.labels():
        seen.setdefault(label, label_id)
    others = [label for label in seen if label not in given]
    others.sort(key=lambda label: (0, int(seen[label])) if _is_int(seen[label]) else (1, 0))
    ordered = sorted(given, key=lambda label: given[label]) + others
    top = max(given.values(), default=-1)
    if others or len(set(given.values())) != len(given) or top > 2 * len(given) + 16:
        return ordered
    by_id = {n: label for label, n in given.items()}
    return [by_id.get(n, f"class_{n}") for n in range(top + 1)]


def _is_label(rows: pa.Table) -> pa.ChunkedArray:
    return pc.equal(rows.column("owner_kind"), "label")


def _is_int(value: Any) -> bool:
    try:
        return int(value) == float(value) and int(value) >= 0
    except (TypeError, ValueError):
        return False
