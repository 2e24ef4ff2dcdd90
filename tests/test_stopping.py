"""A run that is stopped: by a scheduler's SIGTERM, killed outright, or during its commit."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import storage
from pipelines.storage import Output
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def slow_sources(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two COCO files whose Open Images write takes seconds: 250 images of polygons each,
    every polygon drawn as a full-size mask. Two, so that the run reads them on its pool."""
    folder = tmp_path_factory.mktemp("slow")
    make = [sys.executable, str(ROOT / "bench/make_coco.py"), "--images", "250", "--quiet"]
    sources = [str(folder / f"{seed}.json") for seed in (1, 2)]
    for seed, path in enumerate(sources, 1):
        subprocess.run([*make, "--seed", str(seed), "--out", path], check=True)
    return sources


def _start(sources: list[str], out: Path, temp: Path, workers: int = 2) -> subprocess.Popen:
    """`labelflow convert` to Open Images on `workers`, in a process group of its own,
    its temporary files under `temp`; it returns once the write has begun."""
    out.mkdir()
    (out / "kept.txt").write_text("the previous output")
    temp.mkdir()
    command = shutil.which("labelflow", path=str(Path(sys.executable).parent))
    assert command is not None
    args = [command, "convert", *sources, "--to", "open_images", "--out", str(out)]
    run = subprocess.Popen(
        [*args, "--workers", str(workers), "-q"],
        env={**os.environ, "TMPDIR": str(temp)},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not list(out.parent.glob(f".{out.name}.labelflow-*")):  # the write's folder
        assert run.poll() is None, f"the run ended before it could be stopped: {run.stderr.read()}"
        assert time.monotonic() < deadline, "the write did not begin within 60 s"
        time.sleep(0.01)
    return run


def _running(group: int) -> list[int]:
    """The processes of a process group that have not ended (zombies have)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _wait_until_gone(group: int) -> list[int]:
    deadline = time.monotonic() + 10
    while (left := _running(group)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_run_and_leaves_nothing_behind(
    signum: signal.Signals, slow_sources: list[str], tmp_path: Path
) -> None:
    """Airflow, Kubernetes and `timeout` send SIGTERM to the command alone: it ends its
    workers, keeps the previous output and removes its temporary files. So does
    Ctrl-C, were it sent to the command alone."""
    out, temp = tmp_path / "out", tmp_path / "tmp"
    run = _start(slow_sources, out, temp)
    os.kill(run.pid, signum)
    _, stderr = run.communicate(timeout=30)
    assert run.returncode == 128 + signum, stderr
    assert f"{signum.name} received, stopping" in stderr
    assert _wait_until_gone(run.pid) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tmp"]
    assert [p.name for p in out.iterdir()] == ["kept.txt"]
    assert list(temp.iterdir()) == []


@pytest.mark.parametrize(
    ("workers", "processes"),
    [(2, 3), (3, 5)],  # the command, the resource tracker, [a forkserver,] 1 or 2 workers
)
def test_workers_end_with_a_run_killed_outright(
    workers: int, processes: int, slow_sources: list[str], tmp_path: Path
) -> None:
    """SIGKILL (or the OOM killer) gives the run no chance to clean up; its workers
    (and their forkserver) still end instead of waiting for tasks forever."""
    out, temp = tmp_path / "out", tmp_path / "tmp"
    run = _start(slow_sources, out, temp, workers)
    assert len(_running(run.pid)) == processes
    os.kill(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    assert _wait_until_gone(run.pid) == []
    assert [p.name for p in out.iterdir()] == ["kept.txt"]


def test_a_stop_during_the_commit_waits_for_its_end(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C between the commit's two renames would leave no output in place."""
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    output = Output(str(final))
    output.write("new.txt", b"new")
    renames = []

    def replace(src: str, dst: str) -> None:
        renames.append(dst)
        if len(renames) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # where Python would run the handler
        real_replace(src, dst)

    real_replace = os.replace
    monkeypatch.setattr(storage.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        output.commit()
    assert renames == [f"{output.tmp}.old", str(final)]
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert not Path(f"{output.tmp}.old").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _stopped_in_the_caller(*args: object) -> object:
    """A write task; in the calling process, a stop signal arrives (its SystemExit)
    once the pool's worker has had time to begin a task of its own."""
    from pipelines import runner

    if multiprocessing.parent_process() is None:
        time.sleep(1)
        raise SystemExit(128 + signal.SIGTERM)
    return runner.run_write_task(*args)


def test_a_stop_in_the_caller_leaves_no_task_of_the_pool_writing(
    slow_sources: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop while the calling process runs a task of its own: the worker's task
    would go on writing into the output being removed, and leave its folder behind."""
    from pipelines import runner

    monkeypatch.setattr(runner, "run_write_task", _stopped_in_the_caller)
    with pytest.raises(SystemExit):
        runner.convert(slow_sources, "open_images", str(tmp_path / "out"), workers=2)
    time.sleep(3)  # what a task still running would write by now
    assert list(tmp_path.iterdir()) == []


def test_a_stop_whose_unwinding_python_dropped_still_leaves_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal that lands in a finalizer (a generator the collector closes) has its
    exception printed and dropped. The stop it recorded ends the run at its next task,
    and a commit never happens: the destination stays as it was."""
    from pipelines.runner import convert
    from tests.conftest import PEER

    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("the previous output")
    monkeypatch.setattr(storage, "STOPPED", [signal.SIGTERM])
    source = PEER / "coco_instances/coco_instances/annotations/instances_val.json"
    with pytest.raises(SystemExit) as stop:
        convert([str(source)], "yolo", str(out), workers=1)
    assert stop.value.code == 128 + signal.SIGTERM
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["kept.txt"]

    written = Output(str(out))  # and a commit asked for directly
    written.write("new.txt", b"new")
    with pytest.raises(SystemExit):
        written.commit()
    assert [p.name for p in out.iterdir()] == ["kept.txt"]
