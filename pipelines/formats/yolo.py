"""YOLO as CVAT exports it (YOLO 1.1: obj.data, obj.names, obj_<subset>_data/) and the
loose layouts around it (labels/ + images/, Annotations/ + Images/, with obj.names).

Reading and writing live in `_yolo_read` / `_yolo_write`, shared with the
`ultralytics` format: the label lines are the same, only the layout differs.
This format writes the YOLO 1.1 layout unless `WriteOptions.extra["layout"]`
says "ultralytics". See docs/formats/yolo.md.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from pipelines.formats import _per_image as per_image
from pipelines.formats import _yolo_read, _yolo_write
from pipelines.formats.base import Detection, Format
from pipelines.storage import Source

NAME = "yolo"


def looks_like_labels(source: Source, members: list[str], limit: int = 5) -> bool:
    """True when the first non-empty line of a few label files reads as `class cx cy w h...`."""
    for member in members[:limit]:
        head = source.head(member, 4096).decode("utf-8-sig", "replace")
        for line in head.splitlines():
            tokens = line.split()
            if not tokens:
                continue
            try:
                values = [float(t) for t in tokens]
            except ValueError:
                return False
            return len(values) >= 5 and values[0].is_integer() and values[0] >= 0
    return False


def label_files(source: Source) -> list[str]:
    """Label files by name alone: in a labels-like folder, or next to a same-named image."""
    images = {per_image.strip_ext(f) for f in source.files if per_image.is_image(f)}
    return [
        f
        for f in source.files
        if _yolo_read.is_label_file(f)
        and (_yolo_read.classify(f, _yolo_read.LABEL_DIRS) or per_image.strip_ext(f) in images)
    ]


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        if posixpath.basename(source.url).lower() == "obj.data":
            return Detection(0.9, "a YOLO obj.data file")
        return None
    bases = {posixpath.basename(f).lower() for f in source.files}
    labels = label_files(source)
    if "obj.data" in bases:
        return Detection(0.95, "obj.data (YOLO 1.1)")
    has_yaml = any(b.endswith((".yaml", ".yml")) for b in bases)
    named = any(b.endswith(".names") for b in bases) or "classes.txt" in bases
    if labels and looks_like_labels(source, labels):
        if named:
            return Detection(0.9, "a class names file and YOLO label files")
        return Detection(0.3 if has_yaml else 0.5, "YOLO label files in a labels folder")
    return None


def family_format(
    name: str, description: str, detect: Callable[[Source], Detection | None], layout: str
) -> Format:
    """A format of the YOLO family: the same label lines, read and written by `_yolo_read`
    and `_yolo_write`; only detection and the layout written by default differ."""
    return Format(
        name=name,
        description=description,
        detect=detect,
        plan_read=_yolo_read.planner(name),
        read=_yolo_read.read,
        plan_write=_yolo_write.planner(name, layout),
        write=_yolo_write.write,
        write_queries=False,  # detect boxes: `_yolo_fast`
        boxes_suffice=_yolo_write.boxes_suffice(layout),
    )


FORMAT = family_format(
    NAME,
    "YOLO 1.1 as CVAT writes it (obj.data, obj.names, obj_<subset>_data/) and "
    "loose YOLO layouts; boxes, normalized centre coordinates",
    detect,
    "yolo",
)
