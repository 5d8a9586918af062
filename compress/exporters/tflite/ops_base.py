"""Shared pieces of the TFLite op handlers: padding, weight layout and quantization, finishing an op's output."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import fx, nn

from compress import ops
from compress.errors import ExportError
from compress.exporters.numerics import bias_codes, fold_bn, weight_codes
from compress.exporters.tflite import layout as L
from compress.exporters.tflite.graph import ACT_CODE, Emitter, TValue
from compress.exporters.tflite.schema import Options, QuantParams, TensorType, numpy_dtype
from compress.layers.base import FusedActivation, QuantLayerMixin
from compress.ops import Policy

_PAD = {L.Padding.SAME: 0, L.Padding.VALID: 1}
_FIXED_GRID = {
    "LOGISTIC": QuantParams.per_tensor(1 / 256, -128),
    "SOFTMAX": QuantParams.per_tensor(1 / 256, -128),
    "TANH": QuantParams.per_tensor(1 / 128, 0),
}


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def last_axis_input(em: Emitter, node: fx.Node, what: str) -> TValue:
    """The input of a softmax-like op laid out so that its ``dim`` is TFLite's last axis (SOFTMAX and the
    log-softmax decomposition reduce over the innermost axis only).

    Raises:
        ExportError: ``dim`` is not the tensor's last axis in torch's order either.
    """
    mod = em.module(node)
    dim = mod.dim if mod is not None else _arg(node, 1, "dim")
    x = em.uncollapse(em.value(node.args[0]))
    if dim is None or x.perm[-1] != dim % x.rank:
        x = em.torch_order(x)
        if dim is None or dim % x.rank != x.rank - 1:
            raise ExportError(f"{node.name!r}: {what} is exported over the last axis only; got dim={dim}")
    return x


def _meta_shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise ExportError(f"node {node.name!r} has no recorded shape; export from a model traced with example inputs")
    return tuple(int(d) for d in meta.shape)


def conv1d_as_2d(em: Emitter, x: TValue, name: str) -> TValue:
    """A Conv1d / ConvTranspose1d input ``[N, C, L]`` as TFLite's 2-D kernels take it: NHWC ``[N, 1, L, C]``."""
    x = em.to_perm(x, (0, 2, 1))  # TFLite [N, L, C]
    n, c, length = x.shape
    x2 = em.tensor(f"{name}_as2d", (n, c, 1, length), L.NCHW_TO_NHWC, x.dtype, x.quant)
    em.reshape(x.tensor, x2, (n, 1, length, c), x.is_int8)
    return x2


