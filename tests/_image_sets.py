"""What the ImageNet, Market-1501, LFW, VGGFace2 and WIDER Face tests share: a writer
run with options, attribute values by key, and tiny images made on the spot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.builder import parse_attribute
from pipelines.formats.base import WriteOptions
from pipelines.runner import Report, convert


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


def image(path: Path, size: tuple[int, int] = (4, 3), fmt: str = "PNG") -> Path:
    """A tiny image (PNG data whatever the suffix, as real exports have)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size).save(path, format=fmt)
    return path
