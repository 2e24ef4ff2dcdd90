"""Item groups for per-partition writers, asking staging only for tables that have rows.

An empty staging table is a view over an Arrow table registered on the main DuckDB
connection, which the cursors `Staging.iter_items` opens cannot see; asking for its
rows fails. Skipping empty tables gives the same groups.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from pipelines.staging import ItemGroup, Staging


def has_rows(staging: Staging, table: str) -> bool:
    return bool(staging.scalar(f"SELECT count(*) > 0 FROM {table}"))


def item_groups(
    staging: Staging,
    subset: str | None,
    *,
    point_columns: Sequence[str] = (),
    with_attributes: bool = True,
    shard: int = 0,
    shards: int = 1,
) -> Iterator[ItemGroup]:
    """The subset's items in source order (`subset=None`: items without a subset)."""
    yield from staging.iter_items(
        subset=subset,
        all_subsets=False,
        shard=shard,
        shards=shards,
        point_columns=point_columns if point_columns and has_rows(staging, "points") else (),
        with_attributes=with_attributes and has_rows(staging, "attributes"),
    )
