"""TFLite emitters: elementwise math and activations without an int8 XNNPACK kernel (written once, in float, and
run between DEQUANTIZE / QUANTIZE by :func:`~compress.exporters.tflite.ops_base.run_in_float`), comparisons,
logic and selection, casts, and the values folded while exporting (sizes, constants).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from compress import ops
from compress.errors import ExportError
from compress.exporters.tflite import layout as L
from compress.exporters.tflite.graph import ACT_CODE, Const, Emitter, TValue, grid_codes
from compress.exporters.tflite.ops_base import (
    _arg,
    _broadcast,
    _finish,
    _meta_shape,
    _to_float32,
    emits,
    last_axis_input,
)
from compress.exporters.tflite.schema import Options, QuantParams, TensorType, numpy_dtype
from compress.layers.base import FusedActivation
from compress.ops import Policy

_TORCH_TYPES = {torch.float32: TensorType.FLOAT32, torch.int64: TensorType.INT64, torch.int32: TensorType.INT32,
                torch.bool: TensorType.BOOL}


# -- values computed while exporting -------------------------------------------------------------------
def _contains_tensor(v) -> bool:
    if isinstance(v, TValue | Const):
        return True
    if isinstance(v, list | tuple):
        return any(_contains_tensor(x) for x in v)
    return False


def python_only(em: Emitter, node: fx.Node) -> bool:
    """Arithmetic on sizes and constants (``x.shape[1] * 2``, ``torch.arange(8)``): evaluated, not written."""
    if node.op == "call_function" and node.target is getattr:
        return True
    if node.op not in ("call_function", "call_method"):
        return False
    return not _contains_tensor(em.value(list(node.args))) and not _contains_tensor(
        em.value(list(node.kwargs.values())))


def evaluate(em: Emitter, node: fx.Node):
    """The node's Python value: sizes of exported tensors (static shapes), or the call on constants."""
    args, kwargs = em.value(tuple(node.args)), {k: em.value(v) for k, v in node.kwargs.items()}
    if node.op == "call_method" and isinstance(args[0], TValue):
        x = args[0]
        if node.target == "size":
            return torch.Size(x.shape) if len(args) == 1 else x.shape[args[1]]
        if node.target == "dim":
            return x.rank
        return int(np.prod(x.shape))
    if node.op == "call_function" and node.target is getattr and isinstance(args[0], TValue):
        if args[1] == "shape":
            return torch.Size(args[0].shape)
        if args[1] == "device":  # torch.arange(n, device=x.device): the constant is folded on the CPU
            return torch.device("cpu")
        raise ExportError(f"{node.name!r}: tensor attribute {args[1]!r} is not exported")
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


def _has(v, kind) -> bool:
    if isinstance(v, kind):
        return True
    return isinstance(v, list | tuple) and any(_has(x, kind) for x in v)


def constant_only(em: Emitter, node: fx.Node) -> bool:
    """A function or method whose tensor arguments are all constants (a mask built from a buffer): folded."""
    if node.op not in ("call_function", "call_method"):
        return False
    values = [em.value(list(node.args)), em.value(list(node.kwargs.values()))]
    return not _has(values, TValue) and _has(values, Const)


def fold(em: Emitter, node: fx.Node):
    """Run the node in torch on its constants; a tensor result is a :class:`Const` (on its input's grid when the
    op is grid-preserving), anything else a Python value."""

    def as_torch(v):
        if isinstance(v, Const):
            return torch.from_numpy(np.array(v.array))
        return type(v)(as_torch(x) for x in v) if isinstance(v, list | tuple) else v

    args = as_torch(em.value(tuple(node.args)))
    kwargs = {k: as_torch(em.value(v)) for k, v in node.kwargs.items()}
    with torch.no_grad():
        out = getattr(args[0], node.target)(*args[1:], **kwargs) if node.op == "call_method" else \
            node.target(*args, **kwargs)
    spec = ops.lookup(node, em.modules)
    first = next((v for v in em.value(list(node.args)) if isinstance(v, Const)), None)
    grid = first.quant if spec is not None and spec.policy is Policy.PRESERVING and first is not None else None

    def as_const(v):
        if isinstance(v, torch.Tensor):
            return Const(v.detach().numpy(), grid)
        return type(v)(as_const(x) for x in v) if isinstance(v, list | tuple) else v

    return as_const(out)


