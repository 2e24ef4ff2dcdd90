"""One output file written by several tasks: each writes its fragments, the last one joins.

A single-file writer that splits its rows into ordered parts lets every part's
task write its own pieces (e.g. its slice of a JSON array) under a hidden
folder beside the file. When a task has written its pieces it drops a marker;
the task that finds every part's marker present claims the join (an exclusive
create, so exactly one task does it, whichever order they finish in) and
concatenates the pieces into the file, parts in order, then deletes the
folder. Tasks run anywhere the output storage is reachable (process pool,
Dask): they share nothing but that storage.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import IO

from pipelines.storage import Output, copy_stream


class Piece:
    """In a join layout: every part's fragment of one piece, non-empty ones joined by `sep`."""

    def __init__(self, name: str, sep: bytes = b"") -> None:
        self.name = name
        self.sep = sep


class Fragments:
    """The fragments of the file `name` (relative to `out`), written in `parts` parts."""

    def __init__(self, out: Output, name: str, parts: int) -> None:
        self.out = out
        self.name = name
        self.parts = parts
        folder, base = posixpath.split(name)
        self.dir = posixpath.join(folder, f".{base}.parts")

    def _rel(self, piece: str, part: int) -> str:
        return f"{self.dir}/{piece}-{part:05d}"

    def open(self, piece: str, part: int) -> IO[bytes]:
        return self.out.open(self._rel(piece, part))

    def finish(self, part: int, info: bytes = b"") -> list[bytes] | None:
        """Mark `part` done. Returns every part's `info` (in part order) when this task
        is the one to join, else None."""
        with self.out.open(self._rel("done", part)) as f:
            f.write(info)
        fs = self.out.fs
        # Markers written by other processes: a cached listing would not show them.
        fs.invalidate_cache(self.out.path(self.dir))
        markers = [self.out.path(self._rel("done", k)) for k in range(self.parts)]
        if not all(fs.exists(m) for m in markers):
            return None
        try:
            with self.out.open(self._rel("join", 0), "xb"):
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
        self.out.fs.rm(self.out.path(self.dir), recursive=True)

    def _copy_piece(self, piece: Piece, f: IO[bytes]) -> None:
        fs = self.out.fs
        first = True
        for k in range(self.parts):
            path = self.out.path(self._rel(piece.name, k))
            if not fs.size(path):
                continue
            if not first:
                f.write(piece.sep)
            first = False
            with fs.open(path, "rb") as src:
                copy_stream(src, f)
