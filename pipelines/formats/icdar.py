"""ICDAR 13/15 (CVAT's ICDAR Recognition, Localization and Segmentation 1.0).

    word_recognition/<subset>/gt.txt              `word_1.png, "PROPER"` a line
    text_localization/<subset>/gt_<image>.txt     `x1,y1,x2,y2,x3,y3,x4,y4,"text"` (a
                                                  quadrilateral) or `xmin ymin xmax ymax
                                                  "text"` (a box) a line
    text_segmentation/<subset>/<image>_GT.txt     `R G B cx cy left top right bottom "c"`
                                                  a character; a blank line ends a word
    text_segmentation/<subset>/<image>_GT.bmp     each character drawn in its colour on
                                                  white
    <subset>/images/<image>                       the images

The three layouts are told apart by their file names, wherever they sit. An item per
image (`item_id` = the annotation file's folder / image name without extension),
sized by its image header (or the segmentation bitmap). Recognition: a `caption`
per transcription. Localization: a `polygon` or `bbox` labelled "icdar" with the
transcription in `text` (unquoted transcriptions are read too; "###", ICDAR's
"do not care", is kept as it is). Segmentation: a `mask` labelled "icdar" per
character (its pixels in the bitmap), `text` the character, `group_id` its word, and
attributes `index`, `color`, `center`, `box` as the file has them; a character with
no pixels is a `bbox` from its line. See `_icdar_write` for the writer.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipelines.builder import BatchBuilder, is_finite
from pipelines.formats import _class_table as classes
from pipelines.formats import _icdar_write
from pipelines.formats import _label_masks as lm
from pipelines.formats import _per_image as per_image
from pipelines.formats.base import Detection, Format, ReadOptions, ReadTask
from pipelines.schema import Batch
from pipelines.storage import Source

NAME = "icdar"
LABEL = "icdar"
SOURCE = "icdar"
IMAGES = "images"
DEFAULT_EXT = ".png"
WHITE: classes.RGB = (255, 255, 255)
RECOGNITION = "word_recognition"
LOCALIZATION = "text_localization"
SEGMENTATION = "text_segmentation"
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def kind_of(path: str) -> str | None:
    """Which ICDAR task a file belongs to, by its name."""
    name = posixpath.basename(path)
    if name == "gt.txt":
        return RECOGNITION
    if name.endswith("_GT.txt"):
        return SEGMENTATION
    if name.startswith("gt_") and name.endswith(".txt"):
        return LOCALIZATION
    return None


# -- line parsing ------------------------------------------------------------------------


def unquote(text: str) -> str:
    """A double-quoted field's content with `\\"` and `\\\\` unescaped; other text as is."""
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def parse_recognition(line: str) -> tuple[str, str | None]:
    """(image, transcription or None) of a gt.txt line; ValueError without a comma."""
    image, sep, rest = line.partition(",")
    if not sep or not image.strip():
        raise ValueError('expected `image, "transcription"`')
    rest = rest.strip()
    return image.strip(), unquote(rest) if rest else None


def parse_localization(line: str) -> tuple[list[float], str | None]:
    """(coordinates, transcription) of a localization line; ValueError if malformed.

    Coordinates are the leading numbers: 8 or more (an even count) make a polygon,
    4 to 7 a box (xmin, ymin, xmax, ymax) whose extra numbers belong to the text.
    """
    quote = line.find('"')
    head, quoted = (line[:quote], line[quote:].strip()) if quote >= 0 else (line, None)
    if quoted is not None and (len(quoted) < 2 or not quoted.endswith('"')):
        raise ValueError("unbalanced double quotes")
    sep = "," if "," in head else None
    tokens = [t.strip() for t in head.strip().strip(",").split(sep)] if head.strip() else []
    n = 0
    while n < len(tokens) and _NUMBER.match(tokens[n]):
        n += 1
    if n >= 8:
        n -= n % 2
    elif n >= 4:
        n = 4
    else:
        raise ValueError(f"expected at least 4 coordinates, got {n}")
    coords = [float(t) for t in tokens[:n]]
    if not is_finite(*coords):
        raise ValueError("coordinates must be finite numbers")
    rest = [t for t in tokens[n:] if t]
    if quoted is not None:
        if rest:
            raise ValueError(f"unexpected fields before the transcription: {rest}")
        return coords, unquote(quoted)
    text = ",".join(tokens[n:]) if sep else " ".join(rest)
    return coords, text.strip() or None


def parse_character(line: str) -> tuple[classes.RGB, str, str, str]:
    """(colour, centre, box, character) of a segmentation line; ValueError if malformed.

    A leading `#` marks a space character (CVAT writes `#R G B ... " "`).
    """
    body = line.strip().removeprefix("#")
    fields = body.split(maxsplit=9)
    if len(fields) != 10:
        raise ValueError('expected `R G B cx cy left top right bottom "c"`')
    try:
        rgb = tuple(int(v) for v in fields[:3])
    except ValueError as exc:
        raise ValueError(f"colour {fields[:3]} is not three integers") from exc
    if not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"colour {rgb} is not 0..255")
    return rgb, " ".join(fields[3:5]), " ".join(fields[5:9]), unquote(fields[9])  # type: ignore[return-value]


