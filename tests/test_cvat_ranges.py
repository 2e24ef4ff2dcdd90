"""A large CVAT for images XML file read as ranges of its images (`_cvat_ranges`): the
tables are those of the whole file, row for row, rejects and their lines included;
files a scan cannot split safely are read whole."""

from __future__ import annotations

import io
import itertools
import re
from pathlib import Path

import pytest

from pipelines import formats, jsonframe
from pipelines.errors import ParseError
from pipelines.formats import _cvat_ranges, cvat
from pipelines.formats.base import ReadOptions
from pipelines.storage import Source
from tests.conftest import PEER
from tests.rows import read_direct

HEAD = (
    "<?xml version='1.0' encoding='utf-8'?>\n<annotations>\n  <version>1.1</version>\n"
    "  <meta>\n    <task>\n      <name>t</name>\n      <mode>annotation</mode>\n"
    "      <labels>\n        <label>\n          <name>car</name>\n"
    "          <color>#ff0000</color>\n        </label>\n      </labels>\n"
    "    </task>\n  </meta>\n"
)


def _image(i: int, name: str | None = None, subset: str = "") -> str:
    at = f' subset="{subset}"' if subset else ""
    bad = "abc" if i == 37 else "1"  # one shape to reject, far into the file
    return (
        f'  <image id="{i}" name="{name or f"{i:04d}.jpg"}"{at} width="64" height="48">\n'
        f'    <box label="car" xtl="{bad}" ytl="2" xbr="30" ybr="40" occluded="0">\n'
        f'      <attribute name="colour">c{i}</attribute>\n    </box>\n'
        f'    <polygon label="car" points="1,2;3.5,4;{i},6" z_order="{i % 3}"/>\n'
        f'    <tag label="car"/>\n  </image>\n'
    )


_FRAME_TAG = '  <tag label="car" frame="3"/>\n'


def _between_images(line: str) -> list[str]:
    """Sixty images with `line` after the thirtieth."""
    return [_image(i) for i in range(30)] + [line] + [_image(i) for i in range(30, 60)]


