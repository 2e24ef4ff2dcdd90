"""What MOT 1.1 and MOTS PNG share: labels.txt, class ids, track numbers, output names.

Both formats number classes from 1 by their line in labels.txt, so readers
keep that number as `label_id` and writers reuse the staged `label_id`s when
they are small positive integers (a MOT or COCO source keeps its class ids);
otherwise labels are numbered 1..N in order of first appearance.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from typing import Any

from pipelines.formats import _per_image as per_image
from pipelines.staging import Staging
from pipelines.storage import Source

LABELS_FILE = "labels.txt"


def read_labels(source: Source, member: str) -> list[str]:
    """The class names of a labels.txt, one a line; class id = line number (from 1)."""
    text = per_image.read_text(source, member)
    return [line.strip() for line in text.splitlines() if line.strip()]


def class_ids(staging: Staging, limit: int | None = None) -> dict[str, int]:
    """label → class id for the whole dataset, so every partition writes the same numbers.

    `limit` is the largest id the target can encode (MOTS: 65 in a 16-bit PNG).
    """
    first: dict[str, str | None] = {}
    consistent = True
    for label, label_id in staging.labels():
        if label in first and first[label] != label_id:
            consistent = False
        first.setdefault(label, label_id)
    numbers = {}
    for label, label_id in first.items():
        if label_id is None or not label_id.isdigit() or int(label_id) < 1:
            consistent = False
            break
        numbers[label] = int(label_id)
    if consistent and numbers and len(set(numbers.values())) == len(numbers):
        top = max(numbers.values())
        if top <= 2 * len(numbers) + 16 and (limit is None or top <= limit):
            return numbers
    return {label: n for n, label in enumerate(first, 1)}


def labels_text(ids: dict[str, int]) -> str:
    """labels.txt for a class map; ids with no label get a `class_<n>` placeholder line."""
    names = {n: label for label, n in ids.items()}
    top = max(names, default=0)
    return "".join(f"{names.get(n, f'class_{n}')}\n" for n in range(1, top + 1))


class TrackNumbers:
    """Integer track ids for one output partition, so a track keeps its number across frames.

    Numeric ids in range are kept; the others get the lowest numbers no kept id uses. The
    partition's ids are known up front, so a later numeric id never meets its number taken.
    """

    def __init__(self, ids: Iterable[Any], lowest: int = 1, limit: int | None = None) -> None:
        self.lowest, self.limit = lowest, limit
        self._given: dict[str, int] = {}
        for t in ids:
            n = self._numeric(str(t))
            if n is not None:
                self._given[str(t)] = n
        self._used = set(self._given.values())
        self._next = lowest
        self.all_kept = len(self._given) == len({str(t) for t in ids})
        """Whether every id keeps its own number: then no number depends on the order
        in which tracks appear."""

    def _numeric(self, key: str) -> int | None:
        if not key.isdigit() or int(key) < self.lowest:
            return None
        n = int(key)
        return n if self.limit is None or n <= self.limit else None

    def number(self, track_id: Any) -> int | None:
        """The track's number; None for no track, or when the range is used up."""
        if track_id is None or track_id == "":
            return None
        key = str(track_id)
        if key not in self._given:
            while self._next in self._used:
                self._next += 1
            if self.limit is not None and self._next > self.limit:
                return None
            self._given[key] = self._next
            self._used.add(self._next)
        return self._given[key]


def track_ids(staging: Staging, subset: str | None, **where: str | None) -> list[str]:
    """Distinct track ids of one partition: a subset, optionally one `sequence_id`."""
    conds, params = ["i.subset IS NOT DISTINCT FROM ?"], [subset]
    for column, value in where.items():
        conds.append(f"i.{column} IS NOT DISTINCT FROM ?")
        params.append(value)
    rows = staging.con.execute(
        "SELECT DISTINCT a.track_id FROM annotations a JOIN items i USING (item_id) "
        f"WHERE a.track_id IS NOT NULL AND {' AND '.join(conds)}",
        params,
    ).fetchall()
    return sorted(r[0] for r in rows)


def frame_stem(item: dict[str, Any]) -> str:
    """The output file stem of an item: its file name, else native id, else item id."""
    name = item.get("file_name") or item.get("native_id") or item["item_id"]
    base = posixpath.basename(str(name).replace("\\", "/"))
    stem, ext = posixpath.splitext(base)
    return stem if ext and stem else base


def subset_dir(subset: str | None, *parts: str | None) -> str:
    """`subset/part/...` skipping empty pieces: the root of one output partition."""
    return posixpath.join(*[p for p in (subset, *parts) if p]) if (subset or any(parts)) else ""


def number_text(value: float) -> str:
    """A number as MOT files write it: integers without a decimal point."""
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text
