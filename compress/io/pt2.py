"""Raise a ``torch.export`` program (a graph of aten ops) to the module-level fx graph the passes read.

``torch.export`` records ``aten.conv2d(x, weight, ...)`` with the weights lifted to graph inputs; our passes
and exporters reason about ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` modules and torch-level
functions (``operator.add``, ``torch.flatten``...), see docs/architecture.md "The converted model". This module
rebuilds that vocabulary from the aten graph:

* weight ops become modules holding the weights (named after the original parameters, e.g. ``layer1.0.conv1``);
* lifted parameters, buffers and constants become module attributes: the only placeholders left are the
  user's inputs;
* elementwise / shape / activation ops become the torch functions the exporters know;
* ops whose inputs are all constants are evaluated once (``weight.t()`` feeding ``addmm``, lifted tensors);
* in-place ops (``relu_``) become their out-of-place forms, later readers of the mutated tensor read the result.

Anything else raises :class:`~compress.errors.ModelLoadError` naming the aten op and the supported ones.
"""

from __future__ import annotations

import operator
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.utils import _pytree as pytree

from compress.errors import ModelLoadError

__all__ = ["raise_exported_program", "supported_aten_ops"]

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


def raise_exported_program(ep: torch.export.ExportedProgram, *, source: str = "") -> fx.GraphModule:
    """Rebuild a ``torch.export`` program as a module-level ``torch.fx.GraphModule`` of float torch layers.

    Args:
        ep: the program (``torch.export.export(model.eval(), inputs)`` or ``torch.export.load(path)``),
            exported in eval mode.
        source: a name for messages (the file name).

    Returns:
        A GraphModule in eval mode whose placeholders are the user inputs (same names, same order), with
        ``nn.Conv1d/2d``, ``nn.Linear``, ``nn.BatchNorm1d/2d``, ``nn.LayerNorm``, ``nn.Embedding`` and pooling
        modules, and torch functions between them; it computes what ``ep.module()`` computes.

    Raises:
        ModelLoadError: an aten op with no module-level equivalent here, nested (non-tensor) inputs, or a
            program exported in training mode.

    Example:
        >>> from compress.models import DemoCNN
        >>> ep = torch.export.export(DemoCNN(width=4).eval(), (torch.zeros(1, 1, 8, 8),))
        >>> gm = raise_exported_program(ep)
        >>> type(gm.get_submodule("stem.0")).__name__
        'Conv2d'
    """
    return _Raiser(ep, source or "the torch.export program").run()


def _sanitize(path: str) -> str:
    parts = [re.sub(r"\W", "_", p) or "_" for p in path.split(".")]
    return ".".join(parts)


