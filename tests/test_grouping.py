"""Ids made unique on reading: `unique_id` numbers repeats `#2`, `#3`... in order."""

from __future__ import annotations

import random

import pytest

from pipelines.grouping import Earlier, unique_id


@pytest.mark.parametrize("seed", range(20))
def test_resuming_from_the_last_number_gives_the_same_ids(seed: int) -> None:
    """Names that repeat, and names that spell a number another would be given."""
    rng = random.Random(seed)
    names = [rng.choice(["a", "b", "a#2", "a#3", "b#2#2", "c"]) for _ in range(200)]
    plain: set[str] = set()
    taken: set[str] = set()
    last: dict[str, int] = {}
    expected = [unique_id(n, plain) for n in names]
    assert [unique_id(n, taken, last) for n in names] == expected
    assert len(set(expected)) == len(names)
    assert expected[names.index("a")] == "a"


def test_earlier_counts_what_came_before_each_part() -> None:
    parts = [["a", "b", "a"], ["c", "a"], ["b", "b", "c"], []]
    earlier = Earlier(len(parts))
    for part, keys in enumerate(parts):
        for key in keys:
            earlier.add(part, key)
    assert earlier.before() == [[], [("a", 2)], [("b", 1), ("c", 1)], []]
