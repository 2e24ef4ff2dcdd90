"""Where a run's tasks execute: inline, on a local pool of worker processes, or on
a Dask cluster.

The calling process runs tasks beside its pool's workers (`Executor._shared`): a
run on N workers has N - 1 worker processes. Several fork from a `forkserver` that
has imported the engine once and shares it with them (threads would serialize on
the GIL; `fork` after DuckDB's threads have started is unsafe). A single
worker is spawned: a forkserver would be one more process holding the same imports,
shared with nobody. This module imports neither pyarrow nor the engine, so the
command line can start a forkserver (`prepare`) before it imports them itself: the
two imports then overlap.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import importlib
import os
import queue
import select
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from typing import Any

from pipelines import memory
from pipelines.storage import Source, raise_if_stopped

Progress = Callable[[int, int, str], None]
"""Called as progress(done, total, what) after each task."""

ENGINE = ("__main__", "pipelines.runner")
"""What a worker imports before its first task (a forkserver, before it forks one):
the caller's main module first (every forked worker would otherwise import the CLI's
typer and rich again after the fork), then the engine."""

WARM_NOW_BYTES = 32 << 20
"""A single source file this large starts the local pool at once, not `WARM_AFTER_S`
later: framing 200 MB of COCO takes 0.25 s, the pool's start 0.5 s."""


def big_file(url: str) -> bool:
    return _sized(url) == "big"


def _sized(url: str) -> str:
    """The source as far as starting a pool goes: "big" (a file of `WARM_NOW_BYTES` or
    more), "small", "folder", or "unknown" (missing: planning reports it)."""
    with contextlib.suppress(Exception):
        source = Source(url)
        if source.is_dir:
            return "folder"
        return "big" if source.size() >= WARM_NOW_BYTES else "small"
    return "unknown"


def prepare(kind: str, workers: int | None, sources: Sequence[str]) -> None:
    """Start the forkserver of a local pool now, if the run is likely to have one
    (`_start_method`).

    For a caller that has not imported the engine yet (the command line): the
    forkserver's imports and the caller's then run side by side, where the pool
    started after them. Likely: a big source file, or a folder (a staged dataset is
    written by the pool; a folder export starts it `WARM_AFTER_S` in unless the run
    ends first). A small file starts nothing. Remote sources are not asked: a
    request each would delay the start for what the runner decides anyway.
    """
    if kind != "local" or _start_method(_worker_count(workers)) != "forkserver":
        return
    local = [url for url in sources if "://" not in url or url.startswith("file://")]
    if not any(_sized(url) in ("big", "folder") for url in local):
        return
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(list(ENGINE))
    forkserver.ensure_running()


def _worker_count(workers: int | None) -> int:
    return max(1, workers or os.cpu_count() or 1)


def _start_method(workers: int) -> str:
    """How a run on `workers` starts its pool's processes (`workers` - 1 of them)."""
    return "spawn" if workers <= 2 else "forkserver"


def _adopt_environment(env: dict[str, str]) -> None:
    """Workers see the caller's environment as it is now (credentials, endpoints).

    A forkserver keeps the environment it started with; fsspec reads its
    FSSPEC_* settings at import, so they are re-read here.
    """
    import fsspec.config

    os.environ.clear()
    os.environ.update(env)
    fsspec.config.conf.clear()
    fsspec.config.set_conf_env(fsspec.config.conf)


def _start_worker(env: dict[str, str], modules: Sequence[str], temp: str, caller: int) -> None:
    memory.one_heap()  # before `_end_with` starts a thread
    _adopt_environment(env)
    tempfile.tempdir = temp  # the caller's: it removes its own temporary folder
    _end_with(caller)
    # Everything, when spawned; else what a forkserver started earlier (`prepare`,
    # another run) did not preload.
    for name in modules:
        importlib.import_module(name)
    memory.use_system_allocator()
    # Everything imported so far lives as long as the worker: keep it out of the
    # cyclic collector's passes (each full pass would otherwise walk all of it).
    gc.freeze()