def int8_weight(weight, wq, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, per-output-channel scale ``[C]``) of a weight under its frozen quantizer: the simulation's
    codes (:func:`compress.exporters.numerics.weight_codes`), a per-tensor scale repeated per channel."""
    codes, scale, _ = weight_codes(weight, wq, where)
    scale = np.asarray(scale, np.float64).reshape(-1)
    return codes, np.full(codes.shape[0], scale[0]) if scale.size == 1 else scale


def _weights(em: Emitter, mod: nn.Module, x: TValue, int8: bool, name: str, w: np.ndarray, b, layout, cols=None):
    """(weight tensor, bias tensor) for conv/linear, int8 per channel or float; ``layout`` reorders weights,
    ``cols`` permutes the input columns of a dense layer after an NHWC flatten."""
    out_ch = w.shape[0]
    if b is None:
        b = np.zeros(out_ch, np.float32)
    if not int8:
        return (em.const(f"{name}_weight", layout(w.astype(np.float32)), TensorType.FLOAT32),
                em.const(f"{name}_bias", np.asarray(b, np.float32), TensorType.FLOAT32))
    codes, s_w = int8_weight(mod.weight, mod.weight_quant, name)
    wq = layout(codes if cols is None else codes[:, cols])
    axis = 3 if layout is L.depthwise_weight_1hwo else 0
    w_t = em.const(f"{name}_weight", wq, TensorType.INT8, QuantParams.per_channel(s_w, 0, axis))
    bias = mod.bias if mod.bias is not None else torch.zeros(out_ch)
    bq, s_b = bias_codes(bias, torch.tensor(x.quant.scale[0], dtype=torch.float32), mod.weight_quant.scale)
    s_b = np.broadcast_to(s_b.double().numpy().reshape(-1), (out_ch,))
    b_t = em.const(f"{name}_bias", bq.numpy(), TensorType.INT32, QuantParams.per_channel(s_b, 0, 0))
    return w_t, b_t


def _float_params(em: Emitter, node: fx.Node, mod: nn.Module):
    """(weight, bias, fused activation, node the output follows, absorbed nodes) as numpy arrays.

    A float BatchNorm right after the layer is folded in (:func:`compress.exporters.numerics.fold_bn` on the
    tensors: deep-copying the layer to fold it as a module cost 0.5 s of ResNet-18's conversion).
    """
    w = mod.weight.detach().cpu().numpy()
    b = None if mod.bias is None else mod.bias.detach().cpu().numpy()
    if isinstance(mod, QuantLayerMixin):
        return w.astype(np.float64), None if b is None else b.astype(np.float64), mod.activation, node, []
    users = list(node.users)
    bn = em.module(users[0]) if len(users) == 1 else None
    if isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d):
        from compress.passes.fuse import can_fold

        if can_fold(mod, bn):
            with torch.no_grad():
                fw, fb = fold_bn(mod.weight, mod.bias, bn)
            return fw.numpy(), fb.numpy(), FusedActivation.NONE, users[0], [users[0]]
    return w, b, FusedActivation.NONE, node, []


def _int8_ready(em: Emitter, mod, x: TValue, plan) -> bool:
    return em.quantized and isinstance(mod, QuantLayerMixin) and x.is_int8 and plan.quant is not None


def _finish(em: Emitter, node: fx.Node, out: TValue, plan, absorbed=()) -> None:
    """Bind the op's value; a float output followed by a quantizer gets its QUANTIZE here."""
    plan.absorbed[:0] = list(absorbed)
    if plan.act is not FusedActivation.NONE:
        out.nonnegative = True
    if plan.quant is not None and not out.is_int8:
        out = em.quantize(out, plan.quant, f"{node.name}_quant")
    em.bind(node, out, plan)


def _pad(em: Emitter, x: TValue, pads_nhwc, name: str, lowest: bool = False) -> TValue:
    """PAD with zeros (int8: the zero point, i.e. real 0), or PADV2 with the lowest value (max pooling)."""
    n, c, h, w = x.shape
    shape = (n, c, h + pads_nhwc[1][0] + pads_nhwc[1][1], w + pads_nhwc[2][0] + pads_nhwc[2][1])
    out = em.tensor(f"{name}_pad", shape, x.perm, x.dtype, x.quant, nonnegative=x.nonnegative)
    paddings = em.int32_const(f"{name}_paddings", pads_nhwc)
    version = 2 if x.is_int8 else 1
    if not lowest:
        em.op("PAD", [x.tensor, paddings], [out.tensor], Options("PadOptions"), version)
    else:
        _pad_lowest(em, x, out, pads_nhwc, name)
    return out


def _pad_lowest(em: Emitter, x: TValue, out: TValue, pads_nhwc, name: str) -> None:
    """Pad H and W with the lowest value (max pooling) as two CONCATENATIONs with constant borders.

    PADV2 would say it in one op, but XNNPACK has no PADV2 kernel: the pad fell back to LiteRT's builtin
    kernels and split the graph into two delegate partitions; concatenation stays inside XNNPACK.
    """
    n, c, h, w = x.shape
    dtype = numpy_dtype(x.dtype)
    lowest = -128 if x.is_int8 else -3.0e38
    axes = [axis for axis in (1, 2) if any(pads_nhwc[axis])]
    cur, nhwc = x.tensor, [n, h, w, c]
    for i, axis in enumerate(axes):
        before, after = pads_nhwc[axis]
        parts = []
        for size, side in ((before, "before"), (0, "input"), (after, "after")):
            if side == "input":
                parts.append(cur)
            elif size:
                shape = list(nhwc)
                shape[axis] = size
                parts.append(em.const(f"{name}_pad{axis}_{side}", np.full(shape, lowest, dtype), x.dtype, x.quant))
        nhwc[axis] += before + after
        nxt = out.tensor if i == len(axes) - 1 else em.w.add_tensor(f"{name}_pad{axis}", nhwc, x.dtype,
                                                                     quant=x.quant)
        em.op("CONCATENATION", parts, [nxt],
              Options("ConcatenationOptions", {"Axis": axis, "FusedActivationFunction": 0}), 2 if x.is_int8 else 1)
        cur = nxt

def _binary_float(em, node, op_name, a, b, act, suffix) -> TValue:
    lead = a if isinstance(a, TValue) else b
    a = a if isinstance(a, TValue) else em.const_value(a, lead, f"{node.name}_c{suffix}")
    b = b if isinstance(b, TValue) else em.const_value(b, lead, f"{node.name}_c{suffix}")
    out = em.tensor(f"{node.name}{suffix}", _broadcast(a.shape, b.shape), lead.perm, TensorType.FLOAT32)
    em.op(op_name, [a.tensor, b.tensor], [out.tensor],
          Options(f"{op_name.title()}Options", {"FusedActivationFunction": ACT_CODE[act]}))
    return out

def _broadcast(a, b) -> tuple[int, ...]:
    return tuple(int(d) for d in np.broadcast_shapes(tuple(a), tuple(b)))


def _weighted_prologue(em: Emitter, node: fx.Node, mod: nn.Module):
    """What conv and dense handlers start with: input value, weights and bias (BN folded), the fused
    activation and output plan, and whether the op runs in int8. A quant layer that cannot run in int8 here
    gets its fake-quantized weights, so the float op computes what the simulation computes."""
    x = em.value(node.args[0])
    w, b, act, last, absorbed = _float_params(em, node, mod)
    plan = em.plan_output(last, act)
    int8 = _int8_ready(em, mod, x, plan)
    if not int8:
        x = em.to_float(x)
        if isinstance(mod, QuantLayerMixin):
            w = mod.quantized_weight().detach().double().numpy()
            qb = mod.quantized_bias()
            b = None if qb is None else qb.detach().double().numpy()
    return x, w, b, act, last, absorbed, plan, int8


def _to_float32(em: Emitter, v: TValue, name: str) -> TValue:
    if v.dtype == TensorType.FLOAT32:
        return v
    out = em.tensor(f"{name}_as_float", v.shape, v.perm, TensorType.FLOAT32)
    em.op("CAST", [v.tensor], [out.tensor])
    return out


# -- float fallback ---------------------------------------------------------------------------------------
def _dequantized(em: Emitter, v):
    if isinstance(v, TValue):
        return em.to_float(v)
    if isinstance(v, list | tuple):
        return type(v)(_dequantized(em, x) for x in v)
    return v


def _int8_inputs(em: Emitter, node: fx.Node) -> list[TValue]:
    found: list[TValue] = []

    def walk(v):
        if isinstance(v, TValue) and v.is_int8:
            found.append(v)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)

    for n in node.all_input_nodes:
        walk(em.values.get(n))
    return found


