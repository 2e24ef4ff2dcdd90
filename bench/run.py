#!/usr/bin/env python3
"""Benchmark runner: labelflow and its peers side by side, on the same corpora, in one run.

    python bench/run.py coco   [--corpora small,medium,large] [--runs 3] [--tools ...]
    python bench/run.py disk   [--corpus medium] [--disk-dir DIR]
    python bench/run.py jsonl  [--lines 50000] [--runs 3]
    python bench/run.py encord [--rows 10000] [--runs 3]
    python bench/run.py writers [--corpus medium] [--runs 3] [--tools staged_to_cvat_1w,...]
    python bench/run.py exports [--corpus medium] [--runs 3]   # one-file CVAT XML, Datumaro
    python bench/run.py report              # tables + plot from what was recorded

Every measured command runs in a fresh process tree under `bench/measure.py`:
wall time, peak RSS of the whole tree (the sum over every process it starts),
the tree's unique memory (USS), and its CPU time. Tools alternate run by run
(round r starts at the r-th tool), so a change in the machine's load during the
run spreads over all of them; tables report medians, and the ratios between two
tools are the medians of their ratios within each round.

Peers run from their own virtualenvs (`bench/setup_venvs.sh`, run for you on
first use), never from the project's; labelflow runs from the project's
`.venv`, its bytecode compiled first as pip compiles an installed package's (and
the peers'). Corpora are generated on first use (`bench/make_coco.py`,
`bench/make_itag.py`, `bench/make_encord.py`) into `--data`. Results are appended to
`--work`/results.jsonl; `report` turns them into `--work`/summary.md and
`--work`/scaling.png. Before measuring, the runner drops the page cache (as root;
`--keep-caches` skips it): see `drop_caches`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from measure import measure  # noqa: E402 - a sibling script, not a package

# The benchmark corpora: fixed sizes and seeds, so every run reads the same bytes.
CORPORA = {
    "small": ["--images", "4000", "--anns-per-image", "7", "--seed", "1"],
    "medium": ["--images", "80000", "--anns-per-image", "7", "--seed", "2"],
    "large": ["--images", "410000", "--anns-per-image", "7", "--seed", "3"],
}
ONCE_ABOVE_S = 60.0
"""A tool whose first run on a corpus takes longer than this runs once there."""


class Env:
    """Paths of everything the commands need."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.work = Path(args.work).resolve()
        self.data = Path(args.data).resolve()
        self.venvs = Path(args.venvs).resolve()
        self.out = Path(args.out_dir).resolve()
        self.labelflow = str(ROOT / ".venv" / "bin" / "labelflow")
        self.lf_py = str(ROOT / ".venv" / "bin" / "python")
        self.workers = str(args.workers)
        self.work.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        # Peers come from wheels, compiled at install; the project is installed
        # editable, and with PYTHONDONTWRITEBYTECODE set it would compile its
        # modules on every run. Compile them once, as an install would.
        packages = [str(ROOT / "pipelines"), str(ROOT / "transforms")]
        compile_all = [self.lf_py, "-m", "compileall", "-q", *packages]
        subprocess.run(compile_all, check=True, stdout=subprocess.DEVNULL)

    def venv(self, name: str, exe: str = "python") -> str:
        return str(self.venvs / name / "bin" / exe)

    def ensure_venvs(self) -> None:
        if all((self.venvs / n / "bin" / "python").exists() for n in ("core", "labelformat")):
            return
        subprocess.run(["bash", str(HERE / "setup_venvs.sh"), str(self.venvs)], check=True)

    def corpus(self, name: str) -> Path:
        path = self.data / f"{name}.json"
        if not path.exists():
            print(f"# generating {path}", file=sys.stderr)
            tmp = path.with_suffix(".tmp")
            subprocess.run(
                [sys.executable, str(HERE / "make_coco.py"), *CORPORA[name], "--out", str(tmp)],
                check=True,
            )
            tmp.rename(path)
        return path


