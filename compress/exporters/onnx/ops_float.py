"""ONNX emitters, float and structural part: what each torch module / function / method becomes in ONNX.

Emitters take ``(ctx, node, module_or_None)`` and return the node's value (see :mod:`.graph`); each is
registered for a registry op (:func:`~compress.exporters.onnx.graph.emitter`). The same emitters write fp32
graphs (float models, our baseline) and the float islands of int8 graphs. Ops the registry declares
``Policy.PRESERVING`` keep their input's int8 grid; the exporter re-emits Q/DQ after them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from compress.errors import ExportError
from compress.exporters.onnx.graph import ExportContext, PyValue, TensorValue, arg, emitter, static
from compress.exporters.onnx.ops_math import float_barrier, fold_constant_scale
from compress.exporters.onnx.ops_quant import clamp_implied, conv_attrs, emit_embedding, emit_linear
from compress.exporters.onnx.ops_tensor import pad_into_conv

_INT64_MAX = 2**63 - 1


def _x(ctx: ExportContext, node: fx.Node) -> TensorValue:
    return ctx.tensor(node.args[0], node)


def _unary(op_type: str):
    def handler(ctx: ExportContext, node: fx.Node, mod):
        return TensorValue(ctx.b.node(op_type, [_x(ctx, node).name], node.name))

    return handler


def _axis(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


# -- weighted float layers ------------------------------------------------------------------------------
@emitter("conv1d", "conv2d")
def _conv(ctx: ExportContext, node: fx.Node, mod: nn.Conv2d):
    # A float conv in an int8 model (--float-layer, --max-drop) must stay float: see float_barrier.
    inputs = [float_barrier(ctx, _x(ctx, node), node.name), ctx.b.const(mod.weight.detach().numpy(), f"{node.name}.weight")]
    if mod.bias is not None:
        inputs.append(ctx.b.const(mod.bias.detach().numpy(), f"{node.name}.bias"))
    return TensorValue(ctx.b.node("Conv", inputs, node.name,
                                  **conv_attrs(mod, node.name, pad_into_conv(ctx, node.args[0]))))


@emitter("linear")
def _linear(ctx: ExportContext, node: fx.Node, mod: nn.Linear):
    w = mod.weight.detach().numpy()

    def weight_for(transposed: bool) -> str:
        if transposed:
            return ctx.b.const(np.ascontiguousarray(w.T), f"{node.name}.weight_t")
        return ctx.b.const(w, f"{node.name}.weight")

    bias = ctx.b.const(mod.bias.detach().numpy(), f"{node.name}.bias") if mod.bias is not None else None
    x = TensorValue(float_barrier(ctx, _x(ctx, node), node.name))
    return TensorValue(emit_linear(ctx, node, x, weight_for, bias))


@emitter("batch_norm")
def _batch_norm(ctx: ExportContext, node: fx.Node, mod: nn.BatchNorm2d):
    if mod.running_mean is None:
        raise ExportError(f"BatchNorm {node.name!r} has no running statistics; use track_running_stats=True")
    c = mod.num_features
    scale = mod.weight.detach().numpy() if mod.affine else np.ones(c, np.float32)
    shift = mod.bias.detach().numpy() if mod.affine else np.zeros(c, np.float32)
    consts = [ctx.b.const(a, f"{node.name}.{n}") for a, n in
              ((scale, "weight"), (shift, "bias"), (mod.running_mean.detach().numpy(), "running_mean"),
               (mod.running_var.detach().numpy(), "running_var"))]
    return TensorValue(ctx.b.node("BatchNormalization", [_x(ctx, node).name, *consts], node.name,
                                  epsilon=float(mod.eps)))


@emitter("embedding")
def _embedding(ctx: ExportContext, node: fx.Node, mod: nn.Embedding):
    return emit_embedding(ctx, node, mod, ctx.b.const(mod.weight.detach().numpy(), f"{node.name}.weight"))


# -- activations ----------------------------------------------------------------------------------------
def _clip(ctx: ExportContext, node: fx.Node, lo: float, hi: float | None):
    x = _x(ctx, node)
    if clamp_implied(ctx, node, lo, hi):
        return x  # the following quantizer's code range clamps exactly the same
    if lo == 0 and hi is None:
        return TensorValue(ctx.b.node("Relu", [x.name], node.name))
    inputs = [x.name, ctx.b.scalar(lo, np.float32)] + ([ctx.b.scalar(hi, np.float32)] if hi is not None else [])
    return TensorValue(ctx.b.node("Clip", inputs, node.name))


@emitter("relu")
def _relu(ctx, node, mod):
    return _clip(ctx, node, 0.0, None)


@emitter("relu6")
def _relu6(ctx, node, mod):
    return _clip(ctx, node, 0.0, 6.0)


@emitter("hardtanh")
def _hardtanh(ctx, node, mod):
    if mod is not None:
        return _clip(ctx, node, float(mod.min_val), float(mod.max_val))
    return _clip(ctx, node, float(arg(node, 1, "min_val", -1.0)), float(arg(node, 2, "max_val", 1.0)))


emitter("sigmoid")(_unary("Sigmoid"))
emitter("tanh")(_unary("Tanh"))


@emitter("hardswish")
def _hardswish(ctx, node, mod):
    x = _x(ctx, node)
    if ctx.b.opset >= 14:
        return TensorValue(ctx.b.node("HardSwish", [x.name], node.name))
    hs = ctx.b.node("HardSigmoid", [x.name], node.name, alpha=1.0 / 6.0, beta=0.5)
    return TensorValue(ctx.b.node("Mul", [x.name, hs], node.name))


@emitter("silu")
def _silu(ctx, node, mod):
    x = _x(ctx, node)
    return TensorValue(ctx.b.node("Mul", [x.name, ctx.b.node("Sigmoid", [x.name], node.name)], node.name))


@emitter("leaky_relu")
def _leaky_relu(ctx, node, mod):
    slope = mod.negative_slope if mod is not None else static(ctx, arg(node, 1, "negative_slope", 0.01), node)
    return TensorValue(ctx.b.node("LeakyRelu", [_x(ctx, node).name], node.name, alpha=float(slope)))


@emitter("gelu")
def _gelu(ctx, node, mod):
    approximate = mod.approximate if mod is not None else node.kwargs.get("approximate", "none")
    xv = _x(ctx, node)
    x = xv.name
    b, f32 = ctx.b, np.float32
    if b.opset >= 20:
        return TensorValue(b.node("Gelu", [x], node.name, approximate=approximate))
    if xv.qparams is not None:
        # Between DequantizeLinear and QuantizeLinear onnxruntime gives each reader of the DQ its own copy
        # before it fuses, so the decomposed form below (x read twice) is never fused: 7 float nodes per GELU
        # (zoo BERT int8: 135 → 125 nodes). Its contrib kernels compute the same function in one node.
        # Float graphs keep the standard ops, which onnxruntime fuses itself (Add + Gelu → BiasGelu).
        op = "FastGelu" if approximate == "tanh" else "Gelu"
        return TensorValue(b.node(op, [x], node.name, domain="com.microsoft"))
    if approximate == "tanh":
        # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        cube = b.node("Mul", [x, b.node("Mul", [x, x], node.name)], node.name)
        inner = b.node("Add", [x, b.node("Mul", [cube, b.scalar(0.044715, f32)], node.name)], node.name)
        t = b.node("Tanh", [b.node("Mul", [inner, b.scalar(math.sqrt(2 / math.pi), f32)], node.name)], node.name)
    else:
        # Exact (erf) form: 0.5·x·(1 + erf(x/√2)); onnxruntime fuses this pattern into one Gelu kernel.
        t = b.node("Erf", [b.node("Div", [x, b.scalar(math.sqrt(2.0), f32)], node.name)], node.name)
    one_plus = b.node("Add", [t, b.scalar(1.0, f32)], node.name)
    return TensorValue(b.node("Mul", [b.node("Mul", [x, one_plus], node.name), b.scalar(0.5, f32)], node.name))


def _softmax_axis(ctx, node, mod) -> int:
    dim = mod.dim if mod is not None else static(ctx, arg(node, 1, "dim", None), node)
    if dim is None:
        raise ExportError(f"softmax {node.name!r} has no dim (torch's implicit-dim legacy); pass dim explicitly")
    return _axis(dim, ctx.rank(node))


@emitter("softmax")
def _softmax(ctx, node, mod):
    return TensorValue(ctx.b.node("Softmax", [_x(ctx, node).name], node.name, axis=_softmax_axis(ctx, node, mod)))


@emitter("log_softmax")
def _log_softmax(ctx, node, mod):
    return TensorValue(ctx.b.node("LogSoftmax", [_x(ctx, node).name], node.name,
                                  axis=_softmax_axis(ctx, node, mod)))


@emitter("layer_norm")
def _layer_norm(ctx, node, mod):
    if mod is not None:
        shape, eps = tuple(mod.normalized_shape), mod.eps
        weight = mod.weight.detach().numpy() if mod.weight is not None else None
        bias = mod.bias.detach().numpy() if mod.bias is not None else None
    else:
        shape, eps = tuple(static(ctx, arg(node, 1, "normalized_shape"), node)), static(
            ctx, arg(node, 4, "eps", 1e-5), node)
        weight = bias = None
        if arg(node, 2, "weight", None) is not None or arg(node, 3, "bias", None) is not None:
            raise ExportError(f"F.layer_norm {node.name!r} with weight/bias tensors is not exported; "
                              "use nn.LayerNorm")
    x, b = _x(ctx, node).name, ctx.b
    k = len(shape)
    w_name = b.const(weight if weight is not None else np.ones(shape, np.float32), f"{node.name}.weight")
    b_name = b.const(bias, f"{node.name}.bias") if bias is not None else None
    if b.opset >= 17:
        inputs = [x, w_name] + ([b_name] if b_name else [])
        return TensorValue(b.node("LayerNormalization", inputs, node.name, axis=-k, epsilon=float(eps)))
    # Below opset 17: (x - mean) / sqrt(var + eps) · w + b, reducing over the last k axes.
    axes = list(range(-k, 0))
    d = b.node("Sub", [x, _reduce_mean(ctx, x, axes, True, node.name)], node.name)
    var = _reduce_mean(ctx, b.node("Mul", [d, d], node.name), axes, True, node.name)
    std = b.node("Sqrt", [b.node("Add", [var, b.scalar(eps, np.float32)], node.name)], node.name)
    y = b.node("Mul", [b.node("Div", [d, std], node.name), w_name], node.name)
    return TensorValue(b.node("Add", [y, b_name], node.name) if b_name else y)


# -- pooling --------------------------------------------------------------------------------------------
def _tup(v, n: int) -> list[int]:
    return list(v) if isinstance(v, tuple | list) else [v] * n


def _pool_params(ctx, node, mod, nd: int) -> dict:
    if mod is not None:
        p = {k: getattr(mod, k, None) for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                               "count_include_pad", "divisor_override", "return_indices")}
    else:
        names = ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"] \
            if node.target is F.max_pool2d else ["kernel_size", "stride", "padding", "ceil_mode",
                                                 "count_include_pad", "divisor_override"]
        p = {n: static(ctx, arg(node, i + 1, n, None), node) for i, n in enumerate(names)}
    k = _tup(p["kernel_size"], nd)
    p["kernel_shape"] = k
    p["strides"] = _tup(p["stride"], nd) if p.get("stride") not in (None, [], ()) else k
    pad = _tup(p["padding"] or 0, nd)
    p["pads"] = pad + pad
    return p


@emitter("max_pool")
def _max_pool(ctx, node, mod):
    nd = ctx.rank(node) - 2
    p = _pool_params(ctx, node, mod, nd)
    if p.get("return_indices"):
        raise ExportError(f"max pool {node.name!r} returns indices; export it with return_indices=False")
    return TensorValue(ctx.b.node("MaxPool", [_x(ctx, node).name], node.name, kernel_shape=p["kernel_shape"],
                                  strides=p["strides"], pads=p["pads"], dilations=_tup(p.get("dilation") or 1, nd),
                                  ceil_mode=int(bool(p.get("ceil_mode")))))


@emitter("avg_pool")
def _avg_pool(ctx, node, mod):
    nd = ctx.rank(node) - 2
    p = _pool_params(ctx, node, mod, nd)
    if p.get("divisor_override"):
        raise ExportError(f"avg pool {node.name!r} uses divisor_override, which ONNX AveragePool lacks; "
                          "remove it or scale the output explicitly")
    include = p.get("count_include_pad")
    return TensorValue(ctx.b.node("AveragePool", [_x(ctx, node).name], node.name, kernel_shape=p["kernel_shape"],
                                  strides=p["strides"], pads=p["pads"], ceil_mode=int(bool(p.get("ceil_mode"))),
                                  count_include_pad=int(True if include is None else bool(include))))


@emitter("adaptive_avg_pool")
def _adaptive_avg_pool(ctx, node, mod):
    in_shape = ctx.shape(node.args[0])
    spatial = list(in_shape[2:])
    size = mod.output_size if mod is not None else static(ctx, arg(node, 1, "output_size"), node)
    out = [s if o is None else o for s, o in zip(spatial, _tup(size, len(spatial)), strict=True)]
    x = _x(ctx, node).name
    if all(o == 1 for o in out):
        return TensorValue(ctx.b.node("GlobalAveragePool", [x], node.name))
    if any(s % o for s, o in zip(spatial, out, strict=True)):
        raise ExportError(
            f"adaptive average pool {node.name!r} maps {spatial} to {out}, not an integer factor; ONNX has no "
            "adaptive pooling, so use an input size divisible by the output size (or output size 1)"
        )
    k = [s // o for s, o in zip(spatial, out, strict=True)]
    return TensorValue(ctx.b.node("AveragePool", [x], node.name, kernel_shape=k, strides=k))


# -- shape ops (quantization-preserving) ----------------------------------------------------------------
@emitter("reshape")
def _reshape(ctx, node, mod):
    x = _x(ctx, node)
    if ctx.shape(node) == ctx.shape(node.args[0]) and not (ctx.dyn_dims(node) ^ ctx.dyn_dims(node.args[0])):
        return TensorValue(x.name)
    return TensorValue(ctx.reshape_to_output(x, node.args[0], node))


@emitter("transpose")
def _transpose(ctx, node, mod):
    rank = ctx.rank(node)
    dims = [static(ctx, d, node) for d in node.args[1:]]
    if "dims" in node.kwargs:
        dims = [static(ctx, node.kwargs["dims"], node)]
    if node.target in ("transpose", torch.transpose):
        if "dim0" in node.kwargs:
            dims = [static(ctx, node.kwargs["dim0"], node), static(ctx, node.kwargs["dim1"], node)]
        a, b = (_axis(d, rank) for d in dims)
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
    else:
        if len(dims) == 1 and isinstance(dims[0], tuple | list):
            dims = list(dims[0])
        perm = [_axis(d, rank) for d in dims]
    return TensorValue(ctx.b.node("Transpose", [_x(ctx, node).name], node.name, perm=perm))


@emitter("dropout")
def _identity(ctx, node, mod):
    return _x(ctx, node)  # inference graph: dropout is the identity, and the value keeps its grid


@emitter("getitem")
def _getitem(ctx, node, mod):
    container = ctx.value(node.args[0])
    if isinstance(container, tuple):
        return container[static(ctx, node.args[1], node)]
    return _slice(ctx, node, container)


def _slice(ctx, node, x: TensorValue):
    index = static(ctx, node.args[1], node)
    index = index if isinstance(index, tuple) else (index,)
    rank = ctx.rank(node.args[0])
    consumed = sum(1 for i in index if i is not None and i is not Ellipsis)
    if any(i is Ellipsis for i in index):
        at = index.index(Ellipsis)
        index = index[:at] + (slice(None),) * (rank - consumed) + index[at + 1:]
    starts, ends, axes, steps, dim, reshape = [], [], [], [], 0, False
    for item in index:
        if item is None:
            reshape = True
            continue
        if isinstance(item, bool) or not isinstance(item, int | slice):
            raise ExportError(f"indexing {node.name!r} with {item!r} is not exported; only ints and slices with "
                              "constant bounds are (use torch.index_select / gather outside the exported graph)")
        if isinstance(item, int):
            starts.append(item)
            ends.append(item + 1 if item != -1 else _INT64_MAX)
            steps.append(1)
            axes.append(dim)
            reshape = True
        elif item != slice(None):
            if item.step is not None and item.step <= 0:
                raise ExportError(f"slice {node.name!r} has step {item.step}; only positive steps are exported")
            starts.append(0 if item.start is None else item.start)
            ends.append(_INT64_MAX if item.stop is None else item.stop)
            steps.append(1 if item.step is None else item.step)
            axes.append(dim)
        dim += 1
    name = x.name
    if axes:
        i64 = ctx.b.int64s
        name = ctx.b.node("Slice", [name, i64(starts), i64(ends), i64(axes), i64(steps)], node.name)
    if reshape:
        name = ctx.reshape_to_output(TensorValue(name), node.args[0], node)
    return TensorValue(name)


# -- arithmetic -----------------------------------------------------------------------------------------
def _binary(op_type: str):
    def handler(ctx: ExportContext, node: fx.Node, mod):
        if node.kwargs.get("rounding_mode") is not None:
            raise ExportError(f"{node.name!r}: division with rounding_mode is not exported; use true division")
        like = ctx.dtype(node)
        a = ctx.tensor(node.args[0], node, like)
        b_arg = arg(node, 1, "other")
        alpha = node.kwargs.get("alpha", 1)
        b = ctx.tensor(b_arg, node, like)
        if alpha != 1:
            b = TensorValue(ctx.b.node("Mul", [b.name, ctx.b.scalar(alpha, np.float32)], node.name))
        return TensorValue(ctx.b.node(op_type, [a.name, b.name], node.name))

    return handler


def _folded(op_type: str):
    plain = _binary(op_type)

    def handler(ctx: ExportContext, node: fx.Node, mod):
        folded = fold_constant_scale(ctx, node)  # x / c that changes no code: no op at all
        return folded if folded is not None else plain(ctx, node, mod)

    return handler


emitter("add")(_binary("Add"))
emitter("sub")(_binary("Sub"))
emitter("mul")(_folded("Mul"))
emitter("div")(_folded("Div"))
emitter("matmul")(_binary("MatMul"))


@emitter("neg")
def _neg(ctx, node, mod):
    return TensorValue(ctx.b.node("Neg", [_x(ctx, node).name], node.name))


@emitter("cat")
def _cat(ctx, node, mod):
    tensors = arg(node, 0, "tensors")
    dim = mod.dim if mod is not None else static(ctx, arg(node, 1, "dim", 0), node)  # FloatCat keeps its dim
    names = [ctx.tensor(t, node).name for t in tensors]
    return TensorValue(ctx.b.node("Concat", names, node.name, axis=_axis(dim, ctx.rank(node))))


def _reduce_mean(ctx: ExportContext, x: str, axes: list[int] | None, keepdims: bool, hint: str) -> str:
    # ReduceMean's axes moved from an attribute to an input in opset 18.
    if axes is None:
        return ctx.b.node("ReduceMean", [x], hint, keepdims=int(keepdims))
    if ctx.b.opset >= 18:
        return ctx.b.node("ReduceMean", [x, ctx.b.int64s(axes)], hint, keepdims=int(keepdims))
    return ctx.b.node("ReduceMean", [x], hint, axes=list(axes), keepdims=int(keepdims))


@emitter("mean")
def _mean(ctx, node, mod):
    if node.kwargs.get("dtype") is not None:
        raise ExportError(f"mean {node.name!r} with dtype= is not exported; cast before the mean")
    dims = static(ctx, arg(node, 1, "dim", None), node)
    keepdim = bool(static(ctx, arg(node, 2, "keepdim", False), node))
    rank = ctx.rank(node.args[0])
    axes = None if dims is None else [_axis(d, rank) for d in (dims if isinstance(dims, tuple | list) else [dims])]
    return TensorValue(_reduce_mean(ctx, _x(ctx, node).name, axes, keepdim, node.name))


def is_python_record(rec) -> bool:
    """A traced value that is not a tensor (sizes, shapes, ints): kept as a Python constant."""
    from compress.exporters.onnx.graph import TensorRecord

    if isinstance(rec, TensorRecord):
        return False
    if isinstance(rec, tuple | list):
        return all(is_python_record(r) for r in rec)
    return True


__all__ = ["PyValue", "is_python_record"]
