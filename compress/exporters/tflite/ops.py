"""The TFLite op table: one handler per fx op kind, writing TFLite operators through an :class:`Emitter`.

Each handler reads its inputs' :class:`TValue`, decides the domain — int8 when the inputs are int8 and an
output quantizer follows (the op then writes its int8 output on that quantizer's grid, with a following
ReLU/ReLU6 fused), float otherwise (int8 inputs are dequantized first, the following quantizer node writes a
QUANTIZE) — and binds the node's value. Operator versions are the ones TF's converter writes for the same
operand types (``tensorflow/lite/tools/versioning/op_version.cc``).

Int8 kernels with a fixed output grid (LOGISTIC, SOFTMAX: 1/256 and −128; TANH: 1/128 and 0) are used when
the model's quantizer has exactly that grid; otherwise the op runs in float between DEQUANTIZE and QUANTIZE
(requantizing the fixed grid would round twice, up to 1 LSB off before any later layer amplifies it).
CONCATENATION and AVERAGE_POOL_2D
need their inputs on the output grid, so inputs are requantized first (a single rounding, as in torch).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import fx, nn

from compress import ops
from compress.errors import ExportError
from compress.exporters.tflite import layout as L
from compress.exporters.tflite.graph import ACT_CODE, Const, Emitter, TValue, hardtanh_bounds, same_grid
from compress.exporters.tflite.ops_base import (
    _FIXED_GRID,
    _PAD,
    _arg,
    _binary_float,
    _broadcast,
    _finish,
    _meta_shape,
    _pad,
    _to_float32,
    _weighted_prologue,
    _weights,
    conv1d_as_2d,
    last_axis_input,
)
from compress.exporters.tflite.ops_index import folds_into_conv
from compress.exporters.tflite.ops_shape import (
    alias,
    embedding,
    getitem,
    layer_norm,
    matmul,
    permute,
    reshape,
)
from compress.exporters.tflite.schema import Options, QuantParams, TensorType, numpy_dtype
from compress.layers.base import FusedActivation, QuantLayerMixin
from compress.ops import Kernel, Policy


def conv2d(em: Emitter, node: fx.Node) -> None:
    """Conv2d as CONV_2D / DEPTHWISE_CONV_2D; grouped convs as one CONV_2D whose filter has ``I/groups`` input
    channels (version 6; LiteRT and XNNPACK run it directly, no split into per-group convs); Conv1d as a 2-D
    conv over ``[N, 1, L, C]`` between two RESHAPEs."""
    mod = em.module(node)
    x, w, b, act, last, absorbed, plan, int8 = _weighted_prologue(em, node, mod)
    if mod.padding_mode != "zeros":
        raise ExportError(f"conv {node.name!r} uses padding_mode={mod.padding_mode!r}; TFLite pads with zeros only, "
                          "retrain with padding_mode='zeros'")
    one_d = isinstance(mod, nn.Conv1d)
    if one_d:
        x = conv1d_as_2d(em, x, node.name)
        k, s, d = (1, mod.kernel_size[0]), (1, mod.stride[0]), (1, mod.dilation[0])
        p = None if isinstance(mod.padding, str) else (0, mod.padding[0])
    else:
        x = em.to_perm(x, L.NCHW_TO_NHWC)
        k, s, d = L.pair(mod.kernel_size), L.pair(mod.stride), L.pair(mod.dilation)
        p = None if isinstance(mod.padding, str) else L.pair(mod.padding)
    folded = p is not None and not one_d and isinstance(node.args[0], fx.Node) and folds_into_conv(em, node.args[0])
    if int8 and not one_d and _stem_space_to_depth(em, node, mod, x, w, b, k, s, d, p, folded, plan, last, absorbed):
        return
    if p is None:
        padding = L.Padding.SAME if mod.padding == "same" else L.Padding.VALID
    elif folded:
        padding = L.Padding.SAME  # x is the pad's input: the PAD before this conv was not written
    else:
        padding = L.window_padding_2d(x.shape[2:], k, s, p, d)
        if padding is L.Padding.EXPLICIT:
            x = _pad(em, x, [[0, 0], [p[0], p[0]], [p[1], p[1]], [0, 0]], node.name)
            padding = L.Padding.VALID
    out_shape = _meta_shape(last)
    depthwise = mod.groups == mod.in_channels and mod.groups > 1
    layout = L.depthwise_weight_1hwo if depthwise else L.conv_weight_ohwi
    w_t, b_t = _weights(em, mod, x, int8, node.name, w, b, layout)
    out_shape2d = (out_shape[0], out_shape[1], 1, out_shape[2]) if one_d else out_shape
    out = em.tensor(f"{node.name}_2d" if one_d else node.name, out_shape2d, L.NCHW_TO_NHWC,
                    TensorType.INT8 if int8 else TensorType.FLOAT32, plan.quant if int8 else None)
    fields = {"Padding": _PAD[padding], "StrideW": s[1], "StrideH": s[0], "DilationWFactor": d[1],
              "DilationHFactor": d[0], "FusedActivationFunction": ACT_CODE[plan.act]}
    if depthwise:
        fields["DepthMultiplier"] = mod.out_channels // mod.in_channels
        version = 3 if int8 else (2 if d != (1, 1) else 1)
        em.op("DEPTHWISE_CONV_2D", [x.tensor, w_t, b_t], [out.tensor], Options("DepthwiseConv2DOptions", fields),
              version)
    else:
        version = 6 if mod.groups > 1 else (3 if int8 else 1)  # TF's converter: 6 = grouped
        em.op("CONV_2D", [x.tensor, w_t, b_t], [out.tensor], Options("Conv2DOptions", fields), version)
    if one_d:  # back to [N, L', O], torch axes (0, 2, 1)
        flat = em.tensor(node.name, out_shape, (0, 2, 1), out.dtype, out.quant)
        em.reshape(out.tensor, flat, (out_shape[0], out_shape[2], out_shape[1]), out.is_int8)
        out = flat
    _finish(em, node, out, plan, absorbed)


# Int8 strided convs over at most STEM_MAX_CHANNELS input channels (image stems) with a kernel of at least
# STEM_MIN_TAPS taps, or a kernel equal to its stride (patchify), are written as SPACE_TO_DEPTH + a stride-1
# conv; STEM_SPACE_TO_DEPTH = False writes every conv strided (tests compare the two files). Measured with
# LiteRT/XNNPACK on AMX (3 → 32-64 channels, 112²): 7×7/2 0.64-0.72×, 5×5/2 0.51-0.87×, 4×4/4 0.43×, but
# 3×3/2 1.5× slower (PAD + SPACE_TO_DEPTH cost more than the 9-tap conv saves) and 4×4/2 1.0×; 8 channels 1.0×.
STEM_SPACE_TO_DEPTH = True
STEM_MAX_CHANNELS = 4
STEM_MIN_TAPS = 25


def _stem_space_to_depth(em: Emitter, node: fx.Node, mod: nn.Module, x: TValue, w, bias, k, s, d, p, folded: bool,
                         plan, last: fx.Node, absorbed) -> bool:
    """An int8 stride-``s`` conv over ≤ ``STEM_MAX_CHANNELS`` channels as PAD → SPACE_TO_DEPTH(s) → a stride-1
    CONV_2D over s²·C channels with ⌈k/s⌉ taps (False: not this case, nothing written).

    Exact: the PAD writes the zero point (real 0), the rearranged weights are the same int8 codes with zeros
    for the taps past k (:func:`layout.space_to_depth_weight`), scales and int32 bias unchanged, so every
    accumulator and its requantization are the strided conv's. Why: XNNPACK's AMX int8 kernels take input
    channels per tap in 64-byte blocks, so 3 channels fill 3/64 of each; ResNet-18's 7×7/2 stem took 0.60 of
    1.45 ms at 112² (0.21 ms rewritten).
    """
    if (not STEM_SPACE_TO_DEPTH or mod.groups != 1 or d != (1, 1) or s[0] != s[1] or s[0] < 2
            or x.shape[1] > STEM_MAX_CHANNELS or (p is None and mod.padding != "valid")
            or (k[0] * k[1] < STEM_MIN_TAPS and tuple(k) != tuple(s))):
        return False
    b = s[0]
    h, wd = x.shape[2:]
    out_shape = _meta_shape(last)
    if folded:  # x is the folded pad's input: TFLite SAME's leading pad, the smaller half
        before = [max((-(-size // b) - 1) * b + kk - size, 0) // 2 for size, kk in zip((h, wd), k, strict=True)]
    else:
        before = list(p or (0, 0))
    after = [L.space_to_depth_pads(size, kk, b, pb, o)
             for size, kk, pb, o in zip((h, wd), k, before, out_shape[2:], strict=True)]
    if None in after:
        return False
    x = em.to_perm(x, L.NCHW_TO_NHWC)
    if any(before) or any(after):
        x = _pad(em, x, [[0, 0], [before[0], after[0]], [before[1], after[1]], [0, 0]], node.name)
    n, c, h, wd = x.shape
    blocks = em.tensor(f"{node.name}_s2d", (n, c * b * b, h // b, wd // b), L.NCHW_TO_NHWC, x.dtype, x.quant,
                       nonnegative=x.nonnegative)
    em.op("SPACE_TO_DEPTH", [x.tensor], [blocks.tensor], Options("SpaceToDepthOptions", {"BlockSize": b}), 2)
    w_t, b_t = _weights(em, mod, blocks, True, node.name, w, bias,
                        lambda codes: L.space_to_depth_weight(codes, b))
    out = em.tensor(node.name, out_shape, L.NCHW_TO_NHWC, TensorType.INT8, plan.quant)
    fields = {"Padding": _PAD[L.Padding.VALID], "StrideW": 1, "StrideH": 1, "DilationWFactor": 1,
              "DilationHFactor": 1, "FusedActivationFunction": ACT_CODE[plan.act]}
    em.op("CONV_2D", [blocks.tensor, w_t, b_t], [out.tensor], Options("Conv2DOptions", fields), 3)
    _finish(em, node, out, plan, absorbed)
    return True


def linear(em: Emitter, node: fx.Node) -> None:
    mod = em.module(node)
    x, w, b, act, last, absorbed, plan, int8 = _weighted_prologue(em, node, mod)
    cols = x.col_perm  # TFLite column j holds torch feature cols[j]
    if cols is not None:
        w = w[:, cols]
    else:
        x = em.torch_order(x)
    w_t, b_t = _weights(em, mod, x, int8, node.name, w, b, lambda a: a, cols)
    out_shape = _meta_shape(last)
    keep = len(out_shape) > 2
    out = em.tensor(node.name, out_shape, L.identity(len(out_shape)),
                    TensorType.INT8 if int8 else TensorType.FLOAT32, plan.quant if int8 else None)
    version = 5 if keep else (4 if int8 else 1)
    em.op("FULLY_CONNECTED", [x.tensor, w_t, b_t], [out.tensor],
          Options("FullyConnectedOptions", {"FusedActivationFunction": ACT_CODE[plan.act], "KeepNumDims": keep}),
          version)
    _finish(em, node, out, plan, absorbed)


def batchnorm(em: Emitter, node: fx.Node) -> None:
    """A BatchNorm that could not be folded: x·a + b per channel (MUL, ADD) in float."""
    mod = em.module(node)
    x = em.to_float(em.value(node.args[0]))
    a = (mod.weight if mod.affine else 1.0) / torch.sqrt(mod.running_var + mod.eps)
    c = (mod.bias if mod.affine else 0.0) - mod.running_mean * a
    shape = [1, -1] + [1] * (x.rank - 2)
    scaled = _binary_float(em, node, "MUL", x, Const(a.detach().reshape(shape).numpy()), FusedActivation.NONE, "s")
    out = _binary_float(em, node, "ADD", scaled, Const(c.detach().reshape(shape).numpy()), FusedActivation.NONE, "")
    _finish(em, node, out, em.plan_output(node, fuse_act=False))






def _binary(op_name: str, reverse_ok: bool = True):
    def handler(em: Emitter, node: fx.Node) -> None:
        if node.kwargs.get("alpha", 1) != 1:
            raise ExportError(f"{node.name!r}: add/sub with alpha is not exported; write x + alpha * y")
        _binary_apply(em, node, op_name, em.value(node.args[0]), em.value(node.args[1]))

    return handler


def _binary_apply(em: Emitter, node: fx.Node, op_name: str, a, b) -> None:
    tensors = [v for v in (a, b) if isinstance(v, TValue)]
    lead = max(tensors, key=lambda v: (v.rank, not L.is_identity(v.perm)))
    if lead.col_perm is not None:
        lead = em.uncollapse(lead)
    a, b = (_align(em, v, lead) for v in (a, b))
    plan = em.plan_output(node)
    int8 = em.quantized and plan.quant is not None and all(v.is_int8 for v in (a, b) if isinstance(v, TValue))
    if not int8:
        a = em.to_float(a) if isinstance(a, TValue) else a
        b = em.to_float(b) if isinstance(b, TValue) else b
        lead = em.to_float(lead)
        dtypes = {v.dtype for v in (a, b) if isinstance(v, TValue)}
        if len(dtypes) > 1:  # torch promotes int × float to float; TFLite kernels take one type
            a, b = (_to_float32(em, v, f"{node.name}_{i}") if isinstance(v, TValue) else v for i, v in enumerate((a, b)))
        elif dtypes != {TensorType.FLOAT32}:  # integer arithmetic (positions, lengths): constants of that type
            a, b = (v if isinstance(v, TValue) else _int_const(em, v, lead, f"{node.name}_c") for v in (a, b))
        out = _binary_float(em, node, op_name, a, b, plan.act, "")
        return _finish(em, node, out, plan)
    a = a if isinstance(a, TValue) else em.const_value(a, lead, f"{node.name}_c")
    b = b if isinstance(b, TValue) else em.const_value(b, lead, f"{node.name}_c")
    out = em.tensor(node.name, _broadcast(a.shape, b.shape), lead.perm, TensorType.INT8, plan.quant)
    version = 2
    if op_name == "MUL" and a.quant.scale[0] * b.quant.scale[0] / plan.quant.scale[0] >= 1:
        version = 3
    em.op(op_name, [a.tensor, b.tensor], [out.tensor],
          Options(f"{op_name.title()}Options", {"FusedActivationFunction": ACT_CODE[plan.act]}), version)
    _finish(em, node, out, plan)


def _int_const(em: Emitter, c, like: TValue, name: str) -> TValue:
    arr = np.asarray(c.array if isinstance(c, Const) else c).astype(numpy_dtype(like.dtype))
    if arr.ndim == like.rank and arr.ndim > 0:
        arr = np.ascontiguousarray(arr.transpose(like.perm))
    return TValue(em.const(name, arr, like.dtype), tuple(arr.shape), like.dtype,
                  like.perm if arr.ndim == like.rank else L.identity(arr.ndim))


def div(em: Emitter, node: fx.Node) -> None:
    """``x / c`` for a constant ``c``: MUL by ``1 / c`` (TFLite DIV has no int8 kernel)."""
    divisor = em.value(node.args[1])
    if isinstance(divisor, TValue | Const) or not isinstance(em.value(node.args[0]), TValue):
        raise ExportError(f"{node.name!r}: only division of a tensor by a constant is exported; "
                          "multiply by the reciprocal instead")
    _binary_apply(em, node, "MUL", em.value(node.args[0]), 1.0 / float(divisor))


def _align(em: Emitter, v, lead: TValue):
    if not isinstance(v, TValue) or v is lead:
        return v
    if v.rank == lead.rank:
        return em.to_perm(v, lead.perm)
    if not L.is_identity(lead.perm):
        raise ExportError("broadcasting between tensors of different rank in a permuted layout is not exported")
    return em.torch_order(v)


def cat(em: Emitter, node: fx.Node) -> None:
    # A constant operand (a learned token / position table read directly) becomes a constant tensor: int8 on
    # the grid prepare gave it (OpSpec.int8_constants), else float, and the concatenation then runs float.
    tensors = [em.materialize(v, f"{node.name}_c{i}") if isinstance(v, Const) else v
               for i, v in enumerate(em.value(_arg(node, 0, "tensors")))]
    dim = _arg(node, 1, "dim", 0)
    lead = em.uncollapse(next((t for t in tensors if not L.is_identity(t.perm)), tensors[0]))
    tensors = [em.to_perm(t, lead.perm) for t in tensors]
    plan = em.plan_output(node)
    int8 = em.quantized and plan.quant is not None and all(t.is_int8 for t in tensors)
    if int8:
        tensors = [em.quantize(t, plan.quant, f"{node.name}_in{i}") for i, t in enumerate(tensors)]
    else:
        tensors = [em.to_float(t) for t in tensors]
    out = em.tensor(node.name, _meta_shape(node), lead.perm, TensorType.INT8 if int8 else TensorType.FLOAT32,
                    plan.quant if int8 else None)
    em.op("CONCATENATION", [t.tensor for t in tensors], [out.tensor],
          Options("ConcatenationOptions", {"Axis": L.axis_in(lead.perm, dim),
                                           "FusedActivationFunction": ACT_CODE[plan.act]}), 2 if int8 else 1)
    _finish(em, node, out, plan)


def _mean(em: Emitter, node: fx.Node, x: TValue, dims, keepdim: bool) -> None:
    x = em.uncollapse(x)
    dims = sorted(d % x.rank for d in dims)
    plan = em.plan_output(node, fuse_act=False)
    int8 = em.quantized and x.is_int8 and plan.quant is not None
    if not int8:
        x = em.to_float(x)
    axes = em.int32_const(f"{node.name}_axes", [L.axis_in(x.perm, d) for d in dims])
    out = em.tensor(node.name, _meta_shape(node), L.reduced_perm(x.perm, dims, keepdim),
                    TensorType.INT8 if int8 else TensorType.FLOAT32, plan.quant if int8 else None,
                    nonnegative=x.nonnegative)
    em.op("MEAN", [x.tensor, axes], [out.tensor], Options("ReducerOptions", {"KeepDims": keepdim}),
          2 if int8 else 1)
    _finish(em, node, out, plan)


def mean(em: Emitter, node: fx.Node) -> None:
    dims = _arg(node, 1, "dim")
    if dims is None:
        raise ExportError(f"{node.name!r}: mean over all axes is not exported; pass dim=")
    dims = [dims] if isinstance(dims, int) else list(dims)
    _mean(em, node, em.value(node.args[0]), dims, bool(_arg(node, 2, "keepdim", False)))


def adaptive_avg_pool(em: Emitter, node: fx.Node) -> None:
    mod = em.module(node)
    size = mod.output_size if mod is not None else _arg(node, 1, "output_size")
    x = em.value(node.args[0])
    size = L.pair(size) if x.rank == 4 else (size if isinstance(size, int) else size[0],)
    if all(s == 1 for s in size):
        return _mean(em, node, x, list(range(2, x.rank)), True)
    raise ExportError(f"{node.name!r}: adaptive average pooling to {size} is not exported; only output_size=1")


def _pool(em: Emitter, node: fx.Node, kind: str, k, s, p, ceil_mode: bool, count_include_pad: bool) -> None:
    x = em.to_perm(em.value(node.args[0]), L.NCHW_TO_NHWC)
    padding = L.window_padding_2d(x.shape[2:], k, s, p, (1, 1), ceil_mode)
    if padding is L.Padding.EXPLICIT or (kind == "AVERAGE_POOL_2D" and count_include_pad and any(p)):
        if ceil_mode:
            raise ExportError(f"{node.name!r}: pooling with ceil_mode and padding is not exported; use ceil_mode=False")
        pads = [[0, 0], [p[0], p[0]], [p[1], p[1]], [0, 0]]
        if kind == "MAX_POOL_2D" and not (x.nonnegative or x.is_int8 and x.quant.zero_point[0] == -128):
            x = _pad(em, x, pads, node.name, lowest=True)
        else:
            x = _pad(em, x, pads, node.name)  # zeros (int8: the zero point) are ≤ every input here
        padding = L.Padding.VALID
    plan = em.plan_output(node, fuse_act=kind == "AVERAGE_POOL_2D")
    if kind == "AVERAGE_POOL_2D" and x.is_int8 and plan.quant is not None and padding is L.Padding.VALID:
        return _avg_pool_as_depthwise(em, node, x, k, s, plan)
    int8 = x.is_int8 and (kind == "MAX_POOL_2D" or plan.quant is not None)
    if not int8:
        x = em.to_float(x)
    out = em.tensor(node.name, _meta_shape(node), L.NCHW_TO_NHWC, x.dtype, x.quant, nonnegative=x.nonnegative)
    em.op(kind, [x.tensor], [out.tensor],
          Options("Pool2DOptions", {"Padding": _PAD[padding], "StrideW": s[1], "StrideH": s[0], "FilterWidth": k[1],
                                    "FilterHeight": k[0], "FusedActivationFunction": ACT_CODE[plan.act]}),
          2 if int8 else 1)
    if int8 and plan.quant is not None:
        out = em.quantize(out, plan.quant, f"{node.name}_requant")
    _finish(em, node, out, plan)


def _avg_pool_as_depthwise(em: Emitter, node: fx.Node, x: TValue, k, s, plan) -> None:
    """Int8 average pooling as a depthwise conv with weights 1/(kh·kw): one rounding, onto the output grid.

    AVERAGE_POOL_2D int8 keeps the input grid, so reaching the model's output grid would round twice (up to
    1 LSB, then amplified downstream). The weight 1/(kh·kw) is exact in int8: code 127 at scale 1/(127·kh·kw).
    """
    c = x.shape[1]
    s_w = np.full(c, 1.0 / (127.0 * k[0] * k[1]))
    w_t = em.const(f"{node.name}_weight", np.full((1, k[0], k[1], c), 127, np.int8), TensorType.INT8,
                   QuantParams.per_channel(s_w, 0, 3))
    b_t = em.const(f"{node.name}_bias", np.zeros(c, np.int32), TensorType.INT32,
                   QuantParams.per_channel(x.quant.scale[0] * s_w, 0, 0))
    out = em.tensor(node.name, _meta_shape(node), L.NCHW_TO_NHWC, TensorType.INT8, plan.quant,
                    nonnegative=x.nonnegative)
    em.op("DEPTHWISE_CONV_2D", [x.tensor, w_t, b_t], [out.tensor],
          Options("DepthwiseConv2DOptions", {"Padding": _PAD[L.Padding.VALID], "StrideW": s[1], "StrideH": s[0],
                                             "DepthMultiplier": 1, "DilationWFactor": 1, "DilationHFactor": 1,
                                             "FusedActivationFunction": ACT_CODE[plan.act]}), 3)
    _finish(em, node, out, plan)


def max_pool(em: Emitter, node: fx.Node) -> None:
    mod = em.module(node)
    get = (lambda a, i, d: getattr(mod, a)) if mod is not None else (lambda a, i, d: _arg(node, i, a, d))
    k = L.pair(get("kernel_size", 1, None))
    s = L.pair(get("stride", 2, None) or k)
    if L.pair(get("dilation", 4, 1)) != (1, 1) or get("return_indices", 5, False):
        raise ExportError(f"{node.name!r}: max pooling with dilation or indices has no TFLite kernel")
    _pool(em, node, "MAX_POOL_2D", k, s, L.pair(get("padding", 3, 0)), bool(get("ceil_mode", 6, False)), False)


def avg_pool(em: Emitter, node: fx.Node) -> None:
    mod = em.module(node)
    get = (lambda a, i, d: getattr(mod, a)) if mod is not None else (lambda a, i, d: _arg(node, i, a, d))
    k = L.pair(get("kernel_size", 1, None))
    s = L.pair(get("stride", 2, None) or k)
    if get("divisor_override", 6, None):
        raise ExportError(f"{node.name!r}: avg_pool divisor_override has no TFLite kernel")
    _pool(em, node, "AVERAGE_POOL_2D", k, s, L.pair(get("padding", 3, 0)), bool(get("ceil_mode", 4, False)),
          bool(get("count_include_pad", 5, True)))


def _unary(em: Emitter, node: fx.Node, op_name: str, int8_ok: bool = True, options: Options | None = None,
           int8_version: int = 2, float_version: int = 1, x: TValue | None = None) -> None:
    x = em.value(node.args[0]) if x is None else x
    plan = em.plan_output(node, fuse_act=False)
    fixed = _FIXED_GRID.get(op_name)
    if fixed is not None and not same_grid(fixed, plan.quant):
        int8_ok = False  # a second rounding onto the model's grid would cost up to 1 LSB: run it in float
    if op_name in em.float_ops:
        int8_ok = False  # no int8 kernel in XNNPACK: float inside the delegate beats a partition break
        if plan.quant is None and x.is_int8 and op_name in ("RELU", "RELU6"):
            plan.quant = x.quant  # a grid-preserving clamp: back onto the input's grid
    if em.quantized and int8_ok and x.is_int8 and (plan.quant is not None or op_name in ("RELU", "RELU6")):
        out_q = plan.quant or x.quant
        out = em.like(x, node.name, quant=out_q)
        em.op(op_name, [x.tensor], [out.tensor], options, int8_version)
    else:
        x = em.to_float(x)
        out = em.like(x, node.name, quant=None)
        em.op(op_name, [x.tensor], [out.tensor], options, float_version)
    out.nonnegative = op_name in ("RELU", "RELU6", "LOGISTIC")
    _finish(em, node, out, plan)


def clamp(em: Emitter, node: fx.Node) -> None:
    kind = em.clamp_kind(node)
    _unary(em, node, "RELU6" if kind is FusedActivation.RELU6 else "RELU")


def hardtanh(em: Emitter, node: fx.Node) -> None:
    """hardtanh over [0, 6] is RELU6 (fusable); other bounds: MAXIMUM, MINIMUM in float (the quantizer after it
    writes the QUANTIZE)."""
    if em.clamp_kind(node) is not None:
        return clamp(em, node)
    low, high = hardtanh_bounds(em, node)
    x = em.to_float(em.value(node.args[0]))
    y = x
    for op_name, bound in (("MAXIMUM", low), ("MINIMUM", high)):
        out = em.like(x, f"{node.name}_{op_name.lower()}", quant=None)
        em.op(op_name, [y.tensor, em.const_value(bound, x, f"{node.name}_{op_name.lower()}_c").tensor],
              [out.tensor])
        y = out
    _finish(em, node, y, em.plan_output(node, fuse_act=False))


def _simple(op_name: str, int8_ok: bool = True, options: Options | None = None, int8_version: int = 2):
    return lambda em, node: _unary(em, node, op_name, int8_ok, options, int8_version)


def gelu(em: Emitter, node: fx.Node) -> None:
    mod = em.module(node)
    approx = (mod.approximate if mod is not None else node.kwargs.get("approximate", "none")) == "tanh"
    _unary(em, node, "GELU", True, Options("GeluOptions", {"Approximate": approx}))


def softmax(em: Emitter, node: fx.Node) -> None:
    x = last_axis_input(em, node, "softmax")
    _unary(em, node, "SOFTMAX", True, Options("SoftmaxOptions", {"Beta": 1.0}), x=x)


# -- registration against the op registry (how LiteRT runs each op: compress/ops/kernels_tflite.py) --------
def _register() -> None:
    table = {
        "conv1d": conv2d, "conv2d": conv2d, "linear": linear, "batch_norm": batchnorm, "relu": clamp,
        "relu6": clamp, "hardtanh": hardtanh, "max_pool": max_pool, "avg_pool": avg_pool,
        "adaptive_avg_pool": adaptive_avg_pool, "dropout": alias, "sigmoid": _simple("LOGISTIC"),
        "tanh": _simple("TANH"), "hardswish": _simple("HARD_SWISH", int8_version=1), "gelu": gelu,
        "softmax": softmax, "add": _binary("ADD"), "sub": _binary("SUB"), "mul": _binary("MUL"), "div": div,
        "cat": cat, "mean": mean, "reshape": reshape, "transpose": permute, "getitem": getitem, "matmul": matmul,
        "layer_norm": layer_norm, "embedding": embedding,
    }
    for name, fn in table.items():
        ops.register_emitter("tflite", name)(fn)


_register()


def supported_ops() -> list[str]:
    """The registry ops the TFLite exporter writes (kernel INT8 or FLOAT in ``kernels_tflite.py``).

    Example:
        >>> "conv2d" in supported_ops() and "erf" not in supported_ops()
        True
    """
    return sorted(s.name for s in ops.all_specs() if s.kernel("tflite") is not Kernel.NONE
                  and s.policy is not Policy.QUANTIZER)


def emitter_for(em: Emitter, node: fx.Node) -> Callable[[Emitter, fx.Node], None]:
    """The TFLite emitter the op registry holds for ``node`` (the quant-layer form first, for compress layers).

    Raises:
        ExportError: the registry has no TFLite emitter for the node's op (the message names op and node).
    """
    spec = ops.lookup(node, em.modules)
    fn = None
    if spec is not None:
        quantized = isinstance(em.module(node), QuantLayerMixin)
        # a layer's QuantMode (qconfig.mode) picks its form; not ``.mode``: nn.LSTM / nn.GRU have mode = "LSTM"
        mode = getattr(getattr(em.module(node), "qconfig", None), "mode", None) if quantized else None
        fn = spec.emitter("tflite", quantized, mode) or (spec.emitter("tflite") if mode in (None, "static") else None)
    if fn is None:
        from compress.passes.graph import node_label

        what = "not in the op registry" if spec is None else f"registry op {spec.name!r} has no TFLite kernel"
        raise ExportError(f"no TFLite mapping for op {node_label(node, em.modules)!r} (fx node {node.name!r}; "
                          f"{what}); TFLite writes: {', '.join(supported_ops())}. Replace the op or keep it out "
                          "of the exported model")
    return fn
