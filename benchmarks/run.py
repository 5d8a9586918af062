"""The benchmark suite: our int8 ONNX vs fp32 ONNX vs onnxruntime's quantize_static, and QAT step cost.

    python benchmarks/run.py            # full run (< 15 min on 2 cores), writes results/<machine>/<date>.json
    python benchmarks/run.py --quick    # a couple of minutes; writes results/<machine>/<date>-quick.json

See benchmarks/README.md for what is measured and which goals are checked.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(1, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from artifacts import agreement, export_fp32, onnx_outputs, quantize_ours, quantize_peer  # noqa: E402
from nets import build_net, smooth_images, spread_head  # noqa: E402
from report import evaluate_goals, render_markdown  # noqa: E402

from compress.runtime import Contender, compare_interleaved, machine_description, machine_slug  # noqa: E402

SCHEMA_VERSION = 1


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f} s] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds/runs, ResNet-18 only")
    p.add_argument("--models", help="comma-separated: resnet18,mobilenetv2 (default: both; quick: resnet18)")
    p.add_argument("--threads", default="1,2", help="onnxruntime intra-op thread counts to measure")
    p.add_argument("--rounds", type=int, help="interleaved rounds per thread count")
    p.add_argument("--runs", type=int, help="timed runs per measurement process")
    p.add_argument("--warmup", type=int, help="untimed warm-up runs per measurement process")
    p.add_argument("--no-qat", action="store_true", help="skip the QAT training-step comparison")
    p.add_argument("--qat-models", help="models for the QAT comparison (default: resnet18)")
    # One torch thread by default: on a shared machine, OpenMP threads spin-waiting for a descheduled peer
    # made single steps up to 10x slower (measured here), which swamps the QAT/float ratio we want.
    p.add_argument("--qat-threads", type=int, default=1, help="torch threads for the training step (default 1)")
    p.add_argument("--build-dir", type=Path, default=HERE / "_build", help="where ONNX files are written")
    p.add_argument("--results-dir", type=Path, default=HERE / "results", help="root of the results tree")
    p.add_argument("--no-save", action="store_true", help="print the Markdown only, write no results")
    a = p.parse_args(argv)
    a.models = (a.models or ("resnet18" if a.quick else "resnet18,mobilenetv2")).split(",")
    a.qat_models = (a.qat_models or "resnet18").split(",")
    a.threads = [int(t) for t in a.threads.split(",")]
    if any(t < 1 for t in a.threads) or a.qat_threads < 1:
        p.error("--threads and --qat-threads must be positive integers, e.g. --threads 1,2")
    a.rounds = a.rounds or (3 if a.quick else 7)
    a.runs = a.runs or (15 if a.quick else 50)
    a.warmup = a.warmup if a.warmup is not None else (3 if a.quick else 10)
    # The first training steps are slow (allocator, oneDNN primitive cache): warm up at least 2.
    a.qat = {"resolution": 64 if a.quick else 112, "batch": 32, "warmup": 2 if a.quick else 3,
             "steps": 3 if a.quick else 6, "rounds": 2 if a.quick else 3, "threads": a.qat_threads}
    return a


def progress(done: int, total: int, name: str) -> None:
    log(f"    [{done}/{total}] {name}")


def bench_model(arch: str, args, build: Path) -> dict:
    log(f"== {arch}: building contenders")
    model = build_net(arch, seed=0)
    calib = smooth_images(32, 224, seed=1)
    spread_head(model, calib)
    evalx = smooth_images(64, 224, seed=2)
    example = evalx[:1]
    build.mkdir(parents=True, exist_ok=True)

    fp32 = export_fp32(model, example, build / "fp32.onnx")
    import onnxruntime as ort

    input_name = ort.InferenceSession(str(fp32.path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    artifacts = {"fp32": fp32,
                 "peer": quantize_peer(fp32.path, calib.numpy(), input_name, build),
                 "ours": quantize_ours(model, example, calib, build / "ours_int8.onnx")}
    for name, a in artifacts.items():
        log(f"   {name}: " + (f"{a.path.name} {a.path.stat().st_size / 2**20:.1f} MB in {a.build_s:.1f} s"
                               if a.ok else f"NOT AVAILABLE ({a.error})"))

    log(f"== {arch}: accuracy proxy on {len(evalx)} inputs")
    eval_np = evalx.numpy()
    ref = onnx_outputs(fp32.path, eval_np, input_name)
    with torch.no_grad():
        torch_ref = model(evalx).numpy()
    accuracy = {"fp32": {**agreement(ref, ref), "vs_torch_max_abs_diff": float(np.abs(ref - torch_ref).max())}}
    for name in ("peer", "ours"):
        if artifacts[name].ok:
            accuracy[name] = agreement(ref, onnx_outputs(artifacts[name].path, eval_np, input_name))

    feeds = build / "input.npz"
    np.savez(feeds, **{input_name: eval_np[:1]})
    contenders = [n for n, a in artifacts.items() if a.ok]
    latency = {}
    for threads in args.threads:
        log(f"== {arch}: latency, {threads} thread(s), {args.rounds} interleaved rounds of {contenders}")
        cs = [Contender(n, "measure_onnx", {"path": str(artifacts[n].path), "inputs": str(feeds),
                                            "threads": threads, "warmup": args.warmup, "runs": args.runs})
              for n in contenders]
        comp = compare_interleaved(cs, rounds=args.rounds, progress=progress)
        ratios, ratios_min = {}, {}
        for num, den in (("ours", "fp32"), ("peer", "fp32"), ("ours", "peer")):
            if num in contenders and den in contenders:
                ratios[f"{num}/{den}"] = comp.ratio(num, den).to_dict()
                ratios_min[f"{num}/{den}"] = comp.ratio(num, den, statistic="min").to_dict()
        latency[str(threads)] = {"comparison": comp.to_dict(), "ratios": ratios, "ratios_min": ratios_min}
        for k, r in ratios.items():
            log(f"   {k} = {r['ratio']:.3f} ± {r['noise']:.3f}  (speed-up ×{r['speedup']:.2f}); "
                f"by per-round minima {ratios_min[k]['ratio']:.3f} ± {ratios_min[k]['noise']:.3f}")

    result = {"arch": arch, "input_shape": list(example.shape),
              "calibration": {"count": len(calib), "kind": "smooth random images", "seed": 1},
              "eval": {"count": len(evalx), "kind": "smooth random images", "seed": 2},
              "artifacts": {n: a.to_dict() for n, a in artifacts.items()}, "accuracy": accuracy, "latency": latency}
    if not args.no_qat and arch in args.qat_models:
        result["qat"] = bench_qat(arch, args)
    return result


def _probe_qat(kind: str, arch: str) -> str | None:
    """Try one tiny step in this process first, so a contender that cannot run is reported, not fatal."""
    from qat_step import measure_train_step

    try:
        measure_train_step(kind, arch, resolution=32, batch=2, warmup=0, steps=1, threads=1)
    except Exception as exc:  # noqa: BLE001 - any failure means "not measurable", with the reason shown
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return None


def bench_qat(arch: str, args) -> dict:
    cfg = args.qat
    errors = {k: e for k in ("float", "ours_qat", "torch_ao_qat") if (e := _probe_qat(k, arch))}
    kinds = [k for k in ("float", "ours_qat", "torch_ao_qat") if k not in errors]
    log(f"== {arch}: QAT training step, batch {cfg['batch']} at {cfg['resolution']}², {kinds}"
        + (f" (not measurable: {errors})" if errors else ""))
    cs = [Contender(k, "qat_step:measure_train_step",
                    {"kind": k, "arch": arch, "resolution": cfg["resolution"], "batch": cfg["batch"],
                     "warmup": cfg["warmup"], "steps": cfg["steps"], "threads": cfg["threads"]}) for k in kinds]
    comp = compare_interleaved(cs, rounds=cfg["rounds"], progress=progress)
    pairs = [k for k in kinds if k != "float" and "float" in kinds]
    ratios = {f"{k}/float": comp.ratio(k, "float").to_dict() for k in pairs}
    ratios_min = {f"{k}/float": comp.ratio(k, "float", statistic="min").to_dict() for k in pairs}
    for k, r in ratios.items():
        log(f"   {k} = {r['ratio']:.3f} ± {r['noise']:.3f}; by per-round minima "
            f"{ratios_min[k]['ratio']:.3f} ± {ratios_min[k]['noise']:.3f}")
    return {"config": cfg, "comparison": comp.to_dict(), "ratios": ratios, "ratios_min": ratios_min,
            "errors": errors,
            "prepare_s": {k: [r.get("prepare_s") for r in comp.results[k]] for k in kinds}}


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    machine = machine_description()
    slug = machine_slug(machine)
    log(f"machine: {slug} ({machine['cpu']['model']}; ISA {', '.join(machine['cpu']['isa'])})")
    # Other work on the machine is the main source of noise; record how busy it was.
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    models = {arch: bench_model(arch, args, args.build_dir / arch) for arch in args.models}
    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    report = {
        "schema_version": SCHEMA_VERSION,
        "date": dt.date.today().isoformat(),
        "quick": args.quick,
        "machine_slug": slug,
        "machine": machine,
        "config": {"rounds": args.rounds, "runs": args.runs, "warmup": args.warmup, "threads": args.threads,
                   "models": args.models, "qat": None if args.no_qat else args.qat},
        "models": models,
        "load_average": {"start": load_start, "end": load_end},
    }
    report["goals"] = evaluate_goals(models)
    report["wall_s"] = time.perf_counter() - t0
    md = render_markdown(report)
    print(md)
    if not args.no_save:
        out = args.results_dir / slug
        out.mkdir(parents=True, exist_ok=True)
        stem = report["date"] + ("-quick" if args.quick else "")
        (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
        # latest.md is what the README embeds: only full runs replace it.
        (out / ("latest-quick.md" if args.quick else "latest.md")).write_text(md)
        log(f"wrote {out / (stem + '.json')}")
    log(f"done in {report['wall_s']:.0f} s")
    for g in report["goals"]:
        log(f"  {g['status']:4}  {g['model']}: {g['text']}"
            + ("" if g["ratio"] is None else f"  (measured {g['ratio']:.3f} ± {g['noise']:.3f}, limit {g['limit']:.3f})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
