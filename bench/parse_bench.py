#!/usr/bin/env python3
# ruff: noqa: UP031 - kept as the reference probes were first measured
"""Raw-parse and naive-baseline probes for a COCO instances file.

Each mode does one job on the whole file and prints one line::

    mode=<mode> annotations=<n> inner_s=<seconds inside Python>

Run every mode in a fresh process (bench/run.py runs it under bench/measure.py)
so wall time and peak RSS include interpreter start-up and imports, as a user
would see them.

Modes (the library each needs is in brackets):

  read            read the file into bytes (I/O + page cache floor)
  json            json.load (stdlib)
  orjson          orjson.loads(bytes)                              [orjson]
  simdjson        simdjson parse of the whole document (tape only)  [pysimdjson]
  simdjson_walk   simdjson parse + touch image_id/category_id/bbox of each
                  annotation through the lazy proxy objects          [pysimdjson]
  msgspec         msgspec.json.decode(bytes) to generic objects     [msgspec]
  msgspec_struct  msgspec typed decode; only the fields a bbox converter
                  needs, segmentation skipped (still validated)     [msgspec]
  ijson_float     ijson.items(f, 'annotations.item', use_float=True) [ijson]
  ijson_decimal   ijson.items(f, 'annotations.item') (Decimal numbers) [ijson]
  ijson_bbox      ijson.parse events, keeping only image_id/category_id/bbox
                  (no per-annotation dict built)                    [ijson]
  duckdb_count    DuckDB read_json + unnest(annotations), count(*)  [duckdb]
  duckdb_parquet  DuckDB read_json + unnest -> Parquet (no segmentation) [duckdb]
  polars          polars.read_json + explode annotations            [polars]
  pycocotools     pycocotools COCO(file): json.load + index         [pycocotools]
  pandas_df       json.load + pandas.DataFrame(annotations)         [pandas]
  polars_df       json.load + polars.from_dicts(annotations) with an explicit
                  schema without segmentation (inference fails on the mixed
                  polygon/RLE segmentation column)                  [polars]
  naive_yolo      orjson.loads + group by image + write one YOLO txt
                  per image into --out DIR (hand-written baseline)  [orjson]

Usage::

    python bench/parse_bench.py MODE FILE [--out PATH] [--no-gc]

--no-gc runs the mode with Python's cyclic garbage collector disabled
(gc.disable()). Loading a large document builds millions of containers, and
the collector's repeated passes over them can cost more than the parse.
"""

import argparse
import gc
import os
import sys
import time


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def m_read(path, out):
    return len(_read(path))  # bytes, not annotations


def m_json(path, out):
    import json

    with open(path, "rb") as f:
        d = json.load(f)
    return len(d["annotations"])


def m_orjson(path, out):
    import orjson

    return len(orjson.loads(_read(path))["annotations"])


def m_simdjson(path, out):
    import simdjson

    doc = simdjson.Parser().parse(_read(path))
    return len(doc["annotations"])


def m_simdjson_walk(path, out):
    import simdjson

    doc = simdjson.Parser().parse(_read(path))
    n, acc = 0, 0.0
    for a in doc["annotations"]:
        bbox = a["bbox"].as_list()
        acc += a["image_id"] + a["category_id"] + bbox[2]
        n += 1
    return n


def m_msgspec(path, out):
    import msgspec

    return len(msgspec.json.decode(_read(path))["annotations"])


def m_msgspec_struct(path, out):
    import msgspec

    class Ann(msgspec.Struct):
        id: int
        image_id: int
        category_id: int
        bbox: list[float]
        iscrowd: int = 0

    class Img(msgspec.Struct):
        id: int
        width: int
        height: int
        file_name: str

    class Cat(msgspec.Struct):
        id: int
        name: str

    class Coco(msgspec.Struct):
        images: list[Img]
        annotations: list[Ann]
        categories: list[Cat]

    return len(msgspec.json.decode(_read(path), type=Coco).annotations)


def _ijson_items(path, use_float):
    import ijson

    assert ijson.backend == "yajl2_c", ijson.backend
    n = 0
    with open(path, "rb") as f:
        for _ in ijson.items(f, "annotations.item", use_float=use_float):
            n += 1
    return n


def m_ijson_float(path, out):
    return _ijson_items(path, True)


def m_ijson_decimal(path, out):
    return _ijson_items(path, False)


def m_ijson_bbox(path, out):
    import ijson

    assert ijson.backend == "yajl2_c", ijson.backend
    n = 0
    bbox = []
    with open(path, "rb") as f:
        for prefix, event, value in ijson.parse(f, use_float=True):
            if prefix == "annotations.item.bbox.item":
                bbox.append(value)
            elif prefix == "annotations.item.image_id" or prefix == "annotations.item.category_id":
                pass
            elif prefix == "annotations.item" and event == "end_map":
                n += 1
                bbox = []
    return n


