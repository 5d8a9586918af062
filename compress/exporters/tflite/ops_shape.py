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
    a, b = (em.uncollapse(em.value(v)) for v in node.args[:2])
    adj_y = b.rank >= 2 and b.perm == L.identity(b.rank - 2) + (b.rank - 1, b.rank - 2)
    a = em.torch_order(a)
    b = b if adj_y else em.torch_order(b)
    plan = em.plan_output(node, fuse_act=False)
    int8 = (em.quantized and plan.quant is not None and a.is_int8 and b.is_int8
            and "BATCH_MATMUL" not in em.float_ops)
    if not int8:
        a, b = em.to_float(a), em.to_float(b)
    out_shape = _meta_shape(node)
    out = em.tensor(node.name, out_shape, L.identity(len(out_shape)), a.dtype, plan.quant if int8 else None)
    em.op("BATCH_MATMUL", [a.tensor, b.tensor], [out.tensor],
          Options("BatchMatMulOptions", {"AdjX": False, "AdjY": adj_y}), 2 if int8 else 1)
    _finish(em, node, out, plan)


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


