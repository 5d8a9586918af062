"""Float fallback for ops with no ONNX emitter: export just that op with ``torch.onnx.export`` and splice it in.

DESIGN.md: a partly unsupported model still exports; unsupported ops stay float and are listed
(``OnnxExportInfo.float_fallbacks``). For one fx node with no emitter (an aten op capture kept as it is, a user's
leaf module, ``torch.sort``...), the op alone is wrapped in a tiny module and exported on the example
values recorded for its inputs, at the main graph's opset. Its nodes and initializers are renamed under the fx
node's name and wired to our (float, dequantized) input tensors; in an int8 graph the next quantizer re-enters
the grid as usual, so the op simply runs in float.

Example:
    >>> import torch, tempfile, os
    >>> from torch import nn
    >>> from compress.exporters.onnx import export_onnx
    >>> class Flip(nn.Module):
    ...     def forward(self, x):
    ...         return torch.relu(x).flip(1)  # Tensor.flip: no registry op
    >>> info = export_onnx(Flip(), (torch.randn(1, 4),), os.path.join(tempfile.mkdtemp(), "m.onnx"))
    >>> info.float_fallbacks  # captured by torch.export: an aten op with no torch form in compress
    ['flip (aten.flip)']
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings

import numpy as np
import torch
from torch import fx, nn

from compress import ops
from compress.errors import ExportError
from compress.exporters.onnx.graph import (
    ExportContext,
    PyValue,
    TensorRecord,
    TensorValue,
    emitter,
    supported_ops,
)
from compress.exporters.onnx.ops_math import float_barrier
from compress.exporters.onnx.ops_quant import is_quant_module, quant_output_op
from compress.layers.activation import QuantOutputMixin
from compress.layers.dynamic import layer_mode

# A fallback must reproduce torch on the recorded values to this max|diff| / max|torch| (it is float; the
# check catches traces that silently went wrong, e.g. constants baked in by the legacy tracer).
_CHECK_RTOL = 1e-3
_WEIGHTED = {"Conv", "ConvTranspose", "Gemm"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# ONNX attribute types holding subgraphs (If / Loop / Scan bodies): their outer-scope references are renamed too.
_GRAPH, _GRAPHS = 5, 10


def find_emitter(gm: fx.GraphModule, node: fx.Node, modules: dict[str, nn.Module] | None = None):
    """The registered ONNX emitter for ``node`` (None when the registry has none), the called module, the
    node's registry op (None when undeclared) and a readable op name.

    A compress quant layer takes its op's *quantized* emitter; a float emitter would silently write it in
    float. ``QuantOutputMixin`` wrappers (QuantReLU, QuantMaxPool2d...) all share one quantized form: their
    quantizers around the float op's emitter.

    Example:
        >>> gm = fx.symbolic_trace(nn.Sequential(nn.ReLU()))
        >>> fn, mod, spec, what = find_emitter(gm, list(gm.graph.nodes)[1])
        >>> spec.name, what
        ('relu', 'torch.nn.modules.activation.ReLU')
    """
    if modules is None:
        modules = dict(gm.named_modules())
    mod = modules.get(node.target) if node.op == "call_module" else None
    spec = ops.lookup(node, modules) if node.op in ("call_module", "call_function", "call_method") else None
    quantized = mod is not None and is_quant_module(mod)
    mode = layer_mode(mod) if quantized else None  # a layer's QuantMode picks its form (nn.LSTM.mode is not one)
    fn = spec.emitter("onnx", quantized, mode) if spec is not None else None
    if fn is None and quantized and isinstance(mod, QuantOutputMixin) and spec is not None \
            and spec.emitter("onnx") is not None:
        fn = quant_output_op
    if node.op == "call_module":
        what = f"{type(mod).__module__}.{type(mod).__name__}" if mod is not None else str(node.target)
    elif node.op == "call_function":
        what = getattr(node.target, "__qualname__", None) or repr(node.target)
        if isinstance(node.target, torch._ops.OpOverload):
            what = f"aten.{node.target.overloadpacket.__name__}"
    elif node.op == "call_method":
        what = f"Tensor.{node.target}"
    else:
        what = node.op
    return fn, mod, spec, what


def fallback_inputs(gm: fx.GraphModule) -> set[fx.Node]:
    """Nodes whose values the recording runs keep: the inputs of every call written by torch.onnx."""
    keep: set[fx.Node] = set()
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op in ("call_module", "call_function", "call_method"):
            fn = find_emitter(gm, node, modules)[0]
            if fn is None or fn is emit_generic:
                keep.update(node.all_input_nodes)
    return keep


def short_name(node: fx.Node, mod: nn.Module | None) -> str:
    """How a fallback is listed: ``"leaf (MyModule)"``, ``"flip (aten.flip)"``, ``"flip (Tensor.flip)"``."""
    if mod is not None:
        return f"{node.name} ({type(mod).__name__})"
    if node.op == "call_method":
        return f"{node.name} (Tensor.{node.target})"
    fn = node.target
    if isinstance(fn, torch._ops.OpOverload):  # an aten op capture kept as it is (registry op "aten")
        return f"{node.name} (aten.{fn.overloadpacket.__name__})"
    module = getattr(fn, "__module__", None) or ""
    prefix = "torch." if module.startswith("torch") else (f"{module}." if module else "")
    return f"{node.name} ({prefix}{getattr(fn, '__name__', repr(fn))})"


class _Slot:
    """Where the i-th tensor input goes in the call's arguments."""

    def __init__(self, index: int):
        self.index = index


