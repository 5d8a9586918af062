"""ONNX emitters, tensor part: padding, resizing, selection, comparisons, indexing, splitting, broadcasting,
casts, sizes and tensor constructors — the ops real networks put between their layers.

Most of these move values without computing new ones (Pad, Gather, Split, Expand, Tile): on a quantized
input their output lies on the input's grid, which the exporter states with Q/DQ after them (the registry's
``Policy.PRESERVING``), so onnxruntime keeps the neighbourhood in int8. Comparisons and logical ops produce
booleans from whatever dtype arrives. Sizes that depend on the batch (``x.size(0)`` in a dynamic-batch graph)
are computed in the graph (``Shape → Gather``) and carried as :class:`PyValue` with a ``tensor``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from compress import ops
from compress.errors import ExportError
from compress.exporters.onnx.graph import (
    ExportContext,
    PyValue,
    TensorRecord,
    TensorValue,
    arg,
    emitter,
    onnx_elem_type,
    static,
    torch_to_numpy_dtype,
)

_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}


def _axis(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def same_grid(ctx: ExportContext, name: str, src: TensorValue, hint: str) -> TensorValue:
    """``name`` holds values of ``src``'s grid (a piece of a split, a max): Q/DQ with ``src``'s qparams."""
    if src.qparams is None:
        return TensorValue(name)
    return ctx.b.quantize_dequantize(name, src.qparams, hint)


def cast_to(ctx: ExportContext, value: TensorValue, have: torch.dtype, want: torch.dtype, hint: str) -> TensorValue:
    if have == want:
        return value
    return TensorValue(ctx.b.node("Cast", [value.name], hint, to=onnx_elem_type(want)))


def shape_vector(ctx: ExportContext, items, node: fx.Node) -> str:
    """A 1-D int64 tensor of sizes: constants where known, ``Shape → Gather`` where they follow the batch."""
    values = [ctx.value(i) for i in items]
    if all(isinstance(v, PyValue) and (not v.batch_dependent) for v in values):
        return ctx.b.int64s([int(v.value) for v in values])
    parts = []
    for v in values:
        if isinstance(v, PyValue) and v.batch_dependent:
            if v.tensor is None:
                raise ExportError(f"fx node {node.name!r} uses a size computed from the batch size ({v.value!r}) "
                                  "in a way the exporter cannot follow; use x.size(0) directly, or export with "
                                  "OnnxExportConfig(dynamic_batch=False)")
            parts.append(ctx.b.node("Reshape", [v.tensor, ctx.b.int64s([1])], node.name))
        elif isinstance(v, PyValue):
            parts.append(ctx.b.int64s([int(v.value)]))
        else:
            raise ExportError(f"fx node {node.name!r} takes a size that is a tensor; pass ints or x.size(i)")
    return ctx.b.node("Concat", parts, node.name, axis=0)


# -- sizes and casts ----------------------------------------------------------------------------------------
@emitter("shape")
def _size(ctx: ExportContext, node: fx.Node, mod) -> PyValue:
    """``x.size(d)`` / ``x.dim()`` / ``x.numel()``: the recorded Python value; a batch-dependent ``size(d)``
    also gets its run-time tensor, so constructors and expand can use it."""
    rec = ctx.records[node]
    probe = ctx.probe.get(node) if ctx.probe is not None else rec
    value = PyValue(rec, batch_dependent=probe != rec)
    if value.batch_dependent and node.target == "size" and isinstance(rec, int):
        dim = _axis(int(static(ctx, arg(node, 1, "dim"), node)), ctx.rank(node.args[0]))
        x = ctx.tensor(node.args[0], node)
        shape = ctx.b.node("Shape", [x.name], node.name)
        return PyValue(rec, True, ctx.b.node("Gather", [shape, ctx.b.int64s([dim])], node.name, axis=0))
    return value


@emitter("cast")
def _cast(ctx: ExportContext, node: fx.Node, mod) -> TensorValue:
    # The recorded dtypes say what the cast does, whichever spelling (.to(dtype), .float(), .type_as(y)).
    x = ctx.tensor(node.args[0], node)
    return cast_to(ctx, x, ctx.dtype(node.args[0]), ctx.dtype(node), node.name)


@emitter("constant")
def _constant(ctx: ExportContext, node: fx.Node, mod) -> TensorValue:
    """torch.zeros / ones / full / arange whose sizes follow the batch (constant ones are folded before)."""
    dtype = ctx.dtype(node)
    np_dtype = torch_to_numpy_dtype(dtype)
    fn = node.target
    if fn is torch.arange:
        bounds = [ctx.value(a) for a in node.args] or [ctx.value(node.kwargs["end"])]
        start, end, step = (bounds + [PyValue(1)])[:3] if len(bounds) > 1 else (PyValue(0), bounds[0], PyValue(1))
        names = []
        for v in (start, end, step):
            if isinstance(v, PyValue) and v.tensor is not None:
                t = ctx.b.node("Reshape", [v.tensor, ctx.b.int64s([])], node.name)
                names.append(cast_to(ctx, TensorValue(t), torch.int64, dtype, node.name).name)
            else:
                names.append(ctx.tensor(v.value if isinstance(v, PyValue) else v, node, dtype).name)
        return TensorValue(ctx.b.node("Range", names, node.name))
    if fn in (torch.zeros_like, torch.ones_like, torch.full_like):
        shape = ctx.b.node("Shape", [ctx.tensor(node.args[0], node).name], node.name)
        fill = {torch.zeros_like: 0, torch.ones_like: 1}.get(fn)
        fill = fill if fill is not None else static(ctx, arg(node, 1, "fill_value"), node)
    else:
        sizes = node.args[0] if isinstance(node.args[0], tuple | list) else node.args[:1]
        shape = shape_vector(ctx, sizes, node)
        fill = {torch.zeros: 0, torch.ones: 1}.get(fn)
        fill = fill if fill is not None else static(ctx, arg(node, 1, "fill_value"), node)
    value = ctx.b.numpy_helper.from_array(np.asarray([fill], dtype=np_dtype), "value")
    return TensorValue(ctx.b.node("ConstantOfShape", [shape], node.name, value=value))


# -- padding and resizing -----------------------------------------------------------------------------------
def _pad_params(ctx: ExportContext, node: fx.Node, mod: nn.Module | None):
    if mod is not None:
        pad = list(mod.padding)
        kind = type(mod).__name__
        mode = "reflect" if kind.startswith("Reflection") else "replicate" if kind.startswith("Replication") \
            else "constant"
        return pad, mode, float(getattr(mod, "value", 0.0))
    pad = list(static(ctx, arg(node, 1, "pad"), node))
    mode = static(ctx, arg(node, 2, "mode", "constant"), node)
    value = static(ctx, arg(node, 3, "value", None), node)
    return pad, mode, float(value or 0.0)


def pad_into_conv(ctx: ExportContext, node) -> list[int] | None:
    """The ONNX Conv ``pads`` (begins, then ends, per spatial axis) that ``node`` adds when it is a zero constant
    pad of the spatial axes whose only reader is a Conv1d / Conv2d (the TF-"same" port: ``F.pad``, then
    ``F.conv2d``); None otherwise. That conv adds them to its own pads and reads the unpadded input, so no
    Pad node is written (onnxruntime pads inside QLinearConv / Conv; int8 pads with the zero point = real 0)."""
    spec = ops.lookup(node, ctx.modules) if isinstance(node, fx.Node) else None
    user = ctx.sole_user(node) if spec is not None and spec.name == "pad" else None
    conv = ctx.module(user) if user is not None and user.op == "call_module" else None
    if (not isinstance(conv, nn.Conv1d | nn.Conv2d) or user.args[0] is not node or isinstance(conv.padding, str)
            or conv.padding_mode != "zeros"):
        return None
    if getattr(getattr(conv, "qconfig", None), "mode", "static") == "dynamic":  # ConvInteger's emitter pads alone
        return None
    pad, mode, value = _pad_params(ctx, node, ctx.module(node) if node.op == "call_module" else None)
    spatial = ctx.rank(node.args[0]) - 2
    if mode != "constant" or value != 0.0 or len(pad) % 2 or len(pad) // 2 > spatial:
        return None
    begins, ends = [0] * spatial, [0] * spatial
    for i in range(len(pad) // 2):  # torch lists (begin, end) pairs from the last dimension backwards
        begins[spatial - 1 - i], ends[spatial - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    return begins + ends


@emitter("pad")
def _pad(ctx: ExportContext, node: fx.Node, mod) -> TensorValue:
    if pad_into_conv(ctx, node) is not None:
        return ctx.tensor(node.args[0], node)
    pad, mode, value = _pad_params(ctx, node, mod)
    if mode not in _PAD_MODES:
        raise ExportError(f"pad {node.name!r} uses mode={mode!r}; the exporter writes constant, reflect and "
                          "replicate padding")
    rank = ctx.rank(node.args[0])
    if len(pad) % 2 or len(pad) // 2 > rank:
        raise ExportError(f"pad {node.name!r} has {len(pad)} pad sizes for a rank-{rank} tensor; give one "
                          "(begin, end) pair per padded dimension")
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):  # torch lists (begin, end) pairs from the last dimension backwards
        begins[rank - 1 - i], ends[rank - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    x = ctx.tensor(node.args[0], node)
    pads = ctx.b.int64s(begins + ends)
    codes = _int8_pad(ctx, node, x, pads, mode, value)
    if codes is not None:
        return codes
    inputs = [x.name, pads]
    if mode == "constant":
        inputs.append(ctx.b.scalar(value, torch_to_numpy_dtype(ctx.dtype(node.args[0]))))
        if x.qparams is not None:
            ctx.off_grid.add(node)  # the pad value is no code of the input's grid: the next quantizer rounds it
    return TensorValue(ctx.b.node("Pad", inputs, node.name, mode=_PAD_MODES[mode]))


def _int8_pad(ctx: ExportContext, node: fx.Node, x: TensorValue, pads: str, mode: str, value: float):
    """Pad the int8 codes behind ``x``'s DequantizeLinear (onnxruntime leaves DQ → Pad → Q in float, so the
    Pad is written on the codes: Q → Pad → DQ), when the pad value is a code of ``x``'s grid."""
    qp = x.qparams
    dq = ctx.b.producer(x.name) if qp is not None else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    inputs = [dq.input[0], pads]
    if mode == "constant":
        code = value / qp.scale + qp.zero_point
        if abs(code - round(code)) > 1e-6 or not qp.qmin <= round(code) <= qp.qmax:
            return None
        inputs.append(ctx.b.scalar(round(code), np.uint8 if qp.unsigned else np.int8))
    padded = ctx.b.node("Pad", inputs, node.name, mode=_PAD_MODES[mode])
    return TensorValue(ctx.b.node("DequantizeLinear", [padded, *dq.input[1:]], node.name), qp)


