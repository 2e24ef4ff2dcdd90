"""The command line, run configs and the Airflow layer, end to end on real files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipelines import formats
from pipelines.airflow import labelflow_task, run_config
from pipelines.cli import app
from pipelines.config import RunConfig, load_sizes
from pipelines.errors import LabelflowError
from pipelines.storage import Source
from tests.conftest import PEER, ROOT

runner = CliRunner()
EXAMPLE = ROOT / "tests/fixtures/example/annotations/instances_demo.json"


def test_formats_lists_every_registered_format() -> None:
    result = runner.invoke(app, ["formats"])
    assert result.exit_code == 0
    for name in formats.names():
        assert name in result.output


def _executable(*args: str) -> subprocess.CompletedProcess:
    """The installed `labelflow` command (its quick exit included), output piped."""
    command = shutil.which("labelflow", path=str(Path(sys.executable).parent))
    assert command is not None
    return subprocess.run([command, *args], capture_output=True, text=True)


def test_the_executable_exits_with_its_commands_code_and_all_its_output(
    tmp_path: Path,
) -> None:
    """It leaves without the interpreter's teardown: piped output (block-buffered)
    must still all arrive, and each command's exit code must come through."""
    listed = _executable("formats")
    assert listed.returncode == 0, listed.stderr
    for name in formats.names():
        assert name in listed.stdout
    done = _executable("convert", str(EXAMPLE), "--to", "yolo", "--out", str(tmp_path / "y"))
    assert done.returncode == 0, done.stderr
    # The summary's last line (its time) is there: nothing was left in the buffer.
    assert re.fullmatch(r"[\d.]+ s, [\d.]+ MB/s", done.stdout.splitlines()[-1])
    assert (tmp_path / "y" / "obj.names").exists()
    missing = _executable("convert", str(tmp_path / "nope.json"), "--to", "parquet",
                          "--out", str(tmp_path / "p"))  # fmt: skip
    assert missing.returncode == 1
    assert "nope.json" in missing.stderr
    assert _executable("convert").returncode == 2  # usage: typer's own code


def test_detect_names_format_and_reason() -> None:
    result = runner.invoke(app, ["detect", str(EXAMPLE)])
    assert result.exit_code == 0
    assert "coco" in result.output and '"images"' in result.output


def test_a_certain_detection_imports_no_other_format(tmp_path: Path) -> None:
    """Staging's Parquet is certain: the 24 other format modules stay unimported, and
    resolving names what the full detection ranks first, on every peer sample too."""
    staged = tmp_path / "staged"
    assert runner.invoke(app, ["convert", str(EXAMPLE), "--to", "parquet", "--out", str(staged)])
    code = (
        "import sys; from pipelines import formats; from pipelines.storage import Source; "
        f"print(formats.resolve(Source({str(staged)!r}), None).name); "
        "print(sorted(m for m in sys.modules if m.startswith('pipelines.formats.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    name, modules = done.stdout.splitlines()
    assert name == "parquet"
    assert "pipelines.formats.coco" not in modules and "pipelines.formats.parquet" in modules
    samples = [staged, *sorted(p for p in PEER.glob("*/*") if p.is_dir())]
    for sample in samples:
        found = formats.detect(Source(str(sample)))
        if found:
            assert formats.resolve(Source(str(sample)), None).name == found[0][0], sample


def test_a_file_is_asked_only_of_the_formats_its_name_allows() -> None:
    """Every detection of every fixture file (asked of all 25 formats) is also made when
    a file is asked only of the formats `_FILES` names for it."""
    from tests.conftest import FIXTURES

    files = sorted(p for root in (PEER, FIXTURES) for p in root.rglob("*") if p.is_file())
    assert len(files) > 300
    detected = 0
    for path in files:
        source = Source(str(path))
        every = set()
        for name in formats.names():
            hit = formats.get(name).detect(source)
            if hit and hit.confidence > 0:
                every.add(name)
        assert {name for name, _ in formats.detect(source)} == every, path
        detected += bool(every)
    assert detected > 50  # JSON, XML, CSV, YAML, gt.txt, obj.data, manifests


def test_convert_prints_summary_and_round_trips(tmp_path: Path) -> None:
    out = tmp_path / "build"
    result = runner.invoke(app, ["convert", str(EXAMPLE), "--to", "parquet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "annotations" in result.output and "562" in result.output
    assert pq.read_table(out / "annotations").num_rows == 562
    back = tmp_path / "coco"
    result = runner.invoke(app, ["convert", str(out), "--to", "coco", "--out", str(back)])
    assert result.exit_code == 0, result.output
    written = json.loads((back / "annotations/instances_demo.json").read_text())
    original = json.loads(EXAMPLE.read_text())
    assert len(written["annotations"]) == len(original["annotations"])
    assert {c["id"]: c["name"] for c in written["categories"]} == {
        c["id"]: c["name"] for c in original["categories"]
    }


def test_bad_file_gives_one_clear_line_and_nonzero_exit(tmp_path: Path) -> None:
    bad = tmp_path / "instances_bad.json"
    bad.write_text(EXAMPLE.read_text()[:5000])
    result = runner.invoke(
        app, ["convert", str(bad), "--to", "parquet", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"{bad}: byte 5000: unexpected end of file" in result.output


def test_unknown_format_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["convert", str(EXAMPLE), "--to", "nope", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 1 and "unknown format 'nope'" in result.output


def test_run_config(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"sources: [{EXAMPLE}]\nto: parquet\nout: {tmp_path / 'b'}\nworkers: 1\n")
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 0, result.output
    assert pq.read_table(tmp_path / "b" / "items").num_rows == 120


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(LabelflowError, match=r"unknown key.*sorces"):
        RunConfig.from_dict({"sorces": [], "to": "parquet", "out": "x"})
    with pytest.raises(LabelflowError, match="missing required key 'out'"):
        RunConfig.from_dict({"sources": [], "to": "parquet"})


def test_sizes_csv(tmp_path: Path) -> None:
    f = tmp_path / "sizes.csv"
    f.write_text("file_name,width,height\na.jpg,1920,1080\nb.png,5,10\n")
    assert load_sizes(str(f)) == {"a.jpg": (1920, 1080), "b.png": (5, 10)}
    f.write_text("a.jpg,wide,1080\n")
    with pytest.raises(LabelflowError, match="line 1"):
        load_sizes(str(f))


def test_airflow_callable_returns_summary_and_fails_loudly(tmp_path: Path) -> None:
    src = str(PEER / "coco_instances/coco_instances")
    summary = run_config({"sources": [src], "to": "parquet", "out": str(tmp_path / "a")})
    assert summary["counts"]["annotations"]["written"] == 3
    bad = tmp_path / "instances_bad.json"
    bad.write_text(EXAMPLE.read_text()[:5000])
    with pytest.raises(LabelflowError, match="truncated"):
        run_config({"sources": [str(bad)], "to": "parquet", "out": str(tmp_path / "b")})


def test_airflow_task_names_the_extra_when_airflow_is_missing() -> None:
    try:
        import airflow  # noqa: F401
    except ImportError:
        with pytest.raises(LabelflowError, match=r"pip install 'labelflow\[airflow\]'"):
            labelflow_task("configs/example.yaml")
    else:
        task = labelflow_task("configs/example.yaml")
        assert task.task_id == "labelflow_example"


def test_every_format_is_documented() -> None:
    matrix = (ROOT / "docs/formats/README.md").read_text()
    for name in formats.names():
        assert f"| `{name}` |" in matrix, f"{name} missing from docs/formats/README.md"
