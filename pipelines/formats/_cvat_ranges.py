"""A large CVAT for images XML file read as ranges of its `<image>` elements, a task each.

Planning scans the file's bytes once (no XML parser): where top-level `<image>`
elements start, how many lines come before each, and whether splitting is safe. A
task then parses the document's head (all before the first image: `<version>`,
`<meta>`), its own images and the root's end tag as one document (`Spliced`); only
the first range records the head's dataset and label attributes, and line numbers
are the file's.

Two images that want the same item id are numbered by the reader (`unique_id`: the
second `#2`), which needs the ids before them: where only images of the same name
(and subset) can clash, a second scan counts, for each range, the earlier images of
each name it repeats (`Range.repeats`), and the range's reader takes those as given.

Read whole instead, as one task: video (tracks, interpolation mode), a document with
a comment, CDATA, a processing instruction or a declaration after its head (an
`<image` there may not be an element), and a file where images could clash other
than by the same name: an image without a subset named as another's "subset/name"
or name (the document's subset is not known to the scan), a `#` in a name or subset
(a name that a number given to another could spell), names spelt with entity
references, line breaks or a quote of the other kind (the scan compares them as
written), or repeated names in a document in another encoding than UTF-8.
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import itertools
import re
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

from pipelines import xmlsafe
from pipelines.errors import ParseError
from pipelines.grouping import Earlier
from pipelines.jsonframe import task_groups
from pipelines.storage import reach

SPLIT_BYTES = 32 << 20
"""A file larger than this is read in ranges when more than one worker runs."""
ALWAYS_SPLIT_BYTES = 256 << 20
"""A file larger than this is read in ranges by one worker too: a whole file's reader
keeps every item id it gave (to number repeats), which grows with the file (736 MB:
~60 MB), and a range's reader only its own. The scan costs ~4% of the read."""
MAX_IMAGES = 4_000_000
"""Past this many images (a file of ~7 GB) the file is read whole: the scan keeps
32 bytes an image to tell whether two could want the same item id."""
SPAN_BYTES = 1 << 20
"""Ranges are cut at the first image past every this many bytes, then grouped into tasks."""
_BLOCK = 8 << 20
_MAX_TAG = 64 << 10
"""An `<image>` start tag cut by a block's end is completed from the next block when it
starts this close to the end; a longer one makes the file read whole."""
_MAX_HEAD = 16 << 20
"""No image in this many bytes: the file is read whole."""
_GAP = 256
"""White space looked through between two images (more: the file is read whole)."""

_NOT_SPLIT = re.compile(rb"<[!?]|<track")
"""After the head: a comment, CDATA, a declaration or a processing instruction (an `<image`
in it is no element), or a track (video)."""
_IMAGE = re.compile(rb"<image((?:\s+[^\s=/>]+\s*=\s*(?:\"[^\"<]*\"|'[^'<]*'))*)\s*/?>")
_KEYS = re.compile(rb"\s(name|subset|id)\s*=\s*[\"']([^\"']*)[\"']")
"""The attributes an item id is made of (a value with a quote of the other kind in it
is cut short: the ids are then compared shorter, which can only find more clashes)."""
_SPELT = re.compile(rb"[&\t\n\r]")
"""Entity references and line breaks, which the parser rewrites in attribute values."""
_VIDEO = re.compile(rb"<mode>\s*interpolation\s*</mode>")
_OTHER_ENCODING = re.compile(rb"""\s*<\?xml[^>]*encoding\s*=\s*["'](?!utf-?8["'])""", re.I)
_NOT_COUNTED = re.compile(rb"[#\"']")
_EXACT_KEYS = re.compile(rb"""\s(name|subset|id)\s*=\s*(?:"([^"]*)"|'([^']*)')""")


@dataclass(frozen=True)
class Range:
    """Bytes [start, end) of the file: whole `<image>` elements."""

    start: int
    end: int
    head: int
    """Where the first image starts: bytes [0, head) are the document's head."""
    head_lines: int
    """Line breaks in the head."""
    lines: int
    """Line breaks before `start`."""
    repeats: tuple[tuple[str, str, int], ...] = ()
    """(subset, name, images before the range with them) for each name in the range
    that an earlier image has: the reader takes those ids as given."""


def image_ranges(f: IO[bytes], workers: int, seek_costs: bool = False) -> list[Range] | None:
    """The file's images in ranges for `workers`, or None when it is to be read whole.
    `seek_costs`: `f` is a compressed member, where a task reaches its range by
    decompressing all before it (`jsonframe.task_groups`)."""
    scanned = _scan(f)
    if scanned is None or len(scanned[0]) < 3:
        return None
    starts, names = scanned
    head, head_lines = starts[0]
    spans = list(itertools.pairwise(starts))  # the last start is the root's end
    groups = task_groups(spans, workers, lambda s: s[1][0] - s[0][0], seek_costs)
    if len(groups) < 2:
        return None
    ranges = [Range(g[0][0][0], g[-1][1][0], head, head_lines, g[0][0][1]) for g in groups]
    if names.unique:
        return ranges
    repeats = _repeats(f, ranges, names)
    if repeats is None:
        return None
    return [dataclasses.replace(r, repeats=given) for r, given in zip(ranges, repeats, strict=True)]


