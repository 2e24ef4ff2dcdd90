"""Plans a run as independent tasks and runs them on an executor.

    sources ─plan_read─▶ ReadTasks ─(pool)─▶ staging Parquet
            ─plan_write─▶ WriteTasks ─(pool)─▶ OUT

Each task reads or writes a bounded piece (a file, a byte range, an output
partition) and returns only counts, so memory per worker stays constant and
the parent never holds data. The runner knows no format by name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow.compute as pc

import transforms
from pipelines import formats, memory
from pipelines.errors import LabelflowError
from pipelines.executor import Executor, Progress, big_file
from pipelines.formats.base import ReadOptions, ReadTask, WriteOptions, WriteResult, WriteTask
from pipelines.formats.parquet import COMPRESSION, TRANSIENT_COMPRESSION, PartWriter
from pipelines.schema import DATA_TABLES, TABLES, Batch, box_stated
from pipelines.staging import PLAN_MEMORY_LIMIT, Staging
from pipelines.storage import Output, Source, copy_stream, fs_for


@dataclass
class TaskResult:
    uri: str
    rows: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    still_normalized: int = 0
    vertices_left_out: int = 0
    bytes: int = 0
    error: str | None = None
    files: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What a run did: per table read / written / rejected, lossiness, failures, speed."""

    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {t: {"read": 0, "written": 0, "rejected": 0} for t in DATA_TABLES}
    )
    rejects: int = 0
    lossy: dict[str, int] = field(default_factory=dict)
    still_normalized: int = 0
    failures: list[str] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0
    bytes_in: int = 0
    seconds: float = 0.0
    output: str = ""

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds else 0.0

    def unaccounted(self) -> dict[str, int]:
        """Per table, read − written − rejected − lost to the target; zero when all reconcile."""
        lost = sum(self.lossy.values())
        out = {}
        for table, c in self.counts.items():
            gap = c["read"] - c["written"] - c["rejected"]
            if table in ("items", "annotations"):
                gap -= min(gap, lost)
            if gap:
                out[table] = gap
        return out


def plan(
    sources: Sequence[str], options: ReadOptions, source_format: str | None, report: Report
) -> list[ReadTask]:
    tasks: list[ReadTask] = []
    for url in sources:
        try:
            source = Source(url)
            fmt = formats.resolve(source, source_format)
            if fmt.plan_read is None:
                msg = f"{url}: format {fmt.name!r} cannot be read"
                raise LabelflowError(msg)
            planned = fmt.plan_read(source, options)
            if not planned:
                msg = f"{url}: nothing to read as {fmt.name}"
                raise LabelflowError(msg)
            report.sources.append((url, fmt.name))
            tasks.extend(planned)
        except LabelflowError as exc:
            report.failures.append(str(exc))
    memory.trim()  # framing's blocks were freed, some in its reading thread's own arena
    return tasks


def run_read_task(
    task: ReadTask, staging_url: str, part: str, compression: str = COMPRESSION
) -> TaskResult:
    """Read one task into the staging dataset. Never raises for bad input: reports it."""
    result = TaskResult(uri=task.uri)
    if task.failure:
        result.error = task.failure
        return result
    writer = PartWriter(staging_url, task.options.dataset, part, compression)
    fmt = formats.get(task.format)
    try:
        for batch in fmt.read(task):
            batch = transforms.standard(batch)
            if not task.options.boxed_vertices:
                batch = _without_boxed_vertices(batch)
            if batch.rejects.num_rows:
                kinds = pc.value_counts(batch.rejects.column("record_kind").cast("string"))
                for kv in kinds.to_pylist():
                    key = kv["values"] or "annotations"
                    result.rejected[key] = result.rejected.get(key, 0) + kv["counts"]
            if batch.annotations.num_rows:
                units = batch.annotations.column("units").cast("string")
                result.still_normalized += pc.sum(pc.equal(units, "norm")).as_py() or 0
            result.vertices_left_out += batch.vertices_left_out
            writer.add(batch)
        writer.close()
        result.rows = {k: v for k, v in writer.rows.items() if k in DATA_TABLES}
        result.rows["rejects"] = writer.rows["rejects"]
        result.files = writer.files
        result.bytes = (task.end or _size(task)) - task.start
    except LabelflowError as exc:
        result.error = str(exc)
    except Exception as exc:  # a reader bug or a library error: still one clear line
        result.error = f"{task.uri}: {type(exc).__name__}: {exc}"
    if result.error:
        _discard(writer)
    memory.trim()  # between tasks, where nothing is re-allocated right after
    return result


def _without_boxed_vertices(batch: Batch) -> Batch:
    """The batch without the vertices of shapes that state a box (once the transforms
    have filled boxes from vertices), counted as read: a staging that only feeds a
    box-reading write need not hold them (`ReadOptions.boxed_vertices`)."""
    points = batch.points
    if not points.num_rows:
        return batch
    anns = batch.annotations
    boxed = anns.column("ann_id").filter(box_stated(anns))
    kept = points.filter(pc.invert(pc.is_in(points.column("ann_id"), value_set=boxed)))
    lean = batch.replace(points=kept)
    lean.vertices_left_out += points.num_rows - kept.num_rows
    return lean


