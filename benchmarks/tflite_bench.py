"""TFLite exporter benchmark: conversion time, and LiteRT latency fp32 vs int8 at 1 and 2 threads.

Each latency is measured in its own process (one interpreter per process; interleaving multi-threaded
runtimes in one process distorts results), the contenders interleaved over rounds, medians reported.

    python benchmarks/tflite_bench.py                   # ResNet-18 and MobileNetV2 at 224²
    python benchmarks/tflite_bench.py --size 112 --rounds 3

Writes ``benchmarks/results/<machine>/tflite-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(net: str, size: int, outdir: Path) -> dict:
    """Export the fp32 and int8 files of ``net``; returns the conversion timings."""
    import torch

    from compress.exporters.tflite import export_tflite
    from compress.models import MobileNetV2, ResNet18, randomize_bn
    from compress.passes import calibrate, convert, prepare

    torch.manual_seed(0)
    model = randomize_bn({"resnet18": ResNet18, "mobilenetv2": MobileNetV2}[net]()).eval()
    x = torch.randn(1, 3, size, size)
    calib = [torch.randn(4, 3, size, size) for _ in range(2)]
    float_info = export_tflite(model, x, outdir / f"{net}_fp32.tflite")
    q = convert(calibrate(prepare(model, x), calib, progress=False))
    t = time.perf_counter()
    int8_info = export_tflite(q, x, outdir / f"{net}_int8.tflite")
    return {"fp32_export_s": float_info.seconds, "int8_export_s": int8_info.seconds,
            "int8_export_wall_s": time.perf_counter() - t, "fp32_bytes": float_info.size_bytes,
            "int8_bytes": int8_info.size_bytes, "int8_ops": int8_info.op_counts}


_WORKER = r"""
import sys, time, json, numpy as np
from ai_edge_litert.interpreter import Interpreter
path, threads, warmup, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
it = Interpreter(model_path=path, num_threads=threads); it.allocate_tensors()
d = it.get_input_details()[0]
x = np.random.default_rng(0).standard_normal(d["shape"]).astype(d["dtype"])
it.set_tensor(d["index"], x)
for _ in range(warmup): it.invoke()
ts = []
for _ in range(iters):
    t = time.perf_counter(); it.invoke(); ts.append(time.perf_counter() - t)
print(json.dumps(sorted(ts)[len(ts) // 2] * 1e3))
"""


def latency_ms(path: Path, threads: int, warmup: int, iters: int) -> float:
    out = subprocess.run([sys.executable, "-c", _WORKER, str(path), str(threads), str(warmup), str(iters)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="resnet18,mobilenetv2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from compress.runtime.machine import machine_description, machine_slug

    machine = machine_description()
    results = {"machine": machine, "size": args.size, "nets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for net in args.nets.split(","):
            entry = build(net, args.size, tmp)
            samples: dict[str, list[float]] = {}
            for _ in range(args.rounds):  # interleave the contenders
                for threads in (int(t) for t in args.threads.split(",")):
                    for kind in ("fp32", "int8"):
                        key = f"{kind}_t{threads}_ms"
                        samples.setdefault(key, []).append(
                            latency_ms(tmp / f"{net}_{kind}.tflite", threads, 5, args.iters))
            entry["latency"] = {k: statistics.median(v) for k, v in samples.items()}
            for threads in args.threads.split(","):
                entry["latency"][f"int8_speedup_t{threads}"] = (entry["latency"][f"fp32_t{threads}_ms"]
                                                               / entry["latency"][f"int8_t{threads}_ms"])
            results["nets"][net] = entry
            print(net, json.dumps(entry, indent=1))
    out = ROOT / "benchmarks" / "results" / machine_slug(machine) / f"tflite-{dt.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
