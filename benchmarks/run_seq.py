"""Sequence-model benchmark (issue 4): a small BERT-shaped encoder and a 2-layer LSTM, batch 1 and 8, 1 thread.

    python benchmarks/run_seq.py            # full run (~8 min on 2 cores): results/<machine>/seq-<date>.json
    python benchmarks/run_seq.py --quick    # a couple of minutes; writes seq-<date>-quick.json

Contenders per model and batch: fp32 ONNX (our exporter), our int8 ONNX (prepare → calibrate → convert →
export_onnx), onnxruntime's quantize_dynamic on the same fp32 file, torch eager fp32, and torch.ao's
quantize_dynamic (deprecated upstream; a reference point only). Every measurement is a fresh process
(compress.runtime.run_isolated), contenders alternate round by round (compare_interleaved), ratios are
paired within each round. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(1, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from artifacts import Artifact, agreement, onnx_opsets  # noqa: E402
from nets import spread_head  # noqa: E402

from compress.runtime import Contender, compare_interleaved, machine_description, machine_slug  # noqa: E402

SCHEMA_VERSION = 1
AO_NAME = "torch_ao_dynamic_DEPRECATED_upstream"
FP32, OURS, PEER, EAGER = "fp32_onnx", "ours_int8", "peer_ort_dynamic", "torch_eager"
LABELS = {FP32: "fp32 ONNX (compress exporter)", OURS: "ours int8 ONNX (compress)",
          PEER: "onnxruntime quantize_dynamic (QInt8, per-channel)", EAGER: "torch eager fp32",
          AO_NAME: "torch.ao quantize_dynamic qint8 (DEPRECATED upstream)"}

# Model shapes: BERT-tiny-like encoder over 32 tokens; LSTM over 50 frames of 40 features.
SEQ_LEN, LSTM_STEPS, LSTM_FEATURES = 32, 50, 40
# 10 classes for BERT too (its default is 2), so top-1 agreement is a less coarse proxy.
MODEL_KWARGS = {"bert": {"num_classes": 10}, "lstm": {}}

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def build_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """The float model with fixed random weights (the same in every process)."""
    from compress.models import BertEncoder, LSTMClassifier

    torch.manual_seed(seed)
    cls = {"bert": BertEncoder, "lstm": LSTMClassifier}[arch]
    model = cls(**MODEL_KWARGS[arch]).eval()
    # A random-weight net sends most inputs to one class; re-draw the head on standardised features (the
    # same helper as run.py) so top-1 agreement means something.
    spread_head(model, make_inputs(arch, 32, seed=3), seed=seed + 1)
    return model


def make_inputs(arch: str, count: int, seed: int) -> torch.Tensor:
    """Random token ids within the vocabulary (BERT) or standard-normal feature frames (LSTM)."""
    g = torch.Generator().manual_seed(seed)
    if arch == "bert":
        return torch.randint(0, 1000, (count, SEQ_LEN), generator=g, dtype=torch.int64)
    return torch.randn(count, LSTM_STEPS, LSTM_FEATURES, generator=g)


def measure_torch(kind: str, arch: str, inputs: str, threads: int, warmup: int, runs: int, batch: int) -> dict:
    """Time ``model(x)`` under torch.inference_mode in this (fresh) process; the result matches measure_onnx's.

    Args:
        kind: ``torch_eager`` (fp32) or the torch.ao quantize_dynamic contender.
        arch: ``bert`` or ``lstm``.
        inputs: ``.npz`` with one array ``x`` (the batch to run).
        threads, warmup, runs, batch: torch intra-op threads, untimed and timed runs, items per run.
    """
    from compress.runtime.stats import LatencyStats

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = _torch_contender(kind, build_model(arch))
    create_s = time.perf_counter() - t0
    x = torch.from_numpy(np.load(inputs)["x"])
    samples: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        clock = time.perf_counter
        for _ in range(runs):
            t = clock()
            model(x)
            samples.append(clock() - t)
    return {"latency": LatencyStats.from_seconds(samples, batch=batch).to_dict(), "samples_s": samples,
            "session_create_s": create_s, "peak_rss_bytes": _peak_rss(), "threads": threads,
            "file_bytes": _state_bytes(model), "torch": torch.__version__}


def _torch_contender(kind: str, model: torch.nn.Module) -> torch.nn.Module:
    if kind == EAGER:
        return model
    if kind == AO_NAME:
        # DEPRECATED upstream (torch.ao.quantization is slated for removal); measured only as a reference.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            return quantize_dynamic(model, {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8)
    raise ValueError(f"unknown torch contender {kind!r}")


def _state_bytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def _peak_rss() -> int | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except ImportError:
        return None


def build_onnx(arch: str, model, example, calib, build: Path, prepared_int8) -> dict[str, Artifact]:
    """fp32 (our exporter), ours (the converted int8 model) and the peer (quantize_dynamic on the fp32 file)."""
    from compress.exporters.onnx import ActivationDType, OnnxExportConfig, export_onnx

    build.mkdir(parents=True, exist_ok=True)
    out = {}
    t0 = time.perf_counter()
    path = build / "fp32.onnx"
    try:
        export_onnx(model, (example,), path)
        out[FP32] = Artifact(FP32, path, time.perf_counter() - t0, info={"opset": onnx_opsets(path)})
    except Exception as exc:  # noqa: BLE001 - report and go on
        out[FP32] = Artifact(FP32, None, error=_first_line(exc))
        return out
    t0 = time.perf_counter()
    path = build / "ours_int8.onnx"
    try:
        if isinstance(prepared_int8, str):
            raise RuntimeError(prepared_int8)
        info = export_onnx(prepared_int8, (example,), path, OnnxExportConfig(activation_dtype=ActivationDType.UINT8))
        out[OURS] = Artifact(OURS, path, time.perf_counter() - t0,
                             info={"opset": onnx_opsets(path), "ops": dict(getattr(info, "op_histogram", {}))})
    except Exception as exc:  # noqa: BLE001
        out[OURS] = Artifact(OURS, None, error=_first_line(exc))
    t0 = time.perf_counter()
    path = build / "peer_ort_dynamic.onnx"
    try:
        import onnxruntime
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(out[FP32].path), str(path), weight_type=QuantType.QInt8, per_channel=True)
        out[PEER] = Artifact(PEER, path, time.perf_counter() - t0, info={
            "opset": onnx_opsets(path), "ops": _op_histogram(path),
            "tool": f"onnxruntime.quantization.quantize_dynamic {onnxruntime.__version__}",
            "settings": "weight_type=QInt8, per_channel=True"})
    except Exception as exc:  # noqa: BLE001
        out[PEER] = Artifact(PEER, None, error=_first_line(exc))
    return out


def _op_histogram(path: Path) -> dict[str, int]:
    import onnx

    hist: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        hist[n.op_type] = hist.get(n.op_type, 0) + 1
    return hist


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _quantize_ours(model, example, calib):
    from compress.passes import calibrate, convert, prepare

    try:
        prepared = prepare(model, (example,))
        calibrate(prepared, [calib], progress=False)
        return convert(prepared)
    except Exception as exc:  # noqa: BLE001 - becomes the contender's recorded error
        return _first_line(exc)


def onnx_outputs(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: inputs[i: i + 1]})[0] for i in range(len(inputs))])


def bench_model(arch: str, args) -> dict:
    log(f"== {arch}: building contenders")
    model = build_model(arch)
    calib = make_inputs(arch, 32, seed=1)
    evalx = make_inputs(arch, 64, seed=2)
    int8 = _quantize_ours(model, evalx[:1], calib)
    torch_ok = {EAGER: None}
    try:
        ao = _torch_contender(AO_NAME, build_model(arch))
        with torch.inference_mode():
            ao(evalx[:1])
        torch_ok[AO_NAME] = None
    except Exception as exc:  # noqa: BLE001 - skipped with the reason recorded
        torch_ok[AO_NAME] = _first_line(exc)
        ao = None
    skipped = {k: v for k, v in torch_ok.items() if v}

    result = {"arch": arch, "model_kwargs": MODEL_KWARGS[arch], "skipped": skipped, "batches": {}}
    for batch in args.batches:
        build = args.build_dir / arch / f"b{batch}"
        example = evalx[:batch]
        arts = build_onnx(arch, model, example, calib, build, int8)
        for name, a in arts.items():
            log(f"   b{batch} {name}: " + (f"{a.path.stat().st_size / 2**20:.2f} MB in {a.build_s:.1f} s"
                                           if a.ok else f"NOT AVAILABLE ({a.error})"))
        feeds = build / "input.npz"
        np.savez(feeds, x=example.numpy())
        onnx_feeds = {}
        if arts[FP32].ok:
            import onnxruntime as ort

            name = ort.InferenceSession(str(arts[FP32].path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
            onnx_feeds = build / "onnx_input.npz"
            np.savez(onnx_feeds, **{name: example.numpy()})
        common = {"threads": args.threads, "warmup": args.warmup, "runs": args.runs, "batch": batch}
        cs = [Contender(n, "measure_onnx", {"path": str(a.path), "inputs": str(onnx_feeds), **common})
              for n, a in arts.items() if a.ok]
        cs += [Contender(k, "run_seq:measure_torch", {"kind": k, "arch": arch, "inputs": str(feeds), **common})
               for k in (EAGER, AO_NAME) if k not in skipped]
        log(f"== {arch} batch {batch}: {args.rounds} interleaved rounds of {[c.name for c in cs]}")
        comp = compare_interleaved(cs, rounds=args.rounds, progress=lambda d, t, n: log(f"    [{d}/{t}] {n}"))
        names = [c.name for c in cs]
        ratios = {}
        for n in names:
            for den in (FP32, PEER):
                if n != den and den in names:
                    ratios[f"{n}/{den}"] = {"median": comp.ratio(n, den).to_dict(),
                                            "min": comp.ratio(n, den, statistic="min").to_dict()}
        result["batches"][str(batch)] = {"artifacts": {n: a.to_dict() for n, a in arts.items()},
                                         "comparison": comp.to_dict(), "ratios": ratios}
        for k, r in ratios.items():
            if k.endswith(FP32) or k == f"{OURS}/{PEER}":
                log(f"   {k} = {r['median']['ratio']:.3f} ± {r['median']['noise']:.3f}")

    log(f"== {arch}: accuracy proxy on {len(evalx)} inputs (batch-1 files)")
    arts1 = {n: a for n, a in result["batches"][str(args.batches[0])]["artifacts"].items()}
    eval_np = evalx.numpy()
    with torch.inference_mode():
        eager = torch.cat([model(evalx[i: i + 1]) for i in range(len(evalx))]).numpy()
    accuracy = {}
    fp32_path = arts1.get(FP32, {}).get("path")
    ref = onnx_outputs(Path(fp32_path), eval_np) if arts1.get(FP32, {}).get("error") is None else eager
    accuracy[FP32] = agreement(ref, ref)
    accuracy[EAGER] = agreement(ref, eager)
    for n in (OURS, PEER):
        if arts1.get(n, {}).get("error") is None and arts1.get(n, {}).get("path"):
            accuracy[n] = agreement(ref, onnx_outputs(Path(arts1[n]["path"]), eval_np))
    if ao is not None:
        with torch.inference_mode():
            accuracy[AO_NAME] = agreement(ref, torch.cat([ao(evalx[i: i + 1]) for i in range(len(evalx))]).numpy())
    result["accuracy"] = accuracy
    result["input"] = ({"kind": "random token ids in [0, 1000)", "shape": ["batch", SEQ_LEN]} if arch == "bert"
                       else {"kind": "standard normal frames", "shape": ["batch", LSTM_STEPS, LSTM_FEATURES]})
    result["calibration"] = {"count": len(calib), "seed": 1}
    result["eval"] = {"count": len(evalx), "seed": 2}
    return result


def render_markdown(report: dict) -> str:
    m = report["machine"]
    cfg = report["config"]
    lines = [f"# Sequence-model benchmark: {report['machine_slug']}", "",
             f"{report['date']} · commit `{report['commit']}` · `python benchmarks/run_seq.py"
             + (" --quick" if report["quick"] else "") + "`", "",
             f"**Machine**: {m['cpu']['model']}, {m['cpu'].get('logical_cores', '?')} logical cores; "
             f"ISA: {', '.join(m['cpu']['isa'])}. " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
             + ".", "",
             f"{cfg['threads']} thread; each measurement a fresh process; contenders alternated round by round "
             f"({cfg['rounds']} rounds × {cfg['runs']} timed runs after {cfg['warmup']} warm-up runs). Ratios are "
             "latency ratios paired within each round (median over rounds ± half their range); < 1 means faster. "
             "Agreement: top-1 agreement with fp32 ONNX on 64 random inputs at batch 1 (and max abs logit diff).",
             "", f"Load average at start {_load(report['load_average']['start'])}, at end "
             f"{_load(report['load_average']['end'])}.", ""]
    for arch, res in report["models"].items():
        shape = res["input"]["shape"]
        lines += [f"## {arch} ({res['input']['kind']}, shape {shape})", "",
                  "| contender | batch | median ms | min ms | vs fp32 ONNX | vs peer | size MB | agreement | max abs diff |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for batch, b in res["batches"].items():
            comps = b["comparison"]["contenders"]
            for n, c in comps.items():
                acc = res["accuracy"].get(n, {})
                size = c.get("file_bytes")
                lines.append("| " + " | ".join([
                    LABELS.get(n, n), batch, f"{c['pooled']['median'] * 1e3:.3f}", f"{c['pooled']['min'] * 1e3:.3f}",
                    _ratio(b["ratios"].get(f"{n}/{FP32}")), _ratio(b["ratios"].get(f"{n}/{PEER}")),
                    f"{size / 2**20:.2f}" if size else "–",
                    f"{acc['top1_agreement']:.3f}" if acc else "–",
                    f"{acc['max_abs_diff']:.3g}" if acc else "–"]) + " |")
            for n, a in b["artifacts"].items():
                if a.get("error"):
                    lines.append(f"| {LABELS.get(n, n)} | {batch} | not built: {a['error']} | | | | | | |")
        for n, why in res["skipped"].items():
            lines.append(f"\n{LABELS.get(n, n)} skipped: {why}")
        distinct = res["accuracy"].get(FP32, {}).get("distinct_top1")
        lines += ["", f"fp32 top-1 classes seen on the 64 inputs: {distinct}.", ""]
    lines += ["Sizes: ONNX file bytes; for torch contenders the serialised state_dict.", ""]
    return "\n".join(lines)


def _ratio(r: dict | None) -> str:
    if not r:
        return "–"
    return f"{r['median']['ratio']:.3f} ± {r['median']['noise']:.3f}"


def _load(v) -> str:
    return " / ".join(f"{x:.2f}" for x in v) if v else "n/a"


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=HERE, capture_output=True, text=True).stdout
        return sha + (" (dirty tree)" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and runs")
    p.add_argument("--models", default="bert,lstm", help="comma-separated: bert,lstm")
    p.add_argument("--batches", default="1,8", help="batch sizes to measure (the first one feeds the accuracy proxy)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for every contender")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 5; quick 3)")
    p.add_argument("--runs", type=int, help="timed runs per measurement process (default 30; quick 10)")
    p.add_argument("--warmup", type=int, help="untimed warm-up runs per process (default 5; quick 2)")
    p.add_argument("--build-dir", type=Path, default=HERE / "_build" / "seq", help="where ONNX files go")
    p.add_argument("--results-dir", type=Path, default=HERE / "results", help="root of the results tree")
    p.add_argument("--no-save", action="store_true", help="print the Markdown only")
    a = p.parse_args(argv)
    a.models = a.models.split(",")
    a.batches = [int(b) for b in a.batches.split(",")]
    if any(m not in ("bert", "lstm") for m in a.models) or any(b < 1 for b in a.batches) or a.threads < 1:
        p.error("--models takes bert,lstm; --batches and --threads positive integers, e.g. --batches 1,8")
    a.rounds = a.rounds or (3 if a.quick else 5)
    a.runs = a.runs or (10 if a.quick else 30)
    a.warmup = a.warmup if a.warmup is not None else (2 if a.quick else 5)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    machine = machine_description()
    slug = machine_slug(machine)
    log(f"machine: {slug}")
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    models = {arch: bench_model(arch, args) for arch in args.models}
    import onnx
    import onnxruntime

    report = {"schema_version": SCHEMA_VERSION, "date": dt.date.today().isoformat(), "quick": args.quick,
              "machine_slug": slug, "machine": machine, "commit": _commit(),
              "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                           "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                           "numpy": np.__version__},
              "config": {"rounds": args.rounds, "runs": args.runs, "warmup": args.warmup, "threads": args.threads,
                         "batches": args.batches, "models": args.models},
              "models": models,
              "load_average": {"start": load_start, "end": os.getloadavg() if hasattr(os, "getloadavg") else None}}
    report["wall_s"] = time.perf_counter() - t0
    md = render_markdown(report)
    print(md)
    if not args.no_save:
        out = args.results_dir / slug
        out.mkdir(parents=True, exist_ok=True)
        stem = f"seq-{report['date']}" + ("-quick" if args.quick else "")
        (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / ("seq-latest-quick.md" if args.quick else "seq-latest.md")).write_text(md)
        log(f"wrote {out / (stem + '.json')}")
    log(f"done in {report['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
