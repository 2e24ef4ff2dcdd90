"""Ultralytics YOLO datasets: data.yaml with images/<split>/ and labels/<split>/, for
detection, segmentation (polygons), pose (keypoints, `kpt_shape`) and oriented boxes.

The label lines are YOLO's, so reading and writing are shared with the `yolo`
format (`_yolo_read`, `_yolo_write`); this format writes the Ultralytics
layout, picking the task from the kinds present unless
`WriteOptions.extra["task"]` names one. See docs/formats/yolo.md.
"""

from __future__ import annotations

import posixpath

from pipelines.formats.base import Detection
from pipelines.formats.yolo import family_format, label_files, looks_like_labels
from pipelines.storage import Source

NAME = "ultralytics"


def _yaml_with_names(source: Source, member: str) -> bool:
    head = source.head(member, 16_384)
    return b"names" in head


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        base = posixpath.basename(source.url).lower()
        if base.endswith((".yaml", ".yml")) and _yaml_with_names(source, ""):
            return Detection(0.6, "a YAML file with class names")
        return None
    yamls = [f for f in source.files if f.lower().endswith((".yaml", ".yml"))]
    if not any(_yaml_with_names(source, f) for f in yamls[:10]):
        return None
    labels = label_files(source)
    if labels and looks_like_labels(source, labels):
        return Detection(0.95, "data.yaml with names, and YOLO label files under labels/")
    if not labels:
        return Detection(0.4, "data.yaml with names (no label files)")
    return None


FORMAT = family_format(
    NAME,
    "Ultralytics YOLO (data.yaml, images/ and labels/ per split): boxes, "
    "segmentation polygons, pose keypoints, oriented boxes",
    detect,
    "ultralytics",
)
