"""CVAT for images 1.1 and CVAT for video 1.1 XML: read and written.

Reading (pipelines/formats/_cvat_read.py) takes an `annotations.xml`, a folder,
or a CVAT export zip (annotations.xml + images/) in place; every XML file
whose root is `<annotations>` is one task, or, when large, several: ranges of its
images (pipelines/formats/_cvat_ranges.py). Writing
(pipelines/formats/_cvat_write.py) gives one XML per subset: CVAT for video
when the subset is one video's frames, CVAT for images otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pipelines.formats._cvat_ranges import ALWAYS_SPLIT_BYTES, SPLIT_BYTES, image_ranges
from pipelines.formats._cvat_read import read as _read
from pipelines.formats._cvat_write import plan_write, write
from pipelines.formats.base import Detection, Format, ReadOptions, ReadTask
from pipelines.schema import Batch
from pipelines.storage import Source

_ROOT = re.compile(
    rb"^(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--.*?-->\s*|<!DOCTYPE[^>]*>\s*)*"
    rb"<annotations[\s>/]",
    re.S,
)
_MARKERS = (b"<version>", b"<meta>", b"<image ", b"<track ", b"<meta ", b"<image>")
_MAX_DEPTH = 2
"""How deep in a folder or archive an annotations XML is looked for."""


def _is_cvat(head: bytes) -> bool:
    return bool(_ROOT.match(head)) and any(m in head for m in _MARKERS)


def _xml_files(source: Source) -> list[str]:
    return [
        rel
        for rel in source.glob(".xml")
        if rel.count("/") <= _MAX_DEPTH and _is_cvat(source.head(rel, 4096))
    ]


def detect(source: Source) -> Detection | None:
    if not source.is_dir:
        if source.name.lower().endswith(".xml") and _is_cvat(source.head(n=4096)):
            return Detection(0.95, "XML document rooted at <annotations> with CVAT meta")
        return None
    found = _xml_files(source)
    if found:
        return Detection(0.95, f"CVAT annotations XML: {', '.join(found[:3])}")
    return None


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    members = _xml_files(source) if source.is_dir else [""]
    return [task for m in members for task in _tasks(source, m, options)]


def _tasks(source: Source, member: str, options: ReadOptions) -> list[ReadTask]:
    """The file as one task, or, large and with workers to share it (or past
    ALWAYS_SPLIT_BYTES), as ranges of its images (`_cvat_ranges`); the tasks' byte
    spans cover the whole file. In a zip, a task reaches its range by decompressing
    what comes before it (100 MB in ~0.4 s, where parsing it takes ~13 s): fewer,
    larger ranges there."""
    parts = None
    size = source.size(member)
    if size > (SPLIT_BYTES if options.workers > 1 else ALWAYS_SPLIT_BYTES):
        with source.open(member) as f:
            parts = image_ranges(f, options.workers, seek_costs=source.archive)
    if not parts:
        return [ReadTask("cvat", source, member=member, options=options)]
    ends = [0, *(p.end for p in parts[:-1]), size]
    return [
        ReadTask(
            "cvat",
            source,
            member,
            start=ends[i],
            end=ends[i + 1],
            context={"range": p},
            options=options,
        )
        for i, p in enumerate(parts)
    ]


def read(task: ReadTask) -> Iterator[Batch]:
    yield from _read(task)


FORMAT = Format(
    name="cvat",
    description="CVAT for images 1.1 / CVAT for video 1.1 XML (a file, a folder or an export zip)",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=plan_write,
    write=write,
)
