"""Giving freed memory back to the system, so a worker's footprint follows what it holds.

A read task parses, maps and drops one chunk after another. Two allocators keep
what was freed: Arrow's bundled one (for reuse) and glibc's heap (freed blocks
between live ones stay mapped until trimmed). Neither is wrong, but across a
long task they set a worker's resident size tens of MB above its live data.
"""

from __future__ import annotations

import contextlib
import ctypes
import os


def settle_before_pyarrow() -> None:
    """Arrow's C++ side (Parquet encoding, compute kernels) on the system allocator.

    It fixes its allocator when pyarrow is first imported, whatever
    `pa.set_memory_pool` says later: set after the import, Parquet still went
    through the bundled mimalloc, which held ~20 MB more per process than glibc's
    heap trimmed between tasks. For the `labelflow` executable before anything
    imports pyarrow; child processes inherit it; a user's own choice wins.
    """
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")


def use_system_allocator() -> None:
    """Arrow on the system allocator, unless the user chose a pool
    (ARROW_DEFAULT_MEMORY_POOL). Measured: the same CPU time per task, ~50 MB less
    resident per worker. Called in the processes labelflow owns (CLI, pool workers),
    never on import: a library caller keeps its own choice. This sets the pool of
    Python-level calls only; `settle_before_pyarrow` sets the C++ side's."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())


def _libc(function: str):
    """The C library's `function` as this process links it, or None where it has none
    (macOS, musl). Looked up among the symbols already loaded, not by name:
    `ctypes.util.find_library` runs `ldconfig` in a subprocess, in every process."""
    with contextlib.suppress(OSError, AttributeError):
        return getattr(ctypes.CDLL(None), function)
    return None


_TRIM = _libc("malloc_trim")
_MALLOPT = _libc("mallopt")
_M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -2, -3, -8  # malloc.h
MMAP_THRESHOLD = 128 * 1024
TOP_PAD = 8 << 20


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> None:
    """Blocks of `threshold` (128 KB) and more in mappings of their own, given back
    when freed.

    glibc starts so, but raises the threshold to the size of each such block
    freed (up to 32 MB); after the first decoded row groups, Arrow's buffers came
    from the heap, and the holes they left stayed resident. Set for write tasks
    (COCO → YOLO on 200 MB, tree PSS 361 → 315 MB, same time); for the whole run
    it cost 5–12% more time (more mappings made and faulted in). A user's
    MALLOC_MMAP_THRESHOLD_ wins.
    """
    if _MALLOPT is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        _MALLOPT(_M_MMAP_THRESHOLD, threshold)


def pad_heap_top() -> None:
    """Keep `TOP_PAD` of free heap above its top, for a write task's next batch.

    Setting the mmap threshold (`map_large_blocks`) also fixes glibc's trim
    threshold at 128 KB: each time a write task freed a batch's smaller blocks,
    the heap's top went back to the system and the next batch faulted it in again
    (staged 1 GB → YOLO, 2 workers: 850k page faults, 3.2 s of system time). With
    the pad: 70k faults, 2.1 s, and the write from 4.9 to 4.4 s. For write tasks
    only: set in the planning process too, it held COCO → YOLO's tree PSS on
    200 MB 20 MB higher; in the tasks alone, 2–4 MB. A user's MALLOC_TOP_PAD_ wins.
    """
    if _MALLOPT is not None and "MALLOC_TOP_PAD_" not in os.environ:
        _MALLOPT(_M_TOP_PAD, TOP_PAD)


def one_heap() -> None:
    """Every thread's blocks from glibc's one heap, not from an arena per thread.

    Arrow's and DuckDB's threads, the pool's result and queue threads each took an
    arena of their own, and each kept some MB freed in it past `trim`. One arena: COCO →
    YOLO, 200 MB, 2 workers, tree RSS 284-291 → 267-273 MB, PSS ~15 MB less; wall and
    CPU no worse (CPU 6.6-8.7 s either way, 5 alternating pairs; staged 1 GB → YOLO
    the same). For the processes labelflow owns, before they start threads (arenas
    already made stay). A user's MALLOC_ARENA_MAX wins.
    """
    if _MALLOPT is not None and "MALLOC_ARENA_MAX" not in os.environ:
        _MALLOPT(_M_ARENA_MAX, 1)


def trim() -> None:
    """Return the free pages of glibc's heap to the system (a no-op elsewhere).

    For after a large one-off free (27 MB after indexing 410k COCO images) and
    between tasks: pages returned are faulted in again when the heap grows back,
    so trimming after every chunk cost a third more CPU for 3 MB.
    """
    if _TRIM is not None:
        _TRIM(0)
