"""TFLite emitters: padding, resizing, splitting, broadcasting and tiling, gathering, reductions and cumulative
sums (transposed convolutions: :mod:`.ops_conv_transpose`).

Axis arguments are torch axes; each emitter maps them through the value's layout (``L.axis_in``), so a tensor
that is NHWC inside the file is padded, split, gathered or reduced where torch means, without a TRANSPOSE.
Grid-preserving ops (pad, split, broadcast, tile, gather, max/min) keep int8 values on their input's grid.
"""

from __future__ import annotations

import math

import numpy as np
from torch import fx, nn

from compress import ops
from compress.errors import ExportError
from compress.exporters.tflite import layout as L
from compress.exporters.tflite.graph import Const, Emitter, TValue, grid_codes
from compress.exporters.tflite.ops_base import _arg, _finish, _meta_shape, emits
from compress.exporters.tflite.schema import Options, TensorType, numpy_dtype

_INT64 = 4  # tflite.TensorType.INT64 (ArgMax's output_type)
_MAX_SLICES = 16  # index_select with at most this many constant indices is written as slices


def _v(x: TValue, int8: int = 2, other: int = 1) -> int:
    return int8 if x.is_int8 else other


def _slice(em: Emitter, x: TValue, axis: int, start: int, stop: int, name: str) -> TValue:
    """``x`` restricted to ``[start, stop)`` along TFLite axis ``axis`` (STRIDED_SLICE, cached per range)."""
    key = ("slice", axis, start, stop)
    if key not in x._cache:
        tfl = L.permute_shape(x.shape, x.perm)
        begin, end = [0] * x.rank, list(tfl)
        begin[axis], end[axis] = start, stop
        shape = list(x.shape)
        shape[x.perm[axis]] = stop - start
        out = em.tensor(name, shape, x.perm, x.dtype, x.quant, nonnegative=x.nonnegative)
        ins = [x.tensor] + [em.int32_const(f"{name}_{k}", v) for k, v in
                            (("begin", begin), ("end", end), ("strides", [1] * x.rank))]
        em.op("STRIDED_SLICE", ins, [out.tensor], Options("StridedSliceOptions"), _v(x))
        x._cache[key] = out
    return x._cache[key]


def _concat(em: Emitter, parts: list[TValue], axis: int, like: TValue, shape, name: str) -> TValue:
    out = em.tensor(name, shape, like.perm, like.dtype, like.quant, nonnegative=like.nonnegative)
    em.op("CONCATENATION", [p.tensor for p in parts], [out.tensor],
          Options("ConcatenationOptions", {"Axis": axis, "FusedActivationFunction": 0}), _v(like))
    return out


# -- padding ---------------------------------------------------------------------------------------------
_PAD_MODULES = {nn.ZeroPad2d: "constant", nn.ConstantPad1d: "constant", nn.ConstantPad2d: "constant",
                nn.ReflectionPad1d: "reflect", nn.ReflectionPad2d: "reflect", nn.ReplicationPad1d: "replicate",
                nn.ReplicationPad2d: "replicate"}


def _pad_params(em: Emitter, node: fx.Node) -> tuple[str, list[int], float]:
    """(mode, torch's widths — last dimension first, value) of ``F.pad`` or a padding module."""
    mod = em.module(node)
    if mod is not None:
        return _PAD_MODULES[type(mod)], list(mod.padding), float(getattr(mod, "value", 0.0))
    widths, mode = list(em.value(_arg(node, 1, "pad"))), _arg(node, 2, "mode", "constant")
    return mode, widths, float(_arg(node, 3, "value", 0.0) or 0.0)


