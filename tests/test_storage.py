"""Storage: s3:// against a real S3 endpoint (moto's server on loopback), zip archives
read in place, paths that would escape, atomic commits, and the Dask executor."""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from pipelines import formats
from pipelines.errors import UnsafePathError
from pipelines.formats.base import WriteOptions
from pipelines.runner import convert
from pipelines.staging import Staging
from pipelines.storage import Output, Source, reach, safe_join, safe_member
from tests.conftest import PEER

COCO_VAL = PEER / "coco_instances/coco_instances/annotations/instances_val.json"


@pytest.fixture(scope="module")
def s3() -> Iterator[fsspec.AbstractFileSystem]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # fsspec passes FSSPEC_S3_<KWARG> to every s3fs instance, worker processes included.
        "FSSPEC_S3_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsspec.config.set_conf_env(fsspec.config.conf)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("labels")
    try:
        yield fs
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        fsspec.config.conf.pop("s3", None)


def test_s3_in_and_out(s3: fsspec.AbstractFileSystem, tmp_path: Path) -> None:
    s3.put(str(COCO_VAL), "labels/in/instances_val.json")
    report = convert(
        ["s3://labels/in/instances_val.json"], "parquet", "s3://labels/build", workers=2
    )
    assert report.ok, report.failures
    s3.invalidate_cache()
    parts = s3.find("labels/build/annotations")
    assert parts and all(p.endswith(".parquet") for p in parts)
    with s3.open(parts[0], "rb") as f:
        assert pq.read_table(f).num_rows == 2
    # DuckDB names the part files by URL: a COCO part that reads only some finds them.
    files = Staging("s3://labels/build").group_files("annotations")
    assert files and all(f.startswith("s3://labels/build/annotations/") for f in files)
    report = convert(["s3://labels/build"], "coco", "s3://labels/coco", workers=2)
    assert report.ok, report.failures
    s3.invalidate_cache()
    written = json.loads(s3.cat("labels/coco/annotations/instances_val.json"))
    original = json.loads(COCO_VAL.read_text())
    assert [a["bbox"] for a in written["annotations"]] == [
        a["bbox"] for a in original["annotations"]
    ]
    assert not [p for p in s3.ls("labels") if ".labelflow-" in p]