def _xml(path: Path, images: list[str], head: str = HEAD) -> Path:
    path.write_text(head + "".join(images) + "</annotations>\n")
    return path


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of a few kB split as a large one would."""
    monkeypatch.setattr(cvat, "SPLIT_BYTES", 0)
    monkeypatch.setattr(_cvat_ranges, "SPAN_BYTES", 700)
    monkeypatch.setattr(jsonframe, "MIN_TASK_BYTES", 1)


def _tasks(path: Path) -> list:
    return formats.get("cvat").plan_read(Source(str(path)), ReadOptions(workers=2))


@pytest.mark.parametrize(
    "source",
    [
        PEER / "cvat_images" / "concretenet_task_export" / "annotations.xml",
        PEER / "cvat_images" / "project_export" / "annotations.xml",
        PEER / "cvat_images" / "comparing_data_markup_job_export" / "annotations.xml",
        "synthetic",
        "self-closing",
    ],
)
def test_ranges_give_the_whole_file_s_tables(small_ranges, tmp_path: Path, source) -> None:
    shapes = source != "self-closing"
    if source == "synthetic":
        source = _xml(tmp_path / "annotations.xml", [_image(i) for i in range(60)])
    elif source == "self-closing":  # images without shapes, one with a subset of its own
        images = [f'  <image id="{i}" name="{i}.jpg" width="4" height="4"/>\n' for i in range(90)]
        images[7] = '<image id="7" name="7.jpg" subset="val"/>'  # on the line of the next
        source = _xml(tmp_path / "annotations.xml", images)
    tasks = _tasks(source)
    assert len(tasks) > 1
    spans = [(t.start, t.end) for t in tasks]
    assert spans[0][0] == 0 and spans[-1][1] == Path(source).stat().st_size
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    whole = read_direct(source, "cvat")
    parts = read_direct(source, "cvat", workers=2)
    assert parts == whole
    assert whole["items"] and ((whole["annotations"] and whole["attributes"]) or not shapes)


def test_a_reject_in_a_later_range_names_the_file_s_line(small_ranges, tmp_path: Path) -> None:
    xml = _xml(tmp_path / "annotations.xml", [_image(i) for i in range(60)])
    tasks = _tasks(xml)
    assert len(tasks) > 2
    (reject,) = read_direct(xml, "cvat", workers=2)["rejects"]
    text = xml.read_text()
    line = next(i for i, s in enumerate(text.splitlines(), 1) if 'xtl="abc"' in s)
    assert reject["location"] == f"line {line}: <box>"
    owner = [t for t in tasks if t.start <= text.index('xtl="abc"') < t.end]
    assert owner != [tasks[0]]  # the line was found in a range after the first


def test_malformed_xml_in_a_later_range_names_the_file_s_line(small_ranges, tmp_path: Path) -> None:
    images = [_image(i) for i in range(60)]
    images[50] = images[50].replace('<tag label="car"/>', '<tag label="car"/ >')
    xml = _xml(tmp_path / "annotations.xml", images)
    fmt = formats.get("cvat")
    (whole,) = fmt.plan_read(Source(str(xml)), ReadOptions())
    with pytest.raises(ParseError) as expected:
        list(fmt.read(whole))
    errors = []
    for task in _tasks(xml):
        try:
            list(fmt.read(task))
        except ParseError as exc:
            errors.append(exc.location)
    assert errors == [expected.value.location]
    line = next(i for i, s in enumerate(xml.read_text().splitlines(), 1) if "/ >" in s)
    assert expected.value.location.startswith(f"line {line},")


@pytest.mark.parametrize(
    ("why", "images", "head"),
    [
        (
            "a name twice, and a '#' in another",
            [
                _image(i, "same.jpg" if i in (3, 50) else "a#2.jpg" if i == 9 else None)
                for i in range(60)
            ],
            HEAD,
        ),
        (
            "a name twice, in a document in Latin-1",
            [_image(i, "same.jpg" if i in (3, 50) else None) for i in range(60)],
            "<?xml version='1.0' encoding='ISO-8859-1'?>" + HEAD.split("?>", 1)[1],
        ),
        (
            "a name twice, and a quote in another",
            [
                _image(i, "same.jpg" if i in (3, 50) else "it's.jpg" if i == 9 else None)
                for i in range(60)
            ],
            HEAD,
        ),
        (
            "a name and a subset's name",
            [_image(i, "train/x.jpg" if i == 3 else None) for i in range(59)]
            + [_image(59, "x.jpg", "train")],
            HEAD,
        ),
        ("an entity", [_image(i, "a&amp;b.jpg" if i == 40 else None) for i in range(60)], HEAD),
        ("a comment", _between_images("<!-- <image> -->\n"), HEAD),
        (
            "video",
            [_image(i) for i in range(60)],
            HEAD.replace("annotation</mode>", "interpolation</mode>"),
        ),
        ("a video frame's tag between images", _between_images(_FRAME_TAG), HEAD),
        (
            "a video frame's tag after the last image",
            [_image(i) for i in range(60)] + [_FRAME_TAG],
            HEAD,
        ),
        (
            "a track",
            [_image(i) for i in range(60)] + ['<track id="0" label="car"></track>\n'],
            HEAD,
        ),
    ],
)
def test_files_a_scan_cannot_split_safely_are_read_whole(
    small_ranges, tmp_path: Path, why: str, images: list[str], head: str
) -> None:
    xml = _xml(tmp_path / "annotations.xml", images, head)
    assert len(_tasks(xml)) == 1, why


@pytest.mark.parametrize(
    ("stem", "subsets"),
    [("annotations", False), ("train", False), ("annotations", True)],
)  # a task's export (the document's subset: none, or the file's), a project's
def test_repeated_names_are_numbered_across_ranges_as_in_the_whole_file(
    small_ranges, tmp_path: Path, stem: str, subsets: bool
) -> None:
    """As a project's tasks' images (frame_000000.jpg in each): the same names again and
    again, a few once only."""
    names = [f"frame_{i % 7:06d}.jpg" for i in range(80)]
    names[33] = "once.jpg"
    subset = [
        "Validation" if subsets and i % 3 == 0 else "Train" if subsets else "" for i in range(80)
    ]
    images = [_image(i, n, s) for i, (n, s) in enumerate(zip(names, subset, strict=True))]
    xml = _xml(tmp_path / f"{stem}.xml", images)
    tasks = _tasks(xml)
    assert len(tasks) > 2
    repeats = [t.context["range"].repeats for t in tasks]
    assert not repeats[0] and all(repeats[1:])
    whole, split = read_direct(xml, "cvat"), read_direct(xml, "cvat", workers=2)
    assert split == whole
    ids = [i["item_id"] for i in whole["items"]]
    assert len(set(ids)) == 80 and sum(i.endswith("frame_000001.jpg#2") for i in ids) >= 1


def test_past_always_split_bytes_one_worker_reads_ranges_too(
    small_ranges, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A whole file's reader keeps every id it gave; one worker reads a large file in
    ranges so that it holds a range's ids at a time."""
    names = [f"{i % 9}.jpg" for i in range(60)]  # repeats, numbered across ranges
    xml = _xml(tmp_path / "annotations.xml", [_image(i, n) for i, n in enumerate(names)])
    plan = formats.get("cvat").plan_read
    assert len(plan(Source(str(xml)), ReadOptions(workers=1))) == 1
    whole = read_direct(xml, "cvat")
    monkeypatch.setattr(cvat, "ALWAYS_SPLIT_BYTES", 0)
    assert len(plan(Source(str(xml)), ReadOptions(workers=1))) > 2
    assert read_direct(xml, "cvat") == whole