def _fill(template, tensors):
    if isinstance(template, _Slot):
        return tensors[template.index]
    if isinstance(template, tuple | list):
        return type(template)(_fill(t, tensors) for t in template)
    if isinstance(template, dict):
        return {k: _fill(v, tensors) for k, v in template.items()}
    return template


class _OneOp(nn.Module):
    """One fx call as a module taking only its tensor inputs (constants are baked into the arguments)."""

    def __init__(self, node: fx.Node, mod: nn.Module | None, args, kwargs):
        super().__init__()
        self.inner = mod
        self.kind, self.target = node.op, node.target
        self.args_template, self.kwargs_template = args, kwargs

    def forward(self, *tensors):
        args, kwargs = _fill(self.args_template, tensors), _fill(self.kwargs_template, tensors)
        if self.kind == "call_module":
            return self.inner(*args, **kwargs)
        if self.kind == "call_function":
            return self.target(*args, **kwargs)
        return getattr(args[0], self.target)(*args[1:], **kwargs)


@emitter("aten")
def emit_generic(ctx: ExportContext, node: fx.Node, mod: nn.Module | None):
    """The registry's generic entry (an aten op capture kept as it is): written by torch.onnx, in float."""
    return emit_fallback(ctx, node, mod, f"aten.{node.target.overloadpacket.__name__}"
                         if isinstance(node.target, torch._ops.OpOverload) else str(node.target))


def emit_fallback(ctx: ExportContext, node: fx.Node, mod: nn.Module | None, what: str):
    """Write ``node`` as a float subgraph exported by ``torch.onnx``; returns its TensorValue (or a tuple).

    Raises ExportError (one line) when torch.onnx cannot write the op at the main graph's opset either.
    """
    field = _named_field(ctx, node)
    if field is not None:
        return field
    inputs: list[fx.Node] = []
    slots: dict[fx.Node, _Slot] = {}
    dynamic = ctx.probe is not None

    def to_template(n: fx.Node):
        v = ctx.env[n]
        if isinstance(v, TensorValue):
            if n not in slots:
                slots[n] = _Slot(len(inputs))
                inputs.append(n)
            return slots[n]
        if isinstance(v, PyValue):
            if v.batch_dependent:
                raise ExportError(f"fx node {node.name!r} ({what}) takes a batch-dependent value ({v.value!r}) "
                                  "and has no ONNX handler; export with OnnxExportConfig(dynamic_batch=False)")
            return v.value
        raise ExportError(f"fx node {node.name!r} ({what}) has no ONNX handler and takes a tuple of tensors; "
                          "replace the op with a supported one or leave it outside the model")

    args = fx.node.map_aggregate(node.args, lambda a: to_template(a) if isinstance(a, fx.Node) else a)
    kwargs = fx.node.map_aggregate(dict(node.kwargs), lambda a: to_template(a) if isinstance(a, fx.Node) else a)
    values, dyn = [], []
    for n in inputs:
        value = _input_value(ctx, n, dynamic)
        values.append(value)
        dyn.append(sorted(ctx.dyn_dims(n)) if dynamic and n.op not in ("get_attr",) and n not in ctx.consts
                   else [])
    out_recs = _output_records(ctx, node, what)
    out_dyn = [sorted(_dyn(r, p)) for r, p in zip(out_recs, _output_records(ctx, node, what, probe=True),
                                                     strict=True)] if dynamic else [[] for _ in out_recs]
    wrapper = _OneOp(node, mod, args, kwargs).eval()
    # Checked on the example run's values: with dynamic batch the export traced the probe run (one more
    # row), so this also proves the subgraph runs at another batch size.
    check_values = tuple(_input_value(ctx, n, False) for n in inputs)
    proto, problems = None, []
    for use_dynamo in (True, False):
        try:
            candidate = _export(wrapper, tuple(values), dyn, out_dyn, ctx.b.opset, use_dynamo)
        except Exception as exc:  # torch.onnx raises many types (export, dispatch, onnxscript errors)
            problems.append(f"{'dynamo' if use_dynamo else 'legacy'}: {_reason(exc)}")
            continue
        problem = _check(candidate, ctx.b.opset, len(values), len(out_recs))
        if problem is None:
            problem = _compare(candidate, wrapper, check_values)
        if problem is None:
            proto = candidate
            break
        problems.append(f"{'dynamo' if use_dynamo else 'legacy'}: {problem}")
    if proto is None:
        raise ExportError(
            f"op {what} at fx node {node.name!r} has no ONNX handler and torch.onnx.export could not write it at "
            f"opset {ctx.b.opset} ({'; '.join(problems)}); try another opset, replace the op with one of the "
            f"{len(supported_ops())} ops the exporter writes (`compress inspect MODEL --input-shape ...` gives each op "
            "of your model its verdict) or keep it outside the model")
    outs = _splice(ctx, proto, [_float_input(ctx, ctx.value(n), proto, node.name) for n in inputs], node.name)
    ctx.float_fallbacks.append(short_name(node, mod))
    tensors = tuple(TensorValue(o) for o in outs)
    return tensors[0] if isinstance(ctx.records[node], TensorRecord) else tensors


