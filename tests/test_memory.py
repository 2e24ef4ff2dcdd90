"""The allocator choices labelflow makes in its own processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

from pipelines import memory


@pytest.fixture
def restore_pool():
    before = pa.default_memory_pool()
    yield
    pa.set_memory_pool(before)


def test_system_allocator_unless_the_user_chose_one(restore_pool, monkeypatch) -> None:
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")
    pa.set_memory_pool(pa.mimalloc_memory_pool())
    memory.use_system_allocator()
    assert pa.default_memory_pool().backend_name == "mimalloc"
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
    memory.use_system_allocator()
    assert pa.default_memory_pool().backend_name == "system"


def test_trim_returns_freed_heap_pages() -> None:
    if memory._TRIM is None:
        pytest.skip("not glibc: trim is a no-op by design")

    def resident_kb() -> int:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])

    # Many small blocks freed while a few survive between them: glibc keeps the pages.
    blocks = [bytearray(4000) for _ in range(20_000)]
    survivors = blocks[::100]
    del blocks
    before = resident_kb()
    memory.trim()
    assert resident_kb() < before - 20_000
    assert len(survivors) == 200


@pytest.mark.parametrize(("chosen", "expected"), [(None, "system"), ("mimalloc", "mimalloc")])
def test_the_executable_settles_arrows_allocator_before_pyarrow_loads(chosen, expected) -> None:
    """Arrow's C++ side reads the choice once, at import: the command sets it first."""
    code = (
        "import sys\n"
        "sys.argv = ['labelflow', 'formats']\n"
        "from pipelines import entry\n"
        "assert 'pyarrow' not in sys.modules\n"
        "assert entry.run() == 0\n"
        "import pyarrow as pa\n"
        "print(pa.default_memory_pool().backend_name, file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == expected


_HOLES = """
import sys
from pipelines import memory
if sys.argv[1] == "fixed":
    memory.map_large_blocks()
big = bytearray(8 << 20)
del big  # freeing a large block raises glibc's threshold to its size
blocks, survivors = [], []
for _ in range(100):
    blocks.append(bytearray(1 << 20))
    survivors.append(bytearray(1000))  # small (malloc) blocks between the large ones pin the heap
del blocks
with open("/proc/self/status") as f:
    print(int(next(line for line in f if line.startswith("VmRSS:")).split()[1]))
"""


def _glibc_run(code: str, mode: str) -> int:
    """The number `code` prints, run in a fresh interpreter with glibc's defaults."""
    if memory._MALLOPT is None:
        pytest.skip("not glibc: the heap settings are a no-op by design")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    run = subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True)
    return int(run.stdout)


def test_large_blocks_freed_between_live_ones_leave_no_resident_holes() -> None:
    assert _glibc_run(_HOLES, "fixed") < _glibc_run(_HOLES, "default") - 50_000


_CHURN = """
import resource, sys
from pipelines import memory
memory.map_large_blocks()
if sys.argv[1] == "padded":
    memory.pad_heap_top()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    batch = [bytearray(96_000) for _ in range(50)]  # under the mmap threshold: heap blocks
    del batch
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_padded_heap_keeps_its_top_between_batches() -> None:
    # Unpadded, each batch's pages go back to the system and are faulted in again.
    assert _glibc_run(_CHURN, "padded") * 4 < _glibc_run(_CHURN, "default")


_ARENAS = """
import ctypes, os, sys, tempfile, threading
from pipelines import memory
if sys.argv[1] == "one":
    memory.one_heap()
def work():
    kept = [bytearray(100_000) for _ in range(20)]  # malloc'd, not Python's small blocks
    del kept
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
with tempfile.TemporaryFile() as f:  # malloc_stats writes to stderr
    saved = os.dup(2)
    os.dup2(f.fileno(), 2)
    ctypes.CDLL(None).malloc_stats()
    os.dup2(saved, 2)
    f.seek(0)
    print(f.read().count(b"Arena "))
"""


def test_one_heap_keeps_every_threads_blocks_in_one_arena() -> None:
    assert _glibc_run(_ARENAS, "one") == 1
    assert _glibc_run(_ARENAS, "default") > 1


@pytest.mark.parametrize(("target", "threshold"), [("coco", 4 << 20), ("yolo", 128 * 1024)])
def test_write_tasks_map_blocks_from_their_formats_size(
    tmp_path, monkeypatch, target: str, threshold: int
) -> None:
    """Each write task sets glibc's mmap threshold to its format's `mapped_blocks`."""
    from pipelines import runner
    from pipelines.formats.base import WriteOptions
    from pipelines.staging import Staging
    from pipelines.storage import Output
    from tests.conftest import PEER

    staged = tmp_path / "staged"
    source = PEER / "coco_instances" / "coco_instances"
    assert runner.convert([str(source)], "parquet", str(staged), workers=1).ok
    staging = Staging(str(staged))
    tasks = runner.plan_write(target, staging.view(), WriteOptions(workers=1))
    seen: list[int] = []
    monkeypatch.setattr(memory, "map_large_blocks", lambda size=0: seen.append(size))
    out = Output(str(tmp_path / "out"))
    for task in tasks:
        runner.run_write_task(task, staging, out)
    assert seen and set(seen) == {threshold}