def run_in_float(fn: Callable[[Emitter, fx.Node], None], preserving: bool = False) -> Callable:
    """``fn`` (a float emitter) made to work inside an int8 graph: DEQUANTIZE → float op → QUANTIZE.

    The node's int8 inputs are shown to ``fn`` dequantized (one cached DEQUANTIZE per value, shared by every
    float consumer), so ``fn`` is written once, for float. The output is quantized by the quantizer node that
    follows (``fn`` may absorb it through ``plan_output``); a grid-preserving op has none, so its float output is
    put back on its first int8 input's grid here — what ONNX does between DequantizeLinear and QuantizeLinear.
    """

    @functools.wraps(fn)
    def emit(em: Emitter, node: fx.Node) -> None:
        grid = next(iter(_int8_inputs(em, node)), None)
        saved = {n: em.values[n] for n in node.all_input_nodes if n in em.values}
        for n, v in saved.items():
            em.values[n] = _dequantized(em, v)
        try:
            fn(em, node)
        finally:
            em.values.update(saved)
        out = em.values.get(node)
        if preserving and grid is not None and isinstance(out, TValue) and out.dtype == TensorType.FLOAT32:
            em.values[node] = em.quantize(out, grid.quant, f"{node.name}_requant")

    emit.runs_in_float = True
    return emit


def emits(*names: str, in_float: bool = False) -> Callable:
    """Decorator: register ``fn`` as the TFLite emitter of the registry ops ``names``; ``in_float=True`` wraps it
    in :func:`run_in_float` (the op's kernel in ``kernels_tflite.py`` is FLOAT)."""

    def register(fn: Callable) -> Callable:
        for name in names:
            spec = ops.get(name)
            wrapped = run_in_float(fn, spec.policy is Policy.PRESERVING) if in_float else fn
            ops.register_emitter("tflite", name)(wrapped)
        return fn

    return register