@emits("shape")
def size_of(em: Emitter, node: fx.Node) -> None:
    """``x.size(0)``, ``x.dim()``: shapes are static in the file, so the value is a Python number."""
    em.bind(node, evaluate(em, node))


@emits("constant")
def constant(em: Emitter, node: fx.Node) -> None:
    """``torch.zeros_like(x)``, ``torch.full(...)``: folded to a constant of the recorded shape (the tensor
    argument only gives the shape and dtype; a stand-in of zeros takes its place)."""

    def stand_in(v):
        if isinstance(v, TValue):
            return torch.zeros(v.shape, dtype=torch.float32 if v.is_int8 else _dtype_of(v))
        if isinstance(v, Const):
            return torch.from_numpy(np.asarray(v.array))
        return type(v)(stand_in(x) for x in v) if isinstance(v, list | tuple) else v

    args = stand_in(em.value(tuple(node.args)))
    kwargs = {k: stand_in(em.value(v)) for k, v in node.kwargs.items()}
    em.bind(node, Const(node.target(*args, **kwargs).numpy()))


def _dtype_of(v: TValue) -> torch.dtype:
    return {t: d for d, t in _TORCH_TYPES.items()}.get(v.dtype, torch.float32)


_CAST_METHODS = {"float": torch.float32, "long": torch.int64, "int": torch.int32, "bool": torch.bool}


@emits("cast")
def cast(em: Emitter, node: fx.Node) -> None:
    """``x.to(dtype)`` / ``x.float()`` / ``x.type_as(y)`` as CAST (an int8 value is dequantized first: the cast
    reads real values); a cast to the dtype it already has is the value itself."""
    x = em.value(node.args[0])
    if node.target in _CAST_METHODS:
        dtype = _CAST_METHODS[node.target]
    else:
        target = em.value(_arg(node, 1, "dtype"))
        dtype = _dtype_of(target) if isinstance(target, TValue) else target
    if isinstance(x, Const):
        return em.bind(node, Const(torch.from_numpy(np.asarray(x.array)).to(dtype).numpy()))
    if not isinstance(dtype, torch.dtype) or dtype not in _TORCH_TYPES:
        raise ExportError(f"{node.name!r}: cast to {dtype} is not exported; cast to float32, int64, int32 or bool")
    want = _TORCH_TYPES[dtype]
    if x.dtype == want:
        return em.bind(node, x)
    src = em.to_float(x)
    if src.dtype == want:
        return em.bind(node, src)
    out = em.tensor(node.name, src.shape, src.perm, want, col_perm=src.col_perm)
    em.op("CAST", [src.tensor], [out.tensor])
    em.bind(node, out)


# -- float math (run_in_float: inputs arrive dequantized, the quantizer after the op writes QUANTIZE) --------
def _unary_out(em: Emitter, x: TValue, name: str, op_name: str, extra=(), options: Options | None = None) -> TValue:
    out = em.like(x, name, quant=None)
    em.op(op_name, [x.tensor, *extra], [out.tensor], options)
    return out


def _scalar(em: Emitter, value, like: TValue, name: str) -> int:
    """A rank-0 constant in ``like``'s dtype (float for int8 values: they are dequantized before float ops)."""
    dtype = TensorType.FLOAT32 if like.is_int8 else like.dtype
    return em.const(name, np.asarray(value, numpy_dtype(dtype)), dtype)


def _binary_out(em: Emitter, op_name: str, a: TValue, b: int, name: str, act=FusedActivation.NONE) -> TValue:
    out = em.like(a, name, quant=None)
    options = Options(f"{op_name.title()}Options", {"FusedActivationFunction": ACT_CODE[act]})
    em.op(op_name, [a.tensor, b], [out.tensor], options)
    return out


