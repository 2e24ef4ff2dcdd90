#!/usr/bin/env python3
"""The file-system floor of a one-file-per-image writer: create N files of B bytes.

    python bench/fs_floor.py DIR N BYTES [PROCESSES]

`os.open`/`os.write`/`os.close` into one folder (as the writers do), nothing
else: what any YOLO writer pays on that file system for the same number of
label files. With
PROCESSES > 1, that many processes share the N files (as a writer's workers
do), which shows how far the file system lets file creation scale.
"""

from __future__ import annotations

import os
import sys
from itertools import pairwise
from multiprocessing import Process

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def create(folder: str, first: int, stop: int, size: int) -> None:
    data = b"0 0.500000 0.500000 0.250000 0.250000\n" * (size // 38 + 1)
    data = data[:size]
    for i in range(first, stop):  # the system calls `Output.write` makes for a local file
        fd = os.open(os.path.join(folder, f"{i:012d}.txt"), _FLAGS, 0o666)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def main() -> None:
    folder, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    processes = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    os.makedirs(folder, exist_ok=True)
    if processes == 1:
        create(folder, 0, n, size)
        return
    bounds = [n * k // processes for k in range(processes + 1)]
    workers = [Process(target=create, args=(folder, a, b, size)) for a, b in pairwise(bounds)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    main()