@pytest.mark.parametrize("block, max_tag", [(997, 300), (997, 800), (4096, 64)])
def test_an_image_start_tag_cut_by_a_block_is_read_from_the_next(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, block: int, max_tag: int
) -> None:
    """Blocks end inside tags, lines and marks; with (997, 800) the first image starts
    past what the first block may read, so the head is looked for again."""
    data = _xml(tmp_path / "a.xml", [_image(i) for i in range(200)]).read_bytes()
    whole = _cvat_ranges._scan(io.BytesIO(data))
    monkeypatch.setattr(_cvat_ranges, "_BLOCK", block)
    monkeypatch.setattr(_cvat_ranges, "_MAX_TAG", max_tag)
    assert whole is not None
    whole, _ = whole
    assert _cvat_ranges._scan(io.BytesIO(data))[0] == whole
    assert whole[-1][0] == data.index(b"</annotations>")
    assert all(data[at : at + 7] == b"<image " for at, _ in whole[:-1])
    assert all(data.count(b"\n", 0, at) == lines for at, lines in whole)
    tags = [at for at, _ in _cvat_ranges._image_tags(io.BytesIO(data), whole[0][0], len(data))]
    assert tags == [m.start() for m in re.finditer(b"<image ", data)]


def test_past_max_images_the_file_is_read_whole(
    small_ranges, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    xml = _xml(tmp_path / "annotations.xml", [_image(i) for i in range(60)])
    assert len(_tasks(xml)) > 1
    monkeypatch.setattr(_cvat_ranges, "MAX_IMAGES", 59)  # what the id check may hold
    assert len(_tasks(xml)) == 1


def test_ranges_of_a_file_on_another_file_system(small_ranges, tmp_path: Path) -> None:
    """Through fsspec's file objects (as on S3), not the local disk's."""
    import fsspec

    xml = _xml(tmp_path / "annotations.xml", [_image(i) for i in range(60)])
    fsspec.filesystem("memory").pipe("/lf-ranges/annotations.xml", xml.read_bytes())
    url = "memory://lf-ranges/annotations.xml"
    assert len(formats.get("cvat").plan_read(Source(url), ReadOptions(workers=2))) > 2
    assert read_direct(url, "cvat", workers=2) == read_direct(url, "cvat")


def test_ranges_of_a_member_of_an_export_zip(small_ranges, tmp_path: Path) -> None:
    """A task reaches its range by decompressing what comes before it: ranges of half a
    worker's share, fewer than on a plain file."""
    import zipfile

    xml = _xml(tmp_path / "annotations.xml", [_image(i) for i in range(60)])
    archive = tmp_path / "task_export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(xml, "annotations.xml")
    in_zip = formats.get("cvat").plan_read(Source(str(archive)), ReadOptions(workers=2))
    assert len(in_zip) == 4 < len(_tasks(xml))
    assert read_direct(archive, "cvat", workers=2) == read_direct(archive, "cvat")
