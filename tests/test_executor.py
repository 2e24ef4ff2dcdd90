"""Where the executor runs a call: inline, or on the run's pool of workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import executor, runner
from pipelines.executor import Executor
from pipelines.runner import convert
from tests.conftest import PEER


def test_a_small_run_writes_without_starting_a_pool(tmp_path: Path, monkeypatch) -> None:
    """The read ran inline and the write is small: a pool would cost more than it saves."""

    def no_pool(self):
        raise AssertionError("a pool was started")

    monkeypatch.setattr(Executor, "_new_pool", no_pool)
    source = PEER / "coco_instances" / "coco_instances" / "annotations" / "instances_val.json"
    report = convert([str(source)], "yolo", str(tmp_path / "yolo"), workers=2)
    assert report.ok, report.failures
    assert report.files > 0


def test_a_small_run_to_a_costly_writer_writes_on_the_pool(tmp_path: Path, monkeypatch) -> None:
    """The same annotations drawn as image-size masks (Open Images) weigh 25 times as
    much: the pool's start is worth it."""
    started = []
    real = Executor._new_pool
    monkeypatch.setattr(Executor, "_new_pool", lambda self: started.append(1) or real(self))
    monkeypatch.setattr(runner, "INLINE_WRITE_ANNOTATIONS", 40)
    source = PEER / "coco_instances" / "coco_instances" / "annotations" / "instances_val.json"
    report = convert([str(source)], "open_images", str(tmp_path / "oi"), workers=2)
    assert report.ok, report.failures
    assert report.counts["annotations"]["read"] < 40 <= 25 * report.counts["annotations"]["read"]
    assert started


def _sleep_then_touch(path: str, seconds: float) -> str:
    time.sleep(seconds)
    Path(path).touch()
    return path


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_two_workers_are_this_process_and_one_spawned_worker() -> None:
    """The calling process takes calls too; a pool of one is spawned, not forked from
    a forkserver that would hold the same imports beside it."""
    ex = Executor("local", 2)
    try:
        pids = list(ex.map(_pid_after, [(0.2,)] * 6, None, "test"))
        workers = list(ex._pool._processes.values())
        assert len(workers) == 1
        assert set(pids) == {os.getpid(), workers[0].pid}
        assert type(workers[0]).__name__ == "SpawnProcess"
    finally:
        ex.close()


def _started_at(seconds: float) -> float:
    started = time.time()
    time.sleep(seconds)
    return started


def test_results_come_while_the_calling_process_still_has_calls_to_take() -> None:
    """Held back while this process had calls left, every result of a big write (the
    file names of each task) piled up here until the last call began."""
    ex = Executor("local", 2)
    try:
        ex._local_pool().submit(os.getpid).result()  # the pool's worker is up
        results = ex.map(_started_at, [(0.2,)] * 8, None, "test")
        first_out = (next(results), time.time())[1]
        assert first_out < max([*results])
    finally:
        ex.close()


def test_results_in_order_and_no_task_outlives_an_early_stop(tmp_path: Path) -> None:
    """Results come in submission order as soon as they can (a run's results are not
    held until its last task ends); a caller that stops early (a failure) gets control
    back only when no task can still write."""
    ex = Executor("local", 3)
    try:
        ex.warm_now()
        calls = [(str(tmp_path / str(i)), s) for i, s in enumerate([0.3, 0.0, 0.0, 0.0, 0.6])]
        results = ex.map(_sleep_then_touch, calls, None, "test")
        assert next(results) == calls[0][0]  # the second call finished first
        results.close()
        finished = {p.name for p in tmp_path.iterdir()}
        time.sleep(0.8)
        assert {p.name for p in tmp_path.iterdir()} == finished
    finally:
        ex.close()


@pytest.mark.parametrize(("big", "first"), [(1, "warm"), (1 << 40, "plan")])
def test_a_big_source_file_starts_the_pool_before_it_is_planned(
    big: int, first: str, tmp_path: Path, monkeypatch
) -> None:
    events: list[str] = []
    monkeypatch.setattr(executor, "WARM_NOW_BYTES", big)
    real_warm, real_plan = Executor.warm_now, runner.plan

    def warm(self) -> None:
        events.append("warm")
        real_warm(self)

    def plan(*args):
        events.append("plan")
        return real_plan(*args)

    monkeypatch.setattr(Executor, "warm_now", warm)
    monkeypatch.setattr(runner, "plan", plan)
    source = PEER / "coco_instances" / "coco_instances" / "annotations" / "instances_val.json"
    assert convert([str(source)], "parquet", str(tmp_path / "out"), workers=2).ok
    assert events[0] == first


def _run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_command_line_starts_the_forkserver_before_it_imports_the_engine(
    tmp_path: Path,
) -> None:
    """The forkserver imports the engine while the CLI process does the same: this
    holds only while importing the CLI imports neither pyarrow nor the runner."""
    code = (
        "import sys\n"
        "from multiprocessing import forkserver\n"
        "from pipelines import cli, executor\n"
        "heavy = [m for m in ('pyarrow', 'pipelines.runner') if m in sys.modules]\n"
        f"executor.prepare('local', 1, [{str(tmp_path)!r}])\n"
        "alone = forkserver._forkserver._forkserver_pid\n"
        f"executor.prepare('local', 2, [{str(tmp_path)!r}])\n"
        "spawned = forkserver._forkserver._forkserver_pid\n"
        f"executor.prepare('local', 3, [{str(tmp_path / 'missing.json')!r}])\n"
        "small = forkserver._forkserver._forkserver_pid\n"
        f"executor.prepare('local', 3, [{str(tmp_path)!r}])\n"
        "print(heavy, alone, spawned, small, forkserver._forkserver._forkserver_pid is not None)\n"
    )
    assert _run_python(code) == "[] None None None True"


def _imported(name: str) -> bool:
    return name in sys.modules


def test_workers_import_what_a_forkserver_started_earlier_did_not_preload() -> None:
    code = (
        "from pipelines import executor\n"
        "from tests.test_executor import _imported\n"
        "executor.prepare('local', 3, ['.'])\n"
        "ex = executor.Executor('local', 3, preload=['duckdb'])\n"
        "ex.warm_now()\n"
        "print(ex._local_pool().submit(_imported, 'duckdb').result())\n"
        "ex.close()\n"
    )
    assert _run_python(code) == "True"


def test_preparing_a_pool_asks_nothing_of_remote_sources(monkeypatch) -> None:
    """A request per remote source would delay the run's start; the runner decides
    for them as before."""
    asked: list[str] = []
    monkeypatch.setattr(executor, "Source", lambda url: asked.append(url))
    executor.prepare("local", 2, ["s3://bucket/export.json", "gs://bucket/folder/"])
    assert asked == []
