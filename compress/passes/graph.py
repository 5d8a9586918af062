"""fx helpers the passes share: tracing models that contain compress layers, and graph-level questions
answered by the op registry (:mod:`compress.ops`), which is the only place that lists ops.
"""

from __future__ import annotations

from torch import fx, nn

from compress import ops
from compress.errors import CompressError
from compress.layers.base import QuantLayerMixin
from compress.ops import Kernel, OpSpec, Policy
from compress.quant.fake import Quantizer


def spec_of(node: fx.Node, modules: dict[str, nn.Module]) -> OpSpec | None:
    """The registry's spec for ``node`` (None for placeholders, outputs, attributes and undeclared ops)."""
    return ops.lookup(node, modules)


def _policy(node: fx.Node, modules: dict[str, nn.Module]) -> Policy | None:
    spec = ops.lookup(node, modules)
    return spec.policy if spec is not None else None


def fixed_grid(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """``"unit"`` / ``"symmetric_unit"`` for ops with an a-priori output range, else None."""
    spec = ops.lookup(node, modules)
    return spec.grid if spec is not None else None


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


def is_preserving(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when the node's output values are a subset/rearrangement of its (first) input's values."""
    return _policy(node, modules) is Policy.PRESERVING


def is_clamp(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return _policy(node, modules) is Policy.CLAMP


def is_shape(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Sizes, casts, booleans, indices, constants: nothing to quantize."""
    return _policy(node, modules) is Policy.SHAPE


def is_quantizer(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    return isinstance(target_module(node, modules), Quantizer)


def float_formats(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, ...]:
    """The export formats whose int8 model computes ``node`` in float (or cannot write it at all)."""
    mod = target_module(node, modules)
    spec = ops.lookup(node, modules)
    if spec is None or spec.policy in (Policy.QUANTIZER, Policy.SHAPE):
        return () if spec is not None else ops.FORMATS
    if spec.policy is Policy.WEIGHTED and not isinstance(mod, QuantLayerMixin):
        return ops.FORMATS  # a weight layer left float (keep_float, or no int8 form for its options)
    return tuple(f for f in ops.FORMATS if spec.kernel(f) is not Kernel.INT8)


def is_int8_op(node: fx.Node, modules: dict[str, nn.Module], formats: tuple[str, ...] = ops.FORMATS) -> bool:
    """Ops every format in ``formats`` runs in integer arithmetic once their inputs and output are quantized."""
    return not set(float_formats(node, modules)) & set(formats)


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
    """A short human name for an op: the module class, function or ``Tensor.method``."""
    return ops.target_label(node, modules)