def _named_field(ctx: ExportContext, node: fx.Node):
    """``getattr(result, "values")`` on a named tuple of tensors (``torch.sort``, a user's NamedTuple) selects
    one element: no op to export, found by identity in the recorded value."""
    if node.op != "call_function" or node.target is not getattr or len(node.args) != 2:
        return None
    src, attr = node.args
    items = ctx.value(src) if isinstance(src, fx.Node) else None
    value = ctx.values.get(src) if isinstance(src, fx.Node) else None
    if not isinstance(items, tuple) or not isinstance(value, tuple) or not isinstance(attr, str):
        return None
    picked = getattr(value, attr, None)
    index = next((i for i, v in enumerate(value) if v is picked), None)
    return items[index] if index is not None and index < len(items) else None


def _float_input(ctx: ExportContext, value: TensorValue, proto, hint: str) -> str:
    """The input name the subgraph reads: through :func:`~.ops_math.float_barrier` when the subgraph holds a
    weighted op (Conv / ConvTranspose / Gemm) onnxruntime would otherwise quantize."""
    if not any(n.op_type in _WEIGHTED for n in proto.graph.node):
        return value.name
    return float_barrier(ctx, value, hint)


def _reason(exc: BaseException) -> str:
    """The innermost cause's first line, without the colour codes torch.onnx puts in its messages."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__


def _compare(proto, wrapper: nn.Module, values: tuple) -> str | None:
    """Run the subgraph in onnxruntime (when installed) and compare with torch; None when they agree."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        feeds = {i.name: v.numpy() for i, v in zip(sess.get_inputs(), values, strict=True)}
        got = sess.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidArgument types
        return f"onnxruntime could not run it ({_reason(exc)})"
    want = wrapper(*values)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    for g, w in zip(got, want, strict=True):
        w = w.detach().numpy()
        if g.shape != w.shape:
            return f"it gives shape {list(g.shape)} where torch gives {list(w.shape)}"
        if w.size and np.abs(g.astype(np.float64) - w).max() > _CHECK_RTOL * max(np.abs(w).max(), 1e-6):
            return "its output differs from torch (the trace did not capture the op)"
    return None


def _input_value(ctx: ExportContext, n: fx.Node, dynamic: bool) -> torch.Tensor:
    if n in ctx.consts:
        return ctx.consts[n]
    if n.op == "get_attr":
        value = ctx.gm
        for part in n.target.split("."):
            value = getattr(value, part)
        return value.detach()
    # The probe run (one more batch row, so batch ≥ 2) keeps torch.export from specialising a batch of 1.
    source = ctx.probe_values if dynamic else ctx.values
    if n not in source:
        raise ExportError(f"internal error: no recorded value for fx node {n.name!r}; please report this")
    return source[n]


def _output_records(ctx: ExportContext, node: fx.Node, what: str, probe: bool = False) -> list[TensorRecord]:
    rec = (ctx.probe if probe else ctx.records).get(node)
    recs = [rec] if isinstance(rec, TensorRecord) else list(rec) if isinstance(rec, tuple | list) else []
    if not recs or not all(isinstance(r, TensorRecord) for r in recs):
        raise ExportError(f"fx node {node.name!r} ({what}) has no ONNX handler and does not return tensors; "
                          "replace the op with a supported one or leave it outside the model")
    return recs


