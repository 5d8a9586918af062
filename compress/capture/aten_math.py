"""aten elementwise ops, activations, comparisons and reductions → torch functions.

Each aten op maps to one canonical torch form (the op registry in :mod:`compress.ops` declares these forms,
and the exporters' emitters read them): ``aten.ne.Scalar(x, 0)`` → ``torch.ne(x, 0)``,
``aten.sum.dim_IntList(x, [-1])`` → ``torch.sum(x, dim=[2], keepdim=False)``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import fx, nn

from compress.capture._aten import _Const, _dims, _Handler, _handles, _Multi, _rank, _scalar, _val

if TYPE_CHECKING:
    from compress.capture.raiser import _Raiser


# --- arithmetic ---------------------------------------------------------------------------------------------
def _binary(fn: Callable, swap: bool = False) -> _Handler:
    def handler(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
        x, other = a["self"], a["other"]
        if a.get("alpha", 1) != 1:
            other = _Const(other.value * a["alpha"]) if isinstance(other, _Const) else r.fn(
                operator.mul, node, other, a["alpha"])
        return r.fn(fn, node, *((other, x) if swap else (x, other)))

    return handler


for _name, _fn in (("add", operator.add), ("sub", operator.sub), ("mul", operator.mul)):
    _handles(_name)(_binary(_fn))
_handles("rsub")(_binary(operator.sub, swap=True))


@_handles("div")
def _div(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if a.get("rounding_mode") is not None:
        r.generic(node, f"div with rounding_mode={a['rounding_mode']!r}")
    return r.fn(operator.truediv, node, a["self"], a["other"])


@_handles("baddbmm")
def _baddbmm(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    # beta·self + alpha·(batch1 @ batch2), as the matmul and add the registry knows.
    prod = r.fn(torch.matmul, node, a["batch1"], a["batch2"])
    if a["alpha"] != 1:
        prod = r.fn(operator.mul, node, prod, a["alpha"])
    if a["beta"] == 0:
        return prod
    bias = a["self"] if a["beta"] == 1 else (
        _Const(a["self"].value * a["beta"]) if isinstance(a["self"], _Const) else r.fn(operator.mul, node,
                                                                                        a["self"], a["beta"]))
    return r.fn(operator.add, node, prod, bias)


# --- activations and unary math -----------------------------------------------------------------------------
def _unary(fn: Callable, **named: str) -> _Handler:
    """``fn(x, kwarg=<schema argument>)`` for each ``kwarg=schema_name`` in ``named``."""
    return lambda r, node, a: r.fn(fn, node, a["self"], **{k: a[v] for k, v in named.items()})


for _name, _fn in (("relu", torch.relu), ("relu6", F.relu6), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh),
                   ("hardswish", F.hardswish), ("hardsigmoid", F.hardsigmoid), ("silu", F.silu),
                   ("mish", F.mish), ("neg", operator.neg), ("erf", torch.erf), ("exp", torch.exp),
                   ("log", torch.log), ("sqrt", torch.sqrt), ("rsqrt", torch.rsqrt), ("abs", torch.abs),
                   ("reciprocal", torch.reciprocal)):
    _handles(_name)(_unary(_fn))
_handles("softmax", "_softmax")(_unary(torch.softmax, dim="dim"))
_handles("log_softmax", "_log_softmax")(_unary(torch.log_softmax, dim="dim"))
_handles("leaky_relu")(_unary(F.leaky_relu, negative_slope="negative_slope"))


@_handles("pow")
def _pow(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if "self" not in a or not isinstance(a["self"], fx.Node):  # pow.Scalar: a number to a tensor power
        r.generic(node, "a number raised to a tensor power")
    return r.fn(torch.pow, node, a["self"], _scalar(a["exponent"]))


@_handles("elu")
def _elu(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if a["scale"] != 1 or a["input_scale"] != 1:
        r.generic(node, "elu with scale / input_scale (selu, celu)")
    return r.fn(F.elu, node, a["self"], alpha=float(a["alpha"]))


@_handles("gelu")
def _gelu(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if a["approximate"] in (None, "none"):
        return r.fn(F.gelu, node, a["self"])
    return r.fn(F.gelu, node, a["self"], approximate=a["approximate"])


@_handles("hardtanh", "clamp", "clamp_min")
def _clamp(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    low, high = a.get("min_val", a.get("min")), a.get("max_val", a.get("max"))
    if low == 0 and high is None:
        return r.fn(torch.relu, node, a["self"])
    if low == 0 and high == 6:
        return r.fn(F.relu6, node, a["self"])  # ReLU6: MobileNet's nn.ReLU6 exports as hardtanh(0, 6)
    if not all(isinstance(v, (int, float)) for v in (low, high)):
        r.generic(node, f"clamp with min={low}, max={high}")
    return r.fn(F.hardtanh, node, a["self"], float(low), float(high))


# --- comparisons, logic, selection --------------------------------------------------------------------------
def _compare(fn: Callable) -> _Handler:
    return lambda r, node, a: r.fn(fn, node, a["self"], _scalar(a["other"]))


for _fn in (torch.eq, torch.ne, torch.lt, torch.le, torch.gt, torch.ge):
    _handles(_fn.__name__)(_compare(_fn))
_handles("logical_and")(lambda r, node, a: r.fn(torch.logical_and, node, a["self"], a["other"]))
_handles("logical_or")(lambda r, node, a: r.fn(torch.logical_or, node, a["self"], a["other"]))
_handles("logical_not")(lambda r, node, a: r.fn(torch.logical_not, node, a["self"]))


def _is_bool(node: fx.Node, index: int = 0) -> bool:
    val = _val(node, index)
    return isinstance(val, torch.Tensor) and val.dtype == torch.bool


@_handles("bitwise_not")
def _bitwise_not(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if not _is_bool(node):
        r.generic(node, "bitwise_not of an integer tensor")
    return r.fn(torch.logical_not, node, a["self"])  # ~mask on a bool mask


@_handles("bitwise_and", "bitwise_or", "__and__", "__or__")  # mask & mask, mask | mask
def _bitwise_logic(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if not (_is_bool(node, 0) and (_is_bool(node, 1) or isinstance(a["other"], bool))):
        r.generic(node, "bitwise logic on integer tensors")
    fn = torch.logical_and if "and" in node.target.overloadpacket.__name__ else torch.logical_or
    return r.fn(fn, node, a["self"], a["other"])


@_handles("where")
def _where(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if "self" not in a:  # where(condition) -> indices: a data-dependent shape
        r.generic(node, "where(condition) returning indices")
    return r.fn(torch.where, node, a["condition"], _scalar(a["self"]), _scalar(a["other"]))


@_handles("masked_fill")
def _masked_fill(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    value = _scalar(a["value"])
    if not isinstance(value, (int, float, bool)):
        r.generic(node, "masked_fill with a value computed at run time")
    return r.fn(torch.masked_fill, node, a["self"], a["mask"], value)


# --- reductions ---------------------------------------------------------------------------------------------
@_handles("mean")
def _mean(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    rank, dims = _rank(node), a.get("dim")
    if a.get("dtype") is not None:
        r.generic(node, "mean with a dtype")
    if not dims:
        return r.fn(torch.mean, node, a["self"])
    dims = _dims(node, dims)
    if rank == 4 and dims == [2, 3] and a["keepdim"]:
        return r.module(nn.AdaptiveAvgPool2d(1), node, a["self"])  # global average pooling
    return r.fn(torch.mean, node, a["self"], dim=dims, keepdim=bool(a["keepdim"]))


@_handles("sum")
def _sum(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if a.get("dtype") is not None:
        r.generic(node, "sum with a dtype")
    return r.fn(torch.sum, node, a["self"], dim=_dims(node, a.get("dim")), keepdim=bool(a.get("keepdim")))


def _extremum(fn: Callable) -> _Handler:
    return lambda r, node, a: r.fn(fn, node, a["self"], dim=_dims(node, a.get("dim")),
                                   keepdim=bool(a.get("keepdim")))


_handles("amax")(_extremum(torch.amax))
_handles("amin")(_extremum(torch.amin))


def _max_min(reduce: Callable, extremum: Callable) -> _Handler:
    def handler(r: _Raiser, node: fx.Node, a: dict):
        if "dim" not in a:
            if "other" in a:  # max.other: elementwise
                r.generic(node, "elementwise max / min of two tensors")
            return r.fn(extremum, node, a["self"], dim=_dims(node, None), keepdim=False)
        dim = _dims(node, a["dim"])[0]
        out = r.fn(reduce, node, a["self"], dim, bool(a["keepdim"]))
        return _Multi({0: r.fn(operator.getitem, node, out, 0), 1: r.fn(operator.getitem, node, out, 1)},
                      str(node.target), "")

    return handler


_handles("max")(_max_min(torch.max, torch.amax))
_handles("min")(_max_min(torch.min, torch.amin))


def _arg(fn: Callable) -> _Handler:
    def handler(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
        if a.get("dim") is None:
            return r.fn(fn, node, a["self"])  # the flat index
        return r.fn(fn, node, a["self"], _dims(node, a["dim"])[0], bool(a["keepdim"]))

    return handler


_handles("argmax")(_arg(torch.argmax))
_handles("argmin")(_arg(torch.argmin))


@_handles("cumsum")
def _cumsum(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if a.get("dtype") is not None:
        r.generic(node, "cumsum with a dtype")
    return r.fn(torch.cumsum, node, a["self"], _dims(node, a["dim"])[0])
