"""Where the executor runs a call: inline, or on the run's pool of workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.runner import Executor, convert
from tests.conftest import PEER


def test_a_single_call_runs_inline_unless_the_run_has_a_pool() -> None:
    ex = Executor("local", 2)
    try:
        assert ex.call(os.getpid) == os.getpid()
        assert ex._pool is None  # a run too small for a pool does not start one for it
        ex.warm_now()
        assert ex.call(os.getpid) != os.getpid()
    finally:
        ex.close()


def test_writing_from_staging_keeps_duckdb_out_of_the_calling_process(tmp_path: Path) -> None:
    """Counting the staged rows and planning the write query DuckDB: on the workers."""
    staged = tmp_path / "staged"
    source = PEER / "coco_instances" / "coco_instances"
    assert convert([str(source)], "parquet", str(staged), workers=1).ok
    code = (
        "import sys\n"
        "from pipelines.runner import convert\n"
        f"report = convert([{str(staged)!r}], 'yolo', {str(tmp_path / 'yolo')!r}, workers=2)\n"
        "assert report.ok and report.files, report\n"
        "print('duckdb' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_small_run_writes_without_starting_a_pool(tmp_path: Path, monkeypatch) -> None:
    """The read ran inline and the write is small: a pool would cost more than it saves."""

    def no_pool(self):
        raise AssertionError("a pool was started")

    monkeypatch.setattr(Executor, "_new_pool", no_pool)
    source = PEER / "coco_instances" / "coco_instances" / "annotations" / "instances_val.json"
    report = convert([str(source)], "yolo", str(tmp_path / "yolo"), workers=2)
    assert report.ok, report.failures
    assert report.files > 0
