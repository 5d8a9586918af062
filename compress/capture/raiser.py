"""Raise a ``torch.export`` program (aten ops, weights lifted to inputs) to the module-level fx graph we read.

The passes and exporters reason about ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` modules and torch
functions (docs/architecture.md, "The converted model"). Weight ops become modules holding the weights, named
after the original parameters (``layer1.0.conv1``); other lifted tensors become attributes, so the only
placeholders are the user's inputs; ops over constants only (``weight.t()`` feeding ``addmm``) are evaluated
once; in-place ops become out-of-place, and later readers of the mutated tensor read the result. An aten op
with no torch-level form stays in the graph as itself (a "generic" node, ``torch.ops.aten.cumprod.default``)
for the coverage check to report. Every new node keeps the ``stack_trace`` and ``nn_module_stack`` of the aten
node it came from, so later errors can name the user's source line and module.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from compress.capture import aten_layers, aten_math, aten_sequence, aten_shape  # noqa: F401  (register handlers)
from compress.capture._aten import (
    _DROPPED,
    _EVAL_HINT,
    _HANDLERS,
    _SYMBOLIC_FUNCTIONS,
    _all_constant,
    _bind,
    _Const,
    _is_value,
    _KeepGeneric,
    _Multi,
    _plain_structure,
    supported_aten_ops,
)
from compress.errors import ModelLoadError

#: What each raised node copies from the aten node it comes from (user source line, owning module).
KEPT_META = ("stack_trace", "nn_module_stack")

__all__ = ["raise_exported_program", "supported_aten_ops"]


def raise_exported_program(ep: torch.export.ExportedProgram, *, source: str = "") -> fx.GraphModule:
    """Rebuild a ``torch.export`` program as a module-level ``torch.fx.GraphModule`` of float torch layers.

    Args:
        ep: the program (``torch.export.export(model.eval(), inputs)`` or ``torch.export.load(path)``),
            exported in eval mode.
        source: a name for messages (the file name).

    Returns:
        A GraphModule in eval mode whose placeholders are the user inputs (same names, same order), with
        ``nn.Conv1d/2d``, ``nn.ConvTranspose1d/2d``, ``nn.Linear``, ``nn.BatchNorm1d/2d``, ``nn.LayerNorm``,
        ``nn.Embedding``, ``nn.PReLU``, ``nn.LSTM`` / ``nn.GRU`` and pooling modules, torch functions between
        them, and aten ops with no torch-level form as themselves; it computes what ``ep.module()`` computes.
        ``gm.meta["compress_capture"]`` is ``"export"``.

    Raises:
        ModelLoadError: nested (non-tensor) inputs, or a program exported in training mode.

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
        gm.delete_all_unused_submodules()  # modules of a handler that gave up half-way (a generic node)
        gm.graph.lint()
        gm.recompile()
        gm.meta["compress_capture"] = "export"  # prepare() uses a raised graph as is
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

    def _create(self, op: str, target: Any, args: tuple, kwargs: dict, node: fx.Node) -> fx.Node:
        # Module calls are named after the module, as torch.fx names them (quantizer "fc_act_quant" follows fc).
        name = target.replace(".", "_") if op == "call_module" else node.name
        new = self.graph.create_node(op, target, args, kwargs, name=name)
        new.meta.update({k: node.meta[k] for k in KEPT_META if k in node.meta})
        return new

    def fn(self, target: Callable, node: fx.Node, *args: Any, **kwargs: Any) -> fx.Node:
        args, kwargs = pytree.tree_map(self.value, (args, kwargs), is_leaf=_is_value)
        return self._create("call_function", target, tuple(args), dict(kwargs), node)

    def method(self, name: str, node: fx.Node, *args: Any) -> fx.Node:
        args = pytree.tree_map(self.value, args, is_leaf=_is_value)
        return self._create("call_method", name, tuple(args), {}, node)

    def module(self, mod: nn.Module, node: fx.Node, x: Any, *extra: Any, weight: _Const | None = None,
               key: tuple | None = None) -> fx.Node:
        """Call ``mod`` (stored once per tied weight) on ``x`` (and ``extra`` inputs, an LSTM's state); named
        after its weight or the original module."""
        full_key = (type(mod).__name__, id(weight), key) if weight is not None and key is not None else None
        path = self.shared.get(full_key) if full_key else None
        if path is None:
            path = self._free_path(self._module_name(node, mod, weight))
            parent, name = self._parent(path)
            parent.add_module(name, mod.eval())
            if full_key:
                self.shared[full_key] = path
        args = pytree.tree_map(self.value, (x, *extra), is_leaf=_is_value)
        return self._create("call_module", path, tuple(args), {}, node)

    def generic(self, node: fx.Node, why: str) -> None:
        """Give up on a torch-level form for ``node`` (``why`` says which form): the aten op is kept as is."""
        raise _KeepGeneric(why)

    def _keep_aten(self, node: fx.Node, args: tuple, kwargs: dict, in_place: bool) -> fx.Node:
        # The op itself, callable in eager torch (and exportable by torch.onnx): ONNX runs it in float; the
        # coverage check names it with node.meta["stack_trace"]. In-place ops get their out-of-place form.
        target = node.target
        if target.namespace == "compress":  # compress::lstm / gru (capture's stand-ins): aten's own op again
            target = getattr(torch.ops.aten, target.overloadpacket.__name__).input
        if in_place:
            packet = getattr(torch.ops.aten, target.overloadpacket.__name__[:-1], None)
            target = getattr(packet, target._overloadname, target) if packet is not None else target
        return self.fn(target, node, *args, **kwargs)

    def _module_name(self, node: fx.Node, mod: nn.Module, weight: _Const | None) -> str:
        for suffix in (".weight", "_weight"):  # conv.weight -> conv; attention's in_proj_weight -> in_proj
            if weight is not None and weight.source.endswith(suffix) and len(weight.source) > len(suffix):
                return weight.source[: -len(suffix)]
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, type_name = list(stack.values())[-1]
            if path and str(type_name).endswith("." + type(mod).__name__):
                return path
        # A bare parameter of functional code (F.conv2d(x, self.w1)): the module is named after it.
        return weight.source if weight is not None and weight.source else node.name

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
        if node.op != "call_function":
            raise ModelLoadError(f"{self.source}: node {node.name!r} is a {node.op} of {target!r}, which a "
                                 "torch.export program does not contain; re-export with torch.export.export")
        if not isinstance(target, torch._ops.OpOverload):  # e.g. torch.sym_max, math.ceil over sizes
            return self.fn(target, node, *args, **kwargs)
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
        try:
            if handler is None:
                raise _KeepGeneric("no handler")
            result = handler(self, node, _bind(target, args, kwargs))
        except _KeepGeneric:
            result = self._keep_aten(node, args, kwargs, in_place)
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

    def const(self, node: fx.Node, value: Any, what: str, optional: bool = False) -> _Const | None:
        """``value`` as a constant tensor (a weight); None for a missing optional one."""
        if optional and value is None:
            return None
        if not isinstance(value, _Const) or not isinstance(value.value, torch.Tensor):
            self.generic(node, f"a {what} computed at run time")  # only stored tensors become layer weights
        return value


