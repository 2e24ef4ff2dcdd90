#!/usr/bin/env python3
"""COCO -> YOLO with datumaro's Python API, eager or streaming.

    python bench/dm_coco_to_yolo.py DATASET_DIR OUT_DIR [--stream]

DATASET_DIR is datumaro's COCO layout: annotations/instances_train.json and
an (possibly empty) images/train folder. --stream uses StreamDataset, whose
COCO reader indexes the file (Rust page mapper) and yields one item at a
time instead of loading the whole file.
"""

import argparse
import time

from datumaro.components.dataset import Dataset, StreamDataset


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dataset_dir")
    p.add_argument("out_dir")
    p.add_argument("--stream", action="store_true")
    args = p.parse_args()
    cls = StreamDataset if args.stream else Dataset
    t0 = time.perf_counter()
    ds = cls.import_from(args.dataset_dir, "coco_instances")
    ds.export(args.out_dir, "yolo", save_media=False)
    print(f"stream={args.stream} seconds={time.perf_counter() - t0:.3f}")


if __name__ == "__main__":
    main()
