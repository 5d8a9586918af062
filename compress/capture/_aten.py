"""The aten → torch vocabulary of :mod:`compress.io.pt2`: one handler per aten op, and the shared pieces.

A handler gets the raiser, the aten node and its arguments by schema name (nodes already rebuilt, constants
as ``_Const``) and returns the new value (an fx node of the rebuilt graph, or a constant).
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils import _pytree as pytree

from compress.errors import ModelLoadError

if TYPE_CHECKING:
    from compress.io.pt2 import _Raiser


_EVAL_HINT = "call model.eval() before torch.export.export and save the program again"


@dataclass(eq=False)
class _Const:
    """A value known when loading (a parameter, buffer, lifted constant, or an op folded over those)."""

    value: Any
    source: str = ""  # the original parameter's name, for naming the module that will hold it
    is_param: bool = False


@dataclass(eq=False)
class _Multi:
    """An op with several outputs (``_native_batch_norm_legit_no_training``): the ones we can produce."""

    outputs: dict[int, Any]
    op: str
    fix: str  # what to do when the graph reads another output


_Handler = Callable[["_Raiser", fx.Node, dict[str, Any]], Any]
_HANDLERS: dict[str, _Handler] = {}
# Ops executed only for their checks (shape asserts): nothing to rebuild.
_DROPPED = {"_assert_tensor_metadata", "_assert_scalar", "_assert_async", "sym_constrain_range",
            "sym_constrain_range_for_size"}
# Python-level arithmetic on symbolic sizes (``x.size(0) * 4``) that torch.export keeps as is.
_SYMBOLIC_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.floordiv, operator.truediv,
                       operator.mod, operator.neg, operator.pow}


def _handles(*names: str) -> Callable[[_Handler], _Handler]:
    def register(fn: _Handler) -> _Handler:
        for name in names:
            _HANDLERS[name] = fn
        return fn

    return register


def supported_aten_ops() -> list[str]:
    """Names of the aten ops :func:`raise_exported_program` maps (in-place ``op_`` forms included).

    Example:
        >>> "aten.conv2d" in supported_aten_ops()
        True
    """
    return sorted(f"aten.{name}" for name in _HANDLERS)


def _is_value(x: Any) -> bool:
    return isinstance(x, (_Const, _Multi))


def _plain_structure(tree: Any) -> bool:
    """Whether fx's generated code can return ``tree`` (not e.g. a namedtuple or a dataclass)."""
    if type(tree) in (tuple, list, dict):
        return all(_plain_structure(t) for t in (tree.values() if isinstance(tree, dict) else tree))
    return tree is None or isinstance(tree, (fx.Node, int, float, bool))


def _all_constant(args: Any, kwargs: Any) -> bool:
    leaves = pytree.tree_leaves((args, kwargs), is_leaf=_is_value)
    return not any(isinstance(x, (fx.Node, _Multi)) for x in leaves)


