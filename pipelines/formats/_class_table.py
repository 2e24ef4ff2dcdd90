"""The class table of label-mask formats: class number → (name, colour).

Readers keep a source's table as label attributes; writers compute one table per
dataset (`class_table`) and hand it to every write task, so all partitions number
and colour the classes alike. `label_colors.txt` is the table as a file (CamVid,
Cityscapes, KITTI).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from pipelines.builder import BatchBuilder
from pipelines.errors import ParseError
from pipelines.formats import _per_image as per_image
from pipelines.formats._voc_masks import colormap
from pipelines.formats.base import WriteOptions, WriteTask
from pipelines.staging import Staging

RGB = tuple[int, int, int]
BLACK: RGB = (0, 0, 0)
DRAWN = ("mask", "polygon", "bbox", "rotated_bbox", "ellipse")
"""Kinds a mask writer draws (polygons and boxes rasterized)."""


# -- label_colors.txt ------------------------------------------------------------


def parse_label_colors(text: str, uri: str) -> list[tuple[str, RGB | None]]:
    """`label_colors.txt`: `r g b name` or just `name` a line; line order is the class id.

    `#` lines and blank lines are skipped; a name may contain spaces.
    """
    out: list[tuple[str, RGB | None]] = []
    seen: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=3)
        color = None
        if len(parts) == 4 and all(p.lstrip("-").isdigit() for p in parts[:3]):
            rgb = tuple(int(p) for p in parts[:3])
            if not all(0 <= v <= 255 for v in rgb):
                raise ParseError(uri, f"line {n}", f"colour {parts[:3]} is not 0..255")
            color, name = rgb, parts[3]
        elif parts[0].lstrip("-").isdigit() and len(parts) >= 3:
            raise ParseError(uri, f"line {n}", "expected `r g b name` or `name`")
        else:
            name = line
        if name in seen:
            raise ParseError(uri, f"line {n}", f"label {name!r} is defined twice")
        seen.add(name)
        out.append((name, color))  # type: ignore[arg-type]
    return out


def label_colors_text(table: Sequence[tuple[str, RGB | None]]) -> str:
    return "".join(
        f"{' '.join(str(v) for v in color)} {name}\n" if color else f"{name}\n"
        for name, color in table
    )


def label_attributes(b: BatchBuilder, table: Sequence[tuple[str, RGB | None]], source: str) -> None:
    """The class table as label attributes (`index`, `color`): what `class_table` reads
    back, so a mask writer numbers and colours the classes as the source did."""
    for i, (name, color) in enumerate(table):
        values = {"index": i, "color": list(color) if color else None}
        b.attributes(f"label:{name}", None, values, owner_kind="label", source=source)


# -- label colours of a dataset ---------------------------------------------------------


def label_colors(staging: Staging) -> dict[str, RGB]:
    """label → colour as the sources gave it (label attribute `color`, any source)."""
    out: dict[str, RGB] = {}
    for owner, value in staging.con.execute(
        "SELECT owner_id, value FROM attributes WHERE owner_kind = 'label' AND key = 'color' "
        "ORDER BY filename, file_row_number"
    ).fetchall():
        label = owner.removeprefix("label:")
        try:
            rgb = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            continue
        if (
            label not in out
            and isinstance(rgb, list)
            and len(rgb) == 3
            and all(isinstance(v, int) and 0 <= v <= 255 for v in rgb)
        ):
            out[label] = tuple(rgb)  # type: ignore[assignment]
    return out


def voc_palette() -> tuple[RGB, ...]:
    """VOC's colour map: where these formats take colours for labels that have none."""
    return colormap()


