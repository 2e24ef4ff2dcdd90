"""The `labelflow` executable's first module: what must be settled before pyarrow loads."""

from __future__ import annotations

from pipelines import memory


def main() -> None:
    """Run the command line with Arrow's allocator chosen first (`memory.settle_before_pyarrow`)."""
    memory.settle_before_pyarrow()
    from pipelines.cli import app

    app()
