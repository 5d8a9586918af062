"""Export a converted (int8 QDQ) or float model to one ONNX file at a pinned opset.

The exporter walks a torch.fx graph (see docs/architecture.md, "The converted model"), looks each node up in
the op registry (:func:`compress.ops.lookup`) and writes it with the emitter this package registered for that
op (:mod:`~compress.exporters.onnx.emitters`), using ``onnx.helper`` builders directly (``torch.onnx`` picks
opsets and file layouts on its own; it only writes the single ops with no emitter, as checked float
subgraphs: :mod:`compress.exporters.onnx.fallback`).

Example:
    >>> import torch, tempfile, os
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    >>> path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    >>> info = export_onnx(model, (torch.randn(1, 3, 16, 16),), path)
    >>> info.opset, info.op_histogram["Conv"]
    (17, 1)
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from compress import ops
from compress.errors import CompressError, ConfigError, ExportError, require
from compress.exporters.info import ExportInfo
from compress.exporters.onnx import emitters  # noqa: F401  (registers every ONNX emitter with the op registry)
from compress.exporters.onnx.fallback import emit_fallback, fallback_inputs, find_emitter
from compress.exporters.onnx.graph import (
    ExportContext,
    GraphBuilder,
    PyValue,
    TensorRecord,
    TensorValue,
    onnx_elem_type,
    summarize,
)
from compress.exporters.onnx.ops_float import is_python_record
from compress.exporters.onnx.ops_quant import is_quant_module, writes_int8_constant
from compress.exporters.onnx.ops_seq import RECURRENT_RTOL
from compress.io.atomic import write_bytes_atomic
from compress.passes.graph import QuantTracer
from compress.quant.fake import Quantizer

MIN_OPSET, MAX_OPSET = 13, 21
_MS_DOMAIN = "com.microsoft"
# protobuf cannot serialise a message over 2 GiB, and we never write external data.
_PROTOBUF_LIMIT = 2**31 - 1


class ActivationDType(str, Enum):
    """Storage type of int8 activations in the QDQ graph (same grid; uint8 shifts the zero point by 128).

    UINT8 is the default: onnxruntime's u8s8 kernels measured ×1.8–1.9 faster than fp32 on x86 here, where
    s8s8 left many convolutions in float. INT8 suits ARM targets.
    """

    UINT8 = "uint8"
    INT8 = "int8"


@dataclass(frozen=True)
class OnnxExportConfig:
    """How the ONNX file is written.

    Args:
        opset: ONNX opset of the default domain, 13..21 (pinned; the written model is checked against it).
        activation_dtype: uint8 (x86, default) or int8 (ARM) activations.
        dynamic_batch: make dimension 0 of inputs (and the dims that follow it) symbolic.
        input_names / output_names: graph names; default: the forward's argument names / ``output[_i]``.
        readable_names: name every value and node after the model (``layer1.conv/Conv``, for reading the
            graph in Netron). By default only the graph's inputs and outputs keep names; the other values get
            one or two characters and nodes none, which makes a small int8 file about a fifth smaller (BERT-
            shaped encoder: 164 → 130 kB); op-by-op verification and its messages name the model's ops either way.

    Example:
        >>> OnnxExportConfig(opset=13, activation_dtype="int8").activation_dtype
        <ActivationDType.INT8: 'int8'>
    """

    opset: int = 17
    activation_dtype: ActivationDType = ActivationDType.UINT8
    dynamic_batch: bool = True
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    readable_names: bool = False

    def __post_init__(self):
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(f"opset must be an integer in {MIN_OPSET}..{MAX_OPSET}, got {self.opset!r}")
        try:
            object.__setattr__(self, "activation_dtype", ActivationDType(self.activation_dtype))
        except ValueError:
            raise ConfigError(f"activation_dtype must be 'uint8' or 'int8', got {self.activation_dtype!r}") from None
        for what in ("input_names", "output_names"):
            names = getattr(self, what)
            if names is not None:
                if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
                    raise ConfigError(f"{what} must be a sequence of non-empty strings, got {names!r}")
                if len(set(names)) != len(names):
                    raise ConfigError(f"{what} must be distinct, got {names!r}")
                object.__setattr__(self, what, tuple(names))
        if not isinstance(self.readable_names, bool):
            raise ConfigError(f"readable_names must be True or False, got {self.readable_names!r}")


#: The ONNX exporter's name for :class:`~compress.exporters.info.ExportInfo` (one type for both formats; the
#: ONNX-only fields are ``opset`` and ``activation_dtype``).
OnnxExportInfo = ExportInfo


# -- tracing --------------------------------------------------------------------------------------------
# One tracer for the whole package: the passes' QuantTracer keeps compress modules as leaf nodes.
ExportTracer = QuantTracer


def trace_for_export(model: nn.Module, example_inputs: tuple | None = None) -> fx.GraphModule:
    """Symbolically trace ``model`` with compress layers as leaves; GraphModules are returned unchanged.

    Example:
        >>> gm = trace_for_export(nn.Sequential(nn.Linear(4, 2), nn.ReLU()))
        >>> [n.op for n in gm.graph.nodes]
        ['placeholder', 'call_module', 'call_module', 'output']
    """
    if isinstance(model, fx.GraphModule):
        return model
    if not isinstance(model, nn.Module):
        raise ExportError(f"expected a torch.nn.Module to export, got {type(model).__name__}")
    if example_inputs is not None:
        # A float baseline is captured exactly as prepare() captures the model it quantizes (torch.export).
        from compress.passes import capture_graph

        try:
            return capture_graph(model, example_inputs)[0]
        except CompressError as exc:
            raise ExportError(f"cannot capture {type(model).__name__} for export: {exc}") from exc
    tracer = ExportTracer()
    if tracer.is_leaf_module(model, ""):
        # fx always traces the root's own forward; wrap a single layer so it stays one leaf node.
        model = nn.Sequential(model)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError... on untraceable code
        raise ExportError(
            f"torch.fx could not trace {type(model).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
            "remove data-dependent Python control flow from forward, or export the GraphModule from convert()"
        ) from exc
    return fx.GraphModule(model, graph, type(model).__name__)


class _RecordingMixin:
    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        self.records[n] = summarize(result)
        if n in self.keep:  # inputs of an op written by torch.onnx (onnx_fallback) need real values
            self.values[n] = result.detach() if isinstance(result, torch.Tensor) else result
        # Tensors computed from constants only (torch.arange(seq_len), masks, x.new_ones(...)) are folded
        # into initializers, so ops with no ONNX counterpart can still appear in that part of a model.
        if n.op in ("call_function", "call_method") and isinstance(result, torch.Tensor) and all(
                i in self.consts or (i.op != "placeholder" and is_python_record(self.records.get(i)))
                for i in n.all_input_nodes):
            self.consts[n] = result.detach().clone()
        return result


class _ShapeRecorder(_RecordingMixin, ShapeProp):
    def __init__(self, gm):
        super().__init__(gm)
        self.records, self.consts, self.values = {}, {}, {}
        self.keep = fallback_inputs(gm)
        # fx's extra traceback imports torch._dynamo (seconds) just to decorate an error we re-raise anyway.
        self.extra_traceback = False


class _ProbeRecorder(_RecordingMixin, fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.records, self.consts, self.values = {}, {}, {}
        self.keep = fallback_inputs(gm)
        # fx's extra traceback imports torch._dynamo (seconds) just to decorate an error we re-raise anyway.
        self.extra_traceback = False


def _record(gm: fx.GraphModule, example_inputs: tuple, dynamic_batch: bool) -> tuple[dict, dict | None, dict, tuple]:
    """Run the graph on the example inputs (ShapeProp) and, for dynamic batch, on one more batch row.

    Returns records, probe records, folded constants, and the kept values of (example, probe) runs.
    """
    probe = probe_consts = None
    probe_values: dict = {}
    if dynamic_batch:
        bigger = tuple(torch.cat([x, x[:1]]) if isinstance(x, torch.Tensor) and x.dim() > 0 else x
                       for x in example_inputs)
        recorder = _ProbeRecorder(gm)
        try:
            recorder.run(*bigger)
        except Exception as exc:
            raise ExportError(
                f"the model does not run with a batch of {bigger[0].shape[0]} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); its shapes are fixed, so export with "
                "OnnxExportConfig(dynamic_batch=False)"
            ) from exc
        probe, probe_consts, probe_values = recorder.records, recorder.consts, recorder.values
    recorder = _ShapeRecorder(gm)
    try:
        # ShapeProp prints the traceback of a failing node to stderr; the ExportError below says it in one line.
        with contextlib.redirect_stderr(io.StringIO()):
            recorder.run(*example_inputs)
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise ExportError(f"the model failed on the example inputs ({type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else ''}); pass inputs the model accepts") from exc
    consts = recorder.consts
    if probe_consts is not None:
        # A "constant" that changes with the batch size is not one (e.g. torch.arange(x.size(0))).
        consts = {n: t for n, t in consts.items() if n in probe_consts and probe_consts[n].shape == t.shape
                  and torch.equal(probe_consts[n], t)}
    return recorder.records, probe, consts, (recorder.values, probe_values)


# -- emitting -------------------------------------------------------------------------------------------
def _handler_for(ctx: ExportContext, node: fx.Node):
    handler, mod, spec, what = find_emitter(ctx.gm, node, ctx.modules)
    if handler is None:
        if node.op not in ("call_module", "call_function", "call_method"):
            raise ExportError(f"unsupported fx node {node.name!r} ({node.op}); export the GraphModule from "
                              "trace_for_export or convert()")
        if mod is not None and is_quant_module(mod):
            # torch.onnx would write the simulation's fake-quant arithmetic, not an int8 op nor a float one.
            raise ExportError(f"quantized layer {what} at fx node {node.name!r} has no ONNX int8 emitter; "
                              "exclude it from quantization so it exports in float, or report it")

        # No ONNX emitter: torch.onnx writes this one op as a float subgraph (listed in float_fallbacks).
        def handler(ctx, node, mod):
            return emit_fallback(ctx, node, mod, what)
    return handler, mod, spec


def _emit(ctx: ExportContext, node: fx.Node):
    rec = ctx.records.get(node)
    if node.op in ("call_function", "call_method") and is_python_record(rec):
        # size(), .shape, int arithmetic on them: a Python constant, read from the recorded run (x.size(d)
        # that follows the batch also gets the graph computing it: the registry's "shape" emitter).
        spec = ops.lookup(node, ctx.modules)
        size = spec.emitter("onnx") if spec is not None and spec.name == "shape" else None
        if size is not None:
            return size(ctx, node, None)
        probe = ctx.probe.get(node) if ctx.probe is not None else rec
        return PyValue(rec, batch_dependent=probe != rec)
    if node in ctx.consts:
        return TensorValue(ctx.b.const(ctx.consts[node].cpu().numpy(), f"{node.name}/folded"))
    if node.op == "get_attr":
        value = ctx.gm
        for part in node.target.split("."):
            value = getattr(value, part)
        if not isinstance(value, torch.Tensor):
            return PyValue(value)
        if node.users and all(writes_int8_constant(ctx, u) for u in node.users):
            return PyValue(None)  # only its quantizers read it, and they write its int8 codes instead
        return TensorValue(ctx.b.const(value.detach().cpu().numpy(), node.target))
    handler, mod, spec = _handler_for(ctx, node)
    out = handler(ctx, node, mod)
    if spec is not None and spec.policy is ops.Policy.PRESERVING and node not in ctx.off_grid:
        out = _keep_grid(ctx, node, out)
    return out


def _keep_grid(ctx: ExportContext, node: fx.Node, out):
    """A quantization-preserving op's output lies on its input's grid: say so with Q/DQ (same qparams), so
    onnxruntime keeps this op and its neighbours in int8. Emitters returning tuples (split, max with indices)
    mark their pieces themselves: only they know which pieces are values and which are indices."""
    src = ctx.value(node.args[0]) if node.args else None
    if not isinstance(src, TensorValue) or src.qparams is None:
        return out
    feeds_quantizer = all(u.op == "call_module" and isinstance(ctx.module(u), Quantizer) for u in node.users)
    if isinstance(out, TensorValue) and out.qparams is None and not feeds_quantizer:
        out = ctx.b.quantize_dequantize(out.name, src.qparams, node.name)
    return out


def _flatten_outputs(value) -> list:
    if isinstance(value, tuple | list):
        return [v for item in value for v in _flatten_outputs(item)]
    return [value]


def _output_leaves(ctx: ExportContext, arg) -> list[tuple]:
    """(value, record, probe record, fx node) of every tensor the model returns, in order; None outputs
    (attention weights with need_weights=False, unused states) are left out."""
    leaves: list[tuple] = []

    def walk(value, rec, probe_rec, node):
        if isinstance(value, tuple) and isinstance(rec, tuple | list):
            for i, v in enumerate(value):
                walk(v, rec[i], probe_rec[i] if isinstance(probe_rec, tuple | list) else rec[i], node)
        elif isinstance(value, PyValue) and value.value is None:
            return
        else:
            if not isinstance(rec, TensorRecord):
                raise ExportError(f"model output from fx node {node.name!r} is not a tensor ({value!r}); "
                                  "return only tensors")
            leaves.append((value, rec, probe_rec if isinstance(probe_rec, TensorRecord) else rec, node))

    for a in _flatten_outputs(arg):
        if isinstance(a, fx.Node):
            probe = ctx.probe.get(a) if ctx.probe is not None else None
            walk(ctx.env[a], ctx.records[a], probe if probe is not None else ctx.records[a], a)
        elif a is not None:
            raise ExportError(f"the model returns a Python constant ({a!r}); return only tensors")
    return leaves


def _value_info(helper, name: str, dtype, shape, dyn: set[int], batch_param: str):
    dims = [batch_param if (i in dyn and i == 0) else (f"{name}_dim{i}" if i in dyn else d)
            for i, d in enumerate(shape)]
    return helper.make_tensor_value_info(name, onnx_elem_type(dtype), dims)


def export_onnx(model: fx.GraphModule | nn.Module, example_inputs: tuple[torch.Tensor, ...], path,
                config: OnnxExportConfig = OnnxExportConfig()) -> OnnxExportInfo:
    """Write ``model`` (a converted int8 GraphModule, or any float model) as one self-contained ONNX file.

    Args:
        model: the GraphModule from ``convert()``, or an ``nn.Module`` (traced with :func:`trace_for_export`).
        example_inputs: a tuple of tensors the model runs on (shapes are propagated from them).
        path: the ``.onnx`` file to write; written to a temporary file beside it, then renamed.
        config: opset, activation storage type, dynamic batch, names.

    Returns:
        :class:`~compress.exporters.ExportInfo` (``format="onnx"``) with the path, opset, size, output
        quantization and op histogram.

    Example:
        >>> import tempfile, os
        >>> info = export_onnx(nn.Linear(4, 2), (torch.randn(3, 4),), os.path.join(tempfile.mkdtemp(), "m.onnx"))
        >>> info.op_histogram
        {'Gemm': 1}
    """
    started = time.perf_counter()
    onnx = require("onnx", "onnx")
    if not isinstance(config, OnnxExportConfig):
        raise ConfigError(f"config must be an OnnxExportConfig, got {type(config).__name__}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, tuple | list) or not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise ExportError("example_inputs must be a tuple of tensors, e.g. (torch.randn(1, 3, 224, 224),)")
    example_inputs = tuple(x.detach().cpu() for x in example_inputs)
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: directory {path.parent} does not exist; create it first")

    gm = trace_for_export(model, example_inputs)
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            proto, info = _build(onnx, gm, example_inputs, config)
    finally:
        for m, training in modes.items():
            m.train(training)
    _write_atomic(proto, path)
    info.path, info.bytes, info.seconds = str(path), path.stat().st_size, time.perf_counter() - started
    return info


def _build(onnx, gm: fx.GraphModule, example_inputs: tuple, config: OnnxExportConfig):
    helper = onnx.helper
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise ExportError(f"the model takes {len(placeholders)} inputs but {len(example_inputs)} example inputs "
                          "were given; pass one example tensor per forward argument")
    in_names = list(config.input_names or [n.target.lstrip("*") for n in placeholders])
    if len(in_names) != len(placeholders):
        raise ConfigError(f"input_names has {len(in_names)} names but the model takes {len(placeholders)} inputs")
    records, probe, consts, (ctx_values, ctx_probe_values) = _record(gm, example_inputs, config.dynamic_batch)
    builder = GraphBuilder(config.opset)
    ctx = ExportContext(gm, builder, records, probe, config.activation_dtype is ActivationDType.UINT8)
    ctx.consts, ctx.values, ctx.probe_values = consts, ctx_values, ctx_probe_values
    graph_inputs, graph_outputs, output_scales, renamed, leaves = [], [], [], {}, []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            name = builder.reserve(in_names[placeholders.index(node)])
            x = example_inputs[placeholders.index(node)]
            dyn = {0} if config.dynamic_batch and x.dim() > 0 else set()
            graph_inputs.append(_value_info(helper, name, x.dtype, tuple(x.shape), dyn, "batch"))
            ctx.env[node] = TensorValue(name)
        elif node.op == "output":
            leaves = _output_leaves(ctx, node.args[0])
            values = [leaf[0] for leaf in leaves]
            names = list(config.output_names or (["output"] if len(values) == 1 else
                                                 [f"output_{i}" for i in range(len(values))]))
            if len(names) != len(values):
                raise ConfigError(f"output_names has {len(names)} names but the model returns {len(values)} outputs")
            for (value, rec, probe_rec, _), name in zip(leaves, names, strict=True):
                if not isinstance(value, TensorValue):
                    raise ExportError(f"model output {name!r} is not a tensor ({value!r}); return only tensors")
                builder.reserve(name)
                src = renamed.get(value.name, value.name)
                graph_names = {v.name for v in graph_inputs} | {v.name for v in graph_outputs}
                if src in graph_names or not builder.rename_output(src, name):
                    builder.node("Identity", [src], name)
                    builder.nodes[-1].output[0] = name
                else:
                    renamed[value.name] = name
                dyn = {i for i, (a, b) in enumerate(zip(rec.shape, probe_rec.shape, strict=False)) if a != b}
                graph_outputs.append(_value_info(helper, name, rec.dtype, rec.shape, dyn, "batch"))
                qp = value.qparams
                output_scales.append((qp.scale, qp.source_zero_point) if qp is not None else None)
        else:
            ctx.env[node] = _emit(ctx, node)

    # Where the file holds each fx node's int8 output (the probes of op-by-op verification), named before
    # the values get their short names.
    fx_names = {n.name for n in gm.graph.nodes}
    probes = {fx: value for fx, value in builder.quantized_outputs.items() if fx in fx_names}
    if not config.readable_names:
        renamed_to = builder.shorten_names({v.name for v in graph_inputs} | {v.name for v in graph_outputs})
        probes = {fx: renamed_to.get(value, value) for fx, value in probes.items()}
    graph = helper.make_graph(builder.nodes, type(gm).__name__, graph_inputs, graph_outputs, builder.initializers)
    opsets = [helper.make_opsetid("", config.opset)]
    # Pin both the opset and the IR version; make_model alone would pick the newest the onnx package knows.
    ir_version = helper.find_min_ir_version_for(opsets)
    expected = {"": config.opset}
    if any(n.domain == _MS_DOMAIN for n in builder.nodes):
        opsets.append(helper.make_opsetid(_MS_DOMAIN, 1))  # onnxruntime contrib ops (DynamicQuantizeLSTM)
        expected[_MS_DOMAIN] = 1
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="compress", ir_version=ir_version)
    written = {o.domain: o.version for o in proto.opset_import}
    if written != expected:
        raise ExportError(f"internal error: the model declares opsets {written}, expected {config.opset}; "
                          "please report this")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"internal error: onnx.checker rejected the graph ({str(exc).splitlines()[0]}); "
                          "please report this with the model") from exc
    quantized = any(isinstance(m, Quantizer) for m in gm.modules())
    info = ExportInfo(format="onnx", path="", quantized=quantized, opset=config.opset,
                      activation_dtype=config.activation_dtype, output_scales=output_scales,
                      node_count=len(builder.nodes), op_histogram=builder.histogram(), input_names=in_names,
                      output_names=[o.name for o in graph_outputs],
                      output_tolerances=_output_tolerances(gm, ctx.approximate, leaves),
                      approximations=[f"{n.name}: {why}" for n, why in ctx.approximate.items()],
                      float_fallbacks=list(ctx.float_fallbacks), probe_values=probes)
    return proto, info


def _output_tolerances(gm: fx.GraphModule, approximate: dict, leaves: list[tuple]) -> list[float | None]:
    """Per graph output: RECURRENT_RTOL when an approximated node lies upstream, else None (bit-faithful)."""
    tainted: set[fx.Node] = set()
    result: list[float | None] = []
    for node in gm.graph.nodes:
        if node in approximate or any(i in tainted for i in node.all_input_nodes):
            tainted.add(node)
        if node.op == "output":
            result = [RECURRENT_RTOL if leaf[3] in tainted else None for leaf in leaves]
    return result


def _write_atomic(proto, path: Path) -> None:
    """Serialise to a temporary file in the target directory, then rename: no half-written model is left."""
    data = proto.SerializeToString() if proto.ByteSize() <= _PROTOBUF_LIMIT else None
    if data is None:
        raise ExportError("the model is over 2 GiB, the single-file ONNX limit; compress it more (int8 weights "
                          "are 4× smaller) or split it")
    write_bytes_atomic(path, data)