def corpus_facts(env: Env, path: Path) -> dict:
    """Annotation count and size, plus the side files some peers need (cached)."""
    facts_path = env.work / f"{path.stem}.facts.json"
    if facts_path.exists():
        return json.loads(facts_path.read_text())
    with open(path, "rb") as f:
        doc = json.load(f)
    names = env.work / f"{path.stem}.names"
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    names.write_text("".join(c["name"] + "\n" for c in cats))
    dm_dir = env.work / f"dm_{path.stem}"
    (dm_dir / "annotations").mkdir(parents=True, exist_ok=True)
    (dm_dir / "images" / "train").mkdir(parents=True, exist_ok=True)
    link = dm_dir / "annotations" / "instances_train.json"
    if not link.exists():
        link.symlink_to(path)
    facts = {
        "annotations": len(doc["annotations"]),
        "images": len(doc["images"]),
        "bytes": path.stat().st_size,
        "names": str(names),
        "dm_dir": str(dm_dir),
    }
    facts_path.write_text(json.dumps(facts))
    return facts


# -- the tools ---------------------------------------------------------------------

Command = Callable[[Env, Path, dict, Path], list[str]]


def _lf(to: str, workers: str | None = None, *extra: str) -> Command:
    def cmd(env: Env, corpus: Path, facts: dict, out: Path) -> list[str]:
        return [env.labelflow, "convert", str(corpus), "--from", "coco", "--to", to,
                "--out", str(out / "result"), "--workers", workers or env.workers, "-q",
                *extra]  # fmt: skip

    return cmd


def _probe(mode: str, *extra: str) -> Command:
    def cmd(env: Env, corpus: Path, facts: dict, out: Path) -> list[str]:
        return [env.venv("core"), str(HERE / "parse_bench.py"), mode, str(corpus),
                "--out", str(out / "yolo"), *extra]  # fmt: skip

    return cmd


TOOLS: dict[str, Command] = {
    "labelflow_parquet": _lf("parquet"),
    "labelflow_yolo": _lf("yolo", None, "-o", "save_images=false"),
    "labelflow_parquet_1w": _lf("parquet", "1"),
    "labelflow_stream_probe": lambda env, corpus, facts, out: [
        env.lf_py, str(HERE / "lf_probe.py"), str(corpus)],
    "labelformat": lambda env, corpus, facts, out: [
        env.venv("labelformat", "labelformat"), "convert", "--task", "object-detection",
        "--input-format", "coco", "--input-file", str(corpus), "--output-format", "yolov8",
        "--output-file", str(out / "data.yaml"), "--output-split", "train"],
    "datumaro_stream": lambda env, corpus, facts, out: [
        env.venv("datumaro"), str(HERE / "dm_coco_to_yolo.py"), facts["dm_dir"],
        str(out / "yolo"), "--stream"],
    "datumaro": lambda env, corpus, facts, out: [
        env.venv("datumaro", "datum"), "convert", "-if", "coco_instances", "-i",
        facts["dm_dir"], "-f", "yolo", "-o", str(out / "yolo")],
    "globox": lambda env, corpus, facts, out: [
        env.venv("globox", "globox"), "convert", "--format", "coco", "--save_fmt", "yolov5",
        "--reverse_mapping_out", facts["names"], str(corpus), str(out / "yolo")],
    "pycocotools": _probe("pycocotools"),
    "naive_yolo_nogc": _probe("naive_yolo", "--no-gc"),
    "ijson_float": _probe("ijson_float"),
}  # fmt: skip

DEFAULT_TOOLS = [
    "labelflow_parquet", "labelflow_yolo", "labelformat", "datumaro_stream", "ijson_float",
    "labelflow_parquet_1w", "labelflow_stream_probe", "naive_yolo_nogc", "pycocotools",
    "globox", "datumaro",
]  # fmt: skip
LARGE_TOOLS = [
    "labelflow_parquet", "labelflow_yolo", "labelformat", "datumaro_stream", "ijson_float",
    "labelflow_stream_probe",
]  # fmt: skip


def _load() -> float:
    return os.getloadavg()[0]