def _finish_float(em: Emitter, node: fx.Node, out: TValue) -> None:
    _finish(em, node, out, em.plan_output(node, fuse_act=False))


def _simple_float(op_name: str):
    def emit(em: Emitter, node: fx.Node) -> None:
        _finish_float(em, node, _unary_out(em, em.value(node.args[0]), node.name, op_name))

    emit.__name__ = f"emit_{op_name.lower()}"
    return emit


for _name, _op in (("exp", "EXP"), ("log", "LOG"), ("sqrt", "SQRT"), ("rsqrt", "RSQRT"), ("abs", "ABS"),
                   ("neg", "NEG")):
    emits(_name, in_float=True)(_simple_float(_op))


@emits("reciprocal", in_float=True)
def reciprocal(em: Emitter, node: fx.Node) -> None:
    x = em.value(node.args[0])
    one = _scalar(em, 1.0, x, f"{node.name}_one")
    out = em.like(x, node.name, quant=None)
    em.op("DIV", [one, x.tensor], [out.tensor], Options("DivOptions", {"FusedActivationFunction": 0}))
    _finish_float(em, node, out)


@emits("pow", in_float=True)
def power(em: Emitter, node: fx.Node) -> None:
    """``x ** p`` for a constant ``p``: MUL for p = 2 (exact, and XNNPACK runs it), SQRT for 0.5, else POW."""
    x, p = em.value(node.args[0]), em.value(node.args[1])
    if isinstance(p, TValue | Const) or not isinstance(x, TValue):
        raise ExportError(f"{node.name!r}: only a tensor raised to a constant power is exported")
    if float(p) == 2.0:
        out = em.like(x, node.name, quant=None)
        em.op("MUL", [x.tensor, x.tensor], [out.tensor], Options("MulOptions", {"FusedActivationFunction": 0}))
    elif float(p) == 0.5:
        out = _unary_out(em, x, node.name, "SQRT")
    else:
        out = _unary_out(em, x, node.name, "POW", [_scalar(em, float(p), x, f"{node.name}_p")])
    _finish_float(em, node, out)


@emits("silu", in_float=True)
def silu(em: Emitter, node: fx.Node) -> None:
    """x · σ(x) as LOGISTIC, MUL (an int8 LOGISTIC would round onto its fixed 1/256 grid before the MUL)."""
    x = em.value(node.args[0])
    sig = _unary_out(em, x, f"{node.name}_sigmoid", "LOGISTIC")
    out = em.like(x, node.name, quant=None)
    em.op("MUL", [x.tensor, sig.tensor], [out.tensor], Options("MulOptions", {"FusedActivationFunction": 0}))
    _finish_float(em, node, out)


@emits("hardsigmoid", in_float=True)
def hardsigmoid(em: Emitter, node: fx.Node) -> None:
    """relu6(x + 3) / 6: ADD with a fused RELU6, MUL (TFLite has no hard-sigmoid builtin)."""
    x = em.value(node.args[0])
    shifted = _binary_out(em, "ADD", x, _scalar(em, 3.0, x, f"{node.name}_three"), f"{node.name}_shift",
                          FusedActivation.RELU6)
    _finish_float(em, node, _binary_out(em, "MUL", shifted, _scalar(em, 1 / 6, x, f"{node.name}_sixth"),
                                        node.name))


