"""Prove an exported ``.tflite`` file computes what the torch simulation computes, in the real runtime.

:func:`verify_tflite` loads the file in LiteRT (``ai_edge_litert``; the default op resolver, so XNNPACK runs
what it supports, as on a device), feeds the same inputs to it and to the torch reference, and compares under
the numerics contract (DESIGN.md): outputs computed in int8 within 1 LSB of their grid on ≥ 99% of elements;
float outputs within a relative error (max |diff| / max |reference|) of 1e-4. The report is the same
:class:`~compress.exporters.verify.ParityReport` the ONNX verification returns.

Given the converted graph (``graph=``) it also verifies op by op (:mod:`compress.exporters.verify_ops`):
LiteRT keeps every intermediate tensor (``experimental_preserve_all_tensors``), and each int8 tensor named
after an fx node is matched to the quantizer that node's output flows into (the exporter fuses activations and
requantization into the op that writes the tensor, and names the tensor after that op).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable

import numpy as np
from torch import fx, nn

from compress.errors import DataError, VerificationError, require
from compress.exporters.tflite.export import TFLiteExportInfo
from compress.exporters.tflite.hybrid import quantize_rows
from compress.exporters.verify import (
    ParityReport,
    VerifyConfig,
    as_batch,
    collect_diffs,
    output_parity,
    parity_report,
    single_samples,
)
from compress.exporters.verify_ops import LayerwiseParity, Probe, approximated_ops, layerwise_parity


def load_interpreter(path, num_threads: int = 1, preserve_all_tensors: bool = False):
    """A LiteRT ``Interpreter`` for ``path`` with tensors allocated (``preserve_all_tensors``: intermediate
    tensors stay readable after ``invoke``, for op-by-op verification).

    Raises:
        VerificationError: LiteRT rejects the file (the message carries LiteRT's reason).
    """
    litert = require("ai_edge_litert.interpreter", "tflite")
    with _native_stderr_captured() as captured, warnings.catch_warnings():
        # LiteRT warns that preserving all tensors is for debugging: that is what it is used for here.
        warnings.simplefilter("ignore", UserWarning)
        try:
            it = litert.Interpreter(model_path=str(path), num_threads=num_threads,
                                    experimental_preserve_all_tensors=preserve_all_tensors)
            it.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            native = " ".join(line for line in captured().splitlines() if "ERROR" in line)[:300]
            reason = str(exc).splitlines()[0] + (f": {native}" if native else "")
            raise VerificationError(f"LiteRT cannot load {path} ({reason}); re-export it, or report the op named in "
                                    "the message") from exc
    return it


@contextlib.contextmanager
def _native_stderr_captured():
    """Route the C++ runtime's stderr (file descriptor 2) to a temp file while LiteRT loads a model.

    LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" on every load, which would interleave with
    our progress bars and tables; its load errors are written there too, so the caller gets the text back.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lambda: (tmp.seek(0), tmp.read().decode(errors="replace"))[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def xnnpack_delegation(path, num_threads: int = 1) -> dict:
    """Which operators of ``path`` LiteRT hands to XNNPACK, and which fall back to its builtin kernels.

    LiteRT replaces each delegated run of operators by one ``DELEGATE`` node; an operator is delegated when
    it lies between a delegate node's inputs and outputs. Every fallback splits the graph (one more
    partition) and runs a builtin kernel, on its own thread pool.

    Returns:
        ``{"partitions": number of XNNPACK partitions, "operators": count, "fallback": [op names]}``.

    Example:
        >>> import tempfile, os, torch
        >>> from compress.exporters.tflite.export import export_tflite
        >>> p = os.path.join(tempfile.mkdtemp(), "m.tflite")
        >>> _ = export_tflite(nn.Linear(4, 2).eval(), torch.randn(1, 4), p)
        >>> xnnpack_delegation(p)["fallback"]
        []
    """
    it = load_interpreter(path, num_threads)
    ops = it._get_ops_details()  # the model's operators, then the delegate nodes LiteRT added
    model_ops = [o for o in ops if o["op_name"] != "DELEGATE"]
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    producer = {int(t): i for i, o in enumerate(model_ops) for t in o["outputs"]}
    delegated: set[int] = set()
    for d in delegates:
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:
            t = stack.pop()
            i = producer.get(t)
            if t in boundary or i is None or i in delegated:
                continue
            delegated.add(i)
            stack.extend(int(x) for x in model_ops[i]["inputs"] if x >= 0)
    fallback = [o["op_name"] for i, o in enumerate(model_ops) if i not in delegated]
    return {"partitions": len(delegates), "operators": len(model_ops), "fallback": fallback}


def run_tflite(it, batch: tuple[np.ndarray, ...], nhwc_input: bool = False) -> list[np.ndarray]:
    """Run one batch through a loaded interpreter; int8 inputs/outputs are (de)quantized with the file's qparams.

    Batches larger than the file's static batch run as consecutive slices.
    """
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(batch) != len(ins):
        raise DataError(f"a batch has {len(batch)} arrays but the TFLite model takes {len(ins)} inputs")
    n_file = int(ins[0]["shape"][0]) if len(ins[0]["shape"]) else 1
    n = batch[0].shape[0] if batch[0].ndim else 1
    if n % n_file:
        raise DataError(f"batch size {n} is not a multiple of the exported batch size {n_file}; export with an "
                        "example batch of the size you verify with, or use batch size 1")
    results: list[list[np.ndarray]] = [[] for _ in outs]
    for start in range(0, n, n_file):
        for detail, x in zip(ins, batch, strict=True):
            x = x[start:start + n_file]
            if nhwc_input and x.ndim == 4:
                x = x.transpose(0, 2, 3, 1)
            if detail["dtype"] == np.int8:
                scale, zp = detail["quantization"]
                x = np.clip(np.round(x / scale) + zp, -128, 127)
            it.set_tensor(detail["index"], np.ascontiguousarray(x.astype(detail["dtype"])))
        it.invoke()
        for i, detail in enumerate(outs):
            y = it.get_tensor(detail["index"])
            if detail["dtype"] == np.int8:
                scale, zp = detail["quantization"]
                y = (y.astype(np.float32) - zp) * np.float32(scale)
            results[i].append(np.asarray(y))
    return [np.concatenate(r) if len(r) > 1 else r[0] for r in results]


def verify_tflite(path, reference: Callable | nn.Module, inputs: Iterable, *, info: TFLiteExportInfo | None = None,
                  config: VerifyConfig | None = None, strict: bool = False,
                  graph: fx.GraphModule | None = None) -> ParityReport:
    """Run ``path`` in LiteRT and ``reference`` in torch on the same inputs; compare the outputs.

    Args:
        path: the ``.tflite`` file (from :func:`~compress.exporters.tflite.export_tflite`).
        reference: the torch simulation (the converted model) or any callable taking the input tensors.
        inputs: batches; each an array/tensor (NCHW as the torch model takes it), or a tuple of them.
        info: the export's :class:`TFLiteExportInfo` (which outputs were computed in int8, and on which grid;
            the input layout). Without it, int8 output tensors are detected from the file.
        config: thresholds; ``intra_op_threads`` is LiteRT's thread count.
        strict: raise :class:`VerificationError` (with the figures) when the contract is not met.
        graph: the converted GraphModule ``path`` was exported from: verify op by op too (on up to
            ``LAYERWISE_SAMPLES`` samples: LiteRT files run one sample at a time); the file then passes on the
            op-by-op rule and the end-to-end figures are information.

    Returns:
        A :class:`~compress.exporters.verify.ParityReport`.

    Example:
        >>> import tempfile, os, torch
        >>> from compress.exporters.tflite.export import export_tflite
        >>> m = nn.Linear(4, 2).eval(); p = os.path.join(tempfile.mkdtemp(), "m.tflite")
        >>> info = export_tflite(m, torch.randn(1, 4), p)
        >>> verify_tflite(p, m, [np.ones((3, 4), np.float32)], info=info).passed
        True
    """
    config = config or VerifyConfig()
    it = load_interpreter(path, config.intra_op_threads)
    outs = it.get_output_details()
    names = [d["name"] for d in outs]
    if info is not None:
        scales = list(info.output_scales)
        if len(scales) != len(outs):
            raise VerificationError(f"info describes {len(scales)} outputs but {path} has {len(outs)}; pass the "
                                    "TFLiteExportInfo returned by the export of this file")
    else:
        scales = [float(d["quantization"][0]) if d["dtype"] == np.int8 else None for d in outs]
    nhwc = bool(info.nhwc_input) if info is not None else False

    inputs = list(inputs)
    diffs, refs_max, problems, batches = collect_diffs(lambda batch: run_tflite(it, batch, nhwc), reference,
                                                       inputs, names, "TFLite model")
    tolerances = _fused_lstm_tolerances(it)
    outputs = [output_parity(names[i], diffs[i], refs_max[i], scales[i], config, tolerance=tolerances[i])
               for i in range(len(outs))]
    layerwise = None
    from compress.exporters.tflite.verify_dynamic import dynamic_layers, dynamic_layerwise, dynamic_lstms

    if graph is not None and (dynamic_layers(graph) or dynamic_lstms(graph)):  # hybrid ops: their own rule (verify_dynamic.py)
        layerwise = dynamic_layerwise(path, graph, inputs, info=info, config=config)
    elif graph is not None and any(s is not None for s in scales):
        layerwise = tflite_layerwise(path, graph, inputs, info=info, config=config)
    return parity_report(path, outputs, batches, problems, config, strict=strict, runtime="LiteRT",
                         layerwise=layerwise)


def _fused_lstm_tolerances(it) -> list[float | None]:
    """Per output of a loaded file: ``RECURRENT_RTOL`` when a fused LSTM lies upstream, else None (the LSB rule).

    The fused op keeps its hidden state in float, where the simulation puts it on a static int8 grid after
    every step (:func:`compress.exporters.tflite.ops_seq.fused_lstm`): what follows it is compared with the
    relative tolerance ONNX's LSTM gets for the same approximation, and the op itself with the numpy model of
    LiteRT's kernel (:func:`fused_lstm_parity`)."""
    from compress.exporters.onnx.ops_seq import RECURRENT_RTOL

    ops = [o for o in it._get_ops_details() if o["op_name"] != "DELEGATE"]
    producer = {int(t): o for o in ops for t in o["outputs"]}
    result = []
    for detail in it.get_output_details():
        stack, seen, fused = [int(detail["index"])], set(), False
        while stack and not fused:
            op = producer.get(stack.pop())
            if op is None or int(op["index"]) in seen:
                continue
            seen.add(int(op["index"]))
            fused = op["op_name"] == "UNIDIRECTIONAL_SEQUENCE_LSTM"
            stack.extend(int(t) for t in op["inputs"] if t >= 0)
        result.append(RECURRENT_RTOL if fused else None)
    return result


#: Samples the op-by-op check runs (LiteRT runs one sample per invoke; the torch graph then does too).
LAYERWISE_SAMPLES = 64


def tflite_probes(it, graph: fx.GraphModule) -> tuple[list[Probe], dict[str, str]]:
    """The int8 tensors of a loaded interpreter that hold an fx node's value, and the quantizers with none.

    A tensor named after fx node ``n`` (or ``n_quant``: the QUANTIZE after a float op) holds the output of the
    quantizer ``n`` feeds, directly or through fused activations (ReLU, clamps), when that quantizer has the
    tensor's grid. A quantizer still unmatched (a decomposed op, e.g. LayerNorm, names its tensors after the
    module) takes the first unclaimed tensor written on exactly its grid with its shape (up to layout).
    Quantization-preserving ops (reshape, flatten) are not probed: after an NHWC flatten their tensors hold the
    features in another order, which the file does not record.
    """
    from compress import ops
    from compress.quant.fake import Quantizer

    modules = dict(graph.named_modules())
    nodes = {n.name: n for n in graph.graph.nodes}
    quantizers = [n for n in graph.graph.nodes if n.op == "call_module" and isinstance(modules.get(n.target), Quantizer)]
    details = {int(t["index"]): t for t in it.get_tensor_details()}
    written = [int(i) for o in it._get_ops_details() if o["op_name"] != "DELEGATE" for i in o["outputs"]]
    int8 = [details[i] for i in dict.fromkeys(written) if details[i]["dtype"] == np.int8
            and details[i]["quantization"][0]]

    def fits(q: fx.Node, t) -> bool:
        scale, zero = t["quantization"]
        meta = getattr(q.meta.get("tensor_meta"), "shape", None)
        # Up to layout and batch: the sorted non-1 sizes after the batch axis (NHWC, Conv1d as 4-D).
        same_shape = meta is None or _sizes(t["shape"][1:]) == _sizes(meta[1:])
        mod = modules[q.target]
        return same_shape and np.isclose(float(mod.scale), scale, rtol=1e-6, atol=0) and \
            int(mod.zero_point) == int(zero)

    probes: dict[str, Probe] = {}
    claimed: set[int] = set()

    def claim(q: fx.Node, t) -> None:
        scale, zero = t["quantization"]
        probes[q.name] = Probe(q.name, int(t["index"]), float(scale), int(zero))
        claimed.add(int(t["index"]))

    for t in int8:
        name = t["name"]
        walk = nodes.get(name) or (nodes.get(name[:-len("_quant")]) if name.endswith("_quant") else None)
        while walk is not None and walk not in quantizers:
            users = list(walk.users)
            fused = len(users) == 1 and (users[0] in quantizers or getattr(
                ops.lookup(users[0], modules), "policy", None) is ops.Policy.CLAMP)
            walk = users[0] if fused else None
        if walk is not None and walk.name not in probes and fits(walk, t):
            claim(walk, t)
    for q in quantizers:
        if q.name not in probes:
            t = next((t for t in int8 if int(t["index"]) not in claimed and fits(q, t)), None)
            if t is not None:
                claim(q, t)
    unprobed = {q.name: "no int8 tensor on its grid in the file" for q in quantizers if q.name not in probes}
    return list(probes.values()), unprobed


def _sizes(shape) -> list[int]:
    return sorted(int(d) for d in shape if int(d) != 1)


def tflite_layerwise(path, graph: fx.GraphModule, inputs: Iterable, *, info: TFLiteExportInfo | None = None,
                     config: VerifyConfig | None = None) -> LayerwiseParity:
    """Op-by-op parity of the ``.tflite`` file ``path`` against ``graph``, one sample per invoke (the files
    have a static batch of 1), on the first :data:`LAYERWISE_SAMPLES` samples of ``inputs``."""
    config = config or VerifyConfig()
    it = load_interpreter(path, config.intra_op_threads, preserve_all_tensors=True)
    probes, unprobed = tflite_probes(it, graph)
    nhwc = bool(info.nhwc_input) if info is not None else False

    def run(sample):
        outputs = run_tflite(it, sample, nhwc)
        return {p.key: it.get_tensor(p.key).copy() for p in probes}, outputs

    return layerwise_parity(graph, run, single_samples(inputs, LAYERWISE_SAMPLES), probes, runtime="LiteRT",
                            max_op_lsb=config.max_op_lsb, float_rtol=config.float_rtol,
                            approximated=_approximated(graph, info),
                            unchecked=unprobed)


def _approximated(graph: fx.GraphModule, info) -> dict[str, float]:
    """The ops this file computes differently from the simulation by design: a quantized LSTM / GRU is
    unrolled over LiteRT's dynamic-range FULLY_CONNECTEDs (inputs quantized per call, the hidden state in
    float, where the simulation keeps it on a static int8 grid). They get the ONNX exporter's tolerance for
    the same approximation."""
    from compress import ops
    from compress.exporters.onnx.ops_seq import RECURRENT_RTOL

    found = approximated_ops(info) if getattr(info, "approximations", None) else {}
    modules = dict(graph.named_modules())
    for node in graph.graph.nodes:
        spec = ops.lookup(node, modules)
        if spec is not None and spec.name in ("lstm", "gru") and hasattr(modules.get(node.target), "weight_quants"):
            found.setdefault(node.name, RECURRENT_RTOL)
    return found


# -- the fused LSTM against a numpy model of LiteRT's kernel ---------------------------------------------------
#: How close a fused LSTM's hidden states must be to the numpy model of LiteRT's kernel: the model repeats the
#: kernel's integer arithmetic, so most values agree to float32 noise (``FUSED_LSTM_CLOSE``); where that noise
#: (LiteRT's own sigmoid / tanh) moves a value that is quantized next across a rounding boundary, one code
#: flips, the hidden state moves by ~4e-4 and the recurrence carries it on. Measured on the zoo audio LSTM
#: (2 × 96, 25 steps, 300 samples): 99.8 % of values within 1e-4, the largest difference 3.9e-3. A wrong gate
#: order, weight scale or zero point is off by 1e-2 to 1 nearly everywhere.
FUSED_LSTM_CLOSE = 1e-4
FUSED_LSTM_MIN_CLOSE_FRACTION = 0.98
FUSED_LSTM_ATOL = 2e-2


def fused_lstm_reference(x: np.ndarray, w_ih: list, w_hh: list, bias: list, *, time_major: bool,
                         asymmetric: bool = True) -> np.ndarray:
    """The hidden sequence LiteRT's UNIDIRECTIONAL_SEQUENCE_LSTM computes (no peephole, projection, clip or
    layer norm; tanh activation; zero initial state), written from lstm_eval.cc's semantics, in float32 as the
    kernel computes (in float64 the next step's quantized hidden state flips a code now and then).

    ``w_ih`` / ``w_hh``: per gate (i, f, g, o) either a float ``[H, in]`` matrix or ``(int8 codes, scale)``
    (hybrid): then every step quantizes its input and the previous hidden state per batch row
    (:func:`quantize_rows`), takes the exact integer products ``codes · q − zero point · Σ codes`` and scales
    them by row scale × weight scale; bias, gates, cell and hidden state are float32.

    Example:
        >>> eye = [(np.eye(2, dtype=np.int8) * 127, 1 / 127)] * 4
        >>> y = fused_lstm_reference(np.ones((1, 1, 2), np.float32), eye, eye, [np.zeros(2)] * 4, time_major=True)
        >>> np.round(y.astype(float), 4).tolist()  # every gate 1: σ(1) · tanh(σ(1) · tanh(1))
        [[[0.3696, 0.3696]]]
    """
    f32 = np.float32
    x = np.asarray(x, f32)
    if not time_major:
        x = x.transpose(1, 0, 2)
    steps, bsz, _ = x.shape
    hidden = len(bias[0])
    h, c = np.zeros((bsz, hidden), f32), np.zeros((bsz, hidden), f32)

    def accumulate(acc: np.ndarray, v: np.ndarray, w) -> np.ndarray:
        if not isinstance(w, tuple):
            return acc + v @ np.asarray(w, f32).T
        if not v.any():  # the kernel skips an all-zero input (the first step's hidden state)
            return acc
        codes, w_scale = w
        codes = codes.astype(np.int64)
        q, s, zp = quantize_rows(v, asymmetric)
        dot = q.astype(np.int64) @ codes.T - zp[:, None].astype(np.int64) * codes.sum(1)[None, :]
        return acc + dot.astype(f32) * (s * f32(w_scale))[:, None]

    def sigmoid(v):
        return (f32(1) / (f32(1) + np.exp(-v))).astype(f32)

    out = []
    for t in range(steps):
        g = [accumulate(accumulate(np.broadcast_to(np.asarray(bias[k], f32), (bsz, hidden)), x[t], w_ih[k]),
                        h, w_hh[k]) for k in range(4)]
        c = sigmoid(g[1]) * c + sigmoid(g[0]) * np.tanh(g[2])
        h = sigmoid(g[3]) * np.tanh(c)
        out.append(h)
    y = np.stack(out)
    return y if time_major else y.transpose(1, 0, 2)


def fused_lstm_parity(path, inputs: Iterable, *, nhwc_input: bool = False, num_threads: int = 1,
                      samples: int = LAYERWISE_SAMPLES) -> dict:
    """Every UNIDIRECTIONAL_SEQUENCE_LSTM of ``path`` against :func:`fused_lstm_reference` given the input
    LiteRT fed it, weights and options read from the file, on up to ``samples`` batches of ``inputs``.

    Returns:
        ``{"ops": fused LSTMs in the file, "samples": batches run, "max_abs_diff": largest |LiteRT − model|,
        "close_fraction": share of values within FUSED_LSTM_CLOSE, "passed": both within their limits}``.
    """
    it = load_interpreter(path, num_threads, preserve_all_tensors=True)
    lstms = fused_lstm_ops(path, it)
    result = {"ops": len(lstms), "samples": 0, "max_abs_diff": 0.0, "close_fraction": 1.0, "passed": True}
    if not lstms:
        return result
    close = total = 0
    for item in inputs:
        if result["samples"] >= samples:
            break
        run_tflite(it, as_batch(item), nhwc_input)
        result["samples"] += 1
        for lstm in lstms:
            diff = np.abs(it.get_tensor(int(lstm[0]["outputs"][0])) - fused_lstm_expected(it, *lstm))
            result["max_abs_diff"] = max(result["max_abs_diff"], float(diff.max()))
            close, total = close + int((diff <= FUSED_LSTM_CLOSE).sum()), total + diff.size
    result["close_fraction"] = close / total if total else 1.0
    result["passed"] = result["close_fraction"] >= FUSED_LSTM_MIN_CLOSE_FRACTION and \
        result["max_abs_diff"] <= FUSED_LSTM_ATOL
    return result


def fused_lstm_ops(path, it) -> list[tuple[dict, bool, bool]]:
    """The UNIDIRECTIONAL_SEQUENCE_LSTMs of the loaded file ``path`` in execution order, each as (op details,
    time_major, asymmetric_quantize_inputs); a form :func:`fused_lstm_reference` does not model is refused."""
    import tflite

    lstms = [o for o in it._get_ops_details() if o["op_name"] == "UNIDIRECTIONAL_SEQUENCE_LSTM"]
    if not lstms:
        return []
    sub = tflite.Model.GetRootAsModel(open(path, "rb").read(), 0).Subgraphs(0)
    found = []
    for o in lstms:
        table = tflite.UnidirectionalSequenceLSTMOptions()
        opts = sub.Operators(int(o["index"])).BuiltinOptions()
        table.Init(opts.Bytes, opts.Pos)
        if table.FusedActivationFunction() != 4 or table.CellClip() or table.ProjClip() or any(
                int(o["inputs"][i]) >= 0 for i in (9, 10, 11, 16, 17, 20, 21, 22, 23)):
            raise VerificationError(f"{path}: a fused LSTM with peepholes, projection, clipping, layer norm or a "
                                    "non-tanh activation has no numpy model here; re-export it")
        found.append((o, bool(table.TimeMajor()), bool(table.AsymmetricQuantizeInputs())))
    return found


def fused_lstm_expected(it, op: dict, time_major: bool, asymmetric: bool, weights: tuple | None = None) -> np.ndarray:
    """:func:`fused_lstm_reference` of one fused op of the last invoke (``it`` loaded with
    ``preserve_all_tensors``): its input as LiteRT fed it, its weights (int8 codes with their one scale, or
    float) and biases as the file holds them, or ``weights`` = (w_ih, w_hh, bias) given (from the layer)."""
    details = {int(d["index"]): d for d in it.get_tensor_details()}

    def weight(i: int):
        w, d = it.get_tensor(i), details[i]
        return (w, float(d["quantization_parameters"]["scales"][0])) if d["dtype"] == np.int8 else w

    ins = [int(i) for i in op["inputs"]]
    if weights is None:
        weights = [weight(i) for i in ins[1:5]], [weight(i) for i in ins[5:9]], [it.get_tensor(i) for i in ins[12:16]]
    return fused_lstm_reference(it.get_tensor(ins[0]), *weights, time_major=time_major, asymmetric=asymmetric)