def class_table(
    staging: Staging,
    *,
    defaults: Sequence[tuple[str, RGB | None]] = (),
    background: str = "background",
    limit: int = 255,
    distinct_colors: bool = False,
    kinds: Sequence[str] = DRAWN,
) -> list[tuple[str, RGB]]:
    """index → (name, colour) for a whole dataset; index 0 is the background.

    The labels are those of annotations of `kinds` (the ones a mask writer draws).

    Numeric `label_id`s (what these formats read) are kept when they fit, so a
    Cityscapes or KITTI source keeps its class ids; gaps take the default table's name
    for that index (or `class_<n>`). Otherwise, when every label is in the default
    table, the default numbering is used; else labels are numbered from 1 in order of
    first appearance. Colours: as the sources gave them, else the default table's,
    else the first unused colour of the VOC colour map. `distinct_colors` (for formats
    decoded by colour) gives a label whose colour is taken another one.
    """
    marks = ", ".join("?" for _ in kinds)
    first: dict[str, str | None] = {}
    for label, label_id in staging.con.execute(
        "SELECT label, label_id FROM annotations WHERE label IS NOT NULL "
        f"AND kind IN ({marks}) GROUP BY label, label_id "
        "ORDER BY min(filename), min(file_row_number)",
        list(kinds),
    ).fetchall():
        first.setdefault(label, label_id)
    given = label_colors(staging)
    default_names = [n for n, _ in defaults]
    default_color = {n: c for n, c in defaults if c is not None}
    names = _kept_ids(first, default_names, background, limit)
    if names is None:
        if first and all(n in default_names for n in first) and len(defaults) - 1 <= limit:
            names = list(default_names)
        else:
            bg = default_names[0] if default_names else background
            names = [bg] + [n for n in first if n != bg]
    colors: list[RGB | None] = []
    for i, name in enumerate(names):
        color = given.get(name) or default_color.get(name)
        if i == 0 and color is None:
            color = BLACK
        colors.append(color)
    used: set[RGB] = set()
    for i, color in enumerate(colors):
        if color is not None and distinct_colors and color in used:
            colors[i] = None
        if colors[i] is not None:
            used.add(colors[i])  # type: ignore[arg-type]
    free = (c for c in voc_palette()[1:] if c not in used)
    return [(name, color or next(free)) for name, color in zip(names, colors, strict=True)]


def _kept_ids(
    first: dict[str, str | None], default_names: list[str], background: str, limit: int
) -> list[str] | None:
    ids: dict[str, int] = {}
    for label, label_id in first.items():
        if label_id is None or not label_id.isdigit():
            return None
        ids[label] = int(label_id)
    if not ids or len(set(ids.values())) != len(ids):
        return None
    top = max(ids.values())
    if top > limit or top > max(2 * len(ids) + 16, len(default_names) - 1):
        return None
    by_id = {n: label for label, n in ids.items()}
    if 0 in by_id and by_id[0] not in (background, *default_names[:1]):
        return None  # index 0 is the background in every one of these formats
    taken = set(ids)
    names = []
    for i in range(top + 1):
        if i in by_id:
            names.append(by_id[i])
        elif i < len(default_names) and default_names[i] not in taken:
            names.append(default_names[i])
        elif i == 0:
            names.append(background)
        else:
            names.append(f"class_{i}")
    return names


# -- handing the table to write tasks --------------------------------------------


def plan_write(
    fmt: str,
    staging: Staging,
    options: WriteOptions,
    table: Sequence[tuple[str, RGB]],
    **extra: Any,
) -> list[WriteTask]:
    """Sharded write tasks that all carry the one class table (as JSON-safe lists)."""
    rows = [[name, list(color)] for name, color in table]
    return per_image.plan_sharded(fmt, staging, options, _table=rows, **extra)


def task_table(task: WriteTask) -> list[tuple[str, RGB]]:
    """The class table `plan_write` gave the task."""
    return [(name, tuple(color)) for name, color in task.options.extra["_table"]]


def class_numbers(table: Sequence[tuple[str, Any]]) -> dict[str, int]:
    """label → class number; index 0, the background, is not a label anything is drawn as."""
    return {name: i for i, (name, _) in enumerate(table) if i > 0}
