#!/usr/bin/env python3
"""The file-system floor of a one-file-per-image writer: create N files of B bytes.

    python bench/fs_floor.py DIR N BYTES

Plain `open`/`write`/`close` into one folder, nothing else: what any YOLO
writer pays on that file system for the same number of label files.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    folder, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.makedirs(folder, exist_ok=True)
    data = b"0 0.500000 0.500000 0.250000 0.250000\n" * (size // 38 + 1)
    data = data[:size]
    for i in range(n):
        with open(os.path.join(folder, f"{i:012d}.txt"), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
