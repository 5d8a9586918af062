"""Where the zoo stands: every zoo model through ``compress quantize --format onnx,tflite``, one table.

    python scripts/zoo_status.py                      # the working tree's compress
    python scripts/zoo_status.py --rev HEAD           # a commit's compress (stable while others edit)
    python scripts/zoo_status.py --models resnet,unet --json zoo.json --keep zoo-out/

Each model is trained (cached, tests/zoo/train.py), saved as a state dict with calib.npz / test.npz, and run
through the CLI in its own process exactly as a user would (``--arch tests.zoo.models:CLS``). The files are
then judged here, in onnxruntime and LiteRT: task metric fp32 vs int8, size ratio, and whether every conv /
linear / matmul runs with an int8 kernel (tests/zoo/harness.py). A model that fails does not stop the table;
its first error line is printed. Markdown goes to stdout, the full results to ``--json``.

Exit status: 0 when the table was produced (whatever it says), 1 when the script itself could not run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.zoo.harness import FORMATS, FormatResult, ZooRun, extract_rev, run_zoo_model  # noqa: E402
from tests.zoo.train import ZOO, train_result  # noqa: E402

# Issue 7's "Done when" thresholds, shown as ✓/✗ in the table (the tests in tests/zoo/test_zoo_pipeline.py
# assert the same numbers).
MAX_SIZE_RATIO = 0.30
MAX_METRIC_DROP = 0.02


def _yes(flag: bool | None) -> str:
    return "✓" if flag else "✗"


def _fmt_cell(res: FormatResult | None) -> str:
    if res is None or not res.written:
        return "✗ not written"
    return f"{_yes(True)} written, {_yes(res.verified)} verified"


def _metric_cell(res: FormatResult | None) -> str:
    if res is None or res.int8_metric is None or res.fp32_metric is None:
        return "–"
    ok = res.int8_metric >= res.fp32_metric - MAX_METRIC_DROP
    return f"{res.fp32_metric:.3f} → {res.int8_metric:.3f} {_yes(ok)}"


def _size_cell(res: FormatResult | None) -> str:
    if res is None or res.size_ratio is None:
        return "–"
    return f"{100 * res.size_ratio:.0f} % {_yes(res.size_ratio <= MAX_SIZE_RATIO)}"


def _coverage_cell(res: FormatResult | None) -> str:
    if res is None or res.coverage is None:
        return "–"
    c = res.coverage
    text = f"{c.int8}/{c.total} {_yes(c.all_int8)}"
    if c.float_ops:
        shown = ", ".join(c.float_ops[:3]) + (", …" if len(c.float_ops) > 3 else "")
        text += f" (float: {shown})"
    return text


def _capture_cell(run: ZooRun) -> str:
    if run.capture is None:
        return "–"
    if not run.float_ops:
        return f"{run.capture}; float ops: none"
    ops = sorted({str(f.get("op", f.get("name"))) for f in run.float_ops})
    return f"{run.capture}; float ops: {', '.join(ops[:4])}{', …' if len(ops) > 4 else ''}"


def _error_cell(run: ZooRun) -> str:
    errors = [run.error] + [f"[{fmt}] {res.error}" for fmt, res in run.formats.items() if res.error]
    first = next((e for e in errors if e), "")
    return first.replace("|", "\\|")[:300]


def passes(run: ZooRun) -> bool:
    """Issue 7's Done-when for one model (both formats): written, verified, all int8, ≤ 30 %, metric kept."""
    if run.rc != 0:
        return False
    for fmt in FORMATS:
        r = run.formats.get(fmt)
        if r is None or not (r.written and r.verified and r.coverage and r.coverage.all_int8):
            return False
        if r.size_ratio is None or r.size_ratio > MAX_SIZE_RATIO or r.int8_metric is None:
            return False
        if r.int8_metric < r.fp32_metric - MAX_METRIC_DROP:
            return False
    return True


def markdown(runs: list[ZooRun], header: str) -> str:
    cols = ["model", "done", "captured (float ops)", "ONNX", "TFLite", "metric ONNX fp32 → int8",
            "metric TFLite fp32 → int8", "size int8/fp32 ONNX · TFLite", "conv/linear/matmul int8 ONNX",
            "… TFLite", "first error"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for run in runs:
        on, tf = run.formats.get("onnx"), run.formats.get("tflite")
        cells = [f"{run.name} ({run.metric})", _yes(passes(run)), _capture_cell(run), _fmt_cell(on), _fmt_cell(tf),
                 _metric_cell(on), _metric_cell(tf), f"{_size_cell(on)} · {_size_cell(tf)}", _coverage_cell(on),
                 _coverage_cell(tf), _error_cell(run)]
        lines.append("| " + " | ".join(cells) + " |")
    done = sum(passes(r) for r in runs)
    lines += ["", f"{done} of {len(runs)} models meet issue 7's Done-when (both formats written and verified, "
              f"every conv/linear/matmul int8, size ≤ {100 * MAX_SIZE_RATIO:.0f} %, int8 metric within "
              f"{MAX_METRIC_DROP} of fp32)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help=f"comma-separated subset of: {', '.join(ZOO)}")
    ap.add_argument("--rev", help="run the compress package of this git revision instead of the working tree")
    ap.add_argument("--json", type=Path, help="write every run's full results here")
    ap.add_argument("--keep", type=Path, help="keep each model's inputs and outputs under this directory")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per CLI run [600]")
    args = ap.parse_args(argv)

    names = [n.strip() for n in args.models.split(",")] if args.models else list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(ZOO)}")

    # Resolve the revision once: others commit while the table runs, and the header must name what ran.
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", f"{args.rev or 'HEAD'}^{{commit}}"],
                          capture_output=True, text=True).stdout.strip()
    if args.rev and not head:
        ap.error(f"--rev {args.rev}: not a commit of {REPO_ROOT}")
    with tempfile.TemporaryDirectory(prefix="zoo-status-") as tmp:
        root = REPO_ROOT
        if args.rev:
            root = extract_rev(head, Path(tmp) / "src")
        work = args.keep or Path(tmp) / "runs"
        runs: list[ZooRun] = []
        training: dict[str, dict] = {}
        for name in names:
            t0 = time.perf_counter()
            try:
                tr = train_result(name)
                training[name] = {"metric": tr.metric, "target": ZOO[name].target, "train_s": tr.train_s,
                                  "cached": tr.cached}
                run = run_zoo_model(name, work / name, timeout=args.timeout, root=root)
            except Exception as exc:  # the harness itself broke on this model: record it, go on with the rest
                run = ZooRun(name=name, arch=ZOO[name].arch, metric=ZOO[name].metric,
                             error=f"harness: {type(exc).__name__}: {exc}".splitlines()[0])
                run.seconds = time.perf_counter() - t0
                traceback.print_exc(file=sys.stderr)
            print(f"{name}: {'pass' if passes(run) else 'pending'} ({run.seconds:.0f} s)", file=sys.stderr, flush=True)
            runs.append(run)

    rev = args.rev or "working tree"
    where = f"{rev} ({head})" if args.rev else f"the working tree (on {head})"
    header = f"### Zoo status — compress from {where}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    print(markdown(runs, header))
    print("\nTraining (float, test split): " + "; ".join(
        f"{n} {t['metric']:.3f} (target {t['target']}, {t['train_s']:.1f} s{', cached' if t['cached'] else ''})"
        for n, t in training.items()))
    if args.json:
        args.json.write_text(json.dumps({"rev": rev, "commit": head, "training": training,
                                         "runs": [dict(r.to_dict(), passes=passes(r)) for r in runs]},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
