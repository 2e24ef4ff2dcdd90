"""The `labelflow` executable's first module: what must be settled before pyarrow loads."""

from __future__ import annotations

import os


def main() -> None:
    """Run the command line with Arrow's C++ side on the system allocator.

    Arrow's C++ code (Parquet encoding, compute kernels) fixes its allocator when
    pyarrow is first imported, whatever `pa.set_memory_pool` says later: set after
    the import, Parquet still went through the bundled mimalloc, which held ~20 MB
    more per process than glibc's heap trimmed between tasks. The forkserver and
    the workers inherit the variable; a user's own ARROW_DEFAULT_MEMORY_POOL wins.
    """
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    from pipelines.cli import app

    app()
