"""ONNX emitters, math part: the activations and arithmetic real networks use beyond the classic set
(ELU, Mish, HardSigmoid, PReLU), elementwise math (exp, log, sqrt, rsqrt, abs, reciprocal, erf, pow),
cumulative sums, reductions over any axes (sum, amax / amin, max / min with indices, argmax) and transposed
convolutions.

onnxruntime has no integer kernel for these (``kernels_onnx.py`` says FLOAT, except max / amax, which pick an
input value): in an int8 graph they run between DequantizeLinear and the next QuantizeLinear, listed in
``float_ops``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from compress.errors import ExportError
from compress.exporters.onnx.graph import ExportContext, PyValue, TensorValue, arg, emitter, static
from compress.exporters.onnx.ops_tensor import cast_to, same_grid

_F32 = np.float32


def _axis(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def _x(ctx: ExportContext, node: fx.Node) -> TensorValue:
    return ctx.tensor(node.args[0], node)


def _float_x(ctx: ExportContext, node: fx.Node) -> TensorValue:
    """The input in the output's dtype (torch.exp of an int tensor is float)."""
    return cast_to(ctx, _x(ctx, node), ctx.dtype(node.args[0]), ctx.dtype(node), node.name)


def float_barrier(ctx: ExportContext, x: TensorValue, hint: str) -> str:
    """The input name a float-weighted op (Conv, ConvTranspose, Gemm, a float fallback subgraph) reads: a
    dequantized input goes through ``Max(x, x)``.

    onnxruntime's WeightBiasQuantization quantizes the float weights of a Conv / ConvTranspose / Gemm whose
    input comes straight from a DequantizeLinear (per tensor int8): the op would no longer compute what the
    simulation does in float. ``Max(x, x)`` is exact and onnxruntime does not remove it.
    """
    if x.qparams is None:
        return x.name
    return ctx.b.node("Max", [x.name, x.name], f"{hint}/float_barrier")


def fold_constant_scale(ctx: ExportContext, node: fx.Node) -> TensorValue | None:
    """``x / c`` or ``x · c`` (``c`` a Python number) between two quantizers, written as no op at all where
    the simulation provably maps every input code to the same output code: the output is then the input's
    codes read with the output quantizer's scale (one DequantizeLinear instead of DQ, Div, Q, DQ).

    Attention scores (``q·kᵀ / √d``): calibration puts the scaled scores' grid at the scores' scale / √d, so
    the division changes no code; zoo BERT int8: 3 of its 123 runtime nodes per layer. The proof is
    exhaustive and runs the simulation's own ops: each of the 256 codes through the fx node's function
    and the output quantizer must come out as the same code (same zero point) on the new scale. None when
    anything differs; the exporter then writes the Div / Mul and its Q/DQ as usual.
    """
    from compress.exporters.onnx.ops_quant import quantizer_qparams
    from compress.quant.fake import Quantizer, QuantState

    x_arg, c_arg = node.args[0], node.args[1] if len(node.args) > 1 else None
    x = ctx.value(x_arg) if isinstance(x_arg, fx.Node) else None
    c = ctx.value(c_arg) if c_arg is not None else None
    user = ctx.sole_user(node)
    if not (isinstance(x, TensorValue) and x.qparams is not None and isinstance(c, PyValue)
            and not c.batch_dependent and isinstance(c.value, int | float) and not isinstance(c.value, bool)
            and c.value > 0 and not node.kwargs and user is not None and user.op == "call_module"):
        return None
    q = ctx.module(user)
    dq = ctx.b.producer(x.name)
    if not isinstance(q, Quantizer) or q.state is QuantState.OBSERVING or q.spec.per_channel or \
            q.spec.qmax - q.spec.qmin != 255 or dq is None or dq.op_type != "DequantizeLinear":
        return None
    qp_in, qp_out = x.qparams, quantizer_qparams(q, ctx.unsigned, user.name)
    if (qp_out.zero_point, qp_out.unsigned) != (qp_in.zero_point, qp_in.unsigned):
        return None
    k = torch.arange(qp_in.qmin, qp_in.qmax + 1, dtype=torch.float32) - qp_in.zero_point
    with torch.no_grad():
        # The input quantizer's output values, as the simulation holds them, through the node's own op.
        fn = getattr(torch.Tensor, node.target) if node.op == "call_method" else node.target
        got = q(fn(k * torch.tensor(qp_in.scale, dtype=torch.float32), c.value))
    if not torch.equal(got, k * torch.tensor(qp_out.scale, dtype=torch.float32)):
        return None
    codes = dq.input[0]
    if set(x_arg.users) == {node}:  # the old DequantizeLinear has no other reader
        ctx.b.nodes.remove(dq)
    name = ctx.b.node("DequantizeLinear", [codes, *ctx.b.qparam_consts(qp_out)], node.name)
    # No QuantizeLinear writes the output quantizer's codes, so op-by-op verification has no probe there: the
    # next quantizer's comparison covers this op too (exactly what the simulation computes, proved above).
    return TensorValue(name, qp_out)