@emits("elu", in_float=True)
def elu(em: Emitter, node: fx.Node) -> None:
    """ELU for alpha = 1; otherwise max(x, 0) + alpha · (exp(min(x, 0)) − 1) (TFLite's ELU has no alpha)."""
    x = em.value(node.args[0])
    mod = em.module(node)
    alpha = float(mod.alpha if mod is not None else _arg(node, 1, "alpha", 1.0))
    if alpha == 1.0:
        return _finish_float(em, node, _unary_out(em, x, node.name, "ELU"))
    neg = _unary_out(em, x, f"{node.name}_neg", "MINIMUM", [_scalar(em, 0.0, x, f"{node.name}_zero")])
    e = _unary_out(em, neg, f"{node.name}_exp", "EXP")
    em1 = _binary_out(em, "SUB", e, _scalar(em, 1.0, x, f"{node.name}_one"), f"{node.name}_expm1")
    scaled = _binary_out(em, "MUL", em1, _scalar(em, alpha, x, f"{node.name}_alpha"), f"{node.name}_scaled")
    pos = _unary_out(em, x, f"{node.name}_pos", "RELU")
    out = em.like(x, node.name, quant=None)
    em.op("ADD", [pos.tensor, scaled.tensor], [out.tensor], Options("AddOptions", {"FusedActivationFunction": 0}))
    _finish_float(em, node, out)


@emits("mish", in_float=True)
def mish(em: Emitter, node: fx.Node) -> None:
    """x · tanh(softplus(x)) as EXP, ADD 1, LOG, TANH, MUL."""
    x = em.value(node.args[0])
    e = _unary_out(em, x, f"{node.name}_exp", "EXP")
    e1 = _binary_out(em, "ADD", e, _scalar(em, 1.0, x, f"{node.name}_one"), f"{node.name}_exp1")
    t = _unary_out(em, _unary_out(em, e1, f"{node.name}_softplus", "LOG"), f"{node.name}_tanh", "TANH")
    out = em.like(x, node.name, quant=None)
    em.op("MUL", [x.tensor, t.tensor], [out.tensor], Options("MulOptions", {"FusedActivationFunction": 0}))
    _finish_float(em, node, out)


@emits("prelu", in_float=True)
def prelu(em: Emitter, node: fx.Node) -> None:
    """PRELU with the slope broadcast along the channel axis (torch axis 1, wherever the layout put it)."""
    x = em.value(node.args[0])
    w = em.module(node).weight.detach().cpu().numpy().astype(np.float32).reshape(-1)
    shape = [1] * x.rank
    if w.size > 1:
        shape[L.axis_in(x.perm, 1)] = w.size
    alpha = em.const(f"{node.name}_alpha", w.reshape(shape[1:] if x.rank > 1 else shape), TensorType.FLOAT32)
    _finish_float(em, node, _unary_out(em, x, node.name, "PRELU", [alpha]))


@emits("log_softmax", in_float=True)
def log_softmax(em: Emitter, node: fx.Node) -> None:
    x = last_axis_input(em, node, "log_softmax")
    # x − max − log Σ exp(x − max): the ops XNNPACK runs (its delegate has no LOG_SOFTMAX; that one op split the
    # shape-checking classifier of the zoo into two partitions), stable for large logits as torch's kernel is.
    axis = em.int32_const(f"{node.name}_axis", [x.rank - 1])
    red = x.shape[:-1] + (1,)

    def reduce(op_name: str, v: TValue, suffix: str) -> TValue:
        out = em.tensor(f"{node.name}_{suffix}", red, x.perm, TensorType.FLOAT32)
        em.op(op_name, [v.tensor, axis], [out.tensor], Options("ReducerOptions", {"KeepDims": True}))
        return out

    def sub(a: TValue, b: TValue, name: str) -> TValue:
        out = em.like(a, name, quant=None)
        em.op("SUB", [a.tensor, b.tensor], [out.tensor], Options("SubOptions", {"FusedActivationFunction": 0}))
        return out

    shifted = sub(x, reduce("REDUCE_MAX", x, "max"), f"{node.name}_shifted")
    total = reduce("SUM", _unary_out(em, shifted, f"{node.name}_exp", "EXP"), "sum")
    log_total = em.tensor(f"{node.name}_log_sum", red, x.perm, TensorType.FLOAT32)
    em.op("LOG", [total.tensor], [log_total.tensor])
    _finish_float(em, node, sub(shifted, log_total, node.name))


