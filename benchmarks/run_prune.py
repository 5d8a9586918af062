"""Structured pruning side by side with Torch-Pruning (issue 9): same model, ratio, criterion, fine-tuning.

    python -m venv /tmp/bench-venv --system-site-packages
    /tmp/bench-venv/bin/pip install torch-pruning==1.6.1 --no-deps   # the benchmark venv only
    /tmp/bench-venv/bin/python benchmarks/run_prune.py              # results/<machine>/prune-<date>.json, prune-latest.md

The model is the test zoo's trained ResNet (tests/zoo: torchvision-style BasicBlocks, residual adds, 32×32
RGB digits). Both tools remove the same fraction of channels per layer (``--ratio``, the classifier kept),
scored by L1 magnitude (ours: ``criterion="l1"`` summed over each coupled group's producers; theirs:
``MagnitudeImportance(p=1)``, group-reduced as its MetaPruner does), then the pruned models get the same
fine-tuning (compress.passes.prune.finetune: AdamW, cosine, ``--epochs`` on the same batches). Reported per
contender: parameters and MACs (one counter for both), test accuracy right after pruning and after
fine-tuning, the wall time of the pruning call, and fp32 ONNX latency in onnxruntime (1 thread, batch 1; all
files timed interleaved, fastest of ``--rounds`` (41) rounds; the ratio to the unpruned file). A third contender is ours with
``--latency-target`` set to the latency ratio Torch-Pruning reached: accuracy at equal measured latency.

The reference nets (ResNet-18- and MobileNetV2-shaped, random weights) are pruned to 50 % channels and timed
unpruned vs pruned in onnxruntime and LiteRT, fp32 and int8 (int8 by ``compress.pipeline.quantize_model``
with random calibration images: latency only, accuracy on random weights means nothing).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROUNDS = 41  # fastest of: other engineers' jobs share this machine's 2 cores
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))


def _accuracy(model, test) -> float:
    from tests.zoo.train import evaluate

    return float(evaluate(model, test, "accuracy"))


def _batches(train, batch: int = 64):
    import torch

    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).numpy()
    return [(torch.from_numpy(train.x[order[i:i + batch]]), torch.from_numpy(train.y[order[i:i + batch]]))
            for i in range(0, len(train), batch)]


def prune_ours(model, x, ratio: float, latency_fraction: float | None = None):
    from compress.passes.prune import LatencyTarget, PruneConfig, prune

    if latency_fraction is None:
        return prune(model, x, PruneConfig(channels=ratio, criterion="l1")).model
    from compress.cli.prune import OrtLatency

    return prune(model, x, PruneConfig(latency=LatencyTarget(fraction=latency_fraction), criterion="l1"),
                 measure=OrtLatency(1)).model


def prune_theirs(model, x, ratio: float):
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=[model.fc])
    pruner.step()
    return model


def _onnx_latencies(model, pruned: dict, x, rounds: int) -> dict[str, float]:
    """fp32 ONNX latency (ms) of the unpruned model and of every pruned one, timed interleaved."""
    from compress.cli.prune import _file_latencies
    from compress.exporters import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        files = {"unpruned": Path(tmp) / "unpruned.onnx"}
        export_onnx(model, (x[:1],), files["unpruned"])
        for name, net in pruned.items():
            files[name] = Path(tmp) / f"{name}.onnx"
            export_onnx(net, (x[:1],), files[name])
        return _file_latencies(files, (x,), rounds=rounds)  # more rounds than the CLI: a loaded machine


def run(ratio: float, epochs: int, rounds: int = ROUNDS) -> dict:
    import torch

    from compress.passes.prune import FinetuneConfig, count_macs, count_params, finetune
    from compress.runtime.machine import machine_description
    from tests.zoo.train import ZOO, task_data, trained

    torch.set_num_threads(1)
    model, _, test = trained("resnet")
    train, _ = task_data(ZOO["resnet"])
    x = torch.from_numpy(train.x[:2])
    batches = _batches(train)
    results = {"unpruned": {"params": count_params(model), "macs": count_macs(model, x),
                            "accuracy": _accuracy(model, test)}}
    pruned = {}
    for name, fn in (("compress", lambda: prune_ours(model, x, ratio)),
                     ("torch_pruning", lambda: prune_theirs(model, x, ratio))):
        t = time.perf_counter()
        pruned[name] = fn()
        results[name] = {"prune_s": time.perf_counter() - t}
    times = _onnx_latencies(model, pruned, x, rounds)
    theirs_ratio = times["torch_pruning"] / times["unpruned"]
    t = time.perf_counter()
    pruned["compress_latency_matched"] = prune_ours(model, x, ratio, latency_fraction=theirs_ratio)
    results["compress_latency_matched"] = {"prune_s": time.perf_counter() - t, "latency_target": theirs_ratio}
    for name, net in pruned.items():
        r = results[name]
        r.update(params=count_params(net), macs=count_macs(net, x), accuracy_after_prune=_accuracy(net, test))
        t = time.perf_counter()
        finetune(net, batches, FinetuneConfig(epochs=epochs, lr=3e-3, device="cpu"))
        r.update(finetune_s=time.perf_counter() - t, accuracy_after_finetune=_accuracy(net, test))
    times = _onnx_latencies(model, pruned, x, rounds)
    for name, ms in times.items():
        results[name]["onnx_fp32_ms"] = ms
        results[name]["latency_ratio"] = ms / times["unpruned"]
    machine = machine_description()
    try:  # the CPU as lscpu names it, beside /proc/cpuinfo's: results are compared across machines by it
        import subprocess

        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        machine["lscpu_model"] = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                                       if ln.startswith("Model name")), None)
    except (OSError, subprocess.SubprocessError):
        pass
    return {"schema": 1, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": "tests.zoo resnet (TorchvisionStyleResNet, 32x32 RGB digits)", "ratio": ratio,
            "criterion": "l1", "finetune": {"epochs": epochs, "lr": 3e-3, "batch": 64, "optimizer": "AdamW cosine"},
            "latency": f"onnxruntime fp32, 1 thread, batch 1, interleaved, fastest of {rounds} rounds",
            "torch_pruning": metadata.version("torch-pruning"), "machine": machine, "results": results}


CALIB_IMAGES = 16
RUNTIME_ROWS = (("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"))


def _runtime_latencies(model, half, x, calib, rounds: int) -> dict:
    """Batch-1 latency (ms) of the unpruned and the 50 %-channel net in onnxruntime and LiteRT, fp32 and int8,
    all eight files timed interleaved (1 thread, fastest of ``rounds``).

    The int8 files are what ``compress.pipeline.quantize_model`` writes, calibrated on ``calib`` (random smooth
    images): the weights are random too, so only their latency means something, not their accuracy; the
    files are written even where verification or the quality check would refuse them (``verified`` says).
    """
    from compress.cli.prune import _file_latencies
    from compress.exporters import export_onnx, export_tflite
    from compress.io import Dataset
    from compress.pipeline import QuantizeOptions, quantize_model

    options = QuantizeOptions(formats=("onnx", "tflite"), batch_size=CALIB_IMAGES, latency_runs=3,
                              accept_degraded=True, keep_unverified=True)
    files, verified = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, net in (("unpruned", model), ("channels_0.5", half)):
            d = Path(tmp) / variant
            d.mkdir()
            export_onnx(net, (x[:1],), d / "fp32.onnx")
            export_tflite(net, (x[:1],), d / "fp32.tflite")
            report = quantize_model(net, Dataset(calib.numpy(), None, "random smooth images"), d / "q", options,
                                    progress=False)
            verified[variant] = bool(report["verified"])
            for fmt, prec in RUNTIME_ROWS:
                files[f"{variant}/{fmt}_{prec}"] = d / (f"fp32.{fmt}" if prec == "fp32" else f"q/model.{fmt}")
        times = _file_latencies(files, (x,), rounds=rounds)
    out = {"int8_verified": verified}
    for fmt, prec in RUNTIME_ROWS:
        row = f"{fmt}_{prec}"
        base, cut = times[f"unpruned/{row}"], times[f"channels_0.5/{row}"]
        out[row] = {"unpruned_ms": base, "channels_0.5_ms": cut, "ratio": cut / base}
    return out


def run_latency(archs: list[str], resolution: int, rounds: int = ROUNDS) -> dict:
    """Reference nets (random weights, benchmarks/nets.py): 50 % channels and ``--latency-target 0.5``, each
    timed as fp32 ONNX beside the unpruned file (no accuracy: untrained weights)."""
    import torch
    from nets import build_net, smooth_images

    from compress.cli.prune import OrtLatency
    from compress.passes.prune import LatencyTarget, PruneConfig, count_params, prune

    torch.set_num_threads(1)
    out = {}
    for arch in archs:
        model = build_net(arch)
        x = smooth_images(2, resolution)
        t = time.perf_counter()
        half = prune(model, x, PruneConfig(channels=0.5, round_to=8)).model
        half_s = time.perf_counter() - t
        t = time.perf_counter()
        target = prune(model, x, PruneConfig(latency=LatencyTarget(fraction=0.5, steps=(0.25, 0.5, 0.625, 0.75)),
                                             round_to=8), measure=OrtLatency(1))
        target_s = time.perf_counter() - t
        times = _onnx_latencies(model, {"channels_0.5": half, "latency_target_0.5": target.model}, x, rounds)
        search = {k: v for k, v in target.plan["latency"].items() if k not in ("table", "rounds")}
        t = time.perf_counter()
        runtimes = _runtime_latencies(model, half, x, smooth_images(CALIB_IMAGES, resolution, seed=1),
                                      rounds)
        print(arch, f"runtime rows {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        out[arch] = {"resolution": resolution, "params": count_params(model),
                     "channels_0.5": {"params": count_params(half), "prune_s": half_s,
                                      "latency_ratio": times["channels_0.5"] / times["unpruned"]},
                     "latency_target_0.5": {"params": count_params(target.model), "prune_s": target_s,
                                            "latency_ratio": times["latency_target_0.5"] / times["unpruned"],
                                            "search": search},
                     "unpruned_ms": times["unpruned"], "runtimes": runtimes}
        print(arch, json.dumps(out[arch]), file=sys.stderr, flush=True)
    return out


def render(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Structured pruning vs Torch-Pruning — {report['model']}", "",
             f"{report['date']} · CPU: {m.get('lscpu_model') or m['cpu']['model']} ({m['cpu']['logical_cores']} cores) · torch-pruning "
             f"{report['torch_pruning']} · compress at {(m.get('git') or {}).get('commit', '?')[:10]} · "
             f"ratio {report['ratio']} of channels per layer, L1, {report['finetune']['epochs']} fine-tuning "
             f"epochs for both · {report['latency']}", "",
             "| contender | params | MACs | acc. after prune | acc. after fine-tune | prune time | ONNX fp32 ms | × unpruned |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        acc = r.get("accuracy_after_prune", r.get("accuracy"))
        lines.append(f"| {name} | {r['params']:,} | {r['macs']:,} | {100 * acc:.2f} % | "
                     f"{100 * r.get('accuracy_after_finetune', r.get('accuracy')):.2f} % | "
                     f"{r.get('prune_s', 0):.2f} s | {r['onnx_fp32_ms']:.4f} | {r['latency_ratio']:.3f} |")
    if report.get("reference_nets"):
        lines += ["", "Reference nets (random weights, benchmarks/nets.py), fp32 ONNX latency ÷ the unpruned file:", "",
                  "| net | input | unpruned ms | 50 % channels (round_to 8) | `--latency-target 0.5` (search predicted / measured) |",
                  "|---|---|---:|---:|---:|"]
        for arch, r in report["reference_nets"].items():
            srch = r["latency_target_0.5"]["search"]
            lines.append(f"| {arch} | {r['resolution']}² | {r['unpruned_ms']:.2f} | "
                         f"{r['channels_0.5']['latency_ratio']:.3f} ({r['channels_0.5']['params']:,} params) | "
                         f"{r['latency_target_0.5']['latency_ratio']:.3f} ({srch['predicted_ms'] / srch['base_ms']:.3f} / "
                         f"{srch['measured_ms'] / srch['base_ms']:.3f}, {r['latency_target_0.5']['prune_s']:.0f} s) |")
        lines += ["", "Reference nets at 50 % channels, per runtime and precision: unpruned ms → pruned ms "
                  f"(× unpruned); batch 1, 1 thread, all eight files of a net timed interleaved, fastest of "
                  f"{report.get('rounds', 21)} rounds. int8 = `compress.pipeline.quantize_model` (ONNX QDQ, "
                  "uint8 activations on x86; TFLite full int8), calibrated on random smooth images: latency "
                  "only — on random weights int8 accuracy means nothing.", "",
                  "| net | ONNX fp32 | ONNX int8 | LiteRT fp32 | LiteRT int8 |", "|---|---:|---:|---:|---:|"]
        for arch, r in report["reference_nets"].items():
            rt = r.get("runtimes")
            if rt:
                cells = [f"{rt[f'{f}_{p}']['unpruned_ms']:.2f} → {rt[f'{f}_{p}']['channels_0.5_ms']:.2f} "
                         f"({rt[f'{f}_{p}']['ratio']:.3f}×)" for f, p in RUNTIME_ROWS]
                lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--archs", default="resnet18,mobilenetv2", help="reference nets for the latency rows ('' = none)")
    ap.add_argument("--resolution", type=int, default=112)
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="timing rounds (the fastest counts)")
    args = ap.parse_args()
    report = run(args.ratio, args.epochs, args.rounds)
    sys.path.insert(0, str(HERE))
    archs = [a for a in args.archs.split(",") if a]
    report["reference_nets"] = run_latency(archs, args.resolution, args.rounds) if archs else {}
    report["rounds"] = args.rounds
    from compress.runtime.machine import machine_slug

    out = HERE / "results" / machine_slug(report["machine"])
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    (out / f"prune-{stamp}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "prune-latest.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
