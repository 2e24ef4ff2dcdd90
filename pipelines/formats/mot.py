"""MOT 1.1 (MOTChallenge ground truth, as CVAT exports it): one sequence per `gt/gt.txt`.

    <seq>/gt/gt.txt        frame, track id, x, y, w, h, not-ignored flag, class id, visibility
    <seq>/gt/labels.txt    class names, class id = line number (optional; MOTChallenge's
                           12 classes otherwise)
    <seq>/seqinfo.ini      name, imDir, frameRate, seqLength, imWidth, imHeight, imExt (optional)
    <seq>/img1/000001.jpg  the frames (optional)

Every frame is an item (`sequence_id` names the sequence, `frame_index` is the MOT frame
number minus one, as every other table counts frames from 0); every gt row is a bbox with
its track id (none for id -1), `visibility` and `ignored` attributes, and `occluded` when
the visibility is 0. A sequence folder below another folder takes that folder as subset
(MOT17/train/MOT17-02 → subset "MOT17/train"). gt.txt is sorted by track, not by frame,
so a sequence's rows are held (as one float array) until the file is read.
"""

from __future__ import annotations

import io
import math
import posixpath
from array import array
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.builder import BatchBuilder, parse_attribute, to_json
from pipelines.errors import ParseError
from pipelines.formats._fragments import even_bounds, part_count, part_run, part_tasks, write_joined
from pipelines.formats._mot import (
    LABELS_FILE,
    TrackNumbers,
    class_ids,
    labels_text,
    number_text,
    read_labels,
    subset_dir,
    track_ids,
)
from pipelines.formats.base import (
    Detection,
    Format,
    ReadOptions,
    ReadTask,
    WriteOptions,
    WriteResult,
    WriteTask,
)
from pipelines.images import IMAGE_SUFFIXES, image_size
from pipelines.masks import bbox as rle_bbox
from pipelines.schema import Batch
from pipelines.staging import Staging
from pipelines.storage import Output, Source

GT = "gt/gt.txt"
SEQINFO = "seqinfo.ini"
MOT_CHALLENGE_LABELS = (
    "pedestrian",
    "person on vehicle",
    "car",
    "bicycle",
    "motorbike",
    "non motorized vehicle",
    "static person",
    "distractor",
    "occluder",
    "occluder on the ground",
    "occluder full",
    "reflection",
)
_SEQ_KEY = "mot_sequence"
_COLUMNS = 9  # frame, id, x, y, w, h, flag, class, visibility; more are kept as text
_ANN = "annotations"


# -- detection and planning ---------------------------------------------------


def _gt_files(source: Source) -> list[str]:
    return [f for f in source.files if f == GT or f.endswith("/" + GT)]


def _looks_like_rows(head: bytes) -> bool:
    for raw in head.splitlines()[:3]:
        line = raw.decode("utf-8-sig", "replace").strip()
        if not line:
            continue
        cols = _split(line)
        try:
            [float(c) for c in cols[:6]]
        except ValueError:
            return False
        return len(cols) >= 6
    return True  # an empty gt.txt is still a MOT sequence


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        if source.name.lower() == "gt.txt" and _looks_like_rows(source.head(n=4096)):
            return Detection(0.6, "a gt.txt of MOT rows")
        return None
    gts = _gt_files(source)
    if not gts:
        return None
    if _looks_like_rows(source.head(gts[0], 4096)):
        return Detection(0.9, f"{len(gts)} MOT sequence(s) with gt/gt.txt")
    return Detection(0.3, "gt/gt.txt whose rows are not MOT rows")


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    stem = posixpath.splitext(source.name)[0] or "sequence"
    if not source.is_dir:
        return [ReadTask("mot", source, context={"root": None, "sequence": stem}, options=options)]
    tasks = []
    for gt in _gt_files(source):
        root = posixpath.dirname(posixpath.dirname(gt))
        parent, name = posixpath.split(root)
        tasks.append(
            ReadTask(
                "mot",
                source,
                member=gt,
                subset=parent or None,
                context={"root": root, "sequence": name or stem},
                options=options,
            )
        )
    return tasks