def _scan(f: IO[bytes]) -> tuple[list[tuple[int, int]], _Names] | None:
    """(offset, line breaks before it) of the first image, of the first image past every
    `SPAN_BYTES`, and of the root's end tag, and the images' names; None when the file
    must be read whole."""
    names = _Names()
    found: list[tuple[int, int]] = []
    buf, base, lines = b"", 0, 0  # `lines`: line breaks before `base`
    tail = b""  # the last `_GAP` bytes before `buf`
    ends = (0, False)  # where the last image's start tag ends, and whether it closes it
    next_cut = 0
    while True:
        block = f.read(_BLOCK)
        buf += block
        start = 0  # where this round's scan of `buf` starts
        if not found:  # the head: all before the first image, whole elements, not video
            first = _IMAGE.search(buf)
            if first is None:
                if not block or len(buf) > _MAX_HEAD:
                    return None
                continue
            start = first.start()
            if not _complete_head(buf[:start]):
                return None
        root_end = buf.find(b"</annotations", start)
        limit = root_end if root_end >= 0 else len(buf) - (_MAX_TAG if block else 0)
        images, scanned = 0, start
        counted, breaks = 0, lines  # line breaks before `counted`
        for tag in _IMAGE.finditer(buf, start):
            at = tag.start()
            if at >= limit:
                break
            if found and not _after_an_image(_before(tail, buf, at), base + at, ends):
                return None
            images += 1
            ends = base + tag.end(), tag.group(0).endswith(b"/>")
            if not names.add(tag.group(1)):
                return None
            if base + at >= next_cut:
                breaks += buf.count(b"\n", counted, at)
                counted = at
                found.append((base + at, breaks))
                next_cut = base + at + SPAN_BYTES
            scanned = tag.end()
        keep = max(scanned, limit)
        # Every `<image` passed was an image read; nothing after the head that could
        # hide one (a marker cut by `keep` is looked at from both sides).
        if buf.count(b"<image", start, keep) != images or _NOT_SPLIT.search(buf, start, keep + 5):
            return None
        if not found:  # the first image starts too near the block's end: read on
            continue
        if root_end >= 0:
            if not _after_an_image(_before(tail, buf, root_end), base + root_end, ends):
                return None  # something at the top level after the last image
            found.append((base + root_end, breaks + buf.count(b"\n", counted, root_end)))
            return (found, names) if names.countable else None
        if not block:
            return None  # no end tag: the parser will say what is wrong
        lines = breaks + buf.count(b"\n", counted, keep)  # the cuts' counts carried on
        base += keep
        tail = buf[max(0, keep - _GAP) : keep]
        buf = buf[keep:]


def _before(tail: bytes, buf: bytes, at: int) -> bytes:
    """The `_GAP` bytes before `at` in `buf`, `tail` being those before `buf`."""
    return buf[at - _GAP : at] if at >= _GAP else (tail + buf[:at])[-_GAP:]


def _after_an_image(window: bytes, at: int, ends: tuple[int, bool]) -> bool:
    """Whether what starts at `at` (an image, or the root's end tag; `window`: the
    `_GAP` bytes before it) comes right after the image before, with only white space
    between: after its `</image>`, or after its start tag if that closed it. Anything
    else at the top level (a video frame's tag) is not a range's to read."""
    kept = window.rstrip()
    if not kept:  # nothing but white space as far as looked
        return False
    if kept.endswith(b"</image>"):
        return True
    end, closed = ends
    return closed and at - (len(window) - len(kept)) == end


def _complete_head(head: bytes) -> bool:
    """Whether the bytes before the first image are the document's start and whole
    elements (`<version>`, `<meta>`), and not video's."""
    if _VIDEO.search(head):
        return False
    try:
        xmlsafe.parse(io.BytesIO(head + b"</annotations>"), "")
    except ParseError:
        return False
    return True


