"""Raise a ``torch.export`` program (aten ops, weights lifted to inputs) to the module-level fx graph we read.

The passes and exporters reason about ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` modules and torch
functions (docs/architecture.md, "The converted model"). Weight ops become modules holding the weights, named
after the original parameters (``layer1.0.conv1``); other lifted tensors become attributes, so the only
placeholders are the user's inputs; ops over constants only (``weight.t()`` feeding ``addmm``) are evaluated
once; in-place ops become out-of-place, and later readers of the mutated tensor read the result. Any other op
raises :class:`~compress.errors.ModelLoadError` naming it and the supported ones.
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
        for node, spec in zip(placeholders, self.ep.graph_signature.input_specs, strict=True):
            self.env[node] = self._input(node, spec)
        for node in self.ep.graph.nodes:
            if node.op == "get_attr":
                self.env[node] = _Const(operator.attrgetter(node.target)(self.ep.graph_module), node.target)
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
            return self.graph.placeholder(node.name)
        if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
            store = self.ep.state_dict if spec.target in self.ep.state_dict else self.ep.constants
            value = store[spec.target]
            return _Const(value.detach(), spec.target, isinstance(value, nn.Parameter) or kind == "PARAMETER")
        raise ModelLoadError(f"{self.source} has a {kind.lower()} input ({spec.target}), which only runs inside "
                             "torch; export a model whose inputs are tensors")

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
        """The exported model's class (``ResNet18``), which reports and messages show."""
        stacks = (n.meta.get("nn_module_stack") or {} for n in self.ep.graph.nodes)
        names = [str(kind).rsplit(".", 1)[-1] for stack in stacks for path, kind in stack.values() if path == ""]
        return names[0] if names and names[0].isidentifier() else "ExportedGraph"

    def value(self, v: Any) -> Any:
        """``v`` as something the new graph can consume: a node, a get_attr node for a tensor, or a literal."""
        if isinstance(v, _Multi):
            raise ModelLoadError(f"{self.source}: the outputs of {v.op} are used as one value; re-export with "
                                 "torch.export.export (no custom decompositions)")
        if isinstance(v, _Const):
            if not isinstance(v.value, torch.Tensor):
                return v.value
            if id(v) not in self.attrs:
                path = self._free_path(v.source or "constant")
                tensor = v.value.detach().clone()
                parent, name = self._parent(path)
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
            parent, name = self._parent(path)
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
        """``wanted`` (made of identifiers), or ``wanted_1``, ``wanted_2``... when something lives there."""
        wanted = ".".join(re.sub(r"\W", "_", p) or "_" for p in wanted.split("."))
        path, i = wanted, 1
        while not self._is_free(path):
            path, i = f"{wanted}_{i}", i + 1
        return path

    def _is_free(self, path: str) -> bool:
        obj: Any = self.root
        for part in path.split("."):
            if not isinstance(obj, nn.Module):
                return False
            obj = getattr(obj, part, None)
            if obj is None:
                return True
        return False

    def _parent(self, path: str) -> tuple[nn.Module, str]:
        """The module that will own ``path`` (containers created on the way) and the attribute name."""
        *parents, last = path.split(".")
        obj = self.root
        for part in parents:
            if not hasattr(obj, part):
                obj.add_module(part, nn.Module())
            obj = getattr(obj, part)
        return obj, last

    # --- one aten node -----------------------------------------------------------------------------------
    def _call(self, node: fx.Node) -> Any:
        target = node.target
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: self.env[n])
        if target is operator.getitem:
            return self._getitem(node, *args)
        if node.op == "call_function" and target in _SYMBOLIC_FUNCTIONS:
            if all(isinstance(a, _Const) or not isinstance(a, fx.Node) for a in args):
                return _Const(target(*[a.value if isinstance(a, _Const) else a for a in args]))
            return self.fn(target, node, *args)
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            self._unsupported(node, str(getattr(target, "__name__", target)), prefix="")
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
        consts = [c for c in pytree.tree_leaves((args, kwargs), is_leaf=_is_value) if isinstance(c, _Const)]
        args, kwargs = pytree.tree_map(lambda x: x.value if isinstance(x, _Const) else x, (args, kwargs),
                                       is_leaf=_is_value)
        if in_place and args and isinstance(args[0], torch.Tensor):
            args = (args[0].clone(), *args[1:])  # never write into the program's own tensors
        with torch.no_grad():
            first = consts[0] if consts else _Const(None)
            result = _Const(target(*args, **kwargs), first.source, first.is_param)
        if in_place and isinstance(node.args[0], fx.Node):
            self.env[node.args[0]] = result
        return result

    def _getitem(self, node: fx.Node, source: Any, index: Any) -> Any:
        if isinstance(source, _Multi):
            if index not in source.outputs:
                raise ModelLoadError(f"{self.source}: node {node.name!r} reads output {index} of {source.op}, "
                                     f"which has no module-level equivalent; {source.fix}")
            return source.outputs[index]
        if isinstance(source, _Const):
            return _Const(source.value[index], source.source)
        return self.fn(operator.getitem, node, source, index)

    def _unsupported(self, node: fx.Node, op: str, prefix: str = "aten.") -> None:
        path, kind = list((node.meta.get("nn_module_stack") or {"": ("", "")}).values())[-1]
        where = f" in {path or 'the top module'} ({str(kind).rsplit('.', 1)[-1]})" if kind else ""
        raise ModelLoadError(
            f"{self.source}: {prefix}{op} at node {node.name!r}{where} has no module-level equivalent; supported aten "
            f"ops: {', '.join(n.removeprefix('aten.') for n in supported_aten_ops())}. Save model.state_dict() and "
            "load it with --arch MODULE:CALLABLE instead (unsupported layers then stay float), or export without it"
        )

    def const(self, node: fx.Node, value: Any, what: str, optional: bool = False) -> _Const | None:
        """``value`` as a constant tensor (a weight); None for a missing optional one."""
        if optional and value is None:
            return None
        if not isinstance(value, _Const) or not isinstance(value.value, torch.Tensor):
            raise ModelLoadError(f"{self.source}: the {what} of aten node {node.name!r} is computed at run time; "
                                 "only parameters can be raised to layers: export with the weights as parameters")
        return value


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
