"""TFLite handlers for shape (quantization-preserving) ops, matmul, LayerNorm and embedding lookups."""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from compress.errors import ExportError
from compress.exporters.tflite import layout as L
from compress.exporters.tflite.graph import Const, Emitter, TValue
from compress.exporters.tflite.ops_base import _binary_float, _finish, _meta_shape, int8_weight
from compress.exporters.tflite.schema import Options, QuantParams, TensorType
from compress.layers.base import FusedActivation, QuantLayerMixin


# -- shape ops (quantization preserving) -------------------------------------------------------------------
def alias(em: Emitter, node: fx.Node) -> None:
    em.bind(node, em.value(node.args[0]))


def reshape(em: Emitter, node: fx.Node) -> None:
    x = em.value(node.args[0])
    out_shape = _meta_shape(node)
    n = x.shape[0] if x.rank else 1
    if x.col_perm is None and x.rank == 4 and x.perm == L.NCHW_TO_NHWC and out_shape == (n, int(np.prod(x.shape[1:]))):
        c, h, w = x.shape[1:]
        col_perm = L.flatten_col_perm(c, h, w)
        out = em.tensor(node.name, out_shape, (0, 1), x.dtype, x.quant, nonnegative=x.nonnegative)
        em.reshape(x.tensor, out, out_shape, x.is_int8)
        if col_perm is not None:
            out.col_perm = col_perm
            out._cache["chw"] = (c, h, w)
        return em.bind(node, out)
    x = em.uncollapse(x)
    big = [p for p in x.perm if x.shape[p] != 1]
    if big != sorted(big):  # element order differs from torch's: materialize it
        x = em.torch_order(x)
    out = em.tensor(node.name, out_shape, L.identity(len(out_shape)), x.dtype, x.quant, nonnegative=x.nonnegative)
    em.reshape(x.tensor, out, out_shape, x.is_int8)
    em.bind(node, out)


def permute(em: Emitter, node: fx.Node) -> None:
    x = em.uncollapse(em.value(node.args[0]))
    if node.target in (torch.transpose, "transpose"):
        d0, d1 = (a % x.rank for a in node.args[1:3])
        dims = list(range(x.rank))
        dims[d0], dims[d1] = dims[d1], dims[d0]
    else:
        dims = node.args[1:] if node.op == "call_method" else node.args[1]
        dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], list | tuple) else list(dims)
    out = TValue(x.tensor, _meta_shape(node), x.dtype, L.compose_torch_permute(x.perm, dims), x.quant,
                 nonnegative=x.nonnegative)
    em.bind(node, out)


def getitem(em: Emitter, node: fx.Node) -> None:
    src = em.value(node.args[0])
    index = em.value(node.args[1])
    if not isinstance(src, TValue):
        return em.bind(node, src[index])
    x = em.torch_order(src)
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:
        i = index.index(Ellipsis)
        index = index[:i] + (slice(None),) * (x.rank - len(index) + 1) + index[i + 1:]
    if any(i is None or isinstance(i, TValue) for i in index):
        raise ExportError(f"{node.name!r}: indexing with None or tensors is not exported; use slices and ints")
    begin, end, strides, shrink = [], [], [], 0
    for axis in range(x.rank):
        i = index[axis] if axis < len(index) else slice(None)
        size = x.shape[axis]
        if isinstance(i, int):
            i = i % size
            begin.append(i), end.append(i + 1), strides.append(1)
            shrink |= 1 << axis
        else:
            start, stop, step = i.indices(size)
            begin.append(start), end.append(stop), strides.append(step)
    out_shape = _meta_shape(node)
    out = em.tensor(node.name, out_shape, L.identity(len(out_shape)), x.dtype, x.quant, nonnegative=x.nonnegative)
    ins = [x.tensor] + [em.int32_const(f"{node.name}_{k}", v) for k, v in
                        (("begin", begin), ("end", end), ("strides", strides))]
    em.op("STRIDED_SLICE", ins, [out.tensor], Options("StridedSliceOptions", {"ShrinkAxisMask": shrink}),
          2 if x.is_int8 else 1)
    em.bind(node, out)


