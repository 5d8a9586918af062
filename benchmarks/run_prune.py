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
with random calibration images: latency only, accuracy on random weights means nothing), at 112² and at
ResNet-18's own 224² (``--resolution``). Each cell carries the spread of the per-round ratios, and the load
average is recorded: other sessions share the machine.

Two diagnostics for the LiteRT int8 row. On a CPU with AMX (``amx_int8``) XNNPACK runs int8 convolutions on
its AMX kernels, whose tiles are 64 output channels wide and take the input channels of each kernel tap in
64-byte blocks: a 32-channel layer costs what a 64-channel one does, and the 3-channel 7×7 stem pays 49
nearly empty tiles per output block. So the int8 pair is also timed in a child process that may not enable
AMX (XNNPACK's AVX512-VNNI kernels, what a CPU without AMX runs), and ResNet-18's int8 file is timed stage by
stage, as prefix models cut after the stem and after each layer (LiteRT's Python interpreter has no profiler).
``--no-zoo`` skips the Torch-Pruning comparison (no torch-pruning needed): a quick run of the reference nets.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
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


def _fp32_files(model, pruned: dict, x, tmp: Path) -> dict[str, Path]:
    """fp32 ONNX files of the unpruned model and of every pruned one, in ``tmp``, by name."""
    from compress.exporters import export_onnx

    files = {"unpruned": tmp / "unpruned.onnx"}
    export_onnx(model, (x[:1],), files["unpruned"])
    for name, net in pruned.items():
        files[name] = tmp / f"{name}.onnx"
        export_onnx(net, (x[:1],), files[name])
    return files


def _onnx_latencies(model, pruned: dict, x, rounds: int) -> dict[str, float]:
    """fp32 ONNX latency (ms) of the unpruned model and of every pruned one, timed interleaved."""
    from compress.cli.prune import _file_latencies

    with tempfile.TemporaryDirectory() as tmp:
        files = _fp32_files(model, pruned, x, Path(tmp))
        return _file_latencies(files, (x,), rounds=rounds)  # more rounds than the CLI: a loaded machine


def _onnx_round_ratios(model, pruned: dict, x, rounds: int) -> dict[str, dict]:
    """fp32 ONNX files of every pruned net timed beside the unpruned one (:func:`_time_rounds`): the median
    and quartiles of the per-round ratios. Under load a long run is preempted more often than a short one,
    so the fastest rounds of a 12 ms and a 3 ms file are not equally lucky; ratios in one round are."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        files = _fp32_files(model, pruned, x, Path(tmp))
        times = _time_rounds(files, (x[:1].numpy(),), rounds)
    base = np.asarray(times["unpruned"])
    return {name: dict(zip(("q1", "median", "q3"), np.quantile(np.asarray(times[name]) / base, [0.25, 0.5, 0.75])
                           .tolist(), strict=True)) for name in pruned}


def run(ratio: float, epochs: int, rounds: int = ROUNDS) -> dict:
    import torch

    from compress.passes.prune import FinetuneConfig, count_macs, count_params, finetune
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
    machine = _machine()
    return {"schema": 1, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": "tests.zoo resnet (TorchvisionStyleResNet, 32x32 RGB digits)", "ratio": ratio,
            "criterion": "l1", "finetune": {"epochs": epochs, "lr": 3e-3, "batch": 64, "optimizer": "AdamW cosine"},
            "latency": f"onnxruntime fp32, 1 thread, batch 1, interleaved, fastest of {rounds} rounds",
            "torch_pruning": metadata.version("torch-pruning"), "machine": machine, "results": results}


def _machine() -> dict:
    """compress.runtime.machine's description plus the CPU as lscpu names it: results are compared across
    machines by it."""
    import subprocess

    from compress.runtime.machine import machine_description

    machine = machine_description()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        machine["lscpu_model"] = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                                       if ln.startswith("Model name")), None)
    except (OSError, subprocess.SubprocessError):
        pass
    return machine


CALIB_IMAGES = 16
RUNTIME_ROWS = (("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"))
STAGE_ROUNDS = ROUNDS  # prefixes differ by little: as many rounds as the main rows

# Linux x86-64 constants for denying AMX to a process (see _deny_amx).
_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA = 158, 0x1022, 0x1023, 18
_LINUX_X86_64 = sys.platform == "linux" and platform.machine() == "x86_64"


def _amx_granted() -> bool:
    """Whether this process holds the AMX tile-data permission, which XNNPACK requests (Linux
    ``arch_prctl(ARCH_REQ_XCOMP_PERM)``) before it uses its AMX int8 kernels."""
    import ctypes

    if not _LINUX_X86_64:
        return False
    mask = ctypes.c_uint64(0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) != 0:
        return False
    return bool(mask.value >> _XFEATURE_XTILEDATA & 1)


def _deny_amx() -> None:
    """Make ``arch_prctl(ARCH_REQ_XCOMP_PERM)`` fail with EPERM in this process (a seccomp filter), so XNNPACK
    cannot enable AMX tiles and falls back to its AVX512-VNNI int8 kernels: the int8 kernels most x86 CPUs
    have. Irreversible for the process: only the child of :func:`_tflite_rounds_without_amx` calls it."""
    import ctypes

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06  # classic BPF opcodes
    errno_eperm, allow = 0x00050000 | 1, 0x7FFF0000
    # seccomp_data: nr at offset 0, arch at 4, args[0] (low half, little-endian) at 16
    code = [(ld_w_abs, 0, 0, 4), (jeq_k, 1, 0, 0xC000003E), (ret_k, 0, 0, allow),  # not x86-64: allow all
            (ld_w_abs, 0, 0, 0), (jeq_k, 0, 3, _SYS_ARCH_PRCTL),
            (ld_w_abs, 0, 0, 16), (jeq_k, 0, 1, _ARCH_REQ_XCOMP_PERM), (ret_k, 0, 0, errno_eperm),
            (ret_k, 0, 0, allow)]
    filters = (Filter * len(code))(*code)
    prog = Prog(len(code), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) or libc.prctl(pr_set_seccomp, seccomp_mode_filter,
                                                                 ctypes.byref(prog), 0, 0):
        raise OSError(ctypes.get_errno(), "seccomp filter refused")


def _time_rounds(paths: dict[str, Path], x, rounds: int) -> dict[str, list[float]]:
    """Per-round latency (ms) of each file in its runtime (1 thread, batch 1): in every round each file's
    median over 20 ms of calls, the files interleaved, so a busy stretch of the shared machine hits all alike."""
    from compress.passes.prune.latency import median_ms
    from compress.pipeline import _onnx_runner, _tflite_runner

    runners = {}
    for name, path in paths.items():
        run = (_onnx_runner if path.suffix == ".onnx" else _tflite_runner)(path, 1)
        runners[name] = lambda run=run: run(x)
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, run in runners.items():
            times[name].append(median_ms(run, 5, warmup=2, min_seconds=0.02))
    return times


def _tflite_rounds_without_amx(paths: dict[str, Path], x, rounds: int) -> dict:
    """:func:`_time_rounds` of TFLite files in a child process that may not enable AMX (see _deny_amx)."""
    import subprocess

    import numpy as np

    if not _LINUX_X86_64:
        return {"error": "AMX is an x86-64 Linux matter"}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x[0])
        spec = Path(tmp) / "files.json"
        spec.write_text(json.dumps({name: str(p) for name, p in paths.items()}))
        proc = subprocess.run([sys.executable, __file__, "--_time-without-amx", str(spec), "--rounds", str(rounds)],
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
        return json.loads(proc.stdout.strip().splitlines()[-1])


def _child_time_without_amx(spec: Path, rounds: int) -> None:
    import numpy as np

    _deny_amx()
    paths = {name: Path(p) for name, p in json.loads(spec.read_text()).items()}
    x = (np.load(spec.parent / "x.npy"),)
    times = _time_rounds(paths, x, rounds)
    print(json.dumps({"times": times, "amx_granted": _amx_granted()}))


def truncated_tflite(data: bytes, k: int) -> bytes:
    """The TFLite file ``data`` cut after its first ``k`` operators (subgraph 0): a prefix model whose one
    output is the k-th operator's first output. LiteRT's Python interpreter has no op profiler; timing
    prefixes cut at stage boundaries gives each stage's cost by difference.

    The cut edits two vector lengths in place (the operator list, the output list) and the one output index;
    the operators after ``k`` stay in the buffer, unreferenced.
    """
    import struct

    import tflite

    buf = bytearray(data)
    graph = tflite.Model.GetRootAsModel(buf, 0).Subgraphs(0)
    output = graph.Operators(k - 1).Outputs(0)
    table = graph._tab
    for field, length in ((10, k), (8, 1)):  # vtable offsets of SubGraph.operators and SubGraph.outputs
        start = table.Vector(table.Offset(field))
        struct.pack_into("<I", buf, start - 4, length)
    struct.pack_into("<i", buf, table.Vector(table.Offset(8)), output)
    return bytes(buf)


def resnet_stage_cuts(data: bytes) -> dict[str, int]:
    """Operator counts that end each stage of a ResNet-18-shaped TFLite graph: the stem through the max-pool,
    each layer after its second residual ADD, then the head (mean, fully connected, dequantize)."""
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    codes = []
    for i in range(graph.OperatorsLength()):
        oc = model.OperatorCodes(graph.Operators(i).OpcodeIndex())
        codes.append(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()))
    adds = [i + 1 for i, c in enumerate(codes) if c == tflite.BuiltinOperator.ADD]
    cuts = {"stem": codes.index(tflite.BuiltinOperator.MAX_POOL_2D) + 1}
    cuts.update({f"layer{j + 1}": adds[2 * j + 1] for j in range(len(adds) // 2)})
    cuts["head"] = len(codes)
    return cuts


def _ratio(base: list[float], cut: list[float]) -> dict:
    """The fastest-round ratio, and the spread of the per-round ratios (same round: same machine load)."""
    per_round = sorted(c / b for b, c in zip(base, cut, strict=True))
    return {"unpruned_ms": min(base), "channels_0.5_ms": min(cut), "ratio": min(cut) / min(base),
            "round_median": per_round[len(per_round) // 2],
            "round_spread": (per_round[-1] - per_round[0]) / 2}


def _stages(times: dict[str, list[float]], cuts: dict[str, int]) -> dict:
    """Per-stage ms (difference of consecutive prefixes' fastest rounds), unpruned and pruned."""
    out, prev = {}, {"unpruned": 0.0, "channels_0.5": 0.0}
    for stage in cuts:
        row = {}
        for variant in prev:
            ms = min(times[f"{variant}/{stage}"])
            row[variant] = ms - prev[variant]
            prev[variant] = ms
        out[stage] = row
    return out


def _runtime_latencies(model, half, x, calib, rounds: int, breakdown: bool) -> dict:
    """Batch-1 latency (ms) of the unpruned and the 50 %-channel net in onnxruntime and LiteRT, fp32 and int8,
    all eight files timed interleaved (1 thread, fastest of ``rounds``, with the spread of per-round ratios).

    The int8 files are what ``compress.pipeline.quantize_model`` writes, calibrated on ``calib`` (random smooth
    images): the weights are random too, so only their latency means something, not their accuracy; the
    files are written even where verification or the quality check would refuse them (``verified`` says).
    The int8 TFLite pair is timed again in a process denied AMX (XNNPACK's AVX512-VNNI kernels), and with
    ``breakdown`` (ResNet-18) stage by stage as prefix models, in both processes.
    """
    import os

    from compress.exporters import export_onnx, export_tflite
    from compress.io import Dataset
    from compress.pipeline import QuantizeOptions, quantize_model

    options = QuantizeOptions(formats=("onnx", "tflite"), batch_size=CALIB_IMAGES, latency_runs=3,
                              accept_degraded=True, keep_unverified=True)
    files, verified, stage_files, cuts = {}, {}, {}, {}
    xs = (x[:1].numpy(),)
    out = {"load_average": {"start": os.getloadavg()}}
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
            if breakdown:
                data = (d / "q" / "model.tflite").read_bytes()
                cuts = resnet_stage_cuts(data)
                for stage, k in cuts.items():
                    stage_files[f"{variant}/{stage}"] = d / f"int8_{stage}.tflite"
                    stage_files[f"{variant}/{stage}"].write_bytes(truncated_tflite(data, k))
        times = _time_rounds(files, xs, rounds)
        out["litert_int8_amx"] = _amx_granted()
        if stage_files:
            out["stages_int8_litert"] = _stages(_time_rounds(stage_files, xs, STAGE_ROUNDS), cuts)
        pair = {v: files[f"{v}/tflite_int8"] for v in ("unpruned", "channels_0.5")}
        child = _tflite_rounds_without_amx(pair, xs, rounds)
        child_stages = _tflite_rounds_without_amx(stage_files, xs, STAGE_ROUNDS) if stage_files else {}
        out["load_average"]["end"] = os.getloadavg()
    out["int8_verified"] = verified
    for fmt, prec in RUNTIME_ROWS:
        row = f"{fmt}_{prec}"
        out[row] = _ratio(times[f"unpruned/{row}"], times[f"channels_0.5/{row}"])
    if "times" in child:
        t = child["times"]
        out["tflite_int8_no_amx"] = {**_ratio(t["unpruned"], t["channels_0.5"]), "amx_granted": child["amx_granted"]}
        if "times" in child_stages:
            out["stages_int8_litert_no_amx"] = _stages(child_stages["times"], cuts)
    else:
        out["tflite_int8_no_amx"] = child
    return out


def run_latency(archs: list[str], resolutions: list[int], rounds: int = ROUNDS, runtimes: bool = True) -> dict:
    """Reference nets (random weights, benchmarks/nets.py) at each input size: 50 % channels and
    ``--latency-target 0.5``, each timed as fp32 ONNX beside the unpruned file (no accuracy: untrained
    weights), then (``runtimes``) the per-runtime rows of :func:`_runtime_latencies`. Keys: ``arch@resolution``;
    each row records the load average before and after its latency search."""
    import os

    import torch
    from nets import build_net, smooth_images

    from compress.cli.prune import OrtLatency
    from compress.passes.prune import LatencyTarget, PruneConfig, count_macs, count_params, prune

    torch.set_num_threads(1)
    out = {}
    for resolution in resolutions:
        for arch in archs:
            model = build_net(arch)
            x = smooth_images(2, resolution)
            t = time.perf_counter()
            half = prune(model, x, PruneConfig(channels=0.5, round_to=8)).model
            half_s = time.perf_counter() - t
            pruned, target = {"channels_0.5": half}, None
            load = {"start": os.getloadavg()}
            if resolution == resolutions[0]:  # the ONNX latency search once per net: minutes on 2 shared cores
                t = time.perf_counter()
                target = prune(model, x, PruneConfig(latency=LatencyTarget(fraction=0.5,
                                                                           steps=(0.25, 0.5, 0.625, 0.75)),
                                                     round_to=8), measure=OrtLatency(1))
                target_s = time.perf_counter() - t
                pruned["latency_target_0.5"] = target.model
            times = _onnx_latencies(model, pruned, x, rounds)
            paired = _onnx_round_ratios(model, pruned, x, rounds)
            load["end"] = os.getloadavg()
            t = time.perf_counter()
            rows = None
            if runtimes:
                rows = _runtime_latencies(model, half, x, smooth_images(CALIB_IMAGES, resolution, seed=1),
                                          rounds, breakdown=arch == "resnet18")
                print(arch, resolution, f"runtime rows {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            key = f"{arch}@{resolution}"
            out[key] = {"arch": arch, "resolution": resolution, "params": count_params(model),
                        "macs": count_macs(model, x[:1]),
                        "channels_0.5": {"params": count_params(half), "macs": count_macs(half, x[:1]),
                                         "prune_s": half_s,
                                         "latency_ratio": times["channels_0.5"] / times["unpruned"],
                                         "latency_ratio_per_round": paired["channels_0.5"]},
                        "latency_target_0.5": None if target is None else {
                            "params": count_params(target.model), "prune_s": target_s,
                            "latency_ratio": times["latency_target_0.5"] / times["unpruned"],
                            "latency_ratio_per_round": paired["latency_target_0.5"],
                            "search": {k: v for k, v in target.plan["latency"].items() if k != "table"}},
                        "unpruned_ms": times["unpruned"], "load_average": load, "runtimes": rows}
            print(key, json.dumps(out[key]), file=sys.stderr, flush=True)
    return out


def _cell(r: dict) -> str:
    spread = f", rounds {r['round_median']:.3f} ± {r['round_spread']:.3f}" if "round_spread" in r else ""
    return f"{r['unpruned_ms']:.2f} → {r['channels_0.5_ms']:.2f} ({r['ratio']:.3f}×{spread})"


def _search_rounds(search: dict) -> str:
    rounds = search.get("rounds")
    if not rounds:
        return ""
    pairs = " ".join(f"{r['predicted_ms'] / search['base_ms']:.2f}/{r['measured_ms'] / search['base_ms']:.2f}"
                     for r in rounds)
    return f"; rounds predicted/measured {pairs}"


def _paired(row: dict) -> str:
    p = row.get("latency_ratio_per_round")
    return f", paired rounds {p['median']:.3f} [{p['q1']:.3f}, {p['q3']:.3f}]" if p else ""


def _load(load: dict | None) -> str:
    return f"; load {load['start'][0]:.1f} → {load['end'][0]:.1f}" if load else ""


def render(report: dict) -> str:
    m = report["machine"]
    lines = [f"# Structured pruning vs Torch-Pruning — {report['model']}", "",
             f"{report['date']} · CPU: {m.get('lscpu_model') or m['cpu']['model']} ({m['cpu']['logical_cores']} cores; "
             f"int8 ISA: {', '.join(f for f in m['cpu']['isa'] if 'vnni' in f or 'amx' in f) or 'no VNNI/AMX'}) · "
             f"torch-pruning {report['torch_pruning']} · compress at {(m.get('git') or {}).get('commit', '?')[:10]}"
             f"{' (dirty tree)' if (m.get('git') or {}).get('dirty') else ''} · "
             f"ratio {report['ratio']} of channels per layer, L1, {report['finetune']['epochs']} fine-tuning "
             f"epochs for both · {report['latency']}", ""]
    if report["results"]:
        lines += ["| contender | params | MACs | acc. after prune | acc. after fine-tune | prune time | ONNX fp32 ms | × unpruned |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        acc = r.get("accuracy_after_prune", r.get("accuracy"))
        lines.append(f"| {name} | {r['params']:,} | {r['macs']:,} | {100 * acc:.2f} % | "
                     f"{100 * r.get('accuracy_after_finetune', r.get('accuracy')):.2f} % | "
                     f"{r.get('prune_s', 0):.2f} s | {r['onnx_fp32_ms']:.4f} | {r['latency_ratio']:.3f} |")
    nets = report.get("reference_nets") or {}
    if nets:
        lines += ["", "Reference nets (random weights, benchmarks/nets.py), fp32 ONNX latency ÷ the unpruned file "
                  "(fastest round ÷ fastest round; then the median [quartiles] of ratios in the same round):", "",
                  "| net | input | MACs unpruned → 50 % | unpruned ms | 50 % channels (round_to 8) | `--latency-target 0.5` (search predicted / measured) |",
                  "|---|---|---:|---:|---:|---:|"]
        for key, r in nets.items():
            lt = r["latency_target_0.5"]
            target = "–" if lt is None else (
                f"{lt['latency_ratio']:.3f}{_paired(lt)} ({lt['search']['predicted_ms'] / lt['search']['base_ms']:.3f} / "
                f"{lt['search']['measured_ms'] / lt['search']['base_ms']:.3f}, {lt['prune_s']:.0f} s"
                f"{_search_rounds(lt['search'])}{_load(r.get('load_average'))})")
            macs = (f"{r['macs'] / 1e6:.0f} M → {r['channels_0.5']['macs'] / 1e6:.0f} M"
                    if "macs" in r else "–")
            lines.append(f"| {r.get('arch', key)} | {r['resolution']}² | {macs} | {r['unpruned_ms']:.2f} | "
                         f"{r['channels_0.5']['latency_ratio']:.3f}{_paired(r['channels_0.5'])} "
                         f"({r['channels_0.5']['params']:,} params) | {target} |")
        if not any(r.get("runtimes") for r in nets.values()):
            return "\n".join(lines) + "\n"
        lines += ["", "Reference nets at 50 % channels, per runtime and precision: unpruned ms → pruned ms "
                  f"(× unpruned, fastest round; then the per-round ratios, median ± half their range); batch 1, "
                  f"1 thread, all eight files of a net timed interleaved, {report.get('rounds', 21)} rounds. "
                  "int8 = `compress.pipeline.quantize_model` (ONNX QDQ, uint8 activations on x86; TFLite full "
                  "int8), calibrated on random smooth images: latency only — on random weights int8 accuracy "
                  "means nothing. *LiteRT int8, AMX denied*: the same two int8 files timed in a child process "
                  "whose request for AMX tiles (`arch_prctl(ARCH_REQ_XCOMP_PERM)`) is refused, so XNNPACK runs "
                  "its AVX512-VNNI kernels — what a CPU without AMX would run.", "",
                  "| net | input | ONNX fp32 | ONNX int8 | LiteRT fp32 | LiteRT int8 | LiteRT int8, AMX denied | load avg |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for key, r in nets.items():
            rt = r.get("runtimes")
            if not rt:
                continue
            cells = [_cell(rt[f"{f}_{p}"]) for f, p in RUNTIME_ROWS]
            no_amx = rt.get("tflite_int8_no_amx") or {}
            cells.append(_cell(no_amx) if "ratio" in no_amx else f"– ({no_amx.get('error', 'not run')})")
            load = rt.get("load_average")
            cells.append(f"{load['start'][0]:.1f} → {load['end'][0]:.1f}" if load else "–")
            lines.append(f"| {r.get('arch', key)} | {r['resolution']}² | " + " | ".join(cells) + " |")
        staged = {k: r for k, r in nets.items() if (r.get("runtimes") or {}).get("stages_int8_litert")}
        if staged:
            lines += ["", "LiteRT int8 stage by stage (prefix models cut after each stage, "
                      f"{STAGE_ROUNDS} interleaved rounds, ms by difference of fastest rounds), unpruned → 50 %:", "",
                      "| net | input | XNNPACK | " + " | ".join(next(iter(staged.values()))["runtimes"]["stages_int8_litert"])
                      + " |", "|---|---|---|" + "---:|" * len(next(iter(staged.values()))["runtimes"]["stages_int8_litert"])]
            for key, r in staged.items():
                for label, field in (("AMX", "stages_int8_litert"), ("AMX denied", "stages_int8_litert_no_amx")):
                    st = r["runtimes"].get(field)
                    if st:
                        lines.append(f"| {r.get('arch', key)} | {r['resolution']}² | {label} | " + " | ".join(
                            f"{v['unpruned']:.3f} → {v['channels_0.5']:.3f}" for v in st.values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--archs", default="resnet18,mobilenetv2", help="reference nets for the latency rows ('' = none)")
    ap.add_argument("--resolution", default="112,224", help="input sizes of the reference nets, comma-separated")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="timing rounds (the fastest counts)")
    ap.add_argument("--no-zoo", action="store_true",
                    help="skip the zoo-ResNet comparison with Torch-Pruning (a quick run of the reference nets only)")
    ap.add_argument("--latency-target-only", action="store_true",
                    help="reference nets: only the 50 %% channels and --latency-target 0.5 rows (no per-runtime "
                         "rows; implies --no-zoo); with --resolution 112 a few minutes")
    ap.add_argument("--_time-without-amx", dest="time_without_amx", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.time_without_amx:  # the child of _tflite_rounds_without_amx
        _child_time_without_amx(args.time_without_amx, args.rounds)
        return
    args.no_zoo = args.no_zoo or args.latency_target_only
    if args.no_zoo:
        report = {"schema": 1, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                  "model": "reference nets only (--no-zoo)", "ratio": args.ratio, "criterion": "l1",
                  "finetune": {"epochs": 0}, "latency": "see below", "torch_pruning": "not run",
                  "machine": _machine(), "results": {}}
    else:
        report = run(args.ratio, args.epochs, args.rounds)
    sys.path.insert(0, str(HERE))
    archs = [a for a in args.archs.split(",") if a]
    resolutions = [int(r) for r in args.resolution.split(",") if r]
    report["reference_nets"] = run_latency(archs, resolutions, args.rounds,
                                           runtimes=not args.latency_target_only) if archs else {}
    report["rounds"] = args.rounds
    from compress.runtime.machine import machine_slug

    out = HERE / "results" / machine_slug(report["machine"])
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M")
    name = "prune-latency-target" if args.latency_target_only else "prune-quick" if args.no_zoo else "prune"
    (out / f"{name}-{stamp}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{name}-latest.md").write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