# -- activations --------------------------------------------------------------------------------------------
@emitter("elu")
def _elu(ctx, node, mod):
    alpha = mod.alpha if mod is not None else static(ctx, arg(node, 1, "alpha", 1.0), node)
    return TensorValue(ctx.b.node("Elu", [_x(ctx, node).name], node.name, alpha=float(alpha)))


@emitter("mish")
def _mish(ctx, node, mod):
    x = _x(ctx, node).name
    if ctx.b.opset >= 18:
        return TensorValue(ctx.b.node("Mish", [x], node.name))
    soft = ctx.b.node("Softplus", [x], node.name)  # x · tanh(ln(1 + eˣ)), Mish's definition
    return TensorValue(ctx.b.node("Mul", [x, ctx.b.node("Tanh", [soft], node.name)], node.name))


@emitter("hardsigmoid")
def _hardsigmoid(ctx, node, mod):
    # torch: relu6(x + 3) / 6 = clip(x/6 + 1/2, 0, 1), which is ONNX HardSigmoid with these constants.
    return TensorValue(ctx.b.node("HardSigmoid", [_x(ctx, node).name], node.name, alpha=1.0 / 6.0, beta=0.5))


@emitter("prelu")
def _prelu(ctx, node, mod: nn.PReLU):
    rank = ctx.rank(node.args[0])
    w = mod.weight.detach().float().numpy()
    if w.size > 1:  # one slope per channel (dim 1): broadcast over the dims after it
        w = w.reshape([-1] + [1] * max(rank - 2, 0))
    slope = ctx.b.const(w, f"{node.name}.weight")
    return TensorValue(ctx.b.node("PRelu", [_x(ctx, node).name, slope], node.name))


# -- transposed convolution ---------------------------------------------------------------------------------
@emitter("conv_transpose")
def _conv_transpose(ctx, node, mod: nn.ConvTranspose2d):
    if mod.padding_mode != "zeros":
        raise ExportError(f"transposed conv {node.name!r} uses padding_mode={mod.padding_mode!r}; only 'zeros' "
                          "is exported")
    if len(node.args) > 1 or node.kwargs.get("output_size") is not None:
        raise ExportError(f"transposed conv {node.name!r} is called with output_size; set output_padding on the "
                          "layer instead")
    x = _x(ctx, node)
    # torch's [C_in, C_out / groups, k...] weight is ONNX ConvTranspose's layout too.
    inputs = [float_barrier(ctx, x, node.name), ctx.b.const(mod.weight.detach().float().numpy(), f"{node.name}.weight")]
    if mod.bias is not None:
        inputs.append(ctx.b.const(mod.bias.detach().float().numpy(), f"{node.name}.bias"))
    pads = list(mod.padding)
    return TensorValue(ctx.b.node("ConvTranspose", inputs, node.name, kernel_shape=list(mod.kernel_size),
                                  strides=list(mod.stride), pads=pads + pads, dilations=list(mod.dilation),
                                  group=mod.groups, output_padding=list(mod.output_padding)))


# -- elementwise math ---------------------------------------------------------------------------------------
def _unary(op_type: str):
    def emit(ctx, node, mod):
        return TensorValue(ctx.b.node(op_type, [_float_x(ctx, node).name], node.name))

    return emit


for _name, _op in (("exp", "Exp"), ("log", "Log"), ("sqrt", "Sqrt"), ("reciprocal", "Reciprocal"), ("erf", "Erf")):
    emitter(_name)(_unary(_op))


@emitter("abs")
def _abs(ctx, node, mod):
    return TensorValue(ctx.b.node("Abs", [_x(ctx, node).name], node.name))  # keeps an integer dtype


@emitter("rsqrt")
def _rsqrt(ctx, node, mod):
    return TensorValue(ctx.b.node("Reciprocal", [ctx.b.node("Sqrt", [_float_x(ctx, node).name], node.name)],
                                  node.name))


@emitter("pow")
def _pow(ctx, node, mod):
    dtype = ctx.dtype(node)
    base, exponent = node.args[0], arg(node, 1, "exponent")
    names = []
    for a in (base, exponent):
        v = ctx.tensor(a, node, dtype)
        names.append(cast_to(ctx, v, ctx.dtype(a), dtype, node.name).name if isinstance(a, fx.Node) else v.name)
    return TensorValue(ctx.b.node("Pow", names, node.name))


