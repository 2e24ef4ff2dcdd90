#!/usr/bin/env python3
"""labelflow's streaming parse alone, the counterpart of `parse_bench.py ijson_float`.

    python bench/lf_probe.py FILE

Frames the document (pipelines/jsonframe.py: a byte scan, no parsing), then
parses the `annotations` array chunk by chunk with orjson, the cyclic GC held
off per chunk, and counts the annotations: every annotation becomes a Python
dict, as with `ijson.items`, in memory bounded by one chunk. One process.
Prints `mode=lf_probe annotations=<n> inner_s=<seconds>`.
"""

from __future__ import annotations

import sys
import time

from pipelines import jsonframe


def main() -> None:
    path = sys.argv[1]
    t0 = time.perf_counter()
    n = 0
    with open(path, "rb") as f:
        values = {v.key: v for v in jsonframe.frame(f, path)}
        for _, elements in jsonframe.iter_chunks(f, path, values["annotations"].chunks):
            n += len(elements)
    print(f"mode=lf_probe annotations={n} inner_s={time.perf_counter() - t0:.3f}")


if __name__ == "__main__":
    main()