def _dyn(rec: TensorRecord, probe: TensorRecord) -> set[int]:
    return {i for i, (a, b) in enumerate(zip(rec.shape, probe.shape, strict=False)) if a != b}


def _export(wrapper: nn.Module, values: tuple, dyn: list, out_dyn: list, opset: int, use_dynamo: bool):
    """One torch.onnx.export attempt, in memory (no files), with its console chatter silenced."""
    import onnx

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            if use_dynamo:
                auto = torch.export.Dim.AUTO
                # forward(*tensors): the varargs parameter takes one tuple of per-tensor specs.
                shapes = tuple({d: auto for d in dims} if dims else None for dims in dyn)
                program = torch.onnx.export(wrapper, values, None, dynamo=True, opset_version=opset,
                                            external_data=False,
                                            dynamic_shapes=(shapes,) if any(dyn) else None,
                                            verbose=False, optimize=True)
                proto = program.model_proto
            else:
                names = [f"in{i}" for i in range(len(values))]
                out_names = [f"out{i}" for i in range(len(out_dyn))]
                axes = {nm: {d: f"{nm}_d{d}" for d in dims} for nm, dims in zip(names + out_names, dyn + out_dyn,
                                                                                 strict=True) if dims}
                buf = io.BytesIO()
                torch.onnx.export(wrapper, values, buf, dynamo=False, opset_version=opset, input_names=names,
                                  output_names=out_names, dynamic_axes=axes or None)
                proto = onnx.load_from_string(buf.getvalue())
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    if len(proto.functions):
        proto = onnx.inliner.inline_local_functions(proto)
    return proto


def _check(proto, opset: int, n_inputs: int, n_outputs: int) -> str | None:
    """Why the exported subgraph cannot be spliced in (None when it can)."""
    got = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    if got.get("ai.onnx") != opset:
        return f"it wrote opset {got.get('ai.onnx')}, not {opset}"
    domains = {n.domain for n in proto.graph.node} - {"", "ai.onnx"}
    if domains:
        return f"it used non-standard op domains {sorted(domains)}"
    inits = {i.name for i in proto.graph.initializer}
    ins = [i for i in proto.graph.input if i.name not in inits]
    if len(ins) != n_inputs or len(proto.graph.output) != n_outputs:
        return (f"its graph has {len(ins)} inputs / {len(proto.graph.output)} outputs where the op has {n_inputs} / "
                f"{n_outputs} (the trace lost the data flow)")
    return None


def _splice(ctx: ExportContext, proto, our_inputs: list[str], prefix: str) -> list[str]:
    """Copy the subgraph's nodes and initializers into the builder under fresh ``prefix/...`` names."""
    b, graph = ctx.b, proto.graph
    inits = {i.name for i in graph.initializer}
    names = {i.name: ours for i, ours in zip([i for i in graph.input if i.name not in inits], our_inputs,
                                             strict=True)}
    for init in graph.initializer:
        names[init.name] = b.fresh(f"{prefix}/{init.name}")
        copy = type(init)()
        copy.CopyFrom(init)
        copy.name = names[init.name]
        b.initializers.append(copy)
    for n in graph.node:
        for o in n.output:
            if o:
                names[o] = b.fresh(f"{prefix}/{o}")
    for n in graph.node:
        copy = type(n)()
        copy.CopyFrom(n)
        copy.name = b.fresh(f"{prefix}/{n.name or n.op_type}#")
        copy.domain = ""
        _rename(copy, names)
        b.nodes.append(copy)
    return [names.get(o.name, o.name) for o in graph.output]


def _rename(node, names: dict[str, str]) -> None:
    for field in (node.input, node.output):
        for i, name in enumerate(field):
            if name:
                field[i] = names.get(name, name)
    for attr in node.attribute:
        # A body graph sees the outer scope: its references to our renamed tensors must follow.
        bodies = [attr.g] if attr.type == _GRAPH else list(attr.graphs) if attr.type == _GRAPHS else []
        for body in bodies:
            local = {i.name for i in body.input} | {i.name for i in body.initializer}
            local |= {o for n in body.node for o in n.output}
            inner = {k: v for k, v in names.items() if k not in local}
            for n in body.node:
                _rename_inputs_only(n, inner)


def _rename_inputs_only(node, names: dict[str, str]) -> None:
    for i, name in enumerate(node.input):
        if name:
            node.input[i] = names.get(name, name)
    for attr in node.attribute:
        for body in ([attr.g] if attr.type == _GRAPH else list(attr.graphs) if attr.type == _GRAPHS else []):
            for n in body.node:
                _rename_inputs_only(n, names)