def _resize_params(ctx: ExportContext, node: fx.Node, mod):
    if mod is not None:
        return mod.size, mod.scale_factor, mod.mode, mod.align_corners
    return (static(ctx, arg(node, 1, "size", None), node), static(ctx, arg(node, 2, "scale_factor", None), node),
            static(ctx, arg(node, 3, "mode", "nearest"), node), static(ctx, arg(node, 4, "align_corners", None), node))


@emitter("interpolate")
def _interpolate(ctx: ExportContext, node: fx.Node, mod) -> TensorValue:
    """Resize with torch's coordinate mapping: nearest = asymmetric + floor; (bi)linear = pytorch_half_pixel,
    or align_corners."""
    size, scale, mode, align = _resize_params(ctx, node, mod)
    if node.kwargs.get("antialias") or node.kwargs.get("recompute_scale_factor"):
        raise ExportError(f"interpolate {node.name!r} uses antialias / recompute_scale_factor; export without them")
    x = ctx.tensor(node.args[0], node)
    spatial = ctx.rank(node.args[0]) - 2
    if mode == "nearest":
        attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    elif mode in ("linear", "bilinear"):
        attrs = dict(mode="linear", coordinate_transformation_mode="align_corners" if align else "pytorch_half_pixel")
    else:
        raise ExportError(f"interpolate {node.name!r} uses mode={mode!r}; the exporter writes nearest and bilinear")
    b = ctx.b
    if scale is not None:
        scales = [float(s) for s in (scale if isinstance(scale, tuple | list) else [scale] * spatial)]
        return TensorValue(b.node("Resize", [x.name, "", b.const(np.asarray([1.0, 1.0] + scales, np.float32),
                                                                 f"{node.name}/scales")], node.name, **attrs))
    out = list(ctx.shape(node)[2:])
    # N and C copied from the input at run time (the batch is dynamic), the spatial sizes fixed.
    lead = b.node("Slice", [b.node("Shape", [x.name], node.name), b.int64s([0]), b.int64s([2])], node.name)
    sizes = b.node("Concat", [lead, b.int64s(out)], node.name, axis=0)
    return TensorValue(b.node("Resize", [x.name, "", "", sizes], node.name, **attrs))