class _Raiser:
    def __init__(self, ep: torch.export.ExportedProgram, source: str):
        self.ep, self.source = ep, source
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.attrs: dict[int, fx.Node] = {}  # id(_Const) -> its get_attr node, so each constant is stored once
        self.shared: dict[tuple, str] = {}  # (kind, id(weight), hyper-parameters) -> module path (tied weights)

    # --- building the new graph -------------------------------------------------------------------------
    def run(self) -> fx.GraphModule:
        self._check_signature()
        placeholders = [n for n in self.ep.graph.nodes if n.op == "placeholder"]
        specs = self.ep.graph_signature.input_specs
        if len(specs) != len(placeholders):
            raise ModelLoadError(f"{self.source}: its graph signature does not match its graph; {_EVAL_HINT}")
        for node, spec in zip(placeholders, specs, strict=True):
            self.env[node] = self._input(node, spec)
        for node in self.ep.graph.nodes:
            if node.op == "get_attr":
                self.env[node] = _Const(self._get_attr(node.target), node.target)
            elif node.op in ("call_function", "call_method", "call_module"):
                self.env[node] = self._call(node)
            elif node.op == "output":
                self._output(node)
        gm = fx.GraphModule(self.root, self.graph, class_name=self._class_name())
        gm.graph.eliminate_dead_code()  # e.g. size() reads only the dropped shape asserts used
        gm.graph.lint()
        gm.recompile()
        return gm.eval()

    def _check_signature(self) -> None:
        kinds = {spec.kind.name for spec in self.ep.graph_signature.output_specs}
        if "BUFFER_MUTATION" in kinds:
            raise ModelLoadError(f"{self.source} updates buffers (BatchNorm statistics) when run: it was exported in "
                                 f"training mode; {_EVAL_HINT}")
        in_spec = self.ep.call_spec.in_spec
        children = list(in_spec.children()) if in_spec is not None else []
        if any(not leaf.is_leaf() for part in children for leaf in part.children()):
            raise ModelLoadError(f"{self.source} takes nested inputs (lists/dicts of tensors); export a wrapper whose "
                                 "forward() takes each tensor as its own argument")

    def _input(self, node: fx.Node, spec) -> Any:
        kind = spec.kind.name
        if kind == "USER_INPUT":
            new = self.graph.placeholder(node.name)
            new.meta = {k: v for k, v in node.meta.items() if k in ("val", "tensor_meta")}
            return new
        if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            store = self.ep.state_dict if spec.target in self.ep.state_dict else self.ep.constants
            value = store[spec.target]
            return _Const(value.detach(), spec.target, isinstance(value, nn.Parameter) or kind == "PARAMETER")
        raise ModelLoadError(f"{self.source} has a {kind.lower()} input ({spec.target}), which only runs inside "
                             "torch; export a model whose inputs are tensors")

    def _get_attr(self, target: str) -> Any:
        value: Any = self.ep.graph_module
        for part in target.split("."):
            value = getattr(value, part)
        return value

    def _output(self, node: fx.Node) -> None:
        values = node.args[0] if isinstance(node.args[0], (tuple, list)) else (node.args[0],)
        specs = self.ep.graph_signature.output_specs
        outs = [self.value(self.env[v]) if isinstance(v, fx.Node) else v
                for v, spec in zip(values, specs, strict=True) if spec.kind.name == "USER_OUTPUT"]
        result: Any = tuple(outs)
        out_spec = self.ep.call_spec.out_spec
        if out_spec is not None:
            try:
                tree = pytree.tree_unflatten(outs, out_spec)
            except Exception:  # an output class pytree knows but fx code cannot build: plain tuple
                tree = result
            if _plain_structure(tree):
                result = tree
        self.graph.output(result)

    def _class_name(self) -> str:
        for node in self.ep.graph.nodes:
            stack = node.meta.get("nn_module_stack") or {}
            for path, type_name in stack.values():
                if path == "":
                    name = str(type_name).rsplit(".", 1)[-1]
                    return name if name.isidentifier() else "ExportedGraph"
        return "ExportedGraph"

    def value(self, v: Any) -> Any:
        """``v`` as something the new graph can consume: a node, a get_attr node for a tensor, or a literal."""
        if isinstance(v, _Multi):
            raise ModelLoadError(f"{self.source}: the outputs of aten.{v.op} are used as one value; re-export with "
                                 "torch.export.export (no custom decompositions)")
        if isinstance(v, _Const):
            if not isinstance(v.value, torch.Tensor):
                return v.value
            if id(v) not in self.attrs:
                path = self._free_path(v.source or "constant")
                tensor = v.value.detach().clone()
                parent, _, name = self._parent(path)
                if v.is_param:
                    parent.register_parameter(name, nn.Parameter(tensor, requires_grad=tensor.is_floating_point()))
                else:
                    parent.register_buffer(name, tensor)
                self.attrs[id(v)] = self.graph.get_attr(path)
            return self.attrs[id(v)]
        return v

    def fn(self, target: Callable, node: fx.Node, *args: Any, **kwargs: Any) -> fx.Node:
        args, kwargs = pytree.tree_map(self.value, (args, kwargs), is_leaf=_is_value)
        return self.graph.create_node("call_function", target, tuple(args), dict(kwargs), name=node.name)

    def method(self, name: str, node: fx.Node, *args: Any) -> fx.Node:
        args = pytree.tree_map(self.value, args, is_leaf=_is_value)
        return self.graph.create_node("call_method", name, tuple(args), {}, name=node.name)

    def module(self, mod: nn.Module, node: fx.Node, x: Any, *, weight: _Const | None = None,
               key: tuple | None = None) -> fx.Node:
        """Call ``mod`` (stored once per tied weight) on ``x``; named after its weight or the original module."""
        full_key = (type(mod).__name__, id(weight), key) if weight is not None and key is not None else None
        path = self.shared.get(full_key) if full_key else None
        if path is None:
            path = self._free_path(self._module_name(node, mod, weight))
            parent, _, name = self._parent(path)
            parent.add_module(name, mod.eval())
            if full_key:
                self.shared[full_key] = path
        return self.graph.create_node("call_module", path, (self.value(x),), {}, name=node.name)

    def _module_name(self, node: fx.Node, mod: nn.Module, weight: _Const | None) -> str:
        if weight is not None and weight.source.endswith(".weight"):
            return weight.source[: -len(".weight")]
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, type_name = list(stack.values())[-1]
            if path and str(type_name).endswith("." + type(mod).__name__):
                return path
        return node.name

    def _free_path(self, wanted: str) -> str:
        wanted = _sanitize(wanted)
        path, i = wanted, 1
        while not self._is_free(path):
            path, i = f"{wanted}_{i}", i + 1
        return path

    def _is_free(self, path: str) -> bool:
        obj: Any = self.root
        *parents, last = path.split(".")
        for part in parents:
            obj = getattr(obj, part, None)
            if obj is None:
                return True
            if not isinstance(obj, nn.Module):
                return False
        return not hasattr(obj, last)

    def _parent(self, path: str) -> tuple[nn.Module, str, str]:
        *parents, last = path.split(".")
        obj = self.root
        for part in parents:
            if not hasattr(obj, part):
                obj.add_module(part, nn.Module())
            obj = getattr(obj, part)
        return obj, ".".join(parents), last

    # --- one aten node -----------------------------------------------------------------------------------
    def _call(self, node: fx.Node) -> Any:
        target = node.target
        resolve = lambda n: self.env[n]  # noqa: E731
        args = fx.node.map_arg(node.args, resolve)
        kwargs = fx.node.map_arg(node.kwargs, resolve)
        if target is operator.getitem:
            return self._getitem(node, *args)
        if node.op == "call_function" and target in _SYMBOLIC_FUNCTIONS:
            if all(isinstance(a, _Const) or not isinstance(a, fx.Node) for a in args):
                return _Const(target(*[a.value if isinstance(a, _Const) else a for a in args]))
            return self.fn(target, node, *args)
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            self._unsupported(node, str(getattr(target, "__name__", target)))
        name = target.overloadpacket.__name__
        if name in _DROPPED:
            return None
        schema = target._schema
        in_place = bool(schema.arguments and schema.arguments[0].alias_info is not None
                        and schema.arguments[0].alias_info.is_write)
        if _all_constant(args, kwargs) and torch.Tag.nondeterministic_seeded not in target.tags:
            return self._fold(target, args, kwargs, in_place, node)
        base = name[:-1] if in_place and name.endswith("_") else name
        handler = _HANDLERS.get(base)
        if handler is None:
            self._unsupported(node, f"{name}.{target._overloadname}")
        result = handler(self, node, _bind(target, args, kwargs))
        if in_place and isinstance(node.args[0], fx.Node):
            self.env[node.args[0]] = result  # later readers of the mutated tensor see the new value
        return result

    def _fold(self, target, args, kwargs, in_place: bool, node: fx.Node) -> _Const:
        sources = [c for c in pytree.tree_leaves((args, kwargs), is_leaf=lambda x: isinstance(x, _Const))
                   if isinstance(c, _Const)]
        unwrap = lambda x: x.value if isinstance(x, _Const) else x  # noqa: E731
        args, kwargs = pytree.tree_map(unwrap, (args, kwargs), is_leaf=lambda x: isinstance(x, _Const))
        if in_place and args and isinstance(args[0], torch.Tensor):
            args = (args[0].clone(), *args[1:])  # never write into the program's own tensors
        with torch.no_grad():
            out = target(*args, **kwargs)
        first = sources[0] if sources else None
        result = _Const(out, first.source if first else "", bool(first and first.is_param and out is not None))
        if in_place and isinstance(node.args[0], fx.Node):
            self.env[node.args[0]] = result
        return result

    def _getitem(self, node: fx.Node, source: Any, index: Any) -> Any:
        if isinstance(source, _Multi):
            if index not in source.outputs:
                raise ModelLoadError(f"{self.source}: node {node.name!r} reads output {index} of aten.{source.op} "
                                     f"(training statistics); {_EVAL_HINT}")
            return source.outputs[index]
        if isinstance(source, _Const):
            return _Const(source.value[index], source.source)
        if isinstance(source, (tuple, list)):
            return source[index]
        return self.fn(operator.getitem, node, source, index)

    def _unsupported(self, node: fx.Node, op: str) -> None:
        stack = node.meta.get("nn_module_stack") or {}
        where = ""
        if stack:
            path, type_name = list(stack.values())[-1]
            where = f" in {path or 'the top module'} ({str(type_name).rsplit('.', 1)[-1]})"
        raise ModelLoadError(
            f"{self.source}: aten.{op} at node {node.name!r}{where} has no module-level equivalent; supported aten "
            f"ops: {', '.join(n.removeprefix('aten.') for n in supported_aten_ops())}. Save model.state_dict() and "
            "load it with --arch MODULE:CALLABLE instead (unsupported layers then stay float), or export without it"
        )

    def const(self, node: fx.Node, value: Any, what: str) -> _Const:
        if not isinstance(value, _Const) or not isinstance(value.value, torch.Tensor):
            raise ModelLoadError(f"{self.source}: the {what} of aten node {node.name!r} is computed at run time; "
                                 "only parameters can be raised to layers: export with the weights as parameters")
        return value