# -- detection and planning ---------------------------------------------------------------


def detect(source: Source) -> Detection | None:
    files = source.files if source.is_dir else ()
    kinds: dict[str, str] = {}
    for f in files:
        kind = kind_of(f)
        if kind and kind not in kinds:
            kinds[kind] = f
    if RECOGNITION in kinds:
        head = source.head(kinds[RECOGNITION], 4096).decode("utf-8-sig", "replace")
        first = next((line for line in head.splitlines() if line.strip()), "")
        try:
            image, _ = parse_recognition(first)
        except ValueError:
            kinds.pop(RECOGNITION)
        else:
            if not per_image.is_image(image):
                kinds.pop(RECOGNITION)
    if SEGMENTATION in kinds:
        bmp = kinds[SEGMENTATION][: -len(".txt")] + ".bmp"
        if bmp not in files:
            kinds.pop(SEGMENTATION)
    if not kinds:
        return None
    return Detection(0.85, f"ICDAR {', '.join(sorted(kinds))} files ({next(iter(kinds.values()))})")


def _images(source: Source, folder: str) -> dict[str, str]:
    """Images of an annotation folder's images/ by name without extension."""
    prefix = posixpath.join(folder, IMAGES) + "/"
    return {
        per_image.strip_ext(f[len(prefix) :]): f
        for f in source.files
        if f.startswith(prefix) and per_image.is_image(f)
    }


def plan_read(source: Source, options: ReadOptions) -> list[ReadTask]:
    groups: dict[tuple[str, str], list[str]] = {}
    for f in source.files:
        kind = kind_of(f)
        if kind:
            groups.setdefault((kind, posixpath.dirname(f)), []).append(f)
    tasks = []
    for (kind, folder), files in sorted(groups.items()):
        subset = posixpath.basename(folder) or None
        if kind == RECOGNITION:
            for member in files:
                entries = _recognition_entries(source, member)
                for group in per_image.chunks(entries, options):
                    ctx = {"kind": kind, "folder": folder, "entries": group}
                    tasks.append(
                        ReadTask(NAME, source, member, subset, context=ctx, options=options)
                    )
            continue
        for group in per_image.chunks(sorted(files), options):
            ctx = {"kind": kind, "folder": folder, "entries": group}
            tasks.append(ReadTask(NAME, source, subset=subset, context=ctx, options=options))
    return tasks


def _recognition_entries(source: Source, member: str) -> list[tuple[str, list]]:
    """gt.txt lines grouped by image, in order of first appearance: (image, [(line, text)])."""
    by_image: dict[str, list] = {}
    for n, line in enumerate(per_image.read_text(source, member).splitlines(), 1):
        if line.strip():
            image, sep, _ = line.partition(",")
            by_image.setdefault(image.strip() if sep else "", []).append((n, line))
    return list(by_image.items())


# -- reading -----------------------------------------------------------------------------


def read(task: ReadTask) -> Iterator[Batch]:
    b = task.builder()
    images = _images(task.source, task.context["folder"])
    kind = task.context["kind"]
    for entry in task.context["entries"]:
        if kind == RECOGNITION:
            _recognition(b, task, images, *entry)
        elif kind == LOCALIZATION:
            _localization(b, task, images, entry)
        else:
            _segmentation(b, task, images, entry)
        if b.full():
            yield b.flush()
    yield b.flush()


def _item(
    b: BatchBuilder,
    task: ReadTask,
    stem: str,
    image: str | None,
    name: str,
    size: tuple[int, int] | None = None,
) -> str:
    folder = task.context["folder"]
    item_id = posixpath.join(folder, stem) if folder else stem
    if size is None:
        size, _ = per_image.find_size(task.source, image, [name], task.options)
    b.item(
        item_id=item_id,
        native_id=stem,
        file_name=name,
        media_uri=task.source.uri(image) if image else None,
        media_type="image",
        width=size[0] if size else None,
        height=size[1] if size else None,
        subset=task.subset,
    )
    return item_id


def _image_name(images: dict[str, str], folder: str, stem: str) -> tuple[str | None, str]:
    image = images.get(stem)
    prefix = posixpath.join(folder, IMAGES) + "/"
    return image, image[len(prefix) :] if image else stem + DEFAULT_EXT