# -- reading ------------------------------------------------------------------


def _split(line: str) -> list[str]:
    cols = [c.strip() for c in line.split(",")]
    return line.split() if len(cols) == 1 else cols


def _join(root: str, rel: str) -> str:
    return posixpath.join(root, rel) if root else rel


def _seqinfo(source: Source, member: str) -> dict[str, str]:
    """seqinfo.ini's keys as written (lookups are case-insensitive through `_info`)."""
    info = {}
    with source.open(member) as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig").strip()
            except UnicodeDecodeError as exc:
                raise ParseError(source.uri(member), f"line {n}", "not UTF-8 text") from exc
            if not line or line.startswith(("[", "#", ";")):
                continue
            if "=" not in line:
                raise ParseError(source.uri(member), f"line {n}", f"expected key=value: {line!r}")
            key, value = line.split("=", 1)
            info[key.strip()] = value.strip()
    return info


def _info(info: dict[str, str], key: str, uri: str, number: bool = False) -> Any:
    for k, v in info.items():
        if k.lower() == key.lower():
            if not number:
                return v
            try:
                return float(v) if key == "frameRate" else int(v)
            except ValueError as exc:
                raise ParseError(uri, key, f"not a number: {v!r}") from exc
    return None


class _Rows:
    """gt.txt's rows held as numbers until the file is read, then grouped by frame.

    MOT files sort rows by track, so a frame's rows are known only at the end. One float
    array (9 columns, NaN where a row is shorter) keeps a million rows in ~80 MB, where
    Python objects would take several times that.
    """

    def __init__(self) -> None:
        self._values = array("d")
        self._lines = array("q")
        self.extra: dict[int, list[str]] = {}
        self._spans: dict[int, tuple[int, int]] = {}

    def add(self, line: int, values: list[float], extra: list[str]) -> None:
        self._values.extend(values + [math.nan] * (_COLUMNS - len(values)))
        self._lines.append(line)
        if extra:
            self.extra[line] = extra

    def close(self, table: np.ndarray | None = None, lines: np.ndarray | None = None) -> None:
        """Group the added rows (or a whole parsed `table` and its `lines`) by frame."""
        if table is None or lines is None:
            table = np.frombuffer(self._values, dtype=np.float64).reshape(-1, _COLUMNS)
            lines = np.frombuffer(self._lines, dtype=np.int64)
        order = np.argsort(table[:, 0], kind="stable")
        self.table = table[order]
        self.lines = lines[order]
        frames, starts, counts = np.unique(self.table[:, 0], return_index=True, return_counts=True)
        self._spans = {
            int(f): (int(s), int(s + c)) for f, s, c in zip(frames, starts, counts, strict=True)
        }

    @property
    def frames(self) -> set[int]:
        return set(self._spans)

    def of(self, frame: int) -> Iterator[tuple[int, list[float]]]:
        """(line number, the row's 9 values) of each row of a frame, in file order."""
        start, stop = self._spans.get(frame, (0, 0))
        for k in range(start, stop):
            yield int(self.lines[k]), self.table[k].tolist()