def folds_into_conv(em: Emitter, node: fx.Node) -> bool:
    """Whether ``node`` is a zero constant pad read only by a ``Conv2d`` with padding 0 and padding H and W by
    exactly what TFLite's SAME adds for that conv (``max((⌈n/s⌉ − 1)·s + k_eff − n, 0)``, the smaller half
    first): the TF-"same" port's ``F.pad`` then ``F.conv2d``. The conv is then written SAME on the unpadded
    input and no PAD is written (int8: SAME pads with the zero point, the same real 0 as the PAD)."""
    spec = ops.lookup(node, em.modules)
    if spec is None or spec.name != "pad" or len(node.users) != 1:
        return False
    conv = next(iter(node.users))
    mod = em.module(conv)
    if (not isinstance(mod, nn.Conv2d) or conv.args[0] is not node or isinstance(mod.padding, str)
            or any(mod.padding) or mod.padding_mode != "zeros"):
        return False
    mode, widths, value = _pad_params(em, node)
    if mode != "constant" or value != 0.0 or len(widths) not in (2, 4):
        return False
    widths = [int(w) for w in widths] + [0] * (4 - len(widths))
    size = _meta_shape(node.args[0])[2:]
    for (before, after), n, k, s, d in zip(((widths[2], widths[3]), (widths[0], widths[1])), size, mod.kernel_size,
                                           mod.stride, mod.dilation, strict=True):
        total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
        if (before, after) != (total // 2, total - total // 2):
            return False
    return True


@emits("pad")
def pad(em: Emitter, node: fx.Node) -> None:
    """``F.pad`` / the padding modules. Constant: PAD for 0 (int8: the zero point), constant borders
    concatenated for another value. Reflect / replicate: slices of the border concatenated on each
    side (exact for any width; XNNPACK has no MIRROR_PAD kernel, and MIRROR_PAD's SYMMETRIC mode only equals
    replicate for width 1), all int8 on the input's grid."""
    mode, widths, value = _pad_params(em, node)
    x = em.uncollapse(em.value(node.args[0]))
    if folds_into_conv(em, node):  # the conv reads the unpadded input and pads itself (SAME)
        return em.bind(node, x)
    if len(widths) % 2 or any(w < 0 for w in widths):
        raise ExportError(f"{node.name!r}: padding {widths} is not exported; pad with non-negative pairs")
    pairs = {x.rank - 1 - i: (int(widths[2 * i]), int(widths[2 * i + 1])) for i in range(len(widths) // 2)}
    if mode == "constant":
        return _pad_constant(em, node, x, pairs, value)
    if mode not in ("reflect", "replicate"):
        raise ExportError(f"{node.name!r}: {mode!r} padding has no TFLite mapping; use constant, reflect or "
                          "replicate")
    shape = list(x.shape)
    cur = x
    for dim, (before, after) in sorted(pairs.items()):
        if not before and not after:
            continue
        size, axis = shape[dim], L.axis_in(x.perm, dim)
        if mode == "reflect":
            if max(before, after) >= size:
                raise ExportError(f"{node.name!r}: reflect padding {max(before, after)} must be smaller than the "
                                  f"padded size {size} (as torch requires)")
            left, right = range(before, 0, -1), range(size - 2, size - 2 - after, -1)
        else:
            left, right = [0] * before, [size - 1] * after
        src = cur
        parts = [_slice(em, src, axis, i, i + 1, f"{node.name}_d{dim}_{i}") for i in left] + [src]
        parts += [_slice(em, src, axis, i, i + 1, f"{node.name}_d{dim}_{i}") for i in right]
        shape[dim] += before + after
        cur = _concat(em, parts, axis, src, shape, f"{node.name}_d{dim}")
    em.bind(node, cur)


def _pad_constant(em: Emitter, node: fx.Node, x: TValue, pairs: dict, value: float) -> None:
    paddings = [list(pairs.get(p, (0, 0))) for p in x.perm]
    out = em.tensor(node.name, _meta_shape(node), x.perm, x.dtype, x.quant,
                    nonnegative=x.nonnegative and value >= 0)
    ins = [x.tensor, em.int32_const(f"{node.name}_paddings", paddings)]
    if value == 0.0:
        em.op("PAD", ins, [out.tensor], Options("PadOptions"), _v(x))
        return em.bind(node, out)
    # Another value: constant borders CONCATENATEd on each side (PADV2 has no XNNPACK kernel). An int8 value is
    # written as its code on the input's grid (what the quantizer after a grid-preserving op rounds it to).
    fill = int(grid_codes(value, x.quant)) if x.is_int8 else value
    cur, shape = x, list(x.shape)
    for dim, (before, after) in sorted(pairs.items()):
        axis, parts = L.axis_in(x.perm, dim), []
        for width, side in ((before, "before"), (0, "input"), (after, "after")):
            if side == "input":
                parts.append(cur)
            elif width:
                block = list(shape)
                block[dim] = width
                data = np.full(L.permute_shape(block, x.perm), fill, numpy_dtype(x.dtype))
                parts.append(TValue(em.const(f"{node.name}_{side}{dim}", data, x.dtype, x.quant), tuple(block),
                                    x.dtype, x.perm, x.quant))
        if len(parts) > 1:
            shape[dim] += before + after
            cur = _concat(em, parts, axis, x, shape, f"{node.name}_d{dim}")
    em.bind(node, cur)


# -- resizing ----------------------------------------------------------------------------------------------
@emits("interpolate")
def interpolate(em: Emitter, node: fx.Node) -> None:
    """``F.interpolate`` / ``nn.Upsample`` on NCHW: RESIZE_NEAREST_NEIGHBOR (torch's ``nearest`` is
    floor(dst · in/out): no half-pixel centers) or RESIZE_BILINEAR (torch's ``align_corners=False`` is TFLite's
    ``half_pixel_centers``), int8 on the input grid, then onto the following quantizer's grid."""
    mod = em.module(node)
    mode = mod.mode if mod is not None else _arg(node, 3, "mode", "nearest")
    align = bool((mod.align_corners if mod is not None else _arg(node, 4, "align_corners", None)) or False)
    x = em.to_perm(em.value(node.args[0]), L.NCHW_TO_NHWC)
    if x.rank != 4 or mode not in ("nearest", "bilinear"):
        raise ExportError(f"{node.name!r}: {mode!r} interpolation of a {x.rank}-d tensor has no TFLite mapping; "
                          "use nearest or bilinear on NCHW images")
    out_shape = _meta_shape(node)
    plan = em.plan_output(node, fuse_act=False)
    if not (x.is_int8 and plan.quant is not None):
        x = em.to_float(x)
    size = em.int32_const(f"{node.name}_size", list(out_shape[2:]))
    out = em.tensor(node.name, out_shape, L.NCHW_TO_NHWC, x.dtype, x.quant, nonnegative=x.nonnegative)
    factors = [out_shape[i] // x.shape[i] for i in (2, 3)]
    if mode == "nearest" and all(f * x.shape[i] == out_shape[i] for f, i in zip(factors, (2, 3), strict=True)):
        _repeat_pixels(em, x, out, factors, node.name)
    elif mode == "nearest":
        em.op("RESIZE_NEAREST_NEIGHBOR", [x.tensor, size], [out.tensor],
              Options("ResizeNearestNeighborOptions", {"AlignCorners": False, "HalfPixelCenters": False}), _v(x))
    else:
        em.op("RESIZE_BILINEAR", [x.tensor, size], [out.tensor],
              Options("ResizeBilinearOptions", {"AlignCorners": align, "HalfPixelCenters": not align}),
              3 if not align else _v(x))
    if out.is_int8:
        out = em.quantize(out, plan.quant, f"{node.name}_requant")
    _finish(em, node, out, plan)


def _repeat_pixels(em: Emitter, x: TValue, out: TValue, factors, name: str) -> None:
    """Nearest upsampling by integer factors as RESHAPE → CONCATENATION of copies → RESHAPE: the same values
    as RESIZE_NEAREST_NEIGHBOR, which XNNPACK has no kernel for (it split int8 graphs into two partitions)."""
    n, c, h, w = x.shape
    fh, fw = factors
    cur = em.w.add_tensor(f"{name}_6d", (n, h, 1, w, 1, c), x.dtype, quant=x.quant)
    em.op("RESHAPE", [x.tensor, em.int32_const(f"{name}_6d_shape", [n, h, 1, w, 1, c])], [cur],
          Options("ReshapeOptions", {"NewShape": [n, h, 1, w, 1, c]}))
    shape = [n, h, 1, w, 1, c]
    for axis, k in ((4, fw), (2, fh)):
        if k == 1:
            continue
        shape[axis] = k
        nxt = em.w.add_tensor(f"{name}_copies{axis}", tuple(shape), x.dtype, quant=x.quant)
        em.op("CONCATENATION", [cur] * k, [nxt], Options("ConcatenationOptions", {"Axis": axis,
                                                                                  "FusedActivationFunction": 0}),
              _v(x))
        cur = nxt
    em.op("RESHAPE", [cur, em.int32_const(f"{name}_shape", [n, h * fh, w * fw, c])], [out.tensor],
          Options("ReshapeOptions", {"NewShape": [n, h * fh, w * fw, c]}))


# -- splitting ---------------------------------------------------------------------------------------------
@emits("split")
def split(em: Emitter, node: fx.Node) -> None:
    """``torch.split`` / ``chunk``: SPLIT (equal parts) or slices; ``unbind``: slices reshaped. A tuple."""
    x = em.uncollapse(em.value(node.args[0]))
    kind = node.target if isinstance(node.target, str) else node.target.__name__
    dim = _arg(node, 1 if kind == "unbind" else 2, "dim", 0) % x.rank
    axis, size = L.axis_in(x.perm, dim), x.shape[dim]
    if kind == "unbind":  # slices, each reshaped without the axis (XNNPACK has no UNPACK kernel)
        perm = L.reduced_perm(x.perm, [dim], False)
        shape = x.shape[:dim] + x.shape[dim + 1:]
        parts = []
        for i in range(size):
            part = em.tensor(f"{node.name}_{i}", shape, perm, x.dtype, x.quant, nonnegative=x.nonnegative)
            em.reshape(_slice(em, x, axis, i, i + 1, f"{node.name}_{i}_slice").tensor, part,
                       L.permute_shape(shape, perm), x.is_int8)
            parts.append(part)
        return em.bind(node, tuple(parts))
    arg = em.value(_arg(node, 1, "split_size_or_sections" if kind == "split" else "chunks"))
    if kind == "chunk":
        arg = math.ceil(size / int(arg))
    sizes = [int(s) for s in arg] if isinstance(arg, list | tuple) else \
        [min(int(arg), size - i) for i in range(0, size, int(arg))]
    if len(set(sizes)) > 1:  # unequal parts: one STRIDED_SLICE each (XNNPACK has no SPLIT_V kernel)
        starts = np.cumsum([0] + sizes)
        return em.bind(node, tuple(_slice(em, x, axis, int(starts[i]), int(starts[i + 1]), f"{node.name}_{i}")
                                   for i in range(len(sizes))))
    parts = []
    for i, s in enumerate(sizes):
        shape = list(x.shape)
        shape[dim] = s
        parts.append(em.tensor(f"{node.name}_{i}", shape, x.perm, x.dtype, x.quant, nonnegative=x.nonnegative))
    em.op("SPLIT", [em.int32_const(f"{node.name}_axis", [axis]), x.tensor], [p.tensor for p in parts],
          Options("SplitOptions", {"NumSplits": len(sizes)}), _v(x))
    em.bind(node, tuple(parts))


# -- broadcasting and tiling ---------------------------------------------------------------------------
@emits("expand")
def expand(em: Emitter, node: fx.Node) -> None:
    """``x.expand(...)`` / ``expand_as``: BROADCAST_TO; ``x.repeat(...)``: TILE (in the value's layout when the
    rank is kept; a new leading axis needs torch order)."""
    x = em.uncollapse(em.value(node.args[0]))
    out_shape = _meta_shape(node)
    if len(out_shape) != x.rank or x.col_perm is not None:
        x = em.torch_order(x)
        if len(out_shape) != x.rank:  # new leading axes: a RESHAPE to the output rank first
            shaped = em.tensor(f"{node.name}_rank", (1,) * (len(out_shape) - x.rank) + x.shape,
                               L.identity(len(out_shape)), x.dtype, x.quant, nonnegative=x.nonnegative)
            em.reshape(x.tensor, shaped, shaped.shape, x.is_int8)
            x = shaped
    out = em.tensor(node.name, out_shape, x.perm, x.dtype, x.quant, nonnegative=x.nonnegative)
    if node.target == "repeat":
        multiples = [out_shape[p] // x.shape[p] for p in x.perm]
        em.op("TILE", [x.tensor, em.int32_const(f"{node.name}_multiples", multiples)], [out.tensor],
              None, _v(x, 3))
    else:
        target = list(L.permute_shape(out_shape, x.perm))
        em.op("BROADCAST_TO", [x.tensor, em.int32_const(f"{node.name}_shape", target)], [out.tensor], None, 2)
    em.bind(node, out)


# -- gathering -------------------------------------------------------------------------------------------
def _indices(em: Emitter, idx, name: str) -> int:
    if isinstance(idx, TValue):
        return idx.tensor
    arr = np.asarray(idx.array if isinstance(idx, Const) else idx.numpy() if hasattr(idx, "numpy") else idx)
    return em.const(name, arr.astype(np.int32), TensorType.INT32)


@emits("gather")
def gather(em: Emitter, node: fx.Node) -> None:
    """``index_select(x, dim, idx)``: GATHER along the TFLite axis holding ``dim``; ``torch.gather(x, dim,
    index)`` (per-element) as GATHER_ND over full coordinates (constant ones, or the index tensor PACKed with
    constant coordinates of the other axes)."""
    x = em.uncollapse(em.value(node.args[0]))
    dim = int(em.value(_arg(node, 1, "dim"))) % x.rank
    idx = em.value(_arg(node, 2, "index"))
    kind = node.target if isinstance(node.target, str) else node.target.__name__
    out_shape = _meta_shape(node)
    if kind == "index_select":
        if isinstance(idx, TValue) and idx.rank != 1:
            raise ExportError(f"{node.name!r}: index_select takes a 1-d index")
        axis = L.axis_in(x.perm, dim)
        if not isinstance(idx, TValue):
            picks = [int(i) % x.shape[dim] for i in np.asarray(idx.array if isinstance(idx, Const) else idx).reshape(-1)]
            if len(picks) <= _MAX_SLICES:  # a few constant rows: slices + CONCATENATION stay inside XNNPACK
                parts = [_slice(em, x, axis, i, i + 1, f"{node.name}_{i}") for i in picks]
                return em.bind(node, parts[0] if len(parts) == 1 else _concat(em, parts, axis, x, out_shape,
                                                                              node.name))
        idx_t = _indices(em, idx, f"{node.name}_index") if not isinstance(idx, TValue) else em.torch_order(idx).tensor
        out = em.tensor(node.name, out_shape, x.perm, x.dtype, x.quant, nonnegative=x.nonnegative)
        em.op("GATHER", [x.tensor, idx_t], [out.tensor],
              Options("GatherOptions", {"Axis": L.axis_in(x.perm, dim), "BatchDims": 0}), _v(x))
        return em.bind(node, out)
    x = em.torch_order(x)
    grids = np.meshgrid(*[np.arange(s) for s in out_shape], indexing="ij")
    if isinstance(idx, TValue):
        idx = em.torch_order(idx)
        if idx.dtype != TensorType.INT32:
            as32 = em.tensor(f"{node.name}_index32", idx.shape, idx.perm, TensorType.INT32)
            em.op("CAST", [idx.tensor], [as32.tensor])
            idx = as32
        coords = [idx.tensor if a == dim else em.const(f"{node.name}_coord{a}", grids[a].astype(np.int32),
                                                       TensorType.INT32) for a in range(x.rank)]
        packed = em.w.add_tensor(f"{node.name}_coords", (*out_shape, x.rank), TensorType.INT32)
        em.op("PACK", coords, [packed], Options("PackOptions", {"ValuesCount": x.rank, "Axis": x.rank}))
    else:
        index = np.asarray(idx.array if isinstance(idx, Const) else idx)
        grids[dim] = index
        packed = em.const(f"{node.name}_coords", np.stack(grids, -1).astype(np.int32), TensorType.INT32)
    out = em.tensor(node.name, out_shape, L.identity(x.rank), x.dtype, x.quant, nonnegative=x.nonnegative)
    em.op("GATHER_ND", [x.tensor, packed], [out.tensor], None, _v(x))
    em.bind(node, out)


# -- reductions ---------------------------------------------------------------------------------------------
def _dims(node: fx.Node, x: TValue, index: int = 1) -> list[int]:
    dims = _arg(node, index, "dim")
    if dims is None or dims == []:
        return list(range(x.rank))
    return sorted({d % x.rank for d in ([dims] if isinstance(dims, int) else dims)})


def _reduce(em: Emitter, node: fx.Node, op_name: str, x: TValue, dims, keepdim: bool, int8: bool, quant,
            name: str | None = None) -> TValue:
    axes = em.int32_const(f"{name or node.name}_axes", [L.axis_in(x.perm, d) for d in dims])
    shape = [1 if i in dims else s for i, s in enumerate(x.shape)] if keepdim else \
        [s for i, s in enumerate(x.shape) if i not in dims]
    out = em.tensor(name or node.name, shape, L.reduced_perm(x.perm, dims, keepdim),
                    TensorType.INT8 if int8 else x.dtype, quant if int8 else None, nonnegative=x.nonnegative)
    em.op(op_name, [x.tensor, axes], [out.tensor], Options("ReducerOptions", {"KeepDims": keepdim}),
          2 if int8 else 1)
    return out


@emits("sum")
def reduce_sum(em: Emitter, node: fx.Node) -> None:
    """SUM: int8 onto the following quantizer's grid (one requantization of the int32 sum), else float."""
    x = em.uncollapse(em.value(node.args[0]))
    plan = em.plan_output(node, fuse_act=False)
    int8 = em.quantized and x.is_int8 and plan.quant is not None
    if not int8:
        x = em.to_float(x) if x.is_int8 else x
    keep = bool(_arg(node, 2, "keepdim", False))
    _finish(em, node, _reduce(em, node, "SUM", x, _dims(node, x), keep, int8, plan.quant), plan)


@emits("amax")
def reduce_max(em: Emitter, node: fx.Node) -> None:
    """``amax`` / ``amin``: REDUCE_MAX / REDUCE_MIN, int8 on the input grid (the extremum is one of the codes)."""
    x = em.uncollapse(em.value(node.args[0]))
    op_name = "REDUCE_MAX" if _name(node) == "amax" else "REDUCE_MIN"
    em.bind(node, _reduce(em, node, op_name, x, _dims(node, x), bool(_arg(node, 2, "keepdim", False)),
                          x.is_int8, x.quant))


def _name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else node.target.__name__


def _arg_extremum(em: Emitter, node: fx.Node, x: TValue, dim: int | None, keepdim: bool, largest: bool,
                  name: str) -> TValue:
    """ARG_MAX / ARG_MIN (int64, as torch returns); ``dim=None`` is over the flattened tensor."""
    if dim is None:
        x = em.torch_order(x)
        flat = em.tensor(f"{name}_flat", (int(np.prod(x.shape)),), (0,), x.dtype, x.quant)
        em.reshape(x.tensor, flat, flat.shape, x.is_int8)
        x, dim = flat, 0
    dim %= x.rank
    shape = [s for i, s in enumerate(x.shape) if i != dim]
    out = em.tensor(name if not keepdim else f"{name}_reduced", shape, L.reduced_perm(x.perm, [dim], False),
                    TensorType.INT64)
    op_name, opt = ("ARG_MAX", "ArgMaxOptions") if largest else ("ARG_MIN", "ArgMinOptions")
    em.op(op_name, [x.tensor, em.int32_const(f"{name}_axis", [L.axis_in(x.perm, dim)])], [out.tensor],
          Options(opt, {"OutputType": _INT64}), _v(x))
    if not keepdim:
        return out
    kept = list(x.shape)
    kept[dim] = 1
    shaped = em.tensor(name, kept, x.perm, TensorType.INT64)
    em.reshape(out.tensor, shaped, L.permute_shape(kept, x.perm), False)
    return shaped


@emits("argmax")
def argmax(em: Emitter, node: fx.Node) -> None:
    x = em.uncollapse(em.value(node.args[0]))
    dim = _arg(node, 1, "dim")
    em.bind(node, _arg_extremum(em, node, x, dim, bool(_arg(node, 2, "keepdim", False)), _name(node) == "argmax",
                                node.name))


@emits("max_min")
def max_min(em: Emitter, node: fx.Node) -> None:
    """``torch.max(x, dim, keepdim)`` → (values, indices): REDUCE_MAX and ARG_MAX (MIN for ``torch.min``);
    ``torch.max(x)``: the value over every axis."""
    x = em.uncollapse(em.value(node.args[0]))
    largest = _name(node) == "max"
    op_name = "REDUCE_MAX" if largest else "REDUCE_MIN"
    dim = _arg(node, 1, "dim")
    if dim is None or isinstance(em.value(dim), TValue):
        if dim is not None:
            raise ExportError(f"{node.name!r}: elementwise max / min of two tensors is not exported")
        return em.bind(node, _reduce(em, node, op_name, x, list(range(x.rank)), False, x.is_int8, x.quant))
    keep = bool(_arg(node, 2, "keepdim", False))
    values = _reduce(em, node, op_name, x, [dim % x.rank], keep, x.is_int8, x.quant, f"{node.name}_values")
    em.bind(node, (values, _arg_extremum(em, node, x, dim, keep, largest, f"{node.name}_indices")))


@emits("cumsum", in_float=True)
def cumsum(em: Emitter, node: fx.Node) -> None:
    """CUMSUM along the TFLite axis holding ``dim`` (float, int32 or int64: TFLite has no int8 CUMSUM)."""
    x = em.uncollapse(em.value(node.args[0]))
    dim = int(_arg(node, 1, "dim")) % x.rank
    out = em.tensor(node.name, x.shape, x.perm, x.dtype)
    axis = em.const(f"{node.name}_axis", np.array(L.axis_in(x.perm, dim), np.int32), TensorType.INT32)
    em.op("CUMSUM", [x.tensor, axis], [out.tensor], Options("CumsumOptions", {"Exclusive": False, "Reverse": False}))
    _finish(em, node, out, em.plan_output(node, fuse_act=False))