@emitter("cumsum")
def _cumsum(ctx, node, mod):
    dim = _axis(int(static(ctx, arg(node, 1, "dim"), node)), ctx.rank(node.args[0]))
    # torch sums bool / int32 masks in int64 (position ids from an attention mask): cast first.
    x = _float_x(ctx, node)
    return TensorValue(ctx.b.node("CumSum", [x.name, ctx.b.scalar(dim, np.int64)], node.name))


# -- reductions ---------------------------------------------------------------------------------------------
def _axes(ctx: ExportContext, node: fx.Node, dims) -> list[int] | None:
    if dims is None:
        return None
    rank = ctx.rank(node.args[0])
    return [_axis(int(d), rank) for d in (dims if isinstance(dims, tuple | list) else [dims])]


def reduce(ctx: ExportContext, op_type: str, x: str, axes: list[int] | None, keepdims: bool, hint: str) -> str:
    """ReduceSum's axes became an input in opset 13, ReduceMax / ReduceMin / ReduceMean's in opset 18."""
    as_input = ctx.b.opset >= (13 if op_type == "ReduceSum" else 18)
    if axes is None:
        return ctx.b.node(op_type, [x], hint, keepdims=int(keepdims))
    if as_input:
        return ctx.b.node(op_type, [x, ctx.b.int64s(axes)], hint, keepdims=int(keepdims))
    return ctx.b.node(op_type, [x], hint, axes=list(axes), keepdims=int(keepdims))


@emitter("sum")
def _sum(ctx, node, mod):
    if node.kwargs.get("dtype") is not None:
        raise ExportError(f"sum {node.name!r} with dtype= is not exported; cast before the sum")
    axes = _axes(ctx, node, static(ctx, arg(node, 1, "dim", None), node))
    keep = bool(static(ctx, arg(node, 2, "keepdim", False), node))
    return TensorValue(reduce(ctx, "ReduceSum", _float_x(ctx, node).name, axes or None, keep, node.name))


@emitter("amax")
def _amax(ctx, node, mod):
    name = node.target if isinstance(node.target, str) else node.target.__name__
    axes = _axes(ctx, node, static(ctx, arg(node, 1, "dim", None), node))
    keep = bool(static(ctx, arg(node, 2, "keepdim", False), node))
    op_type = "ReduceMax" if name == "amax" else "ReduceMin"
    return TensorValue(reduce(ctx, op_type, _x(ctx, node).name, axes or None, keep, node.name))


@emitter("max_min")
def _max_min(ctx, node, mod):
    """torch.max / min: over everything (one value), or along ``dim`` (values and indices, a tuple)."""
    kind = node.target.__name__
    x = _x(ctx, node)
    reduce_op, arg_op = ("ReduceMax", "ArgMax") if kind == "max" else ("ReduceMin", "ArgMin")
    dim = arg(node, 1, "dim", None)
    if dim is None:
        return TensorValue(reduce(ctx, reduce_op, x.name, None, False, node.name))
    if isinstance(dim, fx.Node) and isinstance(ctx.value(dim), TensorValue):
        raise ExportError(f"{node.name!r}: elementwise torch.{kind} of two tensors is not exported; use "
                          f"torch.{'maximum' if kind == 'max' else 'minimum'}")
    axis = _axis(int(static(ctx, dim, node)), ctx.rank(node.args[0]))
    keep = bool(static(ctx, arg(node, 2, "keepdim", False), node))
    values = reduce(ctx, reduce_op, x.name, [axis], keep, node.name)
    indices = ctx.b.node(arg_op, [x.name], node.name, axis=axis, keepdims=int(keep))
    return same_grid(ctx, values, x, node.name), TensorValue(indices)


@emitter("argmax")
def _argmax(ctx, node, mod):
    name = node.target if isinstance(node.target, str) else node.target.__name__
    op_type = "ArgMax" if name == "argmax" else "ArgMin"
    x = _x(ctx, node).name
    dim = static(ctx, arg(node, 1, "dim", None), node)
    keep = bool(static(ctx, arg(node, 2, "keepdim", False), node))
    if dim is None:  # the index into the flattened tensor
        flat = ctx.b.node("Reshape", [x, ctx.b.int64s([-1])], node.name)
        return TensorValue(ctx.b.node(op_type, [flat], node.name, axis=0, keepdims=0))
    axis = _axis(int(dim), ctx.rank(node.args[0]))
    return TensorValue(ctx.b.node(op_type, [x], node.name, axis=axis, keepdims=int(keep)))


__all__ = ["float_barrier", "fold_constant_scale", "reduce"]
