"""What the ImageNet, Market-1501, LFW, VGGFace2 and WIDER Face tests share: a run to
Parquet read back as rows, attribute values by key, and tiny images made on the spot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.builder import parse_attribute
from pipelines.formats.base import WriteOptions
from pipelines.runner import Report, convert

TABLES = ("items", "annotations", "points", "attributes", "rejects")


def tables(out: Path) -> dict[str, list[dict[str, Any]]]:
    def load(name: str) -> list[dict[str, Any]]:
        files = sorted((out / name).rglob("*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []

    return {name: load(name) for name in TABLES}


def read(src: Path | str, out: Path, **kw: Any) -> dict[str, list[dict[str, Any]]]:
    """`src` converted to Parquet (one worker) and read back as rows."""
    report = convert([str(src)], "parquet", str(out), workers=1, **kw)
    assert report.ok, report.failures
    return tables(out)


def write(src: Path | str, fmt: str, out: Path, **extra: Any) -> Report:
    report = convert([str(src)], fmt, str(out), workers=1, write_options=WriteOptions(extra=extra))
    assert report.ok, report.failures
    return report


def attrs(t: dict[str, list[dict[str, Any]]], owner: str) -> dict[str, Any]:
    """An owner's attributes as their original values."""
    return {
        a["key"]: parse_attribute(a["value"], a["value_type"])
        for a in t["attributes"]
        if a["owner_id"] == owner
    }


def by_id(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {r[key]: r for r in rows}


def image(path: Path, size: tuple[int, int] = (4, 3), fmt: str = "PNG") -> Path:
    """A tiny image (PNG data whatever the suffix, as real exports have)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path, format=fmt)
    return path
