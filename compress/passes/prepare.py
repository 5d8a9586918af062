"""prepare(): turn an ordinary float model into a quantization-simulating one.

Graph capture with ``torch.export`` (:func:`compress.capture.capture`: shape checks, buffer slices, Conv
subclasses with their own ``forward`` and functional code all arrive as one graph of torch layers). torch.fx
symbolic tracing remains for models that already hold compress layers (``torch.export`` would decompose them)
and as the fallback when export fails. Then, on the graph:

1. fold BatchNorm into the conv before it (PTQ), or fuse the pair into a ``QuantConvBn2d`` (QAT, so BN
   statistics stay live while training);
2. swap weight layers (Linear, Conv, Embedding, attention, LSTM/GRU) for their quant subclasses;
3. put one activation :class:`~compress.quant.Quantizer` on every real-valued edge: each model input and the
   output of each op that computes new values; ReLU after a conv/linear/add shares the producer's
   requantization, and grid-preserving ops (max pool, reshape...) need none;
4. give each large float constant read by an op whose registry spec says ``int8_constants`` (add, mul, cat)
   a weight-style quantizer, so both files store it as int8 codes (:func:`_quantize_constants`).

Models neither can capture fall back to swapping layers in place with their own input/output quantizers; the
ops between layers then stay float and are listed in ``model.compress_info.float_ops`` with the reason.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from compress.capture import capture
from compress.errors import CompressError, DataError
from compress.layers.base import QuantLayerMixin
from compress.layers.conv import QuantConvBn2d
from compress.layers.dynamic import supported_modes
from compress.ops import Policy, quant_class_for
from compress.passes import graph as g
from compress.passes.fuse import can_fold, fold_bn
from compress.passes.masks import carry_masks_in_float
from compress.quant.config import QuantConfig, QuantMode
from compress.quant.fake import Quantizer
from compress.quant.observers import FixedQParamsObserver, qparams_from_range
from compress.quant.spec import WEIGHT_INT8_PER_TENSOR

#: Float constants with at least this many elements, read by an ``int8_constants`` op, are stored as int8. A
#: folded position table ([1, 16, 64] in the zoo BERT: 4 kB of float in its int8 file) qualifies; a scalar or a
#: short per-channel vector does not: in float it costs about what a scale, a zero point and the dequantize
#: node would add.
CONSTANT_MIN_ELEMENTS = 256


@dataclass(frozen=True)
class FloatOp:
    """An op that runs in float in the int8 model, and why."""

    name: str
    op: str
    reason: str
    formats: tuple[str, ...] = ("onnx", "tflite")  # the export formats that run it in float


@dataclass
class PrepareInfo:
    """How a model was prepared: ``capture`` is ``"export"`` (torch.export), ``"fx"`` (torch.fx symbolic
    tracing: models holding compress layers, or export failed) or ``"module_swap"`` (neither could capture)."""

    capture: str
    qat: bool
    config: QuantConfig
    float_ops: list[FloatOp] = field(default_factory=list)
    quantized_layers: list[str] = field(default_factory=list)
    layer_modes: dict[str, str] = field(default_factory=dict)  # module path -> the mode it runs in

    def to_dict(self) -> dict:
        return {
            "capture": self.capture,
            "qat": self.qat,
            "config": self.config.to_dict(),
            "float_ops": [asdict(f) for f in self.float_ops],
            "quantized_layers": list(self.quantized_layers),
            "layer_modes": dict(self.layer_modes),
        }


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def prepare(
    model: nn.Module,
    example_inputs,
    config: QuantConfig | None = None,
    *,
    qat: bool = False,
    keep_float: tuple[str, ...] = (),
) -> nn.Module:
    """A copy of ``model`` that simulates int8 inference, ready for :func:`calibrate` (or QAT training).

    Args:
        model: the float model (left untouched).
        example_inputs: one input batch (a tensor or a tuple of tensors) used to trace shapes.
        config: weight/activation formats, the calibration observer and the mode of each layer
            (``config.mode`` / ``config.layer_modes``: static, dynamic, weight-only, float).
        qat: keep BatchNorm live (fused conv+BN) and return the model in train mode.
        keep_float: qualified names of modules to leave in float (e.g. a sensitive first conv).

    Returns:
        A ``torch.fx.GraphModule`` (or, when the model cannot be captured, the module with layers swapped in
        place) with ``compress_info`` describing what was done.

    Example:
        >>> from compress.models import DemoCNN
        >>> prepared = prepare(DemoCNN(), torch.randn(1, 1, 8, 8))
        >>> prepared.compress_info.capture
        'export'
    """
    config = config or QuantConfig()
    example_inputs = _as_tuple(example_inputs)
    if g.QuantTracer().is_leaf_module(model, ""):
        # A bare layer as a child keeps a module node (and a path, "0") in either capture.
        model = nn.Sequential(model)
    try:
        gm, how = _capture(model, example_inputs)
    except CompressError as exc:
        config.check_layer_names(name for name, _ in model.named_modules() if name)
        return _prepare_module_swap(copy.deepcopy(model).train(qat), config, qat, keep_float, str(exc))
    gm.train(qat)  # captured in eval mode; QAT trains the graph (BatchNorm statistics live in QuantConvBn2d)
    shared = _untie_shared_calls(gm)
    config.check_layer_names(_module_paths(model, gm))
    modes = _resolve_modes(gm, config, shared)
    keep_float = tuple(keep_float) + tuple(c for name, copies in shared.items() if name in keep_float
                                           for c in copies)
    _fold_batchnorm(gm, config, qat, keep_float + _kept_float(modes))
    swapped, unsupported = _swap_layers(gm, config, keep_float, modes)
    _retie_shared(gm, shared)
    _lower_to_int8_forms(gm)
    _propagate_shapes(gm, example_inputs)
    _insert_quantizers(gm, config, modes)
    _quantize_constants(gm, config, modes)
    gm.graph.lint()
    gm.recompile()
    float_ops = _float_ops(gm, keep_float, modes, unsupported) + carry_masks_in_float(gm)
    gm.compress_info = PrepareInfo(how, qat, config, float_ops, swapped,
                                   {p: (m.value if p in swapped else "float") for p, m in modes.items()})
    return gm


def capture_graph(model: nn.Module, example_inputs) -> tuple[fx.GraphModule, str]:
    """A float model as the one graph every pass and exporter reads, and how (``"export"`` or ``"fx"``).

    The same capture ``prepare`` uses, so a fp32 baseline export and the int8 model see the same graph.

    Raises:
        CompressError: neither torch.export nor torch.fx can capture it (the message names both reasons).
    """
    example_inputs = _as_tuple(example_inputs)
    if g.QuantTracer().is_leaf_module(model, ""):
        model = nn.Sequential(model)  # a bare layer as a child keeps a module node in either capture
    return _capture(model, example_inputs)


def _capture(model: nn.Module, example_inputs: tuple) -> tuple[fx.GraphModule, str]:
    """The model as one graph, and how it was captured (``"export"`` or ``"fx"``).

    Raises:
        CompressError: neither torch.export nor torch.fx can capture it (the message names both reasons).
    """
    if isinstance(model, fx.GraphModule) and getattr(model, "meta", {}).get("compress_capture") == "export":
        return copy.deepcopy(model), "export"  # a raised program (a loaded .pt2): already this vocabulary
    if _holds_compress_modules(model):
        # torch.export would decompose quant layers and quantizers into aten ops; fx keeps them as leaves.
        return g.trace(copy.deepcopy(model)), "fx"
    if any(isinstance(m, _FX_LEAVES) for m in model.modules()):
        try:
            return g.trace(copy.deepcopy(model)), "fx"
        except CompressError:
            pass  # export's decomposition (linear / bmm / softmax) still quantizes it
    try:
        return capture(model, example_inputs), "export"
    except CompressError as export_exc:
        try:
            return g.trace(copy.deepcopy(model)), "fx"
        except CompressError as fx_exc:
            raise CompressError(f"{export_exc}; {fx_exc}") from export_exc


# Layers with a quant layer of their own that torch.export decomposes into aten ops: as an fx leaf,
# nn.MultiheadAttention becomes one QuantMultiheadAttention (its q/k/v/probability quantizers, 1/sqrt(d) folded
# into the q projection) that both exporters write as a unit.
_FX_LEAVES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)


def _holds_compress_modules(model: nn.Module) -> bool:
    tracer = g.QuantTracer()
    return any(type(m).__module__.startswith("compress.") and tracer.is_leaf_module(m, name)
               for name, m in model.named_modules())


def _set_module(root: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, attr = qualname.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _untie_shared_calls(gm: fx.GraphModule) -> dict[str, list[str]]:
    """Give every call of a module used more than once its own module, sharing the first one's parameters.

    Each call sees different inputs, so each needs its own input scale (for the int32 bias), its own
    quantizers and, for BN folding, its own fused layer; the weights stay one set of ``nn.Parameter`` objects
    (QAT trains one set, the exporters store one). Returns ``{module path: [paths of its per-call copies]}``.
    """
    seen: set[str] = set()
    shared: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        if node.target not in seen:
            seen.add(node.target)
            continue
        copies = shared.setdefault(node.target, [])
        copy_name = _free_name(gm, f"{node.target.replace('.', '_')}_call{len(copies) + 2}")
        gm.add_submodule(copy_name, _sharing_copy(gm.get_submodule(node.target)))
        copies.append(copy_name)
        node.target = copy_name
    return shared


def _sharing_copy(mod: nn.Module) -> nn.Module:
    """A deep copy of ``mod`` whose parameters are ``mod``'s own objects (buffers and quantizers copied)."""
    return copy.deepcopy(mod, memo={id(p): p for p in mod.parameters()})


