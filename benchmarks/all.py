"""The whole benchmark suite in one command: CNNs vs peers (run.py), sequence models (run_seq.py), LiteRT
(tflite_bench.py), the test zoo through the CLI (run_zoo.py), then one summary page that stitches their Markdown
tables together.

    python benchmarks/all.py            # ≈ 50 min on 2 cores
    python benchmarks/all.py --quick    # ≈ 30 min; CNN, sequence and zoo suites in their quick modes

Each suite runs in its own process (they measure in fresh processes anyway; a crash in one does not lose
the others' results) and writes its own results/<machine>/*.json; the summary goes to
results/<machine>/summary.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (script, extra args for --quick, the Markdown page it writes)
SUITES = [
    ("run.py", ["--quick"], "latest.md"),
    ("run_seq.py", ["--quick"], "seq-latest.md"),
    ("tflite_bench.py", ["--rounds", "3", "--iters", "10"], "tflite-latest.md"),
    ("run_zoo.py", ["--quick"], "zoo-latest.md"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs of every suite")
    parser.add_argument("--summary-only", action="store_true", help="only stitch the pages the suites last wrote")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE.parent))
    from compress.runtime import machine_slug

    results = HERE / "results" / machine_slug()
    failed = []
    for script, quick_args, _ in [] if args.summary_only else SUITES:
        cmd = [sys.executable, str(HERE / script), *(quick_args if args.quick else [])]
        print(f"== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(script)
        print(f"== {script} took {time.perf_counter() - t0:.0f} s", flush=True)

    parts = [f"# Benchmark summary: {machine_slug()}\n",
             "Stitched by `python benchmarks/all.py` from the pages each suite wrote.\n"]
    for script, _, page in SUITES:
        # quick runs of run.py / run_seq.py keep the full pages untouched and write *-quick.md beside them
        quick_page = results / page.replace(".md", "-quick.md")
        path = quick_page if args.quick and quick_page.exists() else results / page
        if path.exists():
            parts.append(f"\n---\n\n<!-- from {path.name} ({script}) -->\n")
            parts.append(path.read_text())
    summary = results / ("summary-quick.md" if args.quick else "summary.md")
    summary.write_text("\n".join(parts))
    print(f"wrote {summary.relative_to(HERE.parent)}")
    if failed:
        print(f"error: {', '.join(failed)} failed; see the output above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
