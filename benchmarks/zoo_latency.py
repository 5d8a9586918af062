"""Zoo benchmark helpers (benchmarks/run_zoo.py): inputs at a larger batch, and onnxruntime's per-node profile
that names why an int8 file is slower than its fp32 one.

The int8 / fp32 ratio of a small model depends on the batch: at batch 1 per-node overheads dominate, at
batch 8 the kernels do. run_zoo.py times both; for a ratio above 1 it profiles the two files (one fresh
process each, ``SessionOptions.enable_profiling``, per-node kernel time) and writes the nodes that account
for the difference into its notes.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
import time

import numpy as np


def tile_batch(arrays: dict, batch: int) -> dict:
    """Each array's first ``batch`` rows, repeating the rows it has when it has fewer.

    Example:
        >>> tile_batch({"x": np.arange(3).reshape(3, 1)}, 5)["x"].ravel().tolist()
        [0, 1, 2, 0, 1]
    """
    out = {}
    for name, a in arrays.items():
        reps = -(-batch // len(a))
        out[name] = np.ascontiguousarray(np.concatenate([a] * reps)[:batch])
    return out


def measure_profile(path: str, inputs: str, runs: int = 200, threads: int = 1) -> dict:
    """onnxruntime's kernel time per node of ``path`` on the ``.npz`` ``inputs`` (a fresh process runs this).

    Returns ``total_us`` (mean kernel time per run, all nodes) and ``nodes``: per node (op type as onnxruntime
    runs it after its fusions, node name, first input's shape) the mean µs per run, largest first.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.log_severity_level = 3
    prefix = os.path.join(tempfile.mkdtemp(prefix="zoo-prof-"), "p")
    opts.profile_file_prefix = prefix
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    with np.load(inputs) as npz:
        feeds = {k: npz[k] for k in npz.files}
    t0 = time.perf_counter()
    for _ in range(10 + runs):  # the 10 warm-up runs are profiled too: one slow first run in 210 is noise
        sess.run(None, feeds)
    trace = sess.end_profiling()
    with open(trace) as f:
        events = json.load(f)
    os.remove(trace)
    totals: dict = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            args = e.get("args", {})
            shapes = args.get("input_type_shape") or [{}]
            first = next(iter(shapes[0].items()), ("", []))
            totals[(args.get("op_name", "?"), e["name"][: -len("_kernel_time")], f"{first[0]}{first[1]}")] += e["dur"]
    n = runs + 10
    nodes = [{"op": op, "node": name, "input": shape, "us": us / n}
             for (op, name, shape), us in sorted(totals.items(), key=lambda kv: -kv[1])]
    return {"total_us": sum(x["us"] for x in nodes), "nodes": nodes, "runs": n,
            "wall_s": time.perf_counter() - t0}


# onnxruntime's kernels grouped by what they compute, so an int8 kernel is compared with the fp32 one it stands
# for (QLinearConv with the NCHWc Conv, QGemm with FusedGemm); other op types stand for themselves.
FAMILIES = {
    "conv": {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcConv"},
    "matmul/gemm": {"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "QGemm", "QLinearMatMul", "MatMulInteger",
                    "MatMulIntegerToFloat", "DynamicQuantizeMatMul"},
    "pool": {"MaxPool", "NhwcMaxPool", "AveragePool", "QLinearAveragePool", "GlobalAveragePool",
             "QLinearGlobalAveragePool"},
    "add": {"Add", "QLinearAdd"},
    "layout": {"Transpose", "ReorderInput", "ReorderOutput", "Reshape"},
    "Q/DQ": {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"},
}
_FAMILY = {op: fam for fam, ops in FAMILIES.items() for op in ops}


def _by_family(profile: dict) -> dict[str, float]:
    acc: dict[str, float] = collections.defaultdict(float)
    for x in profile["nodes"]:
        acc[_FAMILY.get(x["op"], x["op"])] += x["us"]
    return dict(acc)


def profile_cause(int8: dict, fp32: dict, top: int = 3) -> str:
    """One line naming what makes the int8 file slower: its largest nodes, and the kernel families
    (:data:`FAMILIES`) whose total time changed most from the fp32 file's (the two files are fused differently,
    so families are compared as totals, not node by node). onnxruntime's profiling adds a fixed cost to each
    node, so at batch 1 the totals exceed the timed latency; the shares are what to read.

    Example:
        >>> a = {"total_us": 30.0, "nodes": [{"op": "QLinearConv", "node": "c1", "input": "uint8[1, 28, 28, 1]",
        ...      "us": 25.0}, {"op": "QuantizeLinear", "node": "q", "input": "float[1, 1, 28, 28]", "us": 5.0}]}
        >>> b = {"total_us": 12.0, "nodes": [{"op": "Conv", "node": "c1", "input": "float[1, 1, 28, 28]",
        ...      "us": 12.0}]}
        >>> profile_cause(a, b, top=1)
        'kernel time 30 µs int8 vs 12 µs fp32; largest int8 nodes: QLinearConv c1 uint8[1, 28, 28, 1] 25 µs (83 %); kernel families int8 − fp32: conv +13'
    """
    total = int8["total_us"] or 1.0
    largest = ", ".join(f"{x['op']} {x['node']} {x['input']} {x['us']:.0f} µs ({100 * x['us'] / total:.0f} %)"
                        for x in int8["nodes"][:top])
    a, b = _by_family(int8), _by_family(fp32)
    delta = {op: a.get(op, 0.0) - b.get(op, 0.0) for op in set(a) | set(b)}
    moved = sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:top]
    moves = ", ".join(f"{op} {'+' if d >= 0 else '−'}{abs(d):.0f}" for op, d in moved)
    return (f"kernel time {int8['total_us']:.0f} µs int8 vs {fp32['total_us']:.0f} µs fp32; largest int8 nodes: "
            f"{largest}; kernel families int8 − fp32: {moves}")
