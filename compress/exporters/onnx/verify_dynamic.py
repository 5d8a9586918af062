"""Verification of ONNX dynamic and weight-only layers: the rule, and a numpy reference of onnxruntime's arithmetic.

A dynamic-mode Linear / Conv is written as ``DynamicQuantizeLinear → MatMulInteger / ConvInteger → Cast →
Mul(x_scale × w_scale) → Add(bias)`` (:mod:`compress.exporters.onnx.ops_dynamic`). Its input grid is computed
from the tensor on every call, so float noise upstream (LayerNorm, Erf, Softmax summed in another order) moves
the grid and flips codes: the zoo BERT's file is 2e-3 off the simulation end to end although every op is
right. A dynamic graph has no int8 tensor to probe, so the op-by-op rule of :mod:`compress.exporters.verify_ops`
found nothing and only the end-to-end float rule (1e-4) decided. The rule here, the same as TFLite's hybrid ops
(:mod:`compress.exporters.tflite.verify_dynamic`):

* **each dynamic layer against onnxruntime's arithmetic, fed onnxruntime's own input.** A copy of the model
  lists the float input of each DynamicQuantizeLinear and the layer's float output as graph outputs.
  :func:`dynamic_linear_reference` / :func:`dynamic_conv_reference` compute in numpy what the ops compute from
  that input with the *layer's* int8 codes, scales and float bias: DynamicQuantizeLinear's uint8 per-tensor
  asymmetric grid (half to even), the exact integer product, ``float(acc) × (x_scale × w_scale) + bias``,
  the fused activation. onnxruntime's output passes when every element is within :data:`DYNAMIC_STEPS` input
  steps (``x_scale × w_scale[c] × max |codes[c]|``: what one input code rounded the other way moves an output
  by) plus 1e-5 of the output's range (float32 rounding of the rescale).
* **weight-only layers** (int8 weights behind DequantizeLinear into a float Gemm / MatMul / Conv / Gather):
  the op's output against the float op on the dequantized codes, fed the op's own input in onnxruntime,
  within ``VerifyConfig.float_rtol`` of the reference's magnitude.
* **the float ops between them**: each dynamic layer's input and output are float probes, substituted into
  the torch simulation, so the simulation of the ops in between (LayerNorm, attention, GELU) is fed
  onnxruntime's values and the next layer's input is compared with ``float_rtol`` given the same inputs; the
  int8 probes of a mixed model keep their LSB rule.
* the difference of each dynamic layer from the simulation is information (``dynamic[].sim_max_rel_diff``), as
  are the end-to-end figures. A dynamic layer whose ops are not found in the file fails.

Example:
    >>> x = np.array([[1.0, -2.0, 0.5]], np.float32)
    >>> codes, scale = np.array([[127, 0, -127]], np.int8), np.array([0.01])
    >>> y = dynamic_linear_reference(x, codes, scale, np.array([0.25], np.float32))
    >>> bool(abs(y[0, 0] - (0.01 * 127 * (1.0 - 0.5) + 0.25)) < 0.01)
    True
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from compress.errors import require
from compress.exporters.onnx.verify import ort_session
from compress.exporters.tflite.verify_dynamic import DynamicLayerwiseParity, HybridOpParity
from compress.exporters.verify import VerifyConfig, as_batch
from compress.exporters.verify_ops import (
    WORST_LISTED,
    LayerwiseParity,
    OpParity,
    Probe,
    approximated_ops,
    layerwise_parity,
    torch_layouts,
    user_source,
)
from compress.layers.base import FusedActivation, apply_fused
from compress.quant.config import QuantMode

#: Input steps a dynamic layer's output may differ from the numpy reference by (the TFLite hybrid rule's 2).
DYNAMIC_STEPS = 2.0
# float32 rounding of the runtime's rescale and bias add, relative to the output's magnitude.
_FLOAT_SLACK = 1e-5
_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def dynamic_qparams_np(x: np.ndarray) -> tuple[np.float32, int]:
    """(float32 scale, zero point) of DynamicQuantizeLinear for ``x``, per the ONNX operator definition: the
    range is widened to include 0, ``scale = (max − min) / 255``, ``zero_point = round_half_even(clip(−min /
    scale, 0, 255))``. An all-zero tensor gets scale 0 (every code is then the zero point).

    Example:
        >>> s, z = dynamic_qparams_np(np.array([-1.0, 0.5, 3.0], np.float32))
        >>> round(float(s) * 255, 5), z
        (4.0, 64)
    """
    x = np.asarray(x, np.float32)
    lo = np.float32(min(float(x.min(initial=0.0)), 0.0))
    hi = np.float32(max(float(x.max(initial=0.0)), 0.0))
    scale = np.float32((hi - lo) / np.float32(255.0))
    if scale == 0:
        return scale, 0
    zp = int(np.rint(np.clip(-lo / scale, 0, 255)))
    return scale, zp


def dynamic_quantize_np(x: np.ndarray) -> tuple[np.ndarray, np.float32, int]:
    """(uint8 codes, scale, zero point): ``clip(round_half_even(x / scale) + zero_point, 0, 255)``."""
    x = np.asarray(x, np.float32)
    scale, zp = dynamic_qparams_np(x)
    if scale == 0:
        return np.full(x.shape, zp, np.uint8), scale, zp
    return np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8), scale, zp


def _rescale(acc: np.ndarray, x_scale: np.float32, w_scale: np.ndarray, bias: np.ndarray | None,
             channel_shape: tuple[int, ...], act: FusedActivation) -> np.ndarray:
    """The exporter's Cast → Mul(x_scale × w_scale) → Add(bias) in float32, then the fused activation."""
    w_scale = np.asarray(w_scale, np.float32).reshape(-1)
    scale = (np.float32(x_scale) * w_scale).astype(np.float32)
    y = acc.astype(np.float32) * (scale.reshape(channel_shape) if scale.size > 1 else scale.reshape(()))
    if bias is not None:
        y = y + np.asarray(bias, np.float32).reshape(channel_shape)
    return apply_fused(torch.from_numpy(np.ascontiguousarray(y)), act).numpy()


