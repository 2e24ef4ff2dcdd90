#!/usr/bin/env python3
"""Run one command and measure it as a whole process tree.

    python bench/measure.py [--interval S] [--json] -- CMD ARGS...

Prints one line: wall seconds, peak RSS of the whole tree (the sum over the
command and every process it starts, sampled every 50 ms), peak PSS and USS
of the tree (sampled every 250 ms: reading them costs about 2 ms a process),
CPU seconds of the tree (user + system), and the exit status.

`/usr/bin/time` reports only the largest single process, which hides the
workers of a multi-process converter. Summing RSS counts a page shared between
processes (libraries, a forkserver's imports) once per process that maps it:
an upper bound. PSS splits a shared page between the processes mapping it, so
the tree's PSS sum counts a page shared within the tree once. USS counts
shared pages nowhere: a lower bound.

Needs psutil (the bench runner installs it into its own virtualenv).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import psutil


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def measure(cmd: list[str], interval: float = 0.05, uss_every: int = 5, **popen) -> dict:
    """Run `cmd`; return wall_s, peak_rss_mb and peak_uss_mb (tree), cpu_s (tree), exit."""
    cpu_seen: dict[int, float] = {}
    peak = peak_uss = peak_pss = 0
    before = os.times()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, **popen)
    root = psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, peak_uss, peak_pss
        tick = 0
        while not done.is_set():
            total = uss = pss = 0
            with_uss = tick % uss_every == 0
            for p in _tree(root):
                try:
                    with p.oneshot():
                        total += p.memory_info().rss
                        if with_uss:
                            full = p.memory_full_info()
                            uss += full.uss
                            pss += full.pss
                        t = p.cpu_times()
                        cpu_seen[p.pid] = t.user + t.system
                except psutil.Error:
                    continue
            peak = max(peak, total)
            peak_uss = max(peak_uss, uss)
            peak_pss = max(peak_pss, pss)
            tick += 1
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if popen.get("stderr") == subprocess.PIPE:
        _, err = proc.communicate()
        if proc.returncode:
            sys.stderr.write(err.decode(errors="replace")[-2000:])
    code = proc.wait()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    # Reaped descendants' CPU, as the kernel accounts it for this process.
    ru = os.times()
    reaped = ru.children_user + ru.children_system - before.children_user - before.children_system
    return {
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(peak / 2**20, 1),
        "peak_pss_mb": round(peak_pss / 2**20, 1),
        "peak_uss_mb": round(peak_uss / 2**20, 1),
        "cpu_s": round(max(reaped, sum(cpu_seen.values())), 2),
        "exit": code,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--json", action="store_true", help="print a JSON object")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command")
    res = measure(cmd, args.interval, stdout=subprocess.DEVNULL)
    if args.json:
        print(json.dumps(res))
    else:
        print(
            "wall_s={wall_s} peak_rss_mb={peak_rss_mb} peak_pss_mb={peak_pss_mb} "
            "peak_uss_mb={peak_uss_mb} "
            "cpu_s={cpu_s} exit={exit}".format(**res)
        )
    sys.exit(0)


if __name__ == "__main__":
    main()