def _bind(target: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Every schema argument by name, defaults filled in."""
    bound = {}
    for i, arg in enumerate(target._schema.arguments):
        if i < len(args):
            bound[arg.name] = args[i]
        elif arg.name in kwargs:
            bound[arg.name] = kwargs[arg.name]
        else:
            bound[arg.name] = arg.default_value if arg.has_default_value() else None
    return bound


def _rank(node: fx.Node, index: int = 0) -> int | None:
    arg = node.args[index] if len(node.args) > index else None
    val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else None


def _tuple(value: Any, n: int) -> tuple:
    value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    return value * n if len(value) == 1 else value


# --- the aten → torch vocabulary ---------------------------------------------------------------------------
# A handler gets the raiser, the aten node and its arguments by schema name (nodes already rebuilt, constants
# as _Const) and returns the new value.


def _param(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone())


def _weighted(r: _Raiser, node: fx.Node, mod: nn.Module, x: Any, w: _Const, b: _Const | None, key: tuple,
              weight: torch.Tensor | None = None) -> fx.Node:
    mod.weight = _param(w.value if weight is None else weight)
    if b is not None:
        mod.bias = _param(b.value.reshape(mod.bias.shape))
    return r.module(mod, node, x, weight=w, key=(*key, id(b)))


@_handles("conv1d", "conv2d", "convolution", "_convolution")
def _conv(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w, b = r.const(node, a["weight"], "weight"), r.const(node, a["bias"], "bias", optional=True)
    n = w.value.dim() - 2
    if n not in (1, 2) or a.get("transposed") or any(int(p) != 0 for p in a.get("output_padding") or ()):
        r._unsupported(node, f"{node.target.overloadpacket.__name__} (transposed or 3-d)")
    groups, padding = int(a["groups"]), a["padding"]
    hyper = dict(stride=_tuple(a["stride"], n), padding=padding if isinstance(padding, str) else _tuple(padding, n),
                 dilation=_tuple(a["dilation"], n), groups=groups, bias=b is not None)
    cls = nn.Conv1d if n == 1 else nn.Conv2d
    mod = cls(w.value.shape[1] * groups, w.value.shape[0], tuple(w.value.shape[2:]), **hyper)
    return _weighted(r, node, mod, a["input"], w, b, tuple(hyper.items()))


def _linear(r: _Raiser, node: fx.Node, x: Any, w: _Const, b: _Const | None, weight: torch.Tensor) -> fx.Node:
    mod = nn.Linear(weight.shape[1], weight.shape[0], bias=b is not None)
    return _weighted(r, node, mod, x, w, b, (tuple(weight.shape),), weight)


@_handles("linear")
def _linear_op(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w = r.const(node, a["weight"], "weight")
    return _linear(r, node, a["input"], w, r.const(node, a["bias"], "bias", optional=True), w.value)


@_handles("addmm")
def _addmm(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w, b = r.const(node, a["mat2"], "weight"), r.const(node, a["self"], "bias")  # mat2: linear's weight, transposed
    if b.value.numel() != w.value.shape[1] or a["alpha"] != 1 or a["beta"] != 1:
        r._unsupported(node, "addmm (with alpha/beta or a bias that is not one value per output)")
    return _linear(r, node, a["mat1"], w, b, w.value.t())


@_handles("mm", "matmul", "bmm")
def _matmul(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    x, other = a["self"], a.get("mat2", a.get("other"))
    if isinstance(other, _Const) and other.value.dim() == 2 and not isinstance(x, _Const):
        return _linear(r, node, x, other, None, other.value.t())  # x @ W with a constant W: a linear layer
    return r.fn(torch.matmul, node, x, other)


@_handles("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm")
def _batch_norm(r: _Raiser, node: fx.Node, a: dict) -> Any:
    if a.get("training"):
        raise ModelLoadError(f"{r.source}: BatchNorm node {node.name!r} uses batch statistics: the model was "
                             f"exported in training mode; {_EVAL_HINT}")
    mean, var = r.const(node, a["running_mean"], "running mean"), r.const(node, a["running_var"], "running var")
    w, b = r.const(node, a["weight"], "weight", optional=True), r.const(node, a["bias"], "bias", optional=True)
    rank, eps = _rank(node), float(a["eps"])
    if rank not in (2, 3, 4):
        r._unsupported(node, f"{node.target.overloadpacket.__name__} (on a {rank}-d input)")
    cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    mod = cls(mean.value.numel(), eps=eps, momentum=float(a["momentum"]), affine=w is not None or b is not None)
    mod.running_mean.copy_(mean.value)
    mod.running_var.copy_(var.value)
    if mod.affine:
        mod.weight = _param(w.value if w else torch.ones_like(mean.value))
        mod.bias = _param(b.value if b else torch.zeros_like(mean.value))
    out = r.module(mod, node, a["input"], weight=w or mean, key=(id(mean), id(b), eps))
    if node.target.overloadpacket.__name__ == "batch_norm":
        return out
    return _Multi({0: out}, str(node.target), _EVAL_HINT)  # outputs 1, 2: the batch statistics of training


@_handles("layer_norm", "native_layer_norm")
def _layer_norm(r: _Raiser, node: fx.Node, a: dict) -> Any:
    w, b = r.const(node, a["weight"], "weight", optional=True), r.const(node, a["bias"], "bias", optional=True)
    mod = nn.LayerNorm(list(a["normalized_shape"]), eps=float(a["eps"]), elementwise_affine=w is not None,
                       bias=b is not None)
    if w is not None:
        mod.weight = _param(w.value)
    if b is not None:
        mod.bias = _param(b.value)
    out = r.module(mod, node, a["input"], weight=w, key=(id(b), float(a["eps"])))
    if node.target.overloadpacket.__name__ == "layer_norm":
        return out
    return _Multi({0: out}, str(node.target), "use only the normalized output")


@_handles("embedding")
def _embedding(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w, pad = r.const(node, a["weight"], "weight"), int(a["padding_idx"])
    mod = nn.Embedding(*w.value.shape, padding_idx=None if pad < 0 else pad)
    return _weighted(r, node, mod, a["indices"], w, None, (pad,))


def _pool(cls: type[nn.Module], multi: bool = False) -> _Handler:
    def handler(r: _Raiser, node: fx.Node, a: dict) -> Any:
        n = 2 if cls.__name__.endswith("2d") else 1
        kernel = _tuple(a["kernel_size"], n)
        extra = {k: a[k] for k in ("dilation", "count_include_pad", "divisor_override") if a.get(k) is not None}
        mod = cls(kernel, _tuple(a["stride"], n) if a["stride"] else kernel, _tuple(a["padding"], n),
                  ceil_mode=bool(a["ceil_mode"]), **extra)
        out = r.module(mod, node, a["self"])
        fix = "use only the pooled values (return_indices=False)"
        return _Multi({0: out}, str(node.target), fix) if multi else out

    return handler


for _name, _cls in (("max_pool2d", nn.MaxPool2d), ("max_pool1d", nn.MaxPool1d), ("avg_pool2d", nn.AvgPool2d),
                    ("avg_pool1d", nn.AvgPool1d)):
    _handles(_name)(_pool(_cls))
_handles("max_pool2d_with_indices")(_pool(nn.MaxPool2d, multi=True))


@_handles("adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool1d")
def _adaptive_pool(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if node.target.overloadpacket.__name__.endswith("1d"):
        return r.module(nn.AdaptiveAvgPool1d(_tuple(a["output_size"], 1)[0]), node, a["self"])
    size = _tuple(a["output_size"], 2)
    return r.module(nn.AdaptiveAvgPool2d(size[0] if size[0] == size[1] else size), node, a["self"])


@_handles("mean")
def _mean(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    rank, dims = _rank(node), a.get("dim")
    if a.get("dtype") is not None:
        r._unsupported(node, "mean (with a dtype)")
    if not dims:
        return r.fn(torch.mean, node, a["self"])
    dims = sorted(int(d) % rank for d in dims) if rank else list(dims)
    if rank == 4 and dims == [2, 3] and a["keepdim"]:
        return r.module(nn.AdaptiveAvgPool2d(1), node, a["self"])  # global average pooling
    return r.fn(torch.mean, node, a["self"], dim=dims, keepdim=bool(a["keepdim"]))


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
        r._unsupported(node, f"div (rounding_mode={a['rounding_mode']!r})")
    return r.fn(operator.truediv, node, a["self"], a["other"])


def _unary(fn: Callable, **named: str) -> _Handler:
    """``fn(x, kwarg=<schema argument>)`` for each ``kwarg=schema_name`` in ``named``."""
    return lambda r, node, a: r.fn(fn, node, a["self"], **{k: a[v] for k, v in named.items()})


for _name, _fn in (("relu", torch.relu), ("relu6", F.relu6), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh),
                   ("hardswish", F.hardswish), ("silu", F.silu), ("neg", operator.neg)):
    _handles(_name)(_unary(_fn))
_handles("softmax", "_softmax")(_unary(torch.softmax, dim="dim"))
_handles("log_softmax", "_log_softmax")(_unary(torch.log_softmax, dim="dim"))
_handles("leaky_relu")(_unary(F.leaky_relu, negative_slope="negative_slope"))


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
        r._unsupported(node, f"{node.target.overloadpacket.__name__} (min={low}, max={high})")
    return r.fn(F.hardtanh, node, a["self"], float(low), float(high))


@_handles("view", "_unsafe_view", "reshape", "view_copy")
def _reshape(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    src, out = (node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None), node.meta.get("val")
    if isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor) and 1 <= out.dim() < src.dim():
        k = out.dim() - 1
        if [str(d) for d in src.shape[:k]] == [str(d) for d in out.shape[:k]]:
            # x.view(x.size(0), -1) is a flatten: written so, it keeps working for batch sizes other than export's.
            return r.fn(torch.flatten, node, a["self"], k)
    return r.fn(torch.reshape, node, a["self"], list(a["size"] if "size" in a else a["shape"]))


@_handles("transpose", "t")
def _transpose(r: _Raiser, node: fx.Node, a: dict) -> Any:
    if "dim0" not in a and (_rank(node) or 2) < 2:
        return a["self"]  # .t() of a vector
    return r.fn(torch.transpose, node, a["self"], int(a.get("dim0", 0)), int(a.get("dim1", 1)))


@_handles("squeeze")
def _squeeze(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    dim = a.get("dim")  # squeeze.default: none; squeeze.dim: an int; squeeze.dims: a list
    if dim is None:
        return r.fn(torch.squeeze, node, a["self"])
    dims = tuple(dim) if isinstance(dim, (list, tuple)) else (dim,)
    return r.fn(torch.squeeze, node, a["self"], dims[0] if len(dims) == 1 else dims)


@_handles("select", "slice")
def _index(r: _Raiser, node: fx.Node, a: dict) -> Any:
    rank = _rank(node)
    dim = int(a["dim"]) % rank if rank else int(a["dim"])
    if "index" in a:
        key: Any = a["index"]
    elif a["start"] in (None, 0) and a["step"] == 1 and a["end"] in (None, sys.maxsize):
        return a["self"]  # x[:] over a whole (dynamic) dimension
    else:
        key = slice(a["start"], a["end"], None if a["step"] == 1 else a["step"])
    return r.fn(operator.getitem, node, a["self"], (*[slice(None)] * dim, key))


_handles("flatten")(lambda r, node, a: r.fn(torch.flatten, node, a["self"], int(a["start_dim"]), int(a["end_dim"])))
_handles("permute")(lambda r, node, a: r.fn(torch.permute, node, a["self"], list(a["dims"])))
_handles("unsqueeze")(lambda r, node, a: r.fn(torch.unsqueeze, node, a["self"], int(a["dim"])))
_handles("cat", "concat", "concatenate")(lambda r, node, a: r.fn(torch.cat, node, list(a["tensors"]),
                                                                  dim=int(a["dim"])))
_handles("sym_size")(lambda r, node, a: r.method("size", node, a["self"], int(a["dim"])))
_handles("_to_copy", "to")(lambda r, node, a: a["self"] if a.get("dtype") is None else r.method(
    "to", node, a["self"], a["dtype"]))
# Inference: dropout is the identity and copies change nothing.
_handles("contiguous", "clone", "alias", "detach", "lift_fresh_copy", "dropout", "feature_dropout",
         "alpha_dropout")(lambda r, node, a: a["self"] if "self" in a else a["input"])