class _Names:
    """The item ids images would want, as written: whether any two could be the same.

    An image's id is "<subset>/<name>", its subset its own `subset` attribute or the
    document's (unknown here): two images without one clash on the same name, and one
    without a subset clashes with one named `n` in subset `s` if its name is `s/n` or
    `n` (the document's subset may be `s`). Kept as 64-bit hashes, 32 bytes an image
    (a collision only makes the file read whole), for at most `MAX_IMAGES`."""

    def __init__(self) -> None:
        self.plain = array("q")  # names of images without a subset
        self.pairs = array("q")  # (subset, name) of the others
        self.joined = array("q")  # their "subset/name"
        self.names = array("q")  # their names alone
        self.readable = True  # no name the scan cannot compare as written

    def add(self, attributes: bytes) -> bool:
        """Record an image's start tag's attributes; False when the file is to be read
        whole whatever follows."""
        if _SPELT.search(attributes) or len(self.plain) + len(self.pairs) >= MAX_IMAGES:
            self.readable = False
            return False
        found = dict(_KEYS.findall(attributes))
        name = found.get(b"name") or found.get(b"id") or b""
        subset = found.get(b"subset")
        if subset:
            self.pairs.append(hash((subset, name)))
            self.joined.append(hash(subset + b"/" + name))
            self.names.append(hash(name))
        else:
            self.plain.append(hash(name))
        return True

    @property
    def countable(self) -> bool:
        """Whether two images can want the same id only by the same name and subset."""
        plain = np.frombuffer(self.plain, np.int64)
        return (
            self.readable
            and not np.intersect1d(plain, np.frombuffer(self.joined, np.int64)).size
            and not np.intersect1d(plain, np.frombuffer(self.names, np.int64)).size
        )

    @property
    def unique(self) -> bool:
        plain, pairs = np.frombuffer(self.plain, np.int64), np.frombuffer(self.pairs, np.int64)
        return (
            self.countable
            and len(np.unique(plain)) == len(plain)
            and len(np.unique(pairs)) == len(pairs)
        )

    def repeated(self) -> set[int]:
        """The hashes given to more than one image."""
        out: set[int] = set()
        for hashes in (self.plain, self.pairs):
            values, counts = np.unique(np.frombuffer(hashes, np.int64), return_counts=True)
            out.update(values[counts > 1].tolist())
        return out


def _repeats(f: IO[bytes], ranges: list[Range], names: _Names) -> list[tuple] | None:
    """For each range, (subset, name, count) of the names it shares with images
    before it, and how many of those came before it: a second scan of the images'
    start tags, keeping the names the first scan found more than once. None when the
    counts could not give the reader's numbering: a `#` in a name or a subset (another
    image's number could spell it), a quote in one, a document or a name in another
    encoding than UTF-8."""
    f.seek(0)
    if _OTHER_ENCODING.match(f.read(min(ranges[0].head, 1024))):
        return None  # the names' bytes are not the reader's text
    repeated = names.repeated()
    starts = [r.start for r in ranges]
    earlier = Earlier(len(ranges))
    for at, attributes in _image_tags(f, ranges[0].start, ranges[-1].end):
        found = {key: a or b for key, a, b in _EXACT_KEYS.findall(attributes)}
        name = found.get(b"name") or found.get(b"id") or b""
        subset = found.get(b"subset") or b""
        if _NOT_COUNTED.search(name + subset):
            return None
        if (hash((subset, name)) if subset else hash(name)) not in repeated:
            continue
        earlier.add(bisect.bisect_right(starts, at) - 1, (subset, name))
    try:
        return [tuple((s.decode(), n.decode(), c) for (s, n), c in g) for g in earlier.before()]
    except UnicodeDecodeError:
        return None


def _image_tags(f: IO[bytes], start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, attributes) of every `<image>` start tag in bytes [start, end), which
    `_scan` found to hold images and white space alone."""
    f.seek(start)
    base, buf = start, b""
    while base < end:
        block = f.read(_BLOCK)
        buf += block
        limit = min(len(buf) - (_MAX_TAG if block else 0), end - base)
        scanned = 0
        for tag in _IMAGE.finditer(buf, 0, min(len(buf), end - base)):
            if tag.start() >= limit:
                break
            yield base + tag.start(), tag.group(1)
            scanned = tag.end()
        if not block:
            return
        keep = max(scanned, limit)
        base += keep
        buf = buf[keep:]


class Spliced(io.RawIOBase):
    """The bytes of a range's document: the file's head, the range, the root's end tag."""

    def __init__(self, f: IO[bytes], part: Range) -> None:
        self._pieces: Iterator[bytes] = self._read(f, part)
        self._left = memoryview(b"")

    @staticmethod
    def _read(f: IO[bytes], part: Range) -> Iterator[bytes]:
        f.seek(0)
        yield f.read(part.head)
        reach(f, part.start)
        left = part.end - part.start
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
        yield b"</annotations>\n"

    def readable(self) -> bool:
        return True

    def readinto(self, out: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._left:
            chunk = next(self._pieces, None)
            if chunk is None:
                return 0
            self._left = memoryview(chunk)
        n = min(len(out), len(self._left))
        out[:n] = self._left[:n]
        self._left = self._left[n:]  # a view: the chunk is not copied again
        return n