def matmul(em: Emitter, node: fx.Node) -> None:
    """BATCH_MATMUL: int8 when both operands and the output are on int8 grids, else float.

    XNNPACK (ai-edge-litert 2.3, measured) runs an int8 BATCH_MATMUL only when the right operand's zero point
    is 0; with any other it falls back to LiteRT's builtin kernel, one partition break each. An activation
    ``b`` (the keys and values of attention) is asymmetric, so for XNNPACK it is rewritten exactly as
    :func:`_zero_point_free_rhs` says; ``Int8Kernels.BUILTIN`` files keep the plain op.
    """
    a, b = (em.uncollapse(em.value(v)) for v in node.args[:2])
    adj_y = b.rank >= 2 and b.perm == L.identity(b.rank - 2) + (b.rank - 1, b.rank - 2)
    a = em.torch_order(a)
    b = b if adj_y else em.torch_order(b)
    plan = em.plan_output(node, fuse_act=False)
    int8 = em.quantized and plan.quant is not None and a.is_int8 and b.is_int8
    if int8 and em.xnnpack and b.quant.zero_point[0] != 0:
        if b.quant.zero_point[0] == -128:  # -zb = 128 has no int8 code: one more split would be needed
            int8 = False
        else:
            a, b = _zero_point_free_rhs(em, node, a, b)
    if not int8:
        a, b = em.to_float(a), em.to_float(b)
    out_shape = _meta_shape(node)
    out = em.tensor(node.name, out_shape, L.identity(len(out_shape)), a.dtype, plan.quant if int8 else None)
    em.op("BATCH_MATMUL", [a.tensor, b.tensor], [out.tensor],
          Options("BatchMatMulOptions", {"AdjX": False, "AdjY": adj_y}), 2 if int8 else 1)
    _finish(em, node, out, plan)


def _zero_point_free_rhs(em: Emitter, node: fx.Node, a: TValue, b: TValue) -> tuple[TValue, TValue]:
    """Operands ``[a, a]`` and ``[lo; hi]`` (concatenated along the contracted axis) whose int8 product is
    exactly ``a · b``, with ``lo`` and ``hi`` on ``b``'s scale and zero point 0.

    ``Σ_k (a_k − za)(b_k − zb)`` is the int32 sum every int8 kernel accumulates. ``b_k − zb`` spans
    ``[−128 − zb, 127 − zb]``, which int8 cannot hold, so it is split: ``lo = clamp(b − zb)`` (a QUANTIZE onto
    ``(sb, 0)``: scale ratio 1, so no rounding) and ``hi = (b − zb) − lo`` (a SUB, exact for the same reason;
    0 except at the clamped end, within ``[−zb, 0]`` or ``[0, −zb]``). Doubling the contracted axis gives the
    same accumulator, so the op's single requantization onto the output grid is the only rounding, as in the
    simulation. Cost: two CONCATENATIONs, a QUANTIZE and a SUB, all int8 inside the delegate.
    """
    zero = QuantParams.per_tensor(b.quant.scale[0], 0)
    lo = em.like(b, f"{node.name}_rhs_lo", quant=zero)
    em.op("QUANTIZE", [b.tensor], [lo.tensor], version=2)
    hi = em.like(b, f"{node.name}_rhs_hi", quant=zero)
    em.op("SUB", [b.tensor, lo.tensor], [hi.tensor], Options("SubOptions", {"FusedActivationFunction": 0}), 2)

    def doubled(parts: list[TValue], torch_axis: int, name: str) -> TValue:
        shape = list(parts[0].shape)
        shape[torch_axis] *= 2
        out = em.like(parts[0], name, shape=tuple(shape))
        em.op("CONCATENATION", [p.tensor for p in parts], [out.tensor],
              Options("ConcatenationOptions", {"Axis": L.axis_in(parts[0].perm, torch_axis),
                                               "FusedActivationFunction": 0}), 2)
        return out

    rhs = doubled([lo, hi], b.rank - 2, f"{node.name}_rhs")  # k: rows of b (its last TFLite axis when adj_y)
    lhs = doubled([a, a], a.rank - 1, f"{node.name}_lhs")
    return lhs, rhs


