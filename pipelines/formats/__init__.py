"""The one registry of formats: name → module, imported only when used.

A module whose optional dependency is missing hides its own format instead of
breaking the program (`labelflow formats` shows why).
"""

from __future__ import annotations

import importlib

from pipelines.errors import FormatError
from pipelines.formats.base import Detection, Format
from pipelines.storage import Source

_MODULES: dict[str, str] = {
    "parquet": "pipelines.formats.parquet",
    "coco": "pipelines.formats.coco",
    "encord": "pipelines.formats.encord",
    "cvat": "pipelines.formats.cvat",
    "datumaro": "pipelines.formats.datumaro",
    "yolo": "pipelines.formats.yolo",
    "ultralytics": "pipelines.formats.ultralytics",
    "voc": "pipelines.formats.voc",
    "labelme": "pipelines.formats.labelme",
    "labelme_xml": "pipelines.formats.labelme_xml",
    "mot": "pipelines.formats.mot",
    "mots": "pipelines.formats.mots",
    "aimmo": "pipelines.formats.aimmo",
    "itag": "pipelines.formats.itag",
    "imagenet": "pipelines.formats.imagenet",
    "market1501": "pipelines.formats.market1501",
    "lfw": "pipelines.formats.lfw",
    "vggface2": "pipelines.formats.vggface2",
    "widerface": "pipelines.formats.widerface",
    "camvid": "pipelines.formats.camvid",
    "cityscapes": "pipelines.formats.cityscapes",
    "kitti": "pipelines.formats.kitti",
    "segmentation_mask": "pipelines.formats.segmask",
    "icdar": "pipelines.formats.icdar",
    "open_images": "pipelines.formats.open_images",
}

_FILES: dict[str, tuple[str, ...]] = {
    "coco": (".json",),
    "encord": (".json",),
    "datumaro": (".json",),
    "labelme": (".json",),
    "aimmo": (".json",),
    "itag": ("",),  # any name: its lines say what it is
    "cvat": (".xml",),
    "voc": (".xml",),
    "labelme_xml": (".xml",),
    "yolo": ("obj.data",),
    "ultralytics": (".yaml", ".yml"),
    "mot": ("gt.txt",),
    "vggface2": (".csv",),
    "widerface": (".txt",),
}
"""How the name of a source that is one file ends, for each format that detects one;
the others detect folders alone. A file is asked only of these formats, so detecting
it imports no other format's module (25 modules: ~15 MB and 0.08 s of the command
line). A test checks that every detection of every fixture file passes this."""

_loaded: dict[str, Format] = {}
_broken: dict[str, str] = {}


def names() -> list[str]:
    return list(_MODULES)


def module(name: str) -> str:
    """The module that defines format `name` (e.g. for a process pool to preload)."""
    return _MODULES[name]


def get(name: str) -> Format:
    if name in _loaded:
        return _loaded[name]
    if name not in _MODULES:
        msg = f"unknown format {name!r}; known: {', '.join(_MODULES)}"
        raise FormatError(msg)
    try:
        fmt = importlib.import_module(_MODULES[name]).FORMAT
    except Exception as exc:  # a missing dependency or a broken module hides one format
        _broken[name] = f"{type(exc).__name__}: {exc}"
        msg = f"format {name!r} is unavailable: {exc}"
        raise FormatError(msg) from exc
    _loaded[name] = fmt
    return fmt


def available() -> dict[str, Format | str]:
    """Every registered format, or the reason it cannot be loaded."""
    out: dict[str, Format | str] = {}
    for name in _MODULES:
        try:
            out[name] = get(name)
        except FormatError:
            out[name] = _broken.get(name, "unavailable")
    return out


def detect(source: Source, *, until_certain: bool = False) -> list[tuple[str, Detection]]:
    """Every format that recognises `source`, most confident first. `until_certain`
    stops at the first certain one (confidence 1: none can rank above it, and ties
    keep the registry's order), without importing the modules of the formats after
    it: staging's Parquet is the first format asked, and the other 24 modules cost
    the command line ~15 MB and 0.08 s."""
    found = []
    for name in _MODULES:
        if not source.is_dir and not _may_name(name, source):
            continue
        try:
            fmt = get(name)
        except FormatError:
            continue
        hit = fmt.detect(source)
        if hit and hit.confidence > 0:
            found.append((name, hit))
            if until_certain and hit.confidence >= 1:
                break
    return sorted(found, key=lambda nh: -nh.__getitem__(1).confidence)


def _may_name(fmt: str, source: Source) -> bool:
    """Whether format `fmt` could recognise the single file `source` by its name."""
    return source.name.lower().endswith(_FILES.get(fmt, ()))


def resolve(source: Source, name: str | None) -> Format:
    """The named format, or the most confident detection for `source`."""
    if name and name != "auto":
        return get(name)
    found = detect(source, until_certain=True)
    if not found:
        msg = (
            f"{source.url}: no format recognises this source; pass --from (see `labelflow formats`)"
        )
        raise FormatError(msg)
    return get(found[0][0])