def _size(task: ReadTask) -> int:
    try:
        return task.source.size(task.member) if task.member or not task.source.is_dir else 0
    except (OSError, LabelflowError):
        return 0


def _discard(writer: PartWriter) -> None:
    # A source that failed half-way contributes nothing: partial rows would mislead.
    with contextlib.suppress(Exception):  # the files are deleted next
        writer.close()
    for path in writer.files:
        if writer.fs.exists(path):
            writer.fs.rm(path)


def plan_write(fmt: str, staging: Staging, options: WriteOptions) -> list[WriteTask]:
    """The write's tasks, planned in the calling process (which takes tasks too).

    `staging` is planning's own view: its connection is closed at the end, or the
    process running the tasks next would hold what its queries used (past
    `IN_MEMORY_ITEMS`, ~200 MB through a whole 5 GB YOLO write)."""
    memory.map_large_blocks()
    try:
        return formats.get(fmt).plan_write(staging, options)
    finally:
        staging.close()
        memory.trim()  # planning's blocks, freed by now, would stay resident through the write


def staged_counts(staging: Staging) -> dict[str, int]:
    """Rows per table of a staging dataset given as the source: what was read."""
    return {t: staging.count_rows(t) for t in (*DATA_TABLES, "rejects")}


def run_write_task(task: WriteTask, staging: Staging, out: Output) -> WriteResult:
    fmt = formats.get(task.format)
    assert fmt.write is not None
    memory.map_large_blocks(fmt.mapped_blocks)
    memory.pad_heap_top()
    return fmt.write(task, staging, out)


INLINE_WRITE_ANNOTATIONS = 100_000
"""A write of fewer annotations (weighed by `Format.annotation_weight`) runs in this
process when the read started no pool: starting one (~0.5 s) costs more than a second
worker saves (COCO → YOLO, 28k annotations, 2 workers: 1.21 → 0.9 s)."""


def convert(
    sources: Sequence[str],
    to: str,
    out: str,
    *,
    source_format: str | None = None,
    dataset: str | None = None,
    workers: int | None = None,
    strict: bool = False,
    on_error: str = "reject",
    executor: str = "local",
    scheduler: str | None = None,
    staging: str | None = None,
    image_sizes: dict[str, tuple[int, int]] | None = None,
    write_options: WriteOptions | None = None,
    progress: Progress | None = None,
) -> Report:
    """Read every source, stage it as Parquet, and write it out as `to` into `out`.

    With `strict`, the first failed source fails the run and nothing is
    committed; otherwise the other sources complete and the failures are
    reported (the CLI exits non-zero). `out` is replaced whole on success.
    """
    started = time.perf_counter()
    report = Report(output=out)
    target = formats.get(to)
    if not target.staging_layout and target.write is None:
        msg = f"format {to!r} cannot be written"
        raise LabelflowError(msg)
    # Most writers query staging through DuckDB; a run to Parquet never imports it.
    duckdb = ("duckdb",) if target.write_queries else ()
    writer = () if target.staging_layout else (*duckdb, formats.module(to))
    ex = Executor(executor, workers, scheduler, writer)
    output = Output(out)
    # Staging that is neither the output nor kept is read once, then deleted.
    transient = not target.staging_layout and not staging
    options = ReadOptions(
        dataset=dataset or _dataset_name(sources),
        on_error=on_error,
        image_sizes=image_sizes or {},
        workers=ex.workers,
        boxed_vertices=not (transient and target.boxes_suffice(write_options or WriteOptions())),
    )
    own_staging = None
    try:
        if any(big_file(url) for url in sources):
            ex.warm_now()  # its planning (framing) outlasts the pool's start: overlap them
        tasks = plan(sources, options, source_format, report)
        if strict and report.failures:
            raise LabelflowError(report.failures[0])
        staged = _reuse_staging(tasks, target, dataset)
        if staged:
            ex.warm_now()  # planning the write is short: the pool would start after it
        if staged:
            staging_url = staged
        elif target.staging_layout:
            staging_url = output.tmp_url
        else:
            own_staging = staging or tempfile.mkdtemp(prefix="labelflow-staging-")
            staging_url = own_staging
        # Read once its files are written; what it learns of them goes to the write.
        source = Staging(staging_url)
        if staged:
            counts = staged_counts(source)  # from the footers: no pool needed
            report.rejects = counts.pop("rejects")
            for table, n in counts.items():
                report.counts[table]["read"] = n
        else:
            compression = TRANSIENT_COMPRESSION if transient else COMPRESSION
            _read_all(tasks, staging_url, ex, report, strict, progress, compression)
        if strict and report.failures:
            raise LabelflowError(report.failures[0])
        if report.failures and not any(c["read"] for c in report.counts.values()):
            # Nothing was read: keep whatever the destination held before.
            output.abort()
            return _finish(report, started)
        if target.staging_layout:
            for c in report.counts.values():
                c["written"] = c["read"] - c["rejected"]
            if staged:
                _copy_tree(staged, output.tmp_url)
        else:
            _write_all(target, source, output, ex, report, write_options, progress)
            if report.rejects:
                _keep_rejects(staging_url, output, target.single_file)
        output.commit()
    except BaseException:
        output.abort()
        raise
    finally:
        ex.close()
        if own_staging and not staging:
            shutil.rmtree(own_staging, ignore_errors=True)
    return _finish(report, started)