def _end_with(caller: int) -> None:
    """End this worker as soon as the process that made its pool is gone, even killed
    outright (SIGKILL, the OOM killer): the pool's queues would keep it, and its
    forkserver, waiting for tasks forever."""
    try:
        gone = os.pidfd_open(caller)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfds (not Linux 5.3+): nothing to watch with
        return

    def watch() -> None:
        select.select([gone], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="end-with-caller", daemon=True).start()


def _ready() -> None:
    """A task that does nothing: submitting it makes the pool start a worker."""


WARM_AFTER_S = 0.25
"""Start a local pool this long after the executor is made unless it is used or closed
before: planning a big source (framing a large JSON file) takes longer, and the pool's
first process imports the engine (about a second) meanwhile; a small run that ends
up inline never pays for a pool."""


class Executor:
    """Runs task functions: inline, on a local process pool, or on a Dask cluster."""

    def __init__(
        self,
        kind: str = "local",
        workers: int | None = None,
        scheduler: str | None = None,
        preload: Sequence[str] = (),
    ):
        """`preload`: modules a local pool's workers import before their first task,
        beside the engine (e.g. duckdb when the run writes from staging): in the
        forkserver when this pool starts it, else in each worker."""
        self.kind = kind
        self.preload = [*ENGINE, *preload]
        self.workers = _worker_count(workers)
        self.scheduler = scheduler
        self._pool: Any = None
        self._warming: threading.Thread | None = None
        self._settled = threading.Event()
        self._hurry = threading.Event()
        self._wanted = False
        self._lock = threading.Lock()
        if kind == "local" and self.workers > 1:
            self._warming = threading.Thread(target=self._warm, daemon=True)
            self._warming.start()

    def _local_pool(self) -> Any:
        with self._lock:
            return self._pool or self._new_pool()

    def _new_pool(self) -> Any:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context(_start_method(self.workers))
            if ctx.get_start_method() == "forkserver":
                ctx.set_forkserver_preload(self.preload)  # unless it runs already (`prepare`)
            self._pool = ProcessPoolExecutor(
                max_workers=self._pool_size,
                mp_context=ctx,
                initializer=_start_worker,
                initargs=(dict(os.environ), self.preload, tempfile.gettempdir(), os.getpid()),
            )
        return self._pool

    def warm_now(self) -> None:
        """Start the local pool now: the caller knows the run will use it."""
        self._wanted = True
        self._hurry.set()

    def _warm(self) -> None:
        self._hurry.wait(WARM_AFTER_S)
        if self._settled.is_set():
            return
        with contextlib.suppress(Exception):  # a pool closed meanwhile: nothing to warm
            pool = self._local_pool()
            for fut in [pool.submit(_ready) for _ in range(self._pool_size)]:
                fut.result()

    @property
    def _pool_size(self) -> int:
        """A local pool's workers: this process is the run's other one (`_shared`)."""
        return self.workers - 1

    @property
    def started(self) -> bool:
        """Whether the run has a pool of workers, or asked for one."""
        return self._pool is not None or self._wanted

    def map(
        self,
        fn: Callable,
        calls: list[tuple],
        progress: Progress | None,
        what: str,
        place: str = "auto",
    ) -> Iterable:
        """`place`: "auto" runs a single call inline and more on the pool and here;
        "inline" runs them all here (as does one worker)."""
        total = len(calls)
        if self._pool is None:
            self._settled.set()  # inline, or a pool made now: no warming needed any more
            self._hurry.set()
        if self.kind == "dask":
            yield from self._dask(fn, calls, progress, what)
            return
        if self.workers == 1 or place == "inline" or (total <= 1 and place == "auto"):
            for i, args in enumerate(calls):
                yield fn(*args)
                raise_if_stopped()
                if progress:
                    progress(i + 1, total, what)
            return
        yield from self._shared(fn, calls, progress, what)

    def _shared(
        self, fn: Callable, calls: list[tuple], progress: Progress | None, what: str
    ) -> Iterable:
        """The calls on the pool's workers and in this process: each takes the next call
        as soon as it is free. This process would otherwise sit idle beside a worker of
        its own, the same engine imported (COCO → YOLO, 200 MB, 2 workers: RSS of the
        tree 403 → 298 MB). Results come in call order, each as soon as it and those
        before it are done, and are let go of: a big write's results (the files of
        every task) would otherwise pile up in this process until the last task ends
        (35 MB on 1 GB → YOLO)."""
        pool = self._local_pool()
        todo = collections.deque(enumerate(calls))
        taking = threading.Lock()
        finished: queue.SimpleQueue = queue.SimpleQueue()  # (index, future) from the pool
        stopping = threading.Event()

        def take() -> tuple[int, tuple] | None:
            with taking:
                return todo.popleft() if todo and not stopping.is_set() else None

        def feed() -> None:  # one a worker: hands it the next call once it is done with one
            while (call := take()) is not None:
                try:
                    fut = pool.submit(fn, *call[1])
                    futures.wait([fut])
                except BaseException as exc:  # a stop, a broken pool: the caller raises it
                    fut = futures.Future()
                    fut.set_exception(exc)
                finished.put((call[0], fut))

        feeders = [threading.Thread(target=feed, daemon=True) for _ in range(self._pool_size)]
        for feeder in feeders:
            feeder.start()
        results: dict[int, Any] = {}
        done = 0

        def settle(i: int, result: Any) -> None:
            nonlocal done
            raise_if_stopped()  # within the `try` below: the workers are ended
            results[i] = result
            done += 1
            if progress:
                progress(done, len(calls), what)

        try:
            # Handed out within the `try`: a stop meanwhile ends the tasks already running,
            # which would go on writing into an output their caller then removes.
            for first in range(len(calls)):
                while first not in results:
                    # The pool's results before a call of our own: held back, they piled
                    # up while this process had calls left (1 GB → YOLO: 410k file names).
                    call = take() if finished.empty() else None
                    if call is None:
                        i, fut = finished.get()
                        settle(i, fut.result())
                    else:
                        settle(call[0], fn(*call[1]))
                yield results.pop(first)
        except (KeyboardInterrupt, SystemExit):  # a stop (Ctrl-C, a signal): not after the tasks
            stopping.set()  # before the workers end: no call is handed to a broken pool
            self.stop()
            raise
        finally:  # stopped early (a failure): no task may outlive the call
            stopping.set()
            for feeder in feeders:
                feeder.join()

    def _dask(self, fn: Callable, calls: list[tuple], progress: Progress | None, what: str):
        from distributed import Client, as_completed

        if self._pool is None:
            self._pool = (
                Client(self.scheduler)
                if self.scheduler
                else Client(n_workers=self.workers, threads_per_worker=1, processes=True)
            )
        futures = [self._pool.submit(fn, *args, pure=False) for args in calls]
        for i, _ in enumerate(as_completed(futures)):
            if progress:
                progress(i + 1, len(calls), what)
        yield from self._pool.gather(futures)

    def stop(self) -> None:
        """End a local pool's workers now, in the middle of their tasks (which fail):
        the run is being stopped, and its caller removes what they were writing."""
        pool = self._pool
        if self.kind != "local" or pool is None:
            return
        # The pool's own table of its workers (what Python 3.14's terminate_workers uses).
        workers = list((getattr(pool, "_processes", None) or {}).values())
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.join()

    def close(self) -> None:
        self._settled.set()
        self._hurry.set()
        if self._warming is not None:
            self._warming.join()
            self._warming = None
        if self._pool is not None:
            (self._pool.shutdown if hasattr(self._pool, "shutdown") else self._pool.close)()
            self._pool = None
