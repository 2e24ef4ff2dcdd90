"""Helpers for the tests of the mask formats: runs that must succeed, attribute values,
and PNGs saved and loaded (rows to assert on come from tests/rows.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines import masks
from pipelines.runner import Report, convert


def write(src: Path | str, fmt: str, out: Path, **kw: Any) -> Report:
    report = convert([str(src)], fmt, str(out), workers=kw.pop("workers", 1), **kw)
    assert report.ok, report.failures
    return report


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