def _record(env: Env, row: dict) -> None:
    with open(env.work / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(
        "{corpus:8} {tool:24} r{round} wall={wall_s:7.2f}s rss={peak_rss_mb:7.0f}MB "
        "pss={peak_pss_mb:7.0f}MB uss={peak_uss_mb:7.0f}MB cpu={cpu_s:7.2f}s exit={exit} "
        "load={load:.1f}".format(**row),
        flush=True,
    )


def _clean(path: Path, settle_s: float = 0.0) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.sync()
    # On a disk, deleting the previous run's files keeps the device busy (discard)
    # for a while after sync returns; the next run should not pay for it.
    time.sleep(settle_s)


def drop_caches() -> None:
    """Empty the page cache once, before anything is measured. Files pip has just
    written sit there in large folios, and a process that maps a library counts every
    page of a folio it touches as resident: in a fresh `.venv` a process that had
    imported labelflow's engine held 105 MB of RSS, after dropping the cache 78 MB
    (COCO → YOLO, 200 MB, 2 workers: tree RSS 313 → 272 MB). Libraries read back from
    disk, as after a reboot or in a new container, are mapped page by page. Needs root."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        print(f"# page cache not dropped ({exc}): RSS may count whole folios of libraries "
              "that were just installed", file=sys.stderr)  # fmt: skip


def warm(path: Path) -> None:
    """Read an input once, so that no round reads it from the disk."""
    for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
        with open(f, "rb") as src:
            while src.read(1 << 24):
                pass


def run_rounds(env: Env, suite: str, corpus_name: str, corpus: Path, facts: dict,
               tools: list[str], runs: int, out: Path, settle: float = 0.0) -> None:  # fmt: skip
    warm(corpus)
    once: set[str] = set()
    for r in range(runs):
        order = tools[r % len(tools) :] + tools[: r % len(tools)]
        for tool in order:
            if tool in once:
                continue
            _clean(out, settle)
            cmd = TOOLS[tool](env, corpus, facts, out)
            load = _load()
            res = measure(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            row = {"suite": suite, "corpus": corpus_name, "tool": tool, "round": r + 1,
                   "load": load, "bytes": facts["bytes"], "annotations": facts["annotations"],
                   "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **res}  # fmt: skip
            _record(env, row)
            if res["exit"] != 0 or res["wall_s"] > ONCE_ABOVE_S:
                once.add(tool)
    _clean(out)


def cmd_coco(env: Env, args: argparse.Namespace) -> None:
    env.ensure_venvs()
    for name in args.corpora.split(","):
        corpus = env.corpus(name)
        facts = corpus_facts(env, corpus)
        tools = args.tools.split(",") if args.tools else (
            LARGE_TOOLS if name == "large" else DEFAULT_TOOLS)  # fmt: skip
        run_rounds(env, "coco", name, corpus, facts, tools, args.runs, env.out)


def cmd_disk(env: Env, args: argparse.Namespace) -> None:
    """COCO -> YOLO with the output on a real disk, and the file-system floor."""
    env.ensure_venvs()
    corpus = env.corpus(args.corpus)
    facts = corpus_facts(env, corpus)
    disk = Path(args.disk_dir).resolve()
    files = facts["images"] + 4  # one label file per image, plus the list files
    floor: Command = lambda env, corpus, facts, out: [  # noqa: E731
        env.lf_py,
        str(HERE / "fs_floor.py"),
        str(out / "floor"),
        str(files),
        "260",
    ]
    TOOLS["fs_floor"] = floor
    tools = args.tools.split(",") if args.tools else [
        "fs_floor", "labelflow_yolo", "labelformat", "naive_yolo_nogc"]  # fmt: skip
    run_rounds(env, "disk", args.corpus, corpus, facts, tools, args.runs, disk, settle=20.0)


def _generated(env: Env, script: str, flag: str, count: int, name: str) -> Path:
    """A corpus made by one of the bench's generators, on first use."""
    path = env.data / name
    if not path.exists():
        subprocess.run([sys.executable, str(HERE / script), flag, str(count), "--out", str(path)],
                       check=True)  # fmt: skip
    return path


def _read_1w_2w(fmt: str, name: str = "") -> list[str]:
    """Tools (`name`, default `fmt`) reading `fmt` into the tables with 1 and 2 workers."""
    name = name or fmt
    for w in ("1", "2"):
        TOOLS[f"{name}_read_{w}w"] = lambda env, corpus, facts, out, w=w: [
            env.labelflow, "convert", str(corpus), "--from", fmt, "--to", "parquet",
            "--out", str(out / "result"), "--workers", w, "-q"]  # fmt: skip
    return [f"{name}_read_1w", f"{name}_read_2w"]


def cmd_jsonl(env: Env, args: argparse.Namespace) -> None:
    """JSON lines read as byte ranges (iTAG), 1 vs 2 workers."""
    path = _generated(env, "make_itag.py", "--lines", args.lines, f"itag_{args.lines}.manifest")
    facts = {"bytes": path.stat().st_size, "annotations": 0}
    run_rounds(env, "jsonl", path.stem, path, facts, _read_1w_2w("itag"), args.runs, env.out)


def cmd_encord(env: Env, args: argparse.Namespace) -> None:
    """An Encord label export read into the tables, 1 vs 2 workers, against bare ijson
    iteration and a whole-file orjson load of the same rows."""
    env.ensure_venvs()
    path = _generated(env, "make_encord.py", "--rows", args.rows, f"encord_{args.rows}.json")
    facts = {"bytes": path.stat().st_size, "annotations": 0}
    TOOLS["encord_ijson"] = _probe("encord_ijson")
    TOOLS["encord_orjson"] = _probe("encord_orjson")
    tools = [*_read_1w_2w("encord"), "encord_ijson", "encord_orjson"]
    run_rounds(env, "encord", path.stem, path, facts, tools, args.runs, env.out)


def _staged(env: Env, corpus_name: str, corpus: Path) -> Path:
    """The corpus read into labelflow's tables, on first use."""
    staged = env.work / f"staged_{corpus_name}"
    if not staged.exists():
        subprocess.run([env.labelflow, "convert", str(corpus), "--from", "coco", "--to",
                        "parquet", "--out", str(staged), "-q"], check=True)  # fmt: skip
    return staged


def cmd_exports(env: Env, args: argparse.Namespace) -> None:
    """One-file exports read into the tables, 1 vs 2 workers: CVAT XML and Datumaro JSON
    of the corpus (each as a file and zipped, as CVAT hands them out), written by labelflow
    from its tables on first use, and the CVAT XML with its images' names repeated as a
    project's tasks repeat their frames' (`cvat_repeats`)."""
    corpus = env.corpus(args.corpus)
    facts = corpus_facts(env, corpus)
    staged = _staged(env, args.corpus, corpus)
    exports = (
        ("cvat", "cvat"),
        ("cvat", "cvat_zip"),
        ("datumaro", "datumaro"),
        ("datumaro", "datumaro_zip"),
        ("cvat", "cvat_repeats"),
    )
    for fmt, name in exports:
        tools = _read_1w_2w(fmt, name)
        tools = [t for t in tools if not args.tools or t in args.tools.split(",")]
        if not tools:
            continue
        export = env.work / f"{fmt}_{args.corpus}"
        if not export.exists():
            subprocess.run([env.labelflow, "convert", str(staged), "--to", fmt,
                            "--out", str(export), "-q"], check=True)  # fmt: skip
        if name.endswith("_zip"):
            export = _zipped(export, env.work / f"{name}_{args.corpus}.zip")
        if name == "cvat_repeats":
            export = _repeated_names(export, env.work / f"{name}_{args.corpus}")
        size = sum(f.stat().st_size for f in [export, *export.rglob("*")] if f.is_file())
        run_rounds(env, "exports", f"{name}_{args.corpus}", export, {**facts, "bytes": size},
                   tools, args.runs, env.out)  # fmt: skip


REPEATED_NAMES = 5000
"""`cvat_repeats`: image i is named frame_{i % 5000:06d}.jpg (16 images a name on 80k)."""


def _repeated_names(folder: Path, out: Path) -> Path:
    """The folder's annotations.xml with its images renamed so that names repeat, on
    first use (read whole in memory: 143 MB for the medium corpus)."""
    if not out.exists():
        text = (folder / "annotations.xml").read_bytes()
        count = itertools.count(1)

        def rename(m: re.Match) -> bytes:
            i = next(count)
            return b'<image id="%d" name="frame_%06d.jpg"' % (i, i % REPEATED_NAMES)

        out.mkdir(parents=True)
        renamed = re.sub(rb'<image id="[^"]*" name="[^"]*"', rename, text)
        (out / "annotations.xml").write_bytes(renamed)
    return out


def _zipped(folder: Path, archive: Path) -> Path:
    """The folder's files in a zip (deflate, level 6, as CVAT's exports), on first use."""
    if not archive.exists():
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(folder).as_posix())
    return archive


