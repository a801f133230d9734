"""Run every bench script and write bench/RESULTS.md (table + machine) and bench/out/results.jsonl.

Usage: bench/run_all [--quick] [--only NAME ...]   (run with the project's Python, e.g. .venv/bin/python bench/run_all)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("geodesic_fast", "geodesic_2d", "geodesic_exact", "data_path", "inference", "solvers")
TARGETS = {
    "geodesic_fast_3d": ("ratio <= 2 and max_dev <= 0.05", lambda r: r["ratio"] <= 2 and r["max_dev"] <= 0.05),
    "geodesic_fast_2d": ("value < 50 ms", lambda r: r["value"] < 50),
    "geodesic_exact_3d": ("ratio <= 1.1", lambda r: r["ratio"] <= 1.1),
    "data_path": ("ratio <= 1.0", lambda r: r["ratio"] <= 1.0),
    "solver_tv": ("ratio <= 0.5", lambda r: r["ratio"] <= 0.5),
    "solver_elastica": ("ratio <= 0.5", lambda r: r["ratio"] <= 0.5),
}
for _net in ("lits", "spect", "lung"):
    TARGETS[f"inference_{_net}"] = ("ratio >= 2, peak RSS <= 2048 MB, Dice >= 0.995",
                                    lambda r: r["ratio"] >= 2 and r["peak_rss_mb"] <= 2048
                                    and r["dice_fp32_vs_fast"] >= 0.995)


def machine() -> dict:
    import numpy
    import torch

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cores": os.cpu_count(), "cpu": model, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "numpy": numpy.__version__, "python": platform.python_version(),
            "load": " / ".join(f"{x:.2f}" for x in load)}


def run(script: str, quick: bool) -> tuple[list[dict], float, str]:
    cmd = [sys.executable, str(HERE / f"{script}.py")] + (["--quick"] if quick else [])
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", cwd=str(HERE), check=False)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    error = "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]
    return records, seconds, error


def table(records: list[dict]) -> list[str]:
    lines = ["| figure | value | unit | baseline | ratio | target | met | details |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        target, check = TARGETS.get(r["figure"], ("", None))
        try:
            met = "yes" if check and check(r) else ("no" if check else "")
        except (KeyError, TypeError):
            met = "?"
        extra = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("figure", "value", "unit", "baseline", "ratio"))
        lines.append(f"| {r['figure']} | {r['value']} | {r['unit']} | {r['baseline']} | {r['ratio']} | {target} | {met} "
                     f"| {extra} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run at small sizes (figures not meaningful)")
    p.add_argument("--only", nargs="+", choices=SCRIPTS, help="run only these scripts")
    p.add_argument("--output", default=str(HERE / "RESULTS.md"), help="Markdown file to write (default bench/RESULTS.md)")
    args = p.parse_args()
    info = machine()
    records, failures = [], []
    for script in args.only or SCRIPTS:
        got, seconds, error = run(script, args.quick)
        print(f"{script}: {len(got)} figure(s) in {seconds:.0f} s" + (f" FAILED: {error}" if error else ""), flush=True)
        records += got
        if error:
            failures.append(f"{script}: {error}")
    info["load_after"] = machine()["load"]
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    with open(out / "results.jsonl", "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    text = ["# Benchmark results", "",
            f"{'Quick smoke run (sizes shrunk, figures not meaningful)' if args.quick else 'Default sizes'}, "
            f"`bench/run_all{' --quick' if args.quick else ''}` on {info['date']}.", "",
            f"Machine: {info['cores']} cores, {info['cpu']}; Python {info['python']}, torch {info['torch']}, "
            f"numpy {info['numpy']}; load average (1/5/15 min) {info['load']} at the start, {info['load_after']} at "
            "the end.", "", *table(records), ""]
    if failures:
        text += ["Failed scripts:", "", *[f"- {f}" for f in failures], ""]
    notes = HERE / "NOTES.md"
    if notes.exists():
        text += [notes.read_text(encoding="utf-8").strip(), ""]
    Path(args.output).write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {args.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
