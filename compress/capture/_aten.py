"""What every aten handler of :mod:`compress.capture` shares: the handler table, constants, argument binding.

A handler gets the raiser, the aten node and its arguments by schema name (nodes already rebuilt, constants
as ``_Const``) and returns the new value (an fx node of the rebuilt graph, or a constant). A handler that
meets a form it cannot rebuild calls ``r.generic(node, why)``: the aten op is then kept as is in the raised
graph (see :meth:`compress.capture.raiser._Raiser.generic`).

The handlers live in ``aten_layers`` (weight layers), ``aten_math`` (elementwise, activations, comparisons,
reductions), ``aten_shape`` (views, indexing, padding, resizing, constants) and ``aten_sequence``
(recurrent layers, attention); importing :mod:`compress.capture.raiser` registers them all.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

if TYPE_CHECKING:
    from compress.capture.raiser import _Raiser


_EVAL_HINT = "call model.eval() before torch.export.export and save the program again"


@dataclass(eq=False)
class _Const:
    """A value known when loading (a parameter, buffer, lifted constant, or an op folded over those)."""

    value: Any
    source: str = ""  # the original parameter's name, for naming the module that will hold it
    is_param: bool = False


@dataclass(eq=False)
class _Multi:
    """An op with several outputs (``_native_batch_norm_legit_no_training``, ``lstm``): the ones we produce."""

    outputs: dict[int, Any]
    op: str
    fix: str  # what to do when the graph reads another output


class _KeepGeneric(Exception):
    """Raised by a handler for a form it has no torch-level equivalent for: keep the aten op itself."""


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
    """Names of the aten ops the raiser maps to torch-level forms (in-place ``op_`` forms included).

    Any other aten op stays in the raised graph as itself (a "generic" node), which ONNX can still export in
    float and the coverage check reports.

    Example:
        >>> "aten.conv2d" in supported_aten_ops()
        True
    """
    import compress.capture.raiser  # noqa: F401  (importing it registers every handler module)

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


def _val(node: fx.Node, index: int | None = 0) -> Any:
    """The example value (a FakeTensor) of the aten node's ``index``-th argument, or of its output (None)."""
    if index is None:
        return node.meta.get("val")
    arg = node.args[index] if len(node.args) > index else None
    return arg.meta.get("val") if isinstance(arg, fx.Node) else None


def _rank(node: fx.Node, index: int = 0) -> int | None:
    val = _val(node, index)
    return val.dim() if isinstance(val, torch.Tensor) else None


def _dims(node: fx.Node, dims: Any, index: int = 0) -> list[int]:
    """``dims`` (an int, a list, or empty / None for "all") as a sorted list of non-negative dimensions."""
    rank = _rank(node, index)
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        if rank is None:
            raise _KeepGeneric("a reduction over all dimensions of a tensor of unknown rank")
        return list(range(rank))
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    return sorted(int(d) % rank for d in dims) if rank else [int(d) for d in dims]


def _tuple(value: Any, n: int) -> tuple:
    value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    return value * n if len(value) == 1 else value


def _param(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone())


def _scalar(value: Any) -> Any:
    """A constant 0-d tensor as a Python number (``masked_fill(x, m, torch.tensor(-1e4))``); else unchanged."""
    if isinstance(value, _Const) and isinstance(value.value, torch.Tensor) and value.value.dim() == 0:
        return value.value.item()
    return value


def _weighted(r: _Raiser, node: fx.Node, mod: nn.Module, x: Any, w: _Const, b: _Const | None, key: tuple,
              weight: torch.Tensor | None = None) -> fx.Node:
    mod.weight = _param(w.value if weight is None else weight)
    if b is not None:
        mod.bias = _param(b.value.reshape(mod.bias.shape))
    return r.module(mod, node, x, weight=w, key=(*key, id(b)))
