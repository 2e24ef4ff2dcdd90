"""Helpers for the tests of the mask formats: run a conversion and load what it staged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines import masks
from pipelines.runner import Report, convert

TABLES = ("items", "annotations", "points", "attributes", "rejects")


def tables(out: Path) -> dict[str, list[dict]]:
    def load(name: str) -> list[dict]:
        files = sorted((out / name).rglob("*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []

    return {name: load(name) for name in TABLES}


def read(src: Path | str, out: Path, **kw: Any) -> dict[str, list[dict]]:
    """`src` staged as Parquet into `out`; the run must succeed."""
    report = convert([str(src)], "parquet", str(out), workers=kw.pop("workers", 1), **kw)
    assert report.ok, report.failures
    return tables(out)


def write(src: Path | str, fmt: str, out: Path, **kw: Any) -> Report:
    report = convert([str(src)], fmt, str(out), workers=kw.pop("workers", 1), **kw)
    assert report.ok, report.failures
    return report


def by_id(rows: list[dict], key: str = "ann_id") -> dict[str, dict]:
    return {r[key]: r for r in rows}


def pixels(ann: dict) -> list[list[int]]:
    return masks.decode(ann["mask"], ann["mask_h"], ann["mask_w"]).tolist()


def attrs(t: dict, owner: str) -> dict[str, Any]:
    return {
        a["key"]: a["value"] if a["value_type"] == "string" else json.loads(a["value"])
        for a in t["attributes"]
        if a["owner_id"] == owner
    }


def png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
