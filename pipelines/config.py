"""Typed run configs (configs/*.yaml): one run of `convert`, written down.

    sources: [s3://exports/2026-11-21/instances.json]
    to: parquet
    out: s3://corpus/build/
    workers: 8
    strict: false

Unknown keys are an error naming the key, so a typo never silently changes a run.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from pipelines.errors import LabelflowError
from pipelines.storage import fs_for

if TYPE_CHECKING:
    from pipelines.executor import Progress
    from pipelines.runner import Report


@dataclass
class RunConfig:
    sources: list[str]
    to: str
    out: str
    source_format: str | None = None
    dataset: str | None = None
    workers: int | None = None
    strict: bool = False
    on_error: str = "reject"
    executor: str = "local"
    scheduler: str | None = None
    staging: str | None = None
    image_sizes: str | None = None
    """A CSV file of file_name,width,height for formats whose coordinates need sizes."""
    prefer_stage: str | None = None
    write: dict[str, Any] = field(default_factory=dict)
    """Writer-specific options (e.g. {layout: ultralytics} for YOLO)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> RunConfig:
        if not isinstance(data, dict):
            msg = f"{where}: a run config is a mapping of keys to values"
            raise LabelflowError(msg)
        data = dict(data)
        if "from" in data:
            data["source_format"] = data.pop("from")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            msg = f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            raise LabelflowError(msg)
        for required in ("sources", "to", "out"):
            if required not in data:
                msg = f"{where}: missing required key {required!r}"
                raise LabelflowError(msg)
        if isinstance(data["sources"], str):
            data["sources"] = [data["sources"]]
        if data.get("on_error", "reject") not in ("reject", "fail"):
            msg = f"{where}: on_error must be 'reject' or 'fail'"
            raise LabelflowError(msg)
        return cls(**data)

    @classmethod
    def load(cls, url: str) -> RunConfig:
        import yaml  # only here: a `convert` never reads YAML (15 ms of its start)

        fs, path = fs_for(url)
        try:
            with fs.open(path, "rb") as f:
                data = yaml.safe_load(f)
        except FileNotFoundError as exc:
            msg = f"{url}: no such config file"
            raise LabelflowError(msg) from exc
        except yaml.YAMLError as exc:
            msg = f"{url}: invalid YAML: {exc}"
            raise LabelflowError(msg) from exc
        return cls.from_dict(data, url)

    def run(self, progress: Progress | None = None) -> Report:
        # The engine is imported here, not with the config: the command line starts
        # the pool's forkserver first (`executor.prepare`).
        from pipelines.formats.base import WriteOptions
        from pipelines.runner import convert

        return convert(
            self.sources,
            self.to,
            self.out,
            source_format=self.source_format,
            dataset=self.dataset,
            workers=self.workers,
            strict=self.strict,
            on_error=self.on_error,
            executor=self.executor,
            scheduler=self.scheduler,
            staging=self.staging,
            image_sizes=load_sizes(self.image_sizes) if self.image_sizes else None,
            write_options=WriteOptions(
                workers=self.workers or 0, prefer_stage=self.prefer_stage, extra=self.write
            )
            if (self.prefer_stage or self.write)
            else None,
            progress=progress,
        )


def load_sizes(url: str) -> dict[str, tuple[int, int]]:
    """file_name,width,height rows (a header row is optional)."""
    fs, path = fs_for(url)
    with fs.open(path, "rb") as f:
        text = f.read().decode("utf-8-sig")
    sizes = {}
    for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or (n == 1 and row[1:2] == ["width"]):
            continue
        try:
            sizes[row[0]] = (int(row[1]), int(row[2]))
        except (IndexError, ValueError) as exc:
            msg = f"{url}: line {n}: expected file_name,width,height"
            raise LabelflowError(msg) from exc
    return sizes