# -- selection, comparisons, logic --------------------------------------------------------------------------
def _operands(ctx: ExportContext, node: fx.Node, items, want: torch.dtype | None = None) -> list[str]:
    """ONNX names of tensor / scalar operands, cast to one dtype (``want``, else torch's promotion)."""
    dtypes = [ctx.dtype(i) for i in items if isinstance(i, fx.Node) and isinstance(ctx.value(i), TensorValue)]
    if want is None:
        want = dtypes[0] if dtypes else torch.float32
        for d in dtypes[1:]:
            want = torch.promote_types(want, d)
        if not want.is_floating_point and any(isinstance(i, float) for i in items):
            want = torch.float32
    names = []
    for i in items:
        v = ctx.value(i)
        if isinstance(v, TensorValue):
            names.append(cast_to(ctx, v, ctx.dtype(i), want, node.name).name)
        else:
            names.append(ctx.tensor(i, node, want).name)
    return names


_COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual", "ne": "Equal"}


@emitter("compare")
def _compare(ctx: ExportContext, node: fx.Node, mod) -> TensorValue:
    kind = node.target if isinstance(node.target, str) else node.target.__name__
    kind = kind.strip("_")
    a, b = _operands(ctx, node, [node.args[0], arg(node, 1, "other")])
    y = ctx.b.node(_COMPARE[kind], [a, b], node.name)
    return TensorValue(ctx.b.node("Not", [y], node.name) if kind == "ne" else y)