def _parse_rows(task: ReadTask, b: BatchBuilder, labels: list[str]) -> _Rows:
    """gt.txt rows by frame; a row that cannot be a box is rejected with its line."""
    rows = _Rows()
    name = task.member or task.source.name
    with task.source.open(task.member) as f:
        data = f.read()
    table = _clean_table(data, len(labels))
    if table is not None:
        rows.close(table, np.arange(1, len(table) + 1, dtype=np.int64))
        return rows
    for n, raw in enumerate(io.BytesIO(data), 1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8").strip()
        except UnicodeDecodeError as exc:
            raise ParseError(task.uri, f"line {n}", "not UTF-8 text") from exc
        if not line:
            continue
        where = f"{name}, line {n}"
        cols = _split(line)
        if len(cols) < 6:
            b.reject(
                where,
                f"{len(cols)} column(s); a MOT row needs at least 6 (frame, id, x, y, w, h)",
                record=line,
                record_kind=_ANN,
            )
            continue
        try:
            values = [float(c) for c in cols[:_COLUMNS]]
        except ValueError:
            b.reject(where, "a number column is not a number", record=line, record_kind=_ANN)
            continue
        if not all(math.isfinite(v) for v in values):
            b.reject(where, "a coordinate is not finite", record=line, record_kind=_ANN)
            continue
        frame = values[0]
        if not frame.is_integer() or frame < 1:
            reason = f"frame {cols[0]!r} is not a frame number (from 1)"
            b.reject(where, reason, record=line, record_kind=_ANN)
            continue
        if len(values) > 7 and values[7] > len(labels) and values[7].is_integer():
            b.reject(
                where,
                f"class id {int(values[7])} is not in labels.txt ({len(labels)} labels)",
                record=line,
                record_kind=_ANN,
            )
            continue
        rows.add(n, values, cols[_COLUMNS:])
    rows.close()
    return rows


def _clean_table(data: bytes, labels: int) -> np.ndarray | None:
    """The whole file parsed at once (Arrow's CSV reader) when every row is a clean MOT row.

    None when any row is not (blank lines, 6 > columns > 9, text, a bad frame or class):
    the line-by-line path then rejects exactly those rows with their line numbers.
    """
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    if not body.strip() or b"\n\n" in body or b"\n\r\n" in body or body[:1] in (b"\n", b"\r"):
        return None
    try:
        parsed = pacsv.read_csv(
            io.BytesIO(body),
            read_options=pacsv.ReadOptions(autogenerate_column_names=True),
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    n = parsed.num_columns
    numeric = all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in parsed.schema.types)
    if not 6 <= n <= _COLUMNS or not numeric or any(c.null_count for c in parsed.columns):
        return None
    table = np.full((parsed.num_rows, _COLUMNS), np.nan)
    for k, column in enumerate(parsed.columns):
        table[:, k] = column.to_numpy().astype(np.float64)
    frames, classes = table[:, 0], table[:, 7]
    if not np.isfinite(table[:, :n]).all() or (frames < 1).any() or (frames % 1).any():
        return None
    if n > 7 and ((classes > labels) & (classes % 1 == 0)).any():
        return None
    return table


def _images(source: Source, root: str, imdir: str) -> dict[int, str]:
    """Frame number → image member, for frames named by their number (000001.jpg)."""
    if not source.is_dir:
        return {}
    out = {}
    for rel in source.glob(under=_join(root, imdir)):
        stem, ext = posixpath.splitext(posixpath.basename(rel))
        if ext.lower() in IMAGE_SUFFIXES and stem.isdigit():
            out[int(stem)] = rel
    return out


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    source, root, seq = task.source, task.context["root"], task.context["sequence"]
    labels = list(MOT_CHALLENGE_LABELS)
    if root is not None and source.exists(_join(root, "gt/" + LABELS_FILE)):
        labels = read_labels(source, _join(root, "gt/" + LABELS_FILE))
    info: dict[str, str] = {}
    if root is not None and source.exists(_join(root, SEQINFO)):
        info = _seqinfo(source, _join(root, SEQINFO))
    uri = source.uri(_join(root or "", SEQINFO))
    imdir = _info(info, "imDir", uri) or "img1"
    ext = _info(info, "imExt", uri)
    length = _info(info, "seqLength", uri, number=True) or 0
    width = _info(info, "imWidth", uri, number=True)
    height = _info(info, "imHeight", uri, number=True)
    fps = _info(info, "frameRate", uri, number=True)
    images = _images(source, root or "", imdir)
    if (width is None or height is None) and images:
        size = image_size(source, images[min(images)])  # one size per sequence: it is a video
        if size:
            width, height = size
    rows = _parse_rows(task, b, labels)
    prefix = root or seq
    metadata = {"seqinfo": info} if info else None
    for frame in sorted(set(range(1, length + 1)) | set(images) | rows.frames):
        item_id = f"{prefix}/{frame:06d}"
        image = images.get(frame)
        file_name = posixpath.basename(image) if image else (f"{frame:06d}{ext}" if ext else None)
        b.item(
            item_id=item_id,
            native_id=str(frame),
            file_name=file_name,
            media_uri=source.uri(image) if image else None,
            media_type="image",
            width=width,
            height=height,
            frame_index=frame - 1,
            sequence_id=seq,
            fps=fps,
            subset=task.subset,
            metadata=None if metadata is None else to_json(metadata),
        )
        b.read_counts["items"] += 1
        for line, values in rows.of(frame):
            _annotation(b, item_id, frame - 1, line, values, rows.extra.get(line), labels)
        if b.full():
            yield b.flush()
    yield b.flush()


def _annotation(
    b: BatchBuilder,
    item_id: str,
    frame_index: int,
    line: int,
    cols: list[float],
    extra: list[str] | None,
    labels: list[str],
) -> None:
    track = int(cols[1]) if cols[1].is_integer() else cols[1]
    flag = 1.0 if math.isnan(cols[6]) else cols[6]
    cls = int(cols[7]) if cols[7].is_integer() else None  # NaN (no column) is not an integer
    visibility = None if math.isnan(cols[8]) else cols[8]
    ann_id = f"{item_id}/{line}"
    b.annotation(
        ann_id=ann_id,
        item_id=item_id,
        kind="bbox",
        label=labels[cls - 1] if cls and cls > 0 else None,
        label_id=str(cls) if cls and cls > 0 else None,
        units="px",
        frame_index=frame_index,
        bbox_x=cols[2],
        bbox_y=cols[3],
        bbox_w=cols[4],
        bbox_h=cols[5],
        track_id=str(track) if isinstance(track, int) and track > 0 else None,
        keyframe=True if isinstance(track, int) and track > 0 else None,
        occluded=None if visibility is None else visibility <= 0,
        # The 7th column is a 0/1 "not ignored" flag in ground truth and a score in detections.
        confidence=None if flag in (0.0, 1.0) else flag,
    )
    b.read_counts["annotations"] += 1
    if flag in (0.0, 1.0):
        b.attribute(ann_id, item_id, "ignored", flag == 0.0, source="mot")
    if visibility is not None:
        b.attribute(ann_id, item_id, "visibility", visibility, source="mot")
    if not (isinstance(track, int) and track > 0) and track != -1:
        b.attribute(ann_id, item_id, "track_id", track, source="mot")
    if extra:
        b.attribute(ann_id, item_id, "extra_columns", extra, source="mot")


# -- writing ------------------------------------------------------------------


def plan_write(staging: Staging, options: WriteOptions) -> list[WriteTask]:
    """One file per sequence (subset × sequence_id); a subset of one sequence is written
    in runs of frames unless a frame's row depends on the frames before it
    (`_frames_depend`)."""
    rows = staging.con.execute(
        "SELECT subset, sequence_id, min(filename), min(file_row_number) FROM items "
        "GROUP BY subset, sequence_id ORDER BY 3, 4"
    ).fetchall()
    sequences = Counter(subset for subset, *_ in rows)
    sizes = staging.subset_sizes()
    tasks = []
    for subset, seq, _, _ in rows:
        parts = 1  # a task reads its subset's items and keeps its sequence's
        if sequences[subset] == 1 and not _frames_depend(staging, subset):
            parts = part_count(sizes[subset], options.workers)
        bounds = even_bounds(sizes[subset], parts)
        tasks += part_tasks("mot", subset, options, bounds, **{_SEQ_KEY: seq})
    return tasks


_FRAMES_OUT_OF_ORDER = """
SELECT count(*) FILTER (WHERE frame_index < prev)
    + least(count(frame_index), count(*) - count(frame_index))
FROM (SELECT frame_index, lag(frame_index) OVER (ORDER BY filename, file_row_number) AS prev
      FROM items WHERE subset IS NOT DISTINCT FROM ?)
"""
"""Non-zero when a subset's frames are numbered partly by `frame_index` and partly by
counting, or their `frame_index` goes back somewhere in source order."""


def _frames_depend(staging: Staging, subset: str | None) -> bool:
    """Whether a frame's row depends on the frames before it: a track id that is not a
    number in range gets the next free number in order of appearance, a frame without
    `frame_index` is numbered by counting those before it (fine when none has one), and
    gt.txt is in frame order (runs joined in source order keep it only where frames do
    not go back)."""
    tracks = TrackNumbers(track_ids(staging, subset), lowest=1)
    return not tracks.all_kept or bool(staging.scalar(_FRAMES_OUT_OF_ORDER, [subset]))


_GEOMETRY_LOSS = {
    "polygon": "polygons written as boxes",
    "polyline": "polylines written as boxes",
    "point": "points written as boxes",
    "points": "point sets written as boxes",
    "keypoints": "keypoints written as boxes",
    "mask": "masks written as boxes",
    "ellipse": "ellipses written as boxes",
    "cuboid_2d": "cuboids written as boxes",
    "rotated_bbox": "rotated boxes written as their upright bounding boxes",
}
_KEPT_ATTRIBUTES = ("visibility", "ignored", "extra_columns", "track_id")


def _box(ann: dict[str, Any]) -> tuple[float, float, float, float] | None:
    x, y, w, h = (ann.get(k) for k in ("bbox_x", "bbox_y", "bbox_w", "bbox_h"))
    if ann["kind"] == "mask" and x is None and ann.get("mask"):
        x, y, w, h = rle_bbox(ann["mask"], ann["mask_h"], ann["mask_w"])
    if None in (x, y, w, h):
        return None
    angle = ann.get("angle_deg") or 0.0
    if ann["kind"] == "rotated_bbox" and angle:
        # The upright box that encloses the rotated one (same centre).
        a = math.radians(angle)
        cx, cy = x + w / 2, y + h / 2
        hw = (abs(w * math.cos(a)) + abs(h * math.sin(a))) / 2
        hh = (abs(w * math.sin(a)) + abs(h * math.cos(a))) / 2
        return cx - hw, cy - hh, 2 * hw, 2 * hh
    return x, y, w, h


def write(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    result = WriteResult()
    seq = task.options.extra.get(_SEQ_KEY)
    root = subset_dir(task.subset, seq)
    classes = class_ids(staging)
    tracks = TrackNumbers(track_ids(staging, task.subset, sequence_id=seq))
    lines: list[tuple[int, int, str]] = []
    sizes, exts, fps, renamed = set(), set(), None, 0
    first, stop = part_run(task)
    last = None
    name = None
    for group in staging.iter_items(
        subset=task.subset, all_subsets=False, point_columns=(), positions=(first, stop)
    ):
        item = group.item
        if item.get("sequence_id") != seq:
            continue
        if last is None:  # frames without a frame_index are counted: so are those before
            last = first if item.get("frame_index") is None else 0
        frame = item["frame_index"] + 1 if item.get("frame_index") is not None else last + 1
        last = max(last, frame)
        result.items += 1
        sizes.add((item.get("width"), item.get("height")))
        fps = fps or item.get("fps")
        if name is None:
            name = _seqinfo_name(item.get("metadata"))
        if item.get("file_name"):
            stem, ext = posixpath.splitext(posixpath.basename(item["file_name"]))
            exts.add(ext)
            if not (stem.isdigit() and int(stem) == frame):
                renamed += 1
        for ann in group.annotations:
            line, loss = _line(frame, ann, group.attributes.get(ann["ann_id"], []), classes, tracks)
            if line is not None:
                lines.append((frame, len(lines), line))
                result.annotations += 1
                if ann["kind"] in _GEOMETRY_LOSS:
                    result.lose(_GEOMETRY_LOSS[ann["kind"]])
                dropped = sum(
                    1
                    for a in group.attributes.get(ann["ann_id"], [])
                    if a["key"] not in _KEPT_ATTRIBUTES
                )
                if dropped:
                    result.lose("annotation attributes dropped (MOT keeps visibility, ignored)")
            else:
                result.lose(loss)
    if renamed:
        result.lose("frames renamed to their MOT frame number", renamed)
    gt = _rel(root, GT)
    text = "".join(f"{line}\n" for _, _, line in sorted(lines)).encode()
    seen = {"name": name, "last": last or 0, "fps": fps, "sizes": sorted(sizes, key=str)}
    infos = write_joined(task, out, gt, [text], info=orjson.dumps({**seen, "exts": sorted(exts)}))
    if infos is None:
        return result
    # The sequence's summary from every run's, in order: the first name and rate given.
    runs = [orjson.loads(i) for i in infos]
    name = next((r["name"] for r in runs if r["name"] is not None), None)
    fps = next((r["fps"] for r in runs if r["fps"]), None)
    sizes = {tuple(size) for r in runs for size in r["sizes"]}
    exts = {ext for r in runs for ext in r["exts"]}
    last = max(r["last"] for r in runs)
    with out.open(_rel(root, "gt/" + LABELS_FILE)) as f:
        f.write(labels_text(classes).encode())
    with out.open(_rel(root, SEQINFO)) as f:
        f.write(_seqinfo_text(name or seq, last, fps, sizes, exts).encode())
    result.files += [gt, _rel(root, "gt/" + LABELS_FILE), _rel(root, SEQINFO)]
    return result


def _seqinfo_name(metadata: str | None) -> str | None:
    """The sequence name a MOT source's seqinfo.ini gave, kept in the item's metadata."""
    try:
        meta = orjson.loads(metadata) if metadata else None
    except orjson.JSONDecodeError:
        return None
    info = meta.get("seqinfo") if isinstance(meta, dict) else None
    return info.get("name") if isinstance(info, dict) else None


def _rel(root: str, name: str) -> str:
    return posixpath.join(root, name) if root else name


def _line(
    frame: int,
    ann: dict[str, Any],
    attrs: list[dict[str, Any]],
    classes: dict[str, int],
    tracks: TrackNumbers,
) -> tuple[str | None, str]:
    """One gt.txt row, or None and the lossiness message saying why there is none."""
    if ann.get("outside"):
        return None, "track frames outside the image skipped"
    box = _box(ann)
    if box is None:
        return None, f"{ann['kind']} annotations without a box skipped"
    values = {a["key"]: parse_attribute(a["value"], a["value_type"]) for a in attrs}
    visibility = values.get("visibility")
    if not isinstance(visibility, (int, float)) or isinstance(visibility, bool):
        visibility = 0.0 if ann.get("occluded") else 1.0
    ignored = values.get("ignored") is True
    track = tracks.number(ann.get("track_id"))
    cls = classes.get(ann["label"], -1) if ann.get("label") is not None else -1
    cols = [frame, track if track is not None else -1, *box, 0 if ignored else 1, cls, visibility]
    return ",".join(number_text(v) for v in cols), ""


def _seqinfo_text(seq: str | None, length: int, fps, sizes: set, exts: set) -> str:
    lines = ["[Sequence]", f"name={seq or 'sequence'}", "imDir=img1"]
    if fps:
        lines.append(f"frameRate={number_text(fps)}")
    lines.append(f"seqLength={length}")
    if len(sizes) == 1:
        (w, h), *_ = sizes
        if w and h:
            lines += [f"imWidth={w}", f"imHeight={h}"]
    if len(exts) == 1 and next(iter(exts)):
        lines.append(f"imExt={next(iter(exts))}")
    return "\n".join(lines) + "\n"


FORMAT = Format(
    name="mot",
    description="MOT 1.1 sequences: gt/gt.txt boxes with track ids, labels.txt, seqinfo.ini",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
)