_DUCK_ANN = (
    "STRUCT(id BIGINT, image_id BIGINT, category_id INTEGER, "
    "bbox DOUBLE[], area DOUBLE, iscrowd INTEGER)[]"
)


def _duck_sql(path):
    return (
        "SELECT a.* FROM (SELECT unnest(annotations) AS a FROM read_json("
        "'%s', format='auto', maximum_object_size=%d, "
        "columns={'annotations': '%s'}))" % (path.replace("'", "''"), 2**31 - 1, _DUCK_ANN)
    )


def m_duckdb_count(path, out):
    import duckdb

    con = duckdb.connect()
    return con.execute(f"SELECT count(*) FROM ({_duck_sql(path)})").fetchone()[0]


def m_duckdb_parquet(path, out):
    import duckdb

    con = duckdb.connect()
    out = out or "annotations.parquet"
    con.execute(
        "COPY ({}) TO '{}' (FORMAT parquet)".format(_duck_sql(path), out.replace("'", "''"))
    )
    return con.execute(
        "SELECT count(*) FROM read_parquet('{}')".format(out.replace("'", "''"))
    ).fetchone()[0]


def m_polars(path, out):
    import polars as pl

    ann = pl.Struct(
        {
            "id": pl.Int64,
            "image_id": pl.Int64,
            "category_id": pl.Int32,
            "bbox": pl.List(pl.Float64),
            "area": pl.Float64,
            "iscrowd": pl.Int32,
        }
    )
    df = pl.read_json(path, schema={"annotations": pl.List(ann)})
    return df.select(pl.col("annotations").explode()).unnest("annotations").height


def m_pycocotools(path, out):
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO(path)
    return len(c.anns)


def m_pandas_df(path, out):
    import json

    import pandas as pd

    with open(path, "rb") as f:
        d = json.load(f)
    return len(pd.DataFrame(d["annotations"]))


def m_polars_df(path, out):
    import json

    import polars as pl

    with open(path, "rb") as f:
        d = json.load(f)
    # pl.DataFrame(d["annotations"]) without a schema fails: "segmentation" is
    # list[list[f64]] for polygons and a struct for RLE (no common supertype).
    schema = {
        "id": pl.Int64,
        "image_id": pl.Int64,
        "category_id": pl.Int32,
        "bbox": pl.List(pl.Float64),
        "area": pl.Float64,
        "iscrowd": pl.Int32,
    }
    return pl.from_dicts(d["annotations"], schema=schema).height


def m_naive_yolo(path, out):
    import orjson

    out = out or "yolo_out"
    d = orjson.loads(_read(path))
    cat_index = {c["id"]: k for k, c in enumerate(sorted(d["categories"], key=lambda c: c["id"]))}
    by_image = {}
    for a in d["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    os.makedirs(out, exist_ok=True)
    n = 0
    for im in d["images"]:
        w, h = im["width"], im["height"]
        lines = []
        for a in by_image.get(im["id"], ()):
            x, y, bw, bh = a["bbox"]
            lines.append(
                "%d %.6f %.6f %.6f %.6f\n"
                % (cat_index[a["category_id"]], (x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h)
            )
            n += 1
        stem = os.path.splitext(os.path.basename(im["file_name"]))[0]
        with open(os.path.join(out, stem + ".txt"), "w") as f:
            f.writelines(lines)
    return n


def _encord_objects(row) -> int:
    return sum(len(u.get("labels", {}).get("objects", [])) for u in row["data_units"].values())


def m_encord_ijson(path, out):
    """An Encord label export (a root array of label rows), row by row with ijson."""
    import ijson

    assert ijson.backend == "yajl2_c", ijson.backend
    with open(path, "rb") as f:
        return sum(_encord_objects(row) for row in ijson.items(f, "item", use_float=True))


def m_encord_orjson(path, out):
    """The same export loaded whole with orjson: the speed ceiling, memory unbounded."""
    import orjson

    return sum(_encord_objects(row) for row in orjson.loads(_read(path)))


MODES = {name[2:]: fn for name, fn in globals().items() if name.startswith("m_")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("file")
    p.add_argument("--out", default=None, help="output path for duckdb_parquet / naive_yolo")
    p.add_argument("--no-gc", action="store_true", help="disable the cyclic garbage collector")
    args = p.parse_args(argv)
    if args.no_gc:
        gc.disable()
    t0 = time.perf_counter()
    n = MODES[args.mode](args.file, args.out)
    print(
        "mode=%s%s annotations=%d inner_s=%.3f"
        % (args.mode, " (no gc)" if args.no_gc else "", n, time.perf_counter() - t0)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
