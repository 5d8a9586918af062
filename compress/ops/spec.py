"""The op registry's record type and lookup: one :class:`OpSpec` per op, declared once.

An op is what a node of the captured graph computes. The capture path (``compress.capture``) lowers every
model to one module-level vocabulary (torch layers for weighted ops, torch functions and tensor methods
between them), and each spec lists the targets of that vocabulary it matches. Everything that needs to know
about an op reads its spec: ``prepare`` (which quantizer goes where), ``convert``, ``float_ops``,
``compress inspect``, both exporters (their emitters are registered *for* a spec by the exporter packages,
so this package never imports an exporter) and pruning (channel coupling).

Example:
    >>> from torch import nn
    >>> from compress.ops import get
    >>> spec = get("relu")
    >>> spec.policy.value, nn.ReLU in spec.modules
    ('clamp', True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import fx, nn

from compress.errors import CompressError

FORMATS = ("onnx", "tflite")


class Policy(str, Enum):
    """What quantization does with an op."""

    WEIGHTED = "weighted"  # a weight layer: swapped for its quant class (int8 weights, int32 bias)
    FOLDED = "folded"  # folded into the weight layer before it (BatchNorm after conv)
    COMPUTE = "compute"  # computes a new real value: its output gets its own activation quantizer
    CLAMP = "clamp"  # ReLU-like: fused into the producer's requantization, the quantizer moves after it
    PRESERVING = "preserving"  # output values lie on the input's grid (reshape, max pool): no new quantizer
    SHAPE = "shape"  # sizes, dtypes, booleans, indices: no real-valued activation to quantize
    QUANTIZER = "quantizer"  # the fake-quantization node itself


class Kernel(str, Enum):
    """How a runtime executes an op of an int8 model."""

    INT8 = "int8"  # an integer kernel (QDQ fusion in onnxruntime, an int8 TFLite builtin)
    FLOAT = "float"  # computed in float between dequantize and quantize: a declared fallback, reported
    NONE = "none"  # no mapping at all: refused before any long work starts


class Coupling(str, Enum):
    """How channels flow through an op (the rule structured pruning couples tensors by)."""

    PRODUCER = "producer"  # owns its output channels, consumes its input channels (conv, linear)
    DEPTHWISE = "depthwise"  # groups == channels: input channel i is output channel i
    ELEMENTWISE = "elementwise"  # every tensor input and the output share channels (add, mul, where)
    PASSTHROUGH = "passthrough"  # unary, channel i in is channel i out (activations, pooling, BN, LayerNorm)
    CONCAT = "concat"  # channels of the inputs at offsets of the output
    HEADS = "heads"  # attention: channels grouped by head
    PERMUTE = "permute"  # moves axes: the channel axis follows the permutation (permute, transpose)
    MATMUL = "matmul"  # contracts a's last axis with b's second-to-last; batch axes couple a and b like an add
    ALONG_AXIS = "along_axis"  # computes along its `dim`: passthrough unless dim is the channel axis (softmax)
    INDEX = "index"  # t[i] of a tuple, or indexing of axes other than the channel axis (out[:, -1, :])
    BROADCAST = "broadcast"  # expand: grows size-1 axes; passthrough unless it expands the channel axis
    BLOCKING = "blocking"  # mixes or reshapes the channel axis: pruning does not cross it
    NONE = "none"  # no channel axis (shapes, indices)


@dataclass(frozen=True)
class Emitter:
    """An exporter's function for one spec; ``quantized`` ones take the compress quant layer's node."""

    fn: Callable
    quantized: bool = False


@dataclass(eq=False)
class OpSpec:
    """Everything the project knows about one op.

    Attributes:
        name: unique key (``"conv"``, ``"add"``); emitters register against it.
        policy: what quantization does with it.
        modules, functions, methods: the graph targets it matches (exact module types; quant layers whose
            ``_FLOAT_MODULE`` is one of ``modules`` match too); ``aten``: the aten op packets capture raises
            into this op (documentation and the coverage table of ``compress inspect``).
        quant_class: for WEIGHTED ops, the compress layer that replaces the float module (a tuple parallel to
            ``modules`` when each module type has its own).
        grid: a fixed output grid (``"unit"`` [0, 1), ``"symmetric_unit"`` [-1, 1)) for bounded ops.
        kernels: per format, how an int8 model runs it (from ``kernels_onnx.py`` / ``kernels_tflite.py``).
        reason: why an op with a FLOAT kernel stays float (shown in ``float_ops``).
        coupling: channel flow, for pruning.
        reference: a numpy function computing the float op (the golden cases' oracle), or None.
        lowering: the op's int8 form, ``(graph, node) -> node``: inserts declared ops with int8 kernels
            computing the same value before ``node`` and returns the last; ``prepare`` substitutes it before
            placing quantizers, so the simulation quantizes the tensors the files quantize (SiLU as
            ``x · sigmoid(x)``: the sigmoid on its fixed grid, then an int8 Mul).
        int8_constants: a large float constant operand of this op (a stored tensor of at least
            ``compress.passes.prepare.CONSTANT_MIN_ELEMENTS`` elements: a position table folded by capture,
            a ViT ``pos_embed``) is quantized like a weight (int8, symmetric, per tensor, its grid read from
            the tensor) when the op runs static; both files then store it as int8 codes behind a dequantize.
    """

    name: str
    policy: Policy
    modules: tuple[type[nn.Module], ...] = ()
    functions: tuple[Any, ...] = ()
    methods: tuple[str, ...] = ()
    aten: tuple[str, ...] = ()
    quant_class: type[nn.Module] | tuple[type[nn.Module], ...] | None = None
    grid: str | None = None
    kernels: dict[str, Kernel] = field(default_factory=dict)  # filled from kernels_<format>.py
    reason: str = ""
    coupling: Coupling = Coupling.NONE
    reference: Callable | None = None
    lowering: Callable[[fx.Graph, fx.Node], fx.Node] | None = None
    int8_constants: bool = False
    # (format, quantized) for float and static forms; (format, mode) for a layer in another QuantMode.
    emitters: dict[tuple[str, bool | str], Emitter] = field(default_factory=dict, repr=False)

    def quant_classes(self) -> dict[type[nn.Module], type[nn.Module]]:
        """``float module type -> compress layer`` for WEIGHTED ops ({} otherwise)."""
        if self.quant_class is None:
            return {}
        if isinstance(self.quant_class, tuple):
            return dict(zip(self.modules, self.quant_class, strict=True))
        return dict.fromkeys(self.modules, self.quant_class)

    def kernel(self, fmt: str) -> Kernel:
        return self.kernels.get(fmt, Kernel.NONE)

    def emitter(self, fmt: str, quantized: bool = False, mode: str | None = None) -> Callable | None:
        """The function ``fmt``'s exporter registered for this op (quantized layer form or float form); a
        ``mode`` other than ``"static"`` (a quant layer's ``QuantMode`` value) asks for that mode's form."""
        found = self.emitters.get(_emitter_key(fmt, quantized, mode))
        return found.fn if found else None

    def float_reason(self, fmt: str) -> str:
        if self.reason:
            return self.reason
        runtime = {"onnx": "onnxruntime", "tflite": "TFLite"}.get(fmt, fmt)
        return f"no int8 kernel in {runtime}; runs in float between dequantize and quantize"


_SPECS: dict[str, OpSpec] = {}
_BY_MODULE: dict[type, OpSpec] = {}
_BY_FUNCTION: dict[Any, OpSpec] = {}
_BY_METHOD: dict[str, OpSpec] = {}


def declare(spec: OpSpec) -> OpSpec:
    """Add ``spec`` to the registry; a target claimed twice is a programming error, caught at import."""
    if spec.name in _SPECS:
        raise CompressError(f"op {spec.name!r} declared twice")
    for table, keys in ((_BY_MODULE, spec.modules), (_BY_FUNCTION, spec.functions), (_BY_METHOD, spec.methods)):
        for key in keys:
            if key in table:
                raise CompressError(f"{key} is claimed by ops {table[key].name!r} and {spec.name!r}")
            table[key] = spec
    for cls in spec.quant_classes().values():
        _BY_MODULE.setdefault(cls, spec)
    _SPECS[spec.name] = spec
    return spec


def get(name: str) -> OpSpec:
    """The spec called ``name``.

    Raises:
        KeyError: no such op.
    """
    return _SPECS[name]


def all_specs() -> list[OpSpec]:
    """Every declared op, in declaration order."""
    return list(_SPECS.values())


def _emitter_key(fmt: str, quantized: bool, mode: str | None) -> tuple[str, bool | str]:
    mode = getattr(mode, "value", mode)
    return (fmt, quantized) if mode in (None, "static") else (fmt, mode)


def register_emitter(fmt: str, name: str, *, quantized: bool = False,
                     mode: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` writes op ``name`` in format ``fmt`` (called by the exporter packages at import).

    Example:
        >>> from compress.ops import get, register_emitter
        >>> @register_emitter("doc-format", "relu")
        ... def write_relu(*args):
        ...     return "Relu"
        >>> get("relu").emitter("doc-format") is write_relu
        True
    """
    if fmt not in FORMATS and not fmt.startswith("doc"):
        raise CompressError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    spec = get(name)

    def register(fn: Callable) -> Callable:
        key = _emitter_key(fmt, quantized, mode)
        if key in spec.emitters and spec.emitters[key].fn is not fn:
            raise CompressError(f"op {name!r} has two {fmt} emitters ({spec.emitters[key].fn.__name__}, "
                                f"{fn.__name__})")
        spec.emitters[key] = Emitter(fn, quantized)
        return fn

    return register


def module_spec(module: nn.Module) -> OpSpec | None:
    """The spec of a module instance: its exact type, else (for compress layers) its ``_FLOAT_MODULE``."""
    spec = _BY_MODULE.get(type(module))
    if spec is not None:
        return spec
    float_cls = getattr(type(module), "_FLOAT_MODULE", None)
    if float_cls is not None and type(module).__module__.startswith("compress."):
        return _BY_MODULE.get(float_cls)
    for cls in type(module).__mro__[1:]:
        # Compress helpers (QuantConvBn2d, QuantAdd...) resolve through their bases; a user's subclass of a
        # torch layer does not: it may override forward, and capture lowers it to what it really computes.
        if cls in _BY_MODULE and type(module).__module__.startswith("compress."):
            return _BY_MODULE[cls]
    return None


def lookup(node: fx.Node, modules: dict[str, nn.Module]) -> OpSpec | None:
    """The spec of an fx node of the captured vocabulary, or None when no op is declared for it.

    ``modules`` is ``dict(graph_module.named_modules())``. Placeholders, outputs and attributes are not ops.
    """
    if node.op == "call_module":
        mod = modules.get(node.target)
        return module_spec(mod) if mod is not None else None
    if node.op == "call_function":
        spec = _BY_FUNCTION.get(node.target)
        if spec is None and isinstance(node.target, torch._ops.OpOverload):
            return _SPECS.get("aten")  # capture keeps aten ops it has no torch form for: the generic entry
        return spec
    if node.op == "call_method":
        return _BY_METHOD.get(node.target)
    return None


def target_label(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A short name for what a node calls: the module class, the function or ``Tensor.method``."""
    if node.op == "call_module":
        mod = modules.get(node.target)
        return type(mod).__name__ if mod is not None else str(node.target)
    if node.op == "call_function":
        if isinstance(node.target, torch._ops.OpOverload):
            return f"aten.{node.target.overloadpacket.__name__}"
        return getattr(node.target, "__name__", str(node.target))
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return node.op
