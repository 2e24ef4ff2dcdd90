#!/usr/bin/env python3
"""Tables and a plot from the rows `bench/run.py` recorded.

    python bench/report.py [WORK]        # default: bench-work

Reads WORK/results.jsonl; writes WORK/summary.md (medians per corpus and tool,
the ratios the targets are stated in) and WORK/scaling.png (wall time and peak
tree RSS against input size, one line per tool). The plot needs matplotlib
(in the bench's core virtualenv).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

# (numerator, denominator): "labelformat / labelflow_parquet" is how many times faster
# labelflow is, computed within each round and then the median taken.
RATIOS = [
    ("labelformat", "labelflow_parquet"),
    ("labelformat", "labelflow_yolo"),
    ("datumaro_stream", "labelflow_parquet"),
    ("datumaro_stream", "labelflow_yolo"),
    ("ijson_float", "labelflow_stream_probe"),
    ("ijson_float", "labelflow_parquet"),
    ("ijson_float", "labelflow_parquet_1w"),
    ("itag_read_1w", "itag_read_2w"),
    ("encord_read_1w", "encord_read_2w"),
    ("encord_ijson", "encord_read_2w"),
    ("encord_ijson", "encord_read_1w"),
    ("staged_to_yolo_1w", "staged_to_yolo_2w"),
    ("staged_to_coco_1w", "staged_to_coco_2w"),
    ("staged_to_cvat_1w", "staged_to_cvat_2w"),
    ("staged_to_datumaro_1w", "staged_to_datumaro_2w"),
    ("staged_to_encord_1w", "staged_to_encord_2w"),
    ("staged_to_itag_1w", "staged_to_itag_2w"),
    ("labelflow_parquet_1w", "labelflow_parquet"),
]
PEERS = ("labelformat", "datumaro_stream", "datumaro", "globox")


def load(work: Path) -> list[dict]:
    path = work / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def medians(rows: list[dict]) -> dict[tuple, dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["suite"], r["corpus"], r["tool"])].append(r)
    out = {}
    for key, rs in groups.items():
        ok = [r for r in rs if r["exit"] == 0]
        use = ok or rs
        out[key] = {
            "runs": len(use),
            "failed": len(rs) - len(ok),
            "bytes": use[0]["bytes"],
            "annotations": use[0]["annotations"],
            **{k: statistics.median(r[k] for r in use)
               for k in ("wall_s", "peak_rss_mb", "peak_pss_mb", "peak_uss_mb", "cpu_s", "load")},
        }  # fmt: skip
    return out


def paired_ratio(rows: list[dict], suite: str, corpus: str, num: str, den: str, key: str):
    """Median over rounds of num/den measured in the same round."""
    by_round: dict[int, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["suite"] == suite and r["corpus"] == corpus and r["exit"] == 0:
            by_round[r["round"]][r["tool"]] = r[key]
    vals = [v[num] / v[den] for v in by_round.values() if num in v and den in v and v[den]]
    return (statistics.median(vals), len(vals)) if vals else (None, 0)


def table(rows: list[dict], med: dict) -> str:
    lines = []
    for suite, corpus in dict.fromkeys((k[0], k[1]) for k in med):
        keys = [k for k in med if k[:2] == (suite, corpus)]
        m0 = med[keys[0]]
        lines.append(
            f"\n### {suite}: {corpus} ({m0['bytes'] / 1e6:,.0f} MB"
            + (f", {m0['annotations']:,} annotations)" if m0["annotations"] else ")")
        )
        lines.append("")
        lines.append("| tool | runs | wall s | peak tree RSS MB | tree PSS MB | tree USS MB "
                     "| CPU s | ann/s | MB/s | load |")  # fmt: skip
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for k in sorted(keys, key=lambda k: med[k]["wall_s"]):
            m = med[k]
            aps = f"{m['annotations'] / m['wall_s'] / 1e3:,.0f}k" if m["annotations"] else ""
            failed = f" ({m['failed']} failed)" if m["failed"] else ""
            lines.append(
                f"| {k[2]} | {m['runs']}{failed} | {m['wall_s']:.2f} | {m['peak_rss_mb']:,.0f} "
                f"| {m['peak_pss_mb']:,.0f} | {m['peak_uss_mb']:,.0f} | {m['cpu_s']:.1f} | {aps} "
                f"| {m['bytes'] / 1e6 / m['wall_s']:.1f} | {m['load']:.1f} |"
            )
        ratios = []
        for num, den in RATIOS:
            r, n = paired_ratio(rows, suite, corpus, num, den, "wall_s")
            if r is not None:
                ratios.append(f"- {num} / {den}, wall: **{r:.2f}x** ({n} rounds)")
        for peer in PEERS:
            for ours in ("labelflow_parquet", "labelflow_yolo"):
                for key, what in (("peak_rss_mb", "RSS"), ("peak_pss_mb", "PSS")):
                    r, _ = paired_ratio(rows, suite, corpus, peer, ours, key)
                    if r is not None:
                        ratios.append(f"- {peer} / {ours}, peak tree {what}: {r:.2f}x")
        if ratios:
            lines.append("")
            lines.extend(ratios)
    return "\n".join(lines) + "\n"


def plot(med: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for (suite, _, tool), m in med.items():
        if suite == "coco" and not m["failed"]:
            series[tool].append((m["bytes"] / 1e6, m["wall_s"], m["peak_rss_mb"]))
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.5))
    colors = plt.get_cmap("tab20").colors
    for n, (tool, pts) in enumerate(sorted(series.items())):
        pts.sort()
        xs = [p[0] for p in pts]
        ours = tool.startswith("labelflow")
        style = {"linestyle": "-" if ours else "--", "marker": "o" if ours else "s",
                 "color": colors[(2 * n) % 20 + (n // 10) % 2], "markersize": 4,
                 "linewidth": 2 if ours else 1.2, "label": tool}  # fmt: skip
        ax_t.plot(xs, [p[1] for p in pts], **style)
        ax_m.plot(xs, [p[2] for p in pts], **style)
    for ax, title, unit in ((ax_t, "wall time", "seconds"), (ax_m, "peak RSS, whole tree", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("COCO input size (MB)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.legend(fontsize=8, loc="upper left")
    fig.suptitle("COCO instances -> YOLO / Parquet (medians; output on tmpfs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(work: str | Path = "bench-work") -> None:
    work = Path(work)
    rows = load(work)
    med = medians(rows)
    (work / "summary.md").write_text(table(rows, med))
    print((work / "summary.md").read_text())
    try:
        plot(med, work / "scaling.png")
    except ImportError as exc:
        print(f"# no plot: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-work")