def _is_value(x: Any) -> bool:
    return isinstance(x, (_Const, _Multi))


def _plain_structure(tree: Any) -> bool:
    if isinstance(tree, fx.Node) or tree is None or isinstance(tree, (int, float, bool)):
        return True
    if type(tree) in (tuple, list):
        return all(_plain_structure(t) for t in tree)
    if type(tree) is dict:
        return all(_plain_structure(t) for t in tree.values())
    return False


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
# Each handler gets the raiser, the aten node and its arguments by schema name (nodes already rebuilt,
# constants as _Const) and returns the new value.


def _param(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone().float() if not tensor.is_floating_point() else tensor.detach().clone())


def _conv_module(r: _Raiser, node: fx.Node, a: dict, w: _Const, padding: Any) -> fx.Node:
    weight = w.value
    if weight.dim() not in (3, 4) or a.get("transposed"):
        r._unsupported(node, "convolution (transposed or 3-d)")
    n = weight.dim() - 2
    bias = a["bias"] if a["bias"] is None else r.const(node, a["bias"], "bias")
    groups = int(a["groups"])
    cls = nn.Conv1d if n == 1 else nn.Conv2d
    padding = padding if isinstance(padding, str) else _tuple(padding, n)
    hyper = (_tuple(a["stride"], n), padding, _tuple(a["dilation"], n), groups)
    mod = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=hyper[0], padding=padding,
              dilation=hyper[2], groups=groups, bias=bias is not None)
    mod.weight = _param(weight)
    if bias is not None:
        mod.bias = _param(bias.value)
    return r.module(mod, node, a["input"], weight=w, key=(hyper, id(bias)))


