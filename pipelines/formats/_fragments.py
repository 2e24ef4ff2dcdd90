"""One output file written by several tasks: each writes its fragments, the last one joins.

A single-file writer that splits its rows into ordered parts lets every part's
task write its own pieces (e.g. its slice of a JSON array) under a hidden
folder beside the file. When a task has written its pieces it drops a marker;
the task that finds every part's marker present claims the join (an exclusive
create, so exactly one task does it, whichever order they finish in) and
concatenates the pieces into the file, parts in order, then deletes the
folder. Tasks run anywhere the output storage is reachable (process pool,
Dask): they share nothing but that storage.

`part_tasks` splits a subset into such parts (runs of items in source order)
and `write_joined` writes a file of one chunk per item (or row) that way.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import IO, Any

from pipelines.formats.base import WriteOptions, WriteTask
from pipelines.item_order import item_run
from pipelines.storage import Output, copy_stream

MIN_PART_ITEMS = 2048
"""Smaller subsets are written by one task: a part queries staging for its run of
items, which costs more than a small run saves."""


def part_count(
    items: int, workers: int, *, per_worker: int = 1, min_items: int | None = None
) -> int:
    """Parts to split `items` into: `per_worker` a worker (more even out items of uneven
    cost), none of fewer than `min_items` (default `MIN_PART_ITEMS`)."""
    return max(1, min(per_worker * workers, items // (min_items or MIN_PART_ITEMS)))


def part_tasks(
    fmt: str,
    subset: str | None,
    options: WriteOptions,
    bounds: Sequence[int],
    **extra: Any,
) -> list[WriteTask]:
    """One task per run of the subset's items: part k writes positions [bounds[k],
    bounds[k + 1]) of the subset, in source order (`part_run`)."""
    opts = replace(options, extra={**options.extra, **extra, "_bounds": list(bounds)})
    parts = len(bounds) - 1
    return [WriteTask(fmt, subset, k, parts, opts) for k in range(parts)]


def even_bounds(items: int, parts: int) -> list[int]:
    """`part_tasks` bounds of runs of near-equal length."""
    return [item_run(items, k, parts)[0] for k in range(parts)] + [items]


def part_run(task: WriteTask) -> tuple[int, int]:
    """The items of the task's part, as `Staging.iter_items(positions=...)` takes them."""
    bounds = task.options.extra["_bounds"]
    return bounds[task.shard], bounds[task.shard + 1]


class Piece:
    """In a join layout: every part's fragment of one piece, non-empty ones joined by `sep`."""

    def __init__(self, name: str, sep: bytes = b"") -> None:
        self.name = name
        self.sep = sep


class Fragments:
    """The fragments of the file `name` (relative to `out`; "" when the output is that
    one file), written in `parts` parts."""

    def __init__(self, out: Output, name: str, parts: int) -> None:
        self.out = out
        self.name = name
        self.parts = parts
        if name:
            folder, base = posixpath.split(name)
            self.dir = out.path(posixpath.join(folder, f".{base}.parts"))
        else:  # the output is a file, with no folder to hide fragments in
            self.dir = out.side

    def _path(self, piece: str, part: int) -> str:
        return f"{self.dir}/{piece}-{part:05d}"

    def open(self, piece: str, part: int) -> IO[bytes]:
        return self.out.open_path(self._path(piece, part))

    def finish(self, part: int, info: bytes = b"") -> list[bytes] | None:
        """Mark `part` done. Returns every part's `info` (in part order) when this task
        is the one to join, else None."""
        with self.out.open_path(self._path("done", part)) as f:
            f.write(info)
        fs = self.out.fs
        # Markers written by other processes: a cached listing would not show them.
        fs.invalidate_cache(self.dir)
        markers = [self._path("done", k) for k in range(self.parts)]
        if not all(fs.exists(m) for m in markers):
            return None
        try:
            with self.out.open_path(self._path("join", 0), "xb"):
                pass
        except FileExistsError:
            return None
        return [fs.cat_file(m) for m in markers]

    def join(self, layout: Sequence[bytes | Piece]) -> None:
        """Write the file as `layout` says (literal bytes and pieces), then drop the fragments."""
        with self.out.open(self.name) as f:
            for entry in layout:
                if isinstance(entry, Piece):
                    self._copy_piece(entry, f)
                else:
                    f.write(entry)
        self.drop()

    def drop(self) -> None:
        """Delete the fragments (joined, or not wanted after all)."""
        self.out.fs.rm(self.dir, recursive=True)

    def extend(self, piece: str) -> IO[bytes]:
        """The file, begun by `piece`'s fragment of part 0 (which wrote all that goes
        before it), open for the rest. On a local disk that fragment is renamed into
        place, not copied: staged 200 MB → Encord, 729 MB in two parts, copied whole
        in 0.8–0.9 s while the other worker sat idle."""
        first, path = self._path(piece, 0), self.out.path(self.name)
        if self.out.local:
            os.replace(first, path)
            return self.out.open_path(path, "ab")
        f = self.out.open(self.name)
        self.copy(piece, 0, f)
        return f

    def copy(self, piece: str, part: int, f: IO[bytes]) -> None:
        """Append `piece`'s fragment of `part` to `f`."""
        with self.out.fs.open(self._path(piece, part), "rb") as src:
            copy_stream(src, f)

    def _copy_piece(self, piece: Piece, f: IO[bytes]) -> None:
        first = True
        for k in range(self.parts):
            if not self.out.fs.size(self._path(piece.name, k)):
                continue
            if not first:
                f.write(piece.sep)
            first = False
            self.copy(piece.name, k, f)


def write_joined(
    task: WriteTask,
    out: Output,
    name: str,
    chunks: Iterable[bytes],
    frame: Callable[[], tuple[bytes, bytes]] = lambda: (b"", b""),
    *,
    lead: bytes = b"",
    sep: bytes = b"",
    info: bytes = b"",
) -> list[bytes] | None:
    """Write the task's chunks into the file `name`: the head `frame()` gives, then `lead`
    if any part has a chunk, the chunks of every part in order with `sep` between two,
    then the tail. The first part writes the head, the last part to finish joins the
    file (`Fragments.extend`); it gets every part's `info` (in part order), the others
    None."""
    if task.shards == 1:  # the file itself, not a fragment copied into it
        head, tail = frame()
        with out.open(name) as f:
            f.write(head)
            _write_chunks(f, chunks, sep, lead)
            f.write(tail)
        return [info]
    fragments = Fragments(out, name, task.shards)
    first = task.shard == 0
    with fragments.open("chunks", task.shard) as f:
        if first:
            f.write(frame()[0])
        written = _write_chunks(f, chunks, sep, lead if first else b"")
    infos = fragments.finish(task.shard, (b"1" if written else b"0") + info)
    if infos is None:
        return None
    wrote = infos[0][:1] == b"1"
    with fragments.extend("chunks") as f:
        for k in range(1, task.shards):
            if infos[k][:1] == b"1":
                f.write(sep if wrote else lead)
                fragments.copy("chunks", k, f)
                wrote = True
        f.write(frame()[1])
    fragments.drop()
    return [i[1:] for i in infos]


def _write_chunks(f: IO[bytes], chunks: Iterable[bytes], sep: bytes, lead: bytes = b"") -> bool:
    first = True
    for chunk in chunks:
        f.write(lead if first else sep)
        f.write(chunk)
        first = False
    return not first