@emits("leaky_relu")
def leaky_relu(em: Emitter, node: fx.Node) -> None:
    """LEAKY_RELU: int8 onto the following quantizer's grid (XNNPACK has a qs8 kernel), else float."""
    mod = em.module(node)
    slope = float(mod.negative_slope if mod is not None else _arg(node, 1, "negative_slope", 0.01))
    x = em.value(node.args[0])
    plan = em.plan_output(node, fuse_act=False)
    options = Options("LeakyReluOptions", {"Alpha": slope})
    if em.quantized and x.is_int8 and plan.quant is not None:
        out = em.like(x, node.name, quant=plan.quant)
        em.op("LEAKY_RELU", [x.tensor], [out.tensor], options, 2)
    else:
        out = _unary_out(em, em.to_float(x), node.name, "LEAKY_RELU", options=options)
    _finish(em, node, out, plan)


# -- comparisons, logic, selection ------------------------------------------------------------------------
_COMPARE = {"eq": "EQUAL", "ne": "NOT_EQUAL", "lt": "LESS", "le": "LESS_EQUAL", "gt": "GREATER",
            "ge": "GREATER_EQUAL"}


def _short_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else node.target.__name__.strip("_")


def _operands(em: Emitter, node: fx.Node, values) -> tuple[TValue, list]:
    """The tensor operands in one layout: the highest-rank one's, or torch order when ranks differ (a lower-rank
    operand broadcasts against torch's trailing axes)."""
    tensors = [em.uncollapse(v) for v in values if isinstance(v, TValue)]
    lead = max(tensors, key=lambda v: (v.rank, not L.is_identity(v.perm)))
    if any(v.rank != lead.rank for v in tensors):
        lead = em.torch_order(lead)
    out = [(em.to_perm(em.uncollapse(v), lead.perm) if v.rank == lead.rank else em.torch_order(v))
           if isinstance(v, TValue) else v for v in values]
    return lead, out


def _const_operand(em: Emitter, c, like: TValue, name: str) -> TValue:
    """A constant operand in ``like``'s dtype and layout (int8 values compare on dequantized floats)."""
    dtype = TensorType.FLOAT32 if like.is_int8 else like.dtype
    arr = np.asarray(c.array if isinstance(c, Const) else c, numpy_dtype(dtype))
    if arr.ndim == like.rank and arr.ndim > 0:
        arr = np.ascontiguousarray(arr.transpose(like.perm))
        return TValue(em.const(name, arr, dtype), tuple(arr.shape), dtype, like.perm)
    return TValue(em.const(name, arr, dtype), tuple(arr.shape), dtype, L.identity(arr.ndim))


@emits("compare")
def compare(em: Emitter, node: fx.Node) -> None:
    """EQUAL / NOT_EQUAL / LESS / ... on real values (int8 operands dequantized), BOOL output."""
    op_name = _COMPARE[_short_name(node)]
    lead, (a, b) = _operands(em, node, [em.value(node.args[0]), em.value(node.args[1])])
    a, b = (em.to_float(v) if isinstance(v, TValue) else _const_operand(em, v, lead, f"{node.name}_c")
            for v in (a, b))
    if a.dtype != b.dtype:  # an integer tensor against a float one: compare as floats
        a, b = (_to_float32(em, v, node.name) for v in (a, b))
    out = em.tensor(node.name, _broadcast(a.shape, b.shape), lead.perm, TensorType.BOOL)
    em.op(op_name, [a.tensor, b.tensor], [out.tensor])
    em.bind(node, out)


def _as_bool(em: Emitter, v, lead: TValue, name: str) -> TValue:
    if isinstance(v, TValue) and v.dtype == TensorType.BOOL:
        return v
    if not isinstance(v, TValue):
        return _const_operand(em, np.asarray(v, bool), TValue(0, lead.shape, TensorType.BOOL, lead.perm), name)
    src = em.to_float(v)
    out = em.tensor(f"{name}_nonzero", src.shape, src.perm, TensorType.BOOL)
    em.op("NOT_EQUAL", [src.tensor, _scalar(em, 0, src, f"{name}_zero")], [out.tensor])
    return out