@_handles("conv1d", "conv2d")
def _conv(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    return _conv_module(r, node, a, r.const(node, a["weight"], "weight"), a["padding"])


@_handles("convolution", "_convolution")
def _convolution(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if a["transposed"] or any(int(p) != 0 for p in a["output_padding"] or ()):
        r._unsupported(node, "convolution (transposed)")
    return _conv_module(r, node, a, r.const(node, a["weight"], "weight"), a["padding"])


def _linear_module(r: _Raiser, node: fx.Node, x: Any, weight: torch.Tensor, bias: torch.Tensor | None,
                   w: _Const, b: Any) -> fx.Node:
    mod = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    mod.weight = _param(weight)
    if bias is not None:
        mod.bias = _param(bias.reshape(-1))
    return r.module(mod, node, x, weight=w, key=(id(b), tuple(weight.shape)))


@_handles("linear")
def _linear(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w = r.const(node, a["weight"], "weight")
    b = a["bias"] if a["bias"] is None else r.const(node, a["bias"], "bias")
    return _linear_module(r, node, a["input"], w.value, b.value if b else None, w, b)


@_handles("addmm")
def _addmm(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w = r.const(node, a["mat2"], "weight")  # [in, out]: linear's weight transposed
    b = r.const(node, a["self"], "bias")
    weight, bias = w.value.t() * a["alpha"], b.value * a["beta"]
    if bias.numel() != weight.shape[0]:
        r._unsupported(node, "addmm (with a bias that is not one value per output)")
    return _linear_module(r, node, a["mat1"], weight, bias, w, b)


@_handles("mm", "matmul", "bmm")
def _matmul(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    x, other = (a["self"], a.get("mat2", a.get("other")))
    if isinstance(other, _Const) and other.value.dim() == 2 and not isinstance(x, _Const):
        return _linear_module(r, node, x, other.value.t(), None, other, None)  # x @ W: a linear layer
    return r.fn(torch.matmul, node, x, other)


@_handles("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm", "_batch_norm_impl_index")
def _batch_norm(r: _Raiser, node: fx.Node, a: dict) -> Any:
    if a.get("training"):
        raise ModelLoadError(f"{r.source}: BatchNorm node {node.name!r} uses batch statistics: the model was "
                             f"exported in training mode; {_EVAL_HINT}")
    mean = r.const(node, a["running_mean"], "running mean")
    var = r.const(node, a["running_var"], "running variance")
    rank = _rank(node)
    if rank not in (2, 3, 4):
        r._unsupported(node, f"{node.target.overloadpacket.__name__} (on a {rank}-d input)")
    weight = a["weight"] if a["weight"] is None else r.const(node, a["weight"], "weight")
    bias = a["bias"] if a["bias"] is None else r.const(node, a["bias"], "bias")
    cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    mod = cls(mean.value.numel(), eps=float(a["eps"]), momentum=float(a["momentum"]),
              affine=weight is not None or bias is not None)
    mod.running_mean.copy_(mean.value)
    mod.running_var.copy_(var.value)
    if mod.affine:
        mod.weight = _param(weight.value if weight else torch.ones_like(mean.value))
        mod.bias = _param(bias.value if bias else torch.zeros_like(mean.value))
    out = r.module(mod, node, a["input"], weight=weight or mean, key=(id(mean), float(a["eps"])))
    name = node.target.overloadpacket.__name__
    return out if name == "batch_norm" else _Multi({0: out}, name)


@_handles("layer_norm", "native_layer_norm")
def _layer_norm(r: _Raiser, node: fx.Node, a: dict) -> Any:
    weight = a["weight"] if a["weight"] is None else r.const(node, a["weight"], "weight")
    bias = a["bias"] if a["bias"] is None else r.const(node, a["bias"], "bias")
    mod = nn.LayerNorm(list(a["normalized_shape"]), eps=float(a["eps"]), elementwise_affine=weight is not None,
                       bias=bias is not None)
    if weight is not None:
        mod.weight = _param(weight.value)
    if bias is not None:
        mod.bias = _param(bias.value)
    out = r.module(mod, node, a["input"], weight=weight, key=(id(bias), float(a["eps"])))
    return out if node.target.overloadpacket.__name__ == "layer_norm" else _Multi({0: out}, "native_layer_norm")


@_handles("embedding")
def _embedding(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    w = r.const(node, a["weight"], "weight")
    pad = int(a["padding_idx"])
    mod = nn.Embedding(w.value.shape[0], w.value.shape[1], padding_idx=None if pad < 0 else pad)
    mod.weight = _param(w.value)
    return r.module(mod, node, a["indices"], weight=w, key=(pad,))


def _pool(cls: type[nn.Module], multi: bool = False) -> _Handler:
    def handler(r: _Raiser, node: fx.Node, a: dict) -> Any:
        n = 2 if cls.__name__.endswith("2d") else 1
        kernel = _tuple(a["kernel_size"], n)
        stride = _tuple(a["stride"], n) if a["stride"] else kernel
        extra = {"dilation": _tuple(a["dilation"], n)} if "dilation" in a else {}
        if "count_include_pad" in a:
            extra["count_include_pad"] = bool(a["count_include_pad"])
        if a.get("divisor_override") is not None:
            extra["divisor_override"] = a["divisor_override"]
        mod = cls(kernel, stride, _tuple(a["padding"], n), ceil_mode=bool(a["ceil_mode"]), **extra)
        out = r.module(mod, node, a["self"])
        return _Multi({0: out}, node.target.overloadpacket.__name__) if multi else out

    return handler


_handles("max_pool2d")(_pool(nn.MaxPool2d))
_handles("max_pool2d_with_indices")(_pool(nn.MaxPool2d, multi=True))
_handles("max_pool1d")(_pool(nn.MaxPool1d))
_handles("avg_pool2d")(_pool(nn.AvgPool2d))
_handles("avg_pool1d")(_pool(nn.AvgPool1d))


@_handles("adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool1d")
def _adaptive_pool(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    one_d = node.target.overloadpacket.__name__.endswith("1d")
    size = _tuple(a["output_size"], 1 if one_d else 2)
    mod = nn.AdaptiveAvgPool1d(size[0]) if one_d else nn.AdaptiveAvgPool2d(size[0] if len(set(size)) == 1 else size)
    return r.module(mod, node, a["self"])


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


def _binary(fn: Callable, scaled: bool = False, swap: bool = False) -> _Handler:
    def handler(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
        x, other = a["self"], a["other"]
        alpha = a.get("alpha", 1)
        if scaled and alpha not in (None, 1):
            other = _Const(other.value * alpha, other.source) if isinstance(other, _Const) else r.fn(
                operator.mul, node, other, alpha)
        return r.fn(fn, node, *((other, x) if swap else (x, other)))

    return handler


_handles("add")(_binary(operator.add, scaled=True))
_handles("sub")(_binary(operator.sub, scaled=True))
_handles("rsub")(_binary(operator.sub, scaled=True, swap=True))
_handles("mul")(_binary(operator.mul))


@_handles("div")
def _div(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    if a.get("rounding_mode") is not None:
        r._unsupported(node, f"div (rounding_mode={a['rounding_mode']!r})")
    return r.fn(operator.truediv, node, a["self"], a["other"])


def _unary(fn: Callable, **fixed: str) -> _Handler:
    """``fn(x, **{kwarg: a[schema_name]})`` for the arguments named in ``fixed``."""
    return lambda r, node, a: r.fn(fn, node, a["self"], **{k: a[v] for k, v in fixed.items()})


for _name, _fn in (("relu", torch.relu), ("relu6", F.relu6), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh),
                   ("hardswish", F.hardswish), ("silu", F.silu), ("neg", operator.neg)):
    _handles(_name)(_unary(_fn))
_handles("softmax", "_softmax")(_unary(torch.softmax, dim="dim"))
_handles("log_softmax", "_log_softmax")(_unary(torch.log_softmax, dim="dim"))
_handles("leaky_relu")(_unary(F.leaky_relu, negative_slope="negative_slope"))


@_handles("gelu")
def _gelu(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    approximate = a["approximate"] or "none"
    return r.fn(F.gelu, node, a["self"], approximate=approximate) if approximate != "none" else r.fn(
        F.gelu, node, a["self"])


@_handles("hardtanh", "clamp", "clamp_min")
def _clamp(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    low = a.get("min_val", a.get("min"))
    high = a.get("max_val", a.get("max"))
    if low == 0 and high is None:
        return r.fn(torch.relu, node, a["self"])
    if low == 0 and high == 6:
        return r.fn(F.relu6, node, a["self"])
    if low is None or high is None or isinstance(low, _Const) or isinstance(high, _Const):
        r._unsupported(node, f"{node.target.overloadpacket.__name__} (min={low}, max={high})")
    return r.fn(F.hardtanh, node, a["self"], float(low), float(high))


@_handles("cat", "concat", "concatenate")
def _cat(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    return r.fn(torch.cat, node, list(a["tensors"]), dim=int(a["dim"]))


def _same_leading(inp: Any, out: Any, k: int) -> bool:
    return [str(d) for d in inp.shape[:k]] == [str(d) for d in out.shape[:k]]


@_handles("view", "_unsafe_view", "reshape", "view_copy")
def _reshape(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    src = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    out = node.meta.get("val")
    if isinstance(src, torch.Tensor) and isinstance(out, torch.Tensor) and 1 <= out.dim() < src.dim():
        k = out.dim() - 1
        if _same_leading(src, out, k):
            # x.view(x.size(0), -1): a flatten, which keeps working when the batch size differs from export's.
            return r.fn(torch.flatten, node, a["self"], k)
    return r.fn(torch.reshape, node, a["self"], list(a.get("size") or a.get("shape")))


@_handles("flatten")
def _flatten(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    return r.fn(torch.flatten, node, a["self"], int(a["start_dim"]), int(a["end_dim"]))


@_handles("permute")
def _permute(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    return r.fn(torch.permute, node, a["self"], list(a["dims"]))


@_handles("transpose", "t")
def _transpose(r: _Raiser, node: fx.Node, a: dict) -> Any:
    if "dim0" not in a and _rank(node) is not None and _rank(node) < 2:
        return a["self"]
    return r.fn(torch.transpose, node, a["self"], int(a.get("dim0", 0)), int(a.get("dim1", 1)))


@_handles("unsqueeze")
def _unsqueeze(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    return r.fn(torch.unsqueeze, node, a["self"], int(a["dim"]))


@_handles("squeeze")
def _squeeze(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    dim = a.get("dim")
    if dim is None:
        return r.fn(torch.squeeze, node, a["self"])
    dims = list(dim) if isinstance(dim, (list, tuple)) else [dim]
    return r.fn(torch.squeeze, node, a["self"], dims[0] if len(dims) == 1 else tuple(dims))


@_handles("select", "slice")
def _index(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    dim = int(a["dim"])
    rank = _rank(node)
    dim = dim % rank if rank else dim
    if "index" in a:
        key: Any = a["index"]
    elif a["start"] in (None, 0) and a["step"] == 1 and (a["end"] is None or a["end"] == sys.maxsize):
        return a["self"]  # x[:] on a dynamic dimension: nothing to slice
    else:
        key = slice(a["start"], a["end"], None if a["step"] == 1 else a["step"])
    return r.fn(operator.getitem, node, a["self"], (*[slice(None)] * dim, key))


@_handles("contiguous", "clone", "alias", "detach", "lift_fresh_copy", "dropout", "feature_dropout",
          "alpha_dropout")
def _identity(r: _Raiser, node: fx.Node, a: dict) -> Any:
    return a.get("self", a.get("input"))  # inference: dropout is the identity, copies change nothing


@_handles("_to_copy", "to")
def _to(r: _Raiser, node: fx.Node, a: dict) -> Any:
    return a["self"] if a.get("dtype") is None else r.method("to", node, a["self"], a["dtype"])


@_handles("sym_size")
def _size(r: _Raiser, node: fx.Node, a: dict) -> fx.Node:
    return r.method("size", node, a["self"], int(a["dim"]))
