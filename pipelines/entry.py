"""The `labelflow` executable's first module: what must be settled before pyarrow
loads, how a stop request ends a run, and a quick exit."""

from __future__ import annotations

import multiprocessing.util
import os
import shutil
import signal
import sys
import tempfile
import traceback

from pipelines import memory
from pipelines.storage import STOP_SIGNALS, STOPPED


def main() -> None:
    """The console script: `run`, then leave without tearing the interpreter down.

    The teardown (every module and object freed one by one, pyarrow's among them)
    took ~0.09 s after each run, 14% of a small one; by then the output is
    committed, the pool closed and nothing is left to flush but stdout and stderr
    (as mypy does for the same reason). An unexpected error ends the same way, its
    traceback printed.
    """
    try:
        code = run()
    except BaseException:
        traceback.print_exc()
        code = 1
    # What multiprocessing would have removed at exit.
    shutil.rmtree(multiprocessing.util.get_temp_dir(), ignore_errors=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run() -> int:
    """Run the command line; its exit code.

    Arrow's allocator and glibc's heap are settled first
    (`memory.settle_before_pyarrow`, `memory.one_heap`). Every temporary file of the
    run, its workers' included (staging, DuckDB's spill), goes into one folder of its
    own, removed at the end however the run ends: a stop signal unwinds the run as an
    exception would (the destination is left as it was), and the exit code says which
    signal (128 + its number).
    """
    memory.settle_before_pyarrow()
    memory.one_heap()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    # multiprocessing's folder (the pool's socket) stays where it was: inside the
    # run's, its path could pass the 107 bytes a socket's may have.
    multiprocessing.util.get_temp_dir()
    system, scratch = tempfile.tempdir, tempfile.mkdtemp(prefix="labelflow-")
    tempfile.tempdir = scratch
    try:
        return _app()
    finally:
        _ignore_stops()  # a second signal must not cut the cleaning short
        tempfile.tempdir = system
        shutil.rmtree(scratch, ignore_errors=True)


def _app() -> int:
    from pipelines.cli import app

    try:
        app()
    except SystemExit as exc:  # typer always ends so, with the command's code
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return 1
        return exc.code or 0
    return 0


def _stop(signum: int, _frame: object) -> None:
    _ignore_stops()
    STOPPED.append(signum)
    name = signal.Signals(signum).name
    print(f"labelflow: {name} received, stopping", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def _ignore_stops() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