def cmd_writers(env: Env, args: argparse.Namespace) -> None:
    """Writers from staging Parquet (sharded YOLO, one-file COCO; CVAT XML, Datumaro,
    Encord and iTAG when asked for with --tools), 1 vs 2 workers."""
    corpus = env.corpus(args.corpus)
    facts = corpus_facts(env, corpus)
    staged = _staged(env, args.corpus, corpus)
    warm(staged)
    for w in ("1", "2"):
        TOOLS[f"staged_to_yolo_{w}w"] = lambda env, corpus, facts, out, w=w: [
            env.labelflow, "convert", str(staged), "--to", "yolo", "-o", "save_images=false",
            "--out", str(out / "result"), "--workers", w, "-q"]  # fmt: skip
        for fmt in ("coco", "cvat", "datumaro", "encord", "itag"):
            TOOLS[f"staged_to_{fmt}_{w}w"] = lambda env, corpus, facts, out, w=w, fmt=fmt: [
                env.labelflow, "convert", str(staged), "--to", fmt,
                "--out", str(out / "result"), "--workers", w, "-q"]  # fmt: skip
    default = [f"staged_to_{fmt}_{w}w" for fmt in ("yolo", "coco") for w in ("1", "2")]
    tools = args.tools.split(",") if args.tools else default
    run_rounds(env, "writers", args.corpus, corpus, facts, tools, args.runs, env.out)