@emits("logical")
def logical(em: Emitter, node: fx.Node) -> None:
    """LOGICAL_AND / LOGICAL_OR / LOGICAL_NOT (non-boolean operands compared with 0 first, as torch does)."""
    kind = _short_name(node).replace("logical_", "")
    values = [em.value(a) for a in node.args[:1 if kind == "not" else 2]]
    lead, values = _operands(em, node, values)
    values = [_as_bool(em, v, lead, f"{node.name}_{i}") for i, v in enumerate(values)]
    shape = _broadcast(*(v.shape for v in values)) if len(values) > 1 else values[0].shape
    out = em.tensor(node.name, shape, lead.perm, TensorType.BOOL)
    em.op(f"LOGICAL_{kind.upper()}", [v.tensor for v in values], [out.tensor])
    em.bind(node, out)


def _select(em: Emitter, node: fx.Node, cond, a, b) -> None:
    """SELECT_V2(cond, a, b): int8 with both branches on the output quantizer's grid (each requantized once,
    as the simulation's quantizer rounds the selected value once), else float."""
    lead, (cond, a, b) = _operands(em, node, [cond, a, b])
    cond = _as_bool(em, cond, lead, f"{node.name}_cond")
    plan = em.plan_output(node, fuse_act=False)
    branches = [v for v in (a, b) if isinstance(v, TValue)]
    int8 = em.quantized and plan.quant is not None and all(v.is_int8 or v.dtype == TensorType.FLOAT32
                                                          for v in branches)
    like = next(v for v in (a, b, lead) if isinstance(v, TValue))
    # With both branches constant, ``like`` is the condition: the constants take the node's dtype, not BOOL
    # (masked_fill(zeros, mask, -inf) had written -inf as True = 1).
    out_type = _TORCH_TYPES.get(getattr(node.meta.get("tensor_meta"), "dtype", None), TensorType.FLOAT32)
    const_like = like if like.dtype != TensorType.BOOL else TValue(like.tensor, like.shape, out_type, like.perm)
    values = []
    for i, v in enumerate((a, b)):
        if int8:
            values.append(em.quantize(v, plan.quant, f"{node.name}_in{i}") if isinstance(v, TValue)
                          else _grid_const(em, v, plan.quant, like, f"{node.name}_c{i}"))
        else:
            values.append(em.to_float(v) if isinstance(v, TValue)
                          else _const_operand(em, v, const_like, f"{node.name}_c{i}"))
    dtype = TensorType.INT8 if int8 else values[0].dtype
    out = em.tensor(node.name, _meta_shape(node), lead.perm, dtype, plan.quant if int8 else None)
    em.op("SELECT_V2", [cond.tensor, values[0].tensor, values[1].tensor], [out.tensor], Options("SelectV2Options"))
    _finish(em, node, out, plan)


def _grid_const(em: Emitter, c, q: QuantParams, like: TValue, name: str) -> TValue:
    codes = grid_codes(c.array if isinstance(c, Const) else c, q)
    if codes.ndim == like.rank and codes.ndim > 0:
        codes = np.ascontiguousarray(codes.transpose(like.perm))
        return TValue(em.const(name, codes, TensorType.INT8, q), codes.shape, TensorType.INT8, like.perm, q)
    return TValue(em.const(name, codes, TensorType.INT8, q), codes.shape, TensorType.INT8, L.identity(codes.ndim), q)


@emits("where")
def where(em: Emitter, node: fx.Node) -> None:
    _select(em, node, *(em.value(a) for a in node.args[:3]))


@emits("masked_fill")
def masked_fill(em: Emitter, node: fx.Node) -> None:
    """``x.masked_fill(mask, v)`` = SELECT_V2(mask, v, x)."""
    x, mask, value = (em.value(a) for a in node.args[:3])
    _select(em, node, mask, value, x)