def _recognition(
    b: BatchBuilder, task: ReadTask, images: dict[str, str], name: str, lines: list
) -> None:
    where = f"{task.member} line"
    if not name:
        for n, line in lines:
            reason = 'expected `image, "transcription"`'
            b.reject(f"{where} {n}", reason, record=line, record_kind="items")
        return
    image = images.get(per_image.strip_ext(name))
    item_id = _item(b, task, per_image.strip_ext(name), image, name)
    for n, line in lines:
        _, text = parse_recognition(line)
        if text is None:
            continue
        b.annotation(
            ann_id=f"{item_id}/{n}", item_id=item_id, native_id=str(n), kind="caption", text=text
        )


def _localization(b: BatchBuilder, task: ReadTask, images: dict[str, str], member: str) -> None:
    folder = task.context["folder"]
    stem = posixpath.basename(member)[len("gt_") : -len(".txt")]
    image, name = _image_name(images, folder, stem)
    item_id = _item(b, task, stem, image, name)
    for n, line in enumerate(per_image.read_text(task.source, member).splitlines(), 1):
        if not line.strip():
            continue
        try:
            coords, text = parse_localization(line)
        except ValueError as exc:
            b.reject(f"{member} line {n}", str(exc), record=line, record_kind="annotations")
            continue
        ann_id = f"{item_id}/{n}"
        row: dict[str, Any] = {"ann_id": ann_id, "item_id": item_id, "native_id": str(n)}
        row |= {"label": LABEL, "units": "px", "text": text}
        if len(coords) == 4:
            x0, y0, x1, y1 = coords
            b.annotation(kind="bbox", bbox_x=x0, bbox_y=y0, bbox_w=x1 - x0, bbox_h=y1 - y0, **row)
        else:
            b.annotation(kind="polygon", **row)
            b.points(ann_id, item_id, coords)


def _segmentation(b: BatchBuilder, task: ReadTask, images: dict[str, str], member: str) -> None:
    src, folder = task.source, task.context["folder"]
    stem = posixpath.basename(member)[: -len("_GT.txt")]
    bmp_member = member[: -len(".txt")] + ".bmp"
    bitmap: Any = None
    if bmp_member in src.files:
        bitmap = lm.load(src, bmp_member)
        if isinstance(bitmap, str):
            b.reject(bmp_member, bitmap, record_kind="items", native_id=stem)
            return
        if bitmap.ndim == 2:
            bitmap = lm.paint(bitmap, [(v, v, v) for v in range(256)])
    image, name = _image_name(images, folder, stem)
    size = (bitmap.shape[1], bitmap.shape[0]) if bitmap is not None else None
    item_id = _item(b, task, stem, image, name, size)
    codes = lm.color_codes(bitmap) if bitmap is not None else None
    seen: dict[classes.RGB, int] = {WHITE: 0}
    word, in_word, index = 1, False, 0
    for n, line in enumerate(per_image.read_text(src, member).splitlines(), 1):
        if not line.strip():
            word += in_word
            in_word = False
            continue
        where = f"{member} line {n}"
        try:
            color, center, box, char = parse_character(line)
        except ValueError as exc:
            b.reject(where, str(exc), record=line, record_kind="annotations")
            continue
        if color in seen:
            owner = f"line {seen[color]}" if seen[color] else "the white background"
            reason = f"colour {color} is already taken by {owner}"
            b.reject(where, reason, record=line, record_kind="annotations")
            continue
        seen[color] = n
        in_word = True
        ann_id = f"{item_id}/{n}"
        row: dict[str, Any] = {"ann_id": ann_id, "item_id": item_id, "native_id": str(n)}
        row |= {"label": LABEL, "text": char, "group_id": f"{item_id}/word/{word}"}
        m = codes == ((color[0] << 16) | (color[1] << 8) | color[2]) if codes is not None else None
        if m is not None and m.any():
            b.annotation(**row, **lm.mask_fields(m))
        else:
            try:
                left, top, right, bottom = (float(v) for v in box.split())
            except ValueError:
                reason = f"no pixels of colour {color} in {bmp_member} and no box"
                b.reject(where, reason, record=line, record_kind="annotations")
                continue
            row |= {"bbox_x": left, "bbox_y": top, "bbox_w": right - left, "bbox_h": bottom - top}
            b.annotation(kind="bbox", units="px", **row)
        values = {"index": index, "color": " ".join(str(v) for v in color), "center": center}
        b.attributes(ann_id, item_id, values | {"box": box}, source=SOURCE)
        index += 1
    if codes is not None:
        known = {(c[0] << 16) | (c[1] << 8) | c[2] for c in seen}
        values_, counts = np.unique(codes, return_counts=True)
        unknown = {
            lm.code_color(code): count
            for code, count in zip(values_.tolist(), counts.tolist(), strict=True)
            if code not in known
        }
        lm.reject_colors(b, bmp_member, unknown)


FORMAT = Format(
    name=NAME,
    description="ICDAR 13/15: word recognition, text localization and text segmentation",
    detect=detect,
    plan_read=plan_read,
    read=read,
    plan_write=_icdar_write.plan_write,
    write=_icdar_write.write,
)