@emitter("logical")
def _logical(ctx: ExportContext, node: fx.Node, mod) -> TensorValue:
    kind = node.target if isinstance(node.target, str) else node.target.__name__
    items = [node.args[0]] if kind.endswith("not") else [node.args[0], arg(node, 1, "other")]
    names = _operands(ctx, node, items, torch.bool)
    op_type = {"logical_and": "And", "logical_or": "Or", "logical_not": "Not"}[kind]
    return TensorValue(ctx.b.node(op_type, names, node.name))


@emitter("where")
def _where(ctx: ExportContext, node: fx.Node, mod) -> TensorValue:
    cond = _operands(ctx, node, [node.args[0]], torch.bool)[0]
    a, b = _operands(ctx, node, [node.args[1], node.args[2]], ctx.dtype(node))
    return TensorValue(ctx.b.node("Where", [cond, a, b], node.name))


@emitter("masked_fill")
def _masked_fill(ctx: ExportContext, node: fx.Node, mod) -> TensorValue:
    mask = _operands(ctx, node, [arg(node, 1, "mask")], torch.bool)[0]
    x, value = _operands(ctx, node, [node.args[0], arg(node, 2, "value")], ctx.dtype(node))
    return TensorValue(ctx.b.node("Where", [mask, value, x], node.name))