def dynamic_linear_reference(x: np.ndarray, codes: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None,
                             act: FusedActivation = FusedActivation.NONE) -> np.ndarray:
    """What DynamicQuantizeLinear → MatMulInteger → rescale computes for ``x [..., K]`` and int8 ``codes [C, K]``
    (weight scale per output channel or one), in numpy: the int64 product is exact."""
    q, scale, zp = dynamic_quantize_np(x)
    acc = (q.astype(np.int64) - zp) @ np.asarray(codes, np.int64).T
    return _rescale(acc, scale, w_scale, bias, (-1,), act)


def dynamic_conv_reference(x: np.ndarray, codes: np.ndarray, w_scale: np.ndarray, bias: np.ndarray | None,
                           layer: nn.Module, act: FusedActivation = FusedActivation.NONE) -> np.ndarray:
    """DynamicQuantizeLinear → ConvInteger → rescale for ``x [N, C, ...]``: the codes minus the zero point
    (ConvInteger pads with the zero point, so the padding is real 0) convolved with the int8 codes in float64
    (exact: every partial sum is an integer far below 2^53); ``layer`` gives stride, padding, dilation, groups."""
    import torch.nn.functional as F

    q, scale, zp = dynamic_quantize_np(x)
    centred = torch.from_numpy(q.astype(np.float64) - zp)
    conv = F.conv1d if q.ndim == 3 else F.conv2d
    acc = conv(centred, torch.from_numpy(np.asarray(codes, np.float64)), None, layer.stride, layer.padding,
               layer.dilation, layer.groups).numpy()
    return _rescale(np.rint(acc).astype(np.int64), scale, w_scale, bias, (1, -1) + (1,) * (q.ndim - 2), act)


def dynamic_step(x: np.ndarray, codes: np.ndarray, w_scale: np.ndarray, out_shape, channel_axis: int) -> np.ndarray:
    """The output change one input code moves, broadcast to ``out_shape``: x_scale × w_scale[c] × max |codes[c]|."""
    scale, _ = dynamic_qparams_np(x)
    w = np.abs(np.asarray(codes, np.float64)).reshape(codes.shape[0], -1).max(axis=1)
    step = float(scale) * np.broadcast_to(np.asarray(w_scale, np.float64).reshape(-1), w.shape) * w
    shape = [1] * len(out_shape)
    shape[channel_axis] = -1
    return np.broadcast_to(step.reshape(shape), tuple(out_shape))