def layer_norm(em: Emitter, node: fx.Node) -> None:
    """LayerNorm over the last axis as MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL (+ affine), in float."""
    mod = em.module(node)
    if len(mod.normalized_shape) != 1:
        raise ExportError(f"{node.name!r}: LayerNorm is exported over the last axis only")
    x = em.to_float(em.torch_order(em.uncollapse(em.value(node.args[0]))))
    axis = em.int32_const(f"{node.name}_axis", [x.rank - 1])
    red_shape = x.shape[:-1] + (1,)

    def t(suffix, shape=x.shape):
        return em.tensor(f"{node.name}_{suffix}", shape, L.identity(x.rank), TensorType.FLOAT32)

    mu, d, sq, var, var_eps, inv, y = (t("mean", red_shape), t("centered"), t("sq"), t("var", red_shape),
                                       t("var_eps", red_shape), t("rstd", red_shape), t("norm"))
    em.op("MEAN", [x.tensor, axis], [mu.tensor], Options("ReducerOptions", {"KeepDims": True}))
    em.op("SUB", [x.tensor, mu.tensor], [d.tensor], Options("SubOptions"))
    em.op("MUL", [d.tensor, d.tensor], [sq.tensor], Options("MulOptions"))
    em.op("MEAN", [sq.tensor, axis], [var.tensor], Options("ReducerOptions", {"KeepDims": True}))
    eps = em.const(f"{node.name}_eps", np.array([mod.eps], np.float32), TensorType.FLOAT32)
    em.op("ADD", [var.tensor, eps], [var_eps.tensor], Options("AddOptions"))
    em.op("RSQRT", [var_eps.tensor], [inv.tensor])
    em.op("MUL", [d.tensor, inv.tensor], [y.tensor], Options("MulOptions"))
    if mod.weight is not None:
        y = _binary_float(em, node, "MUL", y, Const(mod.weight.detach().numpy()), FusedActivation.NONE, "_gamma")
    if mod.bias is not None:
        y = _binary_float(em, node, "ADD", y, Const(mod.bias.detach().numpy()), FusedActivation.NONE, "_beta")
    _finish(em, node, y, em.plan_output(node, fuse_act=False))


def embedding(em: Emitter, node: fx.Node) -> None:
    """GATHER rows of the table; an int8 table is stored int8 and dequantized per row (axis 0) once."""
    mod = em.module(node)
    ids = em.value(node.args[0])
    if isinstance(ids, torch.Tensor | Const):  # constant ids (positions: torch.arange(seq_len)): fold the rows
        table = mod.quantized_weight() if em.quantized and isinstance(mod, QuantLayerMixin) else mod.weight
        idx = torch.as_tensor(ids.array if isinstance(ids, Const) else ids).long()
        return em.bind(node, Const(table.detach()[idx].numpy()))
    ids = em.torch_order(ids)
    plan = em.plan_output(node, fuse_act=False)
    w = mod.weight.detach().double().numpy()
    if em.quantized and isinstance(mod, QuantLayerMixin):
        codes, s = int8_weight(mod.weight, mod.weight_quant, node.name)
        wq = em.const(f"{node.name}_table", codes, TensorType.INT8, QuantParams.per_channel(s, 0, 0))
        table = em.w.add_tensor(f"{node.name}_table_float", w.shape, TensorType.FLOAT32)
        em.op("DEQUANTIZE", [wq], [table], version=5)
    else:
        table = em.const(f"{node.name}_table", w.astype(np.float32), TensorType.FLOAT32)
    out_shape = _meta_shape(node)
    out = em.tensor(node.name, out_shape, L.identity(len(out_shape)), TensorType.FLOAT32)
    em.op("GATHER", [table, ids.tensor], [out.tensor], Options("GatherOptions", {"Axis": 0}))
    _finish(em, node, out, plan)