# -- indexing, splitting, broadcasting ----------------------------------------------------------------------
@emitter("gather")
def _gather(ctx: ExportContext, node: fx.Node, mod) -> TensorValue:
    """torch.gather → GatherElements; index_select → Gather (indices along one axis)."""
    name = node.target if isinstance(node.target, str) else node.target.__name__
    rank = ctx.rank(node.args[0])
    dim = _axis(int(static(ctx, arg(node, 1, "dim"), node)), rank)
    x = ctx.tensor(node.args[0], node)
    index = _operands(ctx, node, [arg(node, 2, "index")], torch.int64)[0]
    op_type = "GatherElements" if name == "gather" else "Gather"
    return TensorValue(ctx.b.node(op_type, [x.name, index], node.name, axis=dim))


@emitter("split")
def _split(ctx: ExportContext, node: fx.Node, mod):
    """split / chunk / unbind → one Split by the recorded piece sizes (unbind squeezes each piece)."""
    name = node.target if isinstance(node.target, str) else node.target.__name__
    rank = ctx.rank(node.args[0])
    pieces = ctx.records[node]
    if not isinstance(pieces, tuple) or not all(isinstance(p, TensorRecord) for p in pieces):
        raise ExportError(f"split {node.name!r} did not produce a tuple of tensors while tracing shapes")
    dim_arg = arg(node, 1, "dim", 0) if name == "unbind" else arg(node, 2, "dim", 0)
    dim = _axis(int(static(ctx, dim_arg, node)), rank)
    if dim in ctx.dyn_dims(node.args[0]):
        raise ExportError(f"split {node.name!r} splits the batch dimension; split another dimension, or export "
                          "with OnnxExportConfig(dynamic_batch=False)")
    x = ctx.tensor(node.args[0], node)
    b = ctx.b
    sizes = [1] * len(pieces) if name == "unbind" else [p.shape[dim] for p in pieces]
    outs = b.node("Split", [x.name, b.int64s(sizes)], node.name, n_outputs=len(sizes), axis=dim)
    outs = outs if isinstance(outs, list) else [outs]
    if name == "unbind":
        outs = [b.node("Squeeze", [o, b.int64s([dim])], node.name) for o in outs]
    return tuple(same_grid(ctx, o, x, node.name) for o in outs)


@emitter("expand")
def _expand(ctx: ExportContext, node: fx.Node, mod) -> TensorValue:
    """expand / expand_as → Expand (ONNX broadcasts like numpy, so -1 becomes 1); repeat → Tile."""
    x = ctx.tensor(node.args[0], node)
    b = ctx.b
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], tuple | list):
        sizes = tuple(sizes[0])
    if node.target == "expand_as":
        shape = b.node("Shape", [ctx.tensor(node.args[1], node).name], node.name)
        return TensorValue(b.node("Expand", [x.name, shape], node.name))
    if node.target == "expand":
        sizes = [1 if isinstance(ctx.value(s), PyValue) and ctx.value(s).value == -1 else s for s in sizes]
        return TensorValue(b.node("Expand", [x.name, shape_vector(ctx, sizes, node)], node.name))
    extra = len(sizes) - ctx.rank(node.args[0])
    name = x.name
    if extra > 0:  # torch.repeat with more repeats than dims prepends dims of size 1
        name = b.node("Unsqueeze", [name, b.int64s(list(range(extra)))], node.name)
    return TensorValue(b.node("Tile", [name, shape_vector(ctx, sizes, node)], node.name))