@dataclass
class _Site:
    """A weight layer as the file holds it: the values onnxruntime exposes and what the reference needs."""

    node: fx.Node
    module: nn.Module
    mode: QuantMode
    x_key: str  # the float (or index) input the op reads in onnxruntime
    y_key: str  # the op's output; for a dynamic layer the fx node's value (substituted into the simulation)
    codes: np.ndarray
    w_scale: np.ndarray
    bias: np.ndarray | None
    act: FusedActivation
    op_type: str = ""
    axis: int | None = 0  # the weight scale's channel axis (weight-only dequantization)
    acc: HybridOpParity = None  # type: ignore[assignment]
    max_abs: float = 0.0
    ref_max: float = 0.0
    sim_abs: float = 0.0
    sim_max: float = 0.0

    def reference(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(the reference output for onnxruntime's input ``x``, the one-input-code step or None: float rule)."""
        m = self.module
        if self.mode is QuantMode.DYNAMIC:
            if isinstance(m, nn.Linear):
                y = dynamic_linear_reference(x, self.codes, self.w_scale, self.bias, self.act)
                return y, dynamic_step(x, self.codes, self.w_scale, y.shape, -1)
            y = dynamic_conv_reference(x, self.codes, self.w_scale, self.bias, m, self.act)
            return y, dynamic_step(x, self.codes, self.w_scale, y.shape, 1)
        shape = [1] * self.codes.ndim
        if self.w_scale.size > 1:
            shape[self.axis or 0] = -1
        w = self.codes.astype(np.float32) * np.asarray(self.w_scale, np.float32).reshape(shape)
        if self.op_type == "Gather":
            return w[np.asarray(x, np.int64)], None
        xt, wt = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(w.astype(np.float64))
        b = None if self.bias is None else torch.from_numpy(self.bias.astype(np.float64))
        if isinstance(m, nn.Linear):
            y = torch.nn.functional.linear(xt, wt, b)
        else:
            conv = torch.nn.functional.conv1d if xt.ndim == 3 else torch.nn.functional.conv2d
            y = conv(xt, wt, b, m.stride, m.padding, m.dilation, m.groups)
        return y.numpy(), None


def checked_layers(graph: fx.GraphModule) -> list[fx.Node]:
    """The graph's call_module nodes whose layer is dynamic (Linear / Conv) or weight-only (also Embedding)."""
    from compress.layers.dynamic import layer_mode

    modules = dict(graph.named_modules())
    found = []
    for n in graph.graph.nodes:
        m = modules.get(n.target) if n.op == "call_module" else None
        mode = layer_mode(m) if m is not None else None
        if mode is QuantMode.DYNAMIC and isinstance(m, _WEIGHT_LAYERS) or \
                mode is QuantMode.WEIGHT_ONLY and isinstance(m, _WEIGHT_LAYERS + (nn.Embedding,)):
            found.append(n)
    return found


def has_dynamic_layers(graph: fx.GraphModule) -> bool:
    """Whether op-by-op verification of ``graph``'s ONNX file needs this module's rule."""
    from compress.layers.dynamic import layer_mode

    modules = dict(graph.named_modules())
    return any(layer_mode(modules[n.target]) is QuantMode.DYNAMIC for n in checked_layers(graph))


def _sites(model, graph: fx.GraphModule) -> tuple[list[_Site], dict[str, str], dict[str, str]]:
    """Each checked layer's ops in ``model`` (an ``onnx.ModelProto``), found by structure and by the layer's
    own int8 codes (the file's value names are short and say nothing of the model): a MatMulInteger /
    ConvInteger whose weight initializer holds the codes (transposed for MatMul), fed by a
    DynamicQuantizeLinear; a Gemm / MatMul / Conv / Gather reading a DequantizeLinear of them. Returns the
    sites, the dynamic layers not found (they fail) and the weight-only layers not found (unchecked)."""
    from compress.layers.dynamic import layer_mode
    from compress.quant.numerics import weight_codes

    numpy_helper = require("onnx", "onnx").numpy_helper
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def sole(value: str, op_type: str | tuple[str, ...]):
        users = consumers.get(value, [])
        types = (op_type,) if isinstance(op_type, str) else op_type
        return users[0] if len(users) == 1 and users[0].op_type in types else None

    def holds(name: str, codes: np.ndarray) -> bool:
        arr = consts.get(name)
        return arr is not None and arr.shape == codes.shape and np.array_equal(arr, codes)

    modules = dict(graph.named_modules())
    used: set[int] = set()
    sites, missing, unchecked = [], {}, {}
    for fx_node in checked_layers(graph):
        m = modules[fx_node.target]
        mode = layer_mode(m)
        weight, bias = m.folded() if hasattr(m, "folded") else (m.weight, getattr(m, "bias", None))
        codes, scale, axis = weight_codes(weight, m.weight_quant, fx_node.name)
        codes = np.asarray(codes)
        act = getattr(m, "activation", FusedActivation.NONE)
        bias_np = None if bias is None else bias.detach().float().numpy()
        site = None
        for i, n in enumerate(model.graph.node):
            if i in used:
                continue
            if mode is QuantMode.DYNAMIC and n.op_type in ("MatMulInteger", "ConvInteger"):
                want = codes.T if n.op_type == "MatMulInteger" else codes
                dql = producer.get(n.input[0])
                if not holds(n.input[1], np.ascontiguousarray(want)) or dql is None \
                        or dql.op_type != "DynamicQuantizeLinear":
                    continue
                y = _epilogue(n.output[0], sole, bias is not None, act)
                if y is None:
                    continue
                site = _Site(fx_node, m, mode, dql.input[0], y, codes, np.asarray(scale, np.float64).reshape(-1),
                             bias_np, act, n.op_type)
            elif mode is QuantMode.WEIGHT_ONLY and n.op_type == "DequantizeLinear" \
                    and (holds(n.input[0], codes) or holds(n.input[0], np.ascontiguousarray(codes.T))):
                op = sole(n.output[0], ("Gemm", "MatMul", "Conv", "Gather"))
                if op is None:
                    continue
                x = op.input[1] if op.op_type == "Gather" else op.input[0]
                # The float op's own bias input (Gemm's C, Conv's B); an Add after a MatMul is left to the
                # float checks downstream.
                has_bias = op.op_type in ("Gemm", "Conv") and len(op.input) > 2 and bool(op.input[2])
                site = _Site(fx_node, m, mode, x, op.output[0], codes, np.asarray(scale, np.float64).reshape(-1),
                             bias_np if has_bias else None, FusedActivation.NONE, op.op_type, axis)
            if site is not None:
                used.add(i)
                break
        if site is not None:
            sites.append(site)
        elif mode is QuantMode.DYNAMIC:
            missing[fx_node.name] = "no DynamicQuantizeLinear → MatMulInteger / ConvInteger with its weight codes"
        else:
            unchecked[fx_node.name] = "weight-only: no DequantizeLinear of its weight codes into a float op"
    return sites, missing, unchecked


def _epilogue(acc: str, sole, has_bias: bool, act: FusedActivation) -> str | None:
    """The value after the dynamic emitter's Cast → Mul → [Add] → [Relu / Clip] behind the integer op."""
    cast = sole(acc, "Cast")
    mul = cast and sole(cast.output[0], "Mul")
    if mul is None:
        return None
    y = mul.output[0]
    for needed, op_type in ((has_bias, "Add"), (act is FusedActivation.RELU, "Relu"),
                            (act is FusedActivation.RELU6, "Clip")):
        if needed:
            nxt = sole(y, op_type)
            if nxt is None:
                return None
            y = nxt.output[0]
    return y


def dynamic_onnx_layerwise(path, graph: fx.GraphModule, inputs: Iterable, *, info=None,
                           config: VerifyConfig | None = None, session=None) -> DynamicLayerwiseParity:
    """Op-by-op parity of an ONNX file with dynamic layers (the rule in the module docstring).

    Example:
        >>> import tempfile, os
        >>> from compress.exporters.onnx import export_onnx
        >>> from compress.passes import convert, prepare
        >>> from compress.quant.config import QuantConfig, QuantMode
        >>> x = torch.randn(8, 4)
        >>> q = convert(prepare(nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2)), (x[:1],),
        ...                     QuantConfig(mode=QuantMode.DYNAMIC)))
        >>> path = os.path.join(tempfile.mkdtemp(), "m.onnx"); info = export_onnx(q, (x[:1],), path)
        >>> r = dynamic_onnx_layerwise(path, q, [(x.numpy(),)], info=info)
        >>> r.passed, [d.node for d in r.dynamic]
        (True, ['_0', '_2'])
    """
    from compress.exporters.onnx.verify import onnx_probes

    config = config if config is not None else VerifyConfig()
    onnx = require("onnx", "onnx")
    model = onnx.load(str(path))
    probes, unprobed = onnx_probes(model, graph, getattr(info, "probe_values", None))
    sites, missing, wo_unchecked = _sites(model, graph)
    unprobed.update(wo_unchecked)
    modules = dict(graph.named_modules())
    names = {n.name: n for n in graph.graph.nodes}
    int8_probed = {p.node for p in probes}
    for s in sites:
        label = f"{type(s.module).__name__} ({s.mode.value})"
        s.acc = HybridOpParity(s.node.name, label, user_source(s.node))
    # Float probes: each dynamic layer's output, and the input it quantizes (the value of the fx node feeding
    # it), so the simulation of the float ops between layers runs on onnxruntime's values.
    float_probes: dict[str, str] = {}
    for s in sites:
        if s.mode is not QuantMode.DYNAMIC:
            continue
        float_probes[s.node.name] = s.y_key
        src = s.node.args[0] if s.node.args else None
        if isinstance(src, fx.Node) and src.op != "placeholder" and src.name in names \
                and src.name not in int8_probed:
            float_probes.setdefault(src.name, s.x_key)
    probes = [p for p in probes if p.node not in float_probes] + [Probe(k, v, None) for k, v in float_probes.items()]
    finals = [o.name for o in model.graph.output]
    graph_io = set(finals) | {i.name for i in model.graph.input}
    extra = [k for k in dict.fromkeys([p.key for p in probes] + [k for s in sites for k in (s.x_key, s.y_key)])
             if k not in graph_io]
    value_types = _value_types(model, onnx)
    for key in extra:
        model.graph.output.append(onnx.helper.make_tensor_value_info(key, value_types.get(key) or 1, None))
    try:
        probed = ort_session(model, config)
    except Exception as exc:  # onnxruntime's own error types: judge the file end to end instead
        return DynamicLayerwiseParity("onnxruntime", False, 0, 0, config.max_op_lsb, unchecked=[
            f"*: onnxruntime cannot load the copy exposing the intermediate values ({str(exc).splitlines()[0][:200]})"])
    in_names = [i.name for i in probed.get_inputs()]
    changed = False
    by_y = {s.node.name: s for s in sites if s.mode is QuantMode.DYNAMIC}

    def run(batch):
        nonlocal changed
        feeds = dict(zip(in_names, batch, strict=True))
        got = probed.run(finals + extra, feeds)
        if session is not None:
            plain = session.run(finals, feeds)
            changed |= any(not np.array_equal(a, b) for a, b in zip(plain, got[:len(finals)], strict=True))
        values = {**feeds, **dict(zip(finals + extra, got, strict=True))}
        for s in sites:
            _judge(s, values[s.x_key], values[s.y_key], config.float_rtol)
        last.update(values)
        return {p.key: values[p.key] for p in probes}, got[:len(finals)]

    last: dict = {}

    def info_hook(site: _Site):
        def hook(_module, _args, output):  # the simulation given onnxruntime's input: information only
            sim = output.detach().float().numpy()
            got = torch_layouts(np.asarray(last[site.y_key], np.float32), sim.shape)
            if got:
                site.sim_abs = max(site.sim_abs, float(np.abs(got[0] - sim).max(initial=0.0)))
                site.sim_max = max(site.sim_max, float(np.abs(sim).max(initial=0.0)))
        return hook

    handles = [modules[s.node.target].register_forward_hook(info_hook(s)) for s in by_y.values()]
    try:
        base = layerwise_parity(graph, run, [as_batch(b) for b in inputs], probes, runtime="onnxruntime",
                                max_op_lsb=config.max_op_lsb, float_rtol=config.float_rtol,
                                approximated=approximated_ops(info), unchecked=unprobed,
                                output_tolerances=getattr(info, "output_tolerances", None))
    finally:
        for h in handles:
            h.remove()
    base.instrumentation_changed_outputs = changed
    return _merged(base, sites, missing, modules, names)


def _value_types(model, onnx) -> dict[str, int]:
    """Element type of each value the copy exposes: float, except a Gather's index input (an int input)."""
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # contrib ops the checker does not know: their outputs are float
        return types
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        types[v.name] = v.type.tensor_type.elem_type
    return types


def _judge(s: _Site, x: np.ndarray, y: np.ndarray, float_rtol: float) -> None:
    """Add one batch of onnxruntime's (input, output) of a site to its figures against the reference."""
    ref, unit = s.reference(x)
    got = torch_layouts(np.asarray(y, np.float32), ref.shape)
    if not got:
        s.acc.passed = False
        return
    d = np.abs(got[0].astype(np.float64) - ref)
    ref_max = float(np.abs(ref).max(initial=0.0))
    s.acc.elements += d.size
    s.max_abs = max(s.max_abs, float(d.max(initial=0.0)))
    s.ref_max = max(s.ref_max, ref_max)
    finite = bool(np.isfinite(d).all())
    if unit is not None:
        unit = np.maximum(unit, 1e-30)
        s.acc.max_steps = max(s.acc.max_steps, float((d / unit).max(initial=0.0)))
        s.acc.passed &= finite and bool((d <= DYNAMIC_STEPS * unit + _FLOAT_SLACK * ref_max).all())
    else:
        s.acc.passed &= finite and float(d.max(initial=0.0)) <= float_rtol * max(ref_max, 1e-30)


def _rel(diff: float, magnitude: float) -> float:
    return diff / magnitude if magnitude > 0 else (0.0 if diff == 0 else float("inf"))


def _merged(base: LayerwiseParity, sites: list[_Site], missing: dict[str, str], modules: dict,
            names: dict[str, fx.Node]) -> DynamicLayerwiseParity:
    """``base`` with each dynamic layer's probe judged by the reference instead of the simulation, plus the
    weight-only sites; a dynamic layer whose ops were not found fails (it would otherwise pass unchecked)."""
    replaced = {s.node.name for s in sites if s.mode is QuantMode.DYNAMIC}
    results = [OpParity(name, f"{type(modules[names[name].target]).__name__}, not found: {why}",
                        user_source(names[name]), max_rel_diff=float("inf"), passed=False)
               for name, why in missing.items()]
    for s in sites:
        s.acc.max_rel_diff = _rel(s.max_abs, s.ref_max)
        s.acc.sim_max_rel_diff = _rel(s.sim_abs, s.sim_max)
        s.acc.passed &= s.acc.elements > 0
        results.append(OpParity(s.acc.node, s.acc.op, s.acc.source, s.acc.elements,
                                max_rel_diff=s.acc.max_rel_diff, passed=s.acc.passed))
    order = {n: i for i, n in enumerate(names)}
    failures = sorted([f for f in base.failures if f.node not in replaced] + [r for r in results if not r.passed],
                      key=lambda r: order.get(r.node, len(order)))
    worst = sorted([w for w in base.worst if w.node not in replaced] + results,
                   key=lambda r: -(r.max_abs_lsb if r.max_abs_lsb is not None else r.max_rel_diff))
    ops = base.ops + len(missing) + sum(1 for s in sites if s.mode is not QuantMode.DYNAMIC)
    return DynamicLayerwiseParity(base.runtime, not failures and base.samples > 0, ops, base.samples,
                                  base.max_op_lsb, failures, worst[:WORST_LISTED], base.unchecked,
                                  base.instrumentation_changed_outputs, dynamic=[s.acc for s in sites])
