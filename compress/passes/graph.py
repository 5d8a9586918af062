"""Graph capture and the op vocabulary the passes reason about.

One home for "what kind of op is this fx node": weight layers (swapped for quant layers), ops whose output
needs its own quantizer, ops that keep their input's quantization grid (max pool, reshape...), and ReLU-like
ops that int8 kernels fuse into the producer's requantization.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from compress.errors import CompressError
from compress.layers.base import QuantLayerMixin
from compress.layers.registry import QPARAM_PRESERVING_OPS
from compress.quant.fake import Quantizer

# Ops whose output lies on the input's integer grid: no new quantizer, the exporter repeats the input's Q/DQ.
# The module list lives in the layer registry (inspect reads it too); functions and methods are graph-only.
PRESERVING_MODULES: tuple[type[nn.Module], ...] = tuple(QPARAM_PRESERVING_OPS)
PRESERVING_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
    F.max_pool1d, F.max_pool2d, F.dropout, operator.getitem, torch.chunk, torch.split,
}
PRESERVING_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "contiguous", "chunk",
    "split", "expand", "__getitem__",
}

# ReLU-like ops an int8 conv/linear applies while requantizing; no quantizer between producer and them.
CLAMP_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)
CLAMP_FUNCTIONS = {torch.relu, F.relu, F.relu6, torch.relu_}
CLAMP_METHODS = {"relu", "relu_"}

# Ops that never produce a real-valued activation worth quantizing (shapes, metadata).
SHAPE_METHODS = {"size", "dim", "numel", "type", "to", "float", "long", "int", "bool"}

# Functional ops an int8 runtime executes in integer arithmetic (QDQ fusion in onnxruntime, TFLite kernels).
INT8_FUNCTIONS = {
    operator.add, torch.add, operator.iadd, operator.mul, torch.mul, torch.cat, torch.concat, torch.matmul,
    operator.matmul, torch.bmm, torch.mean, F.adaptive_avg_pool2d, F.avg_pool2d, torch.sigmoid, torch.tanh,
    F.hardswish, F.gelu, F.softmax, torch.softmax, F.layer_norm, operator.sub, torch.sub,
}
INT8_METHODS = {"add", "mul", "mean", "matmul", "sigmoid", "tanh", "softmax", "sub"}
INT8_FLOAT_MODULES: tuple[type[nn.Module], ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.GELU, nn.Softmax, nn.LayerNorm, nn.Hardsigmoid, nn.SiLU, nn.LeakyReLU,
)


# Bounded ops whose int8 output uses a fixed grid: [0, 1) for probabilities, [-1, 1) for tanh.
UNIT_MODULES: tuple[type[nn.Module], ...] = (nn.Softmax, nn.Sigmoid)
UNIT_FUNCTIONS = {F.softmax, torch.softmax, torch.sigmoid, F.sigmoid}
UNIT_METHODS = {"softmax", "sigmoid"}
SYMMETRIC_UNIT_MODULES: tuple[type[nn.Module], ...] = (nn.Tanh,)
SYMMETRIC_UNIT_FUNCTIONS = {torch.tanh, F.tanh}
SYMMETRIC_UNIT_METHODS = {"tanh"}


def fixed_grid(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """``"unit"`` / ``"symmetric_unit"`` for ops with an a-priori output range, else None."""
    if _matches(node, modules, UNIT_MODULES, UNIT_FUNCTIONS, UNIT_METHODS):
        return "unit"
    if _matches(node, modules, SYMMETRIC_UNIT_MODULES, SYMMETRIC_UNIT_FUNCTIONS, SYMMETRIC_UNIT_METHODS):
        return "symmetric_unit"
    return None


class QuantTracer(fx.Tracer):
    """fx tracer that keeps compress layers and quantizers as single nodes (leaves)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # Every compress module is one node: quant layers, quantizers, and our float helper modules alike.
        if isinstance(m, QuantLayerMixin | Quantizer) or type(m).__module__.startswith(("compress.layers",
                                                                                         "compress.quant")):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` with :class:`QuantTracer`.

    Raises:
        CompressError: when the model has data-dependent control flow fx cannot follow.
    """
    tracer = QuantTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError... on dynamic code
        raise CompressError(f"torch.fx could not trace {type(model).__name__}: {exc}".splitlines()[0]) from exc
    for node in graph.nodes:
        if isinstance(node.type, str):
            # PEP 563 string annotations ("torch.Tensor") become graph globals fx cannot pickle: torch.save of
            # the prepared / converted model would fail.
            node.type = None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def target_module(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(node.target) if node.op == "call_module" else None


def _matches(node: fx.Node, modules: dict[str, nn.Module], mods: tuple, funcs: set, methods: set) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), mods)
    if node.op == "call_function":
        return node.target in funcs
    if node.op == "call_method":
        return node.target in methods
    return False


def is_preserving(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when the node's output values are a subset/rearrangement of its (first) input's values."""
    return _matches(node, modules, PRESERVING_MODULES, PRESERVING_FUNCTIONS, PRESERVING_METHODS)


def is_clamp(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return _matches(node, modules, CLAMP_MODULES, CLAMP_FUNCTIONS, CLAMP_METHODS)


def is_quantizer(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return isinstance(target_module(node, modules), Quantizer)


def is_int8_op(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Ops an int8 runtime runs in integer arithmetic once their inputs and output are quantized."""
    mod = target_module(node, modules)
    if isinstance(mod, QuantLayerMixin):
        return True
    return (
        _matches(node, modules, INT8_FLOAT_MODULES + CLAMP_MODULES, INT8_FUNCTIONS | CLAMP_FUNCTIONS,
                 INT8_METHODS | CLAMP_METHODS)
        or is_preserving(node, modules)
    )


def upstream_quantizer(node: fx.Node, modules: dict[str, nn.Module]) -> Quantizer | None:
    """The quantizer whose grid ``node``'s value lies on (walking back through preserving ops)."""
    seen = 0
    while seen < 1000:
        if is_quantizer(node, modules):
            return modules[node.target]
        if not is_preserving(node, modules) or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        node = node.args[0]
        seen += 1
    return None


def node_label(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A short human name for an op: the module class, function or method name."""
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)