def _finish(report: Report, started: float) -> Report:
    report.seconds = time.perf_counter() - started
    return report


def _read_all(
    tasks, staging_url, ex: Executor, report: Report, strict: bool, progress, compression: str
) -> None:
    calls = [(t, staging_url, f"{i:05d}", compression) for i, t in enumerate(tasks)]
    for res in ex.map(run_read_task, calls, progress, "read"):
        if res.error:
            report.failures.append(res.error)
            if strict:
                return
            continue
        report.bytes_in += res.bytes
        report.still_normalized += res.still_normalized
        report.rejects += res.rows.get("rejects", 0)
        for table in DATA_TABLES:
            rej = res.rejected.get(table, 0)
            report.counts[table]["read"] += res.rows.get(table, 0) + rej
            report.counts[table]["rejected"] += rej
            if table == "points":  # read, and not staged for a write that needs them not
                report.counts[table]["read"] += res.vertices_left_out
            if table == "annotations":  # rejects of other record kinds (tracks, shapes)
                other = sum(v for k, v in res.rejected.items() if k not in TABLES)
                report.counts[table]["read"] += other
                report.counts[table]["rejected"] += other


def _write_all(
    target, staging: Staging, output: Output, ex, report, write_options, progress
) -> None:
    opts = write_options or WriteOptions(workers=0)  # 0: as many as the executor has
    if opts.workers < 1:
        opts = dataclasses.replace(opts, workers=ex.workers)
    for table in DATA_TABLES:  # its files, listed and counted once, go with every task
        staging.count_rows(table)
    # Nothing else runs while the write is planned: its queries may use every core. Here,
    # as this process takes write tasks too: on a worker, the plan waited for its start
    # (staged 200 MB → Datumaro, 2 workers: 6.16 → 5.76 s, medians of 5 alternating).
    planning = staging.view(threads=ex.workers, memory_limit=PLAN_MEMORY_LIMIT)
    wtasks = plan_write(target.name, planning, opts)
    weight = report.counts["annotations"]["read"] * target.annotation_weight
    small = weight < INLINE_WRITE_ANNOTATIONS
    place = "inline" if small and not ex.started else "auto"
    calls = [(t, staging, output) for t in wtasks]
    for res in ex.map(run_write_task, calls, progress, "write", place):
        report.counts["items"]["written"] += res.items
        report.counts["annotations"]["written"] += res.annotations
        report.files += len(res.files)
        for k, v in res.lossy.items():
            report.lossy[k] = report.lossy.get(k, 0) + v
    for table in ("points", "attributes"):
        report.counts[table]["written"] = (
            report.counts[table]["read"] - report.counts[table]["rejected"]
        )


def _keep_rejects(staging_url: str, output: Output, single_file: bool) -> None:
    """Rejects travel with every output: `OUT/rejects/`, or `OUT.rejects/` beside a file."""
    src = f"{staging_url.rstrip('/')}/rejects"
    fs, path = fs_for(src)
    if not fs.exists(path):
        return
    if single_file:
        _copy_tree(src, f"{output.url}.rejects")
    else:
        _copy_tree(src, f"{output.tmp_url.rstrip('/')}/rejects")


def _reuse_staging(tasks: list[ReadTask], target, dataset: str | None) -> str | None:
    """A single labelflow Parquet source is already a staging dataset: no need to re-stage."""
    fmts = {t.format for t in tasks}
    if len(fmts) != 1 or dataset or not formats.get(next(iter(fmts))).staging_layout:
        return None
    urls = {t.source.url for t in tasks}
    return urls.pop() if len(urls) == 1 else None


def _copy_tree(src_url: str, dst_url: str) -> None:
    src_fs, src = fs_for(src_url)
    dst_fs, dst = fs_for(dst_url)
    for path in src_fs.find(src):
        rel = path[len(src.rstrip("/")) :].lstrip("/")
        target = f"{dst.rstrip('/')}/{rel}"
        dst_fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        with src_fs.open(path, "rb") as fi, dst_fs.open(target, "wb") as fo:
            copy_stream(fi, fo)


def _dataset_name(sources: Sequence[str]) -> str:
    if not sources:
        return "default"
    name = Source(sources[0]).name
    for suffix in (".zip", ".json", ".jsonl", ".xml", ".manifest", ".txt"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or "default"
