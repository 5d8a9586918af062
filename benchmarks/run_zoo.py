"""Zoo benchmark (issue 7): every test-zoo model through the real CLI, our int8 vs fp32 vs quantize_static.

    python benchmarks/run_zoo.py                  # full run: results/<machine>/zoo-<date>.json, zoo-latest.md
    python benchmarks/run_zoo.py --quick          # fewer rounds / runs: zoo-<date>-quick.json, zoo-latest-quick.md
    python benchmarks/run_zoo.py --models resnet,unet --rev HEAD   # a subset, a committed revision's compress

For each model of tests/zoo (trained and cached by tests/zoo/train.py):

* ``compress quantize MODEL --arch tests.zoo.models:CLS --format onnx,tflite`` in its own process, exactly as
  scripts/zoo_status.py runs it (tests/zoo/harness.py): our int8 ONNX / TFLite and the fp32 files the
  pipeline writes beside them, judged in onnxruntime / LiteRT (task metric, size, int8 coverage).
* the peer: onnxruntime's ``quantize_static`` on that fp32 ONNX (QDQ, per-channel, QUInt8 activations, QInt8
  weights, MinMax, after ``quant_pre_process``), calibrated on the same inputs as the CLI; its metric and size.
* latency at 1 thread, batch 1: fp32 ONNX, ours, peer, fp32 TFLite, our int8 TFLite; one fresh process per
  measurement (compress.runtime.run_isolated), contenders alternated round by round (compare_interleaved),
  ratios paired within each round, ± half their range (the noise estimate). Then the three ONNX files again at
  each larger ``--batches`` size (default 8; the TFLite files have batch 1 fixed): a small model's int8/fp32
  ratio differs between batch 1 (per-node overheads) and batch 8 (the kernels). Where ours/fp32 > 1, both
  files are profiled in onnxruntime (per-node kernel time, zoo_latency.py) and the nodes that make the
  difference are named in the notes.
* capture time: ``compress.capture.capture`` (torch.export + raising) in a fresh process, first call and again.

A model that fails anywhere stays in the table with its first error line. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
SCHEMA_VERSION = 1

_T0 = time.perf_counter()
sys.path.insert(0, str(HERE))  # zoo_latency, here and in the measurement children
from zoo_latency import measure_profile, profile_cause, tile_batch  # noqa: E402, F401 (children: run_zoo:...)
from zoo_report import (  # noqa: E402
    FP32,
    FP32_TFL,
    OURS,
    OURS_TFL,
    PEER,
    PEER_SETTINGS,
    RATIOS,
    goal_verdict,
    latencies,
    render_markdown,
)


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def first_line(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[0] if lines else text)[:300]


# ------------------------------------------------------------------------------------ measurement children
# These run in fresh processes (compress.runtime.run_isolated imports them as "run_zoo:NAME").


def measure_tflite(path: str, inputs: str, threads: int = 1, warmup: int = 10, runs: int = 50,
                   seconds: float | None = None) -> dict:
    """One LiteRT interpreter (XNNPACK, the default delegate) timed like measure_onnx: bare ``invoke`` loop.

    ``inputs``: an ``.npz`` with ``in0``, ``in1``, ... in the interpreter's input order (float values; int8
    inputs are quantized with the file's own parameters). At least ``runs`` timed runs, and at least
    ``seconds`` of timed wall time when given (the zoo's models take tens of microseconds).
    """
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from compress.runtime.onnx_runner import peak_rss_bytes
    from compress.runtime.stats import LatencyStats

    t0 = time.perf_counter()
    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    create_s = time.perf_counter() - t0
    with np.load(inputs) as npz:
        arrays = [npz[f"in{i}"] for i in range(len(npz.files))]
    for d, x in zip(interp.get_input_details(), arrays, strict=True):
        scale, zero = d["quantization"]
        if d["dtype"] in (np.int8, np.uint8) and scale:
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max)
        interp.set_tensor(d["index"], np.ascontiguousarray(x.astype(d["dtype"]).reshape(d["shape"])))
    invoke = interp.invoke
    for _ in range(warmup):
        invoke()
    samples: list[float] = []
    clock = time.perf_counter
    start = clock()
    while len(samples) < runs or (seconds is not None and clock() - start < seconds):
        t = clock()
        invoke()
        samples.append(clock() - t)
    return {"latency": LatencyStats.from_seconds(samples).to_dict(), "samples_s": samples,
            "session_create_s": create_s, "peak_rss_bytes": peak_rss_bytes(), "threads": threads,
            "file_bytes": os.path.getsize(path)}


def measure_capture(name: str, repeats: int = 2) -> dict:
    """``compress.capture.capture`` of zoo model ``name`` in this fresh process: the first call (what a user's
    ``compress quantize`` pays, torch.export's one-time set-up included) and the following ones."""
    import torch

    torch.set_num_threads(1)
    from compress.capture import capture
    from tests.zoo.train import train_result

    trained = train_result(name)
    example = trained.calib.take(1).tensors()  # the pipeline's example: the first calibration sample
    seconds, nodes = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        gm = capture(trained.model, example)
        seconds.append(time.perf_counter() - t0)
        nodes = sum(1 for _ in gm.graph.nodes)
    return {"seconds": seconds, "graph_nodes": nodes,
            "parameters": sum(p.numel() for p in trained.model.parameters()),
            "input_shapes": [list(t.shape) for t in example]}


# ------------------------------------------------------------------------------------ building / judging


def onnx_feeds(path: Path, split, batch: int = 1) -> dict:
    """The split's inputs as ``{onnx input name: array}`` with the file's dtypes, at the file's batch (``batch``
    when dynamic): the same name-or-order rule as tests/zoo/harness.run_onnx."""
    import numpy as np
    import onnxruntime as ort

    from tests.zoo.harness import _feeds

    dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(bool)": np.bool_, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}
    ins = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    batch = ins[0].shape[0] if isinstance(ins[0].shape[0], int) else batch
    arrays = _feeds([i.name for i in ins], split)
    return tile_batch({i.name: a.astype(dtypes.get(i.type, a.dtype)) for i, a in zip(ins, arrays, strict=True)},
                      batch)


def fixed_batch(path: Path) -> int | None:
    """The batch an ONNX file's first input fixes (None when dynamic)."""
    import onnxruntime as ort

    dim = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) else None


def tflite_feeds(path: Path, split) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    from tests.zoo.harness import _feeds

    details = Interpreter(model_path=str(path)).get_input_details()
    arrays = _feeds([d["name"] for d in details], split)
    if len(arrays) != len(details):
        arrays = list(split.inputs.values())
    return {f"in{i}": a[:1] for i, a in enumerate(arrays)}


def quantize_peer(fp32: Path, calib, out_dir: Path) -> dict:
    """onnxruntime's quantize_static on the pipeline's fp32 ONNX, calibrated on the CLI's calibration inputs."""
    import numpy as np
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tests.zoo.harness import _feeds

    ins = onnxruntime.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()
    fixed = isinstance(ins[0].shape[0], int)
    step = ins[0].shape[0] if fixed else 32  # a fixed batch as the file has it; else the CLI's batch of 32
    dtype = {n: a.dtype for n, a in onnx_feeds(fp32, calib).items()}
    arrays = _feeds([i.name for i in ins], calib)
    stop = len(calib) - step + 1 if fixed else len(calib)
    feeds = [{i.name: np.ascontiguousarray(a[k:k + step].astype(dtype[i.name])) for i, a in zip(ins, arrays, strict=True)}
             for k in range(0, stop, step)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    t0 = time.perf_counter()
    pre, path = out_dir / "peer_preprocessed.onnx", out_dir / "peer_ort_int8.onnx"
    notes = []
    try:
        with contextlib.chdir(out_dir.resolve()):  # its shape inference writes temp files into the working directory
            quant_pre_process(str(fp32.resolve()), str(pre.resolve()))
        src = pre
    except Exception as exc:  # noqa: BLE001 - quantize the file as it is, and say so
        notes.append(f"quant_pre_process failed ({first_line(exc)}); quantized without it")
        src = fp32
    quantize_static(str(src), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"path": str(path), "build_s": time.perf_counter() - t0, "bytes": path.stat().st_size,
            "tool": f"onnxruntime.quantization.quantize_static {onnxruntime.__version__}",
            "settings": PEER_SETTINGS, "calibration_batches": len(feeds), "notes": notes}


def _op_histogram(path: Path) -> dict[str, int] | str:
    """Node counts by op type (what the runtime sees before its own fusions): why a small int8 file is slow."""
    try:
        import onnx

        hist: dict[str, int] = {}
        for node in onnx.load(str(path), load_external_data=False).graph.node:
            hist[node.op_type] = hist.get(node.op_type, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: -kv[1]))
    except Exception as exc:  # noqa: BLE001
        return first_line(exc)


def _format_dir(run, workdir: Path, fmt: str) -> Path:
    # The harness writes the joint run to out/; when it failed, each format was re-run into out_<fmt>/.
    return workdir / ("out" if run.rc == 0 else f"out_{fmt}")


def bench_model(name: str, args, root: Path) -> dict:
    import numpy as np

    from compress.runtime import Contender, compare_interleaved, run_isolated
    from tests.zoo.data import METRICS
    from tests.zoo.harness import COVERAGE, ZooRun, _file_bytes, measure_format, run_onnx, run_zoo_model
    from tests.zoo.train import ZOO, train_result

    entry = ZOO[name]
    workdir = args.build_dir / name
    shutil.rmtree(workdir, ignore_errors=True)  # no file of an earlier run may be measured as this run's
    res: dict = {"name": name, "arch": entry.arch, "metric": entry.metric, "errors": {}}
    t0 = time.perf_counter()

    log(f"== {name}: capture time (fresh process)")
    try:
        res["capture_time"] = run_isolated("run_zoo:measure_capture", {"name": name}, timeout=args.timeout)
        log(f"   capture {', '.join(f'{s:.2f}' for s in res['capture_time']['seconds'])} s, "
            f"{res['capture_time']['parameters']} parameters")
    except Exception as exc:  # noqa: BLE001 - a model torch.export cannot take is a finding, not a crash
        res["errors"]["capture"] = first_line(str(exc))
        log(f"   capture failed: {res['errors']['capture']}")

    log(f"== {name}: compress quantize --format onnx,tflite (CLI, own process)")
    try:
        trained = train_result(name)
        res["training"] = {"metric": trained.metric, "target": entry.target, "train_s": trained.train_s,
                           "cached": trained.cached}
        res["parameters"] = sum(p.numel() for p in trained.model.parameters())
        run = run_zoo_model(name, workdir, timeout=args.timeout, root=root, split_on_failure=not args.no_split)
    except Exception as exc:  # noqa: BLE001 - the harness itself broke on this model
        traceback.print_exc(file=sys.stderr)
        run = ZooRun(name=name, arch=entry.arch, metric=entry.metric,
                     error=f"harness: {first_line(exc)}")
    res["cli"] = run.to_dict()
    res["cli"]["first_error"] = next((e for e in [run.error] + [f"[{f}] {r.error}" for f, r in run.formats.items()
                                                                 if r.error] if e), None)
    log(f"   rc={run.rc} in {run.seconds:.0f} s" + (f": {res['cli']['first_error']}" if res["cli"]["first_error"]
                                                     else ""))
    if "training" not in res:
        res["seconds"] = time.perf_counter() - t0
        return res
    test = trained.test.take(400)  # what the harness judges on
    metric = METRICS[entry.metric]

    files: dict[str, Path] = {}
    onnx_dir, tfl_dir = _format_dir(run, workdir, "onnx"), _format_dir(run, workdir, "tflite")
    # workdir was emptied first, so every file here is this run's: a run that wrote its files and then failed
    # (verification, the quality check) is still measured, and flagged in the table.
    for key, path in ((FP32, onnx_dir / "model_fp32.onnx"), (OURS, onnx_dir / "model.onnx"),
                      (FP32_TFL, tfl_dir / "model_fp32.tflite"), (OURS_TFL, tfl_dir / "model.tflite")):
        if path.is_file():
            files[key] = path
    for fmt, ours, fp32, where in (("onnx", OURS, FP32, onnx_dir), ("tflite", OURS_TFL, FP32_TFL, tfl_dir)):
        judged = run.formats.get(fmt)
        if ours in files and fp32 in files and (judged is None or not judged.written):
            # Written, then the CLI failed (verification, quality): judge the files as the harness would.
            try:
                fr = asdict(measure_format(fmt, where, test, entry.metric, None))
                fr.update(written=False, files_written_but_cli_failed=True)
                res["cli"]["formats"][fmt] = dict(res["cli"]["formats"].get(fmt) or {}, **fr,
                                                  error=(judged.error if judged else None))
            except Exception as exc:  # noqa: BLE001
                res["errors"][f"judging {fmt}"] = first_line(exc)
    if FP32 in files:
        log(f"== {name}: peer quantize_static on the pipeline's fp32 ONNX")
        try:
            peer = quantize_peer(files[FP32], trained.calib, workdir)
            peer["metric"] = float(metric(run_onnx(Path(peer["path"]), test), test.y))
            try:
                cov = COVERAGE["onnx"](Path(peer["path"]))
                peer["coverage"] = {"int8": cov.int8, "total": cov.total, "float_ops": cov.float_ops}
            except Exception as exc:  # noqa: BLE001
                peer["coverage_error"] = first_line(exc)
            res["peer"] = peer
            files[PEER] = Path(peer["path"])
            log(f"   peer {entry.metric} {peer['metric']:.3f}, {peer['bytes'] / 1024:.0f} KiB")
        except Exception as exc:  # noqa: BLE001 - "where it works"
            res["errors"]["peer"] = first_line(exc)
            log(f"   peer failed: {res['errors']['peer']}")
    elif run.rc == 0:
        res["errors"]["peer"] = "no fp32 ONNX written by the pipeline"
    res["bytes"] = {k: _file_bytes(p) for k, p in files.items()}
    res["onnx_ops"] = {k: _op_histogram(p) for k, p in files.items() if k.endswith("onnx")}

    # Latency: every file that exists, one comparison, batch 1, 1 thread.
    contenders = []
    feeds_dir = workdir / "feeds"
    feeds_dir.mkdir(parents=True, exist_ok=True)
    common = {"threads": 1, "warmup": args.warmup, "runs": args.runs, "seconds": args.seconds}
    for key in (k for k in (FP32, OURS, PEER, FP32_TFL, OURS_TFL) if k in files):
        path = files[key]
        try:
            npz = feeds_dir / f"{key}.npz"
            if key.endswith("onnx"):
                np.savez(npz, **onnx_feeds(path, test))
                contenders.append(Contender(key, "measure_onnx", {"path": str(path), "inputs": str(npz), **common}))
            else:
                np.savez(npz, **tflite_feeds(path, test))
                contenders.append(Contender(key, "run_zoo:measure_tflite",
                                            {"path": str(path), "inputs": str(npz), **common}))
        except Exception as exc:  # noqa: BLE001
            res["errors"][f"latency {key}"] = first_line(exc)
    # A file that cannot run once must not abort the comparison: probe each contender in its own process.
    runnable = []
    for c in contenders:
        try:
            run_isolated(c.fn, dict(c.kwargs, warmup=0, runs=1, seconds=None), timeout=args.timeout)
            runnable.append(c)
        except Exception as exc:  # noqa: BLE001
            res["errors"][f"latency {c.name}"] = first_line(str(exc))
    if runnable:
        log(f"== {name}: latency, 1 thread, {args.rounds} interleaved rounds of {[c.name for c in runnable]}")
        comp = compare_interleaved(runnable, rounds=args.rounds,
                                   progress=lambda d, t, n: log(f"    [{d}/{t}] {n}") if args.verbose else None)
        names = [c.name for c in runnable]
        ratios = {}
        for num, den in RATIOS:
            if num in names and den in names:
                ratios[f"{num}/{den}"] = {"median": comp.ratio(num, den).to_dict(),
                                          "min": comp.ratio(num, den, statistic="min").to_dict()}
                r = ratios[f"{num}/{den}"]
                log(f"   {num}/{den} = {r['median']['ratio']:.3f} ± {r['median']['noise']:.3f}; by minima "
                    f"{r['min']['ratio']:.3f} ± {r['min']['noise']:.3f}")
        res["latency"] = {"comparison": comp.to_dict(), "ratios": ratios}
    res["latency_batches"] = {}
    onnx_files = [k for k in (FP32, OURS, PEER) if k in files and any(c.name == k for c in runnable)]
    for batch in (b for b in args.batches if b > 1):
        res["latency_batches"][str(batch)] = _batch_latency(name, files, onnx_files, batch, test, feeds_dir,
                                                            common, args)
    res["causes"] = _miss_causes(res, files, test, feeds_dir, args)
    res["seconds"] = time.perf_counter() - t0
    return res


def _batch_latency(name: str, files: dict, keys: list[str], batch: int, test, feeds_dir: Path, common: dict,
                   args) -> dict:
    """The ONNX contenders interleaved at ``batch`` (dynamic-batch files only), paired ratios as at batch 1."""
    import numpy as np

    from compress.runtime import Contender, compare_interleaved

    fixed = [k for k in keys if fixed_batch(files[k]) is not None]
    keys = [k for k in keys if k not in fixed]
    out: dict = {"batch": batch, "fixed_batch_skipped": fixed}
    if OURS not in keys or FP32 not in keys:
        out["error"] = f"ours and fp32 ONNX need a dynamic batch to run at batch {batch}"
        return out
    contenders = []
    for key in keys:
        npz = feeds_dir / f"{key}_b{batch}.npz"
        np.savez(npz, **onnx_feeds(files[key], test, batch))
        contenders.append(Contender(key, "measure_onnx", {"path": str(files[key]), "inputs": str(npz), **common,
                                                          "batch": batch}))
    log(f"== {name}: latency, 1 thread, batch {batch}, {args.rounds} interleaved rounds of {keys}")
    try:
        comp = compare_interleaved(contenders, rounds=args.rounds,
                                   progress=lambda d, t, n: log(f"    [{d}/{t}] {n}") if args.verbose else None)
    except Exception as exc:  # noqa: BLE001 - the batch-1 figures stand
        out["error"] = first_line(exc)
        return out
    ratios = {}
    for num, den in RATIOS:
        if num in keys and den in keys:
            ratios[f"{num}/{den}"] = {"median": comp.ratio(num, den).to_dict(),
                                      "min": comp.ratio(num, den, statistic="min").to_dict()}
            r = ratios[f"{num}/{den}"]
            log(f"   b{batch} {num}/{den} = {r['median']['ratio']:.3f} ± {r['median']['noise']:.3f}")
    out.update(comparison=comp.to_dict(), ratios=ratios)
    return out


def _miss_causes(res: dict, files: dict, test, feeds_dir: Path, args) -> dict:
    """{batch: one line from both files' onnxruntime profiles} for each batch where ours/fp32 > 1."""
    import numpy as np

    from compress.runtime import run_isolated

    causes = {}
    for batch, lat in latencies(res).items():
        r = lat["ratios"].get(f"{OURS}/{FP32}")
        if not r or r["median"]["ratio"] <= 1.0:
            continue
        try:
            prof = {}
            for key in (OURS, FP32):
                npz = feeds_dir / f"{key}_profile_b{batch}.npz"
                np.savez(npz, **onnx_feeds(files[key], test, batch))
                prof[key] = run_isolated("run_zoo:measure_profile", {"path": str(files[key]), "inputs": str(npz)},
                                         timeout=args.timeout)
            causes[str(batch)] = profile_cause(prof[OURS], prof[FP32])
        except Exception as exc:  # noqa: BLE001 - the ratio stands without its cause
            causes[str(batch)] = f"profile failed: {first_line(str(exc))}"
        log(f"   b{batch} MISS: {causes[str(batch)]}")
    return causes


# ------------------------------------------------------------------------------------ main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and runs")
    p.add_argument("--models", help="comma-separated subset of the zoo (default: all)")
    p.add_argument("--rev", help="run the compress package of this git revision (stable while others edit)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 3)")
    p.add_argument("--runs", type=int, help="timed runs per measurement process (default 100; quick 50)")
    p.add_argument("--warmup", type=int, help="untimed warm-up runs per process (default 10; quick 5)")
    p.add_argument("--seconds", type=float, help="and at least this much timed wall time per process "
                   "(default 0.3; quick 0.2)")
    p.add_argument("--batches", default="1,8", help="batch sizes the ONNX files are timed at, comma-separated "
                   "(batch 1 always; TFLite at batch 1 only) [1,8]")
    p.add_argument("--timeout", type=float, default=420, help="seconds per CLI run / measurement process [420]")
    p.add_argument("--no-split", action="store_true", help="when the joint onnx,tflite run fails, do not re-run "
                   "each format alone (faster; the table then has the joint run's error only)")
    p.add_argument("--build-dir", type=Path, default=HERE / "_build" / "zoo", help="where the files go")
    p.add_argument("--results-dir", type=Path, default=HERE / "results", help="root of the results tree")
    p.add_argument("--no-save", action="store_true", help="print the Markdown only")
    p.add_argument("--verbose", action="store_true", help="log every latency measurement")
    p.add_argument("--render", type=Path, metavar="JSON", help="only re-write the Markdown of a saved zoo-*.json")
    a = p.parse_args(argv)
    a.rounds = a.rounds or (3 if a.quick else 5)
    a.runs = a.runs or (50 if a.quick else 100)
    a.warmup = a.warmup if a.warmup is not None else (5 if a.quick else 10)
    a.seconds = a.seconds if a.seconds is not None else (0.2 if a.quick else 0.3)
    if a.rounds < 1 or a.runs < 1 or a.warmup < 0:
        p.error("--rounds and --runs must be ≥ 1, --warmup ≥ 0")
    try:
        a.batches = sorted({1, *(int(b) for b in a.batches.split(",") if b.strip())})
    except ValueError:
        p.error(f"--batches takes comma-separated integers, e.g. 1,8; got {a.batches!r}")
    if a.batches[0] < 1:
        p.error("--batches must be ≥ 1")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
        md = render_markdown(report)
        page = "zoo-latest-quick.md" if report["quick"] else "zoo-latest.md"
        (args.render.parent / page).write_text(md)
        print(md)
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp:
        root = REPO_ROOT
        if args.rev:
            sys.path.insert(1, str(REPO_ROOT))  # this checkout's tests/zoo: the zoo a --rev package runs against
            from tests.zoo.harness import extract_rev

            root = extract_rev(args.rev, Path(tmp) / "src")
        # compress and tests.zoo from `root`, here and in every measurement child (they inherit sys.path).
        sys.path.insert(1, str(root))
        from compress.runtime import machine_description, machine_slug
        from tests.zoo.train import CALIB_SAMPLES, ZOO

        names = [n.strip() for n in args.models.split(",")] if args.models else list(ZOO)
        unknown = [n for n in names if n not in ZOO]
        if unknown:
            print(f"error: unknown model(s) {', '.join(unknown)}; choose from {', '.join(ZOO)}", file=sys.stderr)
            return 2
        machine = machine_description()
        slug = machine_slug(machine)
        try:  # this checkout's commit (an extracted --rev has no .git)
            from compress.runtime.machine import git_commit

            machine["git"] = git_commit(REPO_ROOT)
        except ImportError:
            pass
        source = "working tree" if not args.rev else args.rev
        rev_sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short=10", args.rev or "HEAD"],
                                 capture_output=True, text=True).stdout.strip()
        source = f"{source} (`{rev_sha}`)"
        log(f"machine: {slug} ({machine['cpu']['model']}); compress from {source}")
        load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
        models = {}
        for name in names:
            try:
                models[name] = bench_model(name, args, root)
            except Exception as exc:  # noqa: BLE001 - never lose the other models' figures
                traceback.print_exc(file=sys.stderr)
                models[name] = {"name": name, "metric": ZOO[name].metric, "errors": {"benchmark": first_line(exc)}}
            models[name]["goal"] = goal_verdict(models[name].get("latency", {}).get("ratios", {}).get(f"{OURS}/{FP32}"))
            models[name]["goals"] = {str(b): goal_verdict(lat["ratios"].get(f"{OURS}/{FP32}"))
                                     for b, lat in latencies(models[name]).items()}
        load_end = os.getloadavg() if hasattr(os, "getloadavg") else None

    largest = slowest = None
    captured = {n: r["capture_time"] for n, r in models.items() if r.get("capture_time")}
    if captured:
        def summary(n):
            c = captured[n]
            return {"model": n, "parameters": c["parameters"], "first_s": c["seconds"][0], "again_s": c["seconds"][-1]}

        largest = summary(max(captured, key=lambda n: captured[n]["parameters"]))
        slowest = summary(max(captured, key=lambda n: captured[n]["seconds"][0]))
    report = {"schema_version": SCHEMA_VERSION, "date": dt.date.today().isoformat(), "quick": args.quick,
              "machine_slug": slug, "machine": machine, "source": source, "rev": args.rev,
              "config": {"rounds": args.rounds, "runs": args.runs, "seconds": args.seconds, "warmup": args.warmup,
                         "threads": 1, "batch": 1, "batches": args.batches,
                         "models": names, "timeout_s": args.timeout,
                         "split_on_failure": not args.no_split},
              "calib_samples": CALIB_SAMPLES, "peer_settings": PEER_SETTINGS, "models": models,
              "largest_model_capture": largest, "slowest_capture": slowest, "load_average": {"start": load_start, "end": load_end},
              "wall_s": time.perf_counter() - t0}
    md = render_markdown(report)
    print(md)
    if not args.no_save:
        out = args.results_dir / slug
        out.mkdir(parents=True, exist_ok=True)
        stem = f"zoo-{report['date']}" + ("-quick" if args.quick else "")
        (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (out / ("zoo-latest-quick.md" if args.quick else "zoo-latest.md")).write_text(md)
        log(f"wrote {out / (stem + '.json')}")
    log(f"done in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
