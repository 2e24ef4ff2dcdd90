"""The `labelflow` command: a thin layer over the library. It names no format."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipelines import memory
from pipelines.config import RunConfig
from pipelines.errors import LabelflowError
from pipelines.executor import prepare as prepare_pool

if TYPE_CHECKING:
    from pipelines.runner import Report

# The engine (pyarrow, the formats) is imported in the commands that use it: a run
# starts its pool's forkserver before that (`_run`).

app = typer.Typer(
    help="Streaming ETL for data-labeling exports: any format → four Arrow tables → "
    "Parquet and back out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@app.command("formats")
def list_formats() -> None:
    """Every format, and whether labelflow reads and writes it."""
    from pipelines import formats

    table = Table("format", "read", "write", "description")
    for name, fmt in formats.available().items():
        if isinstance(fmt, str):
            table.add_row(name, "-", "-", f"[red]unavailable: {fmt}[/]")
            continue
        reads = "yes" if fmt.read else "-"
        writes = "yes" if (fmt.write or fmt.staging_layout) else "-"
        table.add_row(name, reads, writes, fmt.description)
    out.print(table)


@app.command()
def detect(
    paths: Annotated[list[str], typer.Argument(help="Files, folders, zips or URLs")],
) -> None:
    """Which format each source is, and why."""
    from pipelines import formats
    from pipelines.storage import Source

    code = 0
    for path in paths:
        try:
            found = formats.detect(Source(path))
        except LabelflowError as exc:
            err.print(f"[red]{exc}[/]", highlight=False)
            code = 1
            continue
        if not found:
            out.print(f"{path}: [yellow]no format recognised[/]", highlight=False)
            code = 1
            continue
        best, hit = found[0]
        out.print(f"{path}: [bold]{best}[/] ({hit.confidence:.0%}: {hit.reason})", highlight=False)
        for name, other in found[1:]:
            out.print(f"    also {name} ({other.confidence:.0%}: {other.reason})", highlight=False)
    raise typer.Exit(code)


@app.command()
def convert(
    sources: Annotated[list[str], typer.Argument(help="Exports to read: paths or URLs")],
    to: Annotated[str, typer.Option("--to", help="Target format (see `labelflow formats`)")],
    out_url: Annotated[str, typer.Option("--out", help="Output folder or file (path or URL)")],
    source_format: Annotated[
        str, typer.Option("--from", help="Source format; auto-detected by default")
    ] = "auto",
    workers: Annotated[int, typer.Option(help="Parallel tasks (default: cores)")] = 0,
    dataset: Annotated[str, typer.Option(help="Dataset name (default: first source)")] = "",
    strict: Annotated[
        bool, typer.Option(help="Fail the whole run on the first bad source")
    ] = False,
    on_error: Annotated[
        str, typer.Option(help="Unmappable record: 'reject' (to rejects) or 'fail'")
    ] = "reject",
    executor: Annotated[str, typer.Option(help="'local' process pool or 'dask'")] = "local",
    scheduler: Annotated[str, typer.Option(help="Dask scheduler address")] = "",
    staging: Annotated[str, typer.Option(help="Keep staging Parquet here")] = "",
    sizes: Annotated[str, typer.Option(help="CSV of file_name,width,height")] = "",
    prefer_stage: Annotated[str, typer.Option(help="Review stage a writer keeps")] = "",
    option: Annotated[
        list[str], typer.Option("--option", "-o", help="Writer option KEY=VALUE (repeatable)")
    ] = [],  # noqa: B006 - typer reads the default, never mutates it
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar")] = False,
) -> None:
    """Convert exports into Parquet or another format."""
    extra = {}
    for kv in option:
        key, sep, value = kv.partition("=")
        if not sep:
            raise _fail(f"--option expects KEY=VALUE, got {kv!r}", 2)
        extra[key] = value
    config = RunConfig(
        sources=sources,
        to=to,
        out=out_url,
        source_format=None if source_format == "auto" else source_format,
        dataset=dataset or None,
        workers=workers or None,
        strict=strict,
        on_error=on_error,
        executor=executor,
        scheduler=scheduler or None,
        staging=staging or None,
        image_sizes=sizes or None,
        prefer_stage=prefer_stage or None,
        write=extra,
    )
    _run(config, quiet)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="A run config (configs/*.yaml)")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Run a conversion described by a config file."""
    try:
        cfg = RunConfig.load(str(config))
    except LabelflowError as exc:
        raise _fail(str(exc), 2) from None
    _run(cfg, quiet)


def _run(config: RunConfig, quiet: bool) -> None:
    prepare_pool(config.executor, config.workers, config.sources)
    memory.use_system_allocator()  # this process is ours: it may run tasks inline
    show = not quiet and sys.stderr.isatty()
    try:
        if show:
            # Only here: a run that shows no bar (quiet, or not on a terminal) starts
            # ~10 ms sooner.
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as bar:
                tasks: dict[str, int] = {}

                def progress(done: int, total: int, what: str) -> None:
                    if what not in tasks:
                        tasks[what] = bar.add_task(what, total=total)
                    bar.update(tasks[what], completed=done)

                report = config.run(progress)
        else:
            report = config.run()
    except LabelflowError as exc:
        raise _fail(str(exc)) from None
    _summary(report)
    if not report.ok:
        for failure in report.failures:
            err.print(f"[bold red]failed:[/] {failure}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _summary(report: Report) -> None:
    table = Table("table", "read", "written", "rejected", title=f"→ {report.output}")
    for name, c in report.counts.items():
        table.add_row(name, f"{c['read']:,}", f"{c['written']:,}", f"{c['rejected']:,}")
    out.print(table)
    for what, n in sorted(report.lossy.items()):
        out.print(f"[yellow]{n:,} {what}[/]", highlight=False)
    if report.still_normalized:
        out.print(
            f"[yellow]{report.still_normalized:,} annotations kept normalized coordinates: "
            "their item has no width/height[/]",
            highlight=False,
        )
    gaps = report.unaccounted()
    if gaps:
        out.print(f"[red]unaccounted rows: {gaps}[/]", highlight=False)
    if report.rejects:
        out.print(f"{report.rejects:,} records set aside in rejects (with place and reason)")
    speed = f", {report.mb_per_s:,.1f} MB/s" if report.bytes_in else ""
    out.print(f"{report.seconds:.2f} s{speed}", highlight=False)


def main() -> None:  # pragma: no cover - the console script calls `app`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