def test_one_file_output_written_in_parts_to_s3(
    s3: fsspec.AbstractFileSystem, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An iTAG manifest in three parts: fragments beside the object (`Output.side`), the
    join claimed by an exclusive create on the store, nothing left but the manifest."""
    from pipelines.formats import _fragments

    example = Path(__file__).parent / "fixtures/example/annotations/instances_demo.json"
    staged = tmp_path / "staged"
    assert convert([str(example)], "parquet", str(staged), workers=1).ok
    whole = convert([str(staged)], "itag", str(tmp_path / "whole.manifest"), workers=1)
    assert whole.ok
    monkeypatch.setattr(_fragments, "MIN_PART_ITEMS", 1)  # the tasks run here, one by one
    options = WriteOptions(workers=3)
    tasks = formats.get("itag").plan_write(Staging(str(staged)), options)
    assert [t.shards for t in tasks] == [3, 3, 3]
    report = convert(
        [str(staged)], "itag", "s3://labels/out.manifest", workers=1, write_options=options
    )
    assert report.ok, report.failures
    s3.invalidate_cache()
    assert s3.cat("labels/out.manifest") == (tmp_path / "whole.manifest").read_bytes()
    assert not [p for p in s3.ls("labels") if ".labelflow-" in p]  # nor `.side`


def test_zip_read_in_place(tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(COCO_VAL, "annotations/instances_val.json")
    report = convert([str(archive)], "parquet", str(tmp_path / "out"), workers=1)
    assert report.ok and report.counts["annotations"]["written"] == 2
    uri = pq.read_table(tmp_path / "out" / "items").column("source_uri")[0].as_py()
    assert uri == f"{archive}!annotations/instances_val.json"


def test_zip_member_escaping_root_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../../etc/instances_x.json", "{}")
    with pytest.raises(UnsafePathError):
        _ = Source(str(archive)).files


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "C:/x", "a\\..\\..\\x"])
def test_unsafe_members(name: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_member(name)


def test_output_escape_refused_and_abort_leaves_nothing(tmp_path: Path) -> None:
    out = Output(str(tmp_path / "out"))
    with out.open("a/b.txt") as f:
        f.write(b"x")
    with pytest.raises(UnsafePathError):
        out.open("../../escape.txt")
    out.abort()
    assert list(tmp_path.iterdir()) == []


def test_dask_executor_on_local_cluster(tmp_path: Path) -> None:
    report = convert(
        [str(PEER / "coco_instances/coco_instances")],
        "parquet",
        str(tmp_path / "out"),
        executor="dask",
        workers=2,
    )
    assert report.ok, report.failures
    assert report.counts["annotations"]["written"] == 3
    assert pq.read_table(tmp_path / "out" / "annotations").num_rows == 3


@pytest.mark.parametrize(
    "rel",
    ["a", "a/b.txt", "a/..b/c", "..a", ".hidden/.x", "é/ü.txt", "a\n/b", "./a", "a/./b",
     "a//b", "a/", "a/.", "a\\b"],
)  # fmt: skip
def test_output_paths_are_what_safe_join_gives(tmp_path: Path, rel: str) -> None:
    out = Output(str(tmp_path / "out"))
    assert out.path(rel) == safe_join(out.tmp, rel)


@pytest.mark.parametrize(
    "rel", ["../x", "a/../../x", "/etc/x", "C:x", "\n:x", "a\\..\\..\\x", ".."]
)
def test_output_write_refuses_escapes(tmp_path: Path, rel: str) -> None:
    out = Output(str(tmp_path / "out"))
    with pytest.raises(UnsafePathError):
        out.write(rel, b"x")
    assert not list(tmp_path.rglob("x"))


def test_local_write_makes_folders_replaces_files_and_commits(tmp_path: Path) -> None:
    out = Output(str(tmp_path / "out"))
    out.write("a/b/c.txt", b"first, longer")
    out.write("a/b/c.txt", memoryview(b"xsecondx")[1:-1])
    out.write("a/d.txt", b"")
    with out.open("a/b/e.bin") as f:
        f.write(b"opened")
    out.commit()
    root = tmp_path / "out"
    assert (root / "a/b/c.txt").read_bytes() == b"second"
    assert (root / "a/d.txt").read_bytes() == b""
    assert (root / "a/b/e.bin").read_bytes() == b"opened"


def test_yolo_to_s3_goes_through_fsspec(s3: fsspec.AbstractFileSystem, tmp_path: Path) -> None:
    local = tmp_path / "yolo"
    opts = WriteOptions(extra={"save_images": "false"})
    assert convert([str(COCO_VAL)], "yolo", str(local), write_options=opts).ok
    report = convert([str(COCO_VAL)], "yolo", "s3://labels/yolo", workers=2, write_options=opts)
    assert report.ok, report.failures
    s3.invalidate_cache()
    expected = {str(p.relative_to(local)): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert any(name.endswith(".txt") and data for name, data in expected.items())
    written = {p[len("labels/yolo/") :]: s3.cat(p) for p in s3.find("labels/yolo")}
    assert written == expected


def test_yolo_from_staging_on_s3(s3: fsspec.AbstractFileSystem, tmp_path: Path) -> None:
    """The YOLO writer reads staging with pyarrow through fsspec: on S3 as on disk."""
    opts = WriteOptions(extra={"save_images": "false"})
    assert convert([str(COCO_VAL)], "parquet", "s3://labels/staged", workers=1).ok
    local = tmp_path / "from-local"
    assert convert([str(COCO_VAL)], "yolo", str(local), write_options=opts).ok
    remote = tmp_path / "from-s3"
    report = convert(["s3://labels/staged"], "yolo", str(remote), workers=2, write_options=opts)
    assert report.ok, report.failures

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert any(name.endswith(".txt") and data for name, data in files(local).items())
    assert files(remote) == files(local)


@pytest.mark.parametrize("kernel", [True, False])
def test_copy_stream_appends_the_rest_of_a_file_after_what_was_buffered(
    tmp_path: Path, monkeypatch, kernel: bool
) -> None:
    """Between local files the kernel copies; where it cannot, Python's buffers do, from
    where the source was: the same bytes either way, in order with buffered writes."""
    from pipelines import storage

    if not kernel:

        def refused(*args):
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(storage.os, "copy_file_range", refused, raising=False)
    body = os.urandom(3 << 20)
    (tmp_path / "src").write_bytes(b"skip" + body)
    fs = fsspec.filesystem("file")
    with fs.open(str(tmp_path / "src"), "rb") as src, open(tmp_path / "dst", "wb") as dst:
        src.read(4)
        dst.write(b"head,")
        storage.copy_stream(src, dst)
        dst.write(b",tail")
    assert (tmp_path / "dst").read_bytes() == b"head," + body + b",tail"


def test_copy_stream_reads_an_archived_file_through_python(tmp_path: Path) -> None:
    from pipelines import storage

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("m.txt", b"x" * 100_000)
    out, source = tmp_path / "out", Source(str(archive))
    with source.open("m.txt") as src, open(out, "wb") as dst:
        storage.copy_stream(src, dst)  # the member's bytes, not the archive's
    assert out.read_bytes() == b"x" * 100_000


@pytest.mark.parametrize("where", ["file", "zip member"])
def test_reach_moves_to_the_offset_in_a_file_and_in_a_zip_member(tmp_path, where) -> None:
    data = bytes(range(256)) * 20_000  # 5 MB: several of reach's blocks
    (tmp_path / "f.bin").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.write(tmp_path / "f.bin", "f.bin")
    source = Source(str(tmp_path / ("f.bin" if where == "file" else "a.zip")))
    with source.open("" if where == "file" else "f.bin") as f:
        f.read(10)
        reach(f, 3_000_001)
        assert f.tell() == 3_000_001
        assert f.read(5) == data[3_000_001:3_000_006]
