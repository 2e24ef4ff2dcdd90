"""Ids for CVAT and Datumaro: group ids as integers, and ids made unique on reading.

Staged `group_id`s are text and may come from formats that name groups; within
one item, numeric ids keep their number and others get unused small numbers.
Both formats may repeat a name (two <image>s, two items with one id), which staging
must not: a repeat becomes `<id>#2`, `<id>#3`, ...
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def unique_id(candidate: str, taken: set[str], last: dict[str, int] | None = None) -> str:
    """`candidate`, or `candidate#n` with the lowest free n > 1; recorded in `taken`.

    `last`, kept by the caller beside `taken`: the n each candidate was last given.
    The numbers below it were taken then and stay taken, so the search resumes there:
    a name's k-th repeat costs one lookup, not k (a project of 50 tasks with the same
    10k frame names: 0.5M lookups, not 13M)."""
    new_id, n = candidate, last.get(candidate, 1) if last is not None else 1
    while new_id in taken:
        n += 1
        new_id = f"{candidate}#{n}"
    taken.add(new_id)
    if last is not None and n > 1:
        last[candidate] = n
    return new_id


class Earlier:
    """For tasks that each read a part of a file whose repeated ids the reader numbers
    in file order (`unique_id`): how many times each id came before each part. Ids are
    added in file order with their part's index; `before` gives, per part, (id, count)
    for each id the part shares with an earlier one, for `given_before`."""

    def __init__(self, parts: int) -> None:
        self.seen: dict[Any, int] = {}
        self.firsts: list[dict[Any, int]] = [{} for _ in range(parts)]

    def add(self, part: int, key: Any) -> None:
        firsts = self.firsts[part]
        if key not in firsts:  # its first in the part: how many came before
            firsts[key] = self.seen.get(key, 0)
        self.seen[key] = self.seen.get(key, 0) + 1

    def before(self) -> list[list[tuple[Any, int]]]:
        return [[(key, n) for key, n in firsts.items() if n] for firsts in self.firsts]


def given_before(taken: set[str], last: dict[str, int], candidate: str, count: int) -> None:
    """Record what `count` earlier `unique_id(candidate, ...)` calls gave, read by another
    task: the candidate, then #2 ... #count, when no id has a `#` of its own that
    could have taken one of those."""
    taken.add(candidate)
    taken.update(f"{candidate}#{n}" for n in range(2, count + 1))
    if count > 1:
        last[candidate] = count


def int_like(v: Any) -> int | None:
    """The integer a value spells (5, "5", "-2"), or None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.lstrip("-").isdigit():
        return int(v)
    return None


class IntGroups:
    """Numbers for the group ids of one item's annotations; no group is 0."""

    def __init__(self, group_ids: Iterable[Any]) -> None:
        self.taken = {n for g in group_ids if (n := int_like(g)) is not None}
        self.given: dict[str, int] = {}

    def of(self, group_id: Any) -> int:
        if group_id is None:
            return 0
        n = int_like(group_id)
        if n is not None:
            return n
        if group_id not in self.given:
            k = 1
            while k in self.taken:
                k += 1
            self.taken.add(k)
            self.given[group_id] = k
        return self.given[group_id]
