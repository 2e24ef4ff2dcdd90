"""What a format module provides, and the task objects the runner passes to it.

A format module knows its format and nothing of the runner: it answers
`detect` cheaply, splits a source into picklable `ReadTask`s, reads one task
into Batches, and, for output, splits the staging tables into `WriteTask`s and
writes one. The runner knows no format by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipelines.builder import DEFAULT_BATCH_ROWS, BatchBuilder
from pipelines.errors import ParseError
from pipelines.memory import MMAP_THRESHOLD
from pipelines.schema import Batch
from pipelines.storage import Source


@dataclass(frozen=True)
class Detection:
    """How sure a format is that it can read a source (0..1), and why."""

    confidence: float
    reason: str


@dataclass(frozen=True)
class ReadOptions:
    dataset: str = ""
    batch_rows: int = DEFAULT_BATCH_ROWS
    on_error: str = "reject"
    """`reject`: a record that cannot be mapped goes to rejects; `fail`: it stops the source."""
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """file name → (width, height), for formats whose coordinates need sizes the export lacks."""
    workers: int = 1
    boxed_vertices: bool = True
    """Stage the vertices of shapes that state a box. Off for staging that only feeds a
    write reading such shapes' boxes alone (`Format.boxes_suffice`) and is deleted
    after: the read task leaves them out once the transforms have filled boxes, and a
    reader may leave them out sooner (COCO's, which then need not build them); both
    count them in `Batch.vertices_left_out`."""


@dataclass(frozen=True)
class ReadTask:
    """One independent piece of reading: a file, a member, or a byte range of one."""

    format: str
    source: Source
    member: str = ""
    subset: str | None = None
    start: int = 0
    end: int | None = None
    context: dict[str, Any] = field(default_factory=dict)
    options: ReadOptions = field(default_factory=ReadOptions)
    failure: str | None = None
    """Planning found the member broken (`plan_each`): the runner reports this instead
    of reading it."""

    @property
    def uri(self) -> str:
        return self.source.uri(self.member)

    def builder(self, source_format: str | None = None, share: int = 1) -> BatchBuilder:
        """`share`: batches of `batch_rows / share` rows, for a reader whose rows cost more
        memory than time until they are flushed."""
        return BatchBuilder(
            self.options.dataset,
            source_format or self.format,
            self.uri,
            batch_rows=max(1, self.options.batch_rows // share),
            on_error=self.options.on_error,
            boxed_vertices=self.options.boxed_vertices,
        )


def plan_each(
    source: Source, members: list[str], fmt: str, plan: Callable[[str], list[ReadTask]]
) -> list[ReadTask]:
    """`plan` for each member of a source. In a folder or archive, a member whose
    planning finds it broken (a truncated JSON file, framed before it is read) becomes
    a task that the runner reports as failed, and the source's other members are read,
    as they are when a member fails while it is read."""
    tasks = []
    for member in members:
        try:
            tasks.extend(plan(member))
        except ParseError as exc:
            if not source.is_dir:
                raise
            tasks.append(ReadTask(fmt, source, member, failure=str(exc)))
    return tasks


@dataclass(frozen=True)
class WriteOptions:
    workers: int = 1
    prefer_stage: str | None = None
    """For formats with review stages (iTAG): which stage's results a writer keeps."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteTask:
    """One output partition: a subset, a shard of items, or the whole dataset."""

    format: str
    subset: str | None = None
    shard: int = 0
    shards: int = 1
    options: WriteOptions = field(default_factory=WriteOptions)


@dataclass
class WriteResult:
    files: list[str] = field(default_factory=list)
    items: int = 0
    annotations: int = 0
    lossy: dict[str, int] = field(default_factory=dict)
    """Human message → count, e.g. {"polygons written as boxes": 312}."""

    def lose(self, what: str, n: int = 1) -> None:
        self.lossy[what] = self.lossy.get(what, 0) + n


class Later:
    """A function of a module imported on its first call: a format's writer stays out of
    the processes that only detect or read the format. Detecting a COCO file imported
    the COCO writer, and PIL with it, into the command line of every COCO run."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args, **kwargs)


@dataclass(frozen=True)
class Format:
    """A registry entry. `read`/`write` are None where the direction is not supported.

    `single_file` writers produce one file (the output URL names it) rather
    than a folder.
    """

    name: str
    description: str
    detect: Callable[[Source], Detection | None]
    plan_read: Callable[[Source, ReadOptions], list[ReadTask]] | None = None
    read: Callable[[ReadTask], Iterator[Batch]] | None = None
    plan_write: Callable[[Any, WriteOptions], list[WriteTask]] | None = None
    write: Callable[[WriteTask, Any, Any], WriteResult] | None = None
    single_file: bool = False
    staging_layout: bool = False
    """True for the format that *is* the staging layout: writing it is committing staging."""
    write_queries: bool = True
    """Whether writing queries staging through DuckDB, which a local pool then imports
    before its first task. False where the usual write reads staging with pyarrow
    alone (DuckDB, ~20 MB, is then imported only by a path that needs it)."""
    mapped_blocks: int = MMAP_THRESHOLD
    """Write tasks give blocks of this size and more mappings of their own
    (`memory.map_large_blocks`)."""
    annotation_weight: int = 1
    """What writing an annotation costs, in annotations of the usual writer (a YOLO
    line, ~10 µs): a run that started no pool writes inline only while annotations
    × weight stay under `runner.INLINE_WRITE_ANNOTATIONS`."""
    boxes_suffice: Callable[[WriteOptions], bool] = lambda options: False
    """Whether a write with these options reads a shape's vertices only when the shape
    states no box (`ReadOptions.boxed_vertices`)."""