def _retie_shared(gm: fx.GraphModule, shared: dict[str, list[str]]) -> None:
    """Point the per-call copies at the first call's parameters again once layers are swapped.

    ``from_float`` and BN folding build new parameters; a copy whose parameter still holds the same values
    (same weights, same folded BatchNorm) gets the original object back, so one tensor is trained and stored.
    """
    for original, copies in shared.items():
        first = dict(gm.get_submodule(original).named_parameters())
        for name in copies:
            mod = gm.get_submodule(name)
            for pname, param in list(mod.named_parameters()):
                mine = first.get(pname)
                if mine is None or mine is param or mine.shape != param.shape or not torch.equal(mine, param):
                    continue
                owner, _, leaf = pname.rpartition(".")
                setattr(mod.get_submodule(owner) if owner else mod, leaf, mine)


def _fold_batchnorm(gm: fx.GraphModule, config: QuantConfig, qat: bool, keep_float) -> None:
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        bn = g.target_module(node, modules)
        if not isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d) or not node.args:
            continue
        prev = node.args[0]
        layer = g.target_module(prev, modules) if isinstance(prev, fx.Node) else None
        if layer is None or len(prev.users) != 1 or not can_fold(layer, bn) or prev.target in keep_float:
            continue
        if qat and type(layer) is nn.Conv2d and layer.padding_mode == "zeros":
            fused: nn.Module = QuantConvBn2d.from_float(layer, bn, config)
        else:
            fused = fold_bn(layer, bn.eval() if not qat else copy.deepcopy(bn).eval())
        _set_module(gm, prev.target, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        modules[prev.target] = fused
    gm.delete_all_unused_submodules()


def _module_paths(model: nn.Module, gm: fx.GraphModule) -> list[str]:
    """Every module path a ``layer_modes`` entry may name: the user's (containers too) and the graph's."""
    paths = [name for name, _ in model.named_modules() if name]
    return paths + [n.target for n in gm.graph.nodes if n.op == "call_module"]


def _resolve_modes(gm: fx.GraphModule, config: QuantConfig, shared: dict[str, list[str]]) -> dict[str, QuantMode]:
    """``{module path: mode}`` of every weight layer call; a shared module's per-call copies follow it."""
    copy_of = {c: original for original, copies in shared.items() for c in copies}
    modules = dict(gm.named_modules())
    modes = {}
    for node in gm.graph.nodes:
        spec = g.spec_of(node, modules) if node.op == "call_module" else None
        if spec is not None and spec.policy is Policy.WEIGHTED:
            modes[node.target] = config.mode_for(copy_of.get(node.target, node.target))
    return modes


def _kept_float(modes: dict[str, QuantMode]) -> tuple[str, ...]:
    return tuple(path for path, mode in modes.items() if mode is QuantMode.FLOAT)


def _mode_for_class(cls: type, wanted: QuantMode) -> QuantMode:
    """``wanted`` when ``cls`` implements it; a dynamic layer without a dynamic form is weight-only when it
    has that (a lookup has no activation to quantize); otherwise float."""
    available = supported_modes(cls)
    if wanted in available:
        return wanted
    if wanted is QuantMode.DYNAMIC and QuantMode.WEIGHT_ONLY in available:
        return QuantMode.WEIGHT_ONLY
    return QuantMode.FLOAT


def _swap_layers(gm: fx.GraphModule, config: QuantConfig, keep_float,
                 modes: dict[str, QuantMode]) -> tuple[list[str], dict[str, str]]:
    """Swap weight layers for their quant classes in their modes; returns (swapped paths, {path: why float}
    for layers whose requested mode their class lacks). ``modes`` is updated to what each layer runs in."""
    swapped, unsupported = [], {}
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        mod = g.target_module(node, modules)
        if mod is None or isinstance(mod, QuantLayerMixin) or node.target in keep_float:
            if isinstance(mod, QuantLayerMixin):
                swapped.append(node.target)
            continue
        cls = quant_class_for(mod)
        wanted = modes.get(node.target, config.mode)
        if cls is None or wanted is QuantMode.FLOAT:
            continue
        mode = _mode_for_class(cls, wanted)
        modes[node.target] = mode
        if mode is QuantMode.FLOAT:
            unsupported[node.target] = f"no {wanted.value} form of {cls.__name__}; kept in float (mode)"
            continue
        try:
            _set_module(gm, node.target, cls.from_float(mod, replace(config, mode=mode, layer_modes={})))
        except CompressError:
            continue  # e.g. a padding mode with no int8 kernel: the layer stays float and is reported
        swapped.append(node.target)
    return swapped, unsupported


def _lower_to_int8_forms(gm: fx.GraphModule) -> None:
    """Replace each op whose registry spec has a ``lowering`` (SiLU) by its int8 form, before quantizers are
    placed: the quantizers then sit on the tensors both files quantize (``compress.ops.spec.OpSpec``)."""
    modules = dict(gm.named_modules())
    lowered = False
    for node in list(gm.graph.nodes):
        spec = g.spec_of(node, modules)
        if spec is None or spec.lowering is None:
            continue
        node.replace_all_uses_with(spec.lowering(gm.graph, node))
        gm.graph.erase_node(node)
        lowered = True
    if lowered:
        gm.delete_all_unused_submodules()  # the nn.SiLU modules no node calls any more


def _propagate_shapes(gm: fx.GraphModule, example_inputs: tuple) -> None:
    # Shape propagation runs the model once; in eval mode so BN running statistics are not disturbed.
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    except Exception as exc:
        shapes = ", ".join(str(list(t.shape)) for t in example_inputs if isinstance(t, torch.Tensor))
        raise DataError(
            f"the model cannot run on inputs of shape {shapes}: {str(exc).splitlines()[0]}; "
            "pass data shaped like the model's real input"
        ) from exc
    finally:
        gm.train(was_training)


def _is_float_tensor(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, TensorMetadata) and meta.dtype.is_floating_point


def _wants_quantizer(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op in ("output", "get_attr") or not _is_float_tensor(node):
        return False
    if node.op == "placeholder":
        return True
    if g.is_quantizer(node, modules) or g.is_shape(node, modules):
        return False
    if g.is_preserving(node, modules):
        # Slicing a tuple (LSTM / attention outputs) yields a new value; slicing a tensor keeps its grid.
        source = node.args[0] if node.args else None
        return isinstance(source, fx.Node) and not isinstance(source.meta.get("tensor_meta"), TensorMetadata)
    users = list(node.users)
    if users and all(g.is_clamp(u, modules) for u in users):
        return False  # the ReLU that follows gets the quantizer; int8 kernels clamp while requantizing
    return True


def _runs_static(node: fx.Node, modules: dict[str, nn.Module], config: QuantConfig,
                 modes: dict[str, QuantMode]) -> bool:
    """Whether ``node`` computes on calibrated int8 grids: a weight layer in static mode; a ReLU-like op when
    its producer does (it is fused into that producer's requantization); any other op when the model's mode
    is static. Dynamic, weight-only and float layers, and the ops of a non-static model, compute in float."""
    if node.op == "call_module" and node.target in modes:
        return modes[node.target] is QuantMode.STATIC and isinstance(modules[node.target], QuantLayerMixin)
    if g.is_clamp(node, modules) and node.args and isinstance(node.args[0], fx.Node):
        return _runs_static(node.args[0], modules, config, modes)
    return config.mode is QuantMode.STATIC


def _static_consumer(node: fx.Node, modules, config: QuantConfig, modes) -> bool:
    """Whether some op reading ``node``'s value (through grid-preserving ops) runs static."""
    pending, seen = list(node.users), set()
    while pending:
        user = pending.pop()
        if user in seen or user.op == "output":
            continue
        seen.add(user)
        if g.is_preserving(user, modules) or g.is_quantizer(user, modules):
            pending.extend(user.users)
        elif _runs_static(user, modules, config, modes):
            return True
    return False


def _insert_quantizers(gm: fx.GraphModule, config: QuantConfig, modes: dict[str, QuantMode]) -> None:
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if not _wants_quantizer(node, modules):
            continue
        if not (_runs_static(node, modules, config, modes) or _static_consumer(node, modules, config, modes)):
            continue  # computed in float and read only by float computation: no grid to calibrate
        name = _free_name(gm, f"{node.name}_act_quant")
        grid = g.fixed_grid(node, modules)
        quantizer = config.fixed_activation_quantizer(grid) if grid else config.activation_quantizer()
        gm.add_submodule(name, quantizer)
        with gm.graph.inserting_after(node):
            qnode = gm.graph.call_module(name, (node,))
        qnode.meta = dict(node.meta)
        node.replace_all_uses_with(qnode, delete_user_cb=lambda user, q=qnode: user is not q)


def _quantize_constants(gm: fx.GraphModule, config: QuantConfig, modes: dict[str, QuantMode]) -> None:
    """A quantizer after each large float constant (a ``get_attr`` of ≥ :data:`CONSTANT_MIN_ELEMENTS`) that
    static ops with ``int8_constants`` read: int8, symmetric, per tensor, on the grid of the tensor's own
    range, as a weight is quantized. The simulation then adds the values both files store as int8 codes (ONNX:
    an initializer behind DequantizeLinear, so onnxruntime fuses the Add into QLinearAdd; TFLite: an int8
    constant tensor), instead of 4 bytes per element in float.

    The grid is fixed here from the tensor (no calibration needed; a constant QAT trains keeps it), and is
    8-bit whatever ``config.weight`` says: both files store a constant operand as one byte per element.
    """
    modules = dict(gm.named_modules())
    spec = WEIGHT_INT8_PER_TENSOR
    for node in list(gm.graph.nodes):
        if node.op != "get_attr" or not _is_float_tensor(node):
            continue
        readers = [u for u in node.users if _stores_int8_constants(u, modules, config, modes)]
        value = _get_attr(gm, node.target)
        if not readers or not isinstance(value, torch.Tensor) or value.numel() < CONSTANT_MIN_ELEMENTS:
            continue
        value = value.detach().float()
        quantizer = Quantizer.with_observer(spec, FixedQParamsObserver(
            spec, *(float(t) for t in qparams_from_range(value.min(), value.max(), spec))))
        name = _free_name(gm, f"{node.name}_quant")
        gm.add_submodule(name, quantizer)
        with gm.graph.inserting_after(node):
            qnode = gm.graph.call_module(name, (node,))
        qnode.meta = dict(node.meta)
        for user in readers:
            user.replace_input_with(node, qnode)


def _stores_int8_constants(node: fx.Node, modules: dict[str, nn.Module], config: QuantConfig,
                           modes: dict[str, QuantMode]) -> bool:
    spec = g.spec_of(node, modules)
    return spec is not None and spec.int8_constants and _runs_static(node, modules, config, modes)


def _get_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _free_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _float_ops(gm: fx.GraphModule, keep_float, modes: dict[str, QuantMode] | None = None,
               unsupported: dict[str, str] | None = None) -> list[FloatOp]:
    """Every op some export format runs in float (or cannot write), from the op registry's kernels."""
    modules = dict(gm.named_modules())
    modes, unsupported = modes or {}, unsupported or {}
    out = []
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        formats = g.float_formats(node, modules)
        if not formats:
            continue
        spec = g.spec_of(node, modules)
        label = g.node_label(node, modules)
        if node.op == "call_module" and node.target in keep_float:
            reason = "kept in float on request (keep_float)"
        elif node.op == "call_module" and node.target in unsupported:
            reason = unsupported[node.target]
        elif node.op == "call_module" and modes.get(node.target) is QuantMode.FLOAT:
            reason = "kept in float (mode)"
        elif spec is None:
            reason = "not in the op registry: no exporter knows it"
        elif node.op == "call_module" and any(True for _ in modules[node.target].parameters()) \
                and not isinstance(modules[node.target], QuantLayerMixin):
            reason = spec.reason or "no quantized implementation of this layer; its weights stay float"
        else:
            reason = spec.float_reason(formats[0]) if len(formats) == 1 else (
                spec.reason or "no int8 kernel; runs in float between dequantize and quantize")
        out.append(FloatOp(node.name, label, reason, formats))
    return out


def _prepare_module_swap(model: nn.Module, config: QuantConfig, qat: bool, keep_float, why: str) -> nn.Module:
    float_ops, swapped, modes = [], [], {}
    for name, mod in list(model.named_modules()):
        if not name or name in keep_float or isinstance(mod, QuantLayerMixin):
            continue
        cls = quant_class_for(mod)
        mode = _mode_for_class(cls, config.mode_for(name)) if cls is not None else QuantMode.FLOAT
        if mode is QuantMode.FLOAT and cls is not None:
            float_ops.append(FloatOp(name, type(mod).__name__, "kept in float (mode)"))
            continue
        if cls is not None:
            try:
                layer_config = replace(config, mode=mode, layer_modes={})
                _set_module(model, name, cls.from_float(mod, layer_config, quantize_io=True))
                swapped.append(name)
                modes[name] = mode.value
                continue
            except CompressError:
                pass
        if any(True for _ in mod.parameters(recurse=False)):
            float_ops.append(FloatOp(name, type(mod).__name__, "no quantized implementation of this layer"))
    float_ops.append(FloatOp("<functional ops>", "*", f"model not traceable, ops between layers stay float ({why})"))
    model.train(qat)
    model.compress_info = PrepareInfo("module_swap", qat, config, float_ops, swapped, modes)
    return model