def _compile_labelflow(env: Env) -> None:
    """An editable install compiles nothing, and under PYTHONDONTWRITEBYTECODE (set on
    this machine) Python never caches what it compiles: every labelflow process
    compiled the project's modules again, 0.2 s of a run on the small corpus
    (0.90 → 0.70 s). The peers' pip installs carry their bytecode."""
    folders = [str(ROOT / name) for name in ("pipelines", "transforms")]
    subprocess.run([env.lf_py, "-m", "compileall", "-q", *folders], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "suite", choices=["coco", "disk", "jsonl", "encord", "writers", "exports", "report"]
    )
    ap.add_argument("--corpora", default="small,medium,large")
    ap.add_argument(
        "--corpus", default="medium", help="disk, writers and exports suites: which corpus"
    )
    ap.add_argument("--tools", default="", help="comma-separated subset of tools")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="labelflow --workers")
    ap.add_argument("--lines", type=int, default=50000, help="jsonl suite: manifest lines")
    ap.add_argument("--rows", type=int, default=10000, help="encord suite: label rows")
    ap.add_argument("--work", default=str(ROOT / "bench-work"))
    ap.add_argument("--data", default=str(ROOT / "bench-work" / "data"))
    ap.add_argument("--venvs", default=str(ROOT / "bench-work" / "venvs"))
    ap.add_argument(
        "--out-dir",
        default="/dev/shm/labelflow-bench",
        help="where converters write (a tmpfs keeps the disk out of the figures)",
    )
    ap.add_argument("--disk-dir", default=str(ROOT / "bench-work" / "disk-out"))
    ap.add_argument("--keep-caches", action="store_true", help="do not drop the page cache first")
    args = ap.parse_args()
    env = Env(args)
    if args.suite == "report":
        import report

        report.main(env.work)
        return
    _compile_labelflow(env)
    if not args.keep_caches:
        drop_caches()
    suites = {"coco": cmd_coco, "disk": cmd_disk, "jsonl": cmd_jsonl, "encord": cmd_encord,
              "writers": cmd_writers, "exports": cmd_exports}  # fmt: skip
    suites[args.suite](env, args)


if __name__ == "__main__":
    main()
